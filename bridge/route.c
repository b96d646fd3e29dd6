/*-------------------------------------------------------------------------
 *
 * route.c
 *		infra-bridge: each route checked against the catalog (its table,
 *		columns and keys) and its statements made: the INSERT ... SELECT
 *		from the staging table (an upsert applying each key's last message,
 *		with deletes = on the DELETE of tombstoned keys first), the direct
 *		COPY where the route allows one, the dedupe ids.  The server
 *		prepares each once, so what it would refuse is reported at start.
 *
 * Runs on the main thread, on the connection db.c hands it, whose
 * search_path is pinned: the table is looked up under the role's own path
 * (then pinned again) and used by its qualified name.
 *
 *-------------------------------------------------------------------------
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "buf.h"
#include "encode.h"
#include "route.h"

/* The connection route_check was handed, and the role's own search_path. */
static PGconn *conn = NULL;
static const char *user_search_path = "";

/* ---------------------------------------------------------------------------
 * Routes against the catalog
 * ---------------------------------------------------------------------------
 */


/* Lower-case an unquoted identifier, as SQL folds it. */
static void
fold(char *dst, const char *src, size_t size)
{
	size_t		i;

	for (i = 0; src[i] && i + 1 < size; i++)
		dst[i] = (char) tolower((unsigned char) src[i]);
	dst[i] = '\0';
}

static const Column *
find_column(const Column *cols, int n, const char *name)
{
	char		folded[64];
	int			i;

	fold(folded, name, sizeof(folded));
	for (i = 0; i < n; i++)
		if (strcmp(cols[i].name, folded) == 0)
			return &cols[i];
	return NULL;
}

/*
 * A column of the route's table the configuration names; NULL, said in
 * the log, when the table has none of that name.
 */
const Column *
route_column(const Column *cols, int n, const char *name, const BridgeRoute *route, const char *table)
{
	const Column *c = find_column(cols, n, name);

	if (c == NULL)
		log_error("route \"%s\": column \"%s\" does not exist in %s", route->name, name, table);
	return c;
}

/*
 * The qualified name of the route's table, looked up under the role's own
 * search_path (then pinned again); false, reported, when there is none.
 */
bool
route_resolve_table(const BridgeRoute *route, char *table, size_t size)
{
	const char *params[1];
	char		oid[32] = "";
	PGresult   *res;

	params[0] = user_search_path;
	res = PQexecParams(conn, "SELECT pg_catalog.set_config('search_path', $1, false)",
					   1, NULL, params, NULL, NULL, 0);
	PQclear(res);
	params[0] = route->table;
	res = PQexecParams(conn, "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
					   1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
		snprintf(oid, sizeof(oid), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	res = PQexec(conn, "SET search_path = pg_catalog, pg_temp");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		log_error("cannot pin the session's search_path: %s", PQerrorMessage(conn));
		PQclear(res);
		return false;
	}
	PQclear(res);
	if (oid[0] == '\0')
	{
		log_error("route \"%s\": table \"%s\" does not exist", route->name, route->table);
		return false;
	}
	/* Under the pinned path, regclass prints the schema too. */
	params[0] = oid;
	res = PQexecParams(conn, "SELECT $1::pg_catalog.oid::pg_catalog.regclass::pg_catalog.text",
					   1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
	{
		log_error("route \"%s\": table \"%s\" does not exist", route->name, route->table);
		PQclear(res);
		return false;
	}
	snprintf(table, size, "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	return true;
}


/*
 * The table's columns (name, quoted name, type, whether it has a default)
 * into rt->cols; false, reported, when they cannot be read.
 */
bool
route_load_columns(RouteTargets *rt)
{
	const char *params[1] = {rt->table};
	PGresult   *res;
	int			i;

	res = PQexecParams(conn,
					   "SELECT a.attname, quote_ident(a.attname), format_type(a.atttypid, a.atttypmod),"
					   " a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '', t.typtype, t.typcategory,"
					   " a.attgenerated, a.attidentity, coalesce(pg_get_expr(d.adbin, d.adrelid), ''),"
					   " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisprimary"
					   " AND a.attnum = ANY (i.indkey))"
					   " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
					   " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
					   " WHERE a.attrelid = $1::regclass AND a.attnum > 0"
					   " AND NOT a.attisdropped ORDER BY a.attnum",
					   1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		log_error("route \"%s\": cannot read the columns of %s: %s", rt->route->name, rt->table,
				  PQerrorMessage(conn));
		PQclear(res);
		return false;
	}
	rt->ncols = PQntuples(res);
	rt->cols = calloc((size_t) rt->ncols + 1, sizeof(Column));
	for (i = 0; i < rt->ncols; i++)
	{
		Column	   *c = &rt->cols[i];

		snprintf(c->name, sizeof(c->name), "%s", PQgetvalue(res, i, 0));
		snprintf(c->quoted, sizeof(c->quoted), "%s", PQgetvalue(res, i, 1));
		snprintf(c->type, sizeof(c->type), "%s", PQgetvalue(res, i, 2));
		c->has_default = strcmp(PQgetvalue(res, i, 3), "t") == 0;
		c->typtype = PQgetvalue(res, i, 4)[0];
		c->typcategory = PQgetvalue(res, i, 5)[0];
		c->generated = PQgetvalue(res, i, 6)[0];
		c->identity = PQgetvalue(res, i, 7)[0];
		if (strlen(PQgetvalue(res, i, 8)) < sizeof(c->defexpr))
			snprintf(c->defexpr, sizeof(c->defexpr), "%s", PQgetvalue(res, i, 8));
		c->pkey = strcmp(PQgetvalue(res, i, 9), "t") == 0;
	}
	PQclear(res);
	return true;
}

/*
 * Add column col, filled by the expression fmt, as written by field;
 * false, reported, past ROUTE_MAX_TARGETS.
 */
bool
route_add_target(RouteTargets *rt, const Column *col, CopyField field, const char *fmt, ...)
{
	va_list		ap;

	if (rt->nt >= ROUTE_MAX_TARGETS)
	{
		log_error("route \"%s\": too many columns", rt->route->name);
		return false;
	}
	rt->target[rt->nt] = col;
	rt->fields[rt->nt] = field;
	va_start(ap, fmt);
	vsnprintf(rt->expr[rt->nt], sizeof(rt->expr[rt->nt]), fmt, ap);
	va_end(ap);
	rt->nt++;
	return true;
}

/*
 * The metadata columns (topic, partition, offset, key, timestamp,
 * headers), first: they win over a same-named JSON key.
 */
bool
route_add_metadata_targets(RouteTargets *rt)
{
	static const char *const meta_exprs[META_COUNT] = {
		"s.topic", "s.part", "s.off", NULL, "s.ts", NULL
	};
	static const CopyField meta_fields[META_COUNT] = {
		FIELD_TOPIC, FIELD_PARTITION, FIELD_OFFSET, FIELD_KEY_TEXT, FIELD_TIMESTAMP, FIELD_HEADERS
	};
	int			m;

	for (m = 0; m < META_COUNT; m++)
	{
		const Column *c;
		bool		ok;

		if (rt->route->meta[m][0] == '\0')
			continue;
		c = route_column(rt->cols, rt->ncols, rt->route->meta[m], rt->route, rt->table);
		if (c == NULL)
			return false;
		if (m == META_KEY)
			ok = strcmp(c->type, "bytea") == 0 ?
				route_add_target(rt, c, FIELD_KEY_BYTEA, "s.key") :
				route_add_target(rt, c, FIELD_KEY_TEXT, "convert_from(s.key, 'UTF8')");
		else if (m == META_HEADERS)
			ok = route_add_target(rt, c, FIELD_HEADERS, "s.headers::%s",
							strcmp(c->type, "json") == 0 ? "json" : "jsonb");
		else
			ok = route_add_target(rt, c, meta_fields[m], "%s", meta_exprs[m]);
		if (!ok)
			return false;
	}
	return true;
}

/*
 * json_columns: the listed columns, or every column without a default not
 * taken yet, each from the JSON key of its name (jsonb_populate_record).
 */
static bool
add_json_column_targets(RouteTargets *rt)
{
	char		list[BRIDGE_VALUE_LEN];
	char	   *save = NULL;
	char	   *tok;
	int			i;
	int			t;

	if (rt->route->columns[0] != '\0')
	{
		snprintf(list, sizeof(list), "%s", rt->route->columns);
		for (tok = strtok_r(list, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save))
		{
			const Column *c = route_column(rt->cols, rt->ncols, tok, rt->route, rt->table);

			if (c == NULL || !route_add_target(rt, c, FIELD_JSON_KEY, "r.%s", c->quoted))
				return false;
		}
		return true;
	}
	for (i = 0; i < rt->ncols; i++)
	{
		bool		taken = false;

		for (t = 0; t < rt->nt; t++)
			taken |= rt->target[t] == &rt->cols[i];
		/* Columns with defaults keep them unless listed. */
		if (!rt->cols[i].has_default && !taken &&
			!route_add_target(rt, &rt->cols[i], FIELD_JSON_KEY, "r.%s", rt->cols[i].quoted))
			return false;
	}
	return true;
}

/*
 * json, text or bytea: the whole value into the route's one column, whose
 * type must fit the format.
 */
static bool
add_value_target(RouteTargets *rt)
{
	const BridgeRoute *route = rt->route;
	const Column *c = route_column(rt->cols, rt->ncols, route->column, route, rt->table);

	if (c == NULL)
		return false;
	if ((route->format == FORMAT_JSON && strcmp(c->type, "jsonb") != 0 && strcmp(c->type, "json") != 0) ||
		(route->format == FORMAT_BYTEA && strcmp(c->type, "bytea") != 0))
	{
		log_error("route \"%s\": column %s of %s is %s, which format = %s cannot fill",
				  route->name, c->quoted, rt->table, c->type,
				  route->format == FORMAT_JSON ? "json" : "bytea");
		return false;
	}
	if (route->format == FORMAT_JSON)
		return route_add_target(rt, c, FIELD_VALUE_TEXT, "convert_from(s.val, 'UTF8')::%s", c->type);
	if (route->format == FORMAT_TEXT)
		return route_add_target(rt, c, FIELD_VALUE_TEXT, "convert_from(s.val, 'UTF8')");
	return route_add_target(rt, c, FIELD_VALUE_BYTEA, "s.val");
}

/*
 * The route's key_columns as indexes into its targets (keys, nkeys); false,
 * reported, for an unknown column or one the route does not write.
 */
bool
route_keys(RouteTargets *rt, int *keys, int *nkeys)
{
	char		list[BRIDGE_VALUE_LEN];
	char	   *save = NULL;
	char	   *tok;
	int			t;

	*nkeys = 0;
	snprintf(list, sizeof(list), "%s", rt->route->key_columns);
	for (tok = strtok_r(list, ", ", &save); tok && *nkeys < ROUTE_MAX_KEYS; tok = strtok_r(NULL, ", ", &save))
	{
		const Column *c = route_column(rt->cols, rt->ncols, tok, rt->route, rt->table);

		if (c == NULL)
			return false;
		for (t = 0; t < rt->nt && rt->target[t] != c; t++)
			;
		if (t == rt->nt)
		{
			log_error("route \"%s\": key column %s of %s is not one the route writes", rt->route->name,
					  c->quoted, rt->table);
			return false;
		}
		/* A tombstone has only its key: the value's own column cannot be one. */
		if (rt->route->deletes &&
			(rt->fields[t] == FIELD_VALUE_TEXT || rt->fields[t] == FIELD_VALUE_BYTEA))
		{
			log_error("route \"%s\": with deletes = on, key column %s cannot be the message value's", rt->route->name,
					  c->quoted);
			return false;
		}
		keys[(*nkeys)++] = t;
	}
	return true;
}

/* A column name as an SQL string literal. */
void
route_append_literal(Buf *b, const char *s)
{
	buf_puts(b, "'");
	for (; *s; s++)
		buf_printf(b, "%s", *s == '\'' ? "''" : (char[2]) {*s, '\0'});
	buf_puts(b, "'");
}

/*
 * FROM and WHERE of a route's statements over the staging table: its rows
 * with seq in $2..$3 ($1 the route; $4 its name, used by dedupe), with r,
 * for json_columns, the row jsonb_populate_record makes of the value, or
 * of the key when the value is null (a tombstone: a JSON object holding
 * the key columns, Debezium's schema/payload wrapping allowed, or with one
 * key column a JSON scalar, its value).  tombstones: only rows without a
 * value.
 */
void
route_append_source(RouteTargets *rt, const int *keys, int nkeys, Buf *b, bool tombstones, bool with_r)
{
	const BridgeRoute *route = rt->route;

	/* With dedupe, only the first of a message id in the batch counts. */
	if (route->dedupe)
		buf_puts(b, " FROM (SELECT *, row_number() OVER (PARTITION BY msg_id ORDER BY seq) AS nth"
				 " FROM pg_temp.infra_bridge_stage WHERE route = $1) s");
	else
		buf_puts(b, " FROM pg_temp.infra_bridge_stage s");
	if (with_r && rt->lateral != NULL)
		buf_puts(b, rt->lateral);
	else if (!with_r || route->format != FORMAT_JSON_COLUMNS)
		;
	else if (!route->deletes)
		buf_printf(b, ", LATERAL jsonb_populate_record(NULL::%s, convert_from(s.val, 'UTF8')::jsonb) r",
				   rt->table);
	else
	{
		buf_printf(b, ", LATERAL jsonb_populate_record(NULL::%s, CASE WHEN s.val IS NOT NULL"
				   " THEN convert_from(s.val, 'UTF8')::jsonb ELSE"
				   " (SELECT CASE WHEN jsonb_typeof(k) <> 'object' AND %d = 1 THEN jsonb_build_object(",
				   rt->table, nkeys);
		route_append_literal(b, nkeys > 0 ? rt->target[keys[0]]->name : "");
		buf_puts(b, ", k) WHEN jsonb_typeof(k) = 'object' AND k ? 'schema' AND k ? 'payload' THEN k -> 'payload'"
				 " ELSE k END FROM (SELECT convert_from(s.key, 'UTF8')::jsonb) AS x(k)) END) r");
	}
	buf_puts(b, " WHERE s.route = $1 AND s.seq BETWEEN $2 AND $3");
	if (tombstones)
		buf_puts(b, " AND s.val IS NULL");
	/* $4, the route's name, is used by dedupe; typed either way. */
	if (route->dedupe)
		buf_puts(b, " AND (s.msg_id IS NULL OR (s.nth = 1 AND NOT EXISTS (SELECT 1 FROM infra.bridge_message_ids m"
				 " WHERE m.route = $4::text AND m.msg_id = s.msg_id)))");
	else
		buf_puts(b, " AND $4::text IS NOT NULL");
}

/*
 * ON CONFLICT (key_columns) DO UPDATE SET the other targets (or DO
 * NOTHING), appended to insert.
 */
void
route_append_upsert(RouteTargets *rt, const int *keys, int nkeys, Buf *insert)
{
	int			k;
	int			t;
	int			nset = 0;

	buf_puts(insert, " ON CONFLICT (");
	for (k = 0; k < nkeys; k++)
		buf_printf(insert, "%s%s", k ? ", " : "", rt->target[keys[k]]->quoted);
	buf_puts(insert, ") DO ");
	for (t = 0; t < rt->nt; t++)
	{
		bool		is_key = false;

		for (k = 0; k < nkeys; k++)
			is_key |= keys[k] == t;
		if (is_key)
			continue;
		buf_printf(insert, "%s%s = EXCLUDED.%s", nset++ ? ", " : "UPDATE SET ",
				   rt->target[t]->quoted, rt->target[t]->quoted);
	}
	if (nset == 0)
		buf_puts(insert, "NOTHING");
}

/*
 * The route's INSERT ... SELECT from the staging table ($1 route, $2..$3
 * the range of sequence numbers, $4 the route's name for dedupe) into sql,
 * and with deletes its DELETE of the keys tombstoned in the range into
 * del; false, reported, when a key column is wrong.
 *
 * An upsert applies each key's last message in the range only (the one
 * that would win were they applied one by one, and ON CONFLICT may touch
 * a row once per statement); with deletes, the DELETE runs first and
 * removes every key with a tombstone in the range, so a tombstone then a
 * new value ends with a fresh row, as in offset order.
 */
static bool
build_insert(RouteTargets *rt, char **sql, char **del, char **count)
{
	const BridgeRoute *route = rt->route;
	Buf			insert = {0};
	Buf			delete = {0};
	int			keys[ROUTE_MAX_KEYS];
	int			nkeys = 0;
	int			t;
	int			k;

	*del = NULL;
	*count = NULL;
	if (route->upsert && !route_keys(rt, keys, &nkeys))
		return false;
	buf_printf(&insert, "INSERT INTO %s (", rt->table);
	for (t = 0; t < rt->nt; t++)
		buf_printf(&insert, "%s%s", t ? ", " : "", rt->target[t]->quoted);
	if (!route->upsert)
	{
		buf_puts(&insert, ") SELECT ");
		for (t = 0; t < rt->nt; t++)
			buf_printf(&insert, "%s%s", t ? ", " : "", rt->expr[t]);
		route_append_source(rt, keys, nkeys, &insert, false, true);
		buf_puts(&insert, " ORDER BY s.seq");
		*sql = insert.data;
		return true;
	}
	buf_puts(&insert, ") SELECT ");
	for (t = 0; t < rt->nt; t++)
		buf_printf(&insert, "%sl.c%d", t ? ", " : "", t);
	/* A message without its key is one of its own (its insert fails). */
	buf_puts(&insert, " FROM (SELECT DISTINCT ON (");
	for (k = 0; k < nkeys; k++)
		buf_printf(&insert, "%s, ", rt->expr[keys[k]]);
	buf_puts(&insert, "CASE WHEN ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&insert, "%s%s IS NULL", k ? " OR " : "", rt->expr[keys[k]]);
	buf_puts(&insert, " THEN s.seq END) s.seq, s.val IS NULL AS gone");
	for (t = 0; t < rt->nt; t++)
		buf_printf(&insert, ", %s AS c%d", rt->expr[t], t);
	route_append_source(rt, keys, nkeys, &insert, false, true);
	buf_puts(&insert, " ORDER BY ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&insert, "%s, ", rt->expr[keys[k]]);
	buf_puts(&insert, "CASE WHEN ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&insert, "%s%s IS NULL", k ? " OR " : "", rt->expr[keys[k]]);
	buf_puts(&insert, " THEN s.seq END, s.seq DESC) l");
	buf_puts(&insert, route->deletes ? " WHERE NOT l.gone ORDER BY l.seq" : " ORDER BY l.seq");
	route_append_upsert(rt, keys, nkeys, &insert);
	if (route->deletes)
	{
		buf_printf(&delete, "DELETE FROM %s t USING (SELECT DISTINCT ", rt->table);
		for (k = 0; k < nkeys; k++)
			buf_printf(&delete, "%s%s AS k%d", k ? ", " : "", rt->expr[keys[k]], k);
		route_append_source(rt, keys, nkeys, &delete, true, true);
		buf_puts(&delete, ") g WHERE ");
		for (k = 0; k < nkeys; k++)
			buf_printf(&delete, "%st.%s = g.k%d", k ? " AND " : "", rt->target[keys[k]]->quoted, k);
		*del = delete.data;
	}
	/* What the range's messages come to (upserts and tombstones, each). */
	{
		Buf			c = {0};

		buf_puts(&c, "SELECT count(*)");
		route_append_source(rt, keys, nkeys, &c, false, false);
		*count = c.data;
	}
	*sql = insert.data;
	return true;
}

/*
 * Can a json_columns route COPY this column the JSON value's text (json.c
 * picks it) and get what jsonb_populate_record would give it?  Scalar
 * types (base, enum, range, multirange; not arrays, composites, domains,
 * json), and jsonb.
 */
static bool
json_key_direct(const Column *c)
{
	return strchr("berm", c->typtype) != NULL && c->typcategory != 'A' &&
		strcmp(c->type, "json") != 0;
}

/*
 * No conflict handling, no dedupe: the batch can be COPYed straight into
 * the table, the way a hand-written pipeline would (the staging path is
 * the fallback when that COPY meets a bad message): one value into one
 * column, binary when every column has a binary form the bridge writes;
 * or json_columns, text, the bridge picking the JSON keys out itself when
 * every such column is one json_key_direct allows.
 */
static void
build_copy(RouteTargets *rt, RouteSql *rs)
{
	const BridgeRoute *route = rt->route;
	Buf			copy = {0};
	int			t;
	int			k;

	free(rs->copy);
	rs->copy = NULL;
	for (k = 0; k < rs->shape.nkeys; k++)
		free((char *) rs->shape.keys[k]);
	rs->shape.nkeys = 0;
	if (route->upsert || route->dedupe || rt->nt > SHAPE_MAX_FIELDS)
		return;
	for (t = 0; t < rt->nt; t++)
		if (rt->fields[t] == FIELD_JSON_KEY && !json_key_direct(rt->target[t]))
		{
			log_info("route \"%s\": column %s (%s) is filled by jsonb_populate_record on the server",
					 route->name, rt->target[t]->quoted, rt->target[t]->type);
			return;
		}
	rs->shape.binary = route->format != FORMAT_JSON_COLUMNS;
	buf_printf(&copy, "COPY %s (", rt->table);
	for (t = 0; t < rt->nt; t++)
	{
		buf_printf(&copy, "%s%s", t ? ", " : "", rt->target[t]->quoted);
		rs->shape.fields[t] = rt->fields[t];
		rs->shape.forms[t] = binary_form(rt->fields[t], rt->target[t]->type);
		rs->shape.binary &= rs->shape.forms[t] != BINARY_NONE;
		if (rt->fields[t] == FIELD_JSON_KEY)
		{
			k = rs->shape.nkeys++;
			rs->shape.keys[k] = strdup(rt->target[t]->name);
			rs->shape.raw[k] = strcmp(rt->target[t]->type, "jsonb") == 0;
			rs->shape.key_of[t] = k;
		}
	}
	buf_puts(&copy, rs->shape.binary ? ") FROM STDIN (FORMAT binary)" : ") FROM STDIN");
	rs->shape.nfields = rt->nt;
	rs->copy = copy.data;
}

/*
 * With dedupe: the statement remembering a range's message ids.
 */
void
route_build_ids(const BridgeRoute *route, RouteSql *rs)
{
	free(rs->ids);
	rs->ids = NULL;
	if (route->dedupe)
		rs->ids = strdup("INSERT INTO infra.bridge_message_ids (route, msg_id)"
						 " SELECT DISTINCT $4::text, s.msg_id FROM pg_temp.infra_bridge_stage s"
						 " WHERE s.route = $1 AND s.seq BETWEEN $2 AND $3 AND s.msg_id IS NOT NULL"
						 " ON CONFLICT DO NOTHING");
}

/*
 * One route: its table and columns checked, its statements made, its
 * INSERT prepared once so that anything the server would refuse (a type
 * that does not fit, ON CONFLICT without a unique index) is reported now.
 */
/*
 * Have the server prepare the route's statements once, so that anything it
 * would refuse (a type that does not fit, ON CONFLICT without a unique
 * index, a handler's call) is reported now; target names the table or
 * handler.
 */
bool
route_prepare(const BridgeRoute *route, RouteSql *rs, const char *target)
{
	const char *stmts[3] = {rs->delete, rs->insert, rs->merge};
	int			i;

	for (i = 0; i < 3; i++)
	{
		PGresult   *res;

		if (stmts[i] == NULL)
			continue;
		res = PQprepare(conn, "", stmts[i], 4, NULL);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
		{
			log_error("route \"%s\": the server refuses its statement for %s: %s (%s)", route->name, target,
					  PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY), stmts[i]);
			PQclear(res);
			return false;
		}
		PQclear(res);
		log_debug("route \"%s\": %s", route->name, stmts[i]);
	}
	if (rs->copy != NULL)
		log_debug("route \"%s\": %s", route->name, rs->copy);
	return true;
}

/*
 * Replace a route's statements with those given (each taken over, NULL
 * for none); the direct COPY is made apart.
 */
void
route_set_statements(RouteSql *rs, char *insert, char *delete, char *count, char *merge, char *truncate)
{
	free(rs->insert);
	rs->insert = insert;
	free(rs->delete);
	rs->delete = delete;
	free(rs->count);
	rs->count = count;
	free(rs->merge);
	rs->merge = merge;
	free(rs->truncate);
	rs->truncate = truncate;
	free(rs->copy);
	rs->copy = NULL;
}

/*
 * A handler route: its routine (a function or a procedure of one argument
 * of type infra.bridge_message[]) looked up under the role's own
 * search_path, then called by its qualified name with the range's messages
 * (infra.bridge_batch reads them from the staging table, in offset order,
 * dedupe applied).  False, reported, when there is no such routine.
 */
static bool
check_handler(const BridgeRoute *route, RouteSql *rs)
{
	const char *params[1];
	char		sig[300];
	char		name[600] = "";
	char		kind = 'f';
	PGresult   *res;
	RouteTargets rt = {.route = route};
	Buf			call = {0};
	Buf			count = {0};

	params[0] = user_search_path;
	PQclear(PQexecParams(conn, "SELECT pg_catalog.set_config('search_path', $1, false)",
						 1, NULL, params, NULL, NULL, 0));
	snprintf(sig, sizeof(sig), "%s(infra.bridge_message[])", route->handler);
	params[0] = sig;
	res = PQexecParams(conn, "SELECT pg_catalog.to_regprocedure($1)::pg_catalog.oid", 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0))
		snprintf(name, sizeof(name), "%s", PQgetvalue(res, 0, 0));
	PQclear(res);
	res = PQexec(conn, "SET search_path = pg_catalog, pg_temp");
	PQclear(res);
	if (name[0] == '\0')
	{
		log_error("route \"%s\": no function or procedure %s: write one taking (messages infra.bridge_message[])",
				  route->name, sig);
		return false;
	}
	/* Under the pinned path, regproc prints the schema too. */
	params[0] = name;
	res = PQexecParams(conn, "SELECT p.oid::pg_catalog.regproc::pg_catalog.text, p.prokind FROM pg_catalog.pg_proc p"
					   " WHERE p.oid = $1::pg_catalog.oid", 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
	{
		log_error("route \"%s\": cannot read handler %s: %s", route->name, sig, PQerrorMessage(conn));
		PQclear(res);
		return false;
	}
	snprintf(name, sizeof(name), "%s", PQgetvalue(res, 0, 0));
	kind = PQgetvalue(res, 0, 1)[0];
	PQclear(res);
	/* $4, the route's name, is for dedupe; typed either way. */
	buf_printf(&call, "%s %s(infra.bridge_batch($1::integer, $2::integer, $3::integer, %s))",
			   kind == 'p' ? "CALL" : "SELECT", name,
			   route->dedupe ? "$4::text" : "CASE WHEN $4::text IS NULL THEN NULL::text END");
	buf_puts(&count, "SELECT count(*)");
	route_append_source(&rt, NULL, 0, &count, false, false);
	route_set_statements(rs, call.data, NULL, count.data, NULL, NULL);
	route_build_ids(route, rs);
	return true;
}

/*
 * The start of every table route's check: its table looked up (its
 * qualified name into table), its columns read, its metadata targets
 * added, on connection c with the role's own search_path user_path.
 */
bool
route_targets(PGconn *c, const char *user_path, const BridgeRoute *route, RouteTargets *rt, char *table,
			  size_t size)
{
	conn = c;
	user_search_path = user_path;
	rt->route = route;
	rt->table = table;
	return route_resolve_table(route, table, size) && route_load_columns(rt) && route_add_metadata_targets(rt);
}

bool
route_check(PGconn *c, const char *user_path, const BridgeRoute *route, RouteSql *rs)
{
	RouteTargets *rt = calloc(1, sizeof(RouteTargets));
	char		table[600];
	char	   *insert = NULL;
	char	   *del = NULL;
	char	   *count = NULL;
	bool		ok;

	if (route->handler[0] != '\0')
	{
		free(rt);
		conn = c;
		user_search_path = user_path;
		return check_handler(route, rs) && route_prepare(route, rs, route->handler);
	}
	ok = route_targets(c, user_path, route, rt, table, sizeof(table));
	ok = ok && (route->format == FORMAT_JSON_COLUMNS ? add_json_column_targets(rt) : add_value_target(rt)) &&
		build_insert(rt, &insert, &del, &count);
	if (ok)
	{
		route_set_statements(rs, insert, del, count, NULL, NULL);
		build_copy(rt, rs);
		route_build_ids(route, rs);
	}
	free(rt->cols);
	free(rt);
	if (!ok)
		return false;

	return route_prepare(route, rs, table);
}


/* The connection route_check is working on, for debezium.c. */
PGconn *
route_conn(void)
{
	return conn;
}
