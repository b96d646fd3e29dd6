/*-------------------------------------------------------------------------
 *
 * producer.c
 *		The infra worker's Kafka producer: outbox rows to Kafka.
 *
 * One long-lived idempotent producer (enable.idempotence, acks=all) per
 * worker.  Each round reads a batch of outbox rows in id order, produces
 * them, waits for every delivery report, then deletes the rows Kafka
 * acknowledged and records the error of the others, which stay for the next
 * round: a row leaves the outbox only once it is in Kafka.  Each message
 * carries the header infra-msg-id (system identifier / database oid / outbox
 * id), the same for every attempt, so that consumers can drop duplicates.
 *
 * librdkafka runs its own threads; none of them calls PostgreSQL.  Delivery
 * reports and errors are delivered by rd_kafka_poll() on the worker's own
 * thread and only fill plain C structures.
 *
 * This is the only file that includes rdkafka.h.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <librdkafka/rdkafka.h>

#include "lib/stringinfo.h"
#include "storage/fd.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "breaker.h"
#include "clock.h"
#include "infra.h"
#include "kafka.h"

/* How long a message may wait for the broker before it counts as failed. */
#define KAFKA_MESSAGE_TIMEOUT_MS "10000"

/* Most key and value bytes one round reads (at least one row is read). */
#define KAFKA_BATCH_BYTES (16 * 1024 * 1024)

/* Backoff after a round with failures: 1 s doubling to 30 s. */
#define KAFKA_RETRY_MIN_MS 1000
#define KAFKA_RETRY_MAX_MS 30000

/* One outbox row on its way. */
typedef struct OutboxMessage
{
	int64		id;
	bool		reported;
	rd_kafka_resp_err_t err;
} OutboxMessage;

static rd_kafka_t *producer = NULL;

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
	SPIPlanPtr	batch;
	SPIPlanPtr	delete_delivered;
	SPIPlanPtr	dead_letter;
	SPIPlanPtr	record_failure;
} WorkerPlans;

static WorkerPlans plans;
static char *producer_settings = NULL;	/* brokers + config it was built with */
static int	failed_rounds = 0;
static char last_client_error[KAFKA_ERROR_LEN];

static bool KafkaConfigApply(rd_kafka_conf_t *conf, const char *value,
							 char *errbuf, size_t errlen);
static void KafkaDeliveryReport(rd_kafka_t *rk, const rd_kafka_message_t *msg,
								void *opaque);
static void KafkaErrorCallback(rd_kafka_t *rk, int err, const char *reason,
							   void *opaque);
static bool KafkaEnsureProducer(void);
static bool KafkaErrorIsPermanent(rd_kafka_resp_err_t err);
static SPIPlanPtr KafkaPlan(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes);
static void KafkaCreateRegisteredTopics(void);
static void KafkaRecordError(const char *message);
static void KafkaSetState(const char *state);

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

		while (*name == ' ' || *name == '\t' || *name == '\n')
			name++;
		if (*name == '\0')
			continue;
		if (eq == NULL)
		{
			snprintf(errbuf, errlen, "Property \"%s\" has no \"=\".", name);
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
bool
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
	producer_settings = MemoryContextStrdup(TopMemoryContext, settings);
	pfree(settings);
	KafkaSetState("connecting");
	ereport(LOG,
			(errmsg("infra worker started a Kafka producer for %s (librdkafka %s)",
					infra_kafka_brokers, rd_kafka_version_str())));
	return true;
}

/*
 * Drain and destroy the producer (SIGHUP with new settings, exit).
 */
void
KafkaWorkerShutdown(void)
{
	if (producer == NULL)
		return;
	(void) rd_kafka_flush(producer, 5000);
	rd_kafka_destroy(producer);
	producer = NULL;
	if (producer_settings)
		pfree(producer_settings);
	producer_settings = NULL;
}

/*
 * Headers of one message: the user's (a JSON object) and infra-msg-id.
 */
static rd_kafka_headers_t *
KafkaHeaders(int64 id, Jsonb *user_headers)
{
	rd_kafka_headers_t *headers = rd_kafka_headers_new(8);
	char		msg_id[64];

	snprintf(msg_id, sizeof(msg_id), UINT64_FORMAT "/%u/" INT64_FORMAT,
			 GetSystemIdentifier(), MyDatabaseId, id);
	rd_kafka_header_add(headers, "infra-msg-id", -1, msg_id, -1);

	if (user_headers != NULL)
	{
		JsonbIterator *it = JsonbIteratorInit(&user_headers->root);
		JsonbValue	v;
		JsonbIteratorToken tok;
		char	   *name = NULL;

		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
				name = pnstrdup(v.val.string.val, v.val.string.len);
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
 * Create on the broker the topics of infra.topics still marked pending, with
 * the Admin API, and record each outcome in broker_state.  A request that
 * gets no answer leaves them pending for the next round.  Runs in the
 * caller's transaction and SPI connection (the round's batch read).
 */
static void
KafkaCreateRegisteredTopics(void)
{
	rd_kafka_NewTopic_t **topics;
	rd_kafka_AdminOptions_t *options;
	rd_kafka_queue_t *queue;
	rd_kafka_event_t *event = NULL;
	char		errbuf[512];
	int64		deadline;
	int			n;
	int			i;

	if (SPI_execute_plan(KafkaPlan(&plans.pending_topics,
								   "SELECT name, partitions, replication_factor, config FROM infra.topics "
								   "WHERE broker_state = 'pending' ORDER BY name LIMIT 100", 0, NULL),
						 NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read infra.topics");
	n = (int) SPI_processed;
	if (n == 0)
		return;

	topics = palloc0(sizeof(rd_kafka_NewTopic_t *) * n);
	for (i = 0; i < n; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *name = TextDatumGetCString(SPI_getbinval(tuple, desc, 1, &isnull));
		Jsonb	   *config = DatumGetJsonbP(SPI_getbinval(tuple, desc, 4, &isnull));
		JsonbIterator *it;
		JsonbValue	v;
		JsonbIteratorToken tok;
		char	   *key = NULL;

		topics[i] = rd_kafka_NewTopic_new(name,
										  DatumGetInt32(SPI_getbinval(tuple, desc, 2, &isnull)),
										  DatumGetInt32(SPI_getbinval(tuple, desc, 3, &isnull)),
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

	queue = rd_kafka_queue_new(producer);
	options = rd_kafka_AdminOptions_new(producer, RD_KAFKA_ADMIN_OP_CREATETOPICS);
	rd_kafka_AdminOptions_set_request_timeout(options, 10000, errbuf, sizeof(errbuf));
	rd_kafka_CreateTopics(producer, topics, n, options, queue);

	deadline = InfraMonotonicNs() + 15 * NS_PER_SEC;
	while (event == NULL && InfraMonotonicNs() < deadline && !ShutdownRequestPending)
	{
		event = rd_kafka_queue_poll(queue, 100);
		CHECK_FOR_INTERRUPTS();
	}

	if (event != NULL && rd_kafka_event_error(event) == RD_KAFKA_RESP_ERR_NO_ERROR)
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
			if (SPI_execute_with_args("UPDATE infra.topics SET broker_state = $2 WHERE name = $1",
									  2, argtypes, args, NULL, false, 0) != SPI_OK_UPDATE)
				elog(ERROR, "could not record the state of a topic");
		}
	}
	else
		KafkaRecordError(event ? rd_kafka_event_error_string(event) :
						 "no answer from the broker to CreateTopics");

	if (event)
		rd_kafka_event_destroy(event);
	rd_kafka_AdminOptions_destroy(options);
	rd_kafka_queue_destroy(queue);
	rd_kafka_NewTopic_destroy_array(topics, n);
}

/*
 * One round: produce a batch of outbox rows and settle them.  Returns how
 * long the worker may sleep: -1 when the outbox is empty (until woken), 0
 * when more rows wait, or a backoff after failures.
 */
long
KafkaWorkerServe(void)
{
	OutboxMessage *messages;
	int			n;
	int			i;
	int			outstanding;
	int			delivered = 0;
	int64		start_ns;
	Datum	   *ok_ids;
	Datum	   *bad_ids;
	Datum	   *dead_ids;
	Datum	   *dead_errors;
	int			nok = 0;
	int			nbad = 0;
	int			ndead = 0;
	char		first_error[KAFKA_ERROR_LEN] = "";
	bool		more;

	if (round_context == NULL)
		round_context = AllocSetContextCreate(TopMemoryContext, "infra kafka round",
											  ALLOCSET_DEFAULT_SIZES);
	if (my_stats == NULL)
		my_stats = KafkaStatsFor(MyDatabaseId, true);
	MemoryContextReset(round_context);
	MemoryContextSwitchTo(round_context);

	if (!KafkaEnsureProducer())
		return -1;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	KafkaCreateRegisteredTopics();
	{
		Datum		args[2] = {Int32GetDatum(infra_kafka_batch_size),
		Int64GetDatum(KAFKA_BATCH_BYTES)};
		Oid			argtypes[2] = {INT4OID, INT8OID};

		/* Up to batch_size rows, stopping once KAFKA_BATCH_BYTES are read. */
		if (SPI_execute_plan(KafkaPlan(&plans.batch,
									   "SELECT id, topic, partition, key, value, headers FROM ("
									   " SELECT o.*, sum(coalesce(octet_length(o.key), 0) +"
									   "  coalesce(octet_length(o.value), 0)) OVER (ORDER BY o.id) AS upto,"
									   "  coalesce(octet_length(o.key), 0) + coalesce(octet_length(o.value), 0) AS size"
									   " FROM (SELECT * FROM infra.kafka_outbox ORDER BY id LIMIT $1) o) b"
									   " WHERE upto - size < $2 ORDER BY id",
									   2, argtypes),
							 args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read infra.kafka_outbox");
	}
	n = (int) SPI_processed;
	/* A full or byte-limited round may have left rows: look again at once. */
	more = n > 0;
	if (n == 0)
	{
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		MemoryContextSwitchTo(round_context);
		return -1;
	}

	/*
	 * The "kafka" circuit breaker, when configured, guards delivery: a round
	 * with work is one call.  While it is open the outbox waits (nothing is
	 * lost); the round's outcome is recorded below.
	 */
	{
		int64		probe_in_ns;

		if (!InfraBreakerAllow("kafka", &probe_in_ns))
		{
			SPI_finish();
			PopActiveSnapshot();
			CommitTransactionCommand();
			MemoryContextSwitchTo(round_context);
			KafkaSetState("breaker open");
			return probe_in_ns > 0 ? Min(probe_in_ns / 1000000 + 1, KAFKA_RETRY_MAX_MS) : 1000;
		}
	}

	/* Produce while the rows are at hand: librdkafka copies the payloads. */
	messages = MemoryContextAllocZero(round_context, sizeof(OutboxMessage) * n);
	start_ns = InfraMonotonicNs();
	for (i = 0; i < n; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *topic;
		int32		partition = RD_KAFKA_PARTITION_UA;
		bytea	   *key = NULL;
		bytea	   *value = NULL;
		Jsonb	   *user_headers = NULL;
		Datum		d;
		rd_kafka_resp_err_t err;
		rd_kafka_headers_t *headers;

		messages[i].id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
		topic = TextDatumGetCString(SPI_getbinval(tuple, desc, 2, &isnull));
		d = SPI_getbinval(tuple, desc, 3, &isnull);
		if (!isnull)
			partition = DatumGetInt32(d);
		d = SPI_getbinval(tuple, desc, 4, &isnull);
		if (!isnull)
			key = DatumGetByteaPP(d);
		d = SPI_getbinval(tuple, desc, 5, &isnull);
		if (!isnull)
			value = DatumGetByteaPP(d);
		d = SPI_getbinval(tuple, desc, 6, &isnull);
		if (!isnull)
			user_headers = DatumGetJsonbP(d);

		/* librdkafka owns the headers only once producev succeeds. */
		headers = KafkaHeaders(messages[i].id, user_headers);
		for (;;)
		{
			err = rd_kafka_producev(producer,
									RD_KAFKA_V_TOPIC(topic),
									RD_KAFKA_V_PARTITION(partition),
									RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
									RD_KAFKA_V_KEY(key ? VARDATA_ANY(key) : NULL,
												   key ? VARSIZE_ANY_EXHDR(key) : 0),
									RD_KAFKA_V_VALUE(value ? VARDATA_ANY(value) : NULL,
													 value ? VARSIZE_ANY_EXHDR(value) : 0),
									RD_KAFKA_V_HEADERS(headers),
									RD_KAFKA_V_OPAQUE(&messages[i]),
									RD_KAFKA_V_END);
			if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
				break;
			if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			{
				/* Refused locally (e.g. too large): reported like a failure. */
				rd_kafka_headers_destroy(headers);
				messages[i].reported = true;
				messages[i].err = err;
				break;
			}
			rd_kafka_poll(producer, 10);
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(round_context);

	SpinLockAcquire(&my_stats->mutex);
	my_stats->in_flight = n;
	SpinLockRelease(&my_stats->mutex);

	/* Wait for every report; stay responsive to shutdown and reload. */
	for (;;)
	{
		outstanding = 0;
		for (i = 0; i < n; i++)
			outstanding += !messages[i].reported;
		if (outstanding == 0)
			break;
		rd_kafka_poll(producer, 50);
		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
	}

	ok_ids = palloc(sizeof(Datum) * n);
	bad_ids = palloc(sizeof(Datum) * n);
	dead_ids = palloc(sizeof(Datum) * n);
	dead_errors = palloc(sizeof(Datum) * n);
	for (i = 0; i < n; i++)
	{
		if (!messages[i].reported)
			continue;
		if (messages[i].err == RD_KAFKA_RESP_ERR_NO_ERROR)
			ok_ids[nok++] = Int64GetDatum(messages[i].id);
		else if (KafkaErrorIsPermanent(messages[i].err))
		{
			dead_ids[ndead] = Int64GetDatum(messages[i].id);
			dead_errors[ndead++] = CStringGetTextDatum(psprintf("%s: %s",
																rd_kafka_err2name(messages[i].err),
																rd_kafka_err2str(messages[i].err)));
		}
		else
		{
			bad_ids[nbad++] = Int64GetDatum(messages[i].id);
			if (first_error[0] == '\0')
				snprintf(first_error, sizeof(first_error), "%s: %s",
						 rd_kafka_err2name(messages[i].err),
						 rd_kafka_err2str(messages[i].err));
		}
	}
	delivered = nok;

	/* Settle: delivered rows leave the outbox, failed ones record why. */
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (nok > 0)
	{
		Oid			argtypes[1] = {INT8ARRAYOID};
		Datum		arg = PointerGetDatum(construct_array(ok_ids, nok, INT8OID, 8, true, TYPALIGN_DOUBLE));

		if (SPI_execute_plan(KafkaPlan(&plans.delete_delivered,
									   "DELETE FROM infra.kafka_outbox WHERE id = ANY ($1)",
									   1, argtypes),
							 &arg, NULL, false, 0) != SPI_OK_DELETE)
			elog(ERROR, "could not delete delivered messages");
	}
	if (ndead > 0)
	{
		Oid			argtypes[2] = {INT8ARRAYOID, TEXTARRAYOID};
		Datum		args[2];

		args[0] = PointerGetDatum(construct_array(dead_ids, ndead, INT8OID, 8, true, TYPALIGN_DOUBLE));
		args[1] = PointerGetDatum(construct_array(dead_errors, ndead, TEXTOID, -1, false, TYPALIGN_INT));
		if (SPI_execute_plan(KafkaPlan(&plans.dead_letter,
									   "WITH dead AS ("
									   " DELETE FROM infra.kafka_outbox o"
									   " USING unnest($1::bigint[], $2::text[]) AS e(id, error)"
									   " WHERE o.id = e.id RETURNING o.*, e.error)"
									   " INSERT INTO infra.kafka_dead_letters"
									   " (id, topic, partition, key, value, headers, created_at, attempts, error)"
									   " SELECT id, topic, partition, key, value, headers, created_at,"
									   " attempts + 1, error FROM dead",
									   2, argtypes),
							 args, NULL, false, 0) != SPI_OK_INSERT)
			elog(ERROR, "could not move messages to infra.kafka_dead_letters");
		ereport(LOG,
				(errmsg("infra worker moved %d Kafka messages to infra.kafka_dead_letters: %s",
						ndead, TextDatumGetCString(dead_errors[0]))));
	}
	if (nbad > 0)
	{
		Oid			argtypes[2] = {INT8ARRAYOID, TEXTOID};
		Datum		args[2];

		args[0] = PointerGetDatum(construct_array(bad_ids, nbad, INT8OID, 8, true, TYPALIGN_DOUBLE));
		args[1] = CStringGetTextDatum(first_error);
		if (SPI_execute_plan(KafkaPlan(&plans.record_failure,
									   "UPDATE infra.kafka_outbox SET attempts = attempts + 1, "
									   "last_error = $2, last_attempt_at = clock_timestamp() "
									   "WHERE id = ANY ($1)",
									   2, argtypes),
							 args, NULL, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "could not record failed messages");
	}
	InfraBreakerRecord("kafka", nbad > 0);
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(round_context);

	SpinLockAcquire(&my_stats->mutex);
	my_stats->in_flight = 0;
	my_stats->delivered_total += delivered;
	my_stats->failed_attempts_total += nbad;
	my_stats->dead_lettered_total += ndead;
	my_stats->batches_total++;
	my_stats->produce_latency_ms = (double) (InfraMonotonicNs() - start_ns) / 1e6;
	if (delivered > 0)
		my_stats->last_delivery_at = GetCurrentTimestamp();
	strlcpy(my_stats->broker_state, nbad == 0 ? "up" : "failing",
			sizeof(my_stats->broker_state));
	SpinLockRelease(&my_stats->mutex);

	if (nbad > 0)
	{
		long		backoff = KAFKA_RETRY_MIN_MS;

		KafkaRecordError(last_client_error[0] ? psprintf("%s (%s)", first_error, last_client_error) : first_error);
		if (failed_rounds++ == 0)
			ereport(LOG,
					(errmsg("infra worker could not deliver %d Kafka messages: %s",
							nbad, first_error),
					 errdetail("They stay in infra.kafka_outbox and are retried.")));
		for (i = 1; i < failed_rounds && backoff < KAFKA_RETRY_MAX_MS; i++)
			backoff *= 2;
		return Min(backoff, KAFKA_RETRY_MAX_MS);
	}
	if (failed_rounds > 0)
		ereport(LOG, (errmsg("infra worker delivers Kafka messages again")));
	failed_rounds = 0;
	last_client_error[0] = '\0';
	return more ? 0 : -1;
}
