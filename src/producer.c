/*-------------------------------------------------------------------------
 *
 * producer.c
 *		The infra worker's Kafka producer: outbox rows to Kafka.
 *
 * One long-lived idempotent producer (enable.idempotence, acks=all) per
 * worker.  A round (KafkaWorkerServe) goes through named steps: read a
 * batch of outbox rows in id order (its own transaction, which also tells
 * whether registered topics wait to be created: then they are, before
 * anything is produced), produce them and wait for every delivery report,
 * classify the reports, settle (delete the rows Kafka acknowledged, rewrite
 * partly delivered ones, record the error of the others, move dead letters;
 * a second transaction) and account (kafka_stats, backoff): a row leaves
 * the outbox only once it is in Kafka.  Each message
 * carries the header infra-msg-id (system identifier / database oid / outbox
 * id), the same for every attempt, so that consumers can drop duplicates.
 *
 * librdkafka runs its own threads; none of them calls PostgreSQL.  Delivery
 * reports and errors are delivered by rd_kafka_poll() on the worker's own
 * thread and only fill plain C structures.
 *
 * It owns the producer's settings (infra.kafka_brokers, infra.kafka_config,
 * whose value it keeps out of every log line, infra.kafka_batch_size,
 * infra.kafka_linger_ms) and registers itself as a service of the infra
 * worker (worker.h); the outbox it reads and the counters it keeps belong
 * to kafka.c.
 *
 * This is the only file that includes rdkafka.h.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <librdkafka/rdkafka.h>

#include "lib/stringinfo.h"
#include "storage/fd.h"
#include "access/transam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "breaker.h"
#include "clock.h"
#include "infra.h"
#include "kafka.h"
#include "producer.h"
#include "spicheck.h"
#include "standbys.h"
#include "worker.h"

/* How long a message may wait for the broker before it counts as failed. */
#define KAFKA_MESSAGE_TIMEOUT_MS "10000"

/* Most key and value bytes one round reads (at least one row is read). */
#define KAFKA_BATCH_BYTES (16 * 1024 * 1024)

/*
 * librdkafka statistics every 5 s: the source of kafka_stats' produce
 * latency.  While a producer exists the idle worker polls it this often.
 */
#define KAFKA_STATS_INTERVAL_MS "5000"
#define KAFKA_IDLE_POLL_MS 5000
/* Waiting for standbys: this long within a round, then this long apart. */
#define KAFKA_STANDBY_WAIT_MS 200
#define KAFKA_STANDBY_RETRY_MS 20

/* Longest the worker waits for the brokers' metadata when it starts. */
#define KAFKA_PROBE_MS 3000

/* Most topics whose handles (and metadata) the producer keeps. */
#define KAFKA_MAX_KNOWN_TOPICS 10000

/* Backoff after a round with failures: 1 s doubling to 30 s. */
#define KAFKA_RETRY_MIN_MS 1000
#define KAFKA_RETRY_MAX_MS 30000

/* One outbox message on its way. */
typedef struct OutboxMessage
{
	int64		id;
	int			row;			/* its row in the round */
	int			index;			/* its place in that row's arrays */
	bool		reported;
	bool		dead;
	rd_kafka_resp_err_t err;
} OutboxMessage;

/* One row of infra.kafka_outbox_batches, unpacked. */
typedef struct OutboxRow
{
	int64		first_id;
	int			nmsgs;
	Datum	   *ids;
	Datum	   *topics;
	Datum	   *partitions;
	Datum	   *keys;
	Datum	   *vals;
	Datum	   *headers;
	bool	   *pnulls;
	bool	   *knulls;
	bool	   *vnulls;
	bool	   *hnulls;
	TimestampTz created_at;
	int			attempts;
	int32		timeline;		/* its ids' timeline; 0: written before 1.1 */
	bool	   *keep;			/* still in the outbox after this round */
	bool		failed;			/* a message of it failed (retriably) */
} OutboxRow;

/* One delivery round, from its read to its accounting. */
typedef struct KafkaRound
{
	OutboxRow  *rows;			/* the rows read; nincluded of them go */
	int			nincluded;
	int			total;			/* messages in the included rows */
	int64		cut;			/* first id of the first row left out */
	XLogRecPtr	async_commit_lsn;	/* how far asynchronous commits of its rows reach */
	OutboxMessage *messages;	/* what goes now, in id order */
	int			n;
	int			nok;			/* delivered */
	int			nbad;			/* failed, to retry */
	int			ndead;			/* refused for good: dead letters */
	char		first_error[KAFKA_ERROR_LEN];
	int64		start_ns;		/* when producing began */
	bool		topics_pending; /* infra.topics has some to create */
} KafkaRound;

static rd_kafka_t *producer = NULL;

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

static HTAB *known_topics = NULL;

/*
 * The latest statistics JSON from librdkafka (malloc'd), handed from the
 * callback to the worker's code, which parses it outside librdkafka.
 */
static char *latest_stats = NULL;

/*
 * Memory of one round.  The messages array is librdkafka's opaque for the
 * delivery reports, so it must outlive the SPI calls of the round.
 */
static MemoryContext round_context = NULL;

/* This database's entry of the shared Kafka counters. */
static KafkaStats *my_stats = NULL;

/* The worker's statements, planned once (per extension install). */
typedef struct WorkerPlans
{
	SPIPlanPtr	pending_topics;
	SPIPlanPtr	any_pending_topic;
	SPIPlanPtr	batch;
	SPIPlanPtr	delete_delivered;
	SPIPlanPtr	dead_letter;
	SPIPlanPtr	record_failure;
	SPIPlanPtr	rewrite;
} WorkerPlans;

static WorkerPlans plans;

/* What the round's read of the outbox returns. */
static const Oid batch_types[12] = {INT8OID, BOOLOID, INT8ARRAYOID, TEXTARRAYOID,
	INT4ARRAYOID, BYTEAARRAYOID, BYTEAARRAYOID, JSONBARRAYOID, TIMESTAMPTZOID, INT4OID, INT4OID, XIDOID};
static char *producer_settings = NULL;	/* brokers + config it was built with */
static int	failed_rounds = 0;
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

static bool KafkaConfigApply(rd_kafka_conf_t *conf, const char *value,
							 char *errbuf, size_t errlen);
static bool KafkaConfigValid(const char *value, char *errbuf, size_t errlen);
static bool KafkaConfigCheckHook(char **newval, void **extra, GucSource source);
static const char *KafkaConfigShowHook(void);
static bool KafkaNamesConfig(const char *text);
static void KafkaHideConfigInLog(ErrorData *edata);
static long KafkaWorkerServe(void);
static void KafkaWorkerShutdown(void);
static void KafkaDeliveryReport(rd_kafka_t *rk, const rd_kafka_message_t *msg,
								void *opaque);
static void KafkaErrorCallback(rd_kafka_t *rk, int err, const char *reason,
							   void *opaque);
static void KafkaLogCallback(const rd_kafka_t *rk, int level, const char *fac,
							 const char *buf);
static void KafkaReportClientLogs(void);
static void KafkaPoll(int timeout_ms);
static bool KafkaEnsureProducer(void);
static int	KafkaStatsCallback(rd_kafka_t *rk, char *json, size_t json_len, void *opaque);
static void KafkaAbsorbStats(void);
static void KafkaProbeBrokers(void);
static bool KafkaJsonIs(JsonbContainer *object, const char *key, const char *value);
static void KafkaNoteBrokers(int known, int up);
static rd_kafka_topic_t *KafkaTopic(const char *name, bool *temporary);
static bool KafkaErrorIsPermanent(rd_kafka_resp_err_t err);
static SPIPlanPtr KafkaPlan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes);
static void KafkaExec(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes, Datum *args,
					  const char *nulls, bool read_only, int expected, const char *what,
					  int ncols, const Oid *types);
static void KafkaDescribeTopics(rd_kafka_NewTopic_t **topics, int n);
static void KafkaRecordTopicResults(rd_kafka_event_t *event);
static void KafkaEndTransaction(void);
static bool KafkaAnyPendingTopic(void);
static void KafkaCreateRegisteredTopics(void);
static void KafkaRecordError(const char *message);
static void KafkaSetState(const char *state);
static void KafkaSetWaiting(const char *why);
static bool KafkaCommitsDurable(XLogRecPtr async_commit_lsn);
static int64 KafkaPendingAfterRound(bool rows_left_out, int64 kept);

char	   *infra_kafka_brokers = NULL;
char	   *infra_kafka_config = NULL;
int			infra_kafka_batch_size = 10000;
int			infra_kafka_linger_ms = 1;

static emit_log_hook_type prev_emit_log_hook = NULL;

/* Run by the infra worker of each database, once infra is installed there. */
static const InfraWorkerService producer_service = {
	.name = "kafka producer",
	.kind = INFRA_WORKER_DELIVERY,
	.serve = KafkaWorkerServe,
	.shutdown = KafkaWorkerShutdown,
};

/*
 * Define the producer's settings, keep infra.kafka_config out of the log,
 * and become a service of the infra worker.
 */
void
InfraProducerInit(void)
{
	DefineCustomStringVariable("infra.kafka_brokers",
							   "Kafka bootstrap servers (host:port, comma-separated); empty disables producing.",
							   "Messages queue in infra.kafka_outbox until brokers are set.",
							   &infra_kafka_brokers,
							   "",
							   PGC_SIGHUP, 0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("infra.kafka_config",
							   "librdkafka properties for the producer: key=value pairs separated by semicolons, or @file to read them from a file.",
							   "Checked with librdkafka when set, never shown. Keep secrets in a file: PostgreSQL logs changed settings.",
							   &infra_kafka_config,
							   "",
							   PGC_SIGHUP, GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL,
							   KafkaConfigCheckHook, NULL, KafkaConfigShowHook);
	DefineCustomIntVariable("infra.kafka_batch_size",
							"Outbox rows the worker produces per round (at most 16 MB of keys and values).",
							NULL,
							&infra_kafka_batch_size,
							10000, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("infra.kafka_linger_ms",
							"librdkafka linger.ms: how long the producer waits to fill a request.",
							NULL,
							&infra_kafka_linger_ms,
							1, 0, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = KafkaHideConfigInLog;
	InfraWorkerRegisterService(&producer_service);
}

/*
 * check_hook of infra.kafka_config: every property must be one librdkafka
 * accepts.  A bad value at reload is refused, so the producer keeps the
 * configuration it has.
 */
static bool
KafkaConfigCheckHook(char **newval, void **extra, GucSource source)
{
	char		errbuf[512];

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (KafkaConfigValid(*newval, errbuf, sizeof(errbuf)))
		return true;
	/* Not PostgreSQL's own message: it would quote the value. */
	GUC_check_errmsg("invalid value for parameter \"infra.kafka_config\"");
	GUC_check_errdetail("%s", errbuf);
	GUC_check_errhint("Give librdkafka producer properties as key=value pairs separated by semicolons, or @file.");
	return false;
}

/*
 * Does text name infra.kafka_config (in any letter case)?
 */
static bool
KafkaNamesConfig(const char *text)
{
	const char *p;

	for (p = text; *p != '\0'; p++)
		if (pg_strncasecmp(p, "kafka_config", strlen("kafka_config")) == 0)
			return true;
	return false;
}

/*
 * emit_log_hook: PostgreSQL logs the new value of every setting a reload
 * changes; for infra.kafka_config, which may hold passwords, only that it
 * changed.  A statement naming it is logged neither by log_statement nor
 * as an error's STATEMENT line.  Installed before infra's JSON log hook,
 * so its lines carry the hidden text too.
 */
static void
KafkaHideConfigInLog(ErrorData *edata)
{
	if (edata->message_id != NULL && edata->message != NULL &&
		strcmp(edata->message_id, "parameter \"%s\" changed to \"%s\"") == 0 &&
		strstr(edata->message, "\"infra.kafka_config\"") != NULL)
		edata->message = pstrdup("parameter \"infra.kafka_config\" changed to \"(hidden)\"");
	/*
	 * A statement naming it (ALTER SYSTEM SET infra.kafka_config = '...'):
	 * neither log_statement's line nor an error's STATEMENT line shows it.
	 */
	if (debug_query_string != NULL && KafkaNamesConfig(debug_query_string))
	{
		edata->hide_stmt = true;
		if (edata->message_id != NULL && edata->message != NULL &&
			(strstr(edata->message_id, "statement: ") != NULL ||
			 strncmp(edata->message_id, "execute ", 8) == 0) &&
			KafkaNamesConfig(edata->message))
			edata->message = pstrdup("statement: (hidden: it names infra.kafka_config)");
	}
	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
}

/*
 * show_hook of infra.kafka_config: it may hold passwords.
 */
static const char *
KafkaConfigShowHook(void)
{
	return (infra_kafka_config && infra_kafka_config[0]) ? "(hidden)" : "";
}

/*
 * librdkafka quotes a refused value in its message ("Invalid value \"...\"
 * for configuration property ..."); the value may be a secret.  Replace
 * every copy of value in message (a buffer of size bytes) with "(hidden)".
 */
static void
KafkaHideValue(char *message, size_t size, const char *value)
{
	StringInfoData buf;
	size_t		len = strlen(value);
	const char *p = message;
	const char *hit;

	if (len == 0)
		return;
	initStringInfo(&buf);
	while ((hit = strstr(p, value)) != NULL)
	{
		appendBinaryStringInfo(&buf, p, hit - p);
		appendStringInfoString(&buf, "(hidden)");
		p = hit + len;
	}
	appendStringInfoString(&buf, p);
	strlcpy(message, buf.data, size);
	pfree(buf.data);
}

/*
 * Apply "key=value; key=value" to conf.  False, with the reason in errbuf,
 * at the first property librdkafka refuses (values are never copied into
 * the reason: they may be secrets).
 */
static bool
KafkaConfigApply(rd_kafka_conf_t *conf, const char *value, char *errbuf,
				 size_t errlen)
{
	char	   *copy;
	char	   *item;
	char	   *save = NULL;
	int			position = 0;

	/*
	 * "@path": the properties are in that file, one per line or separated
	 * by semicolons.  PostgreSQL logs every changed setting on reload, so
	 * secrets belong in a file only the server can read.
	 */
	if (value[0] == '@')
	{
		FILE	   *file = AllocateFile(value + 1, "r");
		StringInfoData buf;
		char		line[1024];

		if (file == NULL)
		{
			snprintf(errbuf, errlen, "Cannot read file \"%s\": %m.", value + 1);
			return false;
		}
		initStringInfo(&buf);
		while (fgets(line, sizeof(line), file) != NULL)
		{
			char	   *p = line + strspn(line, " \t");

			if (*p == '#')
				continue;
			appendStringInfo(&buf, "%s;", p);
		}
		FreeFile(file);
		copy = buf.data;
	}
	else
		copy = pstrdup(value);

	for (item = strtok_r(copy, ";\n\r", &save); item != NULL;
		 item = strtok_r(NULL, ";\n\r", &save))
	{
		char	   *eq = strchr(item, '=');
		char	   *name = item;
		char	   *val;
		char		rkerr[256];

		position++;
		while (*name == ' ' || *name == '\t' || *name == '\n')
			name++;
		if (*name == '\0')
			continue;
		if (eq == NULL)
		{
			/* The text may be a password that lost its "name=". */
			snprintf(errbuf, errlen, "Property %d has no \"=\".", position);
			return false;
		}
		*eq = '\0';
		val = eq + 1;
		while (eq > name && (eq[-1] == ' ' || eq[-1] == '\t'))
			*--eq = '\0';
		while (*val == ' ' || *val == '\t')
			val++;
		if (rd_kafka_conf_set(conf, name, val, rkerr, sizeof(rkerr)) != RD_KAFKA_CONF_OK)
		{
			KafkaHideValue(rkerr, sizeof(rkerr), val);
			snprintf(errbuf, errlen, "librdkafka refused property \"%s\": %s", name, rkerr);
			return false;
		}
	}
	pfree(copy);
	return true;
}

/*
 * Is value a configuration librdkafka accepts?  Used by the GUC check hook;
 * no producer is created, nothing talks to the network.
 */
static bool
KafkaConfigValid(const char *value, char *errbuf, size_t errlen)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	bool		ok = KafkaConfigApply(conf, value, errbuf, errlen);

	rd_kafka_conf_destroy(conf);
	return ok;
}

/*
 * Delivery report: runs inside rd_kafka_poll() on the worker's thread.
 */
static void
KafkaDeliveryReport(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	OutboxMessage *m = (OutboxMessage *) msg->_private;

	if (m == NULL)
		return;
	m->reported = true;
	m->err = msg->err;
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
 * rd_kafka_poll, then the librdkafka lines it served.
 */
static void
KafkaPoll(int timeout_ms)
{
	rd_kafka_poll(producer, timeout_ms);
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
static bool
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

static void
KafkaRecordError(const char *message)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&my_stats->mutex);
	strlcpy(my_stats->last_error, message, KAFKA_ERROR_LEN);
	my_stats->last_error_at = now;
	SpinLockRelease(&my_stats->mutex);
}

static void
KafkaSetState(const char *state)
{
	SpinLockAcquire(&my_stats->mutex);
	strlcpy(my_stats->broker_state, state, sizeof(my_stats->broker_state));
	SpinLockRelease(&my_stats->mutex);
}

/*
 * Why the outbox waits, for kafka_stats; NULL: it does not.
 */
static void
KafkaSetWaiting(const char *why)
{
	SpinLockAcquire(&my_stats->mutex);
	strlcpy(my_stats->waiting_for, why ? why : "", sizeof(my_stats->waiting_for));
	SpinLockRelease(&my_stats->mutex);
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
 * Have a producer built from the current settings.  A change of settings
 * (SIGHUP) drains the old producer before replacing it.  False when Kafka
 * is not configured.
 */
static bool
KafkaEnsureProducer(void)
{
	char	   *settings;
	rd_kafka_conf_t *conf;
	char		errbuf[512];
	char		linger[16];

	if (infra_kafka_brokers == NULL || infra_kafka_brokers[0] == '\0')
	{
		KafkaWorkerShutdown();
		KafkaSetState("not configured");
		return false;
	}
	settings = psprintf("%s\n%s\n%d", infra_kafka_brokers,
						infra_kafka_config ? infra_kafka_config : "",
						infra_kafka_linger_ms);
	if (producer != NULL && strcmp(settings, producer_settings) == 0)
	{
		pfree(settings);
		return true;
	}
	KafkaWorkerShutdown();

	conf = rd_kafka_conf_new();
	snprintf(linger, sizeof(linger), "%d", infra_kafka_linger_ms);
	if (rd_kafka_conf_set(conf, "bootstrap.servers", infra_kafka_brokers, errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "enable.idempotence", "true", errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "acks", "all", errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "linger.ms", linger, errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "message.timeout.ms", KAFKA_MESSAGE_TIMEOUT_MS, errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "statistics.interval.ms", KAFKA_STATS_INTERVAL_MS, errbuf, sizeof(errbuf)) != RD_KAFKA_CONF_OK ||
		!KafkaConfigApply(conf, infra_kafka_config ? infra_kafka_config : "", errbuf, sizeof(errbuf)))
	{
		rd_kafka_conf_destroy(conf);
		KafkaRecordError(errbuf);
		ereport(LOG,
				(errmsg("infra worker cannot configure the Kafka producer: %s", errbuf)));
		KafkaSetState("misconfigured");
		pfree(settings);
		return false;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, KafkaDeliveryReport);
	rd_kafka_conf_set_error_cb(conf, KafkaErrorCallback);
	rd_kafka_conf_set_stats_cb(conf, KafkaStatsCallback);
	rd_kafka_conf_set_log_cb(conf, KafkaLogCallback);
	(void) rd_kafka_conf_set(conf, "log.queue", "true", errbuf, sizeof(errbuf));

	producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errbuf, sizeof(errbuf));
	if (producer == NULL)
	{
		KafkaRecordError(errbuf);
		ereport(LOG,
				(errmsg("infra worker cannot create the Kafka producer: %s", errbuf)));
		KafkaSetState("misconfigured");
		pfree(settings);
		return false;
	}
	/* Its log lines come through rd_kafka_poll(), on this thread. */
	rd_kafka_set_log_queue(producer, NULL);
	producer_settings = MemoryContextStrdup(TopMemoryContext, settings);
	pfree(settings);
	KafkaSetState("connecting");
	KafkaProbeBrokers();
	ereport(LOG,
			(errmsg("infra worker started a Kafka producer for %s (librdkafka %s)",
					infra_kafka_brokers, rd_kafka_version_str())));
	return true;
}

/*
 * Drain and destroy the producer (SIGHUP with new settings, exit).
 */
static void
KafkaWorkerShutdown(void)
{
	if (producer == NULL)
		return;
	(void) rd_kafka_flush(producer, 5000);
	KafkaReportClientLogs();
	if (known_topics != NULL)
	{
		HASH_SEQ_STATUS status;
		KnownTopic *t;

		hash_seq_init(&status, known_topics);
		while ((t = hash_seq_search(&status)) != NULL)
			rd_kafka_topic_destroy(t->rkt);
		hash_destroy(known_topics);
		known_topics = NULL;
	}
	rd_kafka_destroy(producer);
	producer = NULL;
	if (latest_stats)
		free(latest_stats);
	latest_stats = NULL;
	if (producer_settings)
		pfree(producer_settings);
	producer_settings = NULL;
}

/*
 * Headers of one message: the user's (a JSON object) and infra-msg-id,
 * "<system identifier>/<database oid>/<timeline>/<outbox id>": the timeline
 * the id was allocated on keeps ids unique when a failover lost WAL and the
 * new primary's sequence hands out ids the old one used.  Rows written
 * before 1.1 (no timeline) keep the 1.0 form, without it, so a message sent
 * again carries the id it had.
 */
static rd_kafka_headers_t *
KafkaHeaders(int64 id, int32 timeline, TimestampTz written_at, Jsonb *user_headers)
{
	rd_kafka_headers_t *headers = rd_kafka_headers_new(8);
	char		msg_id[80];
	char		commit_time[32];

	if (timeline > 0)
		snprintf(msg_id, sizeof(msg_id), UINT64_FORMAT "/%u/%d/" INT64_FORMAT,
				 GetSystemIdentifier(), MyDatabaseId, timeline, id);
	else
		snprintf(msg_id, sizeof(msg_id), UINT64_FORMAT "/%u/" INT64_FORMAT,
				 GetSystemIdentifier(), MyDatabaseId, id);
	rd_kafka_header_add(headers, KAFKA_MSG_ID_HEADER, -1, msg_id, -1);
	/*
	 * infra-commit-time, for end-to-end latency (infra-bridge's): when the
	 * sending transaction wrote the message's outbox row, in microseconds
	 * since 1970.  That is at its commit (just before the commit record),
	 * or for a transaction of more than a thousand messages at each
	 * thousand.  The commit timestamp itself cannot serve: a row the worker
	 * rewrote (a failed attempt) has the worker's transaction as xmin.
	 */
	snprintf(commit_time, sizeof(commit_time), INT64_FORMAT,
			 (int64) written_at + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * USECS_PER_SEC);
	rd_kafka_header_add(headers, KAFKA_COMMIT_TIME_HEADER, -1, commit_time, -1);

	if (user_headers != NULL)
	{
		JsonbIterator *it = JsonbIteratorInit(&user_headers->root);
		JsonbValue	v;
		JsonbIteratorToken tok;
		char	   *name = NULL;

		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
			{
				name = pnstrdup(v.val.string.val, v.val.string.len);
				/*
				 * kafka_send refuses infra-msg-id; a row written otherwise
				 * loses it.  infra-commit-time is infra's too.
				 */
				if (pg_strcasecmp(name, KAFKA_MSG_ID_HEADER) == 0 ||
					pg_strcasecmp(name, KAFKA_COMMIT_TIME_HEADER) == 0)
					name = NULL;
			}
			else if (tok == WJB_VALUE && name != NULL)
			{
				if (v.type == jbvString)
					rd_kafka_header_add(headers, name, -1, v.val.string.val, v.val.string.len);
				else if (v.type == jbvNull)
					rd_kafka_header_add(headers, name, -1, NULL, 0);
				else
				{
					Jsonb	   *one = JsonbValueToJsonb(&v);
					char	   *s = JsonbToCString(NULL, &one->root, VARSIZE(one));

					rd_kafka_header_add(headers, name, -1, s, -1);
				}
				name = NULL;
			}
		}
	}
	return headers;
}

/*
 * A statement of the worker, prepared and kept on first use.  Plans follow
 * the tables through the plan cache (DROP/CREATE EXTENSION included).
 */
static SPIPlanPtr
KafkaPlan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, argtypes);

		if (p == NULL)
			elog(ERROR, "could not prepare \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	return *plan;
}

/*
 * Run a statement of the worker (prepared and kept by KafkaPlan) and check
 * what it returned: status expected, and ncols columns of types when types
 * is given.
 */
static void
KafkaExec(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes, Datum *args,
		  const char *nulls, bool read_only, int expected, const char *what,
		  int ncols, const Oid *types)
{
	SpiCheckResult(SPI_execute_plan(KafkaPlan(plan, sql, nargs, argtypes), args, nulls,
									read_only, 0),
				   expected, what, ncols, types);
}

/*
 * Describe the topics read into SPI_tuptable for the Admin API, into
 * topics[0..n-1] (each filled before anything can fail after it).
 */
static void
KafkaDescribeTopics(rd_kafka_NewTopic_t **topics, int n)
{
	char		errbuf[512];
	int			i;

	for (i = 0; i < n; i++)
	{
		char	   *name = TextDatumGetCString(SpiGetValue(i, 1, false, NULL, "infra.topics"));
		Jsonb	   *config = DatumGetJsonbP(SpiGetValue(i, 4, false, NULL, "infra.topics"));
		JsonbIterator *it;
		JsonbValue	v;
		JsonbIteratorToken tok;
		char	   *key = NULL;

		topics[i] = rd_kafka_NewTopic_new(name,
										  DatumGetInt32(SpiGetValue(i, 2, false, NULL, "infra.topics")),
										  DatumGetInt32(SpiGetValue(i, 3, false, NULL, "infra.topics")),
										  errbuf, sizeof(errbuf));
		if (topics[i] == NULL)
			elog(ERROR, "could not describe topic \"%s\": %s", name, errbuf);
		it = JsonbIteratorInit(&config->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
				key = pnstrdup(v.val.string.val, v.val.string.len);
			else if (tok == WJB_VALUE && key != NULL)
			{
				char	   *value;

				if (v.type == jbvString)
					value = pnstrdup(v.val.string.val, v.val.string.len);
				else
				{
					Jsonb	   *one = JsonbValueToJsonb(&v);

					value = JsonbToCString(NULL, &one->root, VARSIZE(one));
				}
				rd_kafka_NewTopic_set_config(topics[i], key, value);
				key = NULL;
			}
		}
	}
}

/*
 * Record each topic's outcome of a CreateTopics request in broker_state.
 */
static void
KafkaRecordTopicResults(rd_kafka_event_t *event)
{
	const rd_kafka_CreateTopics_result_t *result = rd_kafka_event_CreateTopics_result(event);
	const rd_kafka_topic_result_t **results;
	size_t		nresults;
	size_t		r;

	results = rd_kafka_CreateTopics_result_topics(result, &nresults);
	for (r = 0; r < nresults; r++)
	{
		rd_kafka_resp_err_t err = rd_kafka_topic_result_error(results[r]);
		const char *state;
		Oid			argtypes[2] = {TEXTOID, TEXTOID};
		Datum		args[2];

		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			state = "created";
		else if (err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
			state = "exists";
		else
			state = psprintf("error: %s: %s", rd_kafka_err2name(err),
							 rd_kafka_topic_result_error_string(results[r]) ?
							 rd_kafka_topic_result_error_string(results[r]) : rd_kafka_err2str(err));
		args[0] = CStringGetTextDatum(rd_kafka_topic_result_name(results[r]));
		args[1] = CStringGetTextDatum(state);
		SpiCheckResult(SPI_execute_with_args("UPDATE infra.topics SET broker_state = $2"
											 " WHERE name OPERATOR(pg_catalog.=) $1",
											 2, argtypes, args, NULL, false, 0),
					   SPI_OK_UPDATE, "the update of infra.topics", 0, NULL);
	}
}

/*
 * Create on the broker the topics of infra.topics still marked pending, with
 * the Admin API, and record each outcome in broker_state.  The topics are
 * read (and described) in one short transaction, the request waits for its
 * answer (up to 15 s) in none, and the outcomes are written in another: no
 * snapshot is held while the broker thinks.  A request that gets no answer
 * leaves them pending for the next round.  The Admin API's objects are
 * freed on every path, errors included.
 */
static void
KafkaCreateRegisteredTopics(void)
{
	static const Oid types[4] = {TEXTOID, INT4OID, INT4OID, JSONBOID};
	rd_kafka_NewTopic_t **topics = NULL;
	rd_kafka_AdminOptions_t *volatile options = NULL;
	rd_kafka_queue_t *volatile queue = NULL;
	rd_kafka_event_t *volatile event = NULL;
	volatile int n = 0;
	char		errbuf[512];

	InfraWorkerStartTransaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	KafkaExec(&plans.pending_topics,
			  "SELECT name, partitions, replication_factor, config FROM infra.topics"
			  " WHERE broker_state OPERATOR(pg_catalog.=) 'pending'"
			  " ORDER BY name LIMIT 100",
			  0, NULL, NULL, NULL, true,
			  SPI_OK_SELECT, "infra.topics", 4, types);
	if (SPI_processed > 0)
	{
		n = (int) SPI_processed;
		topics = MemoryContextAllocZero(round_context, sizeof(rd_kafka_NewTopic_t *) * n);
	}
	PG_TRY();
	{
		if (n > 0)
			KafkaDescribeTopics(topics, n);
		KafkaEndTransaction();
		if (n > 0)
		{
			int64		deadline = InfraMonotonicNs() + 15 * NS_PER_SEC;

			queue = rd_kafka_queue_new(producer);
			options = rd_kafka_AdminOptions_new(producer, RD_KAFKA_ADMIN_OP_CREATETOPICS);
			rd_kafka_AdminOptions_set_request_timeout(options, 10000, errbuf, sizeof(errbuf));
			rd_kafka_CreateTopics(producer, topics, n, options, queue);
			while (event == NULL && InfraMonotonicNs() < deadline && !ShutdownRequestPending)
			{
				event = rd_kafka_queue_poll(queue, 100);
				CHECK_FOR_INTERRUPTS();
			}
			if (event != NULL && rd_kafka_event_error(event) == RD_KAFKA_RESP_ERR_NO_ERROR)
			{
				InfraWorkerStartTransaction();
				PushActiveSnapshot(GetTransactionSnapshot());
				SPI_connect();
				KafkaRecordTopicResults(event);
				KafkaEndTransaction();
			}
			else
				KafkaRecordError(event ? rd_kafka_event_error_string(event) :
								 "no answer from the broker to CreateTopics");
		}
	}
	PG_FINALLY();
	{
		int			i;

		if (event)
			rd_kafka_event_destroy(event);
		if (options)
			rd_kafka_AdminOptions_destroy(options);
		if (queue)
			rd_kafka_queue_destroy(queue);
		for (i = 0; i < n; i++)
			if (topics[i])
				rd_kafka_NewTopic_destroy(topics[i]);
	}
	PG_END_TRY();
}

/*
 * The producer's handle of a topic; the first time, its metadata is asked
 * for and awaited (up to a second), so that its first messages go at once.
 * Past KAFKA_MAX_KNOWN_TOPICS the handle is *temporary: the caller destroys
 * it after use.
 */
static rd_kafka_topic_t *
KafkaTopic(const char *name, bool *temporary)
{
	KnownTopic *t;
	bool		found;

	*temporary = false;
	if (known_topics == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(((KnownTopic *) NULL)->name);
		ctl.entrysize = sizeof(KnownTopic);
		known_topics = hash_create("infra kafka topics", 64, &ctl, HASH_ELEM | HASH_STRINGS);
	}
	t = strlen(name) < sizeof(t->name) ? hash_search(known_topics, name, HASH_FIND, NULL) : NULL;
	if (t != NULL)
		return t->rkt;
	if (strlen(name) >= sizeof(t->name) ||
		hash_get_num_entries(known_topics) >= KAFKA_MAX_KNOWN_TOPICS)
	{
		*temporary = true;
		return rd_kafka_topic_new(producer, name, NULL);
	}
	t = hash_search(known_topics, name, HASH_ENTER, &found);
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

	if (rd_kafka_metadata(producer, 0, NULL, &metadata, KAFKA_PROBE_MS) == RD_KAFKA_RESP_ERR_NO_ERROR)
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
static void
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
	int64		x = ((const OutboxMessage *) a)->id;
	int64		y = ((const OutboxMessage *) b)->id;

	return (x > y) - (x < y);
}

static Datum
KafkaArray(Datum *elems, bool *nulls, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(elems, nulls, 1, dims, lbs, elemtype,
											  typlen, typbyval, typalign));
}

/* Element types of a message's columns in the outbox's parallel arrays. */
static const Oid message_column_types[6] = {INT8OID, TEXTOID, INT4OID, BYTEAOID, BYTEAOID, JSONBOID};

/*
 * Put message j of a row at place m of column arrays e / nl (id, topic,
 * partition, key, value, headers).
 */
static void
KafkaCopyMessage(const OutboxRow *row, int j, Datum **e, bool **nl, int m)
{
	e[0][m] = row->ids[j];
	e[1][m] = row->topics[j];
	e[2][m] = row->partitions[j];
	nl[2][m] = row->pnulls[j];
	e[3][m] = row->keys[j];
	nl[3][m] = row->knulls[j];
	e[4][m] = row->vals[j];
	nl[4][m] = row->vnulls[j];
	e[5][m] = row->headers[j];
	nl[5][m] = row->hnulls[j];
}

/*
 * Rewrite a partly settled row to hold only its kept messages (its first
 * id moving up); a failed one counts an attempt and keeps the error.
 */
static void
KafkaRewriteRow(OutboxRow *row, int kept, const char *first_error)
{
	Oid			argtypes[10] = {INT8OID, INT8OID, INT4OID, INT8ARRAYOID, TEXTARRAYOID,
	INT4ARRAYOID, BYTEAARRAYOID, BYTEAARRAYOID, JSONBARRAYOID, TEXTOID};
	Datum		args[10];
	char		argnulls[10];
	Datum	   *e[6];
	bool	   *nl[6];
	int			j;
	int			k;
	int			m = 0;

	for (k = 0; k < 6; k++)
	{
		e[k] = palloc(sizeof(Datum) * kept);
		nl[k] = palloc0(sizeof(bool) * kept);
	}
	for (j = 0; j < row->nmsgs; j++)
		if (row->keep[j])
			KafkaCopyMessage(row, j, e, nl, m++);
	memset(argnulls, ' ', sizeof(argnulls));
	args[0] = Int64GetDatum(row->first_id);
	args[1] = e[0][0];
	args[2] = Int32GetDatum(kept);
	for (k = 0; k < 6; k++)
		args[3 + k] = KafkaArray(e[k], nl[k], kept, message_column_types[k]);
	args[9] = row->failed ? CStringGetTextDatum(first_error) : (Datum) 0;
	argnulls[9] = row->failed ? ' ' : 'n';
	KafkaExec(&plans.rewrite,
			  "UPDATE infra.kafka_outbox_batches SET first_id = $2, messages = $3,"
			  " ids = $4, topics = $5, partitions = $6, keys = $7, vals = $8, headers = $9,"
			  " attempts = attempts OPERATOR(pg_catalog.+) ($10 IS NOT NULL)::integer,"
			  " last_error = coalesce($10, last_error),"
			  " last_attempt_at = CASE WHEN $10 IS NULL THEN last_attempt_at"
			  " ELSE pg_catalog.clock_timestamp() END"
			  " WHERE first_id OPERATOR(pg_catalog.=) $1",
			  10, argtypes, args, argnulls, false,
			  SPI_OK_UPDATE, "the rewrite of an outbox row", 0, NULL);
}

/*
 * Delete the rows whose messages all went.
 */
static void
KafkaDeleteRows(Datum *gone, int ngone)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		arg = KafkaArray(gone, NULL, ngone, INT8OID);

	KafkaExec(&plans.delete_delivered,
			  "DELETE FROM infra.kafka_outbox_batches"
			  " WHERE first_id OPERATOR(pg_catalog.=) ANY ($1)",
			  1, argtypes, &arg, NULL, false,
			  SPI_OK_DELETE, "the delete of delivered messages", 0, NULL);
}

/*
 * Count an attempt and the error for rows whose messages all failed.
 */
static void
KafkaRecordFailedRows(Datum *failed, int nfailed, const char *first_error)
{
	Oid			argtypes[2] = {INT8ARRAYOID, TEXTOID};
	Datum		args[2];

	args[0] = KafkaArray(failed, NULL, nfailed, INT8OID);
	args[1] = CStringGetTextDatum(first_error);
	KafkaExec(&plans.record_failure,
			  "UPDATE infra.kafka_outbox_batches"
			  " SET attempts = attempts OPERATOR(pg_catalog.+) 1,"
			  " last_error = $2, last_attempt_at = pg_catalog.clock_timestamp()"
			  " WHERE first_id OPERATOR(pg_catalog.=) ANY ($1)",
			  2, argtypes, args, NULL, false,
			  SPI_OK_UPDATE, "the record of failed messages", 0, NULL);
}

/*
 * Move the round's dead messages to infra.kafka_dead_letters, and say so.
 */
static void
KafkaMoveDeadLetters(OutboxRow *rows, OutboxMessage *messages, int n, int ndead)
{
	Oid			argtypes[9] = {INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID, BYTEAARRAYOID,
	BYTEAARRAYOID, JSONBARRAYOID, TIMESTAMPTZARRAYOID, INT4ARRAYOID, TEXTARRAYOID};
	Datum		args[9];
	Datum	   *e[9];
	bool	   *nl[9];
	int			k;
	int			m = 0;
	char	   *example = NULL;
	int			i;

	for (k = 0; k < 9; k++)
	{
		e[k] = palloc(sizeof(Datum) * ndead);
		nl[k] = palloc0(sizeof(bool) * ndead);
	}
	for (i = 0; i < n; i++)
	{
		OutboxMessage *msg = &messages[i];
		OutboxRow  *row = &rows[msg->row];

		if (!msg->dead)
			continue;
		KafkaCopyMessage(row, msg->index, e, nl, m);
		e[6][m] = TimestampTzGetDatum(row->created_at);
		e[7][m] = Int32GetDatum(row->attempts + 1);
		e[8][m] = CStringGetTextDatum(psprintf("%s: %s", rd_kafka_err2name(msg->err),
											   rd_kafka_err2str(msg->err)));
		if (example == NULL)
			example = TextDatumGetCString(e[8][m]);
		m++;
	}
	for (k = 0; k < 6; k++)
		args[k] = KafkaArray(e[k], nl[k], m, message_column_types[k]);
	args[6] = KafkaArray(e[6], nl[6], m, TIMESTAMPTZOID);
	args[7] = KafkaArray(e[7], nl[7], m, INT4OID);
	args[8] = KafkaArray(e[8], nl[8], m, TEXTOID);
	KafkaExec(&plans.dead_letter,
			  "INSERT INTO infra.kafka_dead_letters"
			  " (id, topic, partition, key, value, headers, created_at, attempts, error)"
			  " SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
			  " pg_catalog.unnest($3), pg_catalog.unnest($4), pg_catalog.unnest($5),"
			  " pg_catalog.unnest($6), pg_catalog.unnest($7), pg_catalog.unnest($8),"
			  " pg_catalog.unnest($9))",
			  9, argtypes, args, NULL, false,
			  SPI_OK_INSERT, "the move to infra.kafka_dead_letters", 0, NULL);
	ereport(LOG,
			(errmsg("infra worker moved %d Kafka messages to infra.kafka_dead_letters: %s",
					ndead, example)));
}

/*
 * Settle a round in the outbox: rows whose messages all went (delivered or
 * dead-lettered) are deleted, rows with some left are rewritten to hold only
 * those (their first id moving up), rows whose messages all failed count an
 * attempt; dead letters move to infra.kafka_dead_letters.
 */
static void
KafkaSettle(OutboxRow *rows, int nrows, OutboxMessage *messages, int n,
			int ndead, const char *first_error)
{
	Datum	   *gone = palloc(sizeof(Datum) * nrows);
	Datum	   *failed = palloc(sizeof(Datum) * nrows);
	int			ngone = 0;
	int			nfailed = 0;
	int			i;
	int			j;

	for (i = 0; i < nrows; i++)
	{
		OutboxRow  *row = &rows[i];
		int			kept = 0;

		for (j = 0; j < row->nmsgs; j++)
			kept += row->keep[j];
		if (kept == 0)
			gone[ngone++] = Int64GetDatum(row->first_id);
		else if (kept < row->nmsgs)
			KafkaRewriteRow(row, kept, first_error);
		else if (row->failed)
			failed[nfailed++] = Int64GetDatum(row->first_id);
	}
	if (ngone > 0)
		KafkaDeleteRows(gone, ngone);
	if (nfailed > 0)
		KafkaRecordFailedRows(failed, nfailed, first_error);
	if (ndead > 0)
		KafkaMoveDeadLetters(rows, messages, n, ndead);
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
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
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
	Datum		args[2] = {Int32GetDatum(infra_kafka_batch_size), Int64GetDatum(KAFKA_BATCH_BYTES)};
	Oid			argtypes[2] = {INT4OID, INT8OID};

	KafkaExec(&plans.batch,
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
 * Are there registered topics to create?  Asked in the read's transaction,
 * so that creating them (in transactions of their own) costs nothing when
 * there are none, which is nearly always.
 */
static bool
KafkaAnyPendingTopic(void)
{
	static const Oid types[1] = {BOOLOID};

	KafkaExec(&plans.any_pending_topic,
			  "SELECT EXISTS (SELECT FROM infra.topics"
			  " WHERE broker_state OPERATOR(pg_catalog.=) 'pending')",
			  0, NULL, NULL, NULL, true,
			  SPI_OK_SELECT, "infra.topics", 1, types);
	return DatumGetBool(SpiGetValue(0, 1, false, NULL, "infra.topics"));
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

	InfraWorkerStartTransaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (my_stats->database[0] == '\0')
	{
		char	   *name = get_database_name(MyDatabaseId);

		SpinLockAcquire(&my_stats->mutex);
		strlcpy(my_stats->database, name, NAMEDATALEN);
		SpinLockRelease(&my_stats->mutex);
	}
	round->topics_pending = KafkaAnyPendingTopic();
	nrows = KafkaQueryBatch();
	KafkaNoteOldest(nrows);
	if (nrows == 0)
	{
		KafkaEndTransaction();
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
	for (i = 0; i < round->nincluded; i++)
	{
		OutboxRow  *row = &round->rows[i];
		int			j;

		for (j = 0; j < row->nmsgs; j++)
		{
			int64		id = DatumGetInt64(row->ids[j]);
			OutboxMessage *m;

			row->keep[j] = true;
			if (id >= round->cut)
				continue;
			m = &round->messages[round->n++];
			m->id = id;
			m->row = i;
			m->index = j;
		}
	}
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
	char	   *topic = TextDatumGetCString(row->topics[j]);
	bool		temporary;
	rd_kafka_topic_t *rkt = KafkaTopic(topic, &temporary);
	int32		partition = row->pnulls[j] ? RD_KAFKA_PARTITION_UA : DatumGetInt32(row->partitions[j]);
	bytea	   *key = row->knulls[j] ? NULL : DatumGetByteaPP(row->keys[j]);
	bytea	   *value = row->vnulls[j] ? NULL : DatumGetByteaPP(row->vals[j]);
	Jsonb	   *user_headers = row->hnulls[j] ? NULL : DatumGetJsonbP(row->headers[j]);
	/* librdkafka owns the headers only once producev succeeds. */
	rd_kafka_headers_t *headers = KafkaHeaders(m->id, row->timeline, row->created_at, user_headers);
	rd_kafka_resp_err_t err;

	for (;;)
	{
		err = rd_kafka_producev(producer,
								RD_KAFKA_V_RKT(rkt),
								RD_KAFKA_V_PARTITION(partition),
								RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
								RD_KAFKA_V_KEY(key ? VARDATA_ANY(key) : NULL,
											   key ? VARSIZE_ANY_EXHDR(key) : 0),
								RD_KAFKA_V_VALUE(value ? VARDATA_ANY(value) : NULL,
												 value ? VARSIZE_ANY_EXHDR(value) : 0),
								RD_KAFKA_V_HEADERS(headers),
								RD_KAFKA_V_OPAQUE(m),
								RD_KAFKA_V_END);
		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			break;
		if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
		{
			rd_kafka_headers_destroy(headers);
			m->reported = true;
			m->err = err;
			break;
		}
		KafkaPoll(10);
	}
	if (temporary)
		rd_kafka_topic_destroy(rkt);
	pfree(topic);
}

/*
 * Step 2, produce: every message of the round, then wait for every
 * delivery report, staying responsive to shutdown and reload.
 */
static void
KafkaProduceRound(KafkaRound *round)
{
	int			i;

	round->start_ns = InfraMonotonicNs();
	for (i = 0; i < round->n; i++)
		KafkaProduceOne(round, &round->messages[i]);

	SpinLockAcquire(&my_stats->mutex);
	my_stats->in_flight = round->n;
	SpinLockRelease(&my_stats->mutex);

	for (;;)
	{
		int			outstanding = 0;

		for (i = 0; i < round->n; i++)
			outstanding += !round->messages[i].reported;
		if (outstanding == 0)
			break;
		KafkaPoll(50);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
	}
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

		if (!m->reported)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR)
		{
			row->keep[m->index] = false;
			round->nok++;
		}
		else if (KafkaErrorIsPermanent(m->err))
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
						 rd_kafka_err2name(m->err), rd_kafka_err2str(m->err));
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

	InfraWorkerStartTransaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	KafkaSettle(round->rows, round->nincluded, round->messages, round->n, round->ndead,
				round->first_error);
	InfraBreakerRecord("kafka", round->nbad > 0);
	pending = KafkaPendingAfterRound(round->cut != PG_INT64_MAX,
									 round->total - round->nok - round->ndead);
	KafkaEndTransaction();

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

	SpinLockAcquire(&my_stats->mutex);
	my_stats->in_flight = 0;
	my_stats->delivered_total += round->nok;
	my_stats->failed_attempts_total += round->nbad;
	my_stats->dead_lettered_total += round->ndead;
	my_stats->batches_total++;
	if (pending >= 0)
		my_stats->pending = pending;
	if (pending == 0)
		my_stats->oldest_pending_at = 0;
	my_stats->produce_latency_ms = (double) (InfraMonotonicNs() - round->start_ns) / 1e6;
	if (round->nok > 0)
		my_stats->last_delivery_at = GetCurrentTimestamp();
	strlcpy(my_stats->broker_state, round->nbad == 0 ? "up" : "failing",
			sizeof(my_stats->broker_state));
	SpinLockRelease(&my_stats->mutex);

	if (round->nbad == 0)
	{
		if (failed_rounds > 0)
			ereport(LOG, (errmsg("infra worker delivers Kafka messages again")));
		failed_rounds = 0;
		last_client_error[0] = '\0';
		return 0;
	}
	KafkaRecordError(last_client_error[0] ?
					 psprintf("%s (%s)", round->first_error, last_client_error) :
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
 * One round: produce the oldest outbox messages and settle them, in named
 * steps (read, produce, classify, settle, account), creating the
 * registered topics still pending between the read and the produce.  Returns how long the worker may sleep: -1 (until
 * woken) without a producer, KAFKA_IDLE_POLL_MS when the outbox is empty,
 * 0 when more may wait, or a backoff after failures.
 */
static long
KafkaWorkerServe(void)
{
	KafkaRound	round;
	long		sleep_ms;
	bool		ready;

	if (round_context == NULL)
		round_context = AllocSetContextCreate(TopMemoryContext, "infra kafka round",
											  ALLOCSET_DEFAULT_SIZES);
	if (my_stats == NULL)
		my_stats = KafkaStatsFor(MyDatabaseId, true);
	MemoryContextReset(round_context);
	MemoryContextSwitchTo(round_context);

	if (!KafkaEnsureProducer())
		return -1;
	KafkaPoll(0);
	KafkaAbsorbStats();

	memset(&round, 0, sizeof(round));
	round.cut = PG_INT64_MAX;
	ready = KafkaReadRound(&round, &sleep_ms);
	/* Before anything is produced, so a new topic has its settings. */
	if (round.topics_pending)
		KafkaCreateRegisteredTopics();
	if (!ready)
		return sleep_ms;
	KafkaOrderMessages(&round);
	KafkaProduceRound(&round);
	KafkaClassifyReports(&round);
	return KafkaAccountRound(&round, KafkaSettleRound(&round));
}
