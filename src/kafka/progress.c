/*-------------------------------------------------------------------------
 *
 * progress.c
 *		kafka_flush woken when the outbox moves on.
 *
 * kafka_flush waits until the worker has delivered what was committed
 * before the call.  It used to look again every 10 ms; now the workers
 * broadcast on one condition variable whenever a round has settled (rows
 * deleted, the slot confirmed further), and the waiters look again at
 * once: a flush returns within a round of its last delivery.  The
 * variable is shared by every database's worker (a waiter woken by
 * another database's round looks, finds its own still pending, and sleeps
 * again); a waiter looks at least every 100 ms whatever happens.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "pgstat.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"

#include "core/clock.h"
#include "core/shmem.h"
#include "kafka/progress.h"

/* The longest a waiter sleeps before it looks again. */
#define KAFKA_PROGRESS_MAX_SLEEP_MS 100

static ConditionVariable *kafka_progress = NULL;

static Size
KafkaProgressShmemSize(void)
{
	return sizeof(ConditionVariable);
}

static void
KafkaProgressShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	if (!found)
		ConditionVariableInit((ConditionVariable *) segment);
}

/*
 * Reserve the condition variable (from _PG_init, through InfraKafkaInit).
 */
void
KafkaProgressInit(void)
{
	InfraShmemSegment seg = {
		.name = "infra kafka progress",
		.size = KafkaProgressShmemSize,
		.init = KafkaProgressShmemInit,
		.pointer = (void **) &kafka_progress,
	};

	InfraShmemRegister(&seg);
}

/*
 * Sleep until a worker's round settles, the deadline passes or 100 ms go
 * by.  The first call of a wait only prepares it and returns (the caller
 * then looks again: a broadcast in between is not missed); end the wait
 * with KafkaProgressSleepEnd.
 */
void
KafkaProgressSleep(int64 deadline_ns)
{
	int64		left_ms = (deadline_ns - InfraMonotonicNs()) / 1000000 + 1;

	left_ms = Max(Min(left_ms, KAFKA_PROGRESS_MAX_SLEEP_MS), 1);
	if (kafka_progress != NULL)
	{
		(void) ConditionVariableTimedSleep(kafka_progress, left_ms, PG_WAIT_EXTENSION);
		return;
	}
	/* Not preloaded: no worker either; just do not spin. */
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 Min(left_ms, 10), PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

void
KafkaProgressSleepEnd(void)
{
	ConditionVariableCancelSleep();
}

/*
 * The worker: a round has settled; wake whoever waits in kafka_flush.
 */
void
KafkaProgressed(void)
{
	if (kafka_progress != NULL)
		ConditionVariableBroadcast(kafka_progress);
}
