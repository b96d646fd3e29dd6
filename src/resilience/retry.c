/*-------------------------------------------------------------------------
 *
 * retry.c
 *		Retry with backoff: delays, policies, and retried statements.
 *
 * Delays follow the AWS "exponential backoff and jitter" analysis.  With
 * e(n) = min(cap, base * 2^(n-1)) for attempt n:
 *
 *	 none			base (capped): a constant delay
 *	 exponential	e(n)
 *	 full_jitter	random in [0, e(n)]
 *	 equal_jitter	e(n)/2 + random in [0, e(n)/2]
 *	 decorrelated	d(1) = base, d(n) = random in [base, min(cap, 3 d(n-1))]
 *
 * The cap applies before the random draw, so jitter never exceeds it.
 * Decorrelated jitter depends on the previous delay; being stateless, the
 * function replays the draws of the earlier attempts.
 *
 * infra.retry() runs each attempt in a subtransaction of the caller's
 * transaction; infra.retry_transaction() is a procedure that runs each
 * attempt in a transaction of its own, which is what serialization failures
 * (40001) need: retrying them inside the failed transaction cannot succeed.
 * Only errors whose SQLSTATE matches the policy are retried; the last error
 * is raised with its own SQLSTATE and a context line saying how many
 * attempts were made.
 *
 * Called by SQL only (backoff_delay, retry, retry_transaction).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"

#include "core/clock.h"
#include "core/confcache.h"
#include "core/infra.h"
#include "core/sqlstate.h"
#include "core/version.h"
#include "resilience/retry.h"

PG_FUNCTION_INFO_V1(infra_backoff_delay);
PG_FUNCTION_INFO_V1(infra_retry);
PG_FUNCTION_INFO_V1(infra_retry_transaction);

static const char *const strategy_names[] = {
	"none", "exponential", "full_jitter", "equal_jitter", "decorrelated"
};

static void RetryPolicyRead(HeapTuple tuple, TupleDesc desc, void *entry);

static const Oid policy_types[] = {INT4OID, INTERVALOID, INTERVALOID, TEXTOID, TEXTARRAYOID};

static ConfigCache policy_cache = {
	.table = "retry_policies",
	.entrysize = sizeof(RetryPolicy),
	.query = "SELECT max_attempts, base, cap, strategy, sqlstates "
	"FROM infra.retry_policies WHERE name OPERATOR(pg_catalog.=) $1",
	.ncols = 5,
	.types = policy_types,
	.read = RetryPolicyRead,
	.what = "retry policy",
	.hint = "Policies are rows of infra.retry_policies.",
};

static BackoffStrategy BackoffStrategyFromName(const char *name);
static int64 BackoffDelayUs(int attempt, int64 base_us, int64 cap_us,
							BackoffStrategy strategy);
static void RetrySleep(const RetryPolicy *policy, int attempt);
static void RetryGiveUp(ErrorData *edata, const RetryPolicy *policy,
						int attempt, bool retryable);

/*
 * A strategy name, or a clear error.
 */
static BackoffStrategy
BackoffStrategyFromName(const char *name)
{
	int			i;

	for (i = 0; i < lengthof(strategy_names); i++)
		if (strcmp(name, strategy_names[i]) == 0)
			return (BackoffStrategy) i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown backoff strategy \"%s\"", name),
			 errhint("Use none, exponential, full_jitter, equal_jitter or decorrelated.")));
	return BACKOFF_NONE;		/* keep compiler quiet */
}

/* A random integer in [lo, hi]. */
static int64
RandomBetween(int64 lo, int64 hi)
{
	if (hi <= lo)
		return lo;
	return (int64) pg_prng_uint64_range(&pg_global_prng_state, (uint64) lo, (uint64) hi);
}

/*
 * The delay before retrying after attempt number "attempt" (1 = the first
 * attempt failed), in microseconds.
 */
static int64
BackoffDelayUs(int attempt, int64 base_us, int64 cap_us, BackoffStrategy strategy)
{
	int64		ceiling = base_us;
	int64		prev;
	int			i;

	/* e(n) = min(cap, base * 2^(n-1)), without overflowing. */
	for (i = 1; i < attempt && ceiling < cap_us; i++)
		ceiling = ceiling > cap_us / 2 ? cap_us : ceiling * 2;
	ceiling = Min(ceiling, cap_us);

	switch (strategy)
	{
		case BACKOFF_NONE:
			return Min(base_us, cap_us);
		case BACKOFF_EXPONENTIAL:
			return ceiling;
		case BACKOFF_FULL_JITTER:
			return RandomBetween(0, ceiling);
		case BACKOFF_EQUAL_JITTER:
			return ceiling / 2 + RandomBetween(0, ceiling - ceiling / 2);
		case BACKOFF_DECORRELATED:
			prev = Min(base_us, cap_us);
			for (i = 2; i <= attempt; i++)
			{
				int64		hi = prev > cap_us / 3 ? cap_us : prev * 3;

				prev = RandomBetween(Min(base_us, hi), hi);
			}
			return prev;
	}
	return 0;					/* keep compiler quiet */
}

/*
 * infra.backoff_delay(attempt, base, cap, strategy).
 */
Datum
infra_backoff_delay(PG_FUNCTION_ARGS)
{
	int32		attempt;
	int64		base_us;
	int64		cap_us;
	BackoffStrategy strategy;

	INFRA_CHECK_SCHEMA();

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("backoff_delay arguments must not be NULL"),
				 errhint("Omit an argument to use its default.")));
	attempt = PG_GETARG_INT32(0);
	if (attempt < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("attempt must be 1 or more, not %d", attempt),
				 errhint("Attempt 1 is the first one that failed.")));
	base_us = InfraIntervalToNs(PG_GETARG_INTERVAL_P(1), "base", true) / NS_PER_US;
	cap_us = InfraIntervalToNs(PG_GETARG_INTERVAL_P(2), "cap", true) / NS_PER_US;
	strategy = BackoffStrategyFromName(text_to_cstring(PG_GETARG_TEXT_PP(3)));

	PG_RETURN_INTERVAL_P(InfraNsToInterval(BackoffDelayUs(attempt, base_us, cap_us,
														  strategy) * NS_PER_US));
}

/*
 * A row of infra.retry_policies, for the configuration cache.
 */
static void
RetryPolicyRead(HeapTuple tuple, TupleDesc desc, void *entry)
{
	RetryPolicy *policy = (RetryPolicy *) entry;
	bool		isnull;

	policy->max_attempts = DatumGetInt32(SPI_getbinval(tuple, desc, 1, &isnull));
	policy->base_us = InfraIntervalToNs(DatumGetIntervalP(SPI_getbinval(tuple, desc, 2, &isnull)),
										"base", true) / NS_PER_US;
	policy->cap_us = InfraIntervalToNs(DatumGetIntervalP(SPI_getbinval(tuple, desc, 3, &isnull)),
									   "cap", true) / NS_PER_US;
	policy->strategy = BackoffStrategyFromName(TextDatumGetCString(SPI_getbinval(tuple, desc, 4, &isnull)));
	SqlstateListFromArray(DatumGetArrayTypeP(SPI_getbinval(tuple, desc, 5, &isnull)),
						  "sqlstates", &policy->retry_on);
}

/*
 * Sleep before the next attempt; cancel and statement_timeout interrupt.
 */
static void
RetrySleep(const RetryPolicy *policy, int attempt)
{
	int64		delay_us = BackoffDelayUs(attempt, policy->base_us, policy->cap_us,
										  policy->strategy);
	int64		deadline = InfraMonotonicNs() + delay_us * NS_PER_US;

	for (;;)
	{
		int64		left_ns = deadline - InfraMonotonicNs();

		CHECK_FOR_INTERRUPTS();
		if (left_ns <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 (long) ((left_ns + 999999) / 1000000), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * Raise the last error again, with its SQLSTATE, and a context line that
 * says what the retrying did.
 */
static void
RetryGiveUp(ErrorData *edata, const RetryPolicy *policy, int attempt,
			bool retryable)
{
	char	   *line;

	if (retryable)
		line = psprintf("infra.retry: gave up after %d attempts (policy \"%s\")",
						attempt, policy->name);
	else
		line = psprintf("infra.retry: attempt %d of %d failed with SQLSTATE %s, which policy \"%s\" does not retry",
						attempt, policy->max_attempts,
						unpack_sql_state(edata->sqlerrcode), policy->name);
	edata->context = edata->context ? psprintf("%s\n%s", edata->context, line) : line;
	ReThrowError(edata);
}

/*
 * Common argument checks of retry() and retry_transaction().
 */
static void
RetryArgs(FunctionCallInfo fcinfo, char **sql, RetryPolicy *policy)
{
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("sql must not be NULL"),
				 errhint("Give the statement to run with retries.")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("retry policy name must not be NULL"),
				 errhint("Policies are rows of infra.retry_policies.")));
	*sql = text_to_cstring(PG_GETARG_TEXT_PP(0));
	(void) ConfigCacheFetch(&policy_cache, text_to_cstring(PG_GETARG_TEXT_PP(1)), policy, false);
}

/*
 * infra.retry(sql, policy): each attempt in a subtransaction.
 */
Datum
infra_retry(PG_FUNCTION_ARGS)
{
	MemoryContext caller_context = CurrentMemoryContext;
	ResourceOwner caller_owner = CurrentResourceOwner;
	RetryPolicy policy;
	char	   *sql;
	int			attempt;

	INFRA_CHECK_SCHEMA();

	RetryArgs(fcinfo, &sql, &policy);

	for (attempt = 1;; attempt++)
	{
		ErrorData  *edata;
		bool		retryable;

		BeginInternalSubTransaction(NULL);
		MemoryContextSwitchTo(caller_context);
		PG_TRY();
		{
			uint64		processed;

			SPI_connect();
			if (SPI_execute(sql, false, 0) < 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("infra.retry could not run the statement")));
			processed = SPI_processed;
			SPI_finish();
			ReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(caller_context);
			CurrentResourceOwner = caller_owner;
			PG_RETURN_INT64((int64) processed);
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(caller_context);
			edata = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(caller_context);
			CurrentResourceOwner = caller_owner;
		}
		PG_END_TRY();

		retryable = SqlstateListMatches(&policy.retry_on, edata->sqlerrcode);
		if (!retryable || attempt >= policy.max_attempts)
			RetryGiveUp(edata, &policy, attempt, retryable);
		FreeErrorData(edata);
		RetrySleep(&policy, attempt);
	}
}

/*
 * CALL infra.retry_transaction(sql, policy): each attempt in a transaction
 * of its own, committed when it succeeds.
 */
Datum
infra_retry_transaction(PG_FUNCTION_ARGS)
{
	CallContext *call = (CallContext *) fcinfo->context;
	MemoryContext work;
	MemoryContext old;
	RetryPolicy policy;
	char	   *sql;
	int			attempt;

	INFRA_CHECK_SCHEMA();

	if (call == NULL || !IsA(call, CallContext) || call->atomic)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("infra.retry_transaction cannot run inside a transaction block"),
				 errdetail("Each attempt needs a transaction of its own."),
				 errhint("CALL it outside BEGIN ... COMMIT, or use infra.retry(), which retries in subtransactions.")));

	/* Outlives the transactions committed and rolled back below. */
	work = AllocSetContextCreate(PortalContext, "infra retry_transaction",
								 ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(work);
	RetryArgs(fcinfo, &sql, &policy);

	SPI_connect_ext(SPI_OPT_NONATOMIC);
	for (attempt = 1;; attempt++)
	{
		ErrorData  *edata;
		bool		retryable;
		volatile bool in_subxact = false;
		ResourceOwner owner = CurrentResourceOwner;

		PG_TRY();
		{
			/*
			 * The statement runs in a subtransaction, which unwinds whatever
			 * it leaves behind when it fails (snapshots, the SPI connections
			 * of a procedural language); the attempt's transaction is then
			 * rolled back whole.
			 */
			BeginInternalSubTransaction(NULL);
			in_subxact = true;
			MemoryContextSwitchTo(work);
			if (SPI_execute(sql, false, 0) < 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("infra.retry_transaction could not run the statement")));
			ReleaseCurrentSubTransaction();
			in_subxact = false;
			MemoryContextSwitchTo(work);
			CurrentResourceOwner = owner;
			SPI_commit();
			SPI_finish();
			MemoryContextSwitchTo(old);
			MemoryContextDelete(work);
			PG_RETURN_VOID();
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(work);
			edata = CopyErrorData();
			FlushErrorState();
			if (in_subxact)
			{
				RollbackAndReleaseCurrentSubTransaction();
				MemoryContextSwitchTo(work);
				CurrentResourceOwner = owner;
				SPI_rollback();
			}
			/* else SPI_commit() failed, and has already rolled back. */
			MemoryContextSwitchTo(work);
		}
		PG_END_TRY();

		retryable = SqlstateListMatches(&policy.retry_on, edata->sqlerrcode);
		if (!retryable || attempt >= policy.max_attempts)
		{
			SPI_finish();
			MemoryContextSwitchTo(old);
			RetryGiveUp(edata, &policy, attempt, retryable);
		}
		FreeErrorData(edata);
		RetrySleep(&policy, attempt);
	}
}
