/*-------------------------------------------------------------------------
 *
 * series.c
 *		The http workers' counters in shared memory, and their series in
 *		/metrics.
 *
 * One slot per (database, endpoint): attempts by result, dead letters,
 * requests in flight and queued in memory, the oldest queued one's age, a
 * latency histogram, whether the endpoint is enabled and how often the
 * worker disabled it.  Requests sent to a URL without an endpoint count
 * under endpoint "(url)".  When the slots run out, further endpoints count
 * under "(other)" of their database.
 *
 * Beside them, a ring of the last HTTP_RECENT requests delivered (every
 * database's), which infra.http_requests shows as state "delivered": what
 * a table would keep with a retention, at no write per request.
 *
 * Lock rules: one spinlock over the segment; the workers update a slot or
 * the ring under it, the metrics collector and http_recent() copy them out
 * under it; nothing else happens while it is held.  Called by deliver.c and, for /metrics,
 * by core/metrics.c through the registered collector.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "core/metrics.h"
#include "core/shmem.h"
#include "core/version.h"
#include "http/http.h"
#include "http/series.h"

PG_FUNCTION_INFO_V1(infra_http_recent);

#define HTTP_STATS_SLOTS 256
#define HTTP_BUCKETS 11

static const double bucket_bounds[HTTP_BUCKETS] = {
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
};

typedef struct HttpStats
{
	Oid			database_oid;	/* InvalidOid: free */
	char		database[NAMEDATALEN];
	char		endpoint[NAMEDATALEN];
	uint64		results[HTTP_RESULTS];
	uint64		dead;
	uint64		disabled_total;
	bool		enabled;
	int64		in_flight;
	int64		queued;
	TimestampTz oldest_queued;	/* 0: none */
	uint64		buckets[HTTP_BUCKETS + 1];
	double		seconds_sum;
	uint64		seconds_count;
} HttpStats;

#define HTTP_RECENT 4096
#define HTTP_RECENT_URL 160

/* A delivered request, as the ring keeps it. */
typedef struct HttpRecent
{
	Oid			database_oid;	/* InvalidOid: unused */
	int64		id;
	char		endpoint[NAMEDATALEN];
	char		url[HTTP_RECENT_URL];	/* cut at HTTP_RECENT_URL - 1 bytes */
	char		method[16];
	TimestampTz created_at;
	TimestampTz finished_at;
	int32		attempts;
	int32		status;
	int32		attempt_ms;
} HttpRecent;

typedef struct HttpShared
{
	slock_t		mutex;
	HttpStats	slots[HTTP_STATS_SLOTS];
	uint64		recent_next;	/* where the next delivery goes, mod HTTP_RECENT */
	HttpRecent	recent[HTTP_RECENT];
} HttpShared;

static HttpShared *http_shared = NULL;

static const char *const result_names[HTTP_RESULTS] = {
	"delivered", "failed", "throttled", "refused"
};

static Size
HttpShmemSize(void)
{
	return sizeof(HttpShared);
}

static void
HttpShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	HttpShared *shared = segment;

	if (found)
		return;
	memset(shared, 0, sizeof(HttpShared));
	SpinLockInit(&shared->mutex);
}

/*
 * The slot of this database's endpoint ("(url)" for URLs without one),
 * taken if new; -1 without shared memory.
 */
int
HttpStatsSlot(const char *database, const char *endpoint)
{
	int			found = -1;
	int			other = -1;
	int			i;

	if (http_shared == NULL)
		return -1;
	SpinLockAcquire(&http_shared->mutex);
	for (i = 0; i < HTTP_STATS_SLOTS && found < 0; i++)
	{
		HttpStats  *s = &http_shared->slots[i];

		if (s->database_oid == MyDatabaseId && strcmp(s->endpoint, endpoint) == 0)
			found = i;
		else if (s->database_oid == MyDatabaseId && strcmp(s->endpoint, "(other)") == 0)
			other = i;
	}
	/* A free slot, keeping the last one of all for "(other)". */
	for (i = 0; i < HTTP_STATS_SLOTS - 1 && found < 0; i++)
		if (http_shared->slots[i].database_oid == InvalidOid)
			found = i;
	if (found < 0)
		found = other >= 0 ? other : HTTP_STATS_SLOTS - 1;
	if (http_shared->slots[found].database_oid != MyDatabaseId ||
		strcmp(http_shared->slots[found].endpoint, endpoint) != 0)
	{
		HttpStats  *s = &http_shared->slots[found];
		bool		spare = found == HTTP_STATS_SLOTS - 1 || found == other;

		if (s->database_oid != MyDatabaseId)
			memset(s, 0, sizeof(HttpStats));
		s->database_oid = MyDatabaseId;
		strlcpy(s->database, database, sizeof(s->database));
		strlcpy(s->endpoint, spare ? "(other)" : endpoint, sizeof(s->endpoint));
		s->enabled = true;
	}
	SpinLockRelease(&http_shared->mutex);
	return found;
}

/* One attempt's result and, for those that reached a server, its time. */
void
HttpStatsAttempt(int slot, HttpResult result, double seconds)
{
	HttpStats  *s;
	int			b;

	if (slot < 0)
		return;
	for (b = 0; b < HTTP_BUCKETS && seconds > bucket_bounds[b]; b++)
		;
	SpinLockAcquire(&http_shared->mutex);
	s = &http_shared->slots[slot];
	s->results[result]++;
	if (result != HTTP_RESULT_REFUSED)
	{
		s->buckets[b]++;
		s->seconds_sum += seconds;
		s->seconds_count++;
	}
	SpinLockRelease(&http_shared->mutex);
}

/* A request moved to the dead letters; the endpoint disabled or enabled. */
void
HttpStatsDead(int slot)
{
	if (slot < 0)
		return;
	SpinLockAcquire(&http_shared->mutex);
	http_shared->slots[slot].dead++;
	SpinLockRelease(&http_shared->mutex);
}

/* counted: the worker disabled it now (not: read so from the table). */
void
HttpStatsEnabled(int slot, bool enabled, bool counted)
{
	HttpStats  *s;

	if (slot < 0)
		return;
	SpinLockAcquire(&http_shared->mutex);
	s = &http_shared->slots[slot];
	if (s->enabled && !enabled && counted)
		s->disabled_total++;
	s->enabled = enabled;
	SpinLockRelease(&http_shared->mutex);
}

/* What the endpoint has in memory now. */
void
HttpStatsQueue(int slot, int64 in_flight, int64 queued, TimestampTz oldest)
{
	HttpStats  *s;

	if (slot < 0)
		return;
	SpinLockAcquire(&http_shared->mutex);
	s = &http_shared->slots[slot];
	s->in_flight = in_flight;
	s->queued = queued;
	s->oldest_queued = oldest;
	SpinLockRelease(&http_shared->mutex);
}

/* A delivered request into the ring (the oldest one leaves it). */
void
HttpRecentAdd(int64 id, const char *endpoint, const char *url, const char *method,
			  TimestampTz created_at, int attempts, int status, int64 attempt_ms)
{
	HttpRecent	r;

	if (http_shared == NULL)
		return;
	memset(&r, 0, sizeof(r));
	r.database_oid = MyDatabaseId;
	r.id = id;
	strlcpy(r.endpoint, endpoint ? endpoint : "", sizeof(r.endpoint));
	strlcpy(r.url, url ? url : "", sizeof(r.url));
	strlcpy(r.method, method, sizeof(r.method));
	r.created_at = created_at;
	r.finished_at = GetCurrentTimestamp();
	r.attempts = attempts;
	r.status = status;
	r.attempt_ms = (int32) Min(attempt_ms, PG_INT32_MAX);
	SpinLockAcquire(&http_shared->mutex);
	http_shared->recent[http_shared->recent_next++ % HTTP_RECENT] = r;
	SpinLockRelease(&http_shared->mutex);
}

/*
 * infra.http_recent(): the requests of this database the ring still holds,
 * the latest first.
 */
Datum
infra_http_recent(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HttpRecent *copy;
	uint64		next;
	int			i;

	INFRA_CHECK_SCHEMA();
	InitMaterializedSRF(fcinfo, 0);
	if (http_shared == NULL)
		return (Datum) 0;
	copy = palloc(sizeof(HttpRecent) * HTTP_RECENT);
	SpinLockAcquire(&http_shared->mutex);
	memcpy(copy, http_shared->recent, sizeof(HttpRecent) * HTTP_RECENT);
	next = http_shared->recent_next;
	SpinLockRelease(&http_shared->mutex);
	for (i = 1; i <= HTTP_RECENT && (uint64) i <= next; i++)
	{
		HttpRecent *r = &copy[(next - i) % HTTP_RECENT];
		Datum		values[9];
		bool		nulls[9] = {false};

		if (r->database_oid != MyDatabaseId)
			continue;
		values[0] = Int64GetDatum(r->id);
		values[1] = CStringGetTextDatum(r->endpoint);
		nulls[1] = r->endpoint[0] == '\0';
		values[2] = CStringGetTextDatum(r->url);
		nulls[2] = r->url[0] == '\0';
		values[3] = CStringGetTextDatum(r->method);
		values[4] = TimestampTzGetDatum(r->created_at);
		values[5] = Int32GetDatum(r->attempts);
		values[6] = Int32GetDatum(r->status);
		values[7] = Int32GetDatum(r->attempt_ms);
		values[8] = TimestampTzGetDatum(r->finished_at);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* The slots of a database forgotten (its worker starts afresh). */
void
HttpStatsForget(void)
{
	int			i;

	if (http_shared == NULL)
		return;
	SpinLockAcquire(&http_shared->mutex);
	for (i = 0; i < HTTP_STATS_SLOTS; i++)
		if (http_shared->slots[i].database_oid == MyDatabaseId)
		{
			http_shared->slots[i].in_flight = 0;
			http_shared->slots[i].queued = 0;
			http_shared->slots[i].oldest_queued = 0;
		}
	SpinLockRelease(&http_shared->mutex);
}

static void
HttpWriteHistogram(StringInfo out, HttpStats *copies, int n)
{
	const char *name = "infra_http_request_duration_seconds";
	int			i, b;

	MetricsWriteFamily(out, name, "histogram",
					   "Time from a request's start to its response (or failure), per endpoint.");
	for (i = 0; i < n; i++)
	{
		uint64		cumulative = 0;

		for (b = 0; b <= HTTP_BUCKETS; b++)
		{
			StringInfoData labels;
			char		le[32];

			cumulative += copies[i].buckets[b];
			initStringInfo(&labels);
			MetricsAppendLabel(&labels, "database", copies[i].database);
			MetricsAppendLabel(&labels, "endpoint", copies[i].endpoint);
			if (b < HTTP_BUCKETS)
				snprintf(le, sizeof(le), "%g", bucket_bounds[b]);
			else
				strlcpy(le, "+Inf", sizeof(le));
			MetricsAppendLabel(&labels, "le", le);
			MetricsWriteSample(out, "infra_http_request_duration_seconds_bucket", labels.data, cumulative);
		}
	}
	for (i = 0; i < n; i++)
	{
		StringInfoData labels;

		initStringInfo(&labels);
		MetricsAppendLabel(&labels, "database", copies[i].database);
		MetricsAppendLabel(&labels, "endpoint", copies[i].endpoint);
		MetricsWriteSample(out, "infra_http_request_duration_seconds_sum", labels.data, copies[i].seconds_sum);
		MetricsWriteSample(out, "infra_http_request_duration_seconds_count", labels.data, copies[i].seconds_count);
	}
}

static void
HttpCollectMetrics(StringInfo out)
{
	static const char *const names[] = {
		"infra_http_attempts_total", "infra_http_dead_letters_total", "infra_http_in_flight_requests",
		"infra_http_queued_requests", "infra_http_oldest_queued_age_seconds",
		"infra_http_endpoint_enabled", "infra_http_endpoint_disabled_total"
	};
	static const char *const types[] = {"counter", "counter", "gauge", "gauge", "gauge", "gauge", "counter"};
	static const char *const helps[] = {
		"Attempts by result: delivered (2xx), failed (retried or dead), throttled (429/503 with Retry-After), refused (address not allowed).",
		"Requests moved to infra.http_dead_letters.",
		"Requests being sent now.",
		"Requests the worker holds for the endpoint, not yet started.",
		"Age of the oldest request the worker holds for the endpoint, not yet started (0: none).",
		"1 while the endpoint is enabled; the worker disables it on 410 Gone or after disable_after of failures.",
		"Times the worker disabled the endpoint."
	};
	HttpStats  *copies;
	TimestampTz now = GetCurrentTimestamp();
	int			n = 0, i, f;

	if (http_shared == NULL)
		return;
	copies = palloc(sizeof(HttpStats) * HTTP_STATS_SLOTS);
	SpinLockAcquire(&http_shared->mutex);
	for (i = 0; i < HTTP_STATS_SLOTS; i++)
		if (http_shared->slots[i].database_oid != InvalidOid)
			copies[n++] = http_shared->slots[i];
	SpinLockRelease(&http_shared->mutex);
	for (f = 0; f < lengthof(names); f++)
	{
		MetricsWriteFamily(out, names[f], types[f], helps[f]);
		for (i = 0; i < n; i++)
		{
			HttpStats  *s = &copies[i];
			StringInfoData labels;
			int			r;

			initStringInfo(&labels);
			MetricsAppendLabel(&labels, "database", s->database);
			MetricsAppendLabel(&labels, "endpoint", s->endpoint);
			if (f == 0)
			{
				for (r = 0; r < HTTP_RESULTS; r++)
				{
					StringInfoData l;

					initStringInfo(&l);
					appendStringInfoString(&l, labels.data);
					MetricsAppendLabel(&l, "result", result_names[r]);
					MetricsWriteSample(out, names[f], l.data, s->results[r]);
				}
				continue;
			}
			MetricsWriteSample(out, names[f], labels.data,
							   f == 1 ? s->dead : f == 2 ? s->in_flight : f == 3 ? s->queued :
							   f == 4 ? (s->oldest_queued ? (now - s->oldest_queued) / 1000000.0 : 0) :
							   f == 5 ? s->enabled : s->disabled_total);
		}
	}
	HttpWriteHistogram(out, copies, n);
}

void
HttpSeriesInit(void)
{
	InfraShmemSegment seg = {
		.name = "infra http",
		.size = HttpShmemSize,
		.init = HttpShmemInit,
		.pointer = (void **) &http_shared,
	};

	InfraShmemRegister(&seg);
	MetricsRegisterCollector(HttpCollectMetrics);
}
