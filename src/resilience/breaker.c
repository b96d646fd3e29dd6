/*-------------------------------------------------------------------------
 *
 * breaker.c
 *		Circuit breakers: configured in a table, one live state per breaker
 *		for the whole cluster in shared memory.
 *
 * Semantics follow resilience4j.  A closed breaker records outcomes in a
 * sliding window (the last N calls, or the calls of the last N seconds);
 * once the window holds minimum_calls and the failure rate or the slow-call
 * rate reaches its threshold, it opens.  An open breaker rejects calls until
 * open_duration has passed; the next call then moves it to half-open, where
 * half_open_permitted_calls probe calls are let through and their outcome
 * closes it again or re-opens it.  forced_open, disabled and metrics_only
 * are set by hand.
 *
 * Half-open permits belong to the backend that took them.  A backend
 * remembers what it holds and gives the permits back when its transaction
 * aborts (error, cancel) or when it exits, so that a breaker can never be
 * stuck in half-open with every permit held by a call that will never
 * report (resilience4j's long-standing bug).  Each transition bumps the
 * breaker's generation, which makes permits of an earlier half-open period
 * harmless.
 *
 * A breaker belongs to the role that owns its row (confcache.c checks the
 * caller may use it), and its live state is that owner's: a slot is named
 * by (name, owner), so a role that writes a row of the same name in another
 * database gets a breaker of its own, not the power to trip another's.
 * infra's own ("kafka" for delivery, "otlp" for trace exports) belong to
 * the extension's owner and are granted to no one: only superusers, or
 * roles a superuser grants their use, can touch them.
 *
 * Locking: infra.breaker_max slots.  BreakerShared->lock (LWLock) guards
 * assigning a slot to a name (shared to look up, exclusive to assign) and
 * the ring of events.  A slot, once named, keeps its name until the server
 * restarts, so backends cache the slot number and the hot path
 * (breaker_allow) takes only the slot's spinlock.  Under the spinlock there
 * is integer and float arithmetic only: events are formatted and appended
 * after it is released.
 *
 * Called by SQL (breaker_* and the views), and by producer.c (the "kafka"
 * breaker guards delivery) and otlp.c (the "network" breaker guards exports).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "core/clock.h"
#include "core/confcache.h"
#include "core/infra.h"
#include "core/metrics.h"
#include "core/shmem.h"
#include "core/sqlstate.h"
#include "core/version.h"
#include "resilience/breaker.h"

PG_FUNCTION_INFO_V1(infra_breaker_allow);
PG_FUNCTION_INFO_V1(infra_breaker_success);
PG_FUNCTION_INFO_V1(infra_breaker_failure);
PG_FUNCTION_INFO_V1(infra_breaker_call);
PG_FUNCTION_INFO_V1(infra_breaker_force);
PG_FUNCTION_INFO_V1(infra_breaker_reset);
PG_FUNCTION_INFO_V1(infra_breaker_states);
PG_FUNCTION_INFO_V1(infra_breaker_events);

#define WINDOW_BYTES ((BREAKER_MAX_WINDOW + 7) / 8)

/* One row of infra.circuit_breakers, as this backend caches it. */
typedef struct BreakerConfig
{
	char		name[NAMEDATALEN];	/* cache key, must be first */
	ConfigOwner own;
	bool		time_window;
	int32		window_size;
	int32		minimum_calls;
	float8		failure_rate_threshold; /* percent */
	int64		slow_call_ns;
	float8		slow_call_rate_threshold;	/* percent */
	int64		open_ns;
	int32		half_open_permitted;
	int64		half_open_max_wait_ns;	/* 0: no limit */
	SqlstateList failure_states;	/* empty: every error */
	SqlstateList ignored_states;
	int			slot;
} BreakerConfig;

/* Calls of one second of a time window. */
typedef struct BreakerBucket
{
	int64		second;
	int32		calls;
	int32		failures;
	int32		slows;
} BreakerBucket;

typedef struct BreakerSlot
{
	char		name[BREAKER_NAME_LEN]; /* set once, under the LWLock */
	Oid			owner;			/* likewise: the row's owner */
	char		owner_name[NAMEDATALEN];
	slock_t		mutex;			/* guards everything below */
	BreakerStateKind state;
	uint32		generation;
	int64		since_ns;
	int64		open_until_ns;
	int32		permits_in_use;
	int32		half_open_calls;
	int32		half_open_failures;
	int32		half_open_slows;
	/* sliding window */
	bool		time_window;
	int32		window_size;
	int32		calls;
	int32		failures;
	int32		slows;
	int32		next;			/* count window: position of the next call */
	int64		last_second;	/* time window: newest bucket */
	uint8		failed_bits[WINDOW_BYTES];
	uint8		slow_bits[WINDOW_BYTES];
	BreakerBucket buckets[BREAKER_MAX_WINDOW];
	/* since the server started */
	int64		calls_total;
	int64		failures_total;
	int64		slow_total;
	int64		rejected_total;
	int64		transitions_total;
} BreakerSlot;

typedef struct BreakerEvent
{
	char		name[BREAKER_NAME_LEN];
	BreakerStateKind from;
	BreakerStateKind to;
	TimestampTz at;
	char		reason[128];
} BreakerEvent;

typedef struct BreakerShared
{
	LWLock	   *lock;
	int			nslots;			/* slots named so far */
	uint64		nevents;		/* events ever written */
	BreakerEvent events[BREAKER_EVENTS];
	BreakerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} BreakerShared;

/* A transition decided under the spinlock, logged after it. */
typedef struct BreakerChange
{
	bool		happened;
	BreakerStateKind from;
	BreakerStateKind to;
	const char *why;
	float8		failure_rate;
	float8		slow_rate;
} BreakerChange;

/* Outcome of a call. */
typedef enum BreakerOutcome
{
	OUTCOME_SUCCESS,
	OUTCOME_FAILURE,
	OUTCOME_IGNORED
} BreakerOutcome;

/* A half-open permit this backend holds. */
typedef struct HeldPermit
{
	int			slot;
	uint32		generation;
} HeldPermit;

int			infra_breaker_max = 64;

static void BreakerCollectMetrics(StringInfo out);
static BreakerShared *breaker_shared = NULL;
static void BreakerRead(HeapTuple tuple, TupleDesc desc, void *entry);

static const Oid breaker_types[] = {BOOLOID, INT4OID, INT4OID, FLOAT8OID, INTERVALOID,
	FLOAT8OID, INTERVALOID, INT4OID, INTERVALOID, TEXTARRAYOID, TEXTARRAYOID, REGROLEOID, ACLITEMARRAYOID};

static ConfigCache breaker_cache = {
	.table = "circuit_breakers",
	.entrysize = sizeof(BreakerConfig),
	.query = "SELECT window_kind OPERATOR(pg_catalog.=) 'time', window_size, minimum_calls, "
	"failure_rate_threshold, slow_call_duration, slow_call_rate_threshold, "
	"open_duration, half_open_permitted_calls, half_open_max_wait, "
	"failure_sqlstates, ignored_sqlstates, owner, acl "
	"FROM infra.circuit_breakers WHERE name OPERATOR(pg_catalog.=) $1",
	/* 1.1's rows: the extension owner's, usable by all but infra's own, as the update makes them. */
	.previous_query = "SELECT b.window_kind OPERATOR(pg_catalog.=) 'time', b.window_size, b.minimum_calls, "
	"b.failure_rate_threshold, b.slow_call_duration, b.slow_call_rate_threshold, "
	"b.open_duration, b.half_open_permitted_calls, b.half_open_max_wait, "
	"b.failure_sqlstates, b.ignored_sqlstates, e.extowner::pg_catalog.regrole, "
	"CASE WHEN b.name OPERATOR(pg_catalog.<>) 'kafka' "
	"THEN ARRAY[pg_catalog.makeaclitem(0, e.extowner, 'USAGE', false)] END "
	"FROM infra.circuit_breakers b, pg_catalog.pg_extension e "
	"WHERE e.extname OPERATOR(pg_catalog.=) 'infra' AND b.name OPERATOR(pg_catalog.=) $1",
	.ncols = 13,
	.types = breaker_types,
	.read = BreakerRead,
	.what = "circuit breaker",
	.kind = "circuit_breaker",
	.owned = true,
	.owner_offset = offsetof(BreakerConfig, own),
	.hint = "Breakers are rows of infra.circuit_breakers; insert one to create it.",
};

static HeldPermit held[BREAKER_MAX_HELD_PERMITS];
static int	nheld = 0;
static bool exit_callback_registered = false;

static const char *const state_names[] = {
	"closed", "open", "half_open", "forced_open", "disabled", "metrics_only"
};

static Size BreakerShmemSize(void);
static void BreakerShmemInit(void *segment, bool found, LWLockPadded *locks);
static void BreakerLookup(const char *name, BreakerConfig *cfg);
static int	BreakerSlotFor(const char *name, Oid owner, const char *owner_name);
static void BreakerTransition(BreakerSlot *slot, BreakerStateKind to,
							  const BreakerConfig *cfg, int64 now_ns,
							  const char *why, BreakerChange *change);
static void WindowReset(BreakerSlot *slot, const BreakerConfig *cfg, int64 now_ns);
static void WindowAdvance(BreakerSlot *slot, int64 now_ns);
static void WindowRecord(BreakerSlot *slot, const BreakerConfig *cfg,
						 int64 now_ns, bool failed, bool slow);
static bool BreakerAllow(const BreakerConfig *cfg, int64 *probe_in_ns);
static void BreakerRecord(const BreakerConfig *cfg, BreakerOutcome outcome,
						  bool slow);
static void BreakerLogChange(const char *name, const BreakerChange *change);
static void BreakerReleasePermits(void);
static void BreakerXactCallback(XactEvent event, void *arg);
static void BreakerExitCallback(int code, Datum arg);
static BreakerOutcome BreakerClassify(const BreakerConfig *cfg, int sqlerrcode);
static char *BreakerName(FunctionCallInfo fcinfo);

/*
 * Define infra.breaker_max, reserve the slots, release permits on abort.
 */
void
InfraBreakerInit(void)
{
	InfraShmemSegment seg = {
		.name = "infra circuit breakers",
		.size = BreakerShmemSize,
		.nlocks = 1,
		.init = BreakerShmemInit,
		.pointer = (void **) &breaker_shared,
	};

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("infra.breaker_max",
							"Most circuit breakers with live state.",
							NULL,
							&infra_breaker_max,
							64, 1, 10000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	InfraShmemRegister(&seg);
	MetricsRegisterCollector(BreakerCollectMetrics);
	RegisterXactCallback(BreakerXactCallback, NULL);
}

static Size
BreakerShmemSize(void)
{
	return add_size(offsetof(BreakerShared, slots),
					mul_size(infra_breaker_max, sizeof(BreakerSlot)));
}

static void
BreakerShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	BreakerShared *shared = (BreakerShared *) segment;

	if (found)
		return;
	memset(shared, 0, BreakerShmemSize());
	shared->lock = &locks[0].lock;
}

/*
 * The slot of the breaker (name, owner), assigning a free one on first use.
 */
static int
BreakerSlotFor(const char *name, Oid owner, const char *owner_name)
{
	int			i;
	int64		now_ns;
	bool		found;

	LWLockAcquire(breaker_shared->lock, LW_SHARED);
	for (i = 0; i < breaker_shared->nslots; i++)
		if (breaker_shared->slots[i].owner == owner &&
			strcmp(breaker_shared->slots[i].name, name) == 0)
			break;
	found = i < breaker_shared->nslots;
	LWLockRelease(breaker_shared->lock);
	if (found)
		return i;

	LWLockAcquire(breaker_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < breaker_shared->nslots; i++)
		if (breaker_shared->slots[i].owner == owner &&
			strcmp(breaker_shared->slots[i].name, name) == 0)
			break;
	if (i == breaker_shared->nslots)
	{
		BreakerSlot *slot;

		if (i >= infra_breaker_max)
		{
			LWLockRelease(breaker_shared->lock);
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("too many circuit breakers in use (%d)", infra_breaker_max),
					 errhint("Raise infra.breaker_max and restart the server.")));
		}
		slot = &breaker_shared->slots[i];
		now_ns = InfraMonotonicNs();
		SpinLockInit(&slot->mutex);
		strlcpy(slot->name, name, BREAKER_NAME_LEN);
		slot->owner = owner;
		strlcpy(slot->owner_name, owner_name, NAMEDATALEN);
		slot->state = BREAKER_CLOSED;
		slot->since_ns = now_ns;
		slot->last_second = now_ns / NS_PER_SEC;
		pg_write_barrier();
		breaker_shared->nslots++;
	}
	LWLockRelease(breaker_shared->lock);
	return i;
}

/*
 * A row of infra.circuit_breakers, for the configuration cache; the slot is
 * looked up (or assigned) once per cache fill.
 */
static void
BreakerRead(HeapTuple tuple, TupleDesc desc, void *entry)
{
	BreakerConfig *cfg = (BreakerConfig *) entry;
	bool		isnull;

	cfg->time_window = DatumGetBool(SPI_getbinval(tuple, desc, 1, &isnull));
	cfg->window_size = DatumGetInt32(SPI_getbinval(tuple, desc, 2, &isnull));
	cfg->minimum_calls = DatumGetInt32(SPI_getbinval(tuple, desc, 3, &isnull));
	cfg->failure_rate_threshold = DatumGetFloat8(SPI_getbinval(tuple, desc, 4, &isnull));
	cfg->slow_call_ns = InfraIntervalToNs(DatumGetIntervalP(SPI_getbinval(tuple, desc, 5, &isnull)),
										  "slow_call_duration", false);
	cfg->slow_call_rate_threshold = DatumGetFloat8(SPI_getbinval(tuple, desc, 6, &isnull));
	cfg->open_ns = InfraIntervalToNs(DatumGetIntervalP(SPI_getbinval(tuple, desc, 7, &isnull)),
									 "open_duration", false);
	cfg->half_open_permitted = DatumGetInt32(SPI_getbinval(tuple, desc, 8, &isnull));
	cfg->half_open_max_wait_ns = InfraIntervalToNs(DatumGetIntervalP(SPI_getbinval(tuple, desc, 9, &isnull)),
												   "half_open_max_wait", true);
	SqlstateListFromArray(DatumGetArrayTypeP(SPI_getbinval(tuple, desc, 10, &isnull)),
						  "failure_sqlstates", &cfg->failure_states);
	SqlstateListFromArray(DatumGetArrayTypeP(SPI_getbinval(tuple, desc, 11, &isnull)),
						  "ignored_sqlstates", &cfg->ignored_states);
	cfg->slot = BreakerSlotFor(cfg->name, cfg->own.owner, cfg->own.owner_name);
}

/*
 * The configuration of a breaker, copied into *cfg: the cache may be
 * dropped by any invalidation, such as one processed while breaker_call
 * runs its statement.
 */
static void
BreakerLookup(const char *name, BreakerConfig *cfg)
{
	InfraShmemRequire("infra circuit breakers");
	(void) ConfigCacheFetch(&breaker_cache, name, cfg, false);
}

/*
 * For infra's own callers (the Kafka producer): may a call go ahead under
 * the named breaker?  True when no such breaker is configured.
 * *probe_in_ns tells a rejected caller when to come back (0: unknown).
 */
bool
InfraBreakerAllow(const char *name, int64 *probe_in_ns)
{
	BreakerConfig cfg;

	*probe_in_ns = 0;
	if (!ConfigCacheFetch(&breaker_cache, name, &cfg, true))
		return true;
	return BreakerAllow(&cfg, probe_in_ns);
}

/*
 * For infra's own callers: record the outcome of a call made under the
 * named breaker, if it is configured.
 */
void
InfraBreakerRecord(const char *name, bool failed)
{
	BreakerConfig cfg;

	if (ConfigCacheFetch(&breaker_cache, name, &cfg, true))
		BreakerRecord(&cfg, failed ? OUTCOME_FAILURE : OUTCOME_SUCCESS, false);
}

/*
 * Empty the window, shaped as the configuration says.  Spinlock held.
 */
static void
WindowReset(BreakerSlot *slot, const BreakerConfig *cfg, int64 now_ns)
{
	slot->time_window = cfg->time_window;
	slot->window_size = cfg->window_size;
	slot->calls = slot->failures = slot->slows = 0;
	slot->next = 0;
	slot->last_second = now_ns / NS_PER_SEC;
	memset(slot->failed_bits, 0, sizeof(slot->failed_bits));
	memset(slot->slow_bits, 0, sizeof(slot->slow_bits));
	memset(slot->buckets, 0, sizeof(slot->buckets));
}

/*
 * Time window: drop the seconds that fell out of it.  Spinlock held (or a
 * private copy).  At most window_size buckets are touched.
 */
static void
WindowAdvance(BreakerSlot *slot, int64 now_ns)
{
	int64		now_sec = now_ns / NS_PER_SEC;
	int64		s;

	if (!slot->time_window || now_sec <= slot->last_second)
		return;
	s = Max(slot->last_second + 1, now_sec - slot->window_size + 1);
	for (; s <= now_sec; s++)
	{
		BreakerBucket *b = &slot->buckets[s % slot->window_size];

		slot->calls -= b->calls;
		slot->failures -= b->failures;
		slot->slows -= b->slows;
		b->second = s;
		b->calls = b->failures = b->slows = 0;
	}
	/* A jump longer than the window: every bucket was cleared above. */
	slot->last_second = now_sec;
}

/*
 * Add one call to the window.  Spinlock held.
 */
static void
WindowRecord(BreakerSlot *slot, const BreakerConfig *cfg, int64 now_ns,
			 bool failed, bool slow)
{
	if (slot->time_window != cfg->time_window ||
		slot->window_size != cfg->window_size)
		WindowReset(slot, cfg, now_ns);

	if (slot->time_window)
	{
		BreakerBucket *b;

		WindowAdvance(slot, now_ns);
		b = &slot->buckets[slot->last_second % slot->window_size];
		b->calls++;
		b->failures += failed;
		b->slows += slow;
		slot->calls++;
	}
	else
	{
		int			pos = slot->next;
		uint8		bit = 1 << (pos % 8);

		if (slot->calls == slot->window_size)
		{
			slot->failures -= (slot->failed_bits[pos / 8] & bit) != 0;
			slot->slows -= (slot->slow_bits[pos / 8] & bit) != 0;
		}
		else
			slot->calls++;
		slot->failed_bits[pos / 8] = failed ? (slot->failed_bits[pos / 8] | bit) :
			(slot->failed_bits[pos / 8] & ~bit);
		slot->slow_bits[pos / 8] = slow ? (slot->slow_bits[pos / 8] | bit) :
			(slot->slow_bits[pos / 8] & ~bit);
		slot->next = (pos + 1) % slot->window_size;
	}
	slot->failures += failed;
	slot->slows += slow;
}

/*
 * Move to a new state.  Spinlock held: no allocation, the change is only
 * described for BreakerLogChange.
 */
static void
BreakerTransition(BreakerSlot *slot, BreakerStateKind to,
				  const BreakerConfig *cfg, int64 now_ns, const char *why,
				  BreakerChange *change)
{
	change->happened = true;
	slot->transitions_total++;
	change->from = slot->state;
	change->to = to;
	change->why = why;
	change->failure_rate = slot->calls > 0 ? 100.0 * slot->failures / slot->calls : 0;
	change->slow_rate = slot->calls > 0 ? 100.0 * slot->slows / slot->calls : 0;

	slot->state = to;
	slot->since_ns = now_ns;
	slot->generation++;
	slot->permits_in_use = 0;
	slot->half_open_calls = slot->half_open_failures = slot->half_open_slows = 0;
	if (to == BREAKER_OPEN)
		slot->open_until_ns = now_ns + cfg->open_ns;
	if (to == BREAKER_CLOSED || to == BREAKER_METRICS_ONLY)
		WindowReset(slot, cfg, now_ns);
}

/*
 * May a call go ahead?  Takes a half-open permit when that is the state;
 * *probe_in_ns tells a rejected caller when the next probe may happen.
 */
static bool
BreakerAllow(const BreakerConfig *cfg, int64 *probe_in_ns)
{
	BreakerSlot *slot = &breaker_shared->slots[cfg->slot];
	BreakerChange change = {0};
	int64		now_ns = InfraMonotonicNs();
	bool		allowed = false;
	bool		permit = false;
	uint32		generation = 0;

	*probe_in_ns = 0;
	SpinLockAcquire(&slot->mutex);
	if (slot->state == BREAKER_OPEN && now_ns >= slot->open_until_ns)
		BreakerTransition(slot, BREAKER_HALF_OPEN, cfg, now_ns,
						  "open duration elapsed", &change);
	if (slot->state == BREAKER_HALF_OPEN && cfg->half_open_max_wait_ns > 0 &&
		now_ns - slot->since_ns >= cfg->half_open_max_wait_ns)
		BreakerTransition(slot, BREAKER_OPEN, cfg, now_ns,
						  "half-open probes did not complete in time", &change);

	switch (slot->state)
	{
		case BREAKER_CLOSED:
		case BREAKER_DISABLED:
		case BREAKER_METRICS_ONLY:
			allowed = true;
			break;
		case BREAKER_HALF_OPEN:
			if (slot->permits_in_use + slot->half_open_calls < cfg->half_open_permitted &&
				nheld < BREAKER_MAX_HELD_PERMITS)
			{
				slot->permits_in_use++;
				permit = allowed = true;
				generation = slot->generation;
			}
			break;
		case BREAKER_OPEN:
			*probe_in_ns = slot->open_until_ns - now_ns;
			break;
		case BREAKER_FORCED_OPEN:
			break;
	}
	if (!allowed)
		slot->rejected_total++;
	SpinLockRelease(&slot->mutex);

	if (permit)
	{
		if (!exit_callback_registered)
		{
			before_shmem_exit(BreakerExitCallback, (Datum) 0);
			exit_callback_registered = true;
		}
		held[nheld].slot = cfg->slot;
		held[nheld].generation = generation;
		nheld++;
	}
	BreakerLogChange(cfg->name, &change);
	return allowed;
}

/*
 * Record the outcome of a call, using up a half-open permit this backend
 * holds for the breaker, if any.
 */
static void
BreakerRecord(const BreakerConfig *cfg, BreakerOutcome outcome, bool slow)
{
	BreakerSlot *slot = &breaker_shared->slots[cfg->slot];
	BreakerChange change = {0};
	int64		now_ns = InfraMonotonicNs();
	bool		has_permit = false;
	uint32		generation = 0;
	bool		failed = outcome == OUTCOME_FAILURE;
	int			i;

	for (i = nheld - 1; i >= 0; i--)
	{
		if (held[i].slot == cfg->slot)
		{
			has_permit = true;
			generation = held[i].generation;
			held[i] = held[--nheld];
			break;
		}
	}

	SpinLockAcquire(&slot->mutex);
	has_permit = has_permit && slot->state == BREAKER_HALF_OPEN &&
		generation == slot->generation;
	if (has_permit)
		slot->permits_in_use--;

	if (outcome != OUTCOME_IGNORED && slot->state != BREAKER_DISABLED)
	{
		slot->calls_total++;
		slot->failures_total += failed;
		slot->slow_total += slow;

		switch (slot->state)
		{
			case BREAKER_CLOSED:
			case BREAKER_METRICS_ONLY:
				WindowRecord(slot, cfg, now_ns, failed, slow);
				if (slot->state == BREAKER_CLOSED &&
					slot->calls >= cfg->minimum_calls)
				{
					if (100.0 * slot->failures / slot->calls >= cfg->failure_rate_threshold)
						BreakerTransition(slot, BREAKER_OPEN, cfg, now_ns,
										  "failure rate reached the threshold", &change);
					else if (100.0 * slot->slows / slot->calls >= cfg->slow_call_rate_threshold)
						BreakerTransition(slot, BREAKER_OPEN, cfg, now_ns,
										  "slow call rate reached the threshold", &change);
				}
				break;
			case BREAKER_HALF_OPEN:
				if (!has_permit)
					break;
				slot->half_open_calls++;
				slot->half_open_failures += failed;
				slot->half_open_slows += slow;
				if (slot->half_open_calls >= cfg->half_open_permitted)
				{
					float8		frate = 100.0 * slot->half_open_failures / slot->half_open_calls;
					float8		srate = 100.0 * slot->half_open_slows / slot->half_open_calls;

					if (frate >= cfg->failure_rate_threshold)
						BreakerTransition(slot, BREAKER_OPEN, cfg, now_ns,
										  "half-open probes failed", &change);
					else if (srate >= cfg->slow_call_rate_threshold)
						BreakerTransition(slot, BREAKER_OPEN, cfg, now_ns,
										  "half-open probes were slow", &change);
					else
						BreakerTransition(slot, BREAKER_CLOSED, cfg, now_ns,
										  "half-open probes succeeded", &change);
				}
				break;
			default:
				break;
		}
	}
	SpinLockRelease(&slot->mutex);
	BreakerLogChange(cfg->name, &change);
}

/*
 * After the spinlock: append a transition to the events ring and the log.
 */
static void
BreakerLogChange(const char *name, const BreakerChange *change)
{
	BreakerEvent *event;
	char		reason[128];

	if (!change->happened)
		return;
	if (change->to == BREAKER_OPEN && change->from == BREAKER_CLOSED)
		snprintf(reason, sizeof(reason), "%s (failure rate %.1f%%, slow call rate %.1f%%)",
				 change->why, change->failure_rate, change->slow_rate);
	else
		strlcpy(reason, change->why, sizeof(reason));

	LWLockAcquire(breaker_shared->lock, LW_EXCLUSIVE);
	event = &breaker_shared->events[breaker_shared->nevents % BREAKER_EVENTS];
	strlcpy(event->name, name, BREAKER_NAME_LEN);
	event->from = change->from;
	event->to = change->to;
	event->at = GetCurrentTimestamp();
	strlcpy(event->reason, reason, sizeof(event->reason));
	breaker_shared->nevents++;
	LWLockRelease(breaker_shared->lock);

	ereport(LOG,
			(errmsg("circuit breaker \"%s\" changed from %s to %s: %s",
					name, state_names[change->from], state_names[change->to],
					reason)));
}

/*
 * Give back every half-open permit this backend holds, without recording
 * an outcome: the calls they were for will never report one.
 */
static void
BreakerReleasePermits(void)
{
	int			i;

	for (i = 0; i < nheld; i++)
	{
		BreakerSlot *slot = &breaker_shared->slots[held[i].slot];

		SpinLockAcquire(&slot->mutex);
		if (slot->state == BREAKER_HALF_OPEN &&
			slot->generation == held[i].generation &&
			slot->permits_in_use > 0)
			slot->permits_in_use--;
		SpinLockRelease(&slot->mutex);
	}
	nheld = 0;
}

static void
BreakerXactCallback(XactEvent event, void *arg)
{
	if ((event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT) &&
		nheld > 0)
		BreakerReleasePermits();
}

static void
BreakerExitCallback(int code, Datum arg)
{
	if (nheld > 0)
		BreakerReleasePermits();
}

/*
 * An error's effect on the breaker: ignored, failure (every error when the
 * failure list is empty), or success (an error the breaker does not count).
 */
static BreakerOutcome
BreakerClassify(const BreakerConfig *cfg, int sqlerrcode)
{
	if (SqlstateListMatches(&cfg->ignored_states, sqlerrcode))
		return OUTCOME_IGNORED;
	if (cfg->failure_states.count == 0 ||
		SqlstateListMatches(&cfg->failure_states, sqlerrcode))
		return OUTCOME_FAILURE;
	return OUTCOME_SUCCESS;
}

/*
 * The breaker name argument, checked.
 */
static char *
BreakerName(FunctionCallInfo fcinfo)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("circuit breaker name must not be NULL"),
				 errhint("Breakers are rows of infra.circuit_breakers.")));
	return text_to_cstring(PG_GETARG_TEXT_PP(0));
}

/*
 * infra.breaker_allow(name): may the caller make its call now?
 */
Datum
infra_breaker_allow(PG_FUNCTION_ARGS)
{
	BreakerConfig cfg;
	int64		probe_in_ns;

	INFRA_CHECK_SCHEMA();

	BreakerLookup(BreakerName(fcinfo), &cfg);
	PG_RETURN_BOOL(BreakerAllow(&cfg, &probe_in_ns));
}

/*
 * infra.breaker_success(name, duration): the call succeeded; it was slow if
 * it took longer than the breaker's slow_call_duration.
 */
Datum
infra_breaker_success(PG_FUNCTION_ARGS)
{
	BreakerConfig cfg;
	bool		slow = false;

	INFRA_CHECK_SCHEMA();

	BreakerLookup(BreakerName(fcinfo), &cfg);
	if (!PG_ARGISNULL(1))
		slow = InfraIntervalToNs(PG_GETARG_INTERVAL_P(1), "duration", true) > cfg.slow_call_ns;
	BreakerRecord(&cfg, OUTCOME_SUCCESS, slow);
	PG_RETURN_VOID();
}

/*
 * infra.breaker_failure(name, sqlstate): the call failed, with that
 * SQLSTATE if given (which may make it ignored, or not a failure).
 */
Datum
infra_breaker_failure(PG_FUNCTION_ARGS)
{
	BreakerConfig cfg;
	BreakerOutcome outcome = OUTCOME_FAILURE;

	INFRA_CHECK_SCHEMA();

	BreakerLookup(BreakerName(fcinfo), &cfg);
	if (!PG_ARGISNULL(1))
		outcome = BreakerClassify(&cfg, SqlstateParse(text_to_cstring(PG_GETARG_TEXT_PP(1)),
													  "breaker_failure"));
	BreakerRecord(&cfg, outcome, false);
	PG_RETURN_VOID();
}

/*
 * infra.breaker_call(name, sql): run sql guarded by the breaker, record its
 * outcome, return the rows it processed; errors are recorded and re-raised.
 */
Datum
infra_breaker_call(PG_FUNCTION_ARGS)
{
	BreakerConfig *cfg = palloc(sizeof(BreakerConfig));
	MemoryContext caller_context = CurrentMemoryContext;
	char	   *sql;
	int64		probe_in_ns;
	int64		start_ns;
	uint64		processed = 0;

	INFRA_CHECK_SCHEMA();

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("sql must not be NULL"),
				 errhint("Give the statement to run under the breaker.")));
	sql = text_to_cstring(PG_GETARG_TEXT_PP(1));
	BreakerLookup(BreakerName(fcinfo), cfg);

	if (!BreakerAllow(cfg, &probe_in_ns))
	{
		if (probe_in_ns > 0)
			ereport(ERROR,
					(errcode(ERRCODE_INFRA_BREAKER_OPEN),
					 errmsg("circuit breaker \"%s\" is open", cfg->name),
					 errdetail("The next probe call is allowed in %.3f s.",
							   (double) probe_in_ns / NS_PER_SEC),
					 errhint("Retry later, or see infra.circuit_breaker_state.")));
		ereport(ERROR,
				(errcode(ERRCODE_INFRA_BREAKER_OPEN),
				 errmsg("circuit breaker \"%s\" rejected the call", cfg->name),
				 errdetail("The breaker is forced open, or half-open with every probe call taken."),
				 errhint("Retry later, or see infra.circuit_breaker_state.")));
	}

	start_ns = InfraMonotonicNs();
	PG_TRY();
	{
		SPI_connect();
		if (SPI_execute(sql, false, 0) < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("breaker_call could not run the statement")));
		processed = SPI_processed;
		SPI_finish();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(caller_context);
		edata = CopyErrorData();
		BreakerRecord(cfg, BreakerClassify(cfg, edata->sqlerrcode), false);
		PG_RE_THROW();
	}
	PG_END_TRY();

	BreakerRecord(cfg, OUTCOME_SUCCESS,
				  InfraMonotonicNs() - start_ns > cfg->slow_call_ns);
	PG_RETURN_INT64((int64) processed);
}

/*
 * infra.breaker_force(name, state): set a state by hand.
 */
Datum
infra_breaker_force(PG_FUNCTION_ARGS)
{
	BreakerConfig cfg_copy;
	BreakerConfig *cfg = &cfg_copy;
	BreakerSlot *slot;
	BreakerChange change = {0};
	char	   *state;
	int			to;

	INFRA_CHECK_SCHEMA();

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("state must not be NULL"),
				 errhint("Give one of closed, open, half_open, forced_open, disabled, metrics_only.")));
	state = text_to_cstring(PG_GETARG_TEXT_PP(1));
	for (to = 0; to < lengthof(state_names); to++)
		if (strcmp(state, state_names[to]) == 0)
			break;
	if (to == lengthof(state_names))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown circuit breaker state \"%s\"", state),
				 errhint("Give one of closed, open, half_open, forced_open, disabled, metrics_only.")));

	BreakerLookup(BreakerName(fcinfo), cfg);
	slot = &breaker_shared->slots[cfg->slot];
	SpinLockAcquire(&slot->mutex);
	BreakerTransition(slot, (BreakerStateKind) to, cfg, InfraMonotonicNs(),
					  "forced by breaker_force()", &change);
	SpinLockRelease(&slot->mutex);
	BreakerLogChange(cfg->name, &change);
	PG_RETURN_VOID();
}

/*
 * infra.breaker_reset(name): closed, with an empty window and counters.
 */
Datum
infra_breaker_reset(PG_FUNCTION_ARGS)
{
	BreakerConfig cfg_copy;
	BreakerConfig *cfg = &cfg_copy;
	BreakerSlot *slot;
	BreakerChange change = {0};

	INFRA_CHECK_SCHEMA();

	BreakerLookup(BreakerName(fcinfo), cfg);
	slot = &breaker_shared->slots[cfg->slot];
	SpinLockAcquire(&slot->mutex);
	BreakerTransition(slot, BREAKER_CLOSED, cfg, InfraMonotonicNs(),
					  "reset by breaker_reset()", &change);
	slot->calls_total = slot->failures_total = 0;
	slot->slow_total = slot->rejected_total = 0;
	SpinLockRelease(&slot->mutex);
	BreakerLogChange(cfg->name, &change);
	PG_RETURN_VOID();
}

/*
 * infra.circuit_breaker_states(): live state of every breaker used so far.
 */
Datum
infra_breaker_states(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BreakerSlot *copy = palloc(sizeof(BreakerSlot));
	int64		now_ns;
	TimestampTz now;
	int			nslots;
	int			i;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.circuit_breaker_state");
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(breaker_shared->lock, LW_SHARED);
	nslots = breaker_shared->nslots;
	LWLockRelease(breaker_shared->lock);
	now_ns = InfraMonotonicNs();
	now = GetCurrentTimestamp();

	for (i = 0; i < nslots; i++)
	{
		Datum		values[13];
		bool		nulls[13];

		SpinLockAcquire(&breaker_shared->slots[i].mutex);
		memcpy(copy, &breaker_shared->slots[i], sizeof(BreakerSlot));
		SpinLockRelease(&breaker_shared->slots[i].mutex);
		WindowAdvance(copy, now_ns);

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(copy->name);
		values[1] = CStringGetTextDatum(state_names[copy->state]);
		values[2] = TimestampTzGetDatum(InfraMonotonicToTimestamp(copy->since_ns, now_ns, now));
		values[3] = Int32GetDatum(copy->calls);
		values[4] = Int32GetDatum(copy->failures);
		values[5] = Int32GetDatum(copy->slows);
		values[6] = Float8GetDatum(copy->calls > 0 ? 100.0 * copy->failures / copy->calls : 0);
		nulls[6] = copy->calls == 0;
		values[7] = Float8GetDatum(copy->calls > 0 ? 100.0 * copy->slows / copy->calls : 0);
		nulls[7] = copy->calls == 0;
		values[8] = TimestampTzGetDatum(InfraMonotonicToTimestamp(copy->open_until_ns, now_ns, now));
		nulls[8] = copy->state != BREAKER_OPEN;
		values[9] = Int32GetDatum(copy->permits_in_use);
		values[10] = Int64GetDatum(copy->rejected_total);
		values[11] = Int64GetDatum(copy->calls_total);
		values[12] = ObjectIdGetDatum(copy->owner);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * infra.circuit_breaker_events(): recent transitions, oldest first.
 */
Datum
infra_breaker_events(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BreakerEvent *events = palloc(sizeof(BreakerEvent) * BREAKER_EVENTS);
	uint64		nevents;
	uint64		first;
	uint64		n;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.circuit_breaker_events");
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(breaker_shared->lock, LW_SHARED);
	nevents = breaker_shared->nevents;
	memcpy(events, breaker_shared->events, sizeof(BreakerEvent) * BREAKER_EVENTS);
	LWLockRelease(breaker_shared->lock);

	first = nevents > BREAKER_EVENTS ? nevents - BREAKER_EVENTS : 0;
	for (n = first; n < nevents; n++)
	{
		BreakerEvent *e = &events[n % BREAKER_EVENTS];
		Datum		values[6];
		bool		nulls[6] = {false, false, false, false, false, false};

		values[0] = Int64GetDatum((int64) n + 1);
		values[1] = CStringGetTextDatum(e->name);
		values[2] = CStringGetTextDatum(state_names[e->from]);
		values[3] = CStringGetTextDatum(state_names[e->to]);
		values[4] = TimestampTzGetDatum(e->at);
		values[5] = CStringGetTextDatum(e->reason);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * Built-in series: each breaker's state (one series per state, 1 for the
 * current one, as resilience4j exports it), its calls and transitions.
 */
static void
BreakerCollectMetrics(StringInfo out)
{
	static const struct
	{
		const char *name;
		const char *type;
		const char *help;
	}			families[] = {
		{"infra_breaker_state", "gauge", "1 for the circuit breaker's current state, 0 for the others."},
		{"infra_breaker_calls_total", "counter", "Calls recorded by the circuit breaker."},
		{"infra_breaker_failures_total", "counter", "Calls the circuit breaker recorded as failed."},
		{"infra_breaker_slow_calls_total", "counter", "Calls the circuit breaker recorded as slow."},
		{"infra_breaker_rejected_total", "counter", "Calls the circuit breaker did not let through."},
		{"infra_breaker_transitions_total", "counter", "State changes of the circuit breaker."},
	};
	BreakerSlot *copies;
	int			nslots;
	int			f;
	int			i;

	if (breaker_shared == NULL)
		return;
	LWLockAcquire(breaker_shared->lock, LW_SHARED);
	nslots = breaker_shared->nslots;
	LWLockRelease(breaker_shared->lock);
	copies = palloc(sizeof(BreakerSlot) * Max(nslots, 1));
	for (i = 0; i < nslots; i++)
	{
		SpinLockAcquire(&breaker_shared->slots[i].mutex);
		memcpy(&copies[i], &breaker_shared->slots[i], sizeof(BreakerSlot));
		SpinLockRelease(&breaker_shared->slots[i].mutex);
	}

	for (f = 0; f < lengthof(families); f++)
	{
		MetricsWriteFamily(out, families[f].name, families[f].type, families[f].help);
		for (i = 0; i < nslots; i++)
		{
			StringInfoData labels;

			initStringInfo(&labels);
			MetricsAppendLabel(&labels, "breaker", copies[i].name);
			MetricsAppendLabel(&labels, "owner", copies[i].owner_name);
			if (f == 0)
			{
				int			s;

				for (s = 0; s < lengthof(state_names); s++)
				{
					StringInfoData with_state;

					initStringInfo(&with_state);
					appendStringInfoString(&with_state, labels.data);
					MetricsAppendLabel(&with_state, "state", state_names[s]);
					MetricsWriteSample(out, families[f].name, with_state.data,
									   copies[i].state == s ? 1 : 0);
				}
				continue;
			}
			{
				/* In the order of families[] (the state family is above). */
				int64		values[] = {
					0, copies[i].calls_total, copies[i].failures_total, copies[i].slow_total,
					copies[i].rejected_total, copies[i].transitions_total
				};

				StaticAssertStmt(lengthof(values) == lengthof(families), "a value per family");
				MetricsWriteSample(out, families[f].name, labels.data, (double) values[f]);
			}
		}
	}
}
