/*-------------------------------------------------------------------------
 *
 * txn.c
 *		Exactly once into Kafka: each round in a Kafka transaction that
 *		also carries the round's progress.
 *
 * With infra.kafka_delivery = exactly_once the producers are transactional
 * (transactional.id "infra-<system identifier>-<database oid>-<n>",
 * client.c) and every round is one Kafka transaction: its messages and one progress
 * record, written to this database's progress topic
 * (__infra_progress_<system identifier>_<database oid>, one partition,
 * compacted).  The record says how far the WAL outbox is in Kafka: the
 * timeline and the LSN up to which the round read (every transaction
 * whose commit record ends at or before it is in this or an earlier
 * round; decoding gives transactions in commit order and a round never
 * splits one, so this one number is exact, whatever order the ids were
 * taken in).  "The round reached Kafka" and "Kafka knows it" are then one
 * atomic fact.
 *
 * Rounds go to KAFKA_TXN_PRODUCERS producers in turn.  One producer would
 * begin its next transaction while the coordinator still writes the last
 * one's commit markers: Kafka answers CONCURRENT_TRANSACTIONS and
 * librdkafka (2.0.2) tries again 20 ms later, a fixed delay that made
 * exactly once a third slower than at least once and its commit-to-visible
 * tail ten times longer.  With three, a producer begins again two rounds
 * after its commit.  It also lets the rounds overlap as at least once's do
 * (producer.c): a round is produced only once every message of the round
 * before it is acknowledged (so per partition, and so per key, Kafka's
 * order is the commit order: two producers give no order between them),
 * while that round's transaction commits; transactions commit in read
 * order, and when one does not, the next is aborted too.  So a committed
 * progress record means every round before it committed, and the progress
 * is the highest committed record.  While a backlog lasts a transaction
 * goes on from round to round on one producer (producer.c, at most
 * KAFKA_TXN_CARRY_MS): each round adds its own progress record, the last
 * one says how far the transaction reaches, and all commit or abort
 * together (a transaction costs the broker about the same whatever it
 * holds).
 *
 * When the producers are made (start, reload, after a fatal error):
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
 * The table outbox: a round's record also lists its message ids, as
 * ranges by the timeline each was allocated on (a failover that lost WAL
 * makes the new primary hand out delivered ids again, on its timeline),
 * with the id sequence's oid; the worker deletes the rows once Kafka
 * committed.  Until that
 * delete has committed the ids stay in settled_ids: every later record
 * names them too, and a table round leaves them out (deleting their rows).
 * A worker killed in between reads them back with the progress.  A list,
 * not a "last id": rows of concurrent transactions commit out of id order.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/timeline.h"
#include "access/xlog.h"
#include "lib/stringinfo.h"
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
/*
 * The longest a Kafka transaction goes on from round to round while a
 * backlog lasts (producer.c): every read_committed consumer waits for it.
 */
#define KAFKA_TXN_CARRY_MS 100
/* The most message ids a progress record may list (two table rounds' worth, and more). */
#define KAFKA_TXN_MAX_IDS 1000000

/* The producer generation transactions were initialised for (0: none). */
static uint64 ready_generation = 0;
/* The generation init_transactions was last called for (it runs once per producer). */
static uint64 init_generation = 0;
/* WAL-outbox transactions ending at or before this are in Kafka. */
static XLogRecPtr skip_upto = InvalidXLogRecPtr;
/* Ids dead-lettered by an aborted round: left out when it is read again. */
static HTAB *dead_ids = NULL;
/*
 * Table outbox: ids of messages Kafka holds (their round committed) whose
 * rows the outbox may still hold (the round's settle has not committed):
 * every progress record lists them, and a table round leaves them out.
 */
static HTAB *settled_ids = NULL;
typedef struct SettledEntry
{
	KafkaTxnId	key;
	XLogRecPtr	forget_at;		/* its rows' delete commits here (async): gone once flushed */
} SettledEntry;
/*
 * The sequence those ids came from (infra.kafka_outbox_id_seq's oid): a
 * record of an earlier install of the extension, whose sequence started
 * again at 1, names ids that are not these rows'.
 */
static Oid	settled_seq = InvalidOid;
/* Which producers have a Kafka transaction open (begun, not ended), since when. */
static bool txn_open[KAFKA_TXN_PRODUCERS];
static TimestampTz txn_began[KAFKA_TXN_PRODUCERS];
static uint64 txn_generation[KAFKA_TXN_PRODUCERS];
/* The producer the next round begins on. */
static int	txn_next = 0;

static bool KafkaTxnInit(void);
static bool KafkaTxnEnsureTopic(const char *topic);
static bool KafkaTxnKnowTopic(const char *topic);
static bool KafkaTxnReadProgress(const char *topic, TimeLineID *tli, XLogRecPtr *lsn);
static bool KafkaTxnParseProgress(const char *value, size_t len, TimeLineID *tli, XLogRecPtr *lsn,
								  bool keep_ids);
static HTAB *KafkaTxnIdSet(HTAB **set, const char *name, Size keysize, Size entrysize);
static void KafkaTxnAppendIds(StringInfo buf, const KafkaTxnId *ids, int nids);
static void KafkaTxnPurge(void);
static void KafkaTxnFail(rd_kafka_error_t *error, const char *what, int which);
static void KafkaTxnNoteOpen(void);
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
	snprintf(buf, len, KAFKA_PROGRESS_PREFIX "_" UINT64_FORMAT "_%u",
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
	/* A producer is initialised once: after a failure, made again. */
	if (init_generation == KafkaProducerGeneration())
	{
		KafkaClientShutdown();
		if (!KafkaEnsureProducer())
			return false;
	}
	if (!KafkaTxnInit() || !KafkaTxnEnsureTopic(topic) || !KafkaTxnKnowTopic(topic) ||
		!KafkaTxnReadProgress(topic, &tli, &lsn))
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
	SpinLockAcquire(&KafkaMyStats()->mutex);
	KafkaMyStats()->txn_progress = skip_upto;
	SpinLockRelease(&KafkaMyStats()->mutex);
	ereport(LOG,
			(errmsg("infra worker delivers exactly once: Kafka holds the WAL outbox up to %X/%X and %ld messages of the table outbox's last rounds",
					LSN_FORMAT_ARGS(skip_upto), settled_ids ? hash_get_num_entries(settled_ids) : 0L)));
	return true;
}

/*
 * init_transactions on every producer, each resumed while it times out
 * (responsive to shutdown).
 */
static bool
KafkaTxnInit(void)
{
	int64		deadline = InfraMonotonicNs() + KAFKA_TXN_START_S * NS_PER_SEC;
	int			i;

	init_generation = KafkaProducerGeneration();
	memset(txn_open, 0, sizeof(txn_open));
	txn_next = 0;
	for (i = 0; i < KafkaProducerCount(); i++)
	{
		KafkaUseProducer(i);
		for (;;)
		{
			rd_kafka_error_t *error = rd_kafka_init_transactions(KafkaProducer(), KAFKA_TXN_POLL_MS);

			KafkaPoll(0);
			if (error == NULL)
				break;
			if (!rd_kafka_error_is_retriable(error) || ShutdownRequestPending ||
				InfraMonotonicNs() >= deadline)
			{
				KafkaTxnFail(error, "initialise transactions", i);
				return false;
			}
			rd_kafka_error_destroy(error);
			CHECK_FOR_INTERRUPTS();
		}
	}
	KafkaUseProducer(0);
	return true;
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
 * Every producer asks for the progress topic's metadata now: a producer
 * that first meets it at a commit would wait for its leader (up to a
 * second, librdkafka's metadata timer) with the transaction open.
 */
static bool
KafkaTxnKnowTopic(const char *topic)
{
	int			i;

	for (i = 0; i < KafkaProducerCount(); i++)
	{
		bool		temporary;
		rd_kafka_topic_t *rkt;

		KafkaUseProducer(i);
		rkt = KafkaTopic(topic, &temporary);
		if (rkt == NULL)
			return false;
		if (temporary)
			rd_kafka_topic_destroy(rkt);
	}
	KafkaUseProducer(0);
	return true;
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

	KafkaTransactionalId(group, sizeof(group), -1);
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
 * keeping the last progress record (in *last, palloc'd): -1 on error, else
 * whether one was found.
 */
static int
KafkaTxnScanProgress(rd_kafka_t *consumer, const char *topic, int64 start, int64 high,
					 int64 deadline, char **last, size_t *lastlen)
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
			TimeLineID	t;
			XLogRecPtr	l;

			if (msg->offset < high && KafkaTxnParseProgress(msg->payload, msg->len, &t, &l, false))
			{
				if (*last != NULL)
					pfree(*last);
				*last = palloc(msg->len);
				memcpy(*last, msg->payload, msg->len);
				*lastlen = msg->len;
				found = 1;
			}
			done = msg->offset + 1 >= high;
		}
		rd_kafka_message_destroy(msg);
		if (done)
			return found;
	}
}

/*
 * The last committed progress record (read_committed): its timeline and
 * LSN, or 0 and InvalidXLogRecPtr when there is none, and its table-outbox
 * ids (settled_ids).  Only this database's producers write the topic, and
 * init_transactions has just finished their last transactions, so that
 * record is the progress (a round's record is written once every message
 * of the round before it is acknowledged, and commits after it: the last
 * record is also the highest).  Reads back from the end, a wider window
 * each time, past the transaction markers and aborted records.
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
	char	   *last = NULL;
	size_t		lastlen = 0;
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

		found = KafkaTxnScanProgress(consumer, topic, start, high, deadline, &last, &lastlen);
		if (start == low)
			break;
		window *= 16;
	}
	(void) rd_kafka_assign(consumer, NULL);
	rd_kafka_consumer_close(consumer);
	rd_kafka_destroy(consumer);
	if (found < 0)
		return false;
	if (settled_ids != NULL)
		hash_destroy(settled_ids);
	settled_ids = NULL;
	if (found > 0)
		(void) KafkaTxnParseProgress(last, lastlen, tli, lsn, true);
	return true;
}

/*
 * A progress record: {"timeline": N, "lsn": "X/X"}, and when the table
 * outbox has rows Kafka holds, "seq": OID, "ids": "T:a-b,c;T2:d" (their
 * sequence; by the timeline each id was allocated on, ranges of ids).
 * With keep_ids, the ids go to settled_ids.
 */
static bool
KafkaTxnParseProgress(const char *value, size_t len, TimeLineID *tli, XLogRecPtr *lsn,
					  bool keep_ids)
{
	char	   *buf;
	char	   *p;
	unsigned int t;
	uint32		hi;
	uint32		lo;
	int			used = 0;
	int64		count = 0;
	TimeLineID	group_tli = 0;
	bool		in_group = false;
	bool		ok;

	if (value == NULL)
		return false;
	buf = pnstrdup(value, len);
	ok = sscanf(buf, "{\"timeline\": %u, \"lsn\": \"%X/%X\"%n", &t, &hi, &lo, &used) == 3 && used > 0;
	p = buf + used;
	if (ok && strncmp(p, ", \"seq\": ", 9) == 0)
	{
		unsigned int seq;
		int			n = 0;

		ok = sscanf(p, ", \"seq\": %u, \"ids\": \"%n", &seq, &n) == 1 && n > 0;
		p += n;
		if (ok && keep_ids)
			settled_seq = seq;
		while (ok && *p != '"')
		{
			char	   *end;
			int64		a;
			int64		b;

			/* A timeline's group: "T:" first, ";" before the next. */
			if (!in_group || *p == ';')
			{
				p += *p == ';' ? 1 : 0;
				group_tli = (TimeLineID) strtoul(p, &end, 10);
				ok = end != p && *end == ':';
				p = end + 1;
				in_group = true;
				if (!ok)
					break;
			}
			a = strtoi64(p, &end, 10);
			b = a;
			ok = end != p && a > 0;
			p = end;
			if (ok && *p == '-')
			{
				b = strtoi64(p + 1, &end, 10);
				ok = end != p + 1 && b >= a;
				p = end;
			}
			/* No round lists more: a record that does is not ours. */
			count += ok ? b - a + 1 : 0;
			ok = ok && count <= KAFKA_TXN_MAX_IDS;
			for (; ok && keep_ids && a <= b; a++)
			{
				KafkaTxnId	key = {.id = a,.tli = group_tli,.zero = 0};

				KafkaTxnSettled(&key, 1);
			}
			if (ok && *p == ',')
				p++;
			else
				ok = ok && (*p == '"' || *p == ';');
		}
		p += ok ? 1 : 0;
	}
	ok = ok && strcmp(p, "}") == 0;
	if (!ok)
	{
		ereport(WARNING,
				(errmsg("infra worker skips a malformed Kafka progress record: %.200s", buf)));
		pfree(buf);
		return false;
	}
	pfree(buf);
	*tli = t;
	*lsn = ((uint64) hi << 32) | lo;
	return true;
}

/*
 * Begin the round's transaction on the next producer with none open, and
 * make it the current one.  Returns which, or -1: it cannot (the round
 * fails and is read again; the producers are made again).
 */
int
KafkaTxnBegin(void)
{
	rd_kafka_error_t *error;
	int			which = -1;
	int			i;

	for (i = 0; i < KafkaProducerCount() && which < 0; i++)
		if (!txn_open[(txn_next + i) % KafkaProducerCount()])
			which = (txn_next + i) % KafkaProducerCount();
	if (which < 0)
	{
		ready_generation = 0;
		return -1;
	}
	txn_next = (which + 1) % KafkaProducerCount();
	KafkaUseProducer(which);
	error = rd_kafka_begin_transaction(KafkaProducer());
	if (error == NULL)
	{
		txn_open[which] = true;
		txn_began[which] = GetCurrentTimestamp();
		txn_generation[which] = KafkaProducerGeneration();
		KafkaTxnNoteOpen();
		return which;
	}
	KafkaTxnFail(error, "begin a transaction", which);
	return -1;
}

/*
 * Produce the round's progress record into its transaction (producer
 * `which`): the WAL outbox is in Kafka up to upto once it commits
 * (InvalidXLogRecPtr: as far as it already is), and the table outbox's
 * messages ids (a table round's) with those settled_ids holds.  Sent
 * with the round's messages, so that the commit has only EndTxn left to
 * wait for.  False (why says it) when librdkafka refuses it: the round
 * must not commit.
 */
bool
KafkaTxnProgress(int which, XLogRecPtr upto, const KafkaTxnId *ids, int nids, char *why, size_t whylen)
{
	char		topic[96];
	StringInfoData value;
	rd_kafka_resp_err_t err;
	bool		temporary;
	rd_kafka_topic_t *rkt;

	KafkaUseProducer(which);
	KafkaTxnProgressTopic(topic, sizeof(topic));
	initStringInfo(&value);
	appendStringInfo(&value, "{\"timeline\": %u, \"lsn\": \"%X/%X\"",
					 GetWALInsertionTimeLine(), LSN_FORMAT_ARGS(XLogRecPtrIsInvalid(upto) ? skip_upto : upto));
	KafkaTxnAppendIds(&value, ids, nids);
	appendStringInfoChar(&value, '}');
	/* The handle KafkaTxnKnowTopic made: its leader is known. */
	rkt = KafkaTopic(topic, &temporary);
	err = rd_kafka_producev(KafkaProducer(),
							RD_KAFKA_V_RKT(rkt),
							RD_KAFKA_V_PARTITION(0),
							RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
							RD_KAFKA_V_KEY(KAFKA_PROGRESS_KEY, strlen(KAFKA_PROGRESS_KEY)),
							RD_KAFKA_V_VALUE(value.data, value.len),
							RD_KAFKA_V_END);
	pfree(value.data);
	if (temporary)
		rd_kafka_topic_destroy(rkt);
	if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
		return true;
	snprintf(why, whylen, "progress record: %s", rd_kafka_err2str(err));
	return false;
}

/*
 * Is producer `which` (of that generation) in a transaction begun less
 * than KAFKA_TXN_CARRY_MS ago, which a round may go on with?
 */
bool
KafkaTxnYoung(int which, uint64 generation)
{
	return which >= 0 && which < KafkaProducerCount() && txn_open[which] &&
		txn_generation[which] == generation && generation == KafkaProducerGeneration() &&
		!TimestampDifferenceExceeds(txn_began[which], GetCurrentTimestamp(), KAFKA_TXN_CARRY_MS);
}

/*
 * End the round's transaction on producer `which`: commit if commit
 * (with upto valid, its progress record says the WAL outbox is in Kafka
 * up to upto), else abort.  Every message of the transaction has been
 * reported when this returns (an abort purges what was not sent).
 * Returns the outcome.
 */
KafkaTxnOutcome
KafkaTxnEnd(int which, bool commit, XLogRecPtr upto, char *why, size_t whylen)
{
	rd_kafka_t *rk;
	rd_kafka_error_t *error = NULL;

	/* Its producer closed (another one failed for good): it is lost. */
	if (which >= KafkaProducerCount() || !txn_open[which] ||
		txn_generation[which] != KafkaProducerGeneration())
	{
		txn_open[which] = false;
		KafkaTxnNoteOpen();
		snprintf(why, whylen, "its producer was closed");
		return KAFKA_TXN_FATAL;
	}
	KafkaUseProducer(which);
	rk = KafkaProducer();
	txn_open[which] = false;
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
			KafkaTxnFail(error, "commit a transaction", which);
			return KAFKA_TXN_FATAL;
		}
		rd_kafka_error_destroy(error);
	}
	error = rd_kafka_abort_transaction(rk, -1);
	KafkaPoll(0);
	if (error != NULL)
	{
		snprintf(why, whylen, "abort: %s", rd_kafka_error_string(error));
		KafkaTxnFail(error, "abort a transaction", which);
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
KafkaTxnFail(rd_kafka_error_t *error, const char *what, int which)
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
	txn_open[which] = false;
	KafkaTxnNoteOpen();
}

/*
 * An ERROR cut rounds short with their transactions open: abort them
 * (what they produced is reported, purged), or let the producers be made
 * again.
 */
void
KafkaTxnAbandon(void)
{
	int			i;

	for (i = 0; i < KAFKA_TXN_PRODUCERS; i++)
	{
		rd_kafka_error_t *error;

		if (!txn_open[i])
			continue;
		txn_open[i] = false;
		if (i >= KafkaProducerCount() || txn_generation[i] != KafkaProducerGeneration())
			continue;
		KafkaUseProducer(i);
		error = rd_kafka_abort_transaction(KafkaProducer(), -1);
		KafkaPoll(0);
		if (error != NULL)
		{
			KafkaTxnFail(error, "abort a transaction", i);
			KafkaClientShutdown();
			memset(txn_open, 0, sizeof(txn_open));
			KafkaTxnNoteOpen();
			return;
		}
		KafkaTxnNoteEnd(false, skip_upto);
	}
}

/* The id set *set (keys of keysize bytes, entries of entrysize), made on first use. */
static HTAB *
KafkaTxnIdSet(HTAB **set, const char *name, Size keysize, Size entrysize)
{
	if (*set == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = keysize;
		ctl.entrysize = entrysize;
		ctl.hcxt = TopMemoryContext;
		*set = hash_create(name, 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	return *set;
}

/*
 * Remember that a message was dead-lettered by a round that was then
 * aborted: reading the round again leaves it out.
 */
void
KafkaTxnRememberDead(int64 id)
{
	(void) hash_search(KafkaTxnIdSet(&dead_ids, "infra kafka dead-lettered ids", sizeof(int64), sizeof(int64)), &id, HASH_ENTER, NULL);
}

/*
 * Table outbox: the messages of a round whose Kafka transaction committed.
 * Until its settle commits, the outbox may still hold them: later rounds
 * leave them out, and every progress record names them.
 */
void
KafkaTxnSettled(const KafkaTxnId *ids, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		SettledEntry *e = hash_search(KafkaTxnIdSet(&settled_ids, "infra kafka settled ids",
													sizeof(KafkaTxnId), sizeof(SettledEntry)),
									  &ids[i], HASH_ENTER, NULL);

		e->forget_at = InvalidXLogRecPtr;
	}
}

/*
 * The table outbox's ids come from this sequence (a table round's read
 * says so): settled ids of another one (an earlier install of the
 * extension) are not these rows'.
 */
void
KafkaTxnIdSpace(Oid seq)
{
	if (settled_seq != seq && settled_ids != NULL)
	{
		ereport(LOG,
				(errmsg("infra worker ignores %ld table-outbox ids of the Kafka progress: they come from another install of the extension",
						hash_get_num_entries(settled_ids))));
		hash_destroy(settled_ids);
		settled_ids = NULL;
	}
	settled_seq = seq;
}

/* Is this table-outbox message in Kafka already (KafkaTxnSettled)? */
bool
KafkaTxnIsSettled(int64 id, TimeLineID tli)
{
	KafkaTxnId	key = {.id = id,.tli = tli,.zero = 0};

	return settled_ids != NULL && hash_search(settled_ids, &key, HASH_FIND, NULL) != NULL;
}

/*
 * A round's settle committed: its rows are gone or rewritten without these
 * ids (n < 0: the outbox table is empty: all of them).  The worker commits
 * asynchronously: a crash could still bring the rows back, so the ids go
 * once the WAL is flushed past done (KafkaTxnPurge).
 */
void
KafkaTxnForget(const KafkaTxnId *ids, int n, XLogRecPtr done)
{
	SettledEntry *e;
	int			i;

	if (settled_ids == NULL)
		return;
	if (n < 0)
	{
		HASH_SEQ_STATUS seq;

		hash_seq_init(&seq, settled_ids);
		while ((e = hash_seq_search(&seq)) != NULL)
			if (XLogRecPtrIsInvalid(e->forget_at))
				e->forget_at = done;
		return;
	}
	for (i = 0; i < n; i++)
		if ((e = hash_search(settled_ids, &ids[i], HASH_FIND, NULL)) != NULL &&
			XLogRecPtrIsInvalid(e->forget_at))
			e->forget_at = done;
}

/* Let go of the ids whose rows' delete is durable now. */
static void
KafkaTxnPurge(void)
{
	XLogRecPtr	flushed = GetFlushRecPtr(NULL);
	HASH_SEQ_STATUS seq;
	SettledEntry *e;

	if (settled_ids == NULL)
		return;
	hash_seq_init(&seq, settled_ids);
	while ((e = hash_seq_search(&seq)) != NULL)
		if (!XLogRecPtrIsInvalid(e->forget_at) && e->forget_at <= flushed)
			(void) hash_search(settled_ids, &e->key, HASH_REMOVE, NULL);
}

static int
KafkaTxnIdCmp(const void *a, const void *b)
{
	const KafkaTxnId *x = a;
	const KafkaTxnId *y = b;

	if (x->tli != y->tli)
		return x->tli < y->tli ? -1 : 1;
	return x->id < y->id ? -1 : x->id > y->id;
}

/*
 * , "seq": OID, "ids": "T:a-b,c;T2:d" for settled_ids and ids (by the
 * timeline they were allocated on, ranges of consecutive ids), or nothing
 * when both are empty.
 */
static void
KafkaTxnAppendIds(StringInfo buf, const KafkaTxnId *ids, int nids)
{
	long		nsettled;
	KafkaTxnId *all;
	int			n = 0;
	int			i;

	KafkaTxnPurge();
	nsettled = settled_ids ? hash_get_num_entries(settled_ids) : 0;
	if (nsettled + nids == 0)
		return;
	all = palloc(sizeof(KafkaTxnId) * (nsettled + nids));
	if (nsettled > 0)
	{
		HASH_SEQ_STATUS seq;
		SettledEntry *e;

		hash_seq_init(&seq, settled_ids);
		while ((e = hash_seq_search(&seq)) != NULL)
			all[n++] = e->key;
	}
	for (i = 0; i < nids; i++)
		all[n++] = ids[i];
	qsort(all, n, sizeof(KafkaTxnId), KafkaTxnIdCmp);
	appendStringInfo(buf, ", \"seq\": %u, \"ids\": \"", settled_seq);
	for (i = 0; i < n;)
	{
		int			j = i;

		while (j + 1 < n && all[j + 1].tli == all[i].tli && all[j + 1].id <= all[j].id + 1)
			j++;
		if (i == 0 || all[i - 1].tli != all[i].tli)
			appendStringInfo(buf, "%s%u:", i > 0 ? ";" : "", all[i].tli);
		else
			appendStringInfoChar(buf, ',');
		appendStringInfo(buf, INT64_FORMAT, all[i].id);
		if (all[j].id != all[i].id)
			appendStringInfo(buf, "-" INT64_FORMAT, all[j].id);
		i = j + 1;
	}
	appendStringInfoChar(buf, '"');
	pfree(all);
}

bool
KafkaTxnIsDead(int64 id)
{
	return dead_ids != NULL && hash_search(dead_ids, &id, HASH_FIND, NULL) != NULL;
}

/*
 * kafka_stats' transaction counters (this database's entry); txn_began_at
 * is when the oldest transaction open began (0: none).
 */
static void
KafkaTxnNoteOpen(void)
{
	KafkaStats *stats = KafkaMyStats();
	TimestampTz oldest = 0;
	int			i;

	for (i = 0; i < KAFKA_TXN_PRODUCERS; i++)
		if (txn_open[i] && (oldest == 0 || txn_began[i] < oldest))
			oldest = txn_began[i];
	SpinLockAcquire(&stats->mutex);
	stats->txn_began_at = oldest;
	SpinLockRelease(&stats->mutex);
}

static void
KafkaTxnNoteEnd(bool committed, XLogRecPtr progress)
{
	KafkaStats *stats = KafkaMyStats();

	KafkaTxnNoteOpen();
	SpinLockAcquire(&stats->mutex);
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
	stats->txn_fenced_total++;
	SpinLockRelease(&stats->mutex);
}
