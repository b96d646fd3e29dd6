/*-------------------------------------------------------------------------
 *
 * producer.c
 *		The infra worker's Kafka delivery: outbox rows to Kafka, a round at
 *		a time.
 *
 * A round (KafkaWorkerServe) goes through named steps: read a batch of
 * outbox rows in id order (its own transaction, which also tells whether
 * registered topics wait to be created: then they are, before anything is
 * produced), produce them and wait for every delivery report, classify the
 * reports, settle (settle.c: delete the rows Kafka acknowledged, rewrite
 * partly delivered ones, record the error of the others, move dead letters;
 * a second transaction) and account (kafka_stats, backoff): a row leaves
 * the outbox only once it is in Kafka.  Each message carries the header
 * infra-msg-id (headers.c), the same for every attempt, so that consumers
 * can drop duplicates.
 *
 * Once the table is empty, rounds come from the WAL outbox (walread.c), in
 * commit order, and are pipelined: while one round waits for its
 * acknowledgements the next is read and produced; they are settled, and
 * the slot confirmed past them, in the order they were read.  A round that
 * fails stops the pipeline (the one after it, if produced, is settled right
 * after it), so retries from the table come before anything newer.
 *
 * The kafka/ domain, below kafka.c (kafka_send and the outbox it writes):
 *   producer.c     the service the worker runs: a round, step by step
 *   settle.c       a round's outcome written back to the outbox
 *   progress.c     kafka_flush woken when a round has settled
 *   txn.c          exactly once: each round a Kafka transaction with its progress
 *   client.c       the librdkafka producer, its callbacks and statistics
 *   config.c       the producer's settings, kept secret
 *   headers.c      a message's headers (infra-msg-id, infra-commit-time)
 *   topic_admin.c  registered topics created on the broker
 *   standbys.c     which standbys must have a commit before it goes
 * Only client.c, and the files passing its types, see librdkafka
 * (librdkafka.h); none of its threads calls PostgreSQL.
 *
 * It registers itself as a service of the infra worker (core/worker.h); the
 * outbox it reads and the counters it keeps belong to kafka.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/time.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "core/clock.h"
#include "core/spicheck.h"
#include "core/worker.h"
#include "kafka/client.h"
#include "kafka/config.h"
#include "kafka/headers.h"
#include "kafka/outbox.h"
#include "kafka/producer.h"
#include "kafka/progress.h"
#include "kafka/round.h"
#include "kafka/settle.h"
#include "kafka/standbys.h"
#include "kafka/topic_admin.h"
#include "kafka/txn.h"
#include "kafka/walread.h"
#include "resilience/breaker.h"

/* Most key and value bytes one round reads (at least one row is read). */
#define KAFKA_BATCH_BYTES (16 * 1024 * 1024)
/* Exactly once: the most messages of a table-outbox round (its progress record lists their ids). */
#define KAFKA_TXN_TABLE_ROUND 10000
/*
 * Exactly once, a backlog: after a WAL round of KAFKA_TXN_CARRY_MIN
 * messages the next goes on with its Kafka transaction (KafkaWalPipeline)
 * until it holds KAFKA_TXN_CARRY_MAX or is KAFKA_TXN_CARRY_MS old (txn.c):
 * a transaction costs milliseconds whatever its size.
 */
#define KAFKA_TXN_CARRY_MIN 1000
#define KAFKA_TXN_CARRY_MAX 100000

/* While a producer exists the idle worker polls it this often (statistics). */
#define KAFKA_IDLE_POLL_MS 5000
/* Waiting for standbys: this long within a round, then this long apart. */
#define KAFKA_STANDBY_WAIT_MS 200
#define KAFKA_STANDBY_RETRY_MS 20

/* Backoff after a round with failures: 1 s doubling to 30 s. */
#define KAFKA_RETRY_MIN_MS 1000
#define KAFKA_RETRY_MAX_MS 30000

/*
 * Memory of one round.  The messages array is librdkafka's opaque for the
 * delivery reports, so it must outlive the SPI calls of the round.
 */
static MemoryContext round_context = NULL;

/* This database's entry of the shared Kafka counters. */
static KafkaStats *my_stats = NULL;

/* The round's read, planned once (per extension install). */
static SPIPlanPtr batch_plan = NULL;

/* What the round's read of the outbox returns. */
static const Oid batch_types[12] = {INT8OID, BOOLOID, INT8ARRAYOID, TEXTARRAYOID,
	INT4ARRAYOID, BYTEAARRAYOID, BYTEAARRAYOID, JSONBARRAYOID, TIMESTAMPTZOID, INT4OID, INT4OID, XIDOID};
static int	failed_rounds = 0;

/*
 * Rounds from the WAL outbox, pipelined: one may wait for its
 * acknowledgements (wal_in_flight) while the next is read and produced.
 * Each lives in its own memory (librdkafka holds pointers into it until
 * its delivery reports are in).
 */
static KafkaRound wal_rounds[KAFKA_WAL_BATCHES];
/* The table outbox's round (its reports land in it until awaited). */
static KafkaRound table_round;
static MemoryContext wal_round_contexts[KAFKA_WAL_BATCHES];
static int	wal_in_flight = -1;

/*
 * A WAL round's Kafka transaction aborted: decoding starts again from the
 * slot once no round is in flight (the rounds' data lives in walread.c's
 * batches).
 */
static bool wal_read_again = false;
/* Set while a round is served: still set at the next, an ERROR cut it. */
static bool serving = false;

static long KafkaWorkerServe(void);
static void KafkaEndTransaction(void);
static bool KafkaCommitsDurable(XLogRecPtr async_commit_lsn);
static int64 KafkaPendingAfterRound(bool rows_left_out, int64 kept);
static void KafkaProducerShutdown(void);
static void KafkaRoundTopicDone(KafkaRound *round);
static bool KafkaRoundFailing(KafkaRound *round);

/* Run by the infra worker of each database, once infra is installed there. */
static const InfraWorkerService producer_service = {
	.name = "kafka producer",
	.kind = INFRA_WORKER_DELIVERY,
	.serve = KafkaWorkerServe,
	.shutdown = KafkaProducerShutdown,
};

/*
 * When the worker stops: the WAL outbox's slot, then the producer.
 */
static void
KafkaProducerShutdown(void)
{
	KafkaWalStop();
	KafkaClientShutdown();
}

/*
 * Define the producer's settings and become a service of the infra worker.
 */
void
InfraProducerInit(void)
{
	KafkaConfigInit();
	if (!process_shared_preload_libraries_in_progress)
		return;
	InfraWorkerRegisterService(&producer_service);
}

/*
 * May the round's messages go?  Their commits must be durable here (no
 * message goes out for a commit a crash could still take back): a
 * synchronous commit is flushed before others see it; an asynchronous one
 * (synchronous_commit = off) may not be yet, and async_commit_lsn (the
 * commit LSN of the rows' xids, what hint bits use) says how far to flush.
 * With infra.kafka_wait_for_standbys, the standbys it names must also have
 * flushed past them: past the local flush position, which every commit the
 * round sees precedes.  Waits up to KAFKA_STANDBY_WAIT_MS in the read
 * transaction; false when the standbys are still behind (kafka_stats'
 * waiting_for says which).
 */
static bool
KafkaCommitsDurable(XLogRecPtr async_commit_lsn)
{
	int64		deadline = InfraMonotonicNs() + (int64) KAFKA_STANDBY_WAIT_MS * 1000000;
	XLogRecPtr	lsn;
	bool		flushed;
	StringInfoData why;

	if (!XLogRecPtrIsInvalid(async_commit_lsn) && XLogNeedsFlush(async_commit_lsn))
		XLogFlush(async_commit_lsn);
	if (!StandbysWaitWanted())
	{
		/* The setting was turned off while waiting: no reason is left. */
		if (my_stats->waiting_for[0] != '\0')
			KafkaSetWaiting(NULL);
		return true;
	}
	lsn = GetFlushRecPtr(NULL);
	initStringInfo(&why);
	for (;;)
	{
		resetStringInfo(&why);
		flushed = StandbysFlushed(lsn, &why);
		KafkaSetWaiting(flushed ? NULL : why.data);
		if (flushed || InfraMonotonicNs() >= deadline)
			return flushed;
		/* Their feedback sets no latch of ours: look again shortly. */
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1, PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Deconstruct a one-dimensional array of a built-in type into the current
 * memory context (a copy: the array may live in SPI's memory).
 */
static void
KafkaUnpack(Datum array, Oid elemtype, Datum **elems, bool **nulls, int *n)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	bool	   *isnull;
	int			count;

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(DatumGetArrayTypePCopy(array), elemtype, typlen, typbyval, typalign,
					  elems, &isnull, &count);
	if (nulls)
		*nulls = isnull;
	if (n)
		*n = count;
}

static int
KafkaMessageCmp(const void *a, const void *b)
{
	const OutboxMessage *x = a;
	const OutboxMessage *y = b;

	if (x->order != y->order)
		return x->order > y->order ? 1 : -1;
	return (x->index > y->index) - (x->index < y->index);
}

/*
 * Messages left in the outbox after a round, for the pending gauge: what
 * the round read and kept when it read every row; otherwise counted, at
 * most once a second (-1: not now).  Inside the round's SPI connection.
 */
static int64
KafkaPendingAfterRound(bool rows_left_out, int64 kept)
{
	static int64 last_count_ns = 0;
	int64		now_ns = InfraMonotonicNs();
	static const Oid types[1] = {INT8OID};

	if (!rows_left_out)
		return kept;
	if (now_ns - last_count_ns < NS_PER_SEC)
		return -1;
	last_count_ns = now_ns;
	SpiCheckResult(SPI_execute("SELECT coalesce(pg_catalog.sum(messages), 0)::bigint"
							   " FROM infra.kafka_outbox_batches",
							   true, 1),
				   SPI_OK_SELECT, "infra.kafka_outbox", 1, types);
	return DatumGetInt64(SpiGetValue(0, 1, false, NULL, "infra.kafka_outbox"));
}

/*
 * Close the round's SPI connection and transaction, back in round memory.
 */
static void
KafkaEndTransaction(void)
{
	InfraWorkerSpiEnd();
	MemoryContextSwitchTo(round_context);
}

/*
 * The batch of the round: the oldest rows holding up to batch_size messages
 * and KAFKA_BATCH_BYTES (at least one row), plus the first row left out,
 * whose first id bounds what this round may produce.  Inside the read's
 * transaction and SPI connection.
 */
static int
KafkaQueryBatch(void)
{
	/* Exactly once, a progress record lists a table round's ids: keep it small. */
	int			limit = KafkaTxnEnabled() ? Min(infra_kafka_batch_size, KAFKA_TXN_TABLE_ROUND) :
		infra_kafka_batch_size;
	Datum		args[2] = {Int32GetDatum(limit), Int64GetDatum(KAFKA_BATCH_BYTES)};
	Oid			argtypes[2] = {INT4OID, INT8OID};

	SpiExecKept(&batch_plan,
			  "SELECT first_id, included,"
			  " CASE WHEN included THEN ids END, CASE WHEN included THEN topics END,"
			  " CASE WHEN included THEN partitions END, CASE WHEN included THEN keys END,"
			  " CASE WHEN included THEN vals END, CASE WHEN included THEN headers END,"
			  " created_at, attempts, timeline, row_xmin"
			  " FROM (SELECT b.*,"
			  "  (pg_catalog.sum(b.messages) OVER w OPERATOR(pg_catalog.-) b.messages)"
			  "   OPERATOR(pg_catalog.<) $1 AND"
			  "  ((pg_catalog.sum(pg_catalog.pg_column_size(b.keys) OPERATOR(pg_catalog.+)"
			  "    pg_catalog.pg_column_size(b.vals)) OVER w"
			  "   OPERATOR(pg_catalog.-) pg_catalog.pg_column_size(b.keys))"
			  "   OPERATOR(pg_catalog.-) pg_catalog.pg_column_size(b.vals))"
			  "   OPERATOR(pg_catalog.<) $2 AS included"
			  "  FROM (SELECT *, xmin AS row_xmin FROM infra.kafka_outbox_batches ORDER BY first_id"
			  "   LIMIT $1 OPERATOR(pg_catalog.+) 1) b"
			  "  WINDOW w AS (ORDER BY b.first_id)) r"
			  " ORDER BY first_id",
			  2, argtypes, args, NULL, true,
			  SPI_OK_SELECT, "infra.kafka_outbox_batches", 12, batch_types);
	return (int) SPI_processed;
}

/*
 * Unpack the batch's included rows into round memory (failed and deferred
 * messages are written back after SPI_finish); a row left out sets the cut.
 */
static void
KafkaUnpackRows(KafkaRound *round, int nrows)
{
	const char *what = "infra.kafka_outbox_batches";
	int			i;

	round->rows = MemoryContextAllocZero(round_context, sizeof(OutboxRow) * nrows);
	for (i = 0; i < nrows; i++)
	{
		OutboxRow  *row = &round->rows[i];
		MemoryContext old;
		Datum		tl;
		bool		tl_null;

		row->first_id = DatumGetInt64(SpiGetValue(i, 1, false, NULL, what));
		if (!DatumGetBool(SpiGetValue(i, 2, false, NULL, what)))
		{
			/* Rows come in first_id order: the rest are left out too. */
			round->cut = row->first_id;
			break;
		}
		old = MemoryContextSwitchTo(round_context);
		KafkaUnpack(SpiGetValue(i, 3, false, NULL, what), INT8OID, &row->ids, NULL, &row->nmsgs);
		row->moved = row->nmsgs > 0 && DatumGetInt64(row->ids[0]) >= KAFKA_WAL_FIRST_ID;
		KafkaUnpack(SpiGetValue(i, 4, false, NULL, what), TEXTOID, &row->topics, NULL, NULL);
		KafkaUnpack(SpiGetValue(i, 5, false, NULL, what), INT4OID, &row->partitions, &row->pnulls, NULL);
		KafkaUnpack(SpiGetValue(i, 6, false, NULL, what), BYTEAOID, &row->keys, &row->knulls, NULL);
		KafkaUnpack(SpiGetValue(i, 7, false, NULL, what), BYTEAOID, &row->vals, &row->vnulls, NULL);
		KafkaUnpack(SpiGetValue(i, 8, false, NULL, what), JSONBOID, &row->headers, &row->hnulls, NULL);
		row->created_at = DatumGetTimestampTz(SpiGetValue(i, 9, false, NULL, what));
		row->attempts = DatumGetInt32(SpiGetValue(i, 10, false, NULL, what));
		tl = SpiGetValue(i, 11, true, &tl_null, what);
		row->timeline = tl_null ? 0 : DatumGetInt32(tl);
		round->async_commit_lsn = Max(round->async_commit_lsn,
									  TransactionIdGetCommitLSN(DatumGetTransactionId(SpiGetValue(i, 12, false, NULL, what))));
		row->keep = palloc(sizeof(bool) * row->nmsgs);
		MemoryContextSwitchTo(old);
		round->total += row->nmsgs;
		round->nincluded++;
	}
}

/*
 * The oldest created_at among the batch's rows (the head of the outbox), for
 * infra_kafka_oldest_pending_age_seconds: a scrape shows its age, which
 * keeps growing while nothing is delivered.  0 when the outbox is empty.
 */
static void
KafkaNoteOldest(int nrows)
{
	TimestampTz oldest = 0;
	int			i;

	for (i = 0; i < nrows; i++)
	{
		TimestampTz created = DatumGetTimestampTz(SpiGetValue(i, 9, false, NULL, "infra.kafka_outbox_batches"));

		if (oldest == 0 || created < oldest)
			oldest = created;
	}
	SpinLockAcquire(&my_stats->mutex);
	my_stats->oldest_pending_at = oldest;
	SpinLockRelease(&my_stats->mutex);
}

/*
 * Step 1, read: the round's rows, in a transaction of their own.  False,
 * with how long to sleep, when there is nothing to produce now: the outbox
 * is empty, or the "kafka" circuit breaker (when configured) is open.
 * While it is open the outbox waits (nothing is lost); a round with work is
 * one call of the breaker, its outcome recorded when settling.
 */
static bool
KafkaReadRound(KafkaRound *round, long *sleep_ms)
{
	int			nrows;
	int64		probe_in_ns;

	InfraWorkerSpiBegin();
	if (my_stats->database[0] == '\0')
	{
		char	   *name = get_database_name(MyDatabaseId);

		SpinLockAcquire(&my_stats->mutex);
		strlcpy(my_stats->database, name, NAMEDATALEN);
		SpinLockRelease(&my_stats->mutex);
	}
	round->topics_pending = KafkaAnyPendingTopic();
	/* Exactly once: the ids Kafka has are this install's sequence's (txn.c). */
	KafkaTxnIdSpace(get_relname_relid("kafka_outbox_id_seq", get_namespace_oid("infra", false)));
	nrows = KafkaQueryBatch();
	KafkaNoteOldest(nrows);
	if (nrows == 0)
	{
		round->table_empty = true;
		KafkaEndTransaction();
		/* No row holds a message Kafka has (exactly once), once the deletes are flushed. */
		KafkaTxnForget(NULL, -1, GetXLogInsertRecPtr());
		SpinLockAcquire(&my_stats->mutex);
		my_stats->pending = 0;
		SpinLockRelease(&my_stats->mutex);
		/* What the last busy rounds left unreported goes before the sleep. */
		(void) pgstat_report_stat(true);
		/* Idle: come back to serve librdkafka's statistics and errors. */
		*sleep_ms = KAFKA_IDLE_POLL_MS;
		return false;
	}
	if (!InfraBreakerAllow("kafka", &probe_in_ns))
	{
		KafkaEndTransaction();
		KafkaSetState("breaker open");
		*sleep_ms = probe_in_ns > 0 ? Min(probe_in_ns / 1000000 + 1, KAFKA_RETRY_MAX_MS) : 1000;
		return false;
	}
	KafkaUnpackRows(round, nrows);
	if (!KafkaCommitsDurable(round->async_commit_lsn))
	{
		/* The rows unpacked are dropped with the round's memory. */
		KafkaEndTransaction();
		*sleep_ms = KAFKA_STANDBY_RETRY_MS;
		return false;
	}
	KafkaEndTransaction();
	return true;
}

/*
 * Step 1 from the WAL outbox (walread.c), when the table is empty: the
 * next committed transactions, in commit order.  The breaker and the
 * standbys as for the table; held back, they stay read for the next round.
 */
static bool
KafkaWalReadRound(KafkaRound *round, int batch, long *sleep_ms)
{
	int64		probe_in_ns;
	bool		durable;

	if (KafkaWalRead(round, batch) == 0)
		return false;
	InfraWorkerSpiBegin();
	/* Registered topics are created before anything goes (a round from the table first). */
	if (KafkaAnyPendingTopic())
	{
		KafkaEndTransaction();
		*sleep_ms = 0;
		return false;
	}
	if (!InfraBreakerAllow("kafka", &probe_in_ns))
	{
		KafkaEndTransaction();
		KafkaSetState("breaker open");
		*sleep_ms = probe_in_ns > 0 ? Min(probe_in_ns / 1000000 + 1, KAFKA_RETRY_MAX_MS) : 1000;
		return false;
	}
	durable = KafkaCommitsDurable(InvalidXLogRecPtr);
	KafkaEndTransaction();
	if (!durable)
	{
		*sleep_ms = KAFKA_STANDBY_RETRY_MS;
		return false;
	}
	return true;
}

/*
 * The ids of the messages a table round produces, with their timelines:
 * its progress record names them, they are settled once it commits and
 * forgotten once its rows' delete is durable.  Made once, in its memory.
 */
static KafkaTxnId *
KafkaRoundIds(KafkaRound *round)
{
	int			i;

	if (round->ids != NULL)
		return round->ids;
	round->ids = palloc0(sizeof(KafkaTxnId) * Max(round->n, 1));
	for (i = 0; i < round->n; i++)
	{
		round->ids[i].id = round->messages[i].id;
		round->ids[i].tli = round->rows[round->messages[i].row].timeline;
	}
	return round->ids;
}

/*
 * The round's messages in id order.  Rows of concurrent transactions
 * interleave their ids; only ids below the first left-out row's first id
 * go now.  A same-key message with a smaller id committed earlier (the
 * key's lock serialises its senders), so its row is visible and has a
 * smaller first id: it is in this round too, and goes first.  Per key,
 * Kafka therefore sees commit order.
 */
static void
KafkaOrderMessages(KafkaRound *round)
{
	int			i;

	round->messages = palloc0(sizeof(OutboxMessage) * Max(round->total, 1));
	round->skipped = palloc0(sizeof(KafkaTxnId) * Max(round->total, 1));
	for (i = 0; i < round->nincluded; i++)
	{
		OutboxRow  *row = &round->rows[i];
		bool		moved = row->moved;
		int			j;

		for (j = 0; j < row->nmsgs; j++)
		{
			int64		id = DatumGetInt64(row->ids[j]);
			OutboxMessage *m;

			row->keep[j] = true;
			if ((moved ? row->first_id : id) >= round->cut)
				continue;
			/* Dead-lettered by a round aborted since (exactly once). */
			if (round->wal && KafkaTxnIsDead(id))
			{
				row->keep[j] = false;
				continue;
			}
			/* In Kafka by a committed round whose settle did not (exactly once). */
			if (!round->wal && KafkaTxnIsSettled(id, row->timeline))
			{
				row->keep[j] = false;
				round->skipped[round->nskipped].id = id;
				round->skipped[round->nskipped++].tli = row->timeline;
				continue;
			}
			m = &round->messages[round->n++];
			m->id = id;
			m->order = moved ? row->first_id : id;
			m->row = i;
			m->index = j;
		}
	}
	/* The WAL outbox comes in commit order already. */
	if (!round->wal)
		qsort(round->messages, round->n, sizeof(OutboxMessage), KafkaMessageCmp);
}

/*
 * Hand one message to librdkafka (which copies the payload), waiting while
 * its queue is full; a local refusal (too large, say) is reported like a
 * delivery failure.
 */
static void
KafkaProduceOne(KafkaRound *round, OutboxMessage *m)
{
	OutboxRow  *row = &round->rows[m->row];
	int			j = m->index;
	text	   *topic_text = DatumGetTextPP(row->topics[j]);
	int32		partition = row->pnulls[j] ? RD_KAFKA_PARTITION_UA : DatumGetInt32(row->partitions[j]);
	bytea	   *key = row->knulls[j] ? NULL : DatumGetByteaPP(row->keys[j]);
	bytea	   *value = row->vnulls[j] ? NULL : DatumGetByteaPP(row->vals[j]);
	Jsonb	   *user_headers = row->hnulls[j] ? NULL : DatumGetJsonbP(row->headers[j]);
	/* librdkafka owns the headers only once producev succeeds. */
	rd_kafka_headers_t *headers = KafkaHeaders(m->id, row->timeline, row->created_at, user_headers);
	rd_kafka_resp_err_t err;

	/* Messages come in runs of one topic: look its handle up once a run. */
	if (round->topic_handle == NULL ||
		VARSIZE_ANY_EXHDR(topic_text) != round->topic_len ||
		memcmp(VARDATA_ANY(topic_text), round->topic_name, round->topic_len) != 0)
	{
		KafkaRoundTopicDone(round);
		round->topic_name = text_to_cstring(topic_text);
		round->topic_len = VARSIZE_ANY_EXHDR(topic_text);
		round->topic_handle = KafkaTopic(round->topic_name, &round->topic_temporary);
	}

	for (;;)
	{
		err = rd_kafka_producev(KafkaProducer(),
								RD_KAFKA_V_RKT(round->topic_handle),
								RD_KAFKA_V_PARTITION(partition),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_KEY(key ? VARDATA_ANY(key) : NULL,
											   key ? VARSIZE_ANY_EXHDR(key) : 0),
								RD_KAFKA_V_VALUE(value ? VARDATA_ANY(value) : NULL,
												 value ? VARSIZE_ANY_EXHDR(value) : 0),
								RD_KAFKA_V_HEADERS(headers),
								RD_KAFKA_V_TIMESTAMP(round->timestamp_ms),
								RD_KAFKA_V_OPAQUE(&m->report),
								RD_KAFKA_V_END);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			break;
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
		{
			rd_kafka_headers_destroy(headers);
			m->report.reported = true;
			m->report.err = err;
			break;
		}
		KafkaPoll(10);
	}
}

/*
 * Done with the round's current topic handle (destroyed if it was a
 * temporary one).
 */
static void
KafkaRoundTopicDone(KafkaRound *round)
{
	if (round->topic_handle != NULL && round->topic_temporary)
		rd_kafka_topic_destroy(round->topic_handle);
	round->topic_handle = NULL;
	round->topic_temporary = false;
	if (round->topic_name != NULL)
		pfree(round->topic_name);
	round->topic_name = NULL;
	round->topic_len = 0;
}

/*
 * Step 2, produce: every message of the round, then wait for every
 * delivery report, staying responsive to shutdown and reload.
 */
static void
KafkaProduceMessages(KafkaRound *round)
{
	struct timeval tv;
	int			i;

	round->start_ns = InfraMonotonicNs();
	/*
	 * One CreateTime for the round's messages, when it begins (librdkafka
	 * would read the wall clock for each: 4% of the worker's thread in a
	 * profile at 700k msg/s).
	 */
	gettimeofday(&tv, NULL);
	round->timestamp_ms = (int64) tv.tv_sec * 1000 + tv.tv_usec / 1000;
	/* Exactly once: a Kafka transaction (txn.c), or the round before it's. */
	if (round->carried_in)
		round->in_txn = true;
	else
		round->producer = 0;
	if (!round->carried_in && KafkaTxnEnabled() && round->n > 0)
	{
		round->in_txn = true;
		round->producer = KafkaTxnBegin();
		if (round->producer < 0)
		{
			round->producer = 0;
			round->txn_failed = true;
			return;
		}
	}
	KafkaUseProducer(round->producer);
	round->generation = KafkaProducerGeneration();
	for (i = 0; i < round->n; i++)
	{
		KafkaProduceOne(round, &round->messages[i]);
		round->sent = i + 1;
	}
	KafkaRoundTopicDone(round);
	/*
	 * With its messages, the round's progress record (txn.c): how far the
	 * WAL outbox is, and a table round's message ids.
	 */
	if (round->in_txn &&
		!(round->wal ?
		  KafkaTxnProgress(round->producer, KafkaWalUpto(round->wal_batch), NULL, 0,
						   round->first_error, sizeof(round->first_error)) :
		  KafkaTxnProgress(round->producer, InvalidXLogRecPtr, KafkaRoundIds(round), round->n,
						   round->first_error, sizeof(round->first_error))))
		round->must_abort = true;

	SpinLockAcquire(&my_stats->mutex);
	my_stats->in_flight = round->n;
	SpinLockRelease(&my_stats->mutex);
}

/*
 * Wait for every delivery report of the round, staying responsive to
 * shutdown and reload.  Messages of a producer closed meanwhile (exactly
 * once, another producer failed for good) count as failed: their
 * transaction is lost.
 */
static void
KafkaAwaitReports(KafkaRound *round)
{
	int			i;

	KafkaUseProducer(round->producer);
	for (;;)
	{
		int			outstanding = 0;
		bool		closed = KafkaProducerCount() == 0 || KafkaProducerGeneration() != round->generation;

		/* Only what librdkafka was given will be reported. */
		for (i = 0; i < round->sent; i++)
		{
			KafkaReport *r = &round->messages[i].report;

			if (!r->reported && closed)
			{
				r->reported = true;
				r->err = RD_KAFKA_RESP_ERR__DESTROY;
			}
			outstanding += !r->reported;
		}
		if (outstanding == 0)
			break;
		KafkaPoll(50);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
	}
}

/*
 * Exactly once: end the round's Kafka transaction, committing it with its
 * progress if no message was refused so far, else aborting it.  Once it
 * failed, every message not refused for good is reported failed (retried:
 * Kafka's copy was aborted), whatever its own report said.
 */
static void
KafkaRoundEndTxn(KafkaRound *round)
{
	KafkaTxnOutcome outcome = KAFKA_TXN_FATAL;
	char		why[KAFKA_ERROR_LEN] = "the transaction could not begin";
	int			i;

	if (round->txn_gone)
	{
		/* Aborted with the round before it: its messages were purged. */
		strlcpy(why, "the transaction before it was aborted", sizeof(why));
		outcome = KAFKA_TXN_ABORTED;
		KafkaAwaitReports(round);
	}
	else if (!round->txn_failed)
	{
		if (round->must_abort)
			strlcpy(why, round->first_error[0] ? round->first_error :
					"the transaction before it was aborted", sizeof(why));
		outcome = KafkaTxnEnd(round->producer, !KafkaRoundFailing(round) && !round->must_abort,
							  round->wal ? KafkaWalUpto(round->wal_batch) : InvalidXLogRecPtr,
							  why, sizeof(why));
		/* Every message is reported now (an abort purges the rest). */
		KafkaAwaitReports(round);
	}
	if (outcome == KAFKA_TXN_COMMITTED)
	{
		/* Until the settle commits, the outbox holds what Kafka has. */
		if (!round->wal)
			KafkaTxnSettled(KafkaRoundIds(round), round->n);
		return;
	}
	round->txn_failed = true;
	if (round->first_error[0] == '\0')
		snprintf(round->first_error, sizeof(round->first_error), "Kafka transaction aborted (%s)", why);
	for (i = 0; i < round->n; i++)
	{
		KafkaReport *r = &round->messages[i].report;

		if (r->reported && r->err != RD_KAFKA_RESP_ERR_NO_ERROR && KafkaErrorIsPermanent(r->err))
			continue;
		r->reported = true;
		r->err = RD_KAFKA_RESP_ERR__PURGE_QUEUE;
	}
	if (outcome == KAFKA_TXN_FATAL)
		KafkaClientShutdown();
}

/*
 * Exactly once, a round whose transaction goes on with the next round
 * (produced into it already): every report in.  If one failed (or its
 * producer was closed), the transaction ends here after all: aborted,
 * with the next round's messages.
 */
static void
KafkaRoundCarry(KafkaRound *round)
{
	KafkaAwaitReports(round);
	if (KafkaRoundFailing(round))
	{
		round->carried_on = false;
		KafkaRoundEndTxn(round);
	}
}

/*
 * Wait until the round is acknowledged: its transaction ended (or going
 * on, every report in), or every delivery report in.
 */
static void
KafkaRoundWait(KafkaRound *round)
{
	if (round->in_txn && round->carried_on)
		KafkaRoundCarry(round);
	else if (round->in_txn)
		KafkaRoundEndTxn(round);
	else
		KafkaAwaitReports(round);
}

/*
 * Exactly once: may the next round go on with this WAL round's Kafka
 * transaction (KAFKA_TXN_CARRY_MIN)?  Not once anything of it failed.
 */
static bool
KafkaRoundMayCarry(KafkaRound *round)
{
	return round->in_txn && round->wal && !round->txn_failed && !round->must_abort &&
		round->n >= KAFKA_TXN_CARRY_MIN && round->carried_ok + round->n < KAFKA_TXN_CARRY_MAX &&
		!KafkaRoundFailing(round) && KafkaTxnYoung(round->producer, round->generation);
}

static void
KafkaProduceRound(KafkaRound *round)
{
	KafkaProduceMessages(round);
	KafkaRoundWait(round);
}

/*
 * Has a message of the round failed so far (a report in with an error)?
 */
static bool
KafkaRoundFailing(KafkaRound *round)
{
	int			i;

	for (i = 0; i < round->n; i++)
		if (round->messages[i].report.reported &&
			round->messages[i].report.err != RD_KAFKA_RESP_ERR_NO_ERROR)
			return true;
	return false;
}

/*
 * Step 3, classify: delivered messages leave their row, permanent errors
 * become dead letters, the rest stay (their row failed) and keep their
 * place.
 */
static void
KafkaClassifyReports(KafkaRound *round)
{
	int			i;

	for (i = 0; i < round->n; i++)
	{
		OutboxMessage *m = &round->messages[i];
		OutboxRow  *row = &round->rows[m->row];

		if (!m->report.reported)
			continue;
		if (m->report.err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			row->keep[m->index] = false;
			round->nok++;
		}
		else if (KafkaErrorIsPermanent(m->report.err))
		{
			row->keep[m->index] = false;
			m->dead = true;
			round->ndead++;
		}
		else
		{
			row->failed = true;
			round->nbad++;
			if (round->first_error[0] == '\0')
				snprintf(round->first_error, sizeof(round->first_error), "%s: %s",
						 rd_kafka_err2name(m->report.err), rd_kafka_err2str(m->report.err));
		}
	}
}

/*
 * Step 4, settle: the outbox and the dead letters as the reports say, and
 * the breaker's call, in a second transaction.  Returns the messages left
 * pending (-1: not counted now).
 */
static int64
KafkaSettleRound(KafkaRound *round)
{
	int64		pending;

	InfraWorkerSpiBegin();
	/* An aborted transaction's messages are read again from the WAL, not moved. */
	if (round->wal)
		KafkaSettleWal(round->rows, round->nincluded, round->messages, round->n, round->ndead,
					   round->first_error, !round->txn_failed);
	else
		KafkaSettle(round->rows, round->nincluded, round->messages, round->n, round->ndead,
					round->first_error);
	InfraBreakerRecord("kafka", round->nbad > 0);
	pending = KafkaPendingAfterRound(round->cut != PG_INT64_MAX,
									 round->total - round->nok - round->ndead);
	KafkaEndTransaction();
	/* Committed (flushed): the slot may now confirm past the round. */
	if (round->wal && round->txn_failed)
	{
		int			i;

		/* Read it again from the slot, without what is dead-lettered now. */
		for (i = 0; i < round->n; i++)
			if (round->messages[i].dead)
				KafkaTxnRememberDead(round->messages[i].id);
		wal_read_again = true;
	}
	else if (round->wal && round->carried_on)
		KafkaWalRelease(round->wal_batch);	/* the next round's commit covers it */
	else if (round->wal)
		KafkaWalConfirm(round->wal_batch);
	else
	{
		/*
		 * Its rows are deleted or rewritten without what Kafka has: once
		 * that (asynchronous) commit is flushed.
		 */
		if (round->in_txn)
			KafkaTxnForget(KafkaRoundIds(round), round->n, GetXLogInsertRecPtr());
		KafkaTxnForget(round->skipped, round->nskipped, GetXLogInsertRecPtr());
		KafkaProgressed();
	}

	/*
	 * A background worker reports its table statistics itself: without it
	 * pg_stat_user_tables never sees the outbox's deletes and autovacuum
	 * never its dead tuples.  At most once a second while busy.
	 */
	(void) pgstat_report_stat(false);
	return pending;
}

/*
 * Step 5, account: kafka_stats' counters, the last error, and how long to
 * sleep: a backoff doubling from KAFKA_RETRY_MIN_MS after failed rounds,
 * else 0 (a full or byte-limited round may have left rows: look again).
 */
static long
KafkaAccountRound(KafkaRound *round, int64 pending)
{
	long		backoff = KAFKA_RETRY_MIN_MS;
	int			i;

	/* Exactly once: counted when (and if) the transaction commits. */
	int64		delivered = round->carried_on ? 0 :
		round->nok + (round->txn_failed ? 0 : round->carried_ok);

	SpinLockAcquire(&my_stats->mutex);
	my_stats->in_flight = 0;
	my_stats->delivered_total += delivered;
	my_stats->failed_attempts_total += round->nbad;
	my_stats->dead_lettered_total += round->ndead;
	my_stats->batches_total++;
	if (pending >= 0)
		my_stats->pending = pending;
	if (pending == 0)
		my_stats->oldest_pending_at = 0;
	my_stats->produce_latency_ms = (double) (InfraMonotonicNs() - round->start_ns) / 1e6;
	if (delivered > 0)
		my_stats->last_delivery_at = GetCurrentTimestamp();
	strlcpy(my_stats->broker_state, round->nbad == 0 ? "up" : "failing",
			sizeof(my_stats->broker_state));
	SpinLockRelease(&my_stats->mutex);

	if (round->nbad == 0)
	{
		if (failed_rounds > 0)
			ereport(LOG, (errmsg("infra worker delivers Kafka messages again")));
		failed_rounds = 0;
		KafkaClientErrorClear();
		return 0;
	}
	KafkaRecordError(KafkaClientError()[0] ?
					 psprintf("%s (%s)", round->first_error, KafkaClientError()) :
					 round->first_error);
	if (failed_rounds++ == 0)
		ereport(LOG,
				(errmsg("infra worker could not deliver %d Kafka messages: %s",
						round->nbad, round->first_error),
				 errdetail("They stay in infra.kafka_outbox and are retried.")));
	for (i = 1; i < failed_rounds && backoff < KAFKA_RETRY_MAX_MS; i++)
		backoff *= 2;
	return Min(backoff, KAFKA_RETRY_MAX_MS);
}

/*
 * A new round from the WAL outbox in slot `slot`, read and produced
 * without waiting for its acknowledgements, in the Kafka transaction of
 * round carry_from if not NULL (exactly once); NULL when there is none to
 * produce now (sleep_ms says how long).
 */
static KafkaRound *
KafkaWalStartRound(int slot, const KafkaRound *carry_from, long *sleep_ms)
{
	KafkaRound *round = &wal_rounds[slot];

	if (wal_round_contexts[slot] == NULL)
		wal_round_contexts[slot] = AllocSetContextCreate(TopMemoryContext, "infra kafka WAL round",
														 ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(wal_round_contexts[slot]);
	MemoryContextSwitchTo(wal_round_contexts[slot]);
	memset(round, 0, sizeof(*round));
	round->cut = PG_INT64_MAX;
	if (!KafkaWalReadRound(round, slot, sleep_ms))
		return NULL;
	MemoryContextSwitchTo(wal_round_contexts[slot]);
	if (carry_from != NULL)
	{
		round->carried_in = true;
		round->producer = carry_from->producer;
	}
	KafkaOrderMessages(round);
	KafkaProduceMessages(round);
	return round;
}

/*
 * The rest of a WAL round once produced: its reports, classified, settled
 * (the slot confirms past it), accounted.
 */
static long
KafkaWalFinishRound(int slot)
{
	KafkaRound *round = &wal_rounds[slot];

	MemoryContextSwitchTo(wal_round_contexts[slot]);
	KafkaRoundWait(round);
	KafkaClassifyReports(round);
	return KafkaAccountRound(round, KafkaSettleRound(round));
}

/*
 * The round in flight finished, with the next one read and produced
 * meanwhile unless it is failing: rounds are settled in the order they
 * were read.  When the older one failed, the newer one (later commits) is
 * settled right after it, before anything is retried from the table.
 *
 * Exactly once, the next round goes to another producer (txn.c): only
 * once every message of the older one is acknowledged (no order holds
 * between two producers), and it is aborted when the older one's
 * transaction does not commit.  While a backlog lasts
 * (KafkaRoundMayCarry) it goes on with the older one's transaction
 * instead, on its producer, without that wait; the older one is then
 * settled without its commit, and its read confirmed with the newer one's.
 */
static long
KafkaWalPipeline(bool start_next)
{
	int			older = wal_in_flight;
	int			newer = 1 - older;
	KafkaRound *o = &wal_rounds[older];
	KafkaRound *next = NULL;
	long		sleep_ms = 0;
	long		next_sleep_ms;
	bool		carry;

	KafkaPoll(0);
	KafkaAbsorbStats();
	carry = start_next && KafkaRoundMayCarry(o);
	if (o->in_txn && !o->txn_failed && !carry)
		KafkaAwaitReports(o);
	/* Carried on, the older one was just found sound (KafkaRoundMayCarry). */
	if (carry || (start_next && !o->txn_failed && !o->must_abort && !KafkaRoundFailing(o)))
		next = KafkaWalStartRound(newer, carry ? o : NULL, &next_sleep_ms);
	o->carried_on = next != NULL && carry;
	sleep_ms = KafkaWalFinishRound(older);
	/* Still going on (nothing of it failed): the newer round counts it at its commit. */
	if (o->carried_on)
		wal_rounds[newer].carried_ok = o->carried_ok + o->nok;
	wal_in_flight = next ? newer : -1;
	if (next && (o->nbad > 0 || o->txn_failed))
	{
		wal_rounds[newer].must_abort |= o->txn_failed;
		wal_rounds[newer].txn_gone = wal_rounds[newer].carried_in && o->txn_failed;
		sleep_ms = KafkaWalFinishRound(newer);
		wal_in_flight = -1;
	}
	if (wal_read_again && wal_in_flight < 0)
	{
		KafkaWalStop();
		wal_read_again = false;
	}
	return wal_in_flight >= 0 ? 0 : sleep_ms;
}

/*
 * After an ERROR cut a serve short: let librdkafka report what the WAL
 * rounds in flight produced (its callbacks write into their memory), then
 * read the WAL again from the slot (at least once).
 */
static void
KafkaWalPipelineReset(void)
{
	int			i;

	for (i = 0; i < KAFKA_WAL_BATCHES; i++)
		if (wal_round_contexts[i] != NULL && wal_rounds[i].sent > 0 && KafkaProducer() != NULL)
			KafkaAwaitReports(&wal_rounds[i]);
	memset(wal_rounds, 0, sizeof(wal_rounds));
	wal_in_flight = -1;
	wal_read_again = false;
	KafkaWalStop();
}

/*
 * One round: produce the oldest outbox messages and settle them, in named
 * steps (read, produce, classify, settle, account), creating the
 * registered topics still pending between the read and the produce.  From
 * the WAL outbox (once the table is empty) rounds are pipelined
 * (KafkaWalPipeline).  Returns how long the worker may sleep: -1 (until
 * woken) without a producer, KAFKA_IDLE_POLL_MS when the outbox is empty,
 * 0 when more may wait, or a backoff after failures.
 */
static long
KafkaWorkerServe(void)
{
	KafkaRound *round = &table_round;
	long		sleep_ms;
	bool		ready;

	if (round_context == NULL)
	{
		round_context = AllocSetContextCreate(TopMemoryContext, "infra kafka round",
											  ALLOCSET_DEFAULT_SIZES);
#ifdef __GLIBC__

		/*
		 * A round allocates and frees megabytes: keep them mapped for the
		 * next one rather than trim and fault them in again (measured: a
		 * fifth of the worker's time at 400k msg/s).
		 */
		mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
		mallopt(M_MMAP_THRESHOLD, 64 * 1024 * 1024);
#endif
	}
	my_stats = KafkaMyStats();
	/* After an ERROR: what librdkafka still reports writes into round memory. */
	if (serving)
	{
		KafkaTxnAbandon();
		if (table_round.sent > 0 && KafkaProducer() != NULL)
			KafkaAwaitReports(&table_round);
		KafkaWalPipelineReset();
	}
	MemoryContextReset(round_context);
	MemoryContextSwitchTo(round_context);
	serving = true;

	/*
	 * A WAL round in flight is finished by the producer that sent it (before
	 * a reload may replace it); the next one starts only if none will.
	 */
	if (wal_in_flight >= 0)
	{
		sleep_ms = KafkaWalPipeline(KafkaProducerCurrent());
		serving = false;
		return sleep_ms;
	}

	/* The WAL outbox's slot first: kafka_send writes the WAL once it is there. */
	if (infra_kafka_outbox == KAFKA_OUTBOX_WAL)
		(void) KafkaWalWanted();
	if (!KafkaEnsureProducer())
	{
		serving = false;
		return -1;
	}
	/* Exactly once: fence, read the progress back, decode again from the slot. */
	if (KafkaTxnEnabled() && !KafkaTxnReady())
	{
		KafkaWalStop();
		if (!KafkaTxnStart())
		{
			serving = false;
			return KAFKA_RETRY_MIN_MS;
		}
	}
	KafkaPoll(0);
	KafkaAbsorbStats();

	memset(round, 0, sizeof(*round));
	round->cut = PG_INT64_MAX;
	ready = KafkaReadRound(round, &sleep_ms);
	/* Before anything is produced, so a new topic has its settings. */
	if (round->topics_pending)
		KafkaCreateRegisteredTopics(round_context);
	if (ready)
	{
		KafkaOrderMessages(round);
		KafkaProduceRound(round);
		KafkaClassifyReports(round);
		sleep_ms = KafkaAccountRound(round, KafkaSettleRound(round));
	}
	/* The WAL outbox once the table is empty (it holds older commits). */
	else if (round->table_empty && KafkaWalWanted())
	{
		int			slot = Max(KafkaWalHeldBatch(), 0);

		KafkaRound *started = KafkaWalStartRound(slot, NULL, &sleep_ms);

		if (started != NULL)
		{
			wal_in_flight = slot;
			sleep_ms = 0;
		}
	}
	serving = false;
	return sleep_ms;
}
