/*-------------------------------------------------------------------------
 *
 * otlp.c
 *		The trace exporter: a background worker that sends the spans queued
 *		in shared memory (spans.c) to an OpenTelemetry collector as
 *		OTLP/HTTP JSON, with libcurl.
 *
 * Started by the postmaster when infra.otlp_endpoint is set; it connects
 * to the first database of infra.database to read the "otlp" circuit
 * breaker's configuration.  Spans go in batches of infra.otlp_batch_size,
 * or sooner once the oldest has waited infra.otlp_flush_interval; one curl
 * handle is kept so connections are reused.
 *
 * Outcomes follow the OTLP/HTTP specification: 2xx is success; 429, 502,
 * 503 and 504 (and network errors) are retried, after Retry-After when the
 * collector sends one, else after an exponential backoff with jitter, and
 * the spans stay queued meanwhile; any other status (400 above all) is
 * final: the batch is dropped and counted as rejected, never resent.
 * Attempts are calls of the "otlp" breaker when it is configured: while
 * it is open nothing is sent.
 *
 * libcurl is used from this worker's own thread only.
 *
 * Runs in its own background worker, started by the postmaster when
 * infra.otlp_endpoint is set.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "core/libcurl.h"

#include "access/xact.h"
#include "commands/extension.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "core/clock.h"
#include "core/infra.h"
#include "core/spicheck.h"
#include "core/tracing.h"
#include "core/version.h"
#include "core/worker.h"
#include "observability/otlp.h"
#include "observability/spans.h"
#include "resilience/breaker.h"

PGDLLEXPORT void InfraOtlpMain(Datum main_arg);

/* Backoff after failed attempts: from the first to the longest pause. */
#define OTLP_BACKOFF_MIN_MS 500
#define OTLP_BACKOFF_MAX_MS 60000

/* Longest collector answer kept for the error message. */
#define OTLP_BODY_KEEP 200

char	   *infra_otlp_endpoint = NULL;
int			infra_otlp_batch_size = 512;
static int	otlp_timeout_ms = 5000;
static int	otlp_flush_interval_ms = 1000;
static char *otlp_service_name = NULL;

static CURL *curl = NULL;
static struct curl_slist *curl_headers = NULL;
static SpanRecord *batch = NULL;
static int	batch_capacity = 0;
static int	failures = 0;			/* attempts failed in a row */
static int64 next_attempt_ns = 0;

/* What one POST found out. */
typedef struct OtlpResponse
{
	long		status;
	long		retry_after_ms;	/* -1: none given */
	StringInfoData body;
} OtlpResponse;

static long OtlpServe(void);
static char *OtlpEncode(const SpanRecord *spans, int n);
static SpanExportOutcome OtlpPost(const char *body, char *error, size_t errlen,
								  long *retry_after_ms);
static size_t OtlpHeader(char *buffer, size_t size, size_t nitems, void *arg);
static size_t OtlpBody(char *data, size_t size, size_t nmemb, void *arg);
static bool OtlpBreaker(bool allow_only, bool failed, int64 *probe_in_ns);
static void OtlpCleanup(int code, Datum arg);
static void OtlpDetach(int code, Datum arg);

/*
 * Define the exporter's GUCs and register it when an endpoint is set.
 */
void
InfraOtlpInit(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	DefineCustomStringVariable("infra.otlp_endpoint",
							   "OTLP/HTTP traces endpoint spans are exported to, e.g. http://collector:4318/v1/traces; empty: off.",
							   "The exporter starts with the server when this is set.",
							   &infra_otlp_endpoint,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("infra.otlp_timeout",
							"Longest one export request may take, connection included.",
							NULL,
							&otlp_timeout_ms,
							5000, 100, 600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("infra.otlp_batch_size",
							"Spans sent in one export request at most.",
							NULL,
							&infra_otlp_batch_size,
							512, 1, 10000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("infra.otlp_flush_interval",
							"Longest a span waits for its batch to fill before it is sent.",
							NULL,
							&otlp_flush_interval_ms,
							1000, 1, 600000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomStringVariable("infra.otlp_service_name",
							   "service.name resource attribute of exported spans.",
							   NULL,
							   &otlp_service_name,
							   "postgresql",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	if (infra_otlp_endpoint == NULL || infra_otlp_endpoint[0] == '\0')
		return;

	InfraRegisterWorker("InfraOtlpMain", "infra trace exporter", "infra trace exporter", true, 5, (Datum) 0);
}

/*
 * The exporter's main loop.
 */
void
InfraOtlpMain(Datum main_arg)
{
	sigjmp_buf	local_sigjmp_buf;
	MemoryContext loop_context;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(InfraWorkerFirstDatabase(), NULL, 0);
	/* Superuser: no database or role setting may steer what it runs. */
	InfraPinSearchPath();

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0 || (curl = curl_easy_init()) == NULL)
		elog(ERROR, "could not initialise libcurl");
	curl_headers = curl_slist_append(NULL, "Content-Type: application/json");
	on_proc_exit(OtlpCleanup, (Datum) 0);
	before_shmem_exit(OtlpDetach, (Datum) 0);
	SpanRingSetExporter(MyLatch, infra_otlp_batch_size);
	loop_context = AllocSetContextCreate(TopMemoryContext, "infra trace exporter",
										 ALLOCSET_DEFAULT_SIZES);
	ereport(LOG, (errmsg("infra trace exporter sending spans to %s", infra_otlp_endpoint)));

	/* An ERROR here is reported, and the loop goes on after a pause. */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		/* Error context callbacks of the frames the jump left: forget them. */
		error_context_stack = NULL;
		HOLD_INTERRUPTS();
		EmitErrorReport();
		AbortCurrentTransaction();
		FlushErrorState();
		MemoryContextReset(loop_context);
		RESUME_INTERRUPTS();
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1000, PG_WAIT_EXTENSION);
	}
	PG_exception_stack = &local_sigjmp_buf;

	while (!ShutdownRequestPending)
	{
		long		timeout;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			SpanRingSetExporter(MyLatch, infra_otlp_batch_size);
		}
		MemoryContextSwitchTo(loop_context);
		timeout = OtlpServe();
		MemoryContextSwitchTo(loop_context);
		MemoryContextReset(loop_context);
		if (timeout == 0)
			continue;
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | (timeout > 0 ? WL_TIMEOUT : 0),
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	proc_exit(0);
}

/*
 * One step: send a batch if one is due.  Returns how long to sleep: -1
 * until woken, 0 to come back at once.
 */
static long
OtlpServe(void)
{
	int64		now_ns = InfraMonotonicNs();
	int64		oldest_end_ns;
	int64		probe_in_ns;
	int			n;
	char	   *body;
	char		error[256];
	long		retry_after_ms = -1;
	SpanExportOutcome outcome;

	if (now_ns < next_attempt_ns)
		return (long) ((next_attempt_ns - now_ns) / 1000000 + 1);
	if (infra_otlp_endpoint == NULL || infra_otlp_endpoint[0] == '\0')
		return -1;
	if (batch_capacity != infra_otlp_batch_size)
	{
		if (batch != NULL)
			pfree(batch);
		batch = MemoryContextAlloc(TopMemoryContext, sizeof(SpanRecord) * infra_otlp_batch_size);
		batch_capacity = infra_otlp_batch_size;
	}
	n = SpanRingPeek(batch, batch_capacity, &oldest_end_ns);
	if (n == 0)
		return -1;
	if (n < batch_capacity)
	{
		/* Span times are wall-clock: compare with the wall clock. */
		int64		waited_ms = (GetCurrentTimestamp() / 1000 -
								 (oldest_end_ns / 1000000 -
								  (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000));

		if (waited_ms < otlp_flush_interval_ms)
			return (long) (otlp_flush_interval_ms - waited_ms);
	}
	if (!OtlpBreaker(true, false, &probe_in_ns))
	{
		next_attempt_ns = now_ns + Max(probe_in_ns, 100 * INT64CONST(1000000));
		return (long) ((next_attempt_ns - now_ns) / 1000000 + 1);
	}

	body = OtlpEncode(batch, n);
	outcome = OtlpPost(body, error, sizeof(error), &retry_after_ms);
	SpanRingConsume(n, outcome, error);
	(void) OtlpBreaker(false, outcome == SPAN_EXPORT_FAILED, &probe_in_ns);

	if (outcome == SPAN_EXPORT_REJECTED)
		ereport(WARNING,
				(errmsg("infra trace exporter: the collector rejected %d spans: %s", n, error),
				 errdetail("They are dropped, not resent; see infra.trace_stats.")));
	if (outcome != SPAN_EXPORT_FAILED)
	{
		if (failures > 0)
			ereport(LOG, (errmsg("infra trace exporter reaches the collector again")));
		failures = 0;
		return 0;
	}

	/* Failed: back off (with jitter), or wait as long as asked. */
	{
		long		backoff = OTLP_BACKOFF_MIN_MS;
		int			i;

		if (failures++ == 0)
			ereport(LOG,
					(errmsg("infra trace exporter could not send %d spans: %s", n, error),
					 errdetail("They stay queued and are retried.")));
		for (i = 1; i < failures && backoff < OTLP_BACKOFF_MAX_MS; i++)
			backoff *= 2;
		backoff = Min(backoff, OTLP_BACKOFF_MAX_MS);
		backoff = backoff / 2 + (long) (pg_prng_double(&pg_global_prng_state) * (backoff / 2));
		if (retry_after_ms >= 0)
			backoff = Max(retry_after_ms, OTLP_BACKOFF_MIN_MS / 5);
		next_attempt_ns = InfraMonotonicNs() + (int64) backoff * 1000000;
		return backoff;
	}
}

/*
 * The "otlp" breaker, if configured (needs a transaction to read its
 * row): may an attempt go (allow_only), or record one's outcome.
 */
static bool
OtlpBreaker(bool allow_only, bool failed, int64 *probe_in_ns)
{
	bool		allowed = true;
	char		installed[NAMEDATALEN];

	*probe_in_ns = 0;
	if (!OidIsValid(MyDatabaseId))
		return true;
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (InfraSchemaVersionMatches(installed, sizeof(installed)))
	{
		if (allow_only)
			allowed = InfraBreakerAllow("otlp", probe_in_ns);
		else
			InfraBreakerRecord("otlp", failed);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	return allowed;
}

/* Ids as OTLP/JSON writes them: lowercase hex. */
static void
OtlpAppendHex(StringInfo buf, const uint8 *bytes, int n)
{
	char		hex[33];

	SpansHex(bytes, n, hex);
	appendStringInfoString(buf, hex);
}

/*
 * An ExportTraceServiceRequest in OTLP/JSON: ids in hex, enums as
 * integers, 64-bit integers as strings.
 */
static char *
OtlpEncode(const SpanRecord *spans, int n)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"resourceSpans\":[{\"resource\":{\"attributes\":["
						   "{\"key\":\"service.name\",\"value\":{\"stringValue\":");
	escape_json(&buf, otlp_service_name ? otlp_service_name : "postgresql");
	appendStringInfoString(&buf, "}},{\"key\":\"telemetry.sdk.name\",\"value\":{\"stringValue\":\"infra\"}}"
						   ",{\"key\":\"telemetry.sdk.version\",\"value\":{\"stringValue\":\"" INFRA_VERSION "\"}}"
						   "]},\"scopeSpans\":[{\"scope\":{\"name\":\"infra\",\"version\":\"" INFRA_VERSION "\"},"
						   "\"spans\":[");
	for (i = 0; i < n; i++)
	{
		const SpanRecord *s = &spans[i];

		if (i > 0)
			appendStringInfoChar(&buf, ',');
		appendStringInfoString(&buf, "{\"traceId\":\"");
		OtlpAppendHex(&buf, s->trace_id, 16);
		appendStringInfoString(&buf, "\",\"spanId\":\"");
		OtlpAppendHex(&buf, s->span_id, 8);
		appendStringInfoChar(&buf, '"');
		if (s->has_parent)
		{
			appendStringInfoString(&buf, ",\"parentSpanId\":\"");
			OtlpAppendHex(&buf, s->parent_id, 8);
			appendStringInfoChar(&buf, '"');
		}
		appendStringInfoString(&buf, ",\"name\":");
		escape_json(&buf, s->name);
		appendStringInfo(&buf, ",\"kind\":%d,\"startTimeUnixNano\":\"" INT64_FORMAT "\","
						 "\"endTimeUnixNano\":\"" INT64_FORMAT "\",\"attributes\":[%s],"
						 "\"status\":{\"code\":%d",
						 s->kind, s->start_ns, s->end_ns, s->attributes, s->status);
		if (s->status_message[0] != '\0')
		{
			appendStringInfoString(&buf, ",\"message\":");
			escape_json(&buf, s->status_message);
		}
		appendStringInfoString(&buf, "}}");
	}
	appendStringInfoString(&buf, "]}]}]}");
	return buf.data;
}

/*
 * POST one request and sort the answer out.
 */
static SpanExportOutcome
OtlpPost(const char *body, char *error, size_t errlen, long *retry_after_ms)
{
	OtlpResponse resp;
	char		curl_error[CURL_ERROR_SIZE] = "";
	CURLcode	rc;

	resp.status = 0;
	resp.retry_after_ms = -1;
	initStringInfo(&resp.body);
	error[0] = '\0';

	curl_easy_setopt(curl, CURLOPT_URL, infra_otlp_endpoint);
	curl_easy_setopt(curl, CURLOPT_POST, 1L);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
	curl_easy_setopt(curl, CURLOPT_HTTPHEADER, curl_headers);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long) otlp_timeout_ms);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "infra/" INFRA_VERSION);
	curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_error);
	curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, OtlpHeader);
	curl_easy_setopt(curl, CURLOPT_HEADERDATA, &resp);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, OtlpBody);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, &resp);

	pgstat_report_wait_start(PG_WAIT_EXTENSION);
	rc = curl_easy_perform(curl);
	pgstat_report_wait_end();
	if (rc != CURLE_OK)
	{
		snprintf(error, errlen, "%s", curl_error[0] ? curl_error : curl_easy_strerror(rc));
		return SPAN_EXPORT_FAILED;
	}
	curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &resp.status);
	if (resp.status >= 200 && resp.status < 300)
		return SPAN_EXPORT_OK;
	snprintf(error, errlen, "HTTP %ld%s%s", resp.status, resp.body.len > 0 ? ": " : "",
			 resp.body.data);
	if (resp.status == 429 || resp.status == 502 || resp.status == 503 || resp.status == 504)
	{
		*retry_after_ms = resp.retry_after_ms;
		return SPAN_EXPORT_FAILED;
	}
	return SPAN_EXPORT_REJECTED;
}

/*
 * libcurl's header callback: picks up Retry-After (seconds or an HTTP date).
 */
static size_t
OtlpHeader(char *buffer, size_t size, size_t nitems, void *arg)
{
	OtlpResponse *resp = (OtlpResponse *) arg;
	size_t		len = size * nitems;
	static const char name[] = "retry-after:";

	if (len > sizeof(name) && pg_strncasecmp(buffer, name, sizeof(name) - 1) == 0)
	{
		char		value[64];
		size_t		vlen = Min(len - (sizeof(name) - 1), sizeof(value) - 1);
		char	   *v = value;
		char	   *end;
		long		seconds;

		memcpy(value, buffer + sizeof(name) - 1, vlen);
		value[vlen] = '\0';
		while (*v == ' ' || *v == '\t')
			v++;
		v[strcspn(v, "\r\n")] = '\0';
		seconds = strtol(v, &end, 10);
		if (end != v && *end == '\0' && seconds >= 0)
			resp->retry_after_ms = Min(seconds, 3600L) * 1000;
		else
		{
			time_t		when = curl_getdate(v, NULL);

			if (when > 0)
				resp->retry_after_ms = Min(Max((long) (when - time(NULL)), 0L), 3600L) * 1000;
		}
	}
	return len;
}

/*
 * libcurl's write callback: the start of the collector's answer.
 */
static size_t
OtlpBody(char *data, size_t size, size_t nmemb, void *arg)
{
	OtlpResponse *resp = (OtlpResponse *) arg;
	size_t		len = size * nmemb;

	if (resp->body.len < OTLP_BODY_KEEP)
		appendBinaryStringInfo(&resp->body, data,
							   (int) Min(len, (size_t) (OTLP_BODY_KEEP - resp->body.len)));
	return len;
}

/*
 * Before shared memory goes: the ring has no exporter any more.
 */
static void
OtlpDetach(int code, Datum arg)
{
	SpanRingSetExporter(NULL, 0);
}

/*
 * At exit: libcurl is released.
 */
static void
OtlpCleanup(int code, Datum arg)
{
	if (curl != NULL)
		curl_easy_cleanup(curl);
	if (curl_headers != NULL)
		curl_slist_free_all(curl_headers);
	curl = NULL;
	curl_headers = NULL;
	curl_global_cleanup();
}
