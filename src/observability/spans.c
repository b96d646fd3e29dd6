/*-------------------------------------------------------------------------
 *
 * spans.c
 *		OpenTelemetry spans: explicit ones (infra.span_start/span_end),
 *		automatic server spans for sampled top-level statements, and the
 *		shared ring that holds finished spans for the exporter (otlp.c).
 *
 * Context.  A span's parent is, in this order: the innermost open explicit
 * span of the session; a SQLcommenter comment of the statement under way
 * (traceparent='00-...'); the session's infra.traceparent.  A span with a
 * parent joins its trace and follows its sampled flag.  A root explicit
 * span is always recorded (it was asked for); a root statement span is
 * recorded with probability infra.trace_sample_rate.  While a statement
 * runs, what infra propagates (Kafka headers, logs, infra.traceparent())
 * is its span if recorded, else the context above.
 *
 * Backends never wait for the exporter: a finished span is copied into a
 * bounded ring in shared memory; when the ring is full the span is dropped
 * and counted.
 *
 * Locking: one LWLock guards the ring's head and tail and the exporter's
 * latch: exclusive to add a span or consume, shared to read entries.  Only
 * the exporter consumes, so entries between tail and head stay put while
 * it reads them under the shared lock.  The counters are atomics.
 *
 * Called by the statement hooks and SQL; otlp.c drains the ring;
 * tracing.c asks it for the current span through the source it registers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>
#include <time.h>

#include "access/parallel.h"
#include "access/xact.h"
#include "commands/dbcommands.h"
#include "common/pg_prng.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "tcop/cmdtag.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "core/infra.h"
#include "core/metrics.h"
#include "core/shmem.h"
#include "core/tracing.h"
#include "core/version.h"
#include "observability/querystats.h"
#include "observability/spans.h"

PG_FUNCTION_INFO_V1(infra_span_start);
PG_FUNCTION_INFO_V1(infra_span_end);
PG_FUNCTION_INFO_V1(infra_trace_stats);

/* Explicit spans one session may have open at once. */
#define SPANS_MAX_OPEN 64

/* Longest error kept for infra.trace_stats. */
#define SPAN_ERROR_LEN 256

typedef struct SpanContext
{
	bool		valid;
	bool		sampled;
	uint8		trace_id[16];
	uint8		span_id[8];
} SpanContext;

/* A span of this session that has not ended yet. */
typedef struct OpenSpan
{
	SpanContext ctx;			/* its own ids */
	bool		has_parent;
	uint8		parent_id[8];
	uint8		kind;
	int64		start_ns;
	char		name[SPAN_NAME_LEN];
	Jsonb	   *attributes;		/* given at start, in TopMemoryContext */
} OpenSpan;

typedef struct SpanRing
{
	LWLock	   *lock;
	uint64		head;			/* next to write */
	uint64		tail;			/* next to export */
	Latch	   *exporter;		/* the exporter's latch, NULL when none */
	int			wake_every;		/* spans between its wake-ups: its batch size */
	pg_atomic_uint64 dropped;	/* ring full */
	pg_atomic_uint64 exported;
	pg_atomic_uint64 rejected;	/* refused by the collector */
	pg_atomic_uint64 failed_exports;	/* attempts that failed, spans kept */
	slock_t		mutex;			/* guards what follows */
	TimestampTz last_export_at;
	TimestampTz last_error_at;
	char		last_error[SPAN_ERROR_LEN];
	SpanRecord	spans[FLEXIBLE_ARRAY_MEMBER];
} SpanRing;

double		infra_trace_sample_rate = 0.0;
int			infra_trace_buffer_spans = 2048;

static void SpansCollectMetrics(StringInfo out);
static SpanRing *ring = NULL;

/* Session state. */
static OpenSpan open_spans[SPANS_MAX_OPEN];
static int	nopen = 0;

/* The top-level statement under way. */
static struct
{
	bool		active;			/* a top-level statement runs */
	QueryDesc  *query;			/* its executor run; NULL for utility */
	SpanContext comment;		/* context from its SQLcommenter comment */
	bool		recorded;		/* it has a span: span below */
	OpenSpan	span;
	uint64		queryid;
	char		operation[32];
}			statement;

static const char *const kind_names[] = {
	NULL, "internal", "server", "client", "producer", "consumer"
};

static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;

static Size SpansShmemSize(void);
static void SpansShmemInit(void *segment, bool found, LWLockPadded *locks);
static void SpansExecutorStart(QueryDesc *queryDesc, int eflags);
static void SpansExecutorEnd(QueryDesc *queryDesc);
static void SpansProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
								ProcessUtilityContext context, ParamListInfo params,
								QueryEnvironment *queryEnv, DestReceiver *dest,
								QueryCompletion *qc);
static void SpansXactCallback(XactEvent event, void *arg);
static void SpansStatementBegin(const char *source, Node *statement_node, QueryDesc *query,
								uint64 queryid);
static const char *SpansFindTraceparentTag(const char *source);
static void SpansStatementFinish(bool failed, const char *message);
static bool SpansParent(SpanContext *parent);
static bool SpansParseTraceparent(const char *text, SpanContext *ctx);
static void SpansNewIds(OpenSpan *span, const SpanContext *parent, bool sampled_if_root);
static void SpansRecord(const OpenSpan *span, uint8 status, const char *status_message,
						Jsonb *more, const char *query_text);
static void SpansAppendAnyValue(StringInfo buf, JsonbValue *v);
static void SpansAppendAttribute(StringInfo buf, const char *key, JsonbValue *v);
static void SpansAppendStringAttribute(StringInfo buf, const char *key, const char *value);
static void SpansAppendJsonbAttributes(StringInfo buf, Jsonb *attributes);
static int64 SpansNowNs(void);
static const char *SpansDatabaseName(void);
static bool SpansCurrentTraceparent(char *buf);

/*
 * Define the sampling and ring GUCs, reserve the ring and install the
 * statement hooks.
 */
void
InfraSpansInit(void)
{
	InfraShmemSegment seg = {
		.name = "infra spans",
		.size = SpansShmemSize,
		.extra = NULL,
		.nlocks = 1,
		.init = SpansShmemInit,
		.pointer = (void **) &ring,
	};

	TracingSetSpanSource(SpansCurrentTraceparent);
	DefineCustomRealVariable("infra.trace_sample_rate",
							 "Share of top-level statements without an incoming trace context that get a server span.",
							 "Statements with a trace context follow its sampled flag.",
							 &infra_trace_sample_rate,
							 0.0, 0.0, 1.0,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
	DefineCustomIntVariable("infra.trace_buffer_spans",
							"Finished spans shared memory holds for the exporter; about 2.3 kB each.",
							"When full, new spans are dropped and counted.",
							&infra_trace_buffer_spans,
							2048, 16, 1000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	InfraShmemRegister(&seg);
	MetricsRegisterCollector(SpansCollectMetrics);

	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = SpansExecutorStart;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = SpansExecutorEnd;
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = SpansProcessUtility;
	RegisterXactCallback(SpansXactCallback, NULL);
}

static Size
SpansShmemSize(void)
{
	return add_size(offsetof(SpanRing, spans),
					mul_size(sizeof(SpanRecord), infra_trace_buffer_spans));
}

static void
SpansShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	SpanRing   *r = (SpanRing *) segment;

	if (found)
		return;
	r->lock = &locks[0].lock;
	r->head = r->tail = 0;
	r->exporter = NULL;
	pg_atomic_init_u64(&r->dropped, 0);
	pg_atomic_init_u64(&r->exported, 0);
	pg_atomic_init_u64(&r->rejected, 0);
	pg_atomic_init_u64(&r->failed_exports, 0);
	SpinLockInit(&r->mutex);
	r->last_export_at = r->last_error_at = 0;
	r->last_error[0] = '\0';
}

/* ---------------------------------------------------------------------------
 * Context
 * ---------------------------------------------------------------------------
 */

/*
 * The parent of a span starting now; false when there is none.
 */
static bool
SpansParent(SpanContext *parent)
{
	if (nopen > 0)
	{
		*parent = open_spans[nopen - 1].ctx;
		return true;
	}
	if (statement.active && statement.comment.valid)
	{
		*parent = statement.comment;
		return true;
	}
	if (infra_traceparent_guc != NULL && infra_traceparent_guc[0] != '\0')
		return SpansParseTraceparent(infra_traceparent_guc, parent);
	parent->valid = false;
	return false;
}

/*
 * The context to propagate from here, as a traceparent, into buf (at
 * least TRACEPARENT_LEN + 1 bytes); false to fall back on the session's.
 * Registered with tracing.c as its span source.
 */
static bool
SpansCurrentTraceparent(char *buf)
{
	const SpanContext *ctx = NULL;
	char		trace[33];
	char		span[17];

	if (statement.active && statement.recorded)
		ctx = &statement.span.ctx;
	else if (nopen > 0)
		ctx = &open_spans[nopen - 1].ctx;
	else if (statement.active && statement.comment.valid)
		ctx = &statement.comment;
	if (ctx == NULL)
		return false;
	SpansHex(ctx->trace_id, 16, trace);
	SpansHex(ctx->span_id, 8, span);
	snprintf(buf, TRACEPARENT_LEN + 1, "00-%s-%s-%s", trace, span, ctx->sampled ? "01" : "00");
	return true;
}

static int
SpansHexDigit(char c)
{
	return c >= 'a' ? c - 'a' + 10 : c - '0';
}

/*
 * A valid traceparent into a context (its parent id as the span id).
 */
static bool
SpansParseTraceparent(const char *text, SpanContext *ctx)
{
	const char *why;
	int			i;

	ctx->valid = false;
	if (!TraceparentValid(text, &why))
		return false;
	for (i = 0; i < 16; i++)
		ctx->trace_id[i] = (SpansHexDigit(text[3 + 2 * i]) << 4) | SpansHexDigit(text[4 + 2 * i]);
	for (i = 0; i < 8; i++)
		ctx->span_id[i] = (SpansHexDigit(text[36 + 2 * i]) << 4) | SpansHexDigit(text[37 + 2 * i]);
	ctx->sampled = (SpansHexDigit(text[54]) & 1) != 0;
	ctx->valid = true;
	return true;
}

/*
 * Ids for a new span: its parent's trace, or a new one.
 */
static void
SpansNewIds(OpenSpan *span, const SpanContext *parent, bool sampled_if_root)
{
	uint64		r;

	span->ctx.valid = true;
	if (parent != NULL && parent->valid)
	{
		memcpy(span->ctx.trace_id, parent->trace_id, 16);
		memcpy(span->parent_id, parent->span_id, 8);
		span->has_parent = true;
		span->ctx.sampled = parent->sampled;
	}
	else
	{
		r = pg_prng_uint64(&pg_global_prng_state);
		memcpy(span->ctx.trace_id, &r, 8);
		r = pg_prng_uint64(&pg_global_prng_state);
		memcpy(span->ctx.trace_id + 8, &r, 8);
		span->has_parent = false;
		span->ctx.sampled = sampled_if_root;
	}
	do
		r = pg_prng_uint64(&pg_global_prng_state);
	while (r == 0);
	memcpy(span->ctx.span_id, &r, 8);
	span->start_ns = SpansNowNs();
}

/* ---------------------------------------------------------------------------
 * Explicit spans
 * ---------------------------------------------------------------------------
 */

/*
 * infra.span_start(name, attributes, kind): open a span; returns its id.
 */
Datum
infra_span_start(PG_FUNCTION_ARGS)
{
	OpenSpan   *span;
	SpanContext parent;
	char	   *name;
	char	   *kind;
	int			k = 0;
	int			i;
	char		id[17];

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.span_start()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("span name must not be null")));
	name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (name[0] == '\0' || strlen(name) >= SPAN_NAME_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("span name must be 1 to %d bytes", SPAN_NAME_LEN - 1)));
	kind = PG_ARGISNULL(2) ? "internal" : text_to_cstring(PG_GETARG_TEXT_PP(2));
	for (i = 1; i < lengthof(kind_names); i++)
		if (pg_strcasecmp(kind, kind_names[i]) == 0)
			k = i;
	if (k == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown span kind \"%s\"", kind),
				 errhint("Use internal, server, client, producer or consumer.")));
	if (!PG_ARGISNULL(1) && !JB_ROOT_IS_OBJECT(PG_GETARG_JSONB_P(1)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("span attributes must be a JSON object")));
	if (nopen >= SPANS_MAX_OPEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("too many open spans in this session (%d)", SPANS_MAX_OPEN),
				 errhint("End spans with infra.span_end() when their work is done.")));

	(void) SpansParent(&parent);
	span = &open_spans[nopen];
	memset(span, 0, sizeof(OpenSpan));
	SpansNewIds(span, &parent, true);
	span->kind = (uint8) k;
	strlcpy(span->name, name, SPAN_NAME_LEN);
	if (!PG_ARGISNULL(1))
	{
		Jsonb	   *attrs = PG_GETARG_JSONB_P(1);

		span->attributes = MemoryContextAlloc(TopMemoryContext, VARSIZE(attrs));
		memcpy(span->attributes, attrs, VARSIZE(attrs));
	}
	nopen++;
	SpansHex(span->ctx.span_id, 8, id);
	PG_RETURN_TEXT_P(cstring_to_text(id));
}

/*
 * infra.span_end(span_id, status, attributes): end an open span of this
 * session and queue it for export if its trace is sampled.
 */
Datum
infra_span_end(PG_FUNCTION_ARGS)
{
	char	   *id;
	char	   *status_text;
	uint8		status;
	int			found = -1;
	int			i;
	OpenSpan	span;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.span_end()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("span id must not be null")));
	id = text_to_cstring(PG_GETARG_TEXT_PP(0));
	status_text = PG_ARGISNULL(1) ? "unset" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	if (pg_strcasecmp(status_text, "ok") == 0)
		status = 1;
	else if (pg_strcasecmp(status_text, "error") == 0)
		status = 2;
	else if (pg_strcasecmp(status_text, "unset") == 0)
		status = 0;
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown span status \"%s\"", status_text),
				 errhint("Use ok, error or unset.")));
	if (!PG_ARGISNULL(2) && !JB_ROOT_IS_OBJECT(PG_GETARG_JSONB_P(2)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("span attributes must be a JSON object")));
	for (i = nopen - 1; i >= 0 && found < 0; i--)
	{
		char		hex[17];

		SpansHex(open_spans[i].ctx.span_id, 8, hex);
		if (strcmp(hex, id) == 0)
			found = i;
	}
	if (found < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("span \"%s\" is not open in this session", id),
				 errhint("Pass the id infra.span_start() returned; a span ends once, in the session that started it.")));

	span = open_spans[found];
	for (i = found; i < nopen - 1; i++)
		open_spans[i] = open_spans[i + 1];
	nopen--;
	PG_TRY();
	{
		if (span.ctx.sampled)
			SpansRecord(&span, status, status == 2 ? "error" : "",
						PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2), NULL);
	}
	PG_FINALLY();
	{
		if (span.attributes != NULL)
			pfree(span.attributes);
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}

/* ---------------------------------------------------------------------------
 * Statement spans
 * ---------------------------------------------------------------------------
 */

static void
SpansExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
	if (!statement.active && ring != NULL && !IsParallelWorker())
		SpansStatementBegin(queryDesc->sourceText, (Node *) queryDesc->plannedstmt,
							queryDesc, queryDesc->plannedstmt->queryId);
}

static void
SpansExecutorEnd(QueryDesc *queryDesc)
{
	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
	if (statement.active && statement.query == queryDesc)
		SpansStatementFinish(false, NULL);
}

static void
SpansProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
					ProcessUtilityContext context, ParamListInfo params,
					QueryEnvironment *queryEnv, DestReceiver *dest,
					QueryCompletion *qc)
{
	bool		mine = !statement.active && ring != NULL && !IsParallelWorker() &&
		context == PROCESS_UTILITY_TOPLEVEL;

	if (mine)
		SpansStatementBegin(queryString, pstmt->utilityStmt, NULL, pstmt->queryId);
	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
								 queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		if (mine)
			SpansStatementFinish(true, NULL);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (mine)
		SpansStatementFinish(false, NULL);
}

/*
 * A statement still open when its transaction ends: the executor never
 * finished it (an error), or a COMMIT ends it from inside.
 */
static void
SpansXactCallback(XactEvent event, void *arg)
{
	if (!statement.active)
		return;
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		SpansStatementFinish(true, "the statement failed");
	else if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
			 event == XACT_EVENT_PREPARE)
		SpansStatementFinish(false, NULL);
}

/*
 * Where a SQLcommenter traceparent value starts in the statement text, or
 * NULL.  Every statement passes here: strchr for the comments' "/" is far
 * cheaper than a substring search over the whole text.
 */
static const char *
SpansFindTraceparentTag(const char *source)
{
	static const char tag[] = "traceparent='";
	const char *p = source;

	while ((p = strchr(p, '/')) != NULL)
	{
		const char *end;
		const char *found;

		if (*++p != '*')
			continue;
		end = strstr(p, "*/");
		found = strstr(p, tag);
		if (found != NULL && (end == NULL || found < end))
			return found + sizeof(tag) - 1;
		if (end == NULL)
			break;
		p = end;
	}
	return NULL;
}

/*
 * A top-level statement starts.  The common case (nothing to trace) costs
 * a few tests and a strchr over the statement text.
 */
static void
SpansStatementBegin(const char *source, Node *statement_node, QueryDesc *query, uint64 queryid)
{
	SpanContext parent;
	const char *tag;
	bool		sampled;
	const char *operation;

	statement.active = true;
	statement.query = query;
	statement.comment.valid = false;
	statement.recorded = false;

	tag = source != NULL ? SpansFindTraceparentTag(source) : NULL;
	if (tag != NULL)
	{
		char		value[TRACEPARENT_LEN + 1];
		const char *why = "it must be 00-<32 hex digits>-<16 hex digits>-<2 hex digits>";

		strlcpy(value, tag, sizeof(value));
		if (strlen(value) != TRACEPARENT_LEN || tag[TRACEPARENT_LEN] != '\'' ||
			!TraceparentValid(value, &why))
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("ignoring invalid SQLcommenter traceparent: %s", why),
					 errhint("Use traceparent='00-<trace id>-<parent id>-<flags>' in the comment.")));
		else
			(void) SpansParseTraceparent(value, &statement.comment);
	}

	if (SpansParent(&parent))
		sampled = parent.sampled;
	else
		sampled = infra_trace_sample_rate > 0 &&
			pg_prng_double(&pg_global_prng_state) < infra_trace_sample_rate;
	if (!sampled)
		return;

	operation = GetCommandTagName(CreateCommandTag(statement_node));
	memset(&statement.span, 0, sizeof(OpenSpan));
	SpansNewIds(&statement.span, &parent, true);
	statement.span.kind = 2;	/* server */
	statement.queryid = queryid;
	strlcpy(statement.operation, operation, sizeof(statement.operation));
	snprintf(statement.span.name, SPAN_NAME_LEN, "%s %s", operation, SpansDatabaseName());
	statement.recorded = true;
}

/*
 * The top-level statement is over: queue its span if it has one.
 */
static void
SpansStatementFinish(bool failed, const char *message)
{
	char		text[1024];
	bool		have_text;

	if (!statement.active)
		return;
	statement.active = false;
	statement.query = NULL;
	if (!statement.recorded)
		return;
	statement.recorded = false;
	have_text = QueryStatsText(statement.queryid, text, sizeof(text));
	SpansRecord(&statement.span, failed ? 2 : 0,
				failed ? (message ? message : "the statement failed") : "",
				NULL, have_text ? text : NULL);
}

/* ---------------------------------------------------------------------------
 * Recording
 * ---------------------------------------------------------------------------
 */

/*
 * Finish a span into the ring: OTLP attributes (the session's, the span's
 * and those given at the end), status, end time.  Dropped when full.
 */
static void
SpansRecord(const OpenSpan *span, uint8 status, const char *status_message, Jsonb *more,
			const char *query_text)
{
	SpanRecord	rec;
	StringInfoData attrs;
	const char *correlation_id = InfraCorrelationId();
	const char *dbname = SpansDatabaseName();
	Latch	   *wake = NULL;
	uint64		queued;

	memset(&rec, 0, offsetof(SpanRecord, attributes));
	memcpy(rec.trace_id, span->ctx.trace_id, 16);
	memcpy(rec.span_id, span->ctx.span_id, 8);
	memcpy(rec.parent_id, span->parent_id, 8);
	rec.has_parent = span->has_parent;
	rec.kind = span->kind;
	rec.status = status;
	rec.start_ns = span->start_ns;
	rec.end_ns = SpansNowNs();
	strlcpy(rec.name, span->name, SPAN_NAME_LEN);
	strlcpy(rec.status_message, status_message, SPAN_STATUS_LEN);

	initStringInfo(&attrs);
	SpansAppendStringAttribute(&attrs, "db.system", "postgresql");
	if (dbname[0] != '\0')
		SpansAppendStringAttribute(&attrs, "db.namespace", dbname);
	if (correlation_id != NULL)
		SpansAppendStringAttribute(&attrs, "correlation_id", correlation_id);
	if (span == &statement.span)
	{
		SpansAppendStringAttribute(&attrs, "db.operation.name", statement.operation);
		if (query_text != NULL)
			SpansAppendStringAttribute(&attrs, "db.query.text", query_text);
	}
	if (span->attributes != NULL)
		SpansAppendJsonbAttributes(&attrs, span->attributes);
	if (more != NULL)
		SpansAppendJsonbAttributes(&attrs, more);
	if (attrs.len >= SPAN_ATTRS_LEN)
	{
		/* Keep the span; say its attributes did not fit. */
		resetStringInfo(&attrs);
		SpansAppendStringAttribute(&attrs, "db.system", "postgresql");
		SpansAppendStringAttribute(&attrs, "infra.attributes_truncated", "true");
	}
	memcpy(rec.attributes, attrs.data, attrs.len + 1);
	pfree(attrs.data);

	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	queued = ring->head - ring->tail;
	if (queued >= (uint64) infra_trace_buffer_spans)
	{
		LWLockRelease(ring->lock);
		pg_atomic_fetch_add_u64(&ring->dropped, 1);
		return;
	}
	memcpy(&ring->spans[ring->head % infra_trace_buffer_spans], &rec,
		   offsetof(SpanRecord, attributes) + strlen(rec.attributes) + 1);
	ring->head++;
	/* Wake the exporter for the first span and for each full batch. */
	if (queued == 0 || (queued + 1) % Max(ring->wake_every, 1) == 0)
		wake = ring->exporter;
	LWLockRelease(ring->lock);
	if (wake != NULL)
		SetLatch(wake);
}

static void
SpansAppendStringAttribute(StringInfo buf, const char *key, const char *value)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = unconstify(char *, value);
	v.val.string.len = strlen(value);
	SpansAppendAttribute(buf, key, &v);
}

/*
 * {"key":"k","value":{...AnyValue...}}, comma-separated.
 */
static void
SpansAppendAttribute(StringInfo buf, const char *key, JsonbValue *v)
{
	if (buf->len > 0)
		appendStringInfoChar(buf, ',');
	appendStringInfoString(buf, "{\"key\":");
	escape_json(buf, key);
	appendStringInfoString(buf, ",\"value\":");
	SpansAppendAnyValue(buf, v);
	appendStringInfoChar(buf, '}');
}

/*
 * Each top-level pair of a jsonb object as an attribute.
 */
static void
SpansAppendJsonbAttributes(StringInfo buf, Jsonb *attributes)
{
	JsonbIterator *it = JsonbIteratorInit(&attributes->root);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		(void) JsonbIteratorNext(&it, &v, true);
		SpansAppendAttribute(buf, key, &v);
	}
}

/*
 * A JSON value as an OTLP AnyValue: integers as intValue (a string, as
 * OTLP/JSON writes 64-bit integers), other numbers as doubleValue, arrays
 * as arrayValue, objects as kvlistValue, null as an empty value.  One case
 * per JSON type, kept whole so that the mapping reads as one table.
 */
static void
SpansAppendAnyValue(StringInfo buf, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvString:
			{
				char	   *s = pnstrdup(v->val.string.val, v->val.string.len);

				appendStringInfoString(buf, "{\"stringValue\":");
				escape_json(buf, s);
				appendStringInfoChar(buf, '}');
				break;
			}
		case jbvBool:
			appendStringInfo(buf, "{\"boolValue\":%s}", v->val.boolean ? "true" : "false");
			break;
		case jbvNumeric:
			{
				char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out,
																	NumericGetDatum(v->val.numeric)));
				bool		integral = strspn(s, "-0123456789") == strlen(s) && strlen(s) <= 18;

				if (integral)
					appendStringInfo(buf, "{\"intValue\":\"%s\"}", s);
				else
				{
					double		d = strtod(s, NULL);

					if (isinf(d) || isnan(d))
					{
						appendStringInfoString(buf, "{\"stringValue\":");
						escape_json(buf, s);
						appendStringInfoChar(buf, '}');
					}
					else
						appendStringInfo(buf, "{\"doubleValue\":%s}", s);
				}
				break;
			}
		case jbvBinary:
			{
				JsonbIterator *it = JsonbIteratorInit(v->val.binary.data);
				JsonbValue	inner;
				JsonbIteratorToken tok;
				bool		first = true;

				tok = JsonbIteratorNext(&it, &inner, true);
				if (tok == WJB_BEGIN_ARRAY)
				{
					appendStringInfoString(buf, "{\"arrayValue\":{\"values\":[");
					while ((tok = JsonbIteratorNext(&it, &inner, true)) == WJB_ELEM)
					{
						if (!first)
							appendStringInfoChar(buf, ',');
						SpansAppendAnyValue(buf, &inner);
						first = false;
					}
					appendStringInfoString(buf, "]}}");
				}
				else
				{
					StringInfoData kv;

					initStringInfo(&kv);
					while ((tok = JsonbIteratorNext(&it, &inner, true)) != WJB_DONE)
					{
						char	   *key;

						if (tok != WJB_KEY)
							continue;
						key = pnstrdup(inner.val.string.val, inner.val.string.len);
						(void) JsonbIteratorNext(&it, &inner, true);
						SpansAppendAttribute(&kv, key, &inner);
					}
					appendStringInfo(buf, "{\"kvlistValue\":{\"values\":[%s]}}", kv.data);
				}
				break;
			}
		default:
			appendStringInfoString(buf, "{}");
			break;
	}
}

/*
 * This session's database name, looked up once inside a transaction ("" if
 * not known yet: spans recorded while aborting cannot look it up).
 */
static const char *
SpansDatabaseName(void)
{
	static char name[NAMEDATALEN] = "";

	if (name[0] == '\0' && OidIsValid(MyDatabaseId) && IsTransactionState())
	{
		char	   *n = get_database_name(MyDatabaseId);

		if (n != NULL)
			strlcpy(name, n, sizeof(name));
	}
	return name;
}

static int64
SpansNowNs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64) ts.tv_sec * INT64CONST(1000000000) + ts.tv_nsec;
}

/*
 * n bytes (at most 16) as lowercase hex into out (2n + 1 bytes).
 */
void
SpansHex(const uint8 *bytes, int n, char *out)
{
	static const char digits[] = "0123456789abcdef";
	int			i;

	for (i = 0; i < n; i++)
	{
		out[2 * i] = digits[bytes[i] >> 4];
		out[2 * i + 1] = digits[bytes[i] & 0xf];
	}
	out[2 * n] = '\0';
}

/* ---------------------------------------------------------------------------
 * The exporter's side of the ring
 * ---------------------------------------------------------------------------
 */

/*
 * Register (or with NULL, unregister) the exporter's latch, woken at the
 * first span queued and every wake_every after it (a full batch).
 */
void
SpanRingSetExporter(Latch *latch, int wake_every)
{
	if (ring == NULL)
		return;
	LWLockAcquire(ring->lock, LW_EXCLUSIVE);
	ring->exporter = latch;
	ring->wake_every = wake_every;
	LWLockRelease(ring->lock);
}

/*
 * Copy up to max queued spans, oldest first, without taking them; the end
 * time of the oldest goes to *oldest_end_ns.
 */
int
SpanRingPeek(SpanRecord *out, int max, int64 *oldest_end_ns)
{
	uint64		tail;
	uint64		head;
	int			n;
	int			i;

	LWLockAcquire(ring->lock, LW_SHARED);
	tail = ring->tail;
	head = ring->head;
	n = (int) Min(head - tail, (uint64) max);
	for (i = 0; i < n; i++)
		memcpy(&out[i], &ring->spans[(tail + i) % infra_trace_buffer_spans], sizeof(SpanRecord));
	LWLockRelease(ring->lock);
	*oldest_end_ns = n > 0 ? out[0].end_ns : 0;
	return n;
}

/*
 * After an export attempt: take the n spans peeked (unless it failed) and
 * count the outcome.
 */
void
SpanRingConsume(int n, SpanExportOutcome outcome, const char *error)
{
	TimestampTz now = GetCurrentTimestamp();

	if (outcome != SPAN_EXPORT_FAILED)
	{
		LWLockAcquire(ring->lock, LW_EXCLUSIVE);
		ring->tail += n;
		LWLockRelease(ring->lock);
	}
	if (outcome == SPAN_EXPORT_OK)
		pg_atomic_fetch_add_u64(&ring->exported, n);
	else if (outcome == SPAN_EXPORT_REJECTED)
		pg_atomic_fetch_add_u64(&ring->rejected, n);
	else
		pg_atomic_fetch_add_u64(&ring->failed_exports, 1);
	SpinLockAcquire(&ring->mutex);
	if (outcome == SPAN_EXPORT_OK)
		ring->last_export_at = now;
	else
	{
		ring->last_error_at = now;
		strlcpy(ring->last_error, error ? error : "", SPAN_ERROR_LEN);
	}
	SpinLockRelease(&ring->mutex);
}

/*
 * infra.trace_stats(): the ring and the exporter's counters.
 */
Datum
infra_trace_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[9];
	bool		nulls[9];
	uint64		queued;
	TimestampTz last_export_at;
	TimestampTz last_error_at;
	char		last_error[SPAN_ERROR_LEN];

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.trace_stats");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	LWLockAcquire(ring->lock, LW_SHARED);
	queued = ring->head - ring->tail;
	LWLockRelease(ring->lock);
	SpinLockAcquire(&ring->mutex);
	last_export_at = ring->last_export_at;
	last_error_at = ring->last_error_at;
	strlcpy(last_error, ring->last_error, sizeof(last_error));
	SpinLockRelease(&ring->mutex);

	memset(nulls, 0, sizeof(nulls));
	values[0] = Int64GetDatum((int64) queued);
	values[1] = Int32GetDatum(infra_trace_buffer_spans);
	values[2] = Int64GetDatum((int64) pg_atomic_read_u64(&ring->exported));
	values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&ring->dropped));
	values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&ring->rejected));
	values[5] = Int64GetDatum((int64) pg_atomic_read_u64(&ring->failed_exports));
	values[6] = TimestampTzGetDatum(last_export_at);
	nulls[6] = last_export_at == 0;
	values[7] = CStringGetTextDatum(last_error);
	nulls[7] = last_error[0] == '\0';
	values[8] = TimestampTzGetDatum(last_error_at);
	nulls[8] = last_error_at == 0;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * Built-in series of tracing.
 */
static void
SpansCollectMetrics(StringInfo out)
{
	uint64		queued;

	if (ring == NULL)
		return;
	LWLockAcquire(ring->lock, LW_SHARED);
	queued = ring->head - ring->tail;
	LWLockRelease(ring->lock);
	MetricsWriteOne(out, "infra_trace_spans_queued", "gauge",
					"Finished spans waiting in shared memory for the exporter.", (double) queued);
	MetricsWriteOne(out, "infra_trace_spans_exported_total", "counter",
					"Spans the OTLP collector accepted.",
					(double) pg_atomic_read_u64(&ring->exported));
	MetricsWriteOne(out, "infra_trace_spans_dropped_total", "counter",
					"Spans dropped because the shared ring was full.",
					(double) pg_atomic_read_u64(&ring->dropped));
	MetricsWriteOne(out, "infra_trace_spans_rejected_total", "counter",
					"Spans the OTLP collector refused with a final status (400, 500 ...): dropped, not resent.",
					(double) pg_atomic_read_u64(&ring->rejected));
	MetricsWriteOne(out, "infra_trace_export_failures_total", "counter",
					"OTLP export attempts that failed and will be retried.",
					(double) pg_atomic_read_u64(&ring->failed_exports));
}
