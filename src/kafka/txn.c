/*-------------------------------------------------------------------------
 *
 * txn.c
 *		Exactly once into Kafka: each round in a Kafka transaction that
 *		also carries the round's progress.
 *
 * With infra.kafka_delivery = exactly_once the producer is transactional
 * (transactional.id "infra-<system identifier>-<database oid>", client.c)
 * and every round is one Kafka transaction: its messages and one progress
 * record, written to this database's progress topic
 * (__infra_progress.<system identifier>.<database oid>, one partition,
 * compacted).  The record says how far the WAL outbox is in Kafka: the
 * timeline and the LSN up to which the round read (every transaction
 * whose commit record ends at or before it is in this or an earlier
 * round; decoding gives transactions in commit order and a round never
 * splits one, so this one number is exact, whatever order the ids were
 * taken in).  "The round reached Kafka" and "Kafka knows it" are then one
 * atomic fact.
 *
 * When a producer is made (start, reload, after a fatal error):
 * init_transactions fences any earlier producer with the same id (a killed
 * worker, the old primary after a failover: its next call fails) and
 * finishes or aborts what it left open; then the progress is read back
 * with a read_committed consumer, and decoding starts again from the slot,
 * skipping every transaction the progress covers.  The slot itself
 * confirms past a round only after the round's Kafka commit, so it is
 * never ahead of Kafka.  On another timeline (a promoted standby, a
 * restored backup) the progress counts only up to where this server's
 * history left the timeline it was written on: WAL past that point is not
 * this server's.
 *
 * A round that fails (a message refused, the broker gone, the transaction
 * fenced) is aborted as a whole; messages refused for good are
 * dead-lettered first and left out when the round is read again
 * (producer.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/timeline.h"
#include "access/xlog.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "storage/spin.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "core/clock.h"
#include "kafka/client.h"
#include "kafka/config.h"
#include "kafka/outbox.h"
#include "kafka/txn.h"

/* How long each wait on the broker may block before interrupts are looked at. */
#define KAFKA_TXN_POLL_MS 1000
/* How long starting (fencing, reading the progress) may take before a retry. */
#define KAFKA_TXN_START_S 30
/* The progress topic's name: prefix, system identifier, database oid. */
#define KAFKA_PROGRESS_PREFIX "__infra_progress"
#define KAFKA_PROGRESS_KEY "progress"

/* The producer generation transactions were initialised for (0: none). */
static uint64 ready_generation = 0;
/* WAL-outbox transactions ending at or before this are in Kafka. */
static XLogRecPtr skip_upto = InvalidXLogRecPtr;
/* Ids dead-lettered by an aborted round: left out when it is read again. */
static HTAB *dead_ids = NULL;
/* A Kafka transaction is open (begun, not ended). */
static bool txn_open = false;

static bool KafkaTxnInit(void);
static bool KafkaTxnEnsureTopic(const char *topic);
static bool KafkaTxnReadProgress(const char *topic, TimeLineID *tli, XLogRecPtr *lsn);
static bool KafkaTxnParseProgress(const char *value, size_t len, TimeLineID *tli, XLogRecPtr *lsn);
static void KafkaTxnFail(rd_kafka_error_t *error, const char *what);
static void KafkaTxnNoteBegin(void);
static void KafkaTxnNoteEnd(bool committed, XLogRecPtr progress);
static void KafkaTxnNoteFenced(void);

bool
KafkaTxnEnabled(void)
{
	return infra_kafka_delivery == KAFKA_DELIVERY_EXACTLY_ONCE;
}

/*
 * Has the current producer been through KafkaTxnStart?
 */
bool
KafkaTxnReady(void)
{
	return ready_generation != 0 && ready_generation == KafkaProducerGeneration();
}

XLogRecPtr
KafkaTxnSkipUpto(void)
{
	return skip_upto;
}

void
KafkaTxnProgressTopic(char *buf, size_t len)
{
	snprintf(buf, len, KAFKA_PROGRESS_PREFIX "." UINT64_FORMAT ".%u",
			 GetSystemIdentifier(), MyDatabaseId);
}

/*
 * Get the new producer ready for transactions: fence earlier producers,
 * read the committed progress back, and compute what decoding skips.
 * False when that cannot be done now (retry after a backoff).
 */
bool
KafkaTxnStart(void)
{
	char		topic[96];
	TimeLineID	tli = 0;
	XLogRecPtr	lsn = InvalidXLogRecPtr;
	TimeLineID	current = GetWALInsertionTimeLine();

	KafkaTxnProgressTopic(topic, sizeof(topic));
	if (!KafkaTxnInit() || !KafkaTxnEnsureTopic(topic) || !KafkaTxnReadProgress(topic, &tli, &lsn))
	{
		/* Made again at the next try (a fatal error leaves it unusable). */
		KafkaClientShutdown();
		return false;
	}

	if (XLogRecPtrIsInvalid(lsn) || tli == current)
		skip_upto = lsn;
	else
	{
		List	   *history = readTimeLineHistory(current);

		if (tliInHistory(tli, history))
			skip_upto = Min(lsn, tliSwitchPoint(tli, history, NULL));
		else
		{
			ereport(WARNING,
					(errmsg("infra worker ignores the Kafka progress of timeline %u: not in this server's history (timeline %u)",
							tli, current),
					 errdetail("Topic \"%s\" says WAL up to %X/%X was delivered.", topic, LSN_FORMAT_ARGS(lsn))));
			skip_upto = InvalidXLogRecPtr;
		}
		list_free_deep(history);
	}
	ready_generation = KafkaProducerGeneration();
	if (infra_kafka_outbox != KAFKA_OUTBOX_WAL)
		ereport(WARNING,
				(errmsg("infra.kafka_delivery is exactly_once but infra.kafka_outbox is table: messages are sent in Kafka transactions, at least once"),
				 errhint("Set infra.kafka_outbox = wal (with wal_level = logical) for exactly once.")));
	SpinLockAcquire(&KafkaMyStats()->mutex);
	KafkaMyStats()->txn_progress = skip_upto;
	SpinLockRelease(&KafkaMyStats()->mutex);
	ereport(LOG,
			(errmsg("infra worker delivers exactly once: Kafka holds the WAL outbox up to %X/%X",
					LSN_FORMAT_ARGS(skip_upto))));
	return true;
}

/*
 * init_transactions, resumed while it times out (responsive to shutdown).
 */
static bool
KafkaTxnInit(void)
{
	int64		deadline = InfraMonotonicNs() + KAFKA_TXN_START_S * NS_PER_SEC;

	for (;;)
	{
		rd_kafka_error_t *error = rd_kafka_init_transactions(KafkaProducer(), KAFKA_TXN_POLL_MS);

		KafkaPoll(0);
		if (error == NULL)
			return true;
		if (!rd_kafka_error_is_retriable(error) || ShutdownRequestPending ||
			InfraMonotonicNs() >= deadline)
		{
			KafkaTxnFail(error, "initialise transactions");
			return false;
		}
		rd_kafka_error_destroy(error);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Create the progress topic (one partition, compacted) unless it exists.
 */
static bool
KafkaTxnEnsureTopic(const char *topic)
{
	rd_kafka_t *rk = KafkaProducer();
	char		errbuf[512];
	rd_kafka_NewTopic_t *new_topic;
	rd_kafka_AdminOptions_t *options;
	rd_kafka_queue_t *queue;
	rd_kafka_event_t *event = NULL;
	int64		deadline = InfraMonotonicNs() + 15 * NS_PER_SEC;
	bool		ok = false;

	new_topic = rd_kafka_NewTopic_new(topic, 1, -1, errbuf, sizeof(errbuf));
	if (new_topic == NULL ||
		rd_kafka_NewTopic_set_config(new_topic, "cleanup.policy", "compact") != RD_KAFKA_RESP_ERR_NO_ERROR ||
		rd_kafka_NewTopic_set_config(new_topic, "segment.ms", "3600000") != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		if (new_topic)
			rd_kafka_NewTopic_destroy(new_topic);
		KafkaRecordError("cannot describe the progress topic");
		return false;
	}
	queue = rd_kafka_queue_new(rk);
	options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS);
	rd_kafka_AdminOptions_set_request_timeout(options, 10000, errbuf, sizeof(errbuf));
	rd_kafka_CreateTopics(rk, &new_topic, 1, options, queue);
	while (event == NULL && InfraMonotonicNs() < deadline && !ShutdownRequestPending)
		event = rd_kafka_queue_poll(queue, 100);
	if (event != NULL && rd_kafka_event_error(event) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		const rd_kafka_CreateTopics_result_t *result = rd_kafka_event_CreateTopics_result(event);
		size_t		n;
		const rd_kafka_topic_result_t **results = rd_kafka_CreateTopics_result_topics(result, &n);
		rd_kafka_resp_err_t err = n == 1 ? rd_kafka_topic_result_error(results[0]) : RD_KAFKA_RESP_ERR__FAIL;

		ok = err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS;
		if (!ok)
			KafkaRecordError(psprintf("cannot create the progress topic %s: %s", topic,
									  n == 1 && rd_kafka_topic_result_error_string(results[0]) ?
									  rd_kafka_topic_result_error_string(results[0]) : rd_kafka_err2str(err)));
	}
	else
		KafkaRecordError(event ? rd_kafka_event_error_string(event) :
						 "no answer from the broker to CreateTopics (progress topic)");
	if (event)
		rd_kafka_event_destroy(event);
	rd_kafka_AdminOptions_destroy(options);
	rd_kafka_queue_destroy(queue);
	rd_kafka_NewTopic_destroy(new_topic);
	CHECK_FOR_INTERRUPTS();
	return ok;
}

/*
 * A consumer reading committed records only, to read the progress back;
 * NULL (the error recorded) when it cannot be made.
 */
static rd_kafka_t *
KafkaTxnProgressReader(void)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errbuf[512];
	char		group[96];
	rd_kafka_t *consumer;

	KafkaTransactionalId(group, sizeof(group));
	strlcat(group, "-progress", sizeof(group));
	if (rd_kafka_conf_set(conf, "bootstrap.servers", infra_kafka_brokers, errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "group.id", group, errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "enable.auto.commit", "false", errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "isolation.level", "read_committed", errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "enable.partition.eof", "true", errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "log.queue", "true", errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		!KafkaConfigApply(conf, infra_kafka_config ? infra_kafka_config : "", errbuf, sizeof(errbuf)))
	{
		rd_kafka_conf_destroy(conf);
		KafkaRecordError(psprintf("cannot configure the progress reader: %s", errbuf));
		return NULL;
	}
	consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errbuf, sizeof(errbuf));
	if (consumer == NULL)
	{
		KafkaRecordError(psprintf("cannot create the progress reader: %s", errbuf));
		return NULL;
	}
	/* Its log lines go to a queue nobody reads: none from its threads. */
	rd_kafka_set_log_queue(consumer, NULL);
	return consumer;
}

/*
 * Read the progress topic from start to high (the last stable offset),
 * keeping the last progress record: -1 on error, else whether one was
 * found.
 */
static int
KafkaTxnScanProgress(rd_kafka_t *consumer, const char *topic, int64 start, int64 high,
					 int64 deadline, TimeLineID *tli, XLogRecPtr *lsn)
{
	rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(1);
	rd_kafka_resp_err_t err;
	int			found = 0;

	rd_kafka_topic_partition_list_add(parts, topic, 0)->offset = start;
	err = rd_kafka_assign(consumer, parts);
	rd_kafka_topic_partition_list_destroy(parts);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		KafkaRecordError(psprintf("cannot read the progress topic %s: %s", topic, rd_kafka_err2str(err)));
		return -1;
	}
	for (;;)
	{
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(consumer, KAFKA_TXN_POLL_MS);
		bool		done = false;

		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending || InfraMonotonicNs() >= deadline)
		{
			if (msg)
				rd_kafka_message_destroy(msg);
			if (!ShutdownRequestPending)
				KafkaRecordError(psprintf("reading the progress topic %s took over %d s", topic, KAFKA_TXN_START_S));
			return -1;
		}
		if (msg == NULL)
			continue;
		if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			done = true;
		else if (msg->err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			KafkaRecordError(psprintf("cannot read the progress topic %s: %s", topic,
									  rd_kafka_message_errstr(msg)));
			found = -1;
			done = true;
		}
		else
		{
			if (msg->offset < high && KafkaTxnParseProgress(msg->payload, msg->len, tli, lsn))
				found = 1;
			done = msg->offset + 1 >= high;
		}
		rd_kafka_message_destroy(msg);
		if (done)
			return found;
	}
}

/*
 * The last committed progress record (read_committed): its timeline and
 * LSN, or 0 and InvalidXLogRecPtr when there is none.  Only this
 * database's producer writes the topic, and init_transactions has just
 * finished its last transaction, so the last committed record is the
 * progress.  Reads back from the end, a wider window each time, past the
 * transaction markers and aborted records.
 */
static bool
KafkaTxnReadProgress(const char *topic, TimeLineID *tli, XLogRecPtr *lsn)
{
	rd_kafka_t *consumer = KafkaTxnProgressReader();
	int64		deadline = InfraMonotonicNs() + KAFKA_TXN_START_S * NS_PER_SEC;
	int64		low = 0;
	int64		high = 0;
	int64		window = 64;
	int			found = 0;
	rd_kafka_resp_err_t err;

	if (consumer == NULL)
		return false;
	/* With read_committed, high is the last stable offset. */
	err = rd_kafka_query_watermark_offsets(consumer, topic, 0, &low, &high, 10000);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		KafkaRecordError(psprintf("cannot read the progress topic %s: %s", topic, rd_kafka_err2str(err)));
		found = -1;
	}
	while (found == 0 && high > low)
	{
		int64		start = Max(low, high - window);

		found = KafkaTxnScanProgress(consumer, topic, start, high, deadline, tli, lsn);
		if (start == low)
			break;
		window *= 16;
	}
	(void) rd_kafka_assign(consumer, NULL);
	rd_kafka_consumer_close(consumer);
	rd_kafka_destroy(consumer);
	return found >= 0;
}

/*
 * A progress record: {"timeline": N, "lsn": "X/X"}.
 */
static bool
KafkaTxnParseProgress(const char *value, size_t len, TimeLineID *tli, XLogRecPtr *lsn)
{
	char		buf[128];
	unsigned int t;
	uint32		hi;
	uint32		lo;

	if (value == NULL || len >= sizeof(buf))
		return false;
	memcpy(buf, value, len);
	buf[len] = '\0';
	if (sscanf(buf, "{\"timeline\": %u, \"lsn\": \"%X/%X\"}", &t, &hi, &lo) != 3)
	{
		ereport(WARNING,
				(errmsg("infra worker skips a malformed Kafka progress record: %s", buf)));
		return false;
	}
	*tli = t;
	*lsn = ((uint64) hi << 32) | lo;
	return true;
}

/*
 * Begin the round's transaction.  False: the producer is unusable (it was
 * shut down; the round fails and is read again).
 */
bool
KafkaTxnBegin(void)
{
	rd_kafka_error_t *error = rd_kafka_begin_transaction(KafkaProducer());

	if (error == NULL)
	{
		txn_open = true;
		KafkaTxnNoteBegin();
		return true;
	}
	KafkaTxnFail(error, "begin a transaction");
	return false;
}

/*
 * End the round's transaction: with upto valid, first the progress record
 * saying the WAL outbox is in Kafka up to it; commit if commit, else
 * abort.  Every message of the transaction has been reported when this
 * returns (an abort purges what was not sent).  Returns the outcome.
 */
KafkaTxnOutcome
KafkaTxnEnd(bool commit, XLogRecPtr upto, char *why, size_t whylen)
{
	rd_kafka_t *rk = KafkaProducer();
	rd_kafka_error_t *error = NULL;

	txn_open = false;
	if (commit && !XLogRecPtrIsInvalid(upto))
	{
		char		topic[96];
		char		value[96];
		rd_kafka_resp_err_t err;

		KafkaTxnProgressTopic(topic, sizeof(topic));
		snprintf(value, sizeof(value), "{\"timeline\": %u, \"lsn\": \"%X/%X\"}",
				 GetWALInsertionTimeLine(), LSN_FORMAT_ARGS(upto));
		err = rd_kafka_producev(rk,
								RD_KAFKA_V_TOPIC(topic),
								RD_KAFKA_V_PARTITION(0),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_KEY(KAFKA_PROGRESS_KEY, strlen(KAFKA_PROGRESS_KEY)),
								RD_KAFKA_V_VALUE(value, strlen(value)),
								RD_KAFKA_V_END);
		if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			snprintf(why, whylen, "progress record: %s", rd_kafka_err2str(err));
			commit = false;
		}
	}
	if (commit)
	{
		error = rd_kafka_commit_transaction(rk, -1);
		if (error == NULL)
		{
			if (!XLogRecPtrIsInvalid(upto))
				skip_upto = Max(skip_upto, upto);
			KafkaTxnNoteEnd(true, skip_upto);
			KafkaPoll(0);
			return KAFKA_TXN_COMMITTED;
		}
		snprintf(why, whylen, "commit: %s", rd_kafka_error_string(error));
		if (!rd_kafka_error_txn_requires_abort(error))
		{
			KafkaTxnFail(error, "commit a transaction");
			return KAFKA_TXN_FATAL;
		}
		rd_kafka_error_destroy(error);
	}
	error = rd_kafka_abort_transaction(rk, -1);
	KafkaPoll(0);
	if (error != NULL)
	{
		snprintf(why, whylen, "abort: %s", rd_kafka_error_string(error));
		KafkaTxnFail(error, "abort a transaction");
		return KAFKA_TXN_FATAL;
	}
	KafkaTxnNoteEnd(false, skip_upto);
	return KAFKA_TXN_ABORTED;
}

/*
 * A transactional call failed for good: log it (a fenced producer says
 * so), purge what the producer still holds (so every message is reported)
 * and let it be made again, which fences in turn.
 */
static void
KafkaTxnFail(rd_kafka_error_t *error, const char *what)
{
	rd_kafka_resp_err_t code = rd_kafka_error_code(error);
	bool		fenced = code == RD_KAFKA_RESP_ERR__FENCED ||
		code == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
		code == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH ||
		rd_kafka_fatal_error(KafkaProducer(), NULL, 0) == RD_KAFKA_RESP_ERR_PRODUCER_FENCED ||
		rd_kafka_fatal_error(KafkaProducer(), NULL, 0) == RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH;

	KafkaRecordError(psprintf("cannot %s: %s", what, rd_kafka_error_string(error)));
	ereport(LOG,
			(errmsg("infra worker cannot %s in Kafka: %s", what, rd_kafka_error_string(error)),
			 fenced ? errdetail("Another producer with this transactional id took over (a newer worker, or the new primary); this one stops sending.") : 0));
	if (fenced)
		KafkaTxnNoteFenced();
	rd_kafka_error_destroy(error);
	(void) rd_kafka_purge(KafkaProducer(), RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
	KafkaPoll(0);
	ready_generation = 0;
	txn_open = false;
}

/*
 * An ERROR cut a round short with its transaction open: abort it (what
 * it produced is reported, purged), or let the producer be made again.
 */
void
KafkaTxnAbandon(void)
{
	rd_kafka_error_t *error;

	if (!txn_open || KafkaProducer() == NULL)
	{
		txn_open = false;
		return;
	}
	txn_open = false;
	error = rd_kafka_abort_transaction(KafkaProducer(), -1);
	KafkaPoll(0);
	if (error != NULL)
	{
		KafkaTxnFail(error, "abort a transaction");
		KafkaClientShutdown();
		return;
	}
	KafkaTxnNoteEnd(false, skip_upto);
}

/*
 * Remember that a message was dead-lettered by a round that was then
 * aborted: reading the round again leaves it out.
 */
void
KafkaTxnRememberDead(int64 id)
{
	bool		found;

	if (dead_ids == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(int64);
		ctl.entrysize = sizeof(int64);
		ctl.hcxt = TopMemoryContext;
		dead_ids = hash_create("infra kafka dead-lettered ids", 64, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	(void) hash_search(dead_ids, &id, HASH_ENTER, &found);
}

bool
KafkaTxnIsDead(int64 id)
{
	return dead_ids != NULL && hash_search(dead_ids, &id, HASH_FIND, NULL) != NULL;
}

/* kafka_stats' transaction counters (this database's entry). */
static void
KafkaTxnNoteBegin(void)
{
	KafkaStats *stats = KafkaMyStats();

	SpinLockAcquire(&stats->mutex);
	stats->txn_began_at = GetCurrentTimestamp();
	SpinLockRelease(&stats->mutex);
}

static void
KafkaTxnNoteEnd(bool committed, XLogRecPtr progress)
{
	KafkaStats *stats = KafkaMyStats();

	SpinLockAcquire(&stats->mutex);
	stats->txn_began_at = 0;
	if (committed)
		stats->txn_committed_total++;
	else
		stats->txn_aborted_total++;
	stats->txn_progress = progress;
	SpinLockRelease(&stats->mutex);
}

static void
KafkaTxnNoteFenced(void)
{
	KafkaStats *stats = KafkaMyStats();

	SpinLockAcquire(&stats->mutex);
	stats->txn_began_at = 0;
	stats->txn_fenced_total++;
	SpinLockRelease(&stats->mutex);
}
