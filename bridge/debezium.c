/*-------------------------------------------------------------------------
 *
 * debezium.c
 *		infra-bridge: the statements of a format = debezium route, which
 *		applies Debezium's change events to a keyed table.
 *
 * A range of the batch's staged messages is applied as offset order would
 * apply it, set-based:
 *	1. its count (the messages applied) and the last truncate event (op t)
 *	   in it; with one, the table is emptied and only what follows counts;
 *	2. DELETE of every key with a delete event or a tombstone in the range;
 *	3. INSERT ... ON CONFLICT DO UPDATE of each key's last event, when that
 *	   is a create, read or update that carries every column;
 *	4. the keys whose last event is an update without some unchanged
 *	   TOASTed columns (Debezium sends a placeholder for them): each
 *	   column from the latest event of the key that has it (since its last
 *	   delete), else kept as stored.
 * Deleting first is right for every order: a key deleted then created ends
 * with the new row, one created then deleted has no last event to write.
 *
 * Values are converted by the target column's type, and where Debezium's
 * JSON does not say how it encoded one (a number of ms, us or ns; bytes)
 * by the event's schema part when it has one, else by the route's
 * decimal_handling_mode, time_precision_mode and binary_handling_mode,
 * named as the connector's own settings.
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "buf.h"
#include "change.h"
#include "route.h"

/*
 * A column's kind, and for numeric its scale (-1: none), for timestamp and
 * time its precision, from format_type's text.
 */
static ColumnKind
column_kind(const Column *c, int *n)
{
	const char *paren = strchr(c->type, '(');

	*n = -1;
	if (c->typcategory == 'A')
		return KIND_ARRAY;
	if (strcmp(c->type, "json") == 0)
		return KIND_JSON;
	if (strcmp(c->type, "jsonb") == 0)
		return KIND_JSONB;
	if (strcmp(c->type, "bytea") == 0)
		return KIND_BYTEA;
	if (strcmp(c->type, "money") == 0)
	{
		*n = 2;					/* Debezium's money.fraction.digits */
		return KIND_NUMERIC;
	}
	if (strncmp(c->type, "numeric", 7) == 0)
	{
		const char *comma = strchr(c->type, ',');

		if (comma != NULL)
			*n = atoi(comma + 1);
		else if (paren != NULL)
			*n = 0;
		return KIND_NUMERIC;
	}
	if (strcmp(c->type, "date") == 0)
		return KIND_DATE;
	if (strcmp(c->type, "interval") == 0)
		return KIND_INTERVAL;
	if (strstr(c->type, "without time zone") != NULL)
	{
		*n = paren != NULL ? atoi(paren + 1) : 6;
		return strncmp(c->type, "timestamp", 9) == 0 ? KIND_TIMESTAMP : KIND_TIME;
	}
	return KIND_PLAIN;
}

/* (F -> 'column'): the column's field in the event's schema, by name. */
static void
field_schema(Buf *b, const char *f, const Column *c)
{
	buf_printf(b, "(%s -> ", f);
	route_append_literal(b, c->name);
	buf_puts(b, ")");
}

/*
 * A number since the epoch (or midnight) in units per second: base plus
 * whole seconds plus the rest in microseconds (exact; the interval product
 * goes through a double, whose 53 bits hold both parts).
 */
static void
since_epoch(Buf *b, const char *base, const char *j, const char *units)
{
	buf_printf(b, "(%s + ((%s)::bigint / %s) * interval '1 second'"
			   " + (((%s)::bigint %% %s) * 1000000 / %s) * interval '1 microsecond')",
			   base, j, units, j, units, units);
}

/*
 * The units per second of a timestamp's or time's number: by the schema's
 * name of the field when the event has one, else by time_precision_mode
 * and the column's precision.
 */
static void
temporal_units(Buf *units, const BridgeRoute *route, const Column *c, const char *f, bool is_time, int precision)
{
	bool		micro;

	if (route->dbz_time == DBZ_TIME_CONNECT)
		micro = false;
	else if (route->dbz_time == DBZ_TIME_ADAPTIVE_US && is_time)
		micro = true;
	else
		micro = precision > 3;
	buf_puts(units, "CASE ");
	field_schema(units, f, c);
	buf_printf(units, " ->> 'name' WHEN 'io.debezium.time.Micro%s' THEN 1000000"
			   " WHEN 'io.debezium.time.Nano%s' THEN 1000000000 WHEN 'io.debezium.time.%s' THEN 1000"
			   " WHEN 'org.apache.kafka.connect.data.%s' THEN 1000 ELSE %d END",
			   is_time ? "Time" : "Timestamp", is_time ? "Time" : "Timestamp",
			   is_time ? "Time" : "Timestamp", is_time ? "Time" : "Timestamp", micro ? 1000000 : 1000);
}

/* The numeric of a Decimal's bytes: by the schema's scale, else the column's. */
static void
numeric_value(Buf *b, const BridgeRoute *route, const Column *c, const char *j, const char *f, int scale)
{
	buf_printf(b, "CASE jsonb_typeof(%s) WHEN 'number' THEN (%s)::numeric"
			   " WHEN 'object' THEN infra.debezium_decimal(decode(%s ->> 'value', 'base64'), (%s ->> 'scale')::integer)"
			   " WHEN 'string' THEN CASE WHEN CASE WHEN %s IS NULL THEN %s ELSE coalesce(",
			   j, j, j, j, f, route->dbz_decimal == DBZ_DECIMAL_PRECISE ? "true" : "false");
	field_schema(b, f, c);
	buf_printf(b, " ->> 'name' = 'org.apache.kafka.connect.data.Decimal', false) END"
			   " THEN infra.debezium_decimal(decode(%s #>> '{}', 'base64'), coalesce((", j);
	field_schema(b, f, c);
	buf_puts(b, " -> 'parameters' ->> 'scale')::integer, ");
	if (scale >= 0)
		buf_printf(b, "%d", scale);
	else
	{
		buf_puts(b, "infra.bridge_refuse('a Debezium decimal without its scale for column ' || ");
		route_append_literal(b, c->quoted);
		buf_puts(b, ", 'Send the schema with the event (schemas.enable), give the column a scale, or set"
				 " decimal_handling_mode = string on the connector and the route.')::integer");
	}
	buf_printf(b, ")) ELSE (%s #>> '{}')::numeric END END", j);
}

/* Bytes: base64 as the JSON converter writes a bytes field, else the route's mode. */
static void
bytea_value(Buf *b, const BridgeRoute *route, const Column *c, const char *j, const char *f)
{
	const char *mode = route->dbz_binary == DBZ_BINARY_HEX ? "decode(%s #>> '{}', 'hex')" :
		route->dbz_binary == DBZ_BINARY_BASE64_URL ? "decode(translate(%s #>> '{}', '-_', '+/'), 'base64')" :
		"decode(%s #>> '{}', 'base64')";

	buf_puts(b, "CASE WHEN ");
	field_schema(b, f, c);
	buf_printf(b, " ->> 'type' = 'bytes' THEN decode(%s #>> '{}', 'base64') ELSE ", j);
	buf_printf(b, mode, j);
	buf_puts(b, " END");
}

/*
 * Column c's value from the JSON expression j, f the event's schema fields
 * by name (NULL without a schema), cast to the column's type.
 */
static void
column_value(Buf *b, const BridgeRoute *route, const Column *c, const char *j, const char *f)
{
	int			n;
	ColumnKind	kind = column_kind(c, &n);
	Buf			units = {0};

	buf_puts(b, "(");
	switch (kind)
	{
		case KIND_JSON:
			buf_printf(b, "CASE jsonb_typeof(%s) WHEN 'string' THEN (%s #>> '{}')::json WHEN 'null' THEN NULL"
					   " ELSE (%s)::json END", j, j, j);
			break;
		case KIND_JSONB:
			/* Debezium's Json is a string; a JSON null is SQL's NULL. */
			buf_printf(b, "CASE jsonb_typeof(%s) WHEN 'string' THEN (%s #>> '{}')::jsonb WHEN 'null' THEN NULL"
					   " ELSE %s END", j, j, j);
			break;
		case KIND_BYTEA:
			bytea_value(b, route, c, j, f);
			break;
		case KIND_NUMERIC:
			numeric_value(b, route, c, j, f, n);
			break;
		case KIND_DATE:
			buf_printf(b, "CASE jsonb_typeof(%s) WHEN 'number' THEN DATE '1970-01-01' + (%s)::integer"
					   " ELSE (%s #>> '{}')::date END", j, j, j);
			break;
		case KIND_TIMESTAMP:
		case KIND_TIME:
			temporal_units(&units, route, c, f, kind == KIND_TIME, n);
			buf_printf(b, "CASE jsonb_typeof(%s) WHEN 'number' THEN ", j);
			since_epoch(b, kind == KIND_TIME ? "TIME '00:00'" : "TIMESTAMP '1970-01-01'", j, units.data);
			buf_printf(b, " ELSE (%s #>> '{}')::%s END", j, kind == KIND_TIME ? "time" : "timestamp");
			free(units.data);
			break;
		case KIND_INTERVAL:
			buf_printf(b, "CASE jsonb_typeof(%s) WHEN 'number' THEN ", j);
			since_epoch(b, "INTERVAL '0'", j, "1000000");
			buf_printf(b, " ELSE (%s #>> '{}')::interval END", j);
			break;
		case KIND_ARRAY:
			buf_printf(b, "CASE WHEN jsonb_typeof(%s) = 'array' THEN ARRAY(SELECT jsonb_array_elements_text(%s))"
					   "::%s ELSE (%s #>> '{}')::%s END", j, j, c->type, j, c->type);
			break;
		case KIND_PLAIN:
			buf_printf(b, "%s #>> '{}'", j);
			break;
	}
	buf_printf(b, ")::%s", c->type);
}

/* Does column c's value need the event's schema fields? */
static bool
needs_schema(const Column *c)
{
	int			n;
	ColumnKind	kind = column_kind(c, &n);

	return kind == KIND_BYTEA || kind == KIND_NUMERIC || kind == KIND_TIMESTAMP || kind == KIND_TIME;
}

/*
 * Target t's value in a statement whose rows (alias s) are events: an
 * event column's from s.a (a column with a default gets it when the event
 * lacks the column), metadata as route.c made it.
 */
static void
target_value(Buf *b, const RouteTargets *rt, int t)
{
	const Column *c = rt->target[t];
	Buf			j = {0};

	if (rt->fields[t] != FIELD_JSON_KEY)
	{
		buf_puts(b, rt->expr[t]);
		return;
	}
	buf_puts(&j, "s.a -> ");
	route_append_literal(&j, c->name);
	if (c->defexpr[0] != '\0' && c->generated == '\0')
	{
		buf_printf(b, "CASE WHEN s.a ? ");
		route_append_literal(b, c->name);
		buf_puts(b, " THEN ");
		column_value(b, rt->route, c, j.data, "s.f");
		buf_printf(b, " ELSE %s END", c->defexpr);
	}
	else
		column_value(b, rt->route, c, j.data, "s.f");
	free(j.data);
}

/* Key column k's value of an event: a tombstone's key, a delete's before, else after. */
static void
key_value(Buf *b, const RouteTargets *rt, const Column *c)
{
	Buf			j = {0};

	buf_puts(&j, "CASE WHEN s.tomb THEN s.kj -> ");
	route_append_literal(&j, c->name);
	buf_puts(&j, " WHEN s.op = 'd' THEN s.b -> ");
	route_append_literal(&j, c->name);
	buf_puts(&j, " ELSE s.a -> ");
	route_append_literal(&j, c->name);
	buf_puts(&j, " END");
	column_value(b, rt->route, c, j.data, "s.f");
	free(j.data);
}

/* Bytes as a bytea literal. */
static void
bytea_literal(Buf *b, const char *s, size_t len)
{
	size_t		i;

	buf_puts(b, "'\\x");
	for (i = 0; i < len; i++)
		buf_printf(b, "%02x", (unsigned char) s[i]);
	buf_puts(b, "'::bytea");
}

/* The placeholder's bytes in base64 (b64, 200 bytes) and hex (hex, 300); it has 127 at most. */
static void
placeholder_texts(const char *p, char *b64, char *hex)
{
	Buf			b = {0};

	base64_append(&b, p, strlen(p));
	snprintf(b64, 200, "%s", b.data);
	b.len = 0;
	hex_append(&b, p, strlen(p));
	snprintf(hex, 300, "%s", b.data);
	free(b.data);
}

/*
 * The placeholder's forms in JSON: the string, an array of it, its bytes
 * in base64 and hex.  ph: as bytes to find in a message (ph), or as jsonb
 * values (a NOT IN list).
 */
static void
placeholder_forms(Buf *b, const BridgeRoute *route, bool ph)
{
	const char *p = route->dbz_placeholder;
	char		b64[200];
	char		hex[300];

	placeholder_texts(p, b64, hex);
	if (ph)
	{
		buf_puts(b, "(position(");
		bytea_literal(b, p, strlen(p));
		buf_puts(b, " IN s.val) > 0 OR position(");
		bytea_literal(b, b64, strlen(b64));
		buf_puts(b, " IN s.val) > 0 OR position(");
		bytea_literal(b, hex, strlen(hex));
		buf_puts(b, " IN s.val) > 0)");
		return;
	}
	buf_puts(b, "(to_jsonb(");
	route_append_literal(b, p);
	buf_puts(b, "::text), jsonb_build_array(");
	route_append_literal(b, p);
	buf_puts(b, "::text), to_jsonb(");
	route_append_literal(b, b64);
	buf_puts(b, "::text), to_jsonb(");
	route_append_literal(b, hex);
	buf_puts(b, "::text))");
}

/*
 * FROM the range's events, one row each (alias s): seq, metadata, tomb (a
 * tombstone), op, a (after), b (before), f (the after schema's fields by
 * name, NULL without a schema or when no column needs it), ph (the
 * message may hold the placeholder), kj (a tombstone's key).
 */
static void
append_events(RouteTargets *rt, Buf *b, bool need_f)
{
	/* OFFSET 0: each message parsed once, not once per use of its parts. */
	rt->lateral = " LEFT JOIN LATERAL (SELECT CASE WHEN v ? 'schema' AND v ? 'payload' THEN v -> 'payload' ELSE v END,"
		" CASE WHEN v ? 'schema' AND v ? 'payload' THEN v -> 'schema' END"
		" FROM (SELECT convert_from(s.val, 'UTF8')::jsonb OFFSET 0) q(v) OFFSET 0) x(p, sch) ON true";
	buf_puts(b, " FROM (SELECT s.seq, s.topic, s.part, s.off, s.key, s.ts, s.headers, s.val IS NULL AS tomb,"
			 " x.p ->> 'op' AS op, x.p -> 'after' AS a, x.p -> 'before' AS b, ");
	if (need_f)
		buf_puts(b, "(SELECT jsonb_object_agg(g ->> 'field', g) FROM jsonb_array_elements(x.sch -> 'fields') h,"
				 " jsonb_array_elements(h -> 'fields') g WHERE h ->> 'field' = 'after') AS f, ");
	else
		buf_puts(b, "NULL::jsonb AS f, ");
	placeholder_forms(b, rt->route, true);
	buf_puts(b, " AS ph, CASE WHEN s.val IS NULL THEN (SELECT CASE WHEN jsonb_typeof(k) = 'object' AND k ? 'schema'"
			 " AND k ? 'payload' THEN k -> 'payload' ELSE k END FROM (SELECT convert_from(s.key, 'UTF8')::jsonb) y(k))"
			 " END AS kj");
	route_append_source(rt, NULL, 0, b, false, true);
	buf_puts(b, ") s");
	rt->lateral = NULL;
}

/*
 * The event columns: those listed in columns, else every column not
 * generated and not metadata; then the keys (key_columns, else the
 * primary key) as indexes into the targets.
 */
static bool
debezium_targets(RouteTargets *rt, int *keys, int *nkeys)
{
	const BridgeRoute *route = rt->route;
	char		list[BRIDGE_VALUE_LEN];
	char	   *save = NULL;
	char	   *tok;
	int			i;
	int			t;

	if (route->columns[0] != '\0')
	{
		snprintf(list, sizeof(list), "%s", route->columns);
		for (tok = strtok_r(list, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
		{
			const Column *c = route_column(rt->cols, rt->ncols, tok, route, rt->table);

			if (c == NULL || !route_add_target(rt, c, FIELD_JSON_KEY, "%s", ""))
				return false;
		}
	}
	else
		for (i = 0; i < rt->ncols; i++)
		{
			bool		taken = rt->cols[i].generated != '\0';

			for (t = 0; t < rt->nt; t++)
				taken |= rt->target[t] == &rt->cols[i];
			if (!taken && !route_add_target(rt, &rt->cols[i], FIELD_JSON_KEY, "%s", ""))
				return false;
		}
	/* key_columns as every keyed route reads them, else the primary key. */
	if (route->key_columns[0] != '\0')
	{
		if (!route_keys(rt, keys, nkeys))
			return false;
		for (t = 0; t < *nkeys; t++)
			if (rt->fields[keys[t]] != FIELD_JSON_KEY)
			{
				log_error("route \"%s\": key column %s is a metadata column: an event's key is in its fields",
						  route->name, rt->target[keys[t]]->quoted);
				return false;
			}
		return true;
	}
	*nkeys = 0;
	for (t = 0; t < rt->nt && *nkeys < ROUTE_MAX_KEYS; t++)
		if (rt->target[t]->pkey && rt->fields[t] == FIELD_JSON_KEY)
			keys[(*nkeys)++] = t;
	if (*nkeys == 0)
	{
		log_error("route \"%s\": %s has no primary key among the columns the route writes: give key_columns",
				  route->name, rt->table);
		return false;
	}
	return true;
}

/* Key values of the events as k0, k1, ..., and as a DISTINCT ON / ORDER BY list. */
static void
append_keys(Buf *b, const RouteTargets *rt, const int *keys, int nkeys, bool named)
{
	int			k;

	for (k = 0; k < nkeys; k++)
	{
		buf_puts(b, k ? ", " : "");
		key_value(b, rt, rt->target[keys[k]]);
		if (named)
			buf_printf(b, " AS k%d", k);
	}
}

/* The refusal of an event that is none of Debezium's, or a delete without its key. */
static void
append_check(Buf *b, const RouteTargets *rt, const int *keys)
{
	buf_puts(b, "CASE WHEN NOT s.tomb AND (s.op IS NULL OR s.op NOT IN ('c', 'r', 'u', 'd', 't'))"
			 " THEN infra.bridge_refuse('not a Debezium change event (op ' || coalesce(quote_literal(s.op), 'missing')"
			 " || ')', 'A format = debezium route takes the change events of a Debezium connector, with or without"
			 " the JSON converter''s schema.') WHEN (s.tomb OR s.op = 'd') AND ");
	key_value(b, rt, rt->target[keys[0]]);
	buf_puts(b, " IS NULL THEN infra.bridge_refuse('a Debezium delete or tombstone without its key', 'A delete needs"
			 " the key columns in before (the source table''s primary key or REPLICA IDENTITY), a tombstone its"
			 " message key.') END AS chk");
}

/* INSERT INTO the table (its targets) SELECT each target's value from s. */
static void
append_insert(Buf *b, const RouteTargets *rt, bool identity)
{
	int			t;

	buf_printf(b, "INSERT INTO %s (", rt->table);
	for (t = 0; t < rt->nt; t++)
		buf_printf(b, "%s%s", t ? ", " : "", rt->target[t]->quoted);
	buf_printf(b, ")%s SELECT ", identity ? " OVERRIDING SYSTEM VALUE" : "");
	for (t = 0; t < rt->nt; t++)
	{
		buf_puts(b, t ? ", " : "");
		target_value(b, rt, t);
	}
}

/* An event without one of its key columns (on its own: its insert fails). */
static void
append_key_missing(Buf *b, const RouteTargets *rt, const int *keys, int nkeys)
{
	int			k;

	for (k = 0; k < nkeys; k++)
	{
		buf_puts(b, k ? " OR " : "");
		key_value(b, rt, rt->target[keys[k]]);
		buf_puts(b, " IS NULL");
	}
}

/*
 * 3. Each key's last event, when a create, read or update with every
 * column: INSERT ... ON CONFLICT DO UPDATE.
 */
static char *
build_upsert(RouteTargets *rt, const int *keys, int nkeys, bool need_f, bool identity)
{
	Buf			b = {0};

	append_insert(&b, rt, identity);
	buf_puts(&b, " FROM (SELECT DISTINCT ON (");
	append_keys(&b, rt, keys, nkeys, false);
	buf_puts(&b, ", CASE WHEN ");
	append_key_missing(&b, rt, keys, nkeys);
	buf_puts(&b, " THEN s.seq END) s.*, ");
	append_check(&b, rt, keys);
	append_events(rt, &b, need_f);
	if (!rt->route->deletes)
		buf_puts(&b, " WHERE NOT s.tomb AND s.op IS DISTINCT FROM 'd' AND s.op IS DISTINCT FROM 't'");
	buf_puts(&b, " ORDER BY ");
	append_keys(&b, rt, keys, nkeys, false);
	buf_puts(&b, ", CASE WHEN ");
	append_key_missing(&b, rt, keys, nkeys);
	buf_puts(&b, " THEN s.seq END, s.seq DESC) s WHERE NOT s.tomb AND s.op IN ('c', 'r', 'u') AND (NOT s.ph OR ");
	append_key_missing(&b, rt, keys, nkeys);
	buf_puts(&b, ") ORDER BY s.seq");
	route_append_upsert(rt, keys, nkeys, &b);
	return b.data;
}

/* 2. Every key with a delete event or a tombstone in the range. */
static char *
build_delete(RouteTargets *rt, const int *keys, int nkeys, bool need_f)
{
	Buf			b = {0};
	int			k;

	buf_printf(&b, "DELETE FROM %s t USING (SELECT DISTINCT ", rt->table);
	append_keys(&b, rt, keys, nkeys, true);
	append_events(rt, &b, need_f);
	buf_puts(&b, " WHERE s.tomb OR s.op = 'd') g WHERE ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&b, "%st.%s = g.k%d", k ? " AND " : "", rt->target[keys[k]]->quoted, k);
	return b.data;
}

/* rt's key columns of alias a equal those of alias b (kN names for "k"). */
static void
keys_equal(Buf *b, const RouteTargets *rt, const int *keys, int nkeys, const char *a, const char *c, bool named)
{
	int			k;

	for (k = 0; k < nkeys; k++)
	{
		if (named)
			buf_printf(b, "%s%s.k%d = %s.k%d", k ? " AND " : "", a, k, c, k);
		else
			buf_printf(b, "%s%s.%s = %s.k%d", k ? " AND " : "", a, rt->target[keys[k]]->quoted, c, k);
	}
}

/*
 * 4. The keys whose last event is an update leaving out unchanged TOASTed
 * columns: each column from the latest event of the key (since its last
 * delete) that has it; the stored row's where none does (UPDATE), the
 * events' alone where there is no stored row (INSERT).
 */
static char *
build_merge(RouteTargets *rt, const int *keys, int nkeys, bool need_f, bool identity)
{
	static const char *const meta[] = {"topic", "part", "off", "key", "ts", "headers"};
	Buf			b = {0};
	int			t;
	int			k;
	int			m;

	buf_puts(&b, "WITH e AS MATERIALIZED (SELECT s.*, ");
	append_keys(&b, rt, keys, nkeys, true);
	append_events(rt, &b, need_f);
	if (!rt->route->deletes)
		buf_puts(&b, " WHERE NOT s.tomb AND s.op IS DISTINCT FROM 'd' AND s.op IS DISTINCT FROM 't'");
	buf_puts(&b, "), l AS (SELECT DISTINCT ON (");
	for (k = 0; k < nkeys; k++)
		buf_printf(&b, "%sk%d", k ? ", " : "", k);
	buf_puts(&b, ") * FROM e WHERE ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&b, "%sk%d IS NOT NULL", k ? " AND " : "", k);
	buf_puts(&b, " ORDER BY ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&b, "k%d, ", k);
	buf_puts(&b, "seq DESC), s AS (SELECT ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&b, "l.k%d, ", k);
	for (m = 0; m < 6; m++)
		buf_printf(&b, "(array_agg(e.%s ORDER BY e.seq DESC))[1] AS %s, ", meta[m], meta[m]);
	buf_puts(&b, "(array_agg(e.f ORDER BY e.seq DESC))[1] AS f, jsonb_object_agg(kv.key, kv.value ORDER BY e.seq) AS a"
			 " FROM l JOIN e ON ");
	keys_equal(&b, rt, keys, nkeys, "e", "l", true);
	buf_puts(&b, " AND NOT e.tomb AND e.op IN ('c', 'r', 'u') AND e.seq > coalesce((SELECT max(d.seq) FROM e d WHERE ");
	keys_equal(&b, rt, keys, nkeys, "d", "l", true);
	buf_puts(&b, " AND (d.tomb OR d.op = 'd')), -1), LATERAL jsonb_each(e.a) kv"
			 " WHERE l.ph AND NOT l.tomb AND l.op IN ('c', 'r', 'u') AND kv.value NOT IN ");
	placeholder_forms(&b, rt->route, false);
	buf_puts(&b, " GROUP BY ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&b, "%sl.k%d", k ? ", " : "", k);
	buf_printf(&b, "), u AS (UPDATE %s t SET ", rt->table);
	for (t = 0, m = 0; t < rt->nt; t++)
	{
		bool		is_key = false;

		for (k = 0; k < nkeys; k++)
			is_key |= keys[k] == t;
		if (is_key)
			continue;
		buf_printf(&b, "%s%s = ", m++ ? ", " : "", rt->target[t]->quoted);
		if (rt->fields[t] == FIELD_JSON_KEY)
		{
			buf_puts(&b, "CASE WHEN s.a ? ");
			route_append_literal(&b, rt->target[t]->name);
			buf_puts(&b, " THEN ");
			target_value(&b, rt, t);
			buf_printf(&b, " ELSE t.%s END", rt->target[t]->quoted);
		}
		else
			target_value(&b, rt, t);
	}
	if (m == 0)
		buf_printf(&b, "%s = t.%s", rt->target[keys[0]]->quoted, rt->target[keys[0]]->quoted);
	buf_puts(&b, " FROM s WHERE ");
	keys_equal(&b, rt, keys, nkeys, "t", "s", false);
	buf_puts(&b, " RETURNING ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&b, "%st.%s AS k%d", k ? ", " : "", rt->target[keys[k]]->quoted, k);
	buf_puts(&b, ") ");
	append_insert(&b, rt, identity);
	buf_puts(&b, " FROM s WHERE NOT EXISTS (SELECT 1 FROM u WHERE ");
	keys_equal(&b, rt, keys, nkeys, "u", "s", true);
	buf_puts(&b, ")");
	return b.data;
}

/*
 * 1. The range's messages, (deletes on) its last truncate event (the
 * messages that may be one parsed only), and whether any message may hold
 * the placeholder (found in the bytes, nothing parsed).
 */
static char *
build_count(RouteTargets *rt)
{
	Buf			b = {0};

	if (rt->route->deletes)
		buf_puts(&b, "SELECT count(*), max(s.seq) FILTER (WHERE s.val IS NOT NULL AND position('\\x227422'::bytea IN s.val) > 0"
				 " AND (SELECT CASE WHEN v ? 'schema' AND v ? 'payload' THEN v -> 'payload' ELSE v END ->> 'op'"
				 " FROM (SELECT convert_from(s.val, 'UTF8')::jsonb) q(v)) = 't'), ");
	else
		buf_puts(&b, "SELECT count(*), NULL::integer, ");
	/* Whether a message may hold the placeholder: else step 4 is skipped. */
	buf_puts(&b, "coalesce(bool_or(");
	placeholder_forms(&b, rt->route, true);
	buf_puts(&b, "), false)");
	route_append_source(rt, NULL, 0, &b, false, false);
	return b.data;
}

/*
 * The role may TRUNCATE the table (a truncate event needs it: found
 * missing at start, not at the event, which would stop the route).
 */
static bool
may_truncate(const RouteTargets *rt)
{
	const char *params[1] = {rt->table};
	PGresult   *res = PQexecParams(route_conn(), "SELECT has_table_privilege($1, 'TRUNCATE')", 1, NULL, params,
								   NULL, NULL, 0);
	bool		ok = PQresultStatus(res) == PGRES_TUPLES_OK && strcmp(PQgetvalue(res, 0, 0), "t") == 0;

	PQclear(res);
	if (!ok)
		log_error("route \"%s\": the bridge's role may not TRUNCATE %s, which a truncate event (op t) does: GRANT"
				  " TRUNCATE, or set deletes = off to keep every row", rt->route->name, rt->table);
	return ok;
}

/* A key column's class for change.c, false when its text may not compare as its value. */
static bool
key_class(const RouteTargets *rt, const Column *c, KeyClass *cls)
{
	const char *params[2] = {rt->table, c->name};
	PGresult   *res;
	bool		ok;

	if (strcmp(c->type, "smallint") == 0 || strcmp(c->type, "integer") == 0 || strcmp(c->type, "bigint") == 0)
	{
		*cls = KEY_INT;
		return true;
	}
	if (strcmp(c->type, "uuid") == 0)
	{
		*cls = KEY_UUID;
		return true;
	}
	/* varchar(n): the SQL's cast cuts a longer key, which then equals another. */
	if (strcmp(c->type, "text") != 0 && strcmp(c->type, "character varying") != 0)
		return false;
	*cls = KEY_TEXT;
	/* A nondeterministic collation makes other texts equal. */
	res = PQexecParams(route_conn(), "SELECT coalesce((SELECT l.collisdeterministic FROM pg_attribute a"
					   " JOIN pg_collation l ON l.oid = a.attcollation WHERE a.attrelid = $1::regclass"
					   " AND a.attname = $2), true)", 2, NULL, params, NULL, NULL, 0);
	ok = PQresultStatus(res) == PGRES_TUPLES_OK && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	return ok;
}

/*
 * change.c's plan for the route, when it can apply the route's events in
 * the bridge: no metadata column, no dedupe, no money, keys whose text
 * compares as their value.  NULL otherwise (the staging path alone).
 */
static ChangePlan *
change_plan(RouteTargets *rt, const int *keys, int nkeys, bool identity)
{
	static int	generation = 0;
	const BridgeRoute *route = rt->route;
	ChangePlan *plan;
	Buf			b = {0};
	char		stage[64];
	int			t;
	int			k;

	if (!change_direct_enabled() || route->dedupe || rt->nt > CHANGE_MAX_COLUMNS || nkeys > CHANGE_MAX_KEYS)
		return NULL;
	for (t = 0; t < rt->nt; t++)
		if (rt->fields[t] != FIELD_JSON_KEY || strcmp(rt->target[t]->type, "money") == 0)
			return NULL;
	plan = calloc(1, sizeof(ChangePlan));
	plan->route = route;
	plan->ncols = rt->nt;
	plan->nkeys = nkeys;
	for (t = 0; t < rt->nt; t++)
		plan->key_of[t] = -1;
	for (k = 0; k < nkeys; k++)
	{
		plan->keys[k] = keys[k];
		plan->key_of[keys[k]] = k;
		if (!key_class(rt, rt->target[keys[k]], &plan->key_class[k]))
		{
			free(plan);
			return NULL;
		}
	}
	for (t = 0; t < rt->nt; t++)
	{
		const Column *c = rt->target[t];

		snprintf(plan->cols[t].name, sizeof(plan->cols[t].name), "%s", c->name);
		plan->cols[t].kind = column_kind(c, &plan->cols[t].n);
		plan->cols[t].by_default = c->defexpr[0] != '\0' && c->generated == '\0';
	}
	snprintf(plan->forms[0], sizeof(plan->forms[0]), "%s", route->dbz_placeholder);
	placeholder_texts(route->dbz_placeholder, plan->forms[1], plan->forms[2]);
	plan->gen = ++generation;
	snprintf(stage, sizeof(stage), "pg_temp.infra_bridge_change_%d", plan->gen);
	buf_printf(&b, "CREATE TEMP TABLE IF NOT EXISTS %s (seq integer, d boolean", stage);
	for (t = 0; t < rt->nt; t++)
		buf_printf(&b, ", c%d text", t);
	buf_puts(&b, ") ON COMMIT DELETE ROWS");
	plan->create = b.data;
	b = (Buf) {0};
	buf_printf(&b, "COPY %s FROM STDIN", stage);
	plan->copy = b.data;
	b = (Buf) {0};
	buf_printf(&b, "DELETE FROM %s t USING %s s WHERE s.d", rt->table, stage);
	for (k = 0; k < nkeys; k++)
		buf_printf(&b, " AND t.%s = s.c%d::%s", rt->target[keys[k]]->quoted, keys[k], rt->target[keys[k]]->type);
	plan->delete = b.data;
	b = (Buf) {0};
	buf_printf(&b, "INSERT INTO %s (", rt->table);
	for (t = 0; t < rt->nt; t++)
		buf_printf(&b, "%s%s", t ? ", " : "", rt->target[t]->quoted);
	buf_printf(&b, ")%s SELECT ", identity ? " OVERRIDING SYSTEM VALUE" : "");
	for (t = 0; t < rt->nt; t++)
		buf_printf(&b, "%s(s.c%d)::%s", t ? ", " : "", t, rt->target[t]->type);
	buf_printf(&b, " FROM %s s WHERE NOT s.d ORDER BY s.seq", stage);
	route_append_upsert(rt, keys, nkeys, &b);
	plan->upsert = b.data;
	b = (Buf) {0};
	buf_printf(&b, "TRUNCATE %s", rt->table);
	plan->truncate = b.data;
	return plan;
}

static bool
debezium_build(RouteTargets *rt, RouteSql *rs)
{
	int			keys[ROUTE_MAX_KEYS];
	int			nkeys;
	bool		need_f = false;
	bool		identity = false;
	int			t;
	Buf			truncate = {0};

	if (!debezium_targets(rt, keys, &nkeys))
		return false;
	if (rt->route->deletes && !may_truncate(rt))
		return false;
	for (t = 0; t < rt->nt; t++)
	{
		need_f |= rt->fields[t] == FIELD_JSON_KEY && needs_schema(rt->target[t]);
		identity |= rt->target[t]->identity == 'a';
	}
	if (rt->route->deletes)
		buf_printf(&truncate, "TRUNCATE %s", rt->table);
	route_set_statements(rs, build_upsert(rt, keys, nkeys, need_f, identity),
						 rt->route->deletes ? build_delete(rt, keys, nkeys, need_f) : NULL, build_count(rt),
						 build_merge(rt, keys, nkeys, need_f, identity), truncate.data);
	route_build_ids(rt->route, rs);
	if (rs->change != NULL)
	{
		free(rs->change->create);
		free(rs->change->copy);
		free(rs->change->delete);
		free(rs->change->upsert);
		free(rs->change->truncate);
		free(rs->change);
	}
	rs->change = change_plan(rt, keys, nkeys, identity);
	return true;
}

bool
debezium_check(PGconn *conn, const char *user_search_path, const BridgeRoute *route, RouteSql *rs)
{
	RouteTargets *rt = calloc(1, sizeof(RouteTargets));
	char		table[600];
	bool		ok;

	ok = route_targets(conn, user_search_path, route, rt, table, sizeof(table)) && debezium_build(rt, rs);
	free(rt->cols);
	free(rt);
	return ok && route_prepare(route, rs, table);
}
