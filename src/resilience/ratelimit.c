/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *		Cluster-wide rate limits: GCRA in integer arithmetic, in shared memory.
 *
 * Each key has one "theoretical arrival time" (TAT), the generic cell rate
 * algorithm's whole state.  A request of cost c at time now is allowed when
 *
 *		max(TAT, now) + c * T - burst * T <= now,		T = per / rate
 *
 * and then moves TAT to max(TAT, now) + c * T.  Times are kept on the
 * monotonic clock in units of 1/rate nanosecond, so T is exactly per (in ns)
 * and no fraction is ever rounded away, at any rate: 4 clients hammering a
 * key of 1000/s with burst 100 for 10 s get exactly 100 + 10000 requests.
 * 128-bit integers keep the products from overflowing.
 *
 * Keys live in a shared hash table of infra.rate_limit_max_keys entries,
 * split in RATE_LIMIT_PARTITIONS partitions.
 *
 * Keys have owners.  A key given to rate_limit(key, ...) is the calling
 * role's own: its identity is (role, key), so two roles using the same text
 * never share, drain or reset each other's budget, and no role can claim a
 * name before another.  Its owner can make it public
 * (infra.grant_use('rate_limit_key', key, 'public')): it moves to the
 * public scope, which every role's call of that key uses when it has no
 * key of its own by that name.  A named limiter's state is scoped by the
 * owner of its row in infra.rate_limiters, and confcache.c checks the caller
 * may use the row (owner, or USAGE granted).
 *
 * Locking: a partition's LWLock is taken shared to find a key and exclusive
 * only to insert one; the key's spinlock guards its state while it is read
 * and updated.  Unrelated keys thus never wait for each other, and a key's
 * own critical section is a few integer operations.  Eviction, needed only
 * when the table is full, takes every partition lock exclusive (in order)
 * and removes keys whose TAT is in the past (up to a tenth of the table):
 * such a key has nothing to remember, since a fresh entry would behave the
 * same.
 *
 * Called by SQL only (rate_limit, throttle, rate_limit_wait, the view).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "core/clock.h"
#include "core/confcache.h"
#include "core/infra.h"
#include "core/metrics.h"
#include "core/shmem.h"
#include "core/version.h"
#include "resilience/ratelimit.h"

PG_FUNCTION_INFO_V1(infra_rate_limit);
PG_FUNCTION_INFO_V1(infra_rate_limit_named);
PG_FUNCTION_INFO_V1(infra_throttle);
PG_FUNCTION_INFO_V1(infra_rate_limit_wait);
PG_FUNCTION_INFO_V1(infra_rate_limit_reset);
PG_FUNCTION_INFO_V1(infra_rate_limit_share);
PG_FUNCTION_INFO_V1(infra_rate_limits);

/* What a key is: given by the caller, or a named limiter's. */
#define RATE_LIMIT_KIND_KEY		'k'
#define RATE_LIMIT_KIND_LIMITER 'l'

typedef struct RateLimitKey
{
	Oid			scope;			/* the key's owner; InvalidOid: public */
	char		kind;
	char		name[RATE_LIMIT_KEY_LEN];
} RateLimitKey;

typedef struct RateLimitEntry
{
	RateLimitKey key;			/* hash key, must be first */
	Oid			owner;			/* who made a public key public */
	slock_t		mutex;			/* guards everything below */
	int32		rate;			/* last parameters used */
	int32		burst;
	int64		per_ns;
	int128		tat;			/* in ns x rate on the monotonic clock */
	int64		last_used_ns;
	int64		allowed_total;
	int64		denied_total;
} RateLimitEntry;

typedef struct RateLimitShared
{
	LWLockPadded *locks;		/* RATE_LIMIT_PARTITIONS of them */
	pg_atomic_uint64 evictions;

	/*
	 * Decisions of keys no longer in the table (evicted, reset), so that
	 * /metrics counts every decision since start: the live keys' counters
	 * are added at scrape.  Written under every partition lock, exclusive;
	 * the hot path touches no shared counter but its key's.
	 */
	pg_atomic_uint64 gone_allowed;
	pg_atomic_uint64 gone_denied;
} RateLimitShared;

/* Parameters of one call, checked. */
typedef struct RateLimitArgs
{
	RateLimitKey key;
	int32		rate;
	int64		per_ns;
	int32		burst;
	int32		cost;
} RateLimitArgs;

/* What a call decided. */
typedef struct RateLimitResult
{
	bool		allowed;
	int32		remaining;
	int64		retry_after_ns;
	int64		reset_after_ns;
} RateLimitResult;

int			infra_rate_limit_max_keys = 10000;

static void RateLimitCollectMetrics(StringInfo out);
static RateLimitShared *rate_limit_shared = NULL;
static HTAB *rate_limit_hash = NULL;

/* Backend-local cache of infra.rate_limiters, dropped on any change to it. */
typedef struct LimiterCacheEntry
{
	char		name[NAMEDATALEN];
	ConfigOwner own;
	int32		rate;
	int64		per_ns;
	int32		burst;
} LimiterCacheEntry;

static void LimiterRead(HeapTuple tuple, TupleDesc desc, void *entry);

static const Oid limiter_types[] = {INT4OID, INTERVALOID, INT4OID, REGROLEOID, ACLITEMARRAYOID};

static ConfigCache limiter_cache = {
	.table = "rate_limiters",
	.entrysize = sizeof(LimiterCacheEntry),
	.query = "SELECT rate, per, coalesce(burst, rate), owner, acl FROM infra.rate_limiters"
	" WHERE name OPERATOR(pg_catalog.=) $1",
	/* 1.1's rows: the extension owner's, usable by all, as the update makes them. */
	.previous_query = "SELECT l.rate, l.per, coalesce(l.burst, l.rate), e.extowner::pg_catalog.regrole,"
	" ARRAY[pg_catalog.makeaclitem(0, e.extowner, 'USAGE', false)]"
	" FROM infra.rate_limiters l, pg_catalog.pg_extension e"
	" WHERE e.extname OPERATOR(pg_catalog.=) 'infra' AND l.name OPERATOR(pg_catalog.=) $1",
	.ncols = 5,
	.types = limiter_types,
	.read = LimiterRead,
	.what = "rate limiter",
	.kind = "rate_limiter",
	.owned = true,
	.owner_offset = offsetof(LimiterCacheEntry, own),
	.hint = "Named limiters are rows of infra.rate_limiters; insert one or call infra.rate_limit(key, rate, per, burst).",
};

static Size RateLimitShmemSize(void);
static Size RateLimitHashSize(void);
static void RateLimitShmemInit(void *segment, bool found, LWLockPadded *locks);
static void RateLimitReadArgs(FunctionCallInfo fcinfo, RateLimitArgs *args);
static void RateLimitCheckArgs(RateLimitArgs *args);
static void RateLimitSetKey(RateLimitKey *key, char kind, Oid scope, text *name);
static void RateLimitApply(RateLimitArgs *args, RateLimitResult *result);
static RateLimitEntry *RateLimitEnter(const RateLimitKey *key, uint32 hashcode,
									  LWLock *lock);
static int64 RateLimitEvictIdle(void);
static void RateLimitDecide(RateLimitEntry *entry, const RateLimitArgs *args,
							int64 now_ns, RateLimitResult *result);
static void LimiterLookup(text *name, RateLimitArgs *args);
static void RateLimitLockAll(LWLockMode mode);
static void RateLimitUnlockAll(void);
static void RateLimitForget(RateLimitEntry *entry);

/*
 * Define infra.rate_limit_max_keys and reserve the table.
 */
void
InfraRateLimitInit(void)
{
	InfraShmemSegment seg = {
		.name = "infra rate limits",
		.size = RateLimitShmemSize,
		.extra = RateLimitHashSize,
		.nlocks = RATE_LIMIT_PARTITIONS,
		.init = RateLimitShmemInit,
		.pointer = (void **) &rate_limit_shared,
	};

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("infra.rate_limit_max_keys",
							"Most rate-limit keys kept in shared memory.",
							"Idle keys are evicted when room is needed.",
							&infra_rate_limit_max_keys,
							10000, 100, INT_MAX / 2,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	InfraShmemRegister(&seg);
	MetricsRegisterCollector(RateLimitCollectMetrics);
}

static Size
RateLimitShmemSize(void)
{
	return sizeof(RateLimitShared);
}

/*
 * The hash table is allocated by ShmemInitHash next to the segment.
 */
static Size
RateLimitHashSize(void)
{
	return hash_estimate_size(infra_rate_limit_max_keys, sizeof(RateLimitEntry));
}

/*
 * Create the shared hash table, all of its entries allocated up front so
 * that inserting never runs out of shared memory, only out of entries.
 */
static void
RateLimitShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	RateLimitShared *shared = (RateLimitShared *) segment;
	HASHCTL		info;

	if (!found)
	{
		shared->locks = locks;
		pg_atomic_init_u64(&shared->evictions, 0);
		pg_atomic_init_u64(&shared->gone_allowed, 0);
		pg_atomic_init_u64(&shared->gone_denied, 0);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(RateLimitKey);
	info.entrysize = sizeof(RateLimitEntry);
	info.num_partitions = RATE_LIMIT_PARTITIONS;
	rate_limit_hash = ShmemInitHash("infra rate limit keys",
									infra_rate_limit_max_keys,
									infra_rate_limit_max_keys,
									&info,
									HASH_ELEM | HASH_BLOBS | HASH_PARTITION |
									HASH_FIXED_SIZE);
}

/*
 * A key as stored: zero-padded, so that equal keys are equal bytes.
 */
static void
RateLimitSetKey(RateLimitKey *key, char kind, Oid scope, text *name)
{
	int			len = VARSIZE_ANY_EXHDR(name);

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate limit key must not be empty"),
				 errhint("Use a key naming what is limited, such as 'user:42'.")));
	if (len >= RATE_LIMIT_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("rate limit key is too long (%d bytes)", len),
				 errdetail("Keys are at most %d bytes.", RATE_LIMIT_KEY_LEN - 1),
				 errhint("Hash long keys, for example with md5().")));
	memset(key, 0, sizeof(*key));
	key->scope = scope;
	key->kind = kind;
	memcpy(key->name, VARDATA_ANY(name), len);
}

/*
 * Argument checks shared by every entry point.
 */
static void
RateLimitCheckArgs(RateLimitArgs *args)
{
	if (args->rate <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("rate must be positive, not %d", args->rate),
				 errhint("Give the number of requests allowed per period.")));
	if (args->burst <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("burst must be positive, not %d", args->burst),
				 errhint("Omit burst (NULL) to make it equal to rate.")));
	if (args->cost < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cost must not be negative, not %d", args->cost),
				 errhint("Use cost 0 to look at a limit without consuming it.")));
	if (args->cost > args->burst)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cost %d is larger than burst %d", args->cost, args->burst),
				 errdetail("A request costing more than the burst could never be allowed."),
				 errhint("Raise burst or split the request.")));
}

/*
 * Arguments (key, rate, per, burst, cost) of the keyed functions.
 */
static void
RateLimitReadArgs(FunctionCallInfo fcinfo, RateLimitArgs *args)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rate limit key must not be NULL"),
				 errhint("Use a key naming what is limited, such as 'user:42'.")));
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rate, per and cost must not be NULL"),
				 errhint("Only burst may be NULL, meaning equal to rate.")));
	RateLimitSetKey(&args->key, RATE_LIMIT_KIND_KEY, GetUserId(), PG_GETARG_TEXT_PP(0));
	args->rate = PG_GETARG_INT32(1);
	args->per_ns = InfraIntervalToNs(PG_GETARG_INTERVAL_P(2), "per", false);
	args->burst = PG_ARGISNULL(3) ? args->rate : PG_GETARG_INT32(3);
	args->cost = PG_GETARG_INT32(4);
	RateLimitCheckArgs(args);
}

/*
 * GCRA on one entry; the caller holds its spinlock.  Pure integer code: no
 * allocation, no error, as a spinlock requires.  A peek (cost 0) decides on
 * a copy: it changes nothing of the key, not even its last use.
 */
static void
RateLimitDecide(RateLimitEntry *entry, const RateLimitArgs *args,
				int64 now_ns, RateLimitResult *result)
{
	RateLimitEntry peeked;
	int128		now = (int128) now_ns * args->rate;
	int128		period = args->per_ns;	/* T, in units of 1/rate ns */
	int128		window = (int128) args->burst * period;
	int128		tat;
	int128		new_tat;
	int128		basis;

	if (args->cost == 0)
	{
		memcpy(&peeked, entry, sizeof(peeked));
		entry = &peeked;
	}

	/* A new rate changes the unit: carry the TAT over, rounding up. */
	if (entry->rate != args->rate && entry->rate != 0)
		entry->tat = (entry->tat * args->rate + entry->rate - 1) / entry->rate;

	tat = Max(entry->tat, now);
	new_tat = tat + (int128) args->cost * period;

	if (args->cost == 0)
		result->allowed = tat + period - window <= now;
	else
		result->allowed = new_tat - window <= now;

	if (args->cost > 0)
	{
		if (result->allowed)
		{
			entry->tat = new_tat;
			entry->allowed_total++;
		}
		else
			entry->denied_total++;
	}
	entry->rate = args->rate;
	entry->per_ns = args->per_ns;
	entry->burst = args->burst;
	entry->last_used_ns = now_ns;

	basis = (result->allowed && args->cost > 0) ? new_tat : tat;
	result->remaining = (int32) ((window - (basis - now)) / period);
	result->retry_after_ns = result->allowed ? 0 :
		(int64) ((new_tat - window - now + args->rate - 1) / args->rate);
	result->reset_after_ns = (int64) ((basis - now + args->rate - 1) / args->rate);
}

/*
 * Insert a key (the caller found none under its shared lock).  Returns the
 * entry with the partition lock held exclusive: the caller decides on it
 * under that lock, so an eviction cannot slip in between.
 */
static RateLimitEntry *
RateLimitEnter(const RateLimitKey *key, uint32 hashcode, LWLock *lock)
{
	RateLimitEntry *entry;
	bool		found;
	int			attempt;

	for (attempt = 0; attempt < 2; attempt++)
	{
		LWLockAcquire(lock, LW_EXCLUSIVE);
		entry = (RateLimitEntry *) hash_search_with_hash_value(rate_limit_hash,
															   key, hashcode,
															   HASH_ENTER_NULL,
															   &found);
		if (entry != NULL)
		{
			if (!found)
			{
				entry->owner = key->scope;
				SpinLockInit(&entry->mutex);
				entry->rate = 0;
				entry->burst = 0;
				entry->per_ns = 0;
				entry->tat = 0;
				entry->last_used_ns = 0;
				entry->allowed_total = 0;
				entry->denied_total = 0;
			}
			return entry;
		}
		LWLockRelease(lock);
		if (RateLimitEvictIdle() == 0)
			break;
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("rate limit table is full (%d keys in use)",
					infra_rate_limit_max_keys),
			 errdetail("Every key is still limiting; none can be evicted."),
			 errhint("Raise infra.rate_limit_max_keys and restart the server, or use fewer keys.")));
	return NULL;				/* keep compiler quiet */
}

/*
 * Every partition lock, in order (eviction, reset, the view).
 */
static void
RateLimitLockAll(LWLockMode mode)
{
	int			i;

	for (i = 0; i < RATE_LIMIT_PARTITIONS; i++)
		LWLockAcquire(&rate_limit_shared->locks[i].lock, mode);
}

static void
RateLimitUnlockAll(void)
{
	int			i;

	for (i = RATE_LIMIT_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&rate_limit_shared->locks[i].lock);
}

/*
 * Remove a key, keeping its decisions in the totals.  Every partition lock
 * held exclusive.
 */
static void
RateLimitForget(RateLimitEntry *entry)
{
	pg_atomic_fetch_add_u64(&rate_limit_shared->gone_allowed, entry->allowed_total);
	pg_atomic_fetch_add_u64(&rate_limit_shared->gone_denied, entry->denied_total);
	hash_search(rate_limit_hash, &entry->key, HASH_REMOVE, NULL);
}

/*
 * Remove keys whose state says nothing (their TAT lies in the past), up to
 * a tenth of the table: enough to amortise the pass, few enough that a
 * working set close to the table's size is not thrown out whole.  Returns
 * how many were removed.
 */
static int64
RateLimitEvictIdle(void)
{
	HASH_SEQ_STATUS scan;
	RateLimitEntry *entry;
	int64		now_ns = InfraMonotonicNs();
	int64		evicted = 0;
	int64		enough = Max(infra_rate_limit_max_keys / 10, 1);

	RateLimitLockAll(LW_EXCLUSIVE);

	hash_seq_init(&scan, rate_limit_hash);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		/* Exclusive partition locks: nobody else touches the entry. */
		if (entry->tat <= (int128) now_ns * entry->rate)
		{
			RateLimitForget(entry);
			if (++evicted >= enough)
			{
				hash_seq_term(&scan);
				break;
			}
		}
	}

	RateLimitUnlockAll();

	pg_atomic_fetch_add_u64(&rate_limit_shared->evictions, evicted);
	return evicted;
}

/*
 * The entry of key, under its partition lock (shared) when found; NULL,
 * with no lock held, when not.
 */
static RateLimitEntry *
RateLimitFind(const RateLimitKey *key, uint32 *hashcode, LWLock **lock)
{
	RateLimitEntry *entry;

	*hashcode = get_hash_value(rate_limit_hash, key);
	*lock = &rate_limit_shared->locks[*hashcode % RATE_LIMIT_PARTITIONS].lock;
	LWLockAcquire(*lock, LW_SHARED);
	entry = (RateLimitEntry *) hash_search_with_hash_value(rate_limit_hash, key, *hashcode,
														   HASH_FIND, NULL);
	if (entry == NULL)
		LWLockRelease(*lock);
	return entry;
}

/*
 * Find or create the key and decide on the request.  A role's own key that
 * does not exist is looked for in the public scope before it is made (the
 * call then decides on the public key: args->key says which).
 */
static void
RateLimitApply(RateLimitArgs *args, RateLimitResult *result)
{
	uint32		hashcode;
	LWLock	   *lock;
	RateLimitEntry *entry;

	InfraShmemRequire("infra.rate_limit()");

	entry = RateLimitFind(&args->key, &hashcode, &lock);
	if (entry == NULL && args->key.kind == RATE_LIMIT_KIND_KEY && OidIsValid(args->key.scope))
	{
		RateLimitKey own = args->key;

		args->key.scope = InvalidOid;
		entry = RateLimitFind(&args->key, &hashcode, &lock);
		if (entry == NULL)
		{
			args->key = own;
			hashcode = get_hash_value(rate_limit_hash, &args->key);
			lock = &rate_limit_shared->locks[hashcode % RATE_LIMIT_PARTITIONS].lock;
		}
	}
	if (entry == NULL && args->cost == 0)
	{
		/* A peek at an unknown key: a full bucket, and no key made. */
		RateLimitEntry fresh;

		memset(&fresh, 0, sizeof(fresh));
		RateLimitDecide(&fresh, args, InfraMonotonicNs(), result);
		return;
	}
	if (entry == NULL)
		entry = RateLimitEnter(&args->key, hashcode, lock);

	SpinLockAcquire(&entry->mutex);
	RateLimitDecide(entry, args, InfraMonotonicNs(), result);
	SpinLockRelease(&entry->mutex);

	LWLockRelease(lock);
}

/*
 * infra.rate_limit(key, rate, per, burst, cost): consume if allowed.
 */
Datum
infra_rate_limit(PG_FUNCTION_ARGS)
{
	RateLimitArgs args;
	RateLimitResult result;

	INFRA_CHECK_SCHEMA();

	RateLimitReadArgs(fcinfo, &args);
	RateLimitApply(&args, &result);
	PG_RETURN_BOOL(result.allowed);
}

/*
 * infra.throttle(key, rate, per, burst, cost): the decision with what an
 * HTTP layer needs for 429 responses and RateLimit headers.
 */
Datum
infra_throttle(PG_FUNCTION_ARGS)
{
	RateLimitArgs args;
	RateLimitResult result;
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	INFRA_CHECK_SCHEMA();

	RateLimitReadArgs(fcinfo, &args);
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	RateLimitApply(&args, &result);

	values[0] = BoolGetDatum(result.allowed);
	values[1] = Int32GetDatum(args.burst);
	values[2] = Int32GetDatum(result.remaining);
	values[3] = IntervalPGetDatum(InfraNsToInterval(result.retry_after_ns));
	values[4] = IntervalPGetDatum(InfraNsToInterval(result.reset_after_ns));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}

/*
 * infra.rate_limit_wait(key, rate, per, burst, cost, timeout): sleep until
 * allowed, or return false once the timeout cannot be met.  The sleep is a
 * latch wait, so cancel and statement_timeout interrupt it.
 */
Datum
infra_rate_limit_wait(PG_FUNCTION_ARGS)
{
	RateLimitArgs args;
	RateLimitResult result;
	RateLimitKey own;
	int64		timeout_ns;
	int64		deadline;

	INFRA_CHECK_SCHEMA();

	RateLimitReadArgs(fcinfo, &args);
	if (PG_ARGISNULL(5))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timeout must not be NULL"),
				 errhint("Give the longest time to wait, such as '5 seconds'.")));
	timeout_ns = InfraIntervalToNs(PG_GETARG_INTERVAL_P(5), "timeout", true);
	deadline = InfraMonotonicNs() + timeout_ns;
	own = args.key;

	for (;;)
	{
		int64		now_ns;
		long		sleep_ms;

		/* Each try looks for the caller's own key first (Apply may pick a public one). */
		args.key = own;
		RateLimitApply(&args, &result);
		if (result.allowed)
			PG_RETURN_BOOL(true);
		now_ns = InfraMonotonicNs();
		if (now_ns + result.retry_after_ns > deadline)
			PG_RETURN_BOOL(false);

		/* Round up to whole milliseconds: early wakeups would just retry. */
		sleep_ms = (long) ((result.retry_after_ns + 999999) / 1000000);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(sleep_ms, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * A row of infra.rate_limiters, for the configuration cache.
 */
static void
LimiterRead(HeapTuple tuple, TupleDesc desc, void *entry)
{
	LimiterCacheEntry *limiter = (LimiterCacheEntry *) entry;
	bool		isnull;

	limiter->rate = DatumGetInt32(SPI_getbinval(tuple, desc, 1, &isnull));
	limiter->per_ns = InfraIntervalToNs(DatumGetIntervalP(SPI_getbinval(tuple, desc, 2, &isnull)),
										"per", false);
	limiter->burst = DatumGetInt32(SPI_getbinval(tuple, desc, 3, &isnull));
}

/*
 * Parameters of the named limiter (cached until infra.rate_limiters
 * changes, so a named call costs a hash lookup).
 */
static void
LimiterLookup(text *name, RateLimitArgs *args)
{
	LimiterCacheEntry limiter;

	(void) ConfigCacheFetch(&limiter_cache, text_to_cstring(name), &limiter, false);
	args->key.scope = limiter.own.owner;
	args->rate = limiter.rate;
	args->per_ns = limiter.per_ns;
	args->burst = limiter.burst;
}

/*
 * infra.rate_limit(name, cost): a named limiter from infra.rate_limiters.
 */
Datum
infra_rate_limit_named(PG_FUNCTION_ARGS)
{
	RateLimitArgs args;
	RateLimitResult result;

	INFRA_CHECK_SCHEMA();

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("limiter name and cost must not be NULL"),
				 errhint("Named limiters are rows of infra.rate_limiters.")));
	RateLimitSetKey(&args.key, RATE_LIMIT_KIND_LIMITER, InvalidOid, PG_GETARG_TEXT_PP(0));
	LimiterLookup(PG_GETARG_TEXT_PP(0), &args);
	args.cost = PG_GETARG_INT32(1);
	RateLimitCheckArgs(&args);
	RateLimitApply(&args, &result);
	PG_RETURN_BOOL(result.allowed);
}

/*
 * For infra's own callers (the http worker): one call of the named limiter,
 * if it is configured (true when it is not).  *retry_in_ns: when to try
 * again after a refusal.  In a transaction: a name not cached yet is read.
 */
bool
InfraRateLimitAllow(const char *name, int64 *retry_in_ns)
{
	LimiterCacheEntry limiter;
	RateLimitArgs args;
	RateLimitResult result;

	*retry_in_ns = 0;
	if (!ConfigCacheFetch(&limiter_cache, name, &limiter, true))
		return true;
	RateLimitSetKey(&args.key, RATE_LIMIT_KIND_LIMITER, InvalidOid, cstring_to_text(name));
	args.key.scope = limiter.own.owner;
	args.rate = limiter.rate;
	args.per_ns = limiter.per_ns;
	args.burst = limiter.burst;
	args.cost = 1;
	RateLimitCheckArgs(&args);
	RateLimitApply(&args, &result);
	*retry_in_ns = result.retry_after_ns;
	return result.allowed;
}

/*
 * May the current user forget (or share) this key?  Superusers may do
 * anything; others what they own: their own keys, public keys they made
 * public, named limiters of rows they own.
 */
static bool
RateLimitMayManage(const RateLimitKey *key, Oid owner)
{
	Oid			me = GetUserId();

	if (superuser_arg(me))
		return true;
	return has_privs_of_role(me, OidIsValid(key->scope) ? key->scope : owner);
}

/*
 * infra.rate_limit_reset(key): forget key (own or public, and the named
 * limiter of that name) among the keys the caller may manage, or every one
 * of those when NULL.  Returns how many.  The candidates are found under
 * shared locks and checked with none held (the check reads the catalog),
 * then removed under exclusive locks.
 */
Datum
infra_rate_limit_reset(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS scan;
	RateLimitEntry *entry;
	RateLimitKey key;
	RateLimitKey *found;
	Oid		   *owners;
	int			nfound = 0;
	int64		removed = 0;
	int			i;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.rate_limit_reset()");
	if (!PG_ARGISNULL(0))
		RateLimitSetKey(&key, RATE_LIMIT_KIND_KEY, InvalidOid, PG_GETARG_TEXT_PP(0));

	found = palloc(sizeof(RateLimitKey) * infra_rate_limit_max_keys);
	owners = palloc(sizeof(Oid) * infra_rate_limit_max_keys);
	RateLimitLockAll(LW_SHARED);
	hash_seq_init(&scan, rate_limit_hash);
	while ((entry = hash_seq_search(&scan)) != NULL && nfound < infra_rate_limit_max_keys)
		if (PG_ARGISNULL(0) ||
			memcmp(entry->key.name, key.name, RATE_LIMIT_KEY_LEN) == 0)
		{
			owners[nfound] = entry->owner;
			found[nfound++] = entry->key;
		}
	RateLimitUnlockAll();

	for (i = 0; i < nfound; i++)
		if (!RateLimitMayManage(&found[i], owners[i]))
			found[i].kind = '\0';

	RateLimitLockAll(LW_EXCLUSIVE);
	for (i = 0; i < nfound; i++)
	{
		if (found[i].kind == '\0')
			continue;
		entry = hash_search(rate_limit_hash, &found[i], HASH_FIND, NULL);
		if (entry != NULL)
		{
			RateLimitForget(entry);
			removed++;
		}
	}
	RateLimitUnlockAll();

	PG_RETURN_INT64(removed);
}

/*
 * infra.rate_limit_share(key, public): move the caller's own key into the
 * public scope, where every role's calls of that key find it (public =
 * true), or the public key the caller made public back into its own scope
 * (false).  Its state comes along.  Returns whether a key moved.  Called by
 * infra.grant_use('rate_limit_key', key, 'public') and revoke_use.
 */
Datum
infra_rate_limit_share(PG_FUNCTION_ARGS)
{
	RateLimitKey from;
	RateLimitKey to;
	RateLimitEntry *entry;
	RateLimitEntry *moved;
	RateLimitEntry copy;
	bool		public;
	bool		found;
	Oid			me = GetUserId();

	INFRA_CHECK_SCHEMA();
	InfraShmemRequire("infra.grant_use()");
	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("rate limit key and public must not be NULL")));
	public = PG_GETARG_BOOL(1);
	RateLimitSetKey(&from, RATE_LIMIT_KIND_KEY, public ? me : InvalidOid, PG_GETARG_TEXT_PP(0));
	to = from;
	to.scope = public ? InvalidOid : me;

	RateLimitLockAll(LW_EXCLUSIVE);
	entry = hash_search(rate_limit_hash, &from, HASH_FIND, NULL);
	if (entry == NULL || (!public && entry->owner != me) ||
		hash_search(rate_limit_hash, &to, HASH_FIND, NULL) != NULL)
	{
		bool		taken = entry != NULL && (public || entry->owner == me);

		RateLimitUnlockAll();
		if (taken)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("rate limit key \"%s\" is already %s", from.name,
							public ? "public (another role made it so)" : "in use as your own"),
					 errhint("Reset one of them with infra.rate_limit_reset, or use another key.")));
		PG_RETURN_BOOL(false);
	}
	copy = *entry;
	hash_search(rate_limit_hash, &from, HASH_REMOVE, NULL);
	moved = hash_search(rate_limit_hash, &to, HASH_ENTER, &found);
	/* A slot was just freed: the insert cannot fail. */
	memcpy((char *) moved + sizeof(RateLimitKey), (char *) &copy + sizeof(RateLimitKey),
		   sizeof(RateLimitEntry) - sizeof(RateLimitKey));
	moved->owner = me;
	SpinLockInit(&moved->mutex);
	RateLimitUnlockAll();
	PG_RETURN_BOOL(true);
}

/*
 * infra.rate_limits(): every key with its state, for the view.
 */
Datum
infra_rate_limits(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS scan;
	RateLimitEntry *entry;
	int64		now_ns;
	TimestampTz now;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.rate_limits()");
	InitMaterializedSRF(fcinfo, 0);

	RateLimitLockAll(LW_SHARED);
	now_ns = InfraMonotonicNs();
	now = GetCurrentTimestamp();

	hash_seq_init(&scan, rate_limit_hash);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		RateLimitEntry copy;
		RateLimitArgs peek;
		RateLimitResult state;
		Datum		values[11];
		bool		nulls[11] = {false, false, false, false, false, false, false, false, false, false, false};

		SpinLockAcquire(&entry->mutex);
		copy = *entry;
		SpinLockRelease(&entry->mutex);
		if (copy.rate == 0)
			continue;			/* inserted, never decided yet */

		/* Look without consuming: cost 0 on a private copy. */
		peek.key = copy.key;
		peek.rate = copy.rate;
		peek.per_ns = copy.per_ns;
		peek.burst = copy.burst;
		peek.cost = 0;
		RateLimitDecide(&copy, &peek, now_ns, &state);

		values[0] = CStringGetTextDatum(copy.key.kind == RATE_LIMIT_KIND_LIMITER ? "limiter" : "key");
		values[1] = CStringGetTextDatum(copy.key.name);
		values[2] = Int32GetDatum(copy.rate);
		values[3] = IntervalPGetDatum(InfraNsToInterval(copy.per_ns));
		values[4] = Int32GetDatum(copy.burst);
		values[5] = Int32GetDatum(state.remaining);
		values[6] = Int64GetDatum(copy.allowed_total);
		values[7] = Int64GetDatum(copy.denied_total);
		values[8] = TimestampTzGetDatum(InfraMonotonicToTimestamp(copy.last_used_ns, now_ns, now));
		values[9] = ObjectIdGetDatum(OidIsValid(copy.key.scope) ? copy.key.scope : copy.owner);
		values[10] = BoolGetDatum(!OidIsValid(copy.key.scope));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}

	RateLimitUnlockAll();
	return (Datum) 0;
}

/*
 * Built-in series: decisions of all keys together (monotonic, whatever is
 * evicted: the live keys' counters plus those of keys gone), and per named
 * limiter (bounded by infra.rate_limiters; ad-hoc keys are not labels, they
 * could be unbounded).  Limiters of one name with different owners are
 * summed under that name.
 */
static void
RateLimitCollectMetrics(StringInfo out)
{
	static const char *const families[] = {
		"infra_rate_limit_allowed_total", "infra_rate_limit_denied_total"
	};
	static const char *const helps[] = {
		"Rate-limit decisions that allowed the call; limiter=\"\" counts every key.",
		"Rate-limit decisions that denied the call; limiter=\"\" counts every key."
	};
	StringInfoData *labels;
	int64	   *counts[2];
	char	  (*names)[RATE_LIMIT_KEY_LEN];
	int64		all[2];
	int			n = 0;
	int			i;
	int			kind;
	HASH_SEQ_STATUS scan;
	RateLimitEntry *entry;

	if (rate_limit_shared == NULL)
		return;
	labels = palloc(sizeof(StringInfoData) * infra_rate_limit_max_keys);
	counts[0] = palloc(sizeof(int64) * infra_rate_limit_max_keys);
	counts[1] = palloc(sizeof(int64) * infra_rate_limit_max_keys);
	names = palloc(RATE_LIMIT_KEY_LEN * (Size) infra_rate_limit_max_keys);
	RateLimitLockAll(LW_SHARED);
	all[0] = (int64) pg_atomic_read_u64(&rate_limit_shared->gone_allowed);
	all[1] = (int64) pg_atomic_read_u64(&rate_limit_shared->gone_denied);
	hash_seq_init(&scan, rate_limit_hash);
	while ((entry = hash_seq_search(&scan)) != NULL)
	{
		RateLimitEntry copy;

		SpinLockAcquire(&entry->mutex);
		copy = *entry;
		SpinLockRelease(&entry->mutex);
		all[0] += copy.allowed_total;
		all[1] += copy.denied_total;
		if (copy.key.kind != RATE_LIMIT_KIND_LIMITER)
			continue;
		for (i = 0; i < n; i++)
			if (strcmp(names[i], copy.key.name) == 0)
				break;
		if (i == n)
		{
			strlcpy(names[n], copy.key.name, RATE_LIMIT_KEY_LEN);
			counts[0][n] = counts[1][n] = 0;
			n++;
		}
		counts[0][i] += copy.allowed_total;
		counts[1][i] += copy.denied_total;
	}
	RateLimitUnlockAll();
	for (i = 0; i < n; i++)
	{
		initStringInfo(&labels[i]);
		MetricsAppendLabel(&labels[i], "limiter", names[i]);
	}

	for (kind = 0; kind < 2; kind++)
	{
		MetricsWriteFamily(out, families[kind], "counter", helps[kind]);
		MetricsWriteSample(out, families[kind], "limiter=\"\"", (double) all[kind]);
		for (i = 0; i < n; i++)
			MetricsWriteSample(out, families[kind], labels[i].data, (double) counts[kind][i]);
	}
	MetricsWriteOne(out, "infra_rate_limit_keys", "gauge",
					"Keys in the shared rate-limit table.", (double) hash_get_num_entries(rate_limit_hash));
	MetricsWriteOne(out, "infra_rate_limit_max_keys", "gauge",
					"Keys the shared rate-limit table holds (infra.rate_limit_max_keys); past it, idle keys are evicted.",
					(double) infra_rate_limit_max_keys);
	MetricsWriteOne(out, "infra_rate_limit_evictions_total", "counter",
					"Idle rate-limit keys evicted to make room.",
					(double) pg_atomic_read_u64(&rate_limit_shared->evictions));
}
