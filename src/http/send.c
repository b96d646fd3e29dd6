/*-------------------------------------------------------------------------
 *
 * send.c
 *		http_send(): a transaction's HTTP requests, written at its commit.
 *
 * http_send checks its arguments, takes an id from infra.http_request_id_seq
 * and buffers the request in the backend; just before the transaction
 * commits (or prepares) the buffer becomes one row of parallel arrays in
 * infra.http_outbox_batches, written as the table's owner, and the commit
 * wakes the database's http worker (deliver.c).  A rolled-back savepoint
 * drops its requests; a rolled-back transaction writes nothing.  So a
 * request is sent if and only if its transaction commits, and the row is
 * WAL-logged: a crash keeps it, a standby has it.
 *
 * Lock rules: none; backend-local state only.  Called from SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/fmgrprotos.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "core/infra.h"
#include "core/libcurl.h"
#include "core/spicheck.h"
#include "core/tracing.h"
#include "core/version.h"
#include "core/worker.h"
#include "http/http.h"

PG_FUNCTION_INFO_V1(infra_http_send_text);
PG_FUNCTION_INFO_V1(infra_http_send_bytea);
PG_FUNCTION_INFO_V1(infra_http_send_jsonb);
PG_FUNCTION_INFO_V1(infra_http_wake_worker);
PG_FUNCTION_INFO_V1(infra_http_endpoints_check);

typedef struct HttpBuffered
{
	int64		id;
	text	   *endpoint;		/* NULL: url is absolute */
	text	   *url;			/* NULL: the endpoint's own URL */
	text	   *method;
	Jsonb	   *headers;
	bytea	   *body;
	SubTransactionId subid;
} HttpBuffered;

/* This transaction's buffer, in TopTransactionContext. */
static HttpBuffered *buffered = NULL;
static int	nbuffered = 0;
static int	capacity = 0;
static Size buffered_bytes = 0;
static Oid	id_sequence = InvalidOid;
static Oid	outbox_owner = InvalidOid;
static List *endpoints_seen = NIL;	/* names checked in this transaction */
static bool callbacks_registered = false;
static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr endpoint_plan = NULL;

/* Headers infra sets itself; a caller's header of the same name is refused. */
static const char *const reserved_headers[] = {
	"webhook-id", "webhook-timestamp", "webhook-signature", "host", "content-length",
	"transfer-encoding", "connection", "expect", "te", "upgrade", "proxy-authorization",
	NULL
};

static void HttpXactCallback(XactEvent event, void *arg);
static void HttpSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
								SubTransactionId parentSubid, void *arg);

/*
 * The owner of an infra table: what http_send writes as.
 */
static Oid
HttpTableOwner(Oid namespace, const char *relname)
{
	Oid			relid = get_relname_relid(relname, namespace);
	HeapTuple	tuple;
	Oid			owner;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("infra.%s does not exist", relname),
				 errhint("Run ALTER EXTENSION infra UPDATE; in this database.")));
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

static bool
HttpTokenChar(unsigned char c)
{
	return isalnum(c) || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/*
 * An HTTP method is a token (RFC 9110): GET, POST, PURGE...
 */
static void
HttpCheckMethod(const char *method)
{
	size_t		len = strlen(method);
	size_t		i;

	for (i = 0; i < len; i++)
		if (!HttpTokenChar((unsigned char) method[i]))
			break;
	if (len == 0 || len > HTTP_METHOD_MAX || i < len)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid HTTP method \"%s\"", method),
				 errhint("Give a method such as POST, PUT, PATCH, GET or DELETE: letters, digits and !#$%%&'*+-.^_`|~, at most %d.",
						 HTTP_METHOD_MAX)));
}

/*
 * A URL http_send accepts: absolute http or https with a host, or (with a
 * named endpoint) a path or query appended to the endpoint's URL.  No
 * spaces or control characters anywhere.
 */
static void
HttpCheckUrl(const char *url, bool relative)
{
	const unsigned char *p;
	CURLU	   *u;
	CURLUcode	rc;
	char	   *scheme = NULL;
	char	   *host = NULL;
	bool		ok;
	/* The origin ("scheme://authority") of the last URL found valid. */
	static char origin[256];
	const char *slashes = strstr(url, "://");
	size_t		origin_len = 0;

	for (p = (const unsigned char *) url; *p; p++)
		if (*p <= ' ' || *p == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("URL must not contain spaces or control characters"),
					 errhint("Percent-encode them (%%20 for a space).")));
	if (slashes != NULL)
		origin_len = slashes + 3 - url + strcspn(slashes + 3, "/?#");
	/* Only the path differs from a URL already parsed: it is as valid. */
	if (!relative && origin_len > 0 && origin_len < sizeof(origin) &&
		strlen(origin) == origin_len && strncmp(origin, url, origin_len) == 0)
		return;
	if (relative)
	{
		if (url[0] != '/' && url[0] != '?')
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("with a named endpoint, url must be NULL or a path starting with \"/\" or \"?\""),
					 errhint("The endpoint's URL comes first; give \"/orders/42\", not a whole URL.")));
		return;
	}
	u = curl_url();
	if (u == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
	rc = curl_url_set(u, CURLUPART_URL, url, 0);
	ok = rc == CURLUE_OK &&
		curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
		(pg_strcasecmp(scheme, "http") == 0 || pg_strcasecmp(scheme, "https") == 0) &&
		host[0] != '\0';
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	if (ok && origin_len > 0 && origin_len < sizeof(origin))
		strlcpy(origin, url, origin_len + 1);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid URL for http_send: \"%s\"", url),
				 errhint("Give an absolute http:// or https:// URL with a host, or name an endpoint of infra.http_endpoints.")));
}

/*
 * A caller's headers: a JSON object of strings, no header infra sets
 * itself, no line breaks (a value must not start a header of its own).
 */
static void
HttpCheckHeaders(Jsonb *headers)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (!JB_ROOT_IS_OBJECT(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object"),
				 errhint("Give {\"name\": \"value\", ...}.")));
	it = JsonbIteratorInit(&headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			int			i;

			for (i = 0; i < v.val.string.len; i++)
				if (!HttpTokenChar((unsigned char) v.val.string.val[i]))
					break;
			if (v.val.string.len == 0 || i < v.val.string.len)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid HTTP header name \"%.*s\"", v.val.string.len, v.val.string.val),
						 errhint("A header name is a token: letters, digits and !#$%%&'*+-.^_`|~.")));
			for (i = 0; reserved_headers[i] != NULL; i++)
				if (strlen(reserved_headers[i]) == (size_t) v.val.string.len &&
					pg_strncasecmp(reserved_headers[i], v.val.string.val, v.val.string.len) == 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("header \"%.*s\" is set by infra", v.val.string.len, v.val.string.val),
							 errhint("Leave out webhook-*, Host, Content-Length and the connection's own headers.")));
		}
		else if (tok == WJB_VALUE)
		{
			int			i;

			if (v.type != jbvString)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("HTTP header values must be strings"),
						 errhint("Quote numbers and booleans: {\"x-retry\": \"1\"}.")));
			for (i = 0; i < v.val.string.len; i++)
				if (v.val.string.val[i] == '\r' || v.val.string.val[i] == '\n' ||
					v.val.string.val[i] == '\0')
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("HTTP header values must not contain line breaks"),
							 errhint("A line break would start a header of its own.")));
		}
	}
}

/*
 * Does the named endpoint exist?  Once per name and transaction, read as
 * the table's owner (schema-qualified, pinned operators).
 */
static void
HttpCheckEndpoint(text *endpoint)
{
	char	   *name = text_to_cstring(endpoint);
	ListCell   *lc;
	Oid			argtypes[1] = {TEXTOID};
	Datum		args[1];
	bool		found;
	MemoryContext old;

	foreach(lc, endpoints_seen)
		if (strcmp((char *) lfirst(lc), name) == 0)
			return;
	args[0] = PointerGetDatum(endpoint);
	found = SpiExecKeptAs(outbox_owner, &endpoint_plan,
						  "SELECT 1 FROM infra.http_endpoints WHERE name OPERATOR(pg_catalog.=) $1",
						  1, argtypes, args, NULL, true, SPI_OK_SELECT, "the endpoint lookup", NULL) > 0;
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("HTTP endpoint \"%s\" does not exist", name),
				 errhint("Names come from infra.http_endpoints; its owner adds them.")));
	old = MemoryContextSwitchTo(TopTransactionContext);
	endpoints_seen = lappend(endpoints_seen, pstrdup(name));
	MemoryContextSwitchTo(old);
}

/*
 * The headers a request goes with: the caller's, and, unless the caller
 * set them, the body's Content-Type and the session's traceparent.
 */
static Jsonb *
HttpRequestHeaders(Jsonb *user, const char *content_type)
{
	const char *traceparent = InfraTraceparent();
	JsonbParseState *state = NULL;
	JsonbValue	k, v;
	Jsonb	   *ours;
	/* The common case, a Content-Type alone: made once per type. */
	static const char *made_for[3];
	static Jsonb *made[3];
	int			slot = -1;

	if (content_type == NULL && traceparent == NULL)
		return user;
	if (user == NULL && traceparent == NULL)
	{
		for (slot = 0; slot < 3 && made_for[slot] != NULL && made_for[slot] != content_type; slot++)
			;
		if (slot < 3 && made_for[slot] == content_type)
			return made[slot];
	}
	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	k.type = v.type = jbvString;
	if (content_type != NULL)
	{
		k.val.string.val = "Content-Type";
		k.val.string.len = strlen(k.val.string.val);
		v.val.string.val = (char *) content_type;
		v.val.string.len = strlen(content_type);
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	if (traceparent != NULL)
	{
		k.val.string.val = "traceparent";
		k.val.string.len = strlen(k.val.string.val);
		v.val.string.val = (char *) traceparent;
		v.val.string.len = strlen(traceparent);
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	ours = JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
	if (slot >= 0 && slot < 3)
	{
		made[slot] = MemoryContextAlloc(TopMemoryContext, VARSIZE(ours));
		memcpy(made[slot], ours, VARSIZE(ours));
		made_for[slot] = content_type;
	}
	if (user == NULL)
		return ours;
	/* HTTP header names ignore case: the caller's Content-Type wins over ours. */
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(ours),
											  JsonbPGetDatum(user)));
}

/*
 * Does the caller's object name this header (in any letter case)?
 */
static bool
HttpHasHeader(Jsonb *headers, const char *name)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	size_t		len = strlen(name);

	if (headers == NULL)
		return false;
	it = JsonbIteratorInit(&headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		if (tok == WJB_KEY && (size_t) v.val.string.len == len &&
			pg_strncasecmp(v.val.string.val, name, len) == 0)
			return true;
	return false;
}

static void
HttpStartBuffer(void)
{
	Oid			namespace = get_namespace_oid(INFRA_NAME, false);

	if (!callbacks_registered)
	{
		RegisterXactCallback(HttpXactCallback, NULL);
		RegisterSubXactCallback(HttpSubXactCallback, NULL);
		callbacks_registered = true;
	}
	id_sequence = get_relname_relid("http_request_id_seq", namespace);
	if (!OidIsValid(id_sequence))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("infra.http_request_id_seq does not exist"),
				 errhint("Run ALTER EXTENSION infra UPDATE; in this database.")));
	outbox_owner = HttpTableOwner(namespace, "http_outbox_batches");
	capacity = 64;
	buffered = MemoryContextAlloc(TopTransactionContext, sizeof(HttpBuffered) * capacity);
	nbuffered = 0;
	buffered_bytes = 0;
	endpoints_seen = NIL;
}

/*
 * Write the buffered requests (all, at pre-commit; else only the current
 * subtransaction's) as one row of infra.http_outbox_batches.
 */
static void
HttpFlushBuffer(bool all_levels)
{
	SubTransactionId current = GetCurrentSubTransactionId();
	Datum	   *cols[6];
	bool	   *nulls[6];
	Oid			elemtypes[6] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, JSONBOID, BYTEAOID};
	Oid			argtypes[9] = {INT8OID, INT4OID, INT8ARRAYOID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, JSONBARRAYOID, BYTEAARRAYOID, INT4OID};
	Datum		args[9];
	int			n = 0, kept = 0, i, c;
	int			dims[1], lbs[1] = {1};
	bool		pushed = false;

	if (buffered == NULL || nbuffered == 0)
		return;
	for (c = 0; c < 6; c++)
	{
		cols[c] = palloc(sizeof(Datum) * nbuffered);
		nulls[c] = palloc0(sizeof(bool) * nbuffered);
	}
	for (i = 0; i < nbuffered; i++)
	{
		HttpBuffered *r = &buffered[i];

		if (!all_levels && r->subid != current)
		{
			buffered[kept++] = *r;
			continue;
		}
		buffered_bytes -= r->body ? VARSIZE(r->body) : 0;
		cols[0][n] = Int64GetDatum(r->id);
		cols[1][n] = PointerGetDatum(r->endpoint);
		nulls[1][n] = r->endpoint == NULL;
		cols[2][n] = PointerGetDatum(r->url);
		nulls[2][n] = r->url == NULL;
		cols[3][n] = PointerGetDatum(r->method);
		cols[4][n] = PointerGetDatum(r->headers);
		nulls[4][n] = r->headers == NULL;
		cols[5][n] = PointerGetDatum(r->body);
		nulls[5][n] = r->body == NULL;
		n++;
	}
	nbuffered = kept;
	if (n == 0)
		return;
	dims[0] = n;
	args[0] = cols[0][0];
	args[1] = Int32GetDatum(n);
	for (c = 0; c < 6; c++)
	{
		int16		len;
		bool		byval;
		char		align;

		get_typlenbyvalalign(elemtypes[c], &len, &byval, &align);
		args[2 + c] = PointerGetDatum(construct_md_array(cols[c], nulls[c], 1, dims, lbs,
														 elemtypes[c], len, byval, align));
	}
	if (!ActiveSnapshotSet())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		pushed = true;
	}
	/* The ids were taken in this transaction, so on this timeline. */
	args[8] = Int32GetDatum((int32) GetWALInsertionTimeLine());
	(void) SpiExecKeptAs(outbox_owner, &insert_plan,
						 "INSERT INTO infra.http_outbox_batches "
						 "(first_id, requests, ids, endpoints, urls, methods, headers, bodies, timeline) "
						 "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
						 9, argtypes, args, NULL, false, SPI_OK_INSERT, "the http outbox insert", NULL);
	if (pushed)
		PopActiveSnapshot();
}

static void
HttpXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			HttpFlushBuffer(true);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* The memory goes with TopTransactionContext. */
			buffered = NULL;
			nbuffered = 0;
			buffered_bytes = 0;
			endpoints_seen = NIL;
			break;
	}
}

/*
 * A rolled-back savepoint drops its requests; a released one hands them
 * to its parent.
 */
static void
HttpSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	int			i, kept = 0;

	if (buffered == NULL)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		for (i = 0; i < nbuffered; i++)
		{
			if (buffered[i].subid != mySubid)
				buffered[kept++] = buffered[i];
			else
				buffered_bytes -= buffered[i].body ? VARSIZE(buffered[i].body) : 0;
		}
		nbuffered = kept;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (i = 0; i < nbuffered; i++)
			if (buffered[i].subid == mySubid)
				buffered[i].subid = parentSubid;
	}
}

static void *
HttpCopy(void *datum)
{
	return datum == NULL ? NULL : PG_DETOAST_DATUM_COPY(PointerGetDatum(datum));
}

/*
 * The body of the three http_send forms: (url, body, method, headers,
 * endpoint), the body already as bytes with its default Content-Type.
 */
static Datum
HttpSend(FunctionCallInfo fcinfo, bytea *body, const char *content_type)
{
	text	   *url = PG_ARGISNULL(0) ? NULL : PG_GETARG_TEXT_PP(0);
	text	   *method = PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2);
	Jsonb	   *headers = PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3);
	text	   *endpoint = PG_ARGISNULL(4) ? NULL : PG_GETARG_TEXT_PP(4);
	HttpBuffered r;
	MemoryContext old;

	InfraRequirePrimary("send HTTP requests");
	if (method == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("method must not be NULL"),
				 errhint("Leave it out for POST.")));
	HttpCheckMethod(text_to_cstring(method));
	if (url == NULL && endpoint == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("http_send needs a url or an endpoint"),
				 errhint("Give an absolute URL, or endpoint => 'name' from infra.http_endpoints.")));
	if (url != NULL)
		HttpCheckUrl(text_to_cstring(url), endpoint != NULL);
	if (body != NULL && VARSIZE_ANY_EXHDR(body) > HTTP_BODY_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("HTTP body of %zu bytes is too large", VARSIZE_ANY_EXHDR(body)),
				 errhint("http_send takes bodies up to %d MB.", HTTP_BODY_MAX / (1024 * 1024))));
	if (headers != NULL)
		HttpCheckHeaders(headers);
	if (buffered == NULL)
		HttpStartBuffer();
	if (endpoint != NULL)
		HttpCheckEndpoint(endpoint);
	if (body == NULL || HttpHasHeader(headers, "content-type"))
		content_type = NULL;
	headers = HttpRequestHeaders(headers, content_type);

	if (nbuffered >= HTTP_SEND_BUFFER || buffered_bytes >= HTTP_SEND_BUFFER_BYTES)
		HttpFlushBuffer(false);
	if (nbuffered >= capacity)
	{
		capacity *= 2;
		buffered = repalloc(buffered, sizeof(HttpBuffered) * capacity);
	}
	/* The caller needs no right on the sequence: EXECUTE on http_send is the gate. */
	r.id = nextval_internal(id_sequence, false);
	r.subid = GetCurrentSubTransactionId();
	old = MemoryContextSwitchTo(TopTransactionContext);
	r.endpoint = HttpCopy(endpoint);
	r.url = HttpCopy(url);
	r.method = HttpCopy(method);
	r.headers = HttpCopy(headers);
	r.body = HttpCopy(body);
	MemoryContextSwitchTo(old);
	buffered_bytes += body ? VARSIZE(r.body) : 0;
	buffered[nbuffered++] = r;
	InfraWorkerWakeAtCommit(INFRA_WORKER_HTTP);
	PG_RETURN_INT64(r.id);
}

Datum
infra_http_send_text(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();
	return HttpSend(fcinfo, PG_ARGISNULL(1) ? NULL : (bytea *) PG_GETARG_TEXT_PP(1),
					"text/plain; charset=utf-8");
}

Datum
infra_http_send_bytea(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();
	return HttpSend(fcinfo, PG_ARGISNULL(1) ? NULL : PG_GETARG_BYTEA_PP(1),
					"application/octet-stream");
}

Datum
infra_http_send_jsonb(PG_FUNCTION_ARGS)
{
	bytea	   *body = NULL;

	INFRA_CHECK_SCHEMA();
	if (!PG_ARGISNULL(1))
	{
		Jsonb	   *jb = PG_GETARG_JSONB_P(1);
		char	   *out = JsonbToCString(NULL, &jb->root, VARSIZE(jb));

		body = (bytea *) cstring_to_text(out);
	}
	return HttpSend(fcinfo, body, "application/json");
}

/*
 * infra.http_wake_worker(): wake this database's http worker at commit.
 */
Datum
infra_http_wake_worker(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();
	InfraWorkerWakeAtCommit(INFRA_WORKER_HTTP);
	PG_RETURN_VOID();
}


/*
 * An endpoint's allow list opens private addresses: a superuser's to set,
 * as infra.http_allow is.  Each entry must parse as the setting's would.
 */
static void
HttpCheckAllow(TriggerData *trigdata, HeapTuple tuple, TupleDesc desc)
{
	int			col = SPI_fnumber(desc, "allow");
	bool		isnull, old_null = true;
	Datum		d, old = (Datum) 0;
	Datum	   *elems;
	bool	   *nulls;
	int			n, i;
	char		why[256];

	if (col <= 0)
		return;
	d = heap_getattr(tuple, col, desc, &isnull);
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		old = heap_getattr(trigdata->tg_trigtuple, col, desc, &old_null);
	if (isnull && old_null)
		return;
	if (isnull == old_null && !isnull &&
		DatumGetBool(DirectFunctionCall2(array_eq, d, old)))
		return;
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to set the allow list of an HTTP endpoint"),
				 errdetail("It lets the worker reach private, loopback and link-local addresses, as infra.http_allow does."),
				 errhint("Ask a superuser to set it.")));
	if (isnull)
		return;
	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (i = 0; i < n; i++)
		if (nulls[i] || HttpAllowListParse(TextDatumGetCString(elems[i]), why, sizeof(why)) == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid entry %d in the allow list of the endpoint: %s", i + 1,
							nulls[i] ? "NULL" : why),
					 errhint("Give CIDRs (10.0.0.0/8), addresses or host names, one per element.")));
}

/*
 * BEFORE INSERT OR UPDATE trigger of infra.http_endpoints: every secret is
 * "whsec_" and a base64 key, and the URL one http_send would take.  The
 * error never shows the secret.
 */
Datum
infra_http_endpoints_check(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tuple;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;
	int			col;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		elog(ERROR, "infra_http_endpoints_check must run as a BEFORE ROW trigger");
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple : trigdata->tg_trigtuple;
	desc = trigdata->tg_relation->rd_att;
	col = SPI_fnumber(desc, "url");
	d = heap_getattr(tuple, col, desc, &isnull);
	if (!isnull)
		HttpCheckUrl(TextDatumGetCString(d), false);
	HttpCheckAllow(trigdata, tuple, desc);
	col = SPI_fnumber(desc, "secrets");
	d = heap_getattr(tuple, col, desc, &isnull);
	if (!isnull)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n, i;

		deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &n);
		for (i = 0; i < n; i++)
			if (nulls[i] || !HttpSecretValid(TextDatumGetCString(elems[i])))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("secret %d of the endpoint is not a Standard Webhooks secret", i + 1),
						 errhint("Give \"whsec_\" followed by the key in base64 (e.g. 32 random bytes); the value is not shown here.")));
	}
	return PointerGetDatum(tuple);
}
