/*-------------------------------------------------------------------------
 *
 * kafka.c
 *		kafka_send(): messages to Kafka, sent if and only if the transaction
 *		commits.
 *
 * A backend never talks to Kafka.  kafka_send() inserts the message into
 * infra.kafka_outbox, a WAL-logged table, in the caller's transaction, and
 * asks for the worker of this database to be woken when that transaction
 * commits.  The worker (producer.c) produces the rows in id order with an
 * idempotent producer and deletes each row only once Kafka acknowledged it:
 * a rolled-back message never existed, a committed one survives crashes of
 * the worker, the server or the broker, and is sent at least once.
 *
 * Per key, messages reach Kafka in commit order.  Ids are allocated when a
 * row is inserted, not when its transaction commits, so two transactions
 * sending the same key could commit in the opposite order of their ids.
 * kafka_send therefore takes a transaction-scoped advisory lock on the
 * (topic, key) before allocating the id: senders of one key are serialised,
 * and for them id order is commit order.  Senders of different keys never
 * wait for each other (a hash collision only serialises a little more).
 *
 * Locking: KafkaStats has a spinlock; the worker writes it, backends read
 * a copy.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "clock.h"
#include "infra.h"
#include "kafka.h"
#include "shmem.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(infra_kafka_send_text);
PG_FUNCTION_INFO_V1(infra_kafka_send_bytea);
PG_FUNCTION_INFO_V1(infra_kafka_send_jsonb);
PG_FUNCTION_INFO_V1(infra_kafka_flush);
PG_FUNCTION_INFO_V1(infra_kafka_stats);
PG_FUNCTION_INFO_V1(infra_kafka_retry_dead_letters);
PG_FUNCTION_INFO_V1(infra_kafka_wake_worker);

/* Kafka's own limit on topic names. */
#define KAFKA_TOPIC_MAX 249

char	   *infra_kafka_brokers = NULL;
char	   *infra_kafka_config = NULL;
int			infra_kafka_batch_size = 1000;
int			infra_kafka_linger_ms = 1;
int			infra_kafka_max_pending = 1000000;
int			infra_kafka_on_full = KAFKA_ON_FULL_ERROR;
int			infra_environment = 0;
bool		infra_kafka_require_registered_topics = false;

static const struct config_enum_entry environment_options[] = {
	{"dev", 0, false},
	{"staging", 1, false},
	{"prod", 2, false},
	{NULL, 0, false}
};

static const struct config_enum_entry on_full_options[] = {
	{"error", KAFKA_ON_FULL_ERROR, false},
	{"wait", KAFKA_ON_FULL_WAIT, false},
	{NULL, 0, false}
};

/* Sends since this backend last measured the backlog. */
#define KAFKA_PENDING_CHECK_EVERY 1000
static int	sends_since_check = KAFKA_PENDING_CHECK_EVERY;
static TransactionId checked_in_xact = InvalidTransactionId;

KafkaStats *kafka_stats = NULL;

static SPIPlanPtr insert_plan = NULL;
static SPIPlanPtr backlog_plan = NULL;

static Size KafkaShmemSize(void);
static void KafkaShmemInit(void *segment, bool found, LWLockPadded *locks);
static bool KafkaConfigCheckHook(char **newval, void **extra, GucSource source);
static const char *KafkaConfigShowHook(void);
static void KafkaCheckTopic(const char *topic);
static Datum KafkaSend(FunctionCallInfo fcinfo, bytea *value);
static void KafkaCheckBacklog(void);

/*
 * Define the Kafka settings and reserve the producer's counters.
 */
void
InfraKafkaInit(void)
{
	InfraShmemSegment seg = {
		.name = "infra kafka",
		.size = KafkaShmemSize,
		.init = KafkaShmemInit,
		.pointer = (void **) &kafka_stats,
	};

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
							"Outbox rows the worker produces per batch.",
							NULL,
							&infra_kafka_batch_size,
							1000, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("infra.kafka_linger_ms",
							"librdkafka linger.ms: how long the producer waits to fill a request.",
							NULL,
							&infra_kafka_linger_ms,
							1, 0, 60000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("infra.kafka_max_pending",
							"Most messages the outbox may hold before kafka_send refuses or waits.",
							NULL,
							&infra_kafka_max_pending,
							1000000, 1, INT_MAX,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomEnumVariable("infra.kafka_on_full",
							 "What kafka_send does when the outbox holds infra.kafka_max_pending messages.",
							 "error raises SQLSTATE 53400; wait sleeps until there is room (cancel and statement_timeout apply).",
							 &infra_kafka_on_full,
							 KAFKA_ON_FULL_ERROR, on_full_options,
							 PGC_USERSET, 0,
							 NULL, NULL, NULL);

	DefineCustomEnumVariable("infra.environment",
							 "Environment prefix of topic names: dev, staging or prod.",
							 NULL,
							 &infra_environment,
							 0, environment_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("infra.kafka_require_registered_topics",
							 "Refuse kafka_send to topics not in infra.topics.",
							 NULL,
							 &infra_kafka_require_registered_topics,
							 false,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	InfraShmemRegister(&seg);
}

static Size
KafkaShmemSize(void)
{
	return sizeof(KafkaStats);
}

static void
KafkaShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	KafkaStats *stats = (KafkaStats *) segment;

	if (found)
		return;
	memset(stats, 0, sizeof(KafkaStats));
	SpinLockInit(&stats->mutex);
	strlcpy(stats->broker_state, "not started", sizeof(stats->broker_state));
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
	GUC_check_errdetail("%s", errbuf);
	GUC_check_errhint("Give librdkafka producer properties as key=value pairs separated by semicolons, or @file.");
	return false;
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
 * Kafka's rules for topic names.
 */
static void
KafkaCheckTopic(const char *topic)
{
	size_t		len = strlen(topic);
	size_t		i;

	if (len == 0 || len > KAFKA_TOPIC_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic name must have 1 to %d characters, not %zu",
						KAFKA_TOPIC_MAX, len),
				 errhint("Kafka topic names are at most 249 characters.")));
	if (strcmp(topic, ".") == 0 || strcmp(topic, "..") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("topic name \"%s\" is not allowed", topic),
				 errhint("Kafka reserves \".\" and \"..\".")));
	for (i = 0; i < len; i++)
	{
		char		c = topic[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("topic name \"%s\" contains the character \"%c\"", topic, c),
					 errhint("Kafka topic names use only letters, digits, '.', '_' and '-'.")));
	}
}

/*
 * Refuse (or wait) when the outbox is over infra.kafka_max_pending.  The
 * backlog is bounded by max(id) - min(id) + 1, two index probes; it is
 * measured at a transaction's first send and every 1000th after that, so a
 * transaction may overshoot the bound by less than that.
 */
static void
KafkaCheckBacklog(void)
{
	TransactionId xid = GetTopTransactionIdIfAny();

	if (sends_since_check < KAFKA_PENDING_CHECK_EVERY &&
		TransactionIdIsValid(xid) && xid == checked_in_xact)
	{
		sends_since_check++;
		return;
	}

	for (;;)
	{
		bool		isnull;
		int64		backlog;

		if (backlog_plan == NULL)
		{
			SPIPlanPtr	plan = SPI_prepare("SELECT coalesce(max(id) - min(id) + 1, 0) FROM infra.kafka_outbox",
										   0, NULL);

			if (plan == NULL)
				elog(ERROR, "could not prepare the outbox backlog query");
			SPI_keepplan(plan);
			backlog_plan = plan;
		}
		if (SPI_execute_plan(backlog_plan, NULL, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not measure the outbox backlog");
		backlog = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		if (backlog < infra_kafka_max_pending)
			break;
		if (infra_kafka_on_full == KAFKA_ON_FULL_ERROR)
			ereport(ERROR,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("Kafka outbox is full (" INT64_FORMAT " messages pending, infra.kafka_max_pending is %d)",
							backlog, infra_kafka_max_pending),
					 errdetail("Kafka has not acknowledged earlier messages; see infra.kafka_stats."),
					 errhint("Retry later, raise infra.kafka_max_pending, or set infra.kafka_on_full = wait.")));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	sends_since_check = 0;
	checked_in_xact = xid;
}

/*
 * The common body of the kafka_send overloads: (topic, value, key, headers,
 * partition) with the value already as bytes.
 */
static Datum
KafkaSend(FunctionCallInfo fcinfo, bytea *value)
{
	char	   *topic;
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int64		id;
	bool		isnull;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be NULL"),
				 errhint("Give the Kafka topic to send to.")));
	topic = text_to_cstring(PG_GETARG_TEXT_PP(0));
	KafkaCheckTopic(topic);
	values[0] = PG_GETARG_DATUM(0);

	if (PG_ARGISNULL(4))
		nulls[1] = 'n';
	else if (PG_GETARG_INT32(4) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition must not be negative, not %d", PG_GETARG_INT32(4)),
				 errhint("Omit partition (NULL) to let the key choose it.")));
	else
		values[1] = PG_GETARG_DATUM(4);

	if (PG_ARGISNULL(2))
		nulls[2] = 'n';
	else
	{
		text	   *key = PG_GETARG_TEXT_PP(2);
		uint32		hash;

		/* Same-key senders queue up here: id order becomes commit order. */
		hash = hash_bytes((unsigned char *) VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)) ^
			hash_bytes((unsigned char *) topic, strlen(topic));
		DirectFunctionCall2(pg_advisory_xact_lock_int4,
							Int32GetDatum(KAFKA_ORDER_LOCK_CLASS),
							Int32GetDatum((int32) hash));
		values[2] = PointerGetDatum(key);
	}

	if (value == NULL)
		nulls[3] = 'n';
	else
		values[3] = PointerGetDatum(value);

	if (PG_ARGISNULL(3))
		nulls[4] = 'n';
	else
	{
		Jsonb	   *headers = PG_GETARG_JSONB_P(3);

		if (!JB_ROOT_IS_OBJECT(headers))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("headers must be a JSON object"),
					 errhint("Give headers as {\"name\": \"value\", ...}.")));
		values[4] = PointerGetDatum(headers);
	}

	SPI_connect();
	if (infra_kafka_require_registered_topics)
	{
		Oid			argtypes[1] = {TEXTOID};

		if (SPI_execute_with_args("SELECT FROM infra.topics WHERE name = $1",
								  1, argtypes, &values[0], NULL, true, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read infra.topics");
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("topic \"%s\" is not registered", topic),
					 errdetail("infra.kafka_require_registered_topics is on."),
					 errhint("Register it with infra.topic_register(domain, entity, version).")));
	}
	KafkaCheckBacklog();
	if (insert_plan == NULL)
	{
		Oid			argtypes[5] = {TEXTOID, INT4OID, TEXTOID, BYTEAOID, JSONBOID};
		SPIPlanPtr	plan;

		plan = SPI_prepare("INSERT INTO infra.kafka_outbox (topic, partition, key, value, headers) "
						   "VALUES ($1, $2, convert_to($3, 'UTF8'), $4, $5) RETURNING id",
						   5, argtypes);
		if (plan == NULL)
			elog(ERROR, "could not prepare the outbox insert: %s",
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		insert_plan = plan;
	}
	if (SPI_execute_plan(insert_plan, values, nulls, false, 1) != SPI_OK_INSERT_RETURNING)
		elog(ERROR, "could not insert into infra.kafka_outbox");
	/* The first insert gave the transaction its id: remember the check. */
	if (!TransactionIdIsValid(checked_in_xact) || sends_since_check == 0)
		checked_in_xact = GetTopTransactionIdIfAny();
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();

	InfraWorkerWakeAtCommit();
	PG_RETURN_INT64(id);
}

/*
 * infra.kafka_send(topic, value text, key, headers, partition).
 */
Datum
infra_kafka_send_text(PG_FUNCTION_ARGS)
{
	return KafkaSend(fcinfo, PG_ARGISNULL(1) ? NULL : (bytea *) PG_GETARG_TEXT_PP(1));
}

/*
 * infra.kafka_send(topic, value bytea, key, headers, partition).
 */
Datum
infra_kafka_send_bytea(PG_FUNCTION_ARGS)
{
	return KafkaSend(fcinfo, PG_ARGISNULL(1) ? NULL : PG_GETARG_BYTEA_PP(1));
}

/*
 * infra.kafka_send(topic, value jsonb, key, headers, partition): the value
 * as JSON text.
 */
Datum
infra_kafka_send_jsonb(PG_FUNCTION_ARGS)
{
	bytea	   *value = NULL;

	if (!PG_ARGISNULL(1))
	{
		Jsonb	   *jb = PG_GETARG_JSONB_P(1);

		value = (bytea *) cstring_to_text(JsonbToCString(NULL, &jb->root, VARSIZE(jb)));
	}
	return KafkaSend(fcinfo, value);
}

/*
 * infra.kafka_flush(timeout): wait until every message committed before the
 * call has left the outbox (delivered), or the timeout passes.
 */
Datum
infra_kafka_flush(PG_FUNCTION_ARGS)
{
	int64		deadline;
	int64		last_id;
	bool		isnull;

	deadline = InfraMonotonicNs() +
		InfraIntervalToNs(PG_GETARG_INTERVAL_P(0), "timeout", true);

	SPI_connect();
	if (SPI_execute("SELECT coalesce(max(id), 0) FROM infra.kafka_outbox", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read infra.kafka_outbox");
	last_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

	for (;;)
	{
		Oid			argtypes[1] = {INT8OID};
		Datum		values[1] = {Int64GetDatum(last_id)};
		bool		pending;

		/* Read committed: each query sees what the worker has deleted. */
		if (SPI_execute_with_args("SELECT EXISTS (SELECT FROM infra.kafka_outbox WHERE id <= $1)",
								  1, argtypes, values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read infra.kafka_outbox");
		pending = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		if (!pending)
			break;
		if (InfraMonotonicNs() >= deadline)
		{
			SPI_finish();
			PG_RETURN_BOOL(false);
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	SPI_finish();
	PG_RETURN_BOOL(true);
}

/*
 * infra.kafka_stats(): the producer's counters and the outbox backlog.
 */
Datum
infra_kafka_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	KafkaStats	copy;
	Datum		values[12];
	bool		nulls[12];
	bool		isnull;

	InfraShmemRequire("infra.kafka_stats");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	SpinLockAcquire(&kafka_stats->mutex);
	memcpy(&copy, kafka_stats, sizeof(copy));
	SpinLockRelease(&kafka_stats->mutex);

	memset(nulls, 0, sizeof(nulls));
	SPI_connect();
	if (SPI_execute("SELECT count(*), clock_timestamp() - min(created_at) FROM infra.kafka_outbox",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read infra.kafka_outbox");
	values[0] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	values[1] = Int64GetDatum(copy.in_flight);
	values[2] = Int64GetDatum(copy.delivered_total);
	values[3] = Int64GetDatum(copy.failed_attempts_total);
	values[4] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &nulls[4]);
	if (!nulls[4])
		values[4] = PointerGetDatum(DatumGetIntervalP(values[4]));
	values[5] = CStringGetTextDatum(copy.last_error);
	nulls[5] = copy.last_error[0] == '\0';
	values[6] = TimestampTzGetDatum(copy.last_error_at);
	nulls[6] = copy.last_error_at == 0;
	values[7] = TimestampTzGetDatum(copy.last_delivery_at);
	nulls[7] = copy.last_delivery_at == 0;
	values[8] = CStringGetTextDatum(copy.broker_state);
	values[9] = Float8GetDatum(copy.produce_latency_ms);
	nulls[9] = copy.batches_total == 0;
	values[10] = Int64GetDatum(copy.batches_total);
	values[11] = Int64GetDatum(copy.dead_lettered_total);
	{
		HeapTuple	tuple = heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls);
		Datum		result = SPI_datumTransfer(HeapTupleGetDatum(tuple), false, -1);

		SPI_finish();
		PG_RETURN_DATUM(result);
	}
}

/*
 * infra.kafka_retry_dead_letters(topic, ids): put dead letters (of one
 * topic, or these ids, or all) back into the outbox; returns how many.
 */
Datum
infra_kafka_retry_dead_letters(PG_FUNCTION_ARGS)
{
	Oid			argtypes[2] = {TEXTOID, INT8ARRAYOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	uint64		moved;

	values[0] = PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0);
	nulls[0] = PG_ARGISNULL(0) ? 'n' : ' ';
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';

	SPI_connect();
	if (SPI_execute_with_args("WITH back AS ("
							  " DELETE FROM infra.kafka_dead_letters"
							  " WHERE ($1 IS NULL OR topic = $1) AND ($2 IS NULL OR id = ANY ($2))"
							  " RETURNING *)"
							  " INSERT INTO infra.kafka_outbox (topic, partition, key, value, headers, created_at)"
							  " SELECT topic, partition, key, value, headers, created_at FROM back ORDER BY id",
							  2, argtypes, values, nulls, false, 0) != SPI_OK_INSERT)
		elog(ERROR, "could not requeue dead letters");
	moved = SPI_processed;
	SPI_finish();
	if (moved > 0)
		InfraWorkerWakeAtCommit();
	PG_RETURN_INT64((int64) moved);
}

/*
 * infra.kafka_wake_worker(): have the worker look at its work (registered
 * topics to create) when this transaction commits.
 */
Datum
infra_kafka_wake_worker(PG_FUNCTION_ARGS)
{
	InfraWorkerWakeAtCommit();
	PG_RETURN_VOID();
}
