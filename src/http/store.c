/*-------------------------------------------------------------------------
 *
 * store.c
 *		The http worker's SQL: endpoints, requests to send, outcomes.
 *
 * Reads infra.http_endpoints, rows of infra.http_outbox_batches (not yet
 * held in memory, smallest first id first) and due rows of
 * infra.http_retries; writes a round's outcomes in one transaction: a
 * batch row is deleted in the transaction that stores its failed requests
 * as retries or dead letters, so a request is always in exactly one table
 * (or delivered).  Every statement is schema-qualified with pinned
 * operators, run by the worker's bootstrap-superuser session.
 *
 * Lock rules: none of its own.  Called by deliver.c only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "core/spicheck.h"
#include "core/worker.h"
#include "http/http.h"
#include "http/request.h"

static SPIPlanPtr endpoints_plan = NULL;
static SPIPlanPtr batches_plan = NULL;
static SPIPlanPtr retries_plan = NULL;
static SPIPlanPtr next_due_plan = NULL;
static SPIPlanPtr delete_retry_plan = NULL;
static SPIPlanPtr upsert_retry_plan = NULL;
static SPIPlanPtr dead_plan = NULL;
static SPIPlanPtr delete_batches_plan = NULL;
static SPIPlanPtr endpoint_state_plan = NULL;

/* The elements of a one-dimensional array column (NULL elements kept). */
static void
HttpColumnArray(uint64 row, int col, Oid elemtype, Datum **elems, bool **nulls, int *n)
{
	ArrayType  *a = DatumGetArrayTypeP(SpiGetValue(row, col, false, NULL, "the http outbox read"));
	int16		len;
	bool		byval;
	char		align;

	get_typlenbyvalalign(elemtype, &len, &byval, &align);
	deconstruct_array(a, elemtype, len, byval, align, elems, nulls, n);
}

static char *
HttpTextOrNull(Datum d, bool isnull)
{
	return isnull ? NULL : TextDatumGetCString(d);
}

/*
 * Every endpoint, handed to sink (which copies what it keeps: the values
 * live until the transaction ends).
 */
void
HttpStoreEndpoints(HttpEndpointSink sink, void *arg)
{
	uint64		i;

	InfraWorkerSpiBegin();
	SpiExecKept(&endpoints_plan,
				"SELECT name, url, secrets, headers, timeout_ms, connect_timeout_ms, low_speed_seconds, "
				"ARRAY(SELECT (pg_catalog.date_part('epoch', s) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8 "
				"FROM pg_catalog.unnest(retry_schedule) s), "
				"coalesce(rate_per_second, 0), concurrency, max_response_bytes, "
				"(pg_catalog.date_part('epoch', disable_after) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8, "
				"enabled, disabled_reason, failing_since, "
				"pg_catalog.array_to_string(allow, ',') FROM infra.http_endpoints",
				0, NULL, NULL, NULL, true, SPI_OK_SELECT, "the http endpoints read", 0, NULL);
	for (i = 0; i < SPI_processed; i++)
	{
		HttpEndpointConf c;
		bool		isnull;
		Datum	   *elems;
		bool	   *nulls;
		Datum		d;
		int			n, j;

		memset(&c, 0, sizeof(c));
		strlcpy(c.name, TextDatumGetCString(SpiGetValue(i, 1, false, NULL, "the endpoints read")),
				sizeof(c.name));
		c.url = TextDatumGetCString(SpiGetValue(i, 2, false, NULL, "the endpoints read"));
		d = SpiGetValue(i, 3, true, &isnull, "the endpoints read");
		if (!isnull)
		{
			deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
							  &elems, &nulls, &n);
			c.secrets = palloc(sizeof(char *) * Max(n, 1));
			for (j = 0; j < n; j++)
				if (!nulls[j])
					c.secrets[c.nsecrets++] = TextDatumGetCString(elems[j]);
		}
		c.headers = DatumGetJsonbP(SpiGetValue(i, 4, false, NULL, "the endpoints read"));
		c.timeout_ms = DatumGetInt32(SpiGetValue(i, 5, false, NULL, "the endpoints read"));
		c.connect_timeout_ms = DatumGetInt32(SpiGetValue(i, 6, false, NULL, "the endpoints read"));
		c.low_speed_seconds = DatumGetInt32(SpiGetValue(i, 7, false, NULL, "the endpoints read"));
		HttpColumnArray(i, 8, INT8OID, &elems, &nulls, &n);
		c.schedule_ms = palloc(sizeof(int64) * Max(n, 1));
		for (j = 0; j < n; j++)
			c.schedule_ms[c.nschedule++] = nulls[j] ? 0 : DatumGetInt64(elems[j]);
		c.rate = DatumGetFloat8(SpiGetValue(i, 9, false, NULL, "the endpoints read"));
		c.concurrency = DatumGetInt32(SpiGetValue(i, 10, false, NULL, "the endpoints read"));
		c.max_response_bytes = DatumGetInt32(SpiGetValue(i, 11, false, NULL, "the endpoints read"));
		c.disable_after_ms = DatumGetInt64(SpiGetValue(i, 12, false, NULL, "the endpoints read"));
		c.enabled = DatumGetBool(SpiGetValue(i, 13, false, NULL, "the endpoints read"));
		d = SpiGetValue(i, 14, true, &isnull, "the endpoints read");
		c.disabled_reason = HttpTextOrNull(d, isnull);
		d = SpiGetValue(i, 15, true, &isnull, "the endpoints read");
		c.failing_since = isnull ? 0 : DatumGetTimestampTz(d);
		d = SpiGetValue(i, 16, true, &isnull, "the endpoints read");
		c.allow = HttpTextOrNull(d, isnull);
		sink(&c, arg);
	}
	InfraWorkerSpiEnd();
}

/* An int8[] of the ids a read must skip (those held in memory). */
static Datum
HttpIdArray(int64 *ids, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	int			i;

	for (i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	return PointerGetDatum(construct_array(elems, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
}

/* A new request in cxt, its strings copied there. */
static HttpRequest *
HttpNewRequest(MemoryContext cxt, int64 id, int32 timeline, const char *endpoint,
			   const char *url, const char *method, Jsonb *headers, bytea *body,
			   TimestampTz created_at)
{
	MemoryContext old = MemoryContextSwitchTo(cxt);
	HttpRequest *r = palloc0(sizeof(HttpRequest));

	r->id = id;
	r->timeline = timeline;
	r->endpoint = endpoint ? pstrdup(endpoint) : NULL;
	r->url = url ? pstrdup(url) : NULL;
	r->method = pstrdup(method);
	r->headers = headers ? (Jsonb *) PG_DETOAST_DATUM_COPY(PointerGetDatum(headers)) : NULL;
	if (body != NULL)
	{
		r->has_body = true;
		r->bodylen = VARSIZE_ANY_EXHDR(body);
		r->body = palloc(r->bodylen + 1);
		memcpy(r->body, VARDATA_ANY(body), r->bodylen);
		r->body[r->bodylen] = '\0';
	}
	r->created_at = created_at;
	/* Made by the first failed attempt: most requests never fail. */
	r->outcomes.data = NULL;
	r->outcomes.len = 0;
	MemoryContextSwitchTo(old);
	return r;
}

/*
 * Up to limit rows of infra.http_outbox_batches not in skip, smallest
 * first id first; each of their requests to sink, but those already in
 * http_retries or http_dead_letters (their row outlived their move: a crash
 * came between); a row with none left to empty.  Returns the rows read.
 */
int
HttpStoreBatches(int64 *skip, int nskip, int limit, MemoryContext cxt,
				 HttpRequestSink sink, HttpBatchSink empty, void *arg)
{
	Oid			argtypes[2] = {INT8ARRAYOID, INT4OID};
	Datum		args[2];
	uint64		row;
	int			rows;

	args[0] = HttpIdArray(skip, nskip);
	args[1] = Int32GetDatum(limit);
	InfraWorkerSpiBegin();
	SpiExecKept(&batches_plan,
				"SELECT first_id, ids, endpoints, urls, methods, headers, bodies, timeline, created_at, "
				/* Ids already retried or dead (a crash before the row's delete): not again. */
				"ARRAY(SELECT t.id FROM infra.http_retries t WHERE t.id OPERATOR(pg_catalog.>=) b.first_id "
				"AND t.id OPERATOR(pg_catalog.<=) b.ids[b.requests] "
				"UNION ALL SELECT d.id FROM infra.http_dead_letters d WHERE d.id OPERATOR(pg_catalog.>=) b.first_id "
				"AND d.id OPERATOR(pg_catalog.<=) b.ids[b.requests]) "
				"FROM infra.http_outbox_batches b WHERE first_id OPERATOR(pg_catalog.<>) ALL ($1) "
				"ORDER BY first_id LIMIT $2",
				2, argtypes, args, NULL, true, SPI_OK_SELECT, "the http outbox read", 0, NULL);
	for (row = 0; row < SPI_processed; row++)
	{
		Datum	   *v[6];
		bool	   *nl[6];
		int			n[6];
		Oid			types[6] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, BYTEAOID};
		int64		first = DatumGetInt64(SpiGetValue(row, 1, false, NULL, "the http outbox read"));
		int32		tli = DatumGetInt32(SpiGetValue(row, 8, false, NULL, "the http outbox read"));
		TimestampTz created = DatumGetTimestampTz(SpiGetValue(row, 9, false, NULL, "the http outbox read"));
		int			c, i;

		Datum	   *gone;
		bool	   *gone_nulls;
		int			ngone;
		int			taken = 0;

		for (c = 0; c < 6; c++)
			HttpColumnArray(row, c + 2, types[c], &v[c], &nl[c], &n[c]);
		HttpColumnArray(row, 10, INT8OID, &gone, &gone_nulls, &ngone);
		for (i = 0; i < n[0]; i++)
		{
			HttpRequest *r;
			int			g;

			for (g = 0; g < ngone && DatumGetInt64(gone[g]) != DatumGetInt64(v[0][i]); g++)
				;
			if (g < ngone)
				continue;
			if (nl[0][i] || nl[3][i] || i >= n[1] || i >= n[2] || i >= n[3] || i >= n[4] || i >= n[5])
				elog(ERROR, "malformed row of infra.http_outbox_batches (first id " INT64_FORMAT ")", first);
			r = HttpNewRequest(cxt, DatumGetInt64(v[0][i]), tli,
							   HttpTextOrNull(v[1][i], nl[1][i]), HttpTextOrNull(v[2][i], nl[2][i]),
							   TextDatumGetCString(v[3][i]),
							   nl[4][i] ? NULL : DatumGetJsonbP(v[4][i]),
							   nl[5][i] ? NULL : DatumGetByteaPP(v[5][i]), created);
			r->batch = first;
			sink(r, arg);
			taken++;
		}
		/* Every request of the row is elsewhere: the row is done with. */
		if (taken == 0)
			empty(first, arg);
	}
	rows = (int) SPI_processed;
	InfraWorkerSpiEnd();
	return rows;
}

/*
 * Up to limit due rows of infra.http_retries not in skip, the longest due
 * first, to sink.  Returns how many.
 */
int
HttpStoreDueRetries(int64 *skip, int nskip, int limit, MemoryContext cxt,
					HttpRequestSink sink, void *arg)
{
	Oid			argtypes[2] = {INT8ARRAYOID, INT4OID};
	Datum		args[2];
	uint64		row;
	int			rows;

	args[0] = HttpIdArray(skip, nskip);
	args[1] = Int32GetDatum(limit);
	InfraWorkerSpiBegin();
	SpiExecKept(&retries_plan,
				"SELECT id, timeline, endpoint, url, method, headers, body, created_at, attempts, "
				"outcomes::pg_catalog.text FROM infra.http_retries "
				"WHERE next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() "
				"AND id OPERATOR(pg_catalog.<>) ALL ($1) ORDER BY next_attempt_at LIMIT $2",
				2, argtypes, args, NULL, true, SPI_OK_SELECT, "the http retries read", 0, NULL);
	for (row = 0; row < SPI_processed; row++)
	{
		bool		n3, n4, n6, n7;
		Datum		ep = SpiGetValue(row, 3, true, &n3, "the http retries read");
		Datum		url = SpiGetValue(row, 4, true, &n4, "the http retries read");
		Datum		hd = SpiGetValue(row, 6, true, &n6, "the http retries read");
		Datum		body = SpiGetValue(row, 7, true, &n7, "the http retries read");
		HttpRequest *r;
		char	   *outcomes;
		MemoryContext old;

		r = HttpNewRequest(cxt, DatumGetInt64(SpiGetValue(row, 1, false, NULL, "the http retries read")),
						   DatumGetInt32(SpiGetValue(row, 2, false, NULL, "the http retries read")),
						   HttpTextOrNull(ep, n3), HttpTextOrNull(url, n4),
						   TextDatumGetCString(SpiGetValue(row, 5, false, NULL, "the http retries read")),
						   n6 ? NULL : DatumGetJsonbP(hd), n7 ? NULL : DatumGetByteaPP(body),
						   DatumGetTimestampTz(SpiGetValue(row, 8, false, NULL, "the http retries read")));
		r->attempts = DatumGetInt32(SpiGetValue(row, 9, false, NULL, "the http retries read"));
		outcomes = TextDatumGetCString(SpiGetValue(row, 10, false, NULL, "the http retries read"));
		/* Kept without its closing bracket, so that attempts append. */
		old = MemoryContextSwitchTo(cxt);
		initStringInfo(&r->outcomes);
		if (strlen(outcomes) > 2)
			appendBinaryStringInfo(&r->outcomes, outcomes + 1, strlen(outcomes) - 2);
		MemoryContextSwitchTo(old);
		r->in_table = true;
		sink(r, arg);
	}
	rows = (int) SPI_processed;
	InfraWorkerSpiEnd();
	return rows;
}

/*
 * When the next retry not in skip is due (0: none waits).
 */
TimestampTz
HttpStoreNextDue(int64 *skip, int nskip)
{
	bool		isnull;
	Datum		d;
	TimestampTz due;
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		args[1];

	args[0] = HttpIdArray(skip, nskip);
	InfraWorkerSpiBegin();
	SpiExecKept(&next_due_plan,
				"SELECT pg_catalog.min(next_attempt_at) FROM infra.http_retries "
				"WHERE id OPERATOR(pg_catalog.<>) ALL ($1)",
				1, argtypes, args, NULL, true, SPI_OK_SELECT, "the http retries' next due", 0, NULL);
	d = SpiGetValue(0, 1, true, &isnull, "the http retries' next due");
	due = isnull ? 0 : DatumGetTimestampTz(d);
	InfraWorkerSpiEnd();
	return due;
}

/* A request's outcomes as a JSON array (its text is kept unbracketed). */
static Datum
HttpOutcomes(HttpRequest *r)
{
	StringInfoData s;

	initStringInfo(&s);
	appendStringInfo(&s, "[%s]", r->outcomes.data ? r->outcomes.data : "");
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(s.data));
}

/* The columns a retry or dead letter is written with: $1..$8. */
static void
HttpRequestArgs(HttpRequest *r, Datum *args, char *nulls)
{
	args[0] = Int64GetDatum(r->id);
	args[1] = Int32GetDatum(r->timeline);
	args[2] = r->endpoint ? CStringGetTextDatum(r->endpoint) : (Datum) 0;
	nulls[2] = r->endpoint ? ' ' : 'n';
	args[3] = r->url ? CStringGetTextDatum(r->url) : (Datum) 0;
	nulls[3] = r->url ? ' ' : 'n';
	args[4] = CStringGetTextDatum(r->method);
	args[5] = r->headers ? JsonbPGetDatum(r->headers) : (Datum) 0;
	nulls[5] = r->headers ? ' ' : 'n';
	if (r->has_body)
	{
		bytea	   *b = palloc(VARHDRSZ + r->bodylen);

		SET_VARSIZE(b, VARHDRSZ + r->bodylen);
		memcpy(VARDATA(b), r->body, r->bodylen);
		args[6] = PointerGetDatum(b);
	}
	nulls[6] = r->has_body ? ' ' : 'n';
	args[7] = TimestampTzGetDatum(r->created_at);
	args[8] = Int32GetDatum(r->attempts);
	args[9] = r->status ? Int32GetDatum(r->status) : (Datum) 0;
	nulls[9] = r->status ? ' ' : 'n';
	args[10] = CStringGetTextDatum(r->error);
	args[11] = HttpOutcomes(r);
	args[12] = TimestampTzGetDatum(r->next_attempt_at);
}

/* One request's outcome. */
static void
HttpStoreOne(HttpRequest *r)
{
	Oid			types[13] = {INT8OID, INT4OID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, BYTEAOID,
	TIMESTAMPTZOID, INT4OID, INT4OID, TEXTOID, JSONBOID, TIMESTAMPTZOID};
	Datum		args[13];
	char		nulls[14];

	memset(nulls, ' ', sizeof(nulls));
	nulls[13] = '\0';
	if (r->fate == HTTP_FATE_RETRY)
	{
		HttpRequestArgs(r, args, nulls);
		SpiExecKept(&upsert_retry_plan,
					"INSERT INTO infra.http_retries AS t (id, timeline, endpoint, url, method, headers, body, "
					"created_at, attempts, last_status, last_error, outcomes, next_attempt_at) "
					"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
					"ON CONFLICT (id) DO UPDATE SET attempts = excluded.attempts, "
					"last_status = excluded.last_status, last_error = excluded.last_error, "
					"outcomes = excluded.outcomes, next_attempt_at = excluded.next_attempt_at",
					13, types, args, nulls, false, SPI_OK_INSERT, "the http retry write", 0, NULL);
		return;
	}
	if (r->fate == HTTP_FATE_DEAD)
	{
		HttpRequestArgs(r, args, nulls);
		SpiExecKept(&dead_plan,
					"INSERT INTO infra.http_dead_letters (id, timeline, endpoint, url, method, headers, body, "
					"created_at, attempts, last_status, error, outcomes) "
					"VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
					"ON CONFLICT (id) DO NOTHING",
					12, types, args, nulls, false, SPI_OK_INSERT, "the http dead letter write", 0, NULL);
	}
	if (r->in_table)
	{
		args[0] = Int64GetDatum(r->id);
		SpiExecKept(&delete_retry_plan,
					"DELETE FROM infra.http_retries WHERE id OPERATOR(pg_catalog.=) $1",
					1, types, args, NULL, false, SPI_OK_DELETE, "the http retry delete", 0, NULL);
	}
}

/*
 * A round's outcomes in one transaction: each request's (retry, dead
 * letter, or its retry row gone once delivered), the finished batch rows
 * deleted, the endpoints' state.
 */
void
HttpStoreSettle(List *requests, int64 *batches, int nbatches, List *endpoints)
{
	ListCell   *lc;

	InfraWorkerSpiBegin();
	foreach(lc, requests)
		HttpStoreOne((HttpRequest *) lfirst(lc));
	if (nbatches > 0)
	{
		Oid			t[1] = {INT8ARRAYOID};
		Datum		a[1];

		a[0] = HttpIdArray(batches, nbatches);
		SpiExecKept(&delete_batches_plan,
					"DELETE FROM infra.http_outbox_batches WHERE first_id OPERATOR(pg_catalog.=) ANY ($1)",
					1, t, a, NULL, false, SPI_OK_DELETE, "the http outbox delete", 0, NULL);
	}
	foreach(lc, endpoints)
	{
		HttpEndpointConf *c = lfirst(lc);
		Oid			t[4] = {TEXTOID, BOOLOID, TEXTOID, TIMESTAMPTZOID};
		Datum		a[4];
		char		n[5] = "    ";

		a[0] = CStringGetTextDatum(c->name);
		a[1] = BoolGetDatum(c->enabled);
		a[2] = c->disabled_reason ? CStringGetTextDatum(c->disabled_reason) : (Datum) 0;
		n[2] = c->disabled_reason ? ' ' : 'n';
		a[3] = TimestampTzGetDatum(c->failing_since);
		n[3] = c->failing_since ? ' ' : 'n';
		SpiExecKept(&endpoint_state_plan,
					"UPDATE infra.http_endpoints SET enabled = $2, disabled_reason = $3, failing_since = $4 "
					"WHERE name OPERATOR(pg_catalog.=) $1",
					4, t, a, n, false, SPI_OK_UPDATE, "the http endpoint state write", 0, NULL);
	}
	InfraWorkerSpiEnd();
}
