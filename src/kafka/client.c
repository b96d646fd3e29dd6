/*-------------------------------------------------------------------------
 *
 * client.c
 *		The worker's librdkafka producer: its handle, its callbacks and what
 *		they report.
 *
 * One long-lived idempotent producer (enable.idempotence, acks=all) per
 * worker, built from the settings of config.c and rebuilt (after a drain)
 * when a reload changes them.  With exactly once, KAFKA_TXN_PRODUCERS
 * transactional producers instead, taking rounds in turn (txn.c says why);
 * the calls below act on the current one (KafkaUseProducer), polls serve
 * them all.  librdkafka runs its own threads; none of
 * them calls PostgreSQL.  Delivery reports, errors, log lines and
 * statistics are delivered by rd_kafka_poll() on the worker's own thread
 * and only fill plain C structures; KafkaPoll() then reports the log lines
 * through PostgreSQL and KafkaAbsorbStats() parses the statistics into
 * kafka_stats (broker state, produce latency).
 *
 * It also keeps the producer's topic handles (asking for a new topic's
 * metadata at once) and the database's entry of the shared Kafka counters
 * (kafka.c's KafkaStats: state, last error, why the outbox waits), whose
 * spinlock it takes only to copy a few fields in or out.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "kafka/client.h"
#include "kafka/config.h"

/* How long a message may wait for the broker before it counts as failed. */
#define KAFKA_MESSAGE_TIMEOUT_MS "10000"

/*
 * librdkafka statistics every 5 s: the source of kafka_stats' produce
 * latency.  While a producer exists the idle worker polls it this often.
 */
#define KAFKA_STATS_INTERVAL_MS "5000"

/*
 * A Kafka transaction left open (a worker killed) holds back every
 * read_committed consumer of its partitions until the coordinator aborts
 * it, this long after it began; a new worker aborts it at once.
 */
#define KAFKA_TRANSACTION_TIMEOUT_MS "60000"

/* Longest the worker waits for the brokers' metadata when it starts. */
#define KAFKA_PROBE_MS 3000

/* Most topics whose handles (and metadata) the producer keeps. */
#define KAFKA_MAX_KNOWN_TOPICS 10000

/* The producers (one, or KAFKA_TXN_PRODUCERS), and the one calls act on. */
static rd_kafka_t *producers[KAFKA_TXN_PRODUCERS];
static int	nproducers = 0;
static int	current = 0;

/*
 * Topics the producer has produced to, with their handles.  librdkafka looks
 * up the metadata of a topic new to it on a one-second timer, which would
 * hold up a topic's first messages that long; the worker asks for it at once
 * instead (once per topic and producer) and keeps the handle.
 */
typedef struct KnownTopic
{
	char		name[256];		/* hash key; Kafka names have <= 249 chars */
	rd_kafka_topic_t *rkt;
} KnownTopic;

static HTAB *known_topics[KAFKA_TXN_PRODUCERS];

/*
 * The latest statistics JSON from librdkafka (malloc'd), handed from the
 * callback to the worker's code, which parses it outside librdkafka.
 */
static char *latest_stats = NULL;

/* This database's entry of the shared Kafka counters. */
static KafkaStats *my_stats = NULL;

static char *producer_settings = NULL;	/* brokers + config it was built with */
static uint64 producer_generation = 0;	/* producers made so far */
static char last_client_error[KAFKA_ERROR_LEN];

/* librdkafka's log lines, kept by its callback until the poll returns. */
#define KAFKA_LOG_LINES 64
typedef struct ClientLogLine
{
	int			level;			/* syslog level */
	char		text[512];
} ClientLogLine;
static ClientLogLine client_logs[KAFKA_LOG_LINES];
static int	nclient_logs = 0;
static int	dropped_client_logs = 0;

static void KafkaDeliveryReport(rd_kafka_t *rk, const rd_kafka_message_t *msg,
								void *opaque);
static void KafkaErrorCallback(rd_kafka_t *rk, int err, const char *reason,
							   void *opaque);
static void KafkaLogCallback(const rd_kafka_t *rk, int level, const char *fac,
							 const char *buf);
static void KafkaReportClientLogs(void);
static int	KafkaStatsCallback(rd_kafka_t *rk, char *json, size_t json_len, void *opaque);
static void KafkaProbeBrokers(void);
static bool KafkaJsonIs(JsonbContainer *object, const char *key, const char *value);
static void KafkaNoteBrokers(int known, int up);
static rd_kafka_t *KafkaMakeProducer(int which);

/*
 * This database's entry of the shared Kafka counters, claimed on first use.
 */
KafkaStats *
KafkaMyStats(void)
{
	if (my_stats == NULL)
		my_stats = KafkaStatsFor(MyDatabaseId, true);
	return my_stats;
}

/*
 * Which set of producers this is (one more each time they are made):
 * state kept for them (their transactions) is known stale by it.
 */
uint64
KafkaProducerGeneration(void)
{
	return producer_generation;
}

/*
 * The current producer (NULL until KafkaEnsureProducer has built them).
 */
rd_kafka_t *
KafkaProducer(void)
{
	return nproducers > 0 ? producers[current] : NULL;
}

/* How many producers there are (0 before KafkaEnsureProducer). */
int
KafkaProducerCount(void)
{
	return nproducers;
}

/*
 * Make producer `which` the one KafkaProducer, KafkaTopic and KafkaPoll's
 * wait act on.
 */
void
KafkaUseProducer(int which)
{
	if (which >= 0 && which < nproducers)
		current = which;
}

/*
 * The last client-level error librdkafka reported ("" when none since the
 * last clear): a failed round's error says it too.
 */
const char *
KafkaClientError(void)
{
	return last_client_error;
}

void
KafkaClientErrorClear(void)
{
	last_client_error[0] = '\0';
}

/*
 * Delivery report: runs inside rd_kafka_poll() on the worker's thread.
 */
static void
KafkaDeliveryReport(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	KafkaReport *report = (KafkaReport *) msg->_private;

	if (report == NULL)
		return;
	report->reported = true;
	report->err = msg->err;
}

/*
 * librdkafka's own log lines (log.queue = true, forwarded to the main
 * queue): the callback runs inside rd_kafka_poll() on the worker's thread
 * and only keeps the line; KafkaPoll() reports what was kept through
 * PostgreSQL's logging (so into log_json too) once the poll has returned.
 */
static void
KafkaLogCallback(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
	ClientLogLine *line;

	if (nclient_logs >= KAFKA_LOG_LINES)
	{
		dropped_client_logs++;
		return;
	}
	line = &client_logs[nclient_logs++];
	line->level = level;
	snprintf(line->text, sizeof(line->text), "%s: %s", fac, buf);
}

/*
 * Report the kept librdkafka lines: syslog levels 0-4 (emergency to
 * warning) as WARNING, 5 (notice) as LOG, 6 (info) as DEBUG1 and 7 (debug)
 * as DEBUG2.
 */
static void
KafkaReportClientLogs(void)
{
	int			i;

	for (i = 0; i < nclient_logs; i++)
	{
		int			level = client_logs[i].level;
		int			elevel = level <= 4 ? WARNING : level == 5 ? LOG : level == 6 ? DEBUG1 : DEBUG2;

		ereport(elevel,
				(errmsg("librdkafka %s", client_logs[i].text)));
	}
	nclient_logs = 0;
	if (dropped_client_logs > 0)
	{
		ereport(LOG,
				(errmsg("librdkafka wrote %d more lines the infra worker did not keep",
						dropped_client_logs)));
		dropped_client_logs = 0;
	}
}

/*
 * rd_kafka_poll of every producer (the current one waits up to
 * timeout_ms), then the librdkafka lines it served.
 */
void
KafkaPoll(int timeout_ms)
{
	int			i;

	for (i = 0; i < nproducers; i++)
		if (i != current)
			rd_kafka_poll(producers[i], 0);
	if (nproducers > 0)
		rd_kafka_poll(producers[current], timeout_ms);
	KafkaReportClientLogs();
}

/*
 * Client-level errors (broker down, authentication): runs inside
 * rd_kafka_poll() too; only remembered here.
 */
static void
KafkaErrorCallback(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
	snprintf(last_client_error, sizeof(last_client_error), "%s: %s",
			 rd_kafka_err2name((rd_kafka_resp_err_t) err), reason);
}

/*
 * Errors no retry can cure: the message goes to infra.kafka_dead_letters
 * and the rest of the outbox moves on.
 */
bool
KafkaErrorIsPermanent(rd_kafka_resp_err_t err)
{
	switch (err)
	{
		case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
		case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
		case RD_KAFKA_RESP_ERR__INVALID_ARG:
		case RD_KAFKA_RESP_ERR_INVALID_RECORD:
		case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
		case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
		case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
			return true;
		default:
			return false;
	}
}

void
KafkaRecordError(const char *message)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&my_stats->mutex);
	strlcpy(my_stats->last_error, message, KAFKA_ERROR_LEN);
	my_stats->last_error_at = now;
	SpinLockRelease(&my_stats->mutex);
}

void
KafkaSetState(const char *state)
{
	SpinLockAcquire(&my_stats->mutex);
	strlcpy(my_stats->broker_state, state, sizeof(my_stats->broker_state));
	SpinLockRelease(&my_stats->mutex);
}

/*
 * Why the outbox waits, for kafka_stats; NULL: it does not.
 */
void
KafkaSetWaiting(const char *why)
{
	SpinLockAcquire(&my_stats->mutex);
	strlcpy(my_stats->waiting_for, why ? why : "", sizeof(my_stats->waiting_for));
	SpinLockRelease(&my_stats->mutex);
}

/*
 * The transactional.id of producer `which` with infra.kafka_delivery =
 * exactly_once: "infra-<system identifier>-<database oid>-<which>", the
 * same across restarts and on a promoted standby (which has the primary's
 * system identifier), so that a new worker fences the one before it
 * wherever that one runs.  which < 0: the prefix alone.
 */
void
KafkaTransactionalId(char *buf, size_t len, int which)
{
	if (which < 0)
		snprintf(buf, len, "infra-" UINT64_FORMAT "-%u", GetSystemIdentifier(), MyDatabaseId);
	else
		snprintf(buf, len, "infra-" UINT64_FORMAT "-%u-%d", GetSystemIdentifier(), MyDatabaseId, which);
}

static bool
KafkaTransactionalConfigure(rd_kafka_conf_t *conf, int which, char *errbuf, size_t errlen)
{
	char		id[64];

	KafkaTransactionalId(id, sizeof(id), which);
	return rd_kafka_conf_set(conf, "transactional.id", id, errbuf, errlen) == RD_KAFKA_CONF_OK &&
		rd_kafka_conf_set(conf, "transaction.timeout.ms", KAFKA_TRANSACTION_TIMEOUT_MS,
						  errbuf, errlen) == RD_KAFKA_CONF_OK;
}

/*
 * The settings a producer is made with, as one string: a producer made
 * with others is replaced.
 */
static char *
KafkaProducerSettings(void)
{
	return psprintf("%s\n%s\n%d\n%d", infra_kafka_brokers,
					infra_kafka_config ? infra_kafka_config : "",
					infra_kafka_linger_ms, infra_kafka_delivery);
}

/*
 * Is there a producer, made with the settings in force?
 */
bool
KafkaProducerCurrent(void)
{
	char	   *settings;
	bool		current;

	if (nproducers == 0 || infra_kafka_brokers == NULL || infra_kafka_brokers[0] == '\0')
		return false;
	settings = KafkaProducerSettings();
	current = strcmp(settings, producer_settings) == 0;
	pfree(settings);
	return current;
}

/*
 * Have a producer built from the current settings.  A change of settings
 * (SIGHUP) drains the old producer before replacing it.  False when Kafka
 * is not configured.
 */
bool
KafkaEnsureProducer(void)
{
	char	   *settings;
	int			n = infra_kafka_delivery == KAFKA_DELIVERY_EXACTLY_ONCE ? KAFKA_TXN_PRODUCERS : 1;
	int			i;

	if (infra_kafka_brokers == NULL || infra_kafka_brokers[0] == '\0')
	{
		KafkaClientShutdown();
		KafkaSetState("not configured");
		return false;
	}
	settings = KafkaProducerSettings();
	if (nproducers > 0 && strcmp(settings, producer_settings) == 0)
	{
		pfree(settings);
		return true;
	}
	KafkaClientShutdown();
	for (i = 0; i < n; i++)
	{
		producers[i] = KafkaMakeProducer(i);
		if (producers[i] == NULL)
		{
			nproducers = i;
			KafkaClientShutdown();
			KafkaSetState("misconfigured");
			pfree(settings);
			return false;
		}
		nproducers = i + 1;
	}
	current = 0;
	producer_settings = MemoryContextStrdup(TopMemoryContext, settings);
	pfree(settings);
	producer_generation++;
	KafkaSetState("connecting");
	KafkaProbeBrokers();
	ereport(LOG,
			(errmsg("infra worker started %s for %s (librdkafka %s)",
					n == 1 ? "a Kafka producer" : psprintf("%d transactional Kafka producers", n),
					infra_kafka_brokers, rd_kafka_version_str())));
	return true;
}

/*
 * Producer `which`, made from the current settings (transactional with
 * exactly once; the first one also gives the statistics); NULL, the error
 * recorded, when it cannot be made.
 */
static rd_kafka_t *
KafkaMakeProducer(int which)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk;
	char		errbuf[512];
	char		linger[16];

	snprintf(linger, sizeof(linger), "%d", infra_kafka_linger_ms);
	if (rd_kafka_conf_set(conf, "bootstrap.servers", infra_kafka_brokers, errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "enable.idempotence", "true", errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "acks", "all", errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "linger.ms", linger, errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "message.timeout.ms", KAFKA_MESSAGE_TIMEOUT_MS, errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		(which == 0 &&
		 rd_kafka_conf_set(conf, "statistics.interval.ms", KAFKA_STATS_INTERVAL_MS, errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK) ||
		!KafkaConfigApply(conf, infra_kafka_config ? infra_kafka_config : "", errbuf, sizeof(errbuf)) ||
		(infra_kafka_delivery == KAFKA_DELIVERY_EXACTLY_ONCE &&
		 !KafkaTransactionalConfigure(conf, which, errbuf, sizeof(errbuf))))
	{
		rd_kafka_conf_destroy(conf);
		KafkaRecordError(errbuf);
		ereport(LOG,
				(errmsg("infra worker cannot configure the Kafka producer: %s", errbuf)));
		return NULL;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, KafkaDeliveryReport);
	rd_kafka_conf_set_error_cb(conf, KafkaErrorCallback);
	if (which == 0)
		rd_kafka_conf_set_stats_cb(conf, KafkaStatsCallback);
	rd_kafka_conf_set_log_cb(conf, KafkaLogCallback);
	(void) rd_kafka_conf_set(conf, "log.queue", "true", errbuf, sizeof(errbuf));

	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errbuf, sizeof(errbuf));
	if (rk == NULL)
	{
		KafkaRecordError(errbuf);
		ereport(LOG,
				(errmsg("infra worker cannot create the Kafka producer: %s", errbuf)));
		return NULL;
	}
	/* Its log lines come through rd_kafka_poll(), on this thread. */
	rd_kafka_set_log_queue(rk, NULL);
	return rk;
}

/*
 * Drain and destroy the producers (SIGHUP with new settings, exit).
 */
void
KafkaClientShutdown(void)
{
	int			i;

	if (nproducers == 0)
		return;
	for (i = 0; i < nproducers; i++)
		(void) rd_kafka_flush(producers[i], 5000);
	KafkaReportClientLogs();
	for (i = 0; i < nproducers; i++)
	{
		if (known_topics[i] != NULL)
		{
			HASH_SEQ_STATUS status;
			KnownTopic *t;

			hash_seq_init(&status, known_topics[i]);
			while ((t = hash_seq_search(&status)) != NULL)
				rd_kafka_topic_destroy(t->rkt);
			hash_destroy(known_topics[i]);
			known_topics[i] = NULL;
		}
		rd_kafka_destroy(producers[i]);
		producers[i] = NULL;
	}
	nproducers = 0;
	current = 0;
	if (latest_stats)
		free(latest_stats);
	latest_stats = NULL;
	if (producer_settings)
		pfree(producer_settings);
	producer_settings = NULL;
}

/*
 * The current producer's handle of a topic; the first time, its metadata is asked
 * for and awaited (up to a second), so that its first messages go at once.
 * Past KAFKA_MAX_KNOWN_TOPICS the handle is *temporary: the caller destroys
 * it after use.
 */
rd_kafka_topic_t *
KafkaTopic(const char *name, bool *temporary)
{
	rd_kafka_t *producer = KafkaProducer();
	KnownTopic *t;
	bool		found;

	*temporary = false;
	if (known_topics[current] == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(((KnownTopic *) NULL)->name);
		ctl.entrysize = sizeof(KnownTopic);
		known_topics[current] = hash_create("infra kafka topics", 64, &ctl, HASH_ELEM | HASH_STRINGS);
	}
	t = strlen(name) < sizeof(t->name) ? hash_search(known_topics[current], name, HASH_FIND, NULL) : NULL;
	if (t != NULL)
		return t->rkt;
	if (strlen(name) >= sizeof(t->name) ||
		hash_get_num_entries(known_topics[current]) >= KAFKA_MAX_KNOWN_TOPICS)
	{
		*temporary = true;
		return rd_kafka_topic_new(producer, name, NULL);
	}
	t = hash_search(known_topics[current], name, HASH_ENTER, &found);
	t->rkt = rd_kafka_topic_new(producer, name, NULL);
	{
		const struct rd_kafka_metadata *md;

		/* A failure here only means the usual, slower lookup. */
		if (rd_kafka_metadata(producer, 0, t->rkt, &md, 1000) == RD_KAFKA_RESP_ERR_NO_ERROR)
			rd_kafka_metadata_destroy(md);
	}
	return t->rkt;
}

/*
 * stats_cb: keep the JSON for the worker (librdkafka frees it when we
 * return 0).  It runs inside rd_kafka_poll() on the worker's thread, but
 * parsing may raise an error, which must not unwind through librdkafka.
 */
static int
KafkaStatsCallback(rd_kafka_t *rk, char *json, size_t json_len, void *opaque)
{
	char	   *copy = malloc(json_len + 1);

	if (copy == NULL)
		return 0;
	memcpy(copy, json, json_len);
	copy[json_len] = '\0';
	if (latest_stats)
		free(latest_stats);
	latest_stats = copy;
	return 0;
}

/* Member key of a JSON object; NULL when absent. */
static JsonbValue *
KafkaJsonMember(JsonbContainer *object, const char *key)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(object, JB_FOBJECT, &k);
}

/* The number at path a.b (at a when b is NULL) of a JSON object; -1 when absent. */
static double
KafkaJsonNumber(JsonbContainer *object, const char *a, const char *b)
{
	JsonbValue *v = KafkaJsonMember(object, a);

	if (v != NULL && b != NULL)
		v = v->type == jbvBinary ? KafkaJsonMember(v->val.binary.data, b) : NULL;
	if (v == NULL || v->type != jbvNumeric)
		return -1;
	return DatumGetFloat8(DirectFunctionCall1(numeric_float8, NumericGetDatum(v->val.numeric)));
}

/*
 * Ask the brokers for their metadata (at most KAFKA_PROBE_MS): broker_state
 * says up from the start when they answer, instead of "connecting" until
 * the first message.  Later, the statistics keep it true while idle.
 */
static void
KafkaProbeBrokers(void)
{
	const struct rd_kafka_metadata *metadata = NULL;

	if (rd_kafka_metadata(producers[0], 0, NULL, &metadata, KAFKA_PROBE_MS) == RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		if (metadata->broker_cnt > 0)
			KafkaSetState("up");
		rd_kafka_metadata_destroy(metadata);
	}
}

/*
 * Is object's member key the string value?
 */
static bool
KafkaJsonIs(JsonbContainer *object, const char *key, const char *value)
{
	JsonbValue *v = KafkaJsonMember(object, key);

	return v != NULL && v->type == jbvString &&
		v->val.string.len == (int) strlen(value) &&
		memcmp(v->val.string.val, value, v->val.string.len) == 0;
}

/*
 * What the producer's connections say, for broker_state while no round
 * reports: up when a broker is connected, down when every broker it knows
 * is not.  A state a round set from its outcome (failing, breaker open) or
 * a configuration problem stays until the next round.
 */
static void
KafkaNoteBrokers(int known, int up)
{
	const char *state = NULL;

	if (my_stats == NULL)
		return;
	SpinLockAcquire(&my_stats->mutex);
	if (up > 0 && (strcmp(my_stats->broker_state, "connecting") == 0 ||
				   strcmp(my_stats->broker_state, "down") == 0))
		state = "up";
	else if (known > 0 && up == 0 && (strcmp(my_stats->broker_state, "up") == 0 ||
									  strcmp(my_stats->broker_state, "connecting") == 0))
		state = "down";
	if (state != NULL)
		strlcpy(my_stats->broker_state, state, sizeof(my_stats->broker_state));
	SpinLockRelease(&my_stats->mutex);
}

/*
 * Read the latest statistics into kafka_stats: the produce latency of the
 * busiest broker, librdkafka's queueing (int_latency) plus the broker's
 * round trip (rtt), average and 99th percentile over the last interval
 * (windows without requests leave the previous figures), and whether a
 * broker is connected (KafkaNoteBrokers).
 */
void
KafkaAbsorbStats(void)
{
	char	   *json = latest_stats;

	if (json == NULL || my_stats == NULL)
		return;
	latest_stats = NULL;
	PG_TRY();
	{
		Jsonb	   *root = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json)));
		JsonbValue	k;
		JsonbValue *brokers;
		double		best_cnt = 0;
		double		avg = 0;
		double		p99 = 0;
		int			known = 0;
		int			up = 0;

		k.type = jbvString;
		k.val.string.val = "brokers";
		k.val.string.len = strlen("brokers");
		brokers = findJsonbValueFromContainer(&root->root, JB_FOBJECT, &k);
		if (brokers != NULL && brokers->type == jbvBinary)
		{
			JsonbIterator *it = JsonbIteratorInit(brokers->val.binary.data);
			JsonbValue	v;
			JsonbIteratorToken tok;

			/* Top-level values of "brokers" only: skip nested content. */
			while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
			{
				double		cnt;

				if (tok != WJB_VALUE || v.type != jbvBinary)
					continue;
				/* Bootstrap entries have node id -1; real brokers do not. */
				if (KafkaJsonNumber(v.val.binary.data, "nodeid", NULL) >= 0)
				{
					known++;
					up += KafkaJsonIs(v.val.binary.data, "state", "UP");
				}
				cnt = KafkaJsonNumber(v.val.binary.data, "rtt", "cnt");
				if (cnt <= best_cnt)
					continue;
				best_cnt = cnt;
				avg = (Max(KafkaJsonNumber(v.val.binary.data, "int_latency", "avg"), 0) +
					   Max(KafkaJsonNumber(v.val.binary.data, "rtt", "avg"), 0)) / 1000.0;
				p99 = (Max(KafkaJsonNumber(v.val.binary.data, "int_latency", "p99"), 0) +
					   Max(KafkaJsonNumber(v.val.binary.data, "rtt", "p99"), 0)) / 1000.0;
			}
		}
		KafkaNoteBrokers(known, up);
		if (best_cnt > 0)
		{
			SpinLockAcquire(&my_stats->mutex);
			my_stats->latency_avg_ms = avg;
			my_stats->latency_p99_ms = p99;
			my_stats->latency_at = GetCurrentTimestamp();
			SpinLockRelease(&my_stats->mutex);
		}
	}
	PG_CATCH();
	{
		/* Unreadable statistics only leave the figures as they were. */
		FlushErrorState();
	}
	PG_END_TRY();
	free(json);
}
