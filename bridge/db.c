/*-------------------------------------------------------------------------
 *
 * db.c
 *		infra-bridge's PostgreSQL side: routes checked against the catalog,
 *		and each batch written with its offsets in one transaction.
 *
 * A route that fills one value column (no upsert, no dedupe) has its rows
 * COPYed straight into its table, in binary format when every column has
 * a binary form we write, streamed while the batch is formatted.  Other
 * routes, and a route whose COPY met a bad message, go through a temporary
 * staging table: COPY into it, then one INSERT ... SELECT per route.  When
 * that fails on bad data (SQLSTATE classes 22 and 23), the route's rows are
 * split in halves under savepoints until the bad messages are alone; those
 * go to infra.bridge_dead_letters with the error, the rest is written.  Any
 * other error (permissions, a dropped table, the connection) aborts the
 * transaction and the batch is tried again: a systemic failure never
 * turns good messages into dead letters.
 *
 * The offsets move by compare-and-set: a partition's row must still hold
 * the offset this bridge read or last wrote, else another member of the
 * group took the partition over and the batch is rolled back.  So a batch
 * is written once, whatever dies when.
 *
 * The COPY data itself (text and binary formats, staging rows) is made by
 * encode.c.
 *
 * Every session pins search_path to pg_catalog, pg_temp as it connects:
 * the statements here, and the user triggers they fire, resolve functions
 * and operators in pg_catalog only, whatever objects a role created on its
 * own path.  Route tables are looked up once under the role's own path
 * (as a user who names an unqualified table expects) and used by their
 * qualified names from then on.
 *
 *-------------------------------------------------------------------------
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bridge.h"
#include "buf.h"
#include "encode.h"

/* Per-route statements made by db_check_routes. */
typedef struct RouteSql
{
	char	   *insert;			/* $1 route, $2..$3 seq range, $4 route name */
	char	   *delete;			/* deletes = on: the range's tombstoned keys */
	char	   *count;			/* upsert: the range's messages applied */
	char	   *ids;			/* message ids of a range, for dedupe */
	char	   *copy;			/* direct COPY into the table, or NULL */
	CopyShape	shape;			/* what that COPY's columns get */
} RouteSql;

/*
 * One connection per writer (slot); conn is the one this thread works
 * with: each writer thread sets it to its slot's, the main thread to
 * slot 0's.  The temporary staging table lives in each connection.
 */
static PGconn *conns[BRIDGE_MAX_WRITERS];
static __thread PGconn *conn = NULL;
static RouteSql route_sql[BRIDGE_MAX_ROUTES];

/* The role's own search_path, seen before it was pinned, for route tables. */
static char user_search_path[1024];

/* ---------------------------------------------------------------------------
 * Connection
 * ---------------------------------------------------------------------------
 */

/*
 * Connect (again), with exponential backoff and jitter between attempts
 * unless once; false when stopped or, with once, on failure.
 */
bool
db_connect(const BridgeConfig *config, int slot, bool once)
{
	int			delay_ms = 500;
	PGresult   *res;

	for (;;)
	{
		if (conns[slot] != NULL)
			PQfinish(conns[slot]);
		conns[slot] = conn = PQconnectdb(config->conninfo);
		if (PQstatus(conn) == CONNECTION_OK)
			break;
		/* libpq's message names the server, never the password. */
		log_warning("cannot connect to PostgreSQL: %s", PQerrorMessage(conn));
		if (once || bridge_stop)
			return false;
		{
			/* Half the delay, plus up to as much again at random. */
			long		ms = delay_ms / 2 + rand() % (delay_ms / 2 + 1);
			struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

			nanosleep(&ts, NULL);
		}
		if (delay_ms < 30000)
			delay_ms *= 2;
		if (bridge_stop)
			return false;
	}
	if (slot == 0)
	{
		res = PQexec(conn, "SHOW search_path");
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
			snprintf(user_search_path, sizeof(user_search_path), "%s", PQgetvalue(res, 0, 0));
		PQclear(res);
	}
	/* What the bridge sends as text is UTF-8, as Kafka's payloads are. */
	res = PQexec(conn,
				 "SET search_path = pg_catalog, pg_temp;"
				 "SET application_name = 'infra-bridge';"
				 "SET client_encoding = 'UTF8';"
				 "CREATE TEMP TABLE IF NOT EXISTS pg_temp.infra_bridge_stage ("
				 " seq integer, route integer, topic text, part integer, off bigint,"
				 " key bytea, val bytea, ts timestamptz, headers jsonb, msg_id text)"
				 " ON COMMIT DELETE ROWS");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		log_error("cannot prepare the session: %s", PQerrorMessage(conn));
		PQclear(res);
		return false;
	}
	PQclear(res);
	if (slot == 0)
	{
		log_info("connected to PostgreSQL");
		metrics_db_up(true);
	}
	return true;
}

void
db_disconnect(void)
{
	int			slot;

	for (slot = 0; slot < BRIDGE_MAX_WRITERS; slot++)
	{
		if (conns[slot] != NULL)
			PQfinish(conns[slot]);
		conns[slot] = NULL;
	}
	conn = NULL;
	metrics_db_up(false);
}

/*
 * Is the slot's connection there and well?
 */
bool
db_connected(int slot)
{
	return conns[slot] != NULL && PQstatus(conns[slot]) == CONNECTION_OK;
}

/* ---------------------------------------------------------------------------
 * Routes against the catalog
 * ---------------------------------------------------------------------------
 */

typedef struct Column
{
	char		name[64];		/* as in the catalog */
	char		quoted[140];	/* quote_ident */
	char		type[64];		/* format_type */
	char		typtype;		/* pg_type's: b base, d domain, e enum, ... */
	char		typcategory;	/* pg_type's: A array, ... */
	bool		has_default;
} Column;

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
static const Column *
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
static bool
resolve_table(const BridgeRoute *route, char *table, size_t size)
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

/* The columns a route writes and the expression of each, as it is built. */
#define ROUTE_MAX_TARGETS 256
#define ROUTE_MAX_KEYS 64
typedef struct RouteTargets
{
	const BridgeRoute *route;
	const char *table;			/* qualified name */
	Column	   *cols;			/* every column of the table */
	int			ncols;
	const Column *target[ROUTE_MAX_TARGETS];
	char		expr[ROUTE_MAX_TARGETS][200];
	CopyField	fields[ROUTE_MAX_TARGETS];
	int			nt;
} RouteTargets;

/*
 * The table's columns (name, quoted name, type, whether it has a default)
 * into rt->cols; false, reported, when they cannot be read.
 */
static bool
load_columns(RouteTargets *rt)
{
	const char *params[1] = {rt->table};
	PGresult   *res;
	int			i;

	res = PQexecParams(conn,
					   "SELECT attname, quote_ident(attname), format_type(atttypid, atttypmod),"
					   " atthasdef OR attidentity <> '' OR attgenerated <> '', typtype, typcategory"
					   " FROM pg_attribute JOIN pg_type ON pg_type.oid = atttypid"
					   " WHERE attrelid = $1::regclass AND attnum > 0"
					   " AND NOT attisdropped ORDER BY attnum",
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
	}
	PQclear(res);
	return true;
}

/*
 * Add column col, filled by the expression fmt, as written by field;
 * false, reported, past ROUTE_MAX_TARGETS.
 */
static bool
add_target(RouteTargets *rt, const Column *col, CopyField field, const char *fmt, ...)
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
static bool
add_metadata_targets(RouteTargets *rt)
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
				add_target(rt, c, FIELD_KEY_BYTEA, "s.key") :
				add_target(rt, c, FIELD_KEY_TEXT, "convert_from(s.key, 'UTF8')");
		else if (m == META_HEADERS)
			ok = add_target(rt, c, FIELD_HEADERS, "s.headers::%s",
							strcmp(c->type, "json") == 0 ? "json" : "jsonb");
		else
			ok = add_target(rt, c, meta_fields[m], "%s", meta_exprs[m]);
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

			if (c == NULL || !add_target(rt, c, FIELD_JSON_KEY, "r.%s", c->quoted))
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
			!add_target(rt, &rt->cols[i], FIELD_JSON_KEY, "r.%s", rt->cols[i].quoted))
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
		return add_target(rt, c, FIELD_VALUE_TEXT, "convert_from(s.val, 'UTF8')::%s", c->type);
	if (route->format == FORMAT_TEXT)
		return add_target(rt, c, FIELD_VALUE_TEXT, "convert_from(s.val, 'UTF8')");
	return add_target(rt, c, FIELD_VALUE_BYTEA, "s.val");
}

/*
 * The route's key_columns as indexes into its targets (keys, nkeys); false,
 * reported, for an unknown column or one the route does not write.
 */
static bool
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
static void
append_literal(Buf *b, const char *s)
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
static void
append_source(RouteTargets *rt, const int *keys, int nkeys, Buf *b, bool tombstones, bool with_r)
{
	const BridgeRoute *route = rt->route;

	/* With dedupe, only the first of a message id in the batch counts. */
	if (route->dedupe)
		buf_puts(b, " FROM (SELECT *, row_number() OVER (PARTITION BY msg_id ORDER BY seq) AS nth"
				 " FROM pg_temp.infra_bridge_stage WHERE route = $1) s");
	else
		buf_puts(b, " FROM pg_temp.infra_bridge_stage s");
	if (!with_r || route->format != FORMAT_JSON_COLUMNS)
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
		append_literal(b, nkeys > 0 ? rt->target[keys[0]]->name : "");
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
static void
append_upsert(RouteTargets *rt, const int *keys, int nkeys, Buf *insert)
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
		append_source(rt, keys, nkeys, &insert, false, true);
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
	append_source(rt, keys, nkeys, &insert, false, true);
	buf_puts(&insert, " ORDER BY ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&insert, "%s, ", rt->expr[keys[k]]);
	buf_puts(&insert, "CASE WHEN ");
	for (k = 0; k < nkeys; k++)
		buf_printf(&insert, "%s%s IS NULL", k ? " OR " : "", rt->expr[keys[k]]);
	buf_puts(&insert, " THEN s.seq END, s.seq DESC) l");
	buf_puts(&insert, route->deletes ? " WHERE NOT l.gone ORDER BY l.seq" : " ORDER BY l.seq");
	append_upsert(rt, keys, nkeys, &insert);
	if (route->deletes)
	{
		buf_printf(&delete, "DELETE FROM %s t USING (SELECT DISTINCT ", rt->table);
		for (k = 0; k < nkeys; k++)
			buf_printf(&delete, "%s%s AS k%d", k ? ", " : "", rt->expr[keys[k]], k);
		append_source(rt, keys, nkeys, &delete, true, true);
		buf_puts(&delete, ") g WHERE ");
		for (k = 0; k < nkeys; k++)
			buf_printf(&delete, "%st.%s = g.k%d", k ? " AND " : "", rt->target[keys[k]]->quoted, k);
		*del = delete.data;
	}
	/* What the range's messages come to (upserts and tombstones, each). */
	{
		Buf			c = {0};

		buf_puts(&c, "SELECT count(*)");
		append_source(rt, keys, nkeys, &c, false, false);
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
static void
build_ids(const BridgeRoute *route, RouteSql *rs)
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
static bool
check_route(const BridgeRoute *route, RouteSql *rs)
{
	RouteTargets *rt = calloc(1, sizeof(RouteTargets));
	char		table[600];
	char	   *insert = NULL;
	char	   *del = NULL;
	char	   *count = NULL;
	PGresult   *res;
	bool		ok;

	rt->route = route;
	rt->table = table;
	ok = resolve_table(route, table, sizeof(table)) && load_columns(rt) &&
		add_metadata_targets(rt) &&
		(route->format == FORMAT_JSON_COLUMNS ? add_json_column_targets(rt) : add_value_target(rt)) &&
		build_insert(rt, &insert, &del, &count);
	if (ok)
	{
		free(rs->insert);
		rs->insert = insert;
		free(rs->delete);
		rs->delete = del;
		free(rs->count);
		rs->count = count;
		build_copy(rt, rs);
		build_ids(route, rs);
	}
	free(rt->cols);
	free(rt);
	if (!ok)
		return false;

	res = PQprepare(conn, "", rs->insert, 4, NULL);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		log_error("route \"%s\": the server refuses its INSERT into %s: %s", route->name, table,
				  PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
		PQclear(res);
		return false;
	}
	PQclear(res);
	if (rs->delete != NULL)
	{
		res = PQprepare(conn, "", rs->delete, 4, NULL);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
		{
			log_error("route \"%s\": the server refuses its DELETE from %s: %s", route->name, table,
					  PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
			PQclear(res);
			return false;
		}
		PQclear(res);
		log_debug("route \"%s\": %s", route->name, rs->delete);
	}
	log_debug("route \"%s\": %s", route->name, rs->insert);
	if (rs->copy != NULL)
		log_debug("route \"%s\": %s", route->name, rs->copy);
	return true;
}

/*
 * Check every route's table and columns, and make its statements.
 */
bool
db_check_routes(const BridgeConfig *config)
{
	PGresult   *res;
	int			r;

	conn = conns[0];
	res = PQexec(conn, "SELECT to_regclass('infra.bridge_offsets') IS NOT NULL");
	if (PQresultStatus(res) != PGRES_TUPLES_OK || strcmp(PQgetvalue(res, 0, 0), "t") != 0)
	{
		log_error("table infra.bridge_offsets is missing: run CREATE EXTENSION infra in the bridge's database");
		PQclear(res);
		return false;
	}
	PQclear(res);
	for (r = 0; r < config->nroutes; r++)
		if (!check_route(&config->routes[r], &route_sql[r]))
			return false;
	return true;
}

/*
 * The stored next offset of a partition of this group; -1 when none.
 * false when PostgreSQL could not be asked.
 */
bool
db_load_offsets(const BridgeConfig *config, const char *topic, int32_t partition,
				int64_t *next_offset)
{
	char		part[16];
	const char *params[3] = {config->group, topic, part};
	PGresult   *res;

	snprintf(part, sizeof(part), "%d", partition);
	conn = conns[0];
	if (conn == NULL)
		return false;
	res = PQexecParams(conn,
					   "SELECT next_offset FROM infra.bridge_offsets"
					   " WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
					   3, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		log_warning("cannot read infra.bridge_offsets: %s", PQerrorMessage(conn));
		PQclear(res);
		return false;
	}
	*next_offset = PQntuples(res) > 0 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : -1;
	PQclear(res);
	return true;
}

/* ---------------------------------------------------------------------------
 * Writing a batch
 * ---------------------------------------------------------------------------
 */

/*
 * COPY data goes to the server in pieces of about this size while the rest
 * is still being formatted, so that the server parses one piece while the
 * bridge formats the next.
 */
#define COPY_PIECE (256 * 1024)

/* Start a COPY ... FROM STDIN; NULL when it started, else its result. */
static PGresult *
copy_start(const char *sql)
{
	PGresult   *res = PQexec(conn, sql);

	if (PQresultStatus(res) == PGRES_COPY_IN)
	{
		PQclear(res);
		return NULL;
	}
	return res;
}

/*
 * Send the buffer's data and empty it.  False when libpq refuses more: the
 * connection failed, or the server already ended the COPY with an error
 * (which copy_end then reports).
 */
static bool
copy_send(Buf *data)
{
	bool		ok = data->len == 0 || PQputCopyData(conn, data->data, (int) data->len) == 1;

	data->len = 0;
	return ok;
}

/*
 * End the COPY (abort it, with that error, when error is not NULL) and
 * return its outcome: the server's last result, whose status the caller
 * checks (NULL when the connection is gone).
 */
static PGresult *
copy_end(const char *error)
{
	PGresult   *res;
	PGresult   *last = NULL;

	(void) PQputCopyEnd(conn, error);
	while ((res = PQgetResult(conn)) != NULL)
	{
		if (last != NULL)
			PQclear(last);
		last = res;
	}
	return last;
}

/* Run a statement; true when it went well. */
static bool
run(const char *sql)
{
	PGresult   *res = PQexec(conn, sql);
	bool		ok = PQresultStatus(res) == PGRES_COMMAND_OK;

	if (!ok)
		log_warning("\"%s\" failed: %s", sql, PQerrorMessage(conn));
	PQclear(res);
	return ok;
}

/* Is this error the data's fault (a bad message), not the system's? */
static bool
data_error(const PGresult *res)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	return state != NULL && (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
							 strcmp(state, "42804") == 0 || strcmp(state, "21000") == 0);
}

typedef enum RangeResult
{
	RANGE_OK,
	RANGE_FAILED				/* a systemic error: abort the batch */
} RangeResult;

/*
 * Write a route's rows with seq in [lo, hi] under a savepoint; on a data
 * error split the range, and dead-letter a single row that still fails.
 */
static RangeResult
write_range(const BridgeConfig *config, int route, int lo, int hi, long long *written, long long *dead)
{
	char		a[16],
				b[16],
				c[16];
	const char *params[4] = {a, b, c, config->routes[route].name};
	PGresult   *res;
	long long	applied;
	bool		bad_data;

	snprintf(a, sizeof(a), "%d", route);
	snprintf(b, sizeof(b), "%d", lo);
	snprintf(c, sizeof(c), "%d", hi);
	if (!run("SAVEPOINT infra_bridge_range"))
		return RANGE_FAILED;
	res = NULL;
	applied = -1;
	/* An upsert writes a row per key: count the messages it applies. */
	if (route_sql[route].count != NULL)
	{
		res = PQexecParams(conn, route_sql[route].count, 4, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK)
		{
			applied = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
			PQclear(res);
			res = NULL;
		}
	}
	if (res == NULL && route_sql[route].delete != NULL)
	{
		res = PQexecParams(conn, route_sql[route].delete, 4, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_COMMAND_OK)
		{
			PQclear(res);
			res = NULL;
		}
	}
	if (res == NULL)
		res = PQexecParams(conn, route_sql[route].insert, 4, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) == PGRES_COMMAND_OK)
	{
		long long	n = applied >= 0 ? applied : strtoll(PQcmdTuples(res), NULL, 10);

		PQclear(res);
		if (route_sql[route].ids != NULL)
		{
			res = PQexecParams(conn, route_sql[route].ids, 4, NULL, params, NULL, NULL, 0);
			if (PQresultStatus(res) != PGRES_COMMAND_OK)
			{
				log_warning("cannot record message ids: %s", PQerrorMessage(conn));
				PQclear(res);
				return RANGE_FAILED;
			}
			PQclear(res);
		}
		*written += n;
		return run("RELEASE SAVEPOINT infra_bridge_range") ? RANGE_OK : RANGE_FAILED;
	}
	bad_data = data_error(res);
	if (!bad_data)
	{
		log_warning("route \"%s\": %s", config->routes[route].name, PQerrorMessage(conn));
		PQclear(res);
		return RANGE_FAILED;
	}
	if (!run("ROLLBACK TO SAVEPOINT infra_bridge_range"))
	{
		PQclear(res);
		return RANGE_FAILED;
	}
	if (lo == hi)
	{
		char		error[600];
		const char *dparams[3] = {b, config->routes[route].name, error};
		PGresult   *dres;

		snprintf(error, sizeof(error), "%s: %s", PQresultErrorField(res, PG_DIAG_SQLSTATE),
				 PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
		PQclear(res);
		dres = PQexecParams(conn,
							"INSERT INTO infra.bridge_dead_letters"
							" (route, topic, partition, \"offset\", key, payload, headers, error)"
							" SELECT $2, topic, part, off, key, val, headers, $3"
							" FROM pg_temp.infra_bridge_stage WHERE seq = $1",
							3, NULL, dparams, NULL, NULL, 0);
		if (PQresultStatus(dres) != PGRES_COMMAND_OK)
		{
			log_warning("cannot write a dead letter: %s", PQerrorMessage(conn));
			PQclear(dres);
			return RANGE_FAILED;
		}
		*dead += strtoll(PQcmdTuples(dres), NULL, 10);
		PQclear(dres);
		return run("RELEASE SAVEPOINT infra_bridge_range") ? RANGE_OK : RANGE_FAILED;
	}
	PQclear(res);
	if (!run("RELEASE SAVEPOINT infra_bridge_range"))
		return RANGE_FAILED;
	{
		int			mid = lo + (hi - lo) / 2;

		if (write_range(config, route, lo, mid, written, dead) != RANGE_OK)
			return RANGE_FAILED;
		return write_range(config, route, mid + 1, hi, written, dead);
	}
}

/* What a route's direct COPY came to. */
typedef enum DirectResult
{
	DIRECT_WRITTEN,
	DIRECT_BAD_DATA,			/* a bad message: the route goes staged */
	DIRECT_FAILED				/* anything else: the batch is retried */
} DirectResult;

/*
 * COPY route r's messages (among lo..hi) straight into its table, streamed
 * in COPY_PIECE pieces, binary or text as its statement says.
 */
static DirectResult
copy_direct(const BridgeConfig *config, int r, int lo, int hi, rd_kafka_message_t **messages,
			const int *routes, Buf *copy, Buf *scratch, long long *written)
{
	const RouteSql *rs = &route_sql[r];
	bool		json = config->routes[r].format == FORMAT_JSON_COLUMNS;
	PGresult   *res = copy_start(rs->copy);
	Buf			picked = {0};
	int			i;

	if (res == NULL)
	{
		copy->len = 0;
		if (rs->shape.binary)
			binary_header(copy);
		for (i = lo; i <= hi; i++)
		{
			if (routes[i] != r)
				continue;
			if (rs->shape.binary)
				binary_row(copy, scratch, &rs->shape, messages[i]);
			else if (!json)
				direct_row(copy, scratch, &rs->shape, messages[i]);
			else if (!json_columns_row(copy, scratch, &picked, &rs->shape, messages[i]))
			{
				/* Not certain to read as the server would: it decides. */
				free(picked.data);
				PQclear(copy_end("a message for the staging path"));
				log_debug("route \"%s\": message at %s [%d] offset %lld goes through the staging table",
						  config->routes[r].name, rd_kafka_topic_name(messages[i]->rkt),
						  (int) messages[i]->partition, (long long) messages[i]->offset);
				return DIRECT_BAD_DATA;
			}
			if (copy->len >= COPY_PIECE && !copy_send(copy))
				break;
		}
		free(picked.data);
		if (rs->shape.binary)
			buf_be(copy, UINT16_MAX, 2);	/* the trailer */
		(void) copy_send(copy);
		res = copy_end(NULL);
	}
	if (res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK)
	{
		*written += strtoll(PQcmdTuples(res), NULL, 10);
		PQclear(res);
		return DIRECT_WRITTEN;
	}
	if (res == NULL || !data_error(res))
	{
		log_warning("route \"%s\": cannot COPY: %s", config->routes[r].name, PQerrorMessage(conn));
		PQclear(res);
		return DIRECT_FAILED;
	}
	log_debug("route \"%s\": COPY met a bad message (%s): sorting the batch out row by row",
			  config->routes[r].name, PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
	PQclear(res);
	return DIRECT_BAD_DATA;
}

/*
 * The messages of the routes not written directly, through the staging
 * table: one COPY into it, then each route's INSERT ... SELECT, bad
 * messages isolated by write_range.  False when the batch must be retried.
 */
static bool
write_staged(const BridgeConfig *config, rd_kafka_message_t **messages, int n, const int *routes,
			 const int *lo, const int *hi, const bool *done, Buf *copy, Buf *scratch,
			 long long *written, long long *dead)
{
	PGresult   *res;
	int			i;
	int			r;

	copy->len = 0;
	for (i = 0; i < n; i++)
		if (routes[i] >= 0 && !done[routes[i]])
			stage_row(copy, scratch, i, routes[i], messages[i]);
	free(scratch->data);
	scratch->data = NULL;
	if (copy->len == 0)
		return true;
	res = copy_start("COPY pg_temp.infra_bridge_stage FROM STDIN");
	if (res == NULL)
	{
		(void) copy_send(copy);
		res = copy_end(NULL);
	}
	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		log_warning("cannot COPY the batch: %s", PQerrorMessage(conn));
		PQclear(res);
		return false;
	}
	PQclear(res);
	for (r = 0; r < config->nroutes; r++)
		if (lo[r] >= 0 && !done[r] && write_range(config, r, lo[r], hi[r], &written[r], &dead[r]) != RANGE_OK)
			return false;
	return true;
}

/*
 * Move each partition's next offset by compare-and-set: its row must still
 * hold the offset expected.  WRITE_CONFLICT (rolled back) when another
 * member moved one on; WRITE_RETRY when PostgreSQL could not be asked.
 */
static WriteResult
move_offsets(const BridgeConfig *config, const PartitionWrite *parts, int nparts)
{
	int			i;

	for (i = 0; i < nparts; i++)
	{
		char		part[16],
					expected[32],
					next[32];
		const char *params[5] = {config->group, parts[i].topic, part, expected, next};
		PGresult   *res;

		snprintf(part, sizeof(part), "%d", parts[i].partition);
		snprintf(expected, sizeof(expected), "%lld", (long long) parts[i].expected);
		snprintf(next, sizeof(next), "%lld", (long long) parts[i].next);
		res = PQexecParams(conn,
						   "INSERT INTO infra.bridge_offsets AS o (consumer_group, topic, partition, next_offset)"
						   " VALUES ($1, $2, $3, $5)"
						   " ON CONFLICT (consumer_group, topic, partition) DO UPDATE"
						   " SET next_offset = EXCLUDED.next_offset, updated_at = now()"
						   " WHERE o.next_offset = $4 RETURNING 1",
						   5, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
		{
			log_warning("cannot move offsets: %s", PQerrorMessage(conn));
			PQclear(res);
			return WRITE_RETRY;
		}
		if (PQntuples(res) == 0)
		{
			PQclear(res);
			log_warning("partition %s [%d] was moved on by another consumer: batch dropped, reading again from the stored offset",
						parts[i].topic, parts[i].partition);
			run("ROLLBACK");
			return WRITE_CONFLICT;
		}
		PQclear(res);
	}
	return WRITE_OK;
}

/*
 * Write n messages (routes[i] the route of message i, -1 for none) and
 * move the offsets of the partitions they came from, all in one
 * transaction.  parts lists those partitions with the offset each must
 * still have (expected, -1: no row yet) and its new one.  Routes that can
 * take a plain COPY go first, without a savepoint: bad messages are rare,
 * and when the COPY meets one the transaction starts over with that route
 * through the staging table.
 */
WriteResult
db_write_batch(const BridgeConfig *config, int slot, rd_kafka_message_t **messages, int n,
			   const int *routes, const PartitionWrite *parts, int nparts,
			   long long *written, long long *dead)
{
	Buf			copy = {0};
	Buf			scratch = {0};
	int			i;
	int			r;
	int			lo[BRIDGE_MAX_ROUTES];
	int			hi[BRIDGE_MAX_ROUTES];
	bool		done[BRIDGE_MAX_ROUTES];
	bool		staged_only[BRIDGE_MAX_ROUTES];
	WriteResult result;

	for (r = 0; r < config->nroutes; r++)
	{
		lo[r] = -1;
		done[r] = false;
		written[r] = dead[r] = 0;
		staged_only[r] = route_sql[r].copy == NULL;
	}
	conn = conns[slot];
	if (conn == NULL || PQstatus(conn) != CONNECTION_OK)
		return WRITE_RETRY;
	for (i = 0; i < n; i++)
	{
		r = routes[i];
		if (r < 0)
			continue;
		if (lo[r] < 0)
			lo[r] = i;
		hi[r] = i;
	}

again:
	if (!run("BEGIN"))
		goto retry;
	for (r = 0; r < config->nroutes; r++)
	{
		done[r] = false;
		written[r] = dead[r] = 0;
	}
	for (r = 0; r < config->nroutes; r++)
	{
		if (lo[r] < 0 || staged_only[r])
			continue;
		switch (copy_direct(config, r, lo[r], hi[r], messages, routes, &copy, &scratch, &written[r]))
		{
			case DIRECT_WRITTEN:
				done[r] = true;
				break;
			case DIRECT_FAILED:
				goto retry;
			case DIRECT_BAD_DATA:
				if (!run("ROLLBACK"))
					goto retry;
				staged_only[r] = true;
				goto again;
		}
	}
	if (!write_staged(config, messages, n, routes, lo, hi, done, &copy, &scratch, written, dead))
		goto retry;
	result = move_offsets(config, parts, nparts);
	if (result == WRITE_CONFLICT)
	{
		free(copy.data);
		return WRITE_CONFLICT;
	}
	if (result != WRITE_OK || !run("COMMIT"))
		goto retry;
	free(copy.data);
	return WRITE_OK;

retry:
	free(copy.data);
	free(scratch.data);
	if (conn != NULL && PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE)
		run("ROLLBACK");
	for (r = 0; r < config->nroutes; r++)
		written[r] = dead[r] = 0;
	return WRITE_RETRY;
}
