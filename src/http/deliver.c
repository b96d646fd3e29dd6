/*-------------------------------------------------------------------------
 *
 * deliver.c
 *		The http worker's service: requests in, attempts out, outcomes kept.
 *
 * Each pass: libcurl acts on what is ready (transfer.c) and finished
 * attempts are judged; their outcomes are written in one transaction
 * (store.c); requests are read (rows of the outbox not held yet, due
 * retries) up to infra.http_max_requests in memory; and each endpoint's
 * queue starts what its concurrency and rate allow.  Every endpoint has a
 * queue of its own with a bounded length: what a slow or dead endpoint
 * cannot take waits in infra.http_retries, not in memory, so it never holds
 * back another endpoint's requests.
 *
 * Judging an attempt (Standard Webhooks' rules): 2xx delivered; 410 Gone
 * disables the endpoint; 429 or 503 with Retry-After pauses the endpoint
 * that long; any other status, a timeout or a network error is a failure,
 * tried again after the endpoint's retry_schedule step (with jitter) until
 * the schedule is spent, then a dead letter; a refused address is a dead
 * letter at once (nothing was sent).  An endpoint failing for longer than
 * its disable_after is disabled, with a log line; requests to a disabled
 * endpoint become dead letters, sent again by http_retry_dead_letters once
 * http_enable_endpoint has run.  Requests with a URL and no endpoint get an
 * endpoint of defaults per origin, kept in memory only.
 *
 * Lock rules: none; the worker's own memory.  Registered as a service of
 * the http worker (core/worker.c) by HttpDeliverInit.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "common/pg_prng.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "core/clock.h"
#include "core/libcurl.h"
#include "core/worker.h"
#include "http/http.h"
#include "http/request.h"
#include "http/series.h"
#include "resilience/breaker.h"
#include "resilience/ratelimit.h"
#include "http/transfer.h"

/*
 * Requests waiting to start that the worker reads ahead, counting the
 * queues of endpoints that make progress: enough to keep every connection
 * busy.  An endpoint that makes none (its requests in flight for a second
 * without one finishing, or paused by a Retry-After) is not counted, so it
 * never stops the reading for the others; its queue grows up to
 * HTTP_QUEUE_PER_ENDPOINT, and what comes for it beyond that waits in
 * http_retries.  A progressing endpoint's queue stays below the read-ahead
 * and so never reaches that limit.
 */
#define HTTP_READ_AHEAD 2000
#define HTTP_QUEUE_PER_ENDPOINT (2 * HTTP_READ_AHEAD)
/* Longest pause a Retry-After can impose, in seconds. */
#define HTTP_RETRY_AFTER_MAX 3600
/* How often a busy worker reads the endpoints again (a change wakes it too). */
#define HTTP_RELOAD_MS 1000
/*
 * How long an idle worker sleeps: commits, endpoint changes and
 * http_retry_dead_letters wake it; this catches COMMIT PREPARED from
 * another session, which wakes nobody.
 */
#define HTTP_IDLE_MS 10000
#define HTTP_KEY_LEN 300

typedef struct HttpEndpoint
{
	char		key[HTTP_KEY_LEN];	/* name, or "url " and the origin */
	HttpEndpointConf conf;
	bool		named;
	bool		seen;			/* in the last read of http_endpoints */
	bool		changed;		/* enabled / failing_since to write */
	int			in_flight;
	int			queued;
	dlist_head	queue;
	int64		paused_until_ns;
	int			slot;			/* its counters in shared memory (series.c) */
	int64		progress_ns;	/* last completion, or start after none in flight */
	HttpAllowList *allow_seen;	/* infra.http_allow's list when these were made: */
	HttpAllowList *ep_allow;	/* that and its own allow column */
	bool		host_allowed;	/* its URL's host is named in ep_allow */
} HttpEndpoint;

typedef struct HttpBatch
{
	int64		first_id;
	int			pending;		/* requests not judged yet */
} HttpBatch;

typedef struct HttpHeldId
{
	int64		id;
} HttpHeldId;

/* An attempt's outcome for its endpoint's breaker, told at the next dispatch. */
typedef struct HttpBreakerOutcome
{
	char		endpoint[HTTP_ENDPOINT_NAME_LEN];
	bool		failed;
} HttpBreakerOutcome;

char	   *infra_http_allow = NULL;
int			infra_http_max_requests = 10000;

static MemoryContext http_cxt = NULL;	/* requests, endpoints */
static MemoryContext conf_cxt = NULL;	/* the endpoints' settings, read anew */
static HTAB *endpoints = NULL;
static HTAB *batches = NULL;
static HTAB *held_retries = NULL;
static List *judged = NIL;		/* requests whose outcome is to be written */
static List *done_batches = NIL;	/* first ids of batches all judged */
static List *breaker_outcomes = NIL;	/* HttpBreakerOutcome, not told yet */
static int	held = 0;			/* requests in memory */
static TimestampTz next_due = 0;
static int64 reloaded_ns = 0;
static HttpAllowList *allow = NULL;
static char *allow_seen = NULL;
static HttpEndpointConf url_defaults;
static int	url_slot = -1;		/* the counters of requests without an endpoint */
static char *database_name = NULL;

static long HttpServe(void);
static void HttpShutdown(void);
static pgsocket HttpSocket(void);

static const InfraWorkerService http_service = {
	.name = "http",
	.kind = INFRA_WORKER_HTTP,
	.serve = HttpServe,
	.shutdown = HttpShutdown,
	.socket = HttpSocket,
};

static bool
HttpAllowCheck(char **newval, void **extra, GucSource source)
{
	char		why[256];

	if (HttpAllowListParse(*newval, why, sizeof(why)) == NULL)
	{
		GUC_check_errdetail("%s", why);
		return false;
	}
	return true;
}

void
HttpDeliverInit(void)
{
	static int64 schedule[] = {5000, 30000, 120000, 600000, 1800000, 3600000,
	7200000, 14400000, 28800000, 28800000};

	DefineCustomStringVariable("infra.http_allow",
							   "Addresses (CIDRs) and host names the http worker may reach although private, loopback or link-local.",
							   "Comma-separated, e.g. 10.0.0.0/8, hooks.internal. Cloud metadata addresses stay refused.",
							   &infra_http_allow, "", PGC_SIGHUP, 0, HttpAllowCheck, NULL, NULL);
	DefineCustomIntVariable("infra.http_max_requests",
							"Requests the http worker holds in memory at once (in flight or queued).",
							NULL, &infra_http_max_requests, 10000, 100, 1000000,
							PGC_SIGHUP, 0, NULL, NULL, NULL);
	memset(&url_defaults, 0, sizeof(url_defaults));
	url_defaults.timeout_ms = 30000;
	url_defaults.connect_timeout_ms = 5000;
	url_defaults.low_speed_seconds = 10;
	url_defaults.schedule_ms = schedule;
	url_defaults.nschedule = lengthof(schedule);
	url_defaults.concurrency = 16;
	url_defaults.max_response_bytes = 65536;
	url_defaults.disable_after_ms = INT64CONST(5) * 86400 * 1000;
	url_defaults.enabled = true;
	InfraWorkerRegisterService(&http_service);
	HttpSeriesInit();
	HttpSecretsInit();
}

static pgsocket
HttpSocket(void)
{
	return HttpTransferSocket();
}

/* ---- endpoints ---------------------------------------------------------- */

static HTAB *
HttpHash(const char *name, Size keysize, Size entrysize, bool strings)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = keysize;
	ctl.entrysize = entrysize;
	ctl.hcxt = http_cxt;
	return hash_create(name, 256, &ctl, HASH_ELEM | HASH_CONTEXT | (strings ? HASH_STRINGS : HASH_BLOBS));
}

/* Copy one endpoint's settings as read (store.c's sink). */
static void
HttpTakeEndpoint(const HttpEndpointConf *c, void *arg)
{
	MemoryContext old = MemoryContextSwitchTo((MemoryContext) arg);
	HttpEndpoint *ep;
	bool		found;
	int			i;

	ep = hash_search(endpoints, c->name, HASH_ENTER, &found);
	if (!found)
	{
		memset(((char *) ep) + HTTP_KEY_LEN, 0, sizeof(HttpEndpoint) - HTTP_KEY_LEN);
		dlist_init(&ep->queue);
		ep->named = true;
		ep->slot = HttpStatsSlot(database_name, c->name);
	}
	HttpStatsEnabled(ep->slot, ep->changed ? ep->conf.enabled : c->enabled, false);
	/* What the worker itself changed and has not written yet stands. */
	if (!ep->changed)
	{
		ep->conf.enabled = c->enabled;
		ep->conf.disabled_reason = c->disabled_reason ? pstrdup(c->disabled_reason) : NULL;
		ep->conf.failing_since = c->failing_since;
	}
	else if (ep->conf.disabled_reason)
		ep->conf.disabled_reason = pstrdup(ep->conf.disabled_reason);
	strlcpy(ep->conf.name, c->name, sizeof(ep->conf.name));
	ep->conf.url = pstrdup(c->url);
	ep->conf.allow = c->allow ? pstrdup(c->allow) : NULL;
	ep->allow_seen = NULL;		/* its allow list and host made again */
	ep->conf.nsecrets = c->nsecrets;
	ep->conf.secrets = palloc(sizeof(char *) * Max(c->nsecrets, 1));
	for (i = 0; i < c->nsecrets; i++)
		ep->conf.secrets[i] = pstrdup(c->secrets[i]);
	ep->conf.headers = (Jsonb *) PG_DETOAST_DATUM_COPY(PointerGetDatum(c->headers));
	ep->conf.timeout_ms = c->timeout_ms;
	ep->conf.connect_timeout_ms = c->connect_timeout_ms;
	ep->conf.low_speed_seconds = c->low_speed_seconds;
	ep->conf.nschedule = c->nschedule;
	ep->conf.schedule_ms = palloc(sizeof(int64) * Max(c->nschedule, 1));
	memcpy(ep->conf.schedule_ms, c->schedule_ms, sizeof(int64) * c->nschedule);
	ep->conf.rate = c->rate;
	ep->conf.concurrency = c->concurrency;
	ep->conf.max_response_bytes = c->max_response_bytes;
	ep->conf.disable_after_ms = c->disable_after_ms;
	ep->seen = true;
	MemoryContextSwitchTo(old);
}

/*
 * Read infra.http_endpoints again (and infra.http_allow if it changed).
 * An endpoint deleted meanwhile keeps its queue, as disabled.
 */
static void
HttpReloadEndpoints(void)
{
	MemoryContext fresh = AllocSetContextCreate(http_cxt, "infra http endpoints",
												ALLOCSET_SMALL_SIZES);
	HASH_SEQ_STATUS seq;
	HttpEndpoint *ep;

	hash_seq_init(&seq, endpoints);
	while ((ep = hash_seq_search(&seq)) != NULL)
		ep->seen = !ep->named;
	HttpStoreEndpoints(HttpTakeEndpoint, fresh);
	hash_seq_init(&seq, endpoints);
	while ((ep = hash_seq_search(&seq)) != NULL)
		if (!ep->seen)
		{
			ep->conf.enabled = false;
			ep->conf.disabled_reason = "endpoint deleted";
		}
	if (conf_cxt != NULL)
		MemoryContextDelete(conf_cxt);
	conf_cxt = fresh;
	if (allow_seen == NULL || strcmp(allow_seen, infra_http_allow ? infra_http_allow : "") != 0)
	{
		char		why[256];
		HttpAllowList *parsed;
		MemoryContext old = MemoryContextSwitchTo(http_cxt);

		parsed = HttpAllowListParse(infra_http_allow, why, sizeof(why));
		if (parsed != NULL)
			allow = parsed;
		allow_seen = pstrdup(infra_http_allow ? infra_http_allow : "");
		MemoryContextSwitchTo(old);
	}
	reloaded_ns = InfraMonotonicNs();
}

/* "scheme://host:port" of an absolute URL, or NULL. */
static char *
HttpOrigin(const char *url, char **host)
{
	CURLU	   *u = curl_url();
	char	   *scheme = NULL, *h = NULL, *port = NULL;
	char	   *origin = NULL;

	if (u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_HOST, &h, 0) == CURLUE_OK &&
		curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK)
	{
		origin = psprintf("url %s://%s:%s", scheme, h, port);
		/* Brackets of an IPv6 literal are not part of a name to allow. */
		*host = pstrdup(h);
	}
	curl_free(scheme);
	curl_free(h);
	curl_free(port);
	curl_url_cleanup(u);
	return origin;
}

/* The endpoint a request goes through; NULL when a named one is unknown. */
static HttpEndpoint *
HttpEndpointOf(HttpRequest *r)
{
	HttpEndpoint *ep;
	bool		found;
	char	   *host = NULL;
	char	   *key;

	if (r->endpoint != NULL)
	{
		ep = hash_search(endpoints, r->endpoint, HASH_FIND, NULL);
		if (ep == NULL && InfraMonotonicNs() - reloaded_ns > 10 * NS_PER_SEC / 1000)
		{
			HttpReloadEndpoints();
			ep = hash_search(endpoints, r->endpoint, HASH_FIND, NULL);
		}
		return ep;
	}
	key = HttpOrigin(r->url, &host);
	if (key == NULL || strlen(key) >= HTTP_KEY_LEN)
		return NULL;
	ep = hash_search(endpoints, key, HASH_ENTER, &found);
	if (!found)
	{
		memset(((char *) ep) + HTTP_KEY_LEN, 0, sizeof(HttpEndpoint) - HTTP_KEY_LEN);
		dlist_init(&ep->queue);
		ep->conf = url_defaults;
		strlcpy(ep->conf.name, "", sizeof(ep->conf.name));
		ep->seen = true;
		ep->slot = url_slot;
	}
	return ep;
}

/* ---- judging ------------------------------------------------------------ */

/* One attempt's line in the request's outcomes. */
static void
HttpRecordOutcome(HttpRequest *r, const HttpAttempt *a)
{
	MemoryContext old = MemoryContextSwitchTo(http_cxt);

	if (r->outcomes.data == NULL)
		initStringInfo(&r->outcomes);
	if (r->outcomes.len > 0)
		appendStringInfoChar(&r->outcomes, ',');
	appendStringInfo(&r->outcomes, "{\"attempt\": %d, \"at\": ", r->attempts);
	escape_json(&r->outcomes, timestamptz_to_str(GetCurrentTimestamp()));
	if (a->status > 0)
		appendStringInfo(&r->outcomes, ", \"status\": %d", a->status);
	if (a->error[0] != '\0')
	{
		appendStringInfoString(&r->outcomes, ", \"error\": ");
		escape_json(&r->outcomes, a->error);
	}
	appendStringInfo(&r->outcomes, ", \"ms\": " INT64_FORMAT "}", a->elapsed_ms);
	MemoryContextSwitchTo(old);
}

/* The request is done with for now: its outcome goes to the next write. */
static void
HttpJudged(HttpRequest *r, HttpFate fate, const char *error)
{
	MemoryContext old = MemoryContextSwitchTo(http_cxt);

	r->fate = fate;
	if (error != NULL)
		strlcpy(r->error, error, sizeof(r->error));
	if (fate == HTTP_FATE_DEAD)
		HttpStatsDead(r->slot);
	judged = lappend(judged, r);
	if (r->batch != 0)
	{
		HttpBatch  *b = hash_search(batches, &r->batch, HASH_FIND, NULL);

		if (b != NULL && --b->pending == 0)
		{
			int64	   *first = palloc(sizeof(int64));

			*first = b->first_id;
			done_batches = lappend(done_batches, first);
		}
	}
	MemoryContextSwitchTo(old);
}

/* Try again after the schedule's next step, or give up. */
static void
HttpRetryLater(HttpEndpoint *ep, HttpRequest *r, int64 at_least_ms, const char *error)
{
	int64		step;

	if (r->attempts > ep->conf.nschedule)
	{
		char		why[HTTP_ERROR_LEN];

		snprintf(why, sizeof(why), "retry schedule spent after %d attempts: %s", r->attempts, error);
		HttpJudged(r, HTTP_FATE_DEAD, why);
		return;
	}
	step = ep->conf.schedule_ms[r->attempts - 1];
	/* Jitter: between 3/4 and 5/4 of the step, so retries spread out. */
	step = (int64) (step * (0.75 + pg_prng_double(&pg_global_prng_state) / 2));
	r->next_attempt_at = GetCurrentTimestamp() + Max(step, at_least_ms) * 1000;
	HttpJudged(r, HTTP_FATE_RETRY, error);
}

/* A failure of a named endpoint: disabled once it has lasted disable_after. */
static void
HttpEndpointFailed(HttpEndpoint *ep)
{
	TimestampTz now = GetCurrentTimestamp();

	if (!ep->named)
		return;
	if (ep->conf.failing_since == 0)
	{
		ep->conf.failing_since = now;
		ep->changed = true;
	}
	else if (ep->conf.enabled &&
			 (now - ep->conf.failing_since) / 1000 > ep->conf.disable_after_ms)
	{
		ep->conf.enabled = false;
		ep->conf.disabled_reason = MemoryContextStrdup(http_cxt, "failing for longer than disable_after");
		ep->changed = true;
		HttpStatsEnabled(ep->slot, false, true);
		ereport(LOG,
				(errmsg("infra http worker disabled endpoint \"%s\": failing since %s",
						ep->conf.name, timestamptz_to_str(ep->conf.failing_since)),
				 errhint("Fix the receiver, then SELECT infra.http_enable_endpoint('%s') and infra.http_retry_dead_letters('%s').",
						 ep->conf.name, ep->conf.name)));
	}
}

/*
 * An attempt ended (transfer.c's callback): judge it.
 */
static void
HttpAttemptDone(HttpRequest *r, void *owner, const HttpAttempt *a)
{
	HttpEndpoint *ep = owner;
	char		why[HTTP_ERROR_LEN];

	ep->in_flight--;
	ep->progress_ns = InfraMonotonicNs();
	r->status = a->status;
	if (ep->named && !a->refused)
	{
		MemoryContext old = MemoryContextSwitchTo(http_cxt);
		HttpBreakerOutcome *o = palloc(sizeof(HttpBreakerOutcome));

		strlcpy(o->endpoint, ep->conf.name, sizeof(o->endpoint));
		o->failed = !(a->completed && a->status >= 200 && a->status < 300);
		breaker_outcomes = lappend(breaker_outcomes, o);
		MemoryContextSwitchTo(old);
	}
	/* Outcomes are kept for requests that failed (a delivery keeps none). */
	if (!(a->completed && a->status >= 200 && a->status < 300))
		HttpRecordOutcome(r, a);
	HttpStatsAttempt(ep->slot,
					 a->refused ? HTTP_RESULT_REFUSED :
					 a->completed && a->status >= 200 && a->status < 300 ? HTTP_RESULT_DELIVERED :
					 a->completed && (a->status == 429 || a->status == 503) && a->retry_after_s > 0 ?
					 HTTP_RESULT_THROTTLED : HTTP_RESULT_FAILED,
					 a->elapsed_ms / 1000.0);
	if (a->refused)
	{
		HttpJudged(r, HTTP_FATE_DEAD, a->error);
		return;
	}
	if (a->completed && a->status >= 200 && a->status < 300)
	{
		if (ep->named && ep->conf.failing_since != 0)
		{
			ep->conf.failing_since = 0;
			ep->changed = true;
		}
		HttpRecentAdd(r->id, r->endpoint, r->url, r->method, r->created_at, r->attempts,
					  a->status, a->elapsed_ms);
		HttpJudged(r, HTTP_FATE_DELIVERED, "");
		return;
	}
	if (a->completed)
		snprintf(why, sizeof(why), "HTTP status %d%s%s", a->status,
				 a->error[0] ? ": " : "", a->error);
	else
		strlcpy(why, a->error, sizeof(why));
	if (a->completed && a->status == 410 && ep->named)
	{
		ep->conf.enabled = false;
		ep->conf.disabled_reason = MemoryContextStrdup(http_cxt, "410 Gone");
		ep->changed = true;
		HttpStatsEnabled(ep->slot, false, true);
		ereport(LOG, (errmsg("infra http worker disabled endpoint \"%s\": it answered 410 Gone",
							 ep->conf.name)));
		HttpJudged(r, HTTP_FATE_DEAD, why);
		return;
	}
	if (a->completed && (a->status == 429 || a->status == 503) && a->retry_after_s > 0)
	{
		int64		pause = Min(a->retry_after_s, HTTP_RETRY_AFTER_MAX);

		ep->paused_until_ns = InfraMonotonicNs() + pause * NS_PER_SEC;
		HttpRetryLater(ep, r, pause * 1000, why);
		return;
	}
	HttpEndpointFailed(ep);
	HttpRetryLater(ep, r, 0, why);
}

/* ---- reading and starting ----------------------------------------------- */

/*
 * A request read (store.c's sink): to its endpoint's queue, or straight to
 * a dead letter (an endpoint unknown or disabled), or back to the retries
 * when its endpoint already has all the memory it may hold or is paused.
 */
static void
HttpTake(HttpRequest *r, void *arg)
{
	HttpEndpoint *ep = HttpEndpointOf(r);
	bool		found;

	held++;
	if (r->batch != 0)
	{
		HttpBatch  *b = hash_search(batches, &r->batch, HASH_ENTER, &found);

		if (!found)
			b->pending = 0;
		b->pending++;
	}
	else
		(void) hash_search(held_retries, &r->id, HASH_ENTER, NULL);
	r->slot = ep != NULL ? ep->slot : url_slot;
	if (ep == NULL)
	{
		HttpJudged(r, HTTP_FATE_DEAD, r->endpoint ? psprintf("endpoint \"%s\" does not exist", r->endpoint)
				   : "URL not understood");
		return;
	}
	if (!ep->conf.enabled)
	{
		HttpJudged(r, HTTP_FATE_DEAD, psprintf("endpoint \"%s\" is disabled: %s", ep->conf.name,
											   ep->conf.disabled_reason ? ep->conf.disabled_reason : ""));
		return;
	}
	if (ep->queued >= HTTP_QUEUE_PER_ENDPOINT || ep->paused_until_ns > InfraMonotonicNs())
	{
		/* Paused: until the pause ends; full: ten seconds. */
		int64		wait_ms = Max(10000, (ep->paused_until_ns - InfraMonotonicNs()) / 1000000);

		r->next_attempt_at = GetCurrentTimestamp() + wait_ms * 1000;
		HttpJudged(r, HTTP_FATE_RETRY, r->error[0] ? r->error : "deferred: endpoint busy or paused");
		return;
	}
	dlist_push_tail(&ep->queue, &r->node);
	ep->queued++;
}

/* A row of the outbox none of whose requests is left to send: deleted next. */
static void
HttpEmptyBatch(int64 first_id, void *arg)
{
	MemoryContext old = MemoryContextSwitchTo(http_cxt);
	int64	   *first = palloc(sizeof(int64));
	HttpBatch  *b = hash_search(batches, &first_id, HASH_ENTER, NULL);

	/* Held until the delete, so that no read takes it again meanwhile. */
	b->pending = 0;
	*first = first_id;
	done_batches = lappend(done_batches, first);
	MemoryContextSwitchTo(old);
}

/* The ids (or first ids) a hash holds, for a read to skip. */
static int64 *
HttpHeldIds(HTAB *hash, int *n)
{
	int64	   *ids = palloc(sizeof(int64) * (hash_get_num_entries(hash) + 1));
	HASH_SEQ_STATUS seq;
	int64	   *key;

	*n = 0;
	hash_seq_init(&seq, hash);
	while ((key = hash_seq_search(&seq)) != NULL)
		ids[(*n)++] = *key;
	return ids;
}

/* Read what there is room for: outbox rows, then due retries. */
static bool
HttpRead(void)
{
	int			room = infra_http_max_requests - held;
	int			ahead = HTTP_READ_AHEAD;
	int			n;
	int64	   *skip;
	bool		got = false;
	HASH_SEQ_STATUS seq;
	HttpEndpoint *ep;
	int64		now_ns = InfraMonotonicNs();

	hash_seq_init(&seq, endpoints);
	while ((ep = hash_seq_search(&seq)) != NULL)
		if (ep->paused_until_ns <= now_ns &&
			(ep->in_flight == 0 || now_ns - ep->progress_ns < NS_PER_SEC))
			ahead -= ep->queued;
	if (room <= 0)
		return false;
	if (ahead >= HTTP_SEND_BUFFER)
	{
		skip = HttpHeldIds(batches, &n);
		got |= HttpStoreBatches(skip, n, Max(1, Min(room, ahead) / HTTP_SEND_BUFFER),
								http_cxt, HttpTake, HttpEmptyBatch, NULL) > 0;
	}
	room = infra_http_max_requests - held;
	if (room > 0 && ahead > 0 && next_due != 0 && next_due <= GetCurrentTimestamp())
	{
		int			limit = Min(room, ahead);
		int			rows;

		skip = HttpHeldIds(held_retries, &n);
		rows = HttpStoreDueRetries(skip, n, limit, http_cxt, HttpTake, NULL);
		got |= rows > 0;
		/* More may be due; else the next one not held already. */
		skip = HttpHeldIds(held_retries, &n);
		next_due = rows == limit ? GetCurrentTimestamp() : HttpStoreNextDue(skip, n);
	}
	return got;
}

/*
 * The allow list an endpoint's connections are checked with: infra.http_allow
 * and, for a named endpoint, its allow column (a superuser's).
 */
static void
HttpEndpointAllow(HttpEndpoint *ep)
{
	char		why[256];
	HttpAllowList *merged = NULL;

	ep->ep_allow = allow;
	if (ep->named && ep->conf.allow != NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(http_cxt);

		merged = HttpAllowListParse(psprintf("%s,%s", infra_http_allow ? infra_http_allow : "",
											 ep->conf.allow), why, sizeof(why));
		MemoryContextSwitchTo(old);
		if (merged != NULL)
			ep->ep_allow = merged;
		else
			ereport(LOG,
					(errmsg("infra http worker ignores the allow list of endpoint \"%s\": %s",
							ep->conf.name, why)));
	}
}

/* The whole URL of a request: absolute, or the endpoint's and a path. */
static char *
HttpFullUrl(HttpEndpoint *ep, HttpRequest *r)
{
	if (!ep->named)
		return r->url;
	if (r->url == NULL)
		return ep->conf.url;
	if (r->url[0] == '/' && ep->conf.url[strlen(ep->conf.url) - 1] == '/')
		return psprintf("%s%s", ep->conf.url, r->url + 1);
	return psprintf("%s%s", ep->conf.url, r->url);
}

/*
 * May the endpoint start one more now?  A named endpoint asks its breaker
 * and, with a rate, its limiter ("http:<name>", the rows its trigger
 * made); when either says no, the endpoint pauses until they would say
 * yes, its requests staying queued.  In a transaction (a name not cached
 * yet is read).
 */
static bool
HttpMayStart(HttpEndpoint *ep, int64 now_ns)
{
	char		name[NAMEDATALEN];
	int64		wait_ns = 0;

	if (!ep->named)
		return true;
	snprintf(name, sizeof(name), "http:%s", ep->conf.name);
	if (ep->conf.rate > 0 && !InfraRateLimitAllow(name, &wait_ns))
	{
		ep->paused_until_ns = now_ns + Max(wait_ns, NS_PER_SEC / 1000);
		return false;
	}
	if (!InfraBreakerAllow(name, &wait_ns))
	{
		ep->paused_until_ns = now_ns + Max(wait_ns, NS_PER_SEC / 10);
		return false;
	}
	return true;
}

/* Tell the endpoints' breakers how the attempts since the last pass ended. */
static void
HttpRecordBreakers(void)
{
	ListCell   *lc;

	foreach(lc, breaker_outcomes)
	{
		HttpBreakerOutcome *o = lfirst(lc);
		char		name[NAMEDATALEN];

		snprintf(name, sizeof(name), "http:%s", o->endpoint);
		InfraBreakerRecord(name, o->failed);
	}
	list_free_deep(breaker_outcomes);
	breaker_outcomes = NIL;
}

/*
 * Start what each endpoint may start now; true if any started.  In a
 * transaction when a named endpoint has requests waiting or its breaker an
 * outcome to hear: breakers and limiters are rows of tables.
 */
static bool
HttpDispatch(void)
{
	HASH_SEQ_STATUS seq;
	HttpEndpoint *ep;
	int64		now_ns = InfraMonotonicNs();
	bool		started = false;
	bool		in_transaction = false;
	MemoryContext old_context = CurrentMemoryContext;

	hash_seq_init(&seq, endpoints);
	while ((ep = hash_seq_search(&seq)) != NULL)
	{
		if (!in_transaction && ep->named &&
			(breaker_outcomes != NIL || (!dlist_is_empty(&ep->queue) &&
										 ep->in_flight < ep->conf.concurrency &&
										 ep->paused_until_ns <= now_ns)))
		{
			InfraWorkerStartTransaction();
			PushActiveSnapshot(GetTransactionSnapshot());
			in_transaction = true;
			HttpRecordBreakers();
		}
		while (!dlist_is_empty(&ep->queue) && ep->in_flight < ep->conf.concurrency &&
			   ep->paused_until_ns <= now_ns)
		{
			HttpRequest *r = dlist_container(HttpRequest, node, dlist_head_node(&ep->queue));
			char	   *host = NULL;
			char	   *origin;
			char	   *url;

			if (ep->conf.enabled && !HttpMayStart(ep, now_ns))
				break;
			dlist_delete(&r->node);
			ep->queued--;
			if (!ep->conf.enabled)
			{
				HttpJudged(r, HTTP_FATE_DEAD, "endpoint disabled");
				continue;
			}
			url = HttpFullUrl(ep, r);
			/* The host is the endpoint's (its URL, or its origin): looked up once. */
			if (ep->allow_seen != allow)
			{
				HttpEndpointAllow(ep);
				origin = HttpOrigin(url, &host);
				ep->host_allowed = origin != NULL && HttpAllowedHost(ep->ep_allow, host);
				ep->allow_seen = allow;
			}
			r->attempts++;
			if (ep->in_flight++ == 0)
				ep->progress_ns = now_ns;
			HttpTransferStart(r, &ep->conf, url, ep->ep_allow, ep->host_allowed, ep);
			started = true;
		}
	}
	if (in_transaction)
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(old_context);
	}
	return started;
}

/* ---- the service -------------------------------------------------------- */

/* Each endpoint's requests in memory, for /metrics. */
static void
HttpPublishQueues(void)
{
	HASH_SEQ_STATUS seq;
	HttpEndpoint *ep;
	int64		url_in_flight = 0, url_queued = 0;
	TimestampTz url_oldest = 0;

	hash_seq_init(&seq, endpoints);
	while ((ep = hash_seq_search(&seq)) != NULL)
	{
		TimestampTz oldest = 0;

		if (!dlist_is_empty(&ep->queue))
			oldest = dlist_head_element(HttpRequest, node, &ep->queue)->created_at;
		if (ep->named)
		{
			HttpStatsQueue(ep->slot, ep->in_flight, ep->queued, oldest);
			continue;
		}
		url_in_flight += ep->in_flight;
		url_queued += ep->queued;
		if (oldest != 0 && (url_oldest == 0 || oldest < url_oldest))
			url_oldest = oldest;
	}
	HttpStatsQueue(url_slot, url_in_flight, url_queued, url_oldest);
}

/* Write what was judged; forget what is finished. */
static void
HttpSettle(void)
{
	HASH_SEQ_STATUS seq;
	HttpEndpoint *ep;
	List	   *changed = NIL;
	List	   *writes = NIL;
	int64	   *firsts;
	int			n = 0;
	ListCell   *lc;

	hash_seq_init(&seq, endpoints);
	while ((ep = hash_seq_search(&seq)) != NULL)
		if (ep->changed && ep->named)
			changed = lappend(changed, &ep->conf);
	if (judged == NIL && done_batches == NIL && changed == NIL)
		return;
	firsts = palloc(sizeof(int64) * (list_length(done_batches) + 1));
	foreach(lc, done_batches)
		firsts[n++] = *(int64 *) lfirst(lc);
	foreach(lc, judged)
	{
		HttpRequest *r = lfirst(lc);

		/* A delivery from the outbox needs no statement of its own. */
		if (r->fate != HTTP_FATE_DELIVERED || r->in_table)
			writes = lappend(writes, r);
	}
	if (writes != NIL || n > 0 || changed != NIL)
		HttpStoreSettle(writes, firsts, n, changed);

	hash_seq_init(&seq, endpoints);
	while ((ep = hash_seq_search(&seq)) != NULL)
		ep->changed = false;
	foreach(lc, done_batches)
		(void) hash_search(batches, lfirst(lc), HASH_REMOVE, NULL);
	foreach(lc, judged)
	{
		HttpRequest *r = lfirst(lc);

		if (r->fate == HTTP_FATE_RETRY && (next_due == 0 || r->next_attempt_at < next_due))
			next_due = r->next_attempt_at;
		if (r->batch == 0)
			(void) hash_search(held_retries, &r->id, HASH_REMOVE, NULL);
		if (r->outcomes.data != NULL)
			pfree(r->outcomes.data);
		pfree(r);
		held--;
	}
	list_free_deep(done_batches);
	list_free(judged);
	done_batches = NIL;
	judged = NIL;
}

static void
HttpStart(void)
{
	MemoryContext old;

	http_cxt = AllocSetContextCreate(TopMemoryContext, "infra http worker", ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(http_cxt);
	endpoints = HttpHash("infra http endpoints", HTTP_KEY_LEN, sizeof(HttpEndpoint), true);
	batches = HttpHash("infra http batches", sizeof(int64), sizeof(HttpBatch), false);
	held_retries = HttpHash("infra http held retries", sizeof(int64), sizeof(HttpHeldId), false);
	MemoryContextSwitchTo(old);
	InfraWorkerStartTransaction();
	database_name = MemoryContextStrdup(http_cxt, get_database_name(MyDatabaseId));
	CommitTransactionCommand();
	HttpStatsForget();
	url_slot = HttpStatsSlot(database_name, "(url)");
	HttpTransferInit();
	HttpReloadEndpoints();
	next_due = HttpStoreNextDue(NULL, 0);
}

/*
 * One pass of the http worker; how long it may sleep (its latch and the
 * transfers' sockets wake it sooner).
 */
static long
HttpServe(void)
{
	long		sleep_ms;
	long		curl_ms;
	bool		busy = false;

	if (http_cxt == NULL)
		HttpStart();
	HttpTransferDrive(HttpAttemptDone);
	HttpSettle();
	/* Idle until now (woken by a commit or a change): read them afresh. */
	if (held == 0 || InfraMonotonicNs() - reloaded_ns > HTTP_RELOAD_MS * (NS_PER_SEC / 1000))
	{
		HttpReloadEndpoints();
		if (next_due == 0)
		{
			int			n;
			int64	   *skip = HttpHeldIds(held_retries, &n);

			next_due = HttpStoreNextDue(skip, n);
		}
	}
	busy |= HttpRead();
	busy |= HttpDispatch();
	/* Requests judged without a transfer (dead, deferred) are written now. */
	HttpSettle();
	HttpPublishQueues();
	if (busy)
		return 0;
	sleep_ms = HTTP_IDLE_MS;
	curl_ms = HttpTransferTimeout();
	if (curl_ms >= 0)
		sleep_ms = Min(sleep_ms, curl_ms);
	if (next_due != 0)
	{
		long		due_ms = (long) ((next_due - GetCurrentTimestamp()) / 1000);

		sleep_ms = Min(sleep_ms, Max(due_ms, 0));
	}
	/* Queued requests held back by a rate or a pause: look again soon. */
	if (held > HttpTransfersRunning())
		sleep_ms = Min(sleep_ms, 10);
	return sleep_ms;
}

static void
HttpShutdown(void)
{
	HttpTransferShutdown();
}
