/*-------------------------------------------------------------------------
 *
 * db.c
 *		infra-bridge's PostgreSQL side: sessions, routes checked against
 *		the catalog (route.c makes their statements), each batch written
 *		with its offsets in one transaction, seeks asked from SQL
 *		(infra.bridge_seek) and the partitions' positions reported.
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
 * group took the partition over, or infra.bridge_seek moved it, and the
 * batch is rolled back.  So a batch is written once, whatever dies when.
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
#include "change.h"
#include "buf.h"
#include "encode.h"
#include "route.h"
#include "avrodec.h"


/*
 * One connection per writer (slot); conn is the one this thread works
 * with: each writer thread sets it to its slot's, the main thread to
 * slot 0's.  The temporary staging table lives in each connection.
 */
static PGconn *conns[BRIDGE_MAX_WRITERS];
static __thread PGconn *conn = NULL;
static RouteSql route_sql[BRIDGE_MAX_ROUTES];

static bool run(const char *sql);

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
	change_forget(slot);
	/* infra.bridge_seek says so at commit (db_seek_requested). */
	if (slot == 0 && !run("LISTEN infra_bridge_seek"))
		return false;
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
		if (!(config->routes[r].format == FORMAT_DEBEZIUM && config->routes[r].handler[0] == '\0' ?
			  debezium_check(conn, user_search_path, &config->routes[r], &route_sql[r]) :
			  route_check(conn, user_search_path, &config->routes[r], &route_sql[r])))
			return false;
	return true;
}

/*
 * The stored next offset of a partition of this group (-1 when none), and
 * a seek by time waiting there (seek: its text, "" for none; seek_ms its
 * Kafka timestamp).  false when PostgreSQL could not be asked.
 */
bool
db_load_offsets(const BridgeConfig *config, const char *topic, int32_t partition,
				int64_t *next_offset, char *seek, size_t seeklen, int64_t *seek_ms)
{
	char		part[16];
	const char *params[3] = {config->group, topic, part};
	PGresult   *res;

	snprintf(part, sizeof(part), "%d", partition);
	conn = conns[0];
	if (conn == NULL)
		return false;
	res = PQexecParams(conn,
					   "SELECT next_offset, seek_to_time::text,"
					   " (extract(epoch FROM seek_to_time) * 1000)::bigint FROM infra.bridge_offsets"
					   " WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
					   3, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		log_warning("cannot read infra.bridge_offsets: %s", PQerrorMessage(conn));
		PQclear(res);
		return false;
	}
	*next_offset = PQntuples(res) > 0 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : -1;
	seek[0] = '\0';
	*seek_ms = -1;
	if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 1))
	{
		snprintf(seek, seeklen, "%s", PQgetvalue(res, 0, 1));
		*seek_ms = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	}
	PQclear(res);
	return true;
}

/*
 * A seek by time resolved: the partition's next offset is next, if the
 * seek asked is still the one waiting (seek, as db_load_offsets read it).
 * false when it is not (moved again: read it again) or PostgreSQL could
 * not be asked.
 */
bool
db_resolve_seek(const BridgeConfig *config, const char *topic, int32_t partition, const char *seek,
				int64_t next)
{
	char		part[16],
				off[32];
	const char *params[5] = {config->group, topic, part, seek, off};
	PGresult   *res;
	bool		ok;

	snprintf(part, sizeof(part), "%d", partition);
	snprintf(off, sizeof(off), "%lld", (long long) next);
	conn = conns[0];
	if (conn == NULL)
		return false;
	res = PQexecParams(conn,
					   "UPDATE infra.bridge_offsets SET next_offset = $5, seek_to_time = NULL, updated_at = now()"
					   " WHERE consumer_group = $1 AND topic = $2 AND partition = $3"
					   " AND seek_to_time = $4::timestamptz",
					   5, NULL, params, NULL, NULL, 0);
	ok = PQresultStatus(res) == PGRES_COMMAND_OK && strcmp(PQcmdTuples(res), "1") == 0;
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		log_warning("cannot store a resolved seek: %s", PQerrorMessage(conn));
	PQclear(res);
	return ok;
}

/*
 * Has infra.bridge_seek moved an offset of this group since the last call
 * (a notification on the main connection)?  Only between batches: the
 * main connection is writer 0's while a batch is written.
 */
bool
db_seek_requested(const BridgeConfig *config)
{
	PGnotify   *n;
	bool		asked = false;

	conn = conns[0];
	if (conn == NULL || PQconsumeInput(conn) == 0)
		return false;
	while ((n = PQnotifies(conn)) != NULL)
	{
		asked |= strcmp(n->relname, "infra_bridge_seek") == 0 && strcmp(n->extra, config->group) == 0;
		PQfreemem(n);
	}
	return asked;
}

/*
 * Report the assigned partitions' ends and oldest unwritten message times
 * (infra.bridge_positions) and learn whether any stored offset is not the
 * one this member expects or has a seek waiting (a notification missed
 * while reconnecting): returns the number of such partitions, -1 when
 * PostgreSQL could not be asked.  Between batches only.
 */
int
db_report_positions(const BridgeConfig *config, const BridgePosition *pos, int n)
{
	Buf			topics = {0},
				parts = {0},
				ends = {0},
				times = {0},
				expected = {0};
	const char *params[6];
	PGresult   *res;
	int			moved;
	int			i;

	conn = conns[0];
	if (conn == NULL || n == 0)
		return conn == NULL ? -1 : 0;
	for (i = 0; i < n; i++)
	{
		const char *sep = i ? "," : "{";

		buf_puts(&topics, sep);
		buf_puts(&topics, "\"");
		for (const char *c = pos[i].topic; *c; c++)
			buf_printf(&topics, "%s%c", *c == '"' || *c == '\\' ? "\\" : "", *c);
		buf_puts(&topics, "\"");
		buf_printf(&parts, "%s%d", sep, pos[i].partition);
		buf_printf(&ends, "%s%lld", sep, (long long) pos[i].end);
		buf_printf(&expected, "%s%lld", sep, (long long) pos[i].expected);
		if (pos[i].oldest_ms >= 0)
			buf_printf(&times, "%s%lld", sep, (long long) pos[i].oldest_ms);
		else
			buf_printf(&times, "%sNULL", sep);
	}
	buf_puts(&topics, "}");
	buf_puts(&parts, "}");
	buf_puts(&ends, "}");
	buf_puts(&times, "}");
	buf_puts(&expected, "}");
	params[0] = config->group;
	params[1] = topics.data;
	params[2] = parts.data;
	params[3] = ends.data;
	params[4] = times.data;
	params[5] = expected.data;
	res = PQexecParams(conn,
					   "WITH v AS (SELECT * FROM unnest($2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::bigint[])"
					   "  AS v(topic, partition, e, ms, expected)),"
					   " u AS (UPDATE infra.bridge_offsets o SET end_offset = v.e, end_seen_at = now(),"
					   "  oldest_unwritten_at = to_timestamp(v.ms / 1000.0)"
					   "  FROM v WHERE o.consumer_group = $1 AND o.topic = v.topic AND o.partition = v.partition"
					   "  RETURNING o.next_offset, o.seek_to_time, v.expected)"
					   " SELECT count(*) FILTER (WHERE seek_to_time IS NOT NULL OR"
					   "  (expected >= 0 AND next_offset <> expected)) FROM u",
					   6, NULL, params, NULL, NULL, 0);
	free(topics.data);
	free(parts.data);
	free(ends.data);
	free(times.data);
	free(expected.data);
	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		log_warning("cannot report positions: %s", PQerrorMessage(conn));
		PQclear(res);
		return -1;
	}
	moved = atoi(PQgetvalue(res, 0, 0));
	PQclear(res);
	return moved;
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

/* Is this error the data's fault (a bad message), not the system's? handler: a handler route's. */
static bool
data_error(const PGresult *res, bool handler)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	/* A handler's RAISE (class P0) refuses a message too. */
	return state != NULL && (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
							 strcmp(state, "42804") == 0 || strcmp(state, "21000") == 0 ||
							 (handler && strncmp(state, "P0", 2) == 0));
}

typedef enum RangeResult
{
	RANGE_OK,
	RANGE_FAILED				/* a systemic error: abort the batch */
} RangeResult;

/*
 * A route's statements for one range (params: route, range, name), under
 * the caller's savepoint: an upsert's count of the messages it applies
 * and its DELETE of tombstoned keys, then the INSERT.  Returns the last
 * result (the INSERT's, or the first that failed) and in applied the
 * messages written.
 */
static PGresult *
apply_range(int route, const char *const *params, long long *applied)
{
	const RouteSql *rs = &route_sql[route];
	const char *p[4] = {params[0], params[1], params[2], params[3]};
	char		after_truncate[24];
	bool		left_out = true;	/* debezium: the range may leave columns out */
	PGresult   *res;

	*applied = -1;
	/* An upsert writes a row per key: count the messages it applies. */
	if (rs->count != NULL)
	{
		res = PQexecParams(conn, rs->count, 4, NULL, p, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			return res;
		*applied = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
		if (PQnfields(res) > 2)
			left_out = strcmp(PQgetvalue(res, 0, 2), "t") == 0;
		/* Debezium's truncate event: the table emptied, what came before it moot. */
		if (rs->truncate != NULL && PQnfields(res) > 1 && !PQgetisnull(res, 0, 1))
		{
			snprintf(after_truncate, sizeof(after_truncate), "%ld", strtol(PQgetvalue(res, 0, 1), NULL, 10) + 1);
			p[1] = after_truncate;
			PQclear(res);
			log_debug("a truncate event: %s, then the range from seq %s", rs->truncate, after_truncate);
			res = PQexec(conn, rs->truncate);
			if (PQresultStatus(res) != PGRES_COMMAND_OK)
				return res;
		}
		PQclear(res);
	}
	if (rs->delete != NULL)
	{
		res = PQexecParams(conn, rs->delete, 4, NULL, p, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			return res;
		PQclear(res);
	}
	if (rs->merge != NULL && left_out)
	{
		res = PQexecParams(conn, rs->merge, 4, NULL, p, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			return res;
		PQclear(res);
	}
	res = PQexecParams(conn, rs->insert, 4, NULL, p, NULL, NULL, 0);
	/* A handler called with SELECT returns its row: that went well too. */
	if (PQresultStatus(res) == PGRES_TUPLES_OK)
	{
		PQclear(res);
		res = PQmakeEmptyPGresult(conn, PGRES_COMMAND_OK);
	}
	if (PQresultStatus(res) == PGRES_COMMAND_OK && *applied < 0)
		*applied = strtoll(PQcmdTuples(res), NULL, 10);
	return res;
}

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
	res = apply_range(route, params, &applied);
	if (PQresultStatus(res) == PGRES_COMMAND_OK)
	{
		long long	n = applied;

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
	bad_data = data_error(res, config->routes[route].handler[0] != '\0');
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
	DIRECT_STAGED,				/* nothing run: the route goes staged */
	DIRECT_BAD_DATA,			/* a bad message: the route goes staged */
	DIRECT_FAILED				/* anything else: the batch is retried */
} DirectResult;

/*
 * What a route's direct write that did not go through (res, its failed
 * result, taken over; NULL when there is none) comes to: a bad message
 * (the route goes staged), else a failure (the batch is retried).
 */
static DirectResult
direct_failure(const BridgeConfig *config, int r, PGresult *res, const char *doing, const char *bad,
			   const char *then)
{
	if (res == NULL || !data_error(res, false))
	{
		log_warning("route \"%s\": cannot %s: %s", config->routes[r].name, doing, PQerrorMessage(conn));
		PQclear(res);
		return DIRECT_FAILED;
	}
	log_debug("route \"%s\": %s (%s): %s", config->routes[r].name, bad,
			  PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY), then);
	PQclear(res);
	return DIRECT_BAD_DATA;
}

/*
 * COPY route r's messages (among lo..hi) straight into its table, streamed
 * in COPY_PIECE pieces, binary or text as its statement says.
 */
static DirectResult
copy_direct(const BridgeConfig *config, int r, int lo, int hi, rd_kafka_message_t **messages,
			const MsgBody *bodies, const int *routes, Buf *copy, Buf *scratch, long long *written)
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
				binary_row(copy, scratch, &rs->shape, messages[i], &bodies[i]);
			else if (!json)
				direct_row(copy, scratch, &rs->shape, messages[i], &bodies[i]);
			else if (!json_columns_row(copy, scratch, &picked, &rs->shape, messages[i], &bodies[i]))
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
	return direct_failure(config, r, res, "COPY", "COPY met a bad message", "sorting the batch out row by row");
}

/*
 * A format = debezium route's range applied by change.c, when it can: its
 * events decoded and reduced in the bridge, typed rows deleted and upserted.
 */
static DirectResult
change_direct(const BridgeConfig *config, int slot, int r, int lo, int hi, rd_kafka_message_t **messages,
			  const MsgBody *bodies, const int *routes, long long *written)
{
	PGresult   *failed = NULL;

	switch (change_apply(conn, slot, r, route_sql[r].change, messages, bodies, routes, lo, hi, written, &failed))
	{
		case CHANGE_WRITTEN:
			return DIRECT_WRITTEN;
		case CHANGE_STAGED:
			return DIRECT_STAGED;
		case CHANGE_FAILED:
			break;
	}
	return direct_failure(config, r, failed, "apply change events", "a change event the server refused",
						  "the range goes through the staging table");
}

/*
 * The messages of the routes not written directly, through the staging
 * table: one COPY into it, then each route's INSERT ... SELECT, bad
 * messages isolated by write_range.  False when the batch must be retried.
 */
static bool
write_staged(const BridgeConfig *config, rd_kafka_message_t **messages, const MsgBody *bodies, int n,
			 const int *routes,
			 const int *lo, const int *hi, const bool *done, Buf *copy, Buf *scratch,
			 long long *written, long long *dead)
{
	PGresult   *res;
	int			i;
	int			r;

	copy->len = 0;
	for (i = 0; i < n; i++)
		if (routes[i] >= 0 && !done[routes[i]])
			stage_row(copy, scratch, i, routes[i], messages[i], &bodies[i]);
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
						   " WHERE o.next_offset = $4 AND o.seek_to_time IS NULL RETURNING 1",
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
			log_warning("partition %s [%d] was moved on by another consumer or infra.bridge_seek: batch dropped, reading again from the stored offset",
						parts[i].topic, parts[i].partition);
			run("ROLLBACK");
			return WRITE_CONFLICT;
		}
		PQclear(res);
	}
	return WRITE_OK;
}

/* A message the bridge could not decode (an Avro route's): a dead letter. */
typedef struct Undecoded
{
	int			i;
	char		why[400];
} Undecoded;

/*
 * The undecodable messages as dead letters, in the open transaction, with
 * their bytes as they came and why (SQLSTATE 22P02).  False on a failure.
 */
static bool
undecoded_dead_letters(const BridgeConfig *config, rd_kafka_message_t **messages, const int *routes,
					   const Undecoded *bad, int nbad, long long *dead)
{
	Buf			headers = {0};
	int			k;

	for (k = 0; k < nbad; k++)
	{
		const rd_kafka_message_t *m = messages[bad[k].i];
		int			r = routes[bad[k].i];
		char		part[16],
					off[32],
					error[420];
		const void *id;
		size_t		id_size;
		const char *values[8];
		int			lengths[8] = {0};
		int			formats[8] = {0, 0, 0, 0, 1, 1, 0, 0};
		PGresult   *res;

		snprintf(part, sizeof(part), "%d", (int) m->partition);
		snprintf(off, sizeof(off), "%lld", (long long) m->offset);
		snprintf(error, sizeof(error), "22P02: %s", bad[k].why);
		values[0] = config->routes[r].name;
		values[1] = rd_kafka_topic_name(m->rkt);
		values[2] = part;
		values[3] = off;
		values[4] = m->key;
		lengths[4] = (int) m->key_len;
		values[5] = m->payload;
		lengths[5] = (int) m->len;
		values[6] = headers_json(&headers, m, &id, &id_size) ? headers.data : NULL;
		values[7] = error;
		res = PQexecParams(conn, "INSERT INTO infra.bridge_dead_letters"
						   " (route, topic, partition, \"offset\", key, payload, headers, error)"
						   " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)", 8, NULL, values, lengths, formats, 0);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
		{
			log_warning("cannot write a dead letter: %s", PQerrorMessage(conn));
			PQclear(res);
			free(headers.data);
			return false;
		}
		PQclear(res);
		dead[r]++;
	}
	free(headers.data);
	return true;
}

/*
 * One message's key or value decoded from Avro into decoded (at *off, *len
 * bytes); a key not in Confluent's wire format is left as it is (off -1).
 */
static AvroResult
decode_part(const BridgeConfig *config, int slot, const void *data, size_t len, AvroShape shape, bool key,
			Buf *decoded, size_t *off, size_t *dlen, char *why, size_t whylen)
{
	AvroResult	res;

	*off = (size_t) -1;
	if (data == NULL || (key && (len < 5 || ((const unsigned char *) data)[0] != 0)))
		return AVRO_DECODED;
	*off = decoded->len;
	res = avro_decode(config->schema_registry, slot, data, len, shape, decoded, why, whylen);
	*dlen = decoded->len - *off;
	if (res != AVRO_DECODED)
		decoded->len = *off;
	return res;
}

/* Where a message's decoded value and key lie in the batch's buffer (-1: not decoded). */
typedef struct Decoded
{
	size_t		off[2];
	size_t		len[2];
} Decoded;

/*
 * The messages of routes reading Avro decoded into decoded, their bodies
 * pointed there (bodies holds each message's own bytes on entry).  A
 * message that cannot be decoded gets route -1 in rts and an entry in
 * *bad (grown as needed).  False when the registry could not be asked: the
 * batch is tried again.
 */
static bool
decode_batch(const BridgeConfig *config, int slot, rd_kafka_message_t **messages, int n, int *rts,
			 MsgBody *bodies, Undecoded **bad, int *nbad, Buf *decoded)
{
	Decoded    *at = malloc(sizeof(Decoded) * (size_t) (n + 1));
	int			cap = 0;
	int			i;

	if (at == NULL)
		abort();
	for (i = 0; i < n; i++)
	{
		const rd_kafka_message_t *m = messages[i];
		const BridgeRoute *route = rts[i] >= 0 ? &config->routes[rts[i]] : NULL;
		bool		dbz;
		AvroResult	res;
		char		why[sizeof((*bad)->why)];

		at[i].off[0] = at[i].off[1] = (size_t) -1;
		if (route == NULL || !route->avro)
			continue;
		dbz = route->format == FORMAT_DEBEZIUM;
		res = decode_part(config, slot, m->payload, m->len, dbz ? AVRO_CONNECT : AVRO_COLUMNS, false, decoded,
						  &at[i].off[0], &at[i].len[0], why, sizeof(why));
		if (res == AVRO_DECODED)
			res = decode_part(config, slot, m->key, m->key_len, dbz ? AVRO_CONNECT_PAYLOAD : AVRO_COLUMNS, true,
							  decoded, &at[i].off[1], &at[i].len[1], why, sizeof(why));
		if (res == AVRO_RETRY)
		{
			log_warning("route \"%s\": %s: the batch is tried again", route->name, why);
			free(at);
			return false;
		}
		if (res == AVRO_BAD)
		{
			log_debug("route \"%s\": message at %s [%d] offset %lld is a dead letter: %s", route->name,
					  rd_kafka_topic_name(m->rkt), (int) m->partition, (long long) m->offset, why);
			if (*nbad == cap && (*bad = realloc(*bad, sizeof(Undecoded) * (size_t) (cap = cap * 2 + 8))) == NULL)
				abort();
			(*bad)[*nbad].i = i;
			memcpy((*bad)[*nbad].why, why, sizeof(why));
			(*nbad)++;
			rts[i] = -1;
		}
	}
	/* decoded has stopped moving: point into it */
	for (i = 0; i < n; i++)
	{
		if (at[i].off[0] != (size_t) -1)
		{
			bodies[i].payload = decoded->data + at[i].off[0];
			bodies[i].len = at[i].len[0];
		}
		if (at[i].off[1] != (size_t) -1)
		{
			bodies[i].key = decoded->data + at[i].off[1];
			bodies[i].key_len = at[i].len[1];
		}
	}
	free(at);
	return true;
}

/*
 * Write n messages (routes[i] the route of message i, -1 for none; each
 * one's key and value as bodies[i]) and the nbad undecodable ones as dead
 * letters (of bad_routes' routes), and move the offsets of the partitions
 * they came from, all in one transaction.  parts lists those partitions with the offset each must
 * still have (expected, -1: no row yet) and its new one.  Routes that can
 * take a plain COPY go first, without a savepoint: bad messages are rare,
 * and when the COPY meets one the transaction starts over with that route
 * through the staging table.
 */
static WriteResult
write_batch(const BridgeConfig *config, int slot, rd_kafka_message_t **messages, const MsgBody *bodies, int n,
			const int *routes, const Undecoded *bad, int nbad, const int *bad_routes,
			const PartitionWrite *parts, int nparts, long long *written, long long *dead)
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
		staged_only[r] = route_sql[r].copy == NULL && route_sql[r].change == NULL;
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
	if (nbad > 0 && !undecoded_dead_letters(config, messages, bad_routes, bad, nbad, dead))
		goto retry;
	for (r = 0; r < config->nroutes; r++)
	{
		if (lo[r] < 0 || staged_only[r])
			continue;
		switch (route_sql[r].change != NULL ?
				change_direct(config, slot, r, lo[r], hi[r], messages, bodies, routes, &written[r]) :
				copy_direct(config, r, lo[r], hi[r], messages, bodies, routes, &copy, &scratch, &written[r]))
		{
			case DIRECT_WRITTEN:
				done[r] = true;
				break;
			case DIRECT_STAGED:
				staged_only[r] = true;
				break;
			case DIRECT_FAILED:
				goto retry;
			case DIRECT_BAD_DATA:
				change_forget(slot);	/* a stage made in this transaction is gone */
				if (!run("ROLLBACK"))
					goto retry;
				staged_only[r] = true;
				goto again;
		}
	}
	if (!write_staged(config, messages, bodies, n, routes, lo, hi, done, &copy, &scratch, written, dead))
		goto retry;
	result = move_offsets(config, parts, nparts);
	if (result == WRITE_CONFLICT)
	{
		change_forget(slot);
		free(copy.data);
		return WRITE_CONFLICT;
	}
	if (result != WRITE_OK || !run("COMMIT"))
		goto retry;
	free(copy.data);
	return WRITE_OK;

retry:
	change_forget(slot);
	free(copy.data);
	free(scratch.data);
	if (conn != NULL && PQstatus(conn) == CONNECTION_OK && PQtransactionStatus(conn) != PQTRANS_IDLE)
		run("ROLLBACK");
	for (r = 0; r < config->nroutes; r++)
		written[r] = dead[r] = 0;
	return WRITE_RETRY;
}

/*
 * Write n messages (routes[i] the route of message i, -1 for none) and
 * move the offsets of the partitions they came from, all in one
 * transaction (write_batch); messages of routes reading Avro are decoded
 * first.
 */
WriteResult
db_write_batch(const BridgeConfig *config, int slot, rd_kafka_message_t **messages, int n,
			   const int *routes, const PartitionWrite *parts, int nparts,
			   long long *written, long long *dead)
{
	MsgBody    *bodies = malloc(sizeof(MsgBody) * (size_t) (n + 1));
	int		   *rts = NULL;
	Undecoded  *bad = NULL;
	int			nbad = 0;
	Buf			decoded = {0};
	WriteResult result = WRITE_RETRY;
	int			i;
	bool		avro = false;

	if (bodies == NULL)
		abort();
	for (i = 0; i < n; i++)
	{
		bodies[i] = (MsgBody) {messages[i]->payload, messages[i]->len, messages[i]->key, messages[i]->key_len};
		avro |= routes[i] >= 0 && config->routes[routes[i]].avro;
	}
	if (avro)
	{
		if ((rts = malloc(sizeof(int) * (size_t) (n + 1))) == NULL)
			abort();
		memcpy(rts, routes, sizeof(int) * (size_t) n);
	}
	if (!avro || decode_batch(config, slot, messages, n, rts, bodies, &bad, &nbad, &decoded))
		result = write_batch(config, slot, messages, bodies, n, avro ? rts : routes, bad, nbad, routes, parts,
							 nparts, written, dead);
	free(bodies);
	free(rts);
	free(bad);
	free(decoded.data);
	return result;
}
