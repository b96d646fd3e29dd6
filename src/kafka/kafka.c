/*-------------------------------------------------------------------------
 *
 * kafka.c
 *		kafka_send(): messages to Kafka, sent if and only if the transaction
 *		commits.
 *
 * A backend never talks to Kafka.  kafka_send() puts the message into the
 * outbox, a WAL-logged table, in the caller's transaction, and asks for the
 * worker of this database to be woken when that transaction commits.  To
 * make a send cheap, messages are buffered in the backend and written just
 * before commit (or every KAFKA_SEND_BUFFER messages or
 * KAFKA_SEND_BUFFER_BYTES) as one row of infra.kafka_outbox_batches holding
 * parallel arrays: one heap tuple and one index entry for up to a thousand
 * messages.  The id comes from the outbox sequence at the call, so the
 * returned id and the ordering are those of the call.  Each buffered message
 * remembers its subtransaction: a rolled-back savepoint drops its messages,
 * a released one hands them to its parent, and a flush inside a
 * subtransaction writes only that subtransaction's messages (so that its
 * rollback cannot take an outer level's messages with it).  The worker
 * (producer.c) produces the messages in id order with an idempotent producer
 * and removes each only once Kafka acknowledged it: a rolled-back message
 * never existed, a committed one survives crashes of the worker, the server
 * or the broker, and is sent at least once.
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
 * Called by SQL (kafka_send, kafka_flush, kafka_stats, ...) and its commit
 * callbacks; producer.c reads and writes the per-database counters
 * (KafkaStatsFor).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/array.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/pg_lsn.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "core/clock.h"
#include "core/infra.h"
#include "core/shmem.h"
#include "core/spicheck.h"
#include "core/tracing.h"
#include "core/version.h"
#include "core/worker.h"
#include "kafka/kafka.h"
#include "kafka/outbox.h"
#include "kafka/progress.h"

PG_FUNCTION_INFO_V1(infra_kafka_send_text);
PG_FUNCTION_INFO_V1(infra_kafka_send_bytea);
PG_FUNCTION_INFO_V1(infra_kafka_send_jsonb);
PG_FUNCTION_INFO_V1(infra_kafka_flush);
PG_FUNCTION_INFO_V1(infra_kafka_stats);
PG_FUNCTION_INFO_V1(infra_kafka_retry_dead_letters);
PG_FUNCTION_INFO_V1(infra_kafka_wake_worker);
PG_FUNCTION_INFO_V1(infra_kafka_payload_text);

/* Kafka's own limit on topic names. */
#define KAFKA_TOPIC_MAX 249

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

/* One entry per database whose worker produces; guarded by mutex to claim. */
typedef struct KafkaShared
{
	slock_t		mutex;
	KafkaStats	stats[INFRA_MAX_DATABASES];
} KafkaShared;

static KafkaShared *kafka_shared = NULL;

static SPIPlanPtr backlog_plan = NULL;

/* Messages (and key and value bytes) buffered before they are written at once. */
#define KAFKA_SEND_BUFFER 1000
#define KAFKA_SEND_BUFFER_BYTES (8 * 1024 * 1024)


/* In TopTransactionContext; reset at the end of every transaction. */
static BufferedMessage *buffered = NULL;
static int	nbuffered = 0;
static int	buffer_capacity = 0;
static Size buffered_bytes = 0;
static Oid	outbox_sequence = InvalidOid;
static Oid	block_sequence = InvalidOid;
/* This transaction writes the WAL outbox (decided at its first send). */
static bool txn_wal = false;

/*
 * The owner of the outbox table, looked up at a transaction's first send:
 * kafka_send runs as its caller (no SECURITY DEFINER, so no search_path to
 * pin on every call) and takes the owner's rights only for its own
 * schema-qualified statements, the backlog probe and the pre-commit insert,
 * as a restricted operation.
 */
static Oid	outbox_writer = InvalidOid;
static bool callbacks_registered = false;

/* Result types the checked statements expect. */
static const Oid int8_type[1] = {INT8OID};
static const Oid int4_type[1] = {INT4OID};
static const Oid bool_type[1] = {BOOLOID};

static Size KafkaShmemSize(void);
static void KafkaShmemInit(void *segment, bool found, LWLockPadded *locks);
static void KafkaCheckTopic(const char *topic);
static Datum KafkaSend(FunctionCallInfo fcinfo, bytea *value);
static Oid	KafkaOutboxOwner(Oid namespace);
static int64 KafkaMeasureBacklog(int64 my_id);
static void KafkaCheckBacklog(int64 my_id);
static Jsonb *KafkaContextHeaders(Jsonb *user_headers);
static void KafkaRefuseReservedHeaders(Jsonb *headers);
static void KafkaFlushBuffer(bool all_levels);
static void KafkaFlushToWal(bool all_levels);
static void KafkaXactCallback(XactEvent event, void *arg);
static void KafkaSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
								 SubTransactionId parentSubid, void *arg);

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
		.pointer = (void **) &kafka_shared,
	};

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

	KafkaOutboxInit();
	InfraShmemRegister(&seg);
	KafkaProgressInit();

}

static Size
KafkaShmemSize(void)
{
	return sizeof(KafkaShared);
}

static void
KafkaShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	KafkaShared *shared = (KafkaShared *) segment;
	int			i;

	if (found)
		return;
	memset(shared, 0, sizeof(KafkaShared));
	SpinLockInit(&shared->mutex);
	for (i = 0; i < INFRA_MAX_DATABASES; i++)
		SpinLockInit(&shared->stats[i].mutex);
}

/*
 * The counters of this database's producer; with claim, the worker takes a
 * free entry for its database.  NULL when there is none.
 */
KafkaStats *
KafkaStatsFor(Oid database_oid, bool claim)
{
	KafkaStats *found = NULL;
	int			i;

	SpinLockAcquire(&kafka_shared->mutex);
	for (i = 0; i < INFRA_MAX_DATABASES && found == NULL; i++)
		if (kafka_shared->stats[i].database_oid == database_oid)
			found = &kafka_shared->stats[i];
	for (i = 0; i < INFRA_MAX_DATABASES && found == NULL && claim; i++)
		if (kafka_shared->stats[i].database_oid == InvalidOid)
		{
			found = &kafka_shared->stats[i];
			found->database_oid = database_oid;
		}
	SpinLockRelease(&kafka_shared->mutex);
	return found;
}

/*
 * A copy of every database's counters in use (for /metrics); how many.
 */
int
KafkaStatsCopyAll(KafkaStats *copies)
{
	int			n = 0;
	int			i;

	if (kafka_shared == NULL)
		return 0;
	for (i = 0; i < INFRA_MAX_DATABASES; i++)
	{
		KafkaStats *stats = &kafka_shared->stats[i];

		SpinLockAcquire(&stats->mutex);
		memcpy(&copies[n], stats, sizeof(KafkaStats));
		SpinLockRelease(&stats->mutex);
		if (copies[n].database_oid != InvalidOid && copies[n].database[0] != '\0')
			n++;
	}
	return n;
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
 * The role that owns kafka_outbox_batches in schema namespace (infra's).
 */
static Oid
KafkaOutboxOwner(Oid namespace)
{
	Oid			relid = get_relname_relid("kafka_outbox_batches", namespace);
	HeapTuple	tuple;
	Oid			owner;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("infra.kafka_outbox_batches does not exist"),
				 errhint("Reinstall the infra extension: DROP EXTENSION infra; CREATE EXTENSION infra.")));
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	ReleaseSysCache(tuple);
	return owner;
}

/*
 * Messages ahead of my_id in the outbox: my_id minus the smallest pending id
 * (one index probe).  Read as the outbox's owner, as a restricted operation:
 * the caller may not read the outbox itself.
 */
static int64
KafkaMeasureBacklog(int64 my_id)
{
	Oid			argtypes[1] = {INT8OID};
	Datum		arg = Int64GetDatum(my_id);
	Datum		backlog = Int64GetDatum(0);

	(void) SpiExecKeptAs(outbox_writer, &backlog_plan,
						 "SELECT coalesce($1 OPERATOR(pg_catalog.-) pg_catalog.min(first_id), 0)"
						 " FROM infra.kafka_outbox_batches",
						 1, argtypes, &arg, NULL, false, SPI_OK_SELECT, "the outbox backlog query", &backlog);
	return DatumGetInt64(backlog);
}

/*
 * Refuse (or wait) when the outbox is over infra.kafka_max_pending.  The
 * backlog counts messages of transactions still open, which may yet commit;
 * it is measured at a transaction's first send and every 1000th after that,
 * so a transaction may overshoot the bound by less than that.
 */
static void
KafkaCheckBacklog(int64 my_id)
{
	/* Reset to KAFKA_PENDING_CHECK_EVERY when a transaction ends. */
	if (sends_since_check < KAFKA_PENDING_CHECK_EVERY)
	{
		sends_since_check++;
		return;
	}

	for (;;)
	{
		int64		backlog = KafkaMeasureBacklog(my_id);

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
}

/*
 * The message's headers with the session's correlation_id and traceparent
 * added; a header the caller gives by the same name wins.
 */
static Jsonb *
KafkaContextHeaders(Jsonb *user_headers)
{
	const char *correlation_id = InfraCorrelationId();
	const char *traceparent = InfraTraceparent();
	JsonbParseState *state = NULL;
	JsonbValue	k;
	JsonbValue	v;
	Jsonb	   *ours;

	if (correlation_id == NULL && traceparent == NULL)
		return user_headers;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	k.type = jbvString;
	v.type = jbvString;
	if (correlation_id != NULL)
	{
		k.val.string.val = "correlation_id";
		k.val.string.len = strlen(k.val.string.val);
		v.val.string.val = (char *) correlation_id;
		v.val.string.len = strlen(correlation_id);
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	if (traceparent != NULL)
	{
		k.val.string.val = "traceparent";
		k.val.string.len = strlen(k.val.string.val);
		v.val.string.val = (char *) traceparent;
		v.val.string.len = strlen(traceparent);
		pushJsonbValue(&state, WJB_KEY, &k);
		pushJsonbValue(&state, WJB_VALUE, &v);
	}
	ours = JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
	if (user_headers == NULL)
		return ours;
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
											  JsonbPGetDatum(ours),
											  JsonbPGetDatum(user_headers)));
}

/*
 * infra-msg-id is infra's to set: a caller who could choose it could make a
 * deduplicating consumer (infra-bridge with dedupe = on) drop another
 * sender's genuine messages.  Refused in any letter case.
 */
static void
KafkaRefuseReservedHeaders(Jsonb *headers)
{
	JsonbIterator *it = JsonbIteratorInit(&headers->root);
	JsonbValue	v;
	JsonbIteratorToken tok;

	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY &&
			v.val.string.len == (int) strlen(KAFKA_MSG_ID_HEADER) &&
			pg_strncasecmp(v.val.string.val, KAFKA_MSG_ID_HEADER, v.val.string.len) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("header \"%s\" is set by infra and cannot be given to kafka_send",
							KAFKA_MSG_ID_HEADER),
					 errdetail("Consumers deduplicate on it; a chosen value could hide another sender's messages."),
					 errhint("Use another header name for your own message ids.")));
	}
}

/*
 * The message's key as Kafka gets it (the text in UTF-8), after taking the
 * (topic, key) advisory lock: same-key senders queue up here, so id order
 * becomes commit order.
 */
static bytea *
KafkaLockKey(text *key, text *topic)
{
	char	   *utf8 = pg_server_to_any(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key), PG_UTF8);
	bytea	   *bytes = utf8 == VARDATA_ANY(key) ? (bytea *) key : (bytea *) cstring_to_text(utf8);
	uint32		hash;

	/* The WAL outbox is read in commit order: no lock needed. */
	if (txn_wal)
		return bytes;

	hash = hash_bytes((unsigned char *) VARDATA_ANY(bytes), VARSIZE_ANY_EXHDR(bytes)) ^
		hash_bytes((unsigned char *) VARDATA_ANY(topic), VARSIZE_ANY_EXHDR(topic));
	DirectFunctionCall2(pg_advisory_xact_lock_int4,
						Int32GetDatum(KAFKA_ORDER_LOCK_CLASS),
						Int32GetDatum((int32) hash));
	return bytes;
}

/*
 * With infra.kafka_require_registered_topics: the topic must be in
 * infra.topics.
 */
static void
KafkaRequireRegistered(text *topic, const char *name)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		arg = PointerGetDatum(topic);

	SPI_connect();
	SpiCheckResult(SPI_execute_with_args("SELECT FROM infra.topics WHERE name OPERATOR(pg_catalog.=) $1",
										 1, argtypes, &arg, NULL, true, 1),
				   SPI_OK_SELECT, "infra.topics", 0, NULL);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("topic \"%s\" is not registered", name),
				 errdetail("infra.kafka_require_registered_topics is on."),
				 errhint("Register it with infra.topic_register(domain, entity, version).")));
	SPI_finish();
}

/*
 * What every message of one call shares, checked, into msg: topic,
 * partition and headers (the session's trace context added).  The key,
 * value and id are each message's.
 */
static void
KafkaPrepareMessage(text *topic_text, bool has_partition, int32 partition,
					Jsonb *headers, BufferedMessage *msg)
{
	char	   *topic = text_to_cstring(topic_text);

	KafkaCheckTopic(topic);
	msg->topic = topic_text;
	msg->has_partition = has_partition;
	msg->partition = has_partition ? partition : 0;
	if (msg->partition < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partition must not be negative, not %d", msg->partition),
				 errhint("Omit partition (NULL) to let the key choose it.")));
	if (headers != NULL && !JB_ROOT_IS_OBJECT(headers))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("headers must be a JSON object"),
				 errhint("Give headers as {\"name\": \"value\", ...}.")));
	if (headers != NULL)
		KafkaRefuseReservedHeaders(headers);
	msg->headers = KafkaContextHeaders(headers);
	msg->key = NULL;
	msg->value = NULL;
	if (infra_kafka_require_registered_topics)
		KafkaRequireRegistered(msg->topic, topic);
	pfree(topic);
}

/*
 * A transaction's first send: the transaction callbacks, the sequence (the
 * extension may have been recreated), the buffer and the outbox's owner.
 */
static void
KafkaStartBuffer(void)
{
	Oid			namespace = get_namespace_oid(INFRA_NAME, false);

	/* The previous release's objects have no WAL outbox (online upgrade). */
	txn_wal = infra_kafka_outbox == KAFKA_OUTBOX_WAL && !InfraSchemaIsPrevious() &&
		!XLogRecPtrIsInvalid(KafkaWalSlotConfirmed(NULL));
	if (txn_wal)
	{
		block_sequence = get_relname_relid("kafka_outbox_block_seq", namespace);
		if (!OidIsValid(block_sequence))
			elog(ERROR, "infra.kafka_outbox_block_seq does not exist");
	}

	if (!callbacks_registered)
	{
		RegisterXactCallback(KafkaXactCallback, NULL);
		RegisterSubXactCallback(KafkaSubXactCallback, NULL);
		callbacks_registered = true;
	}
	outbox_sequence = get_relname_relid("kafka_outbox_id_seq", namespace);
	if (!OidIsValid(outbox_sequence))
		elog(ERROR, "infra.kafka_outbox_id_seq does not exist");
	buffered = MemoryContextAlloc(TopTransactionContext,
								  sizeof(BufferedMessage) * KAFKA_SEND_BUFFER);
	buffer_capacity = KAFKA_SEND_BUFFER;
	nbuffered = 0;
	buffered_bytes = 0;
	outbox_writer = KafkaOutboxOwner(namespace);
	if (txn_wal)
		KafkaWalLoadSecret(outbox_writer);
}

/*
 * Keep a copy of msg in the buffer until the end of the transaction.
 */
static void
KafkaBufferMessage(const BufferedMessage *msg)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);
	BufferedMessage *m = &buffered[nbuffered++];

	*m = *msg;
	m->topic = (text *) PG_DETOAST_DATUM_COPY(PointerGetDatum(msg->topic));
	if (msg->key)
	{
		m->key = (bytea *) PG_DETOAST_DATUM_COPY(PointerGetDatum(msg->key));
		buffered_bytes += VARSIZE(m->key);
	}
	if (msg->value)
	{
		m->value = (bytea *) PG_DETOAST_DATUM_COPY(PointerGetDatum(msg->value));
		buffered_bytes += VARSIZE(m->value);
	}
	if (msg->headers)
		m->headers = (Jsonb *) PG_DETOAST_DATUM_COPY(PointerGetDatum(msg->headers));
	MemoryContextSwitchTo(old);
}

/*
 * Send msg (prepared by KafkaPrepareMessage) with this key and value: the
 * (topic, key) lock first, then its id, then the buffer.  Returns the id.
 */
static int64
KafkaSendPrepared(BufferedMessage *msg, text *key, bytea *value)
{
	if (buffered == NULL)
		KafkaStartBuffer();
	msg->key = key != NULL ? KafkaLockKey(key, msg->topic) : NULL;
	msg->value = value;
	if (nbuffered >= KAFKA_SEND_BUFFER || buffered_bytes >= KAFKA_SEND_BUFFER_BYTES)
		KafkaFlushBuffer(false);

	/*
	 * Inside a savepoint, only its own messages can be written early; when
	 * the buffer is full of an outer level's, it grows instead.
	 */
	if (nbuffered >= buffer_capacity)
	{
		buffer_capacity *= 2;
		buffered = repalloc(buffered, sizeof(BufferedMessage) * buffer_capacity);
	}

	/* The caller needs no right on the sequence: EXECUTE on kafka_send is the gate. */
	msg->id = txn_wal ? KafkaWalNextId(block_sequence) : nextval_internal(outbox_sequence, false);
	msg->subid = GetCurrentSubTransactionId();
	if (!txn_wal)
		KafkaCheckBacklog(msg->id);
	KafkaBufferMessage(msg);
	InfraWorkerWakeAtCommit(INFRA_WORKER_DELIVERY);
	return msg->id;
}

/*
 * The common body of the kafka_send overloads: (topic, value, key, headers,
 * partition) with the value already as bytes.
 */
static Datum
KafkaSend(FunctionCallInfo fcinfo, bytea *value)
{
	BufferedMessage msg;

	InfraRequirePrimary("send Kafka messages");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be NULL"),
				 errhint("Give the Kafka topic to send to.")));
	KafkaPrepareMessage(PG_GETARG_TEXT_PP(0), !PG_ARGISNULL(4),
						PG_ARGISNULL(4) ? 0 : PG_GETARG_INT32(4),
						PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3), &msg);
	PG_RETURN_INT64(KafkaSendPrepared(&msg, PG_ARGISNULL(2) ? NULL : PG_GETARG_TEXT_PP(2), value));
}

/*
 * n messages to one topic in one call (kafka_send_many, the statement-level
 * publish trigger): values[i] with keys[i] (either may be NULL; keys NULL:
 * no keys), the same headers, each exactly as kafka_send would send it, in
 * order.  Returns the first message's id (0 when n is 0).
 */
int64
KafkaSendMany(text *topic, Jsonb *headers, int n, bytea *const *values, text *const *keys)
{
	BufferedMessage msg;
	int64		first = 0;
	int			i;

	InfraRequirePrimary("send Kafka messages");
	KafkaPrepareMessage(topic, false, 0, headers, &msg);
	for (i = 0; i < n; i++)
	{
		int64		id = KafkaSendPrepared(&msg, keys ? keys[i] : NULL, values[i]);

		if (i == 0)
			first = id;
	}
	return first;
}

/*
 * Write buffered messages as one logical message, in call order.  Early
 * (not all_levels) only when every buffered message is the current
 * subtransaction's: messages of an outer level must not come after its
 * own in the WAL, so the buffer grows instead.
 */
static void
KafkaFlushToWal(bool all_levels)
{
	/*
	 * Messages are buffered in call order and a subtransaction's pass to its
	 * parent when it ends: when the oldest is the current level's, all are.
	 */
	if (!all_levels && buffered[0].subid != GetCurrentSubTransactionId())
		return;
	KafkaWalWrite(buffered, nbuffered);
	nbuffered = 0;
	buffered_bytes = 0;
}

/*
 * The headers kafka_send would give a message to topic (the session's
 * trace context), the topic checked as kafka_send checks it.
 */
Jsonb *
KafkaCheckedHeaders(text *topic)
{
	BufferedMessage msg;

	KafkaPrepareMessage(topic, false, 0, NULL, &msg);
	return msg.headers;
}

/*
 * For the statement trigger (publish.c): may the statement's rows go into
 * the WAL outbox now, as raw rows the worker renders?  Only when this
 * transaction writes the WAL outbox and nothing it sent before is held
 * back (then it is written first, keeping call order).  Returns the block
 * sequence for the rows' ids, InvalidOid when not.
 */
Oid
KafkaWalDirect(void)
{
	InfraRequirePrimary("send Kafka messages");
	if (buffered == NULL)
		KafkaStartBuffer();
	if (!txn_wal)
		return InvalidOid;
	if (nbuffered > 0)
	{
		if (buffered[0].subid != GetCurrentSubTransactionId())
			return InvalidOid;
		KafkaFlushToWal(false);
	}
	InfraWorkerWakeAtCommit(INFRA_WORKER_DELIVERY);
	return block_sequence;
}

/*
 * Write buffered messages into the outbox as one row of
 * infra.kafka_outbox_batches.  all_levels at (pre-)commit; otherwise only
 * the current subtransaction's messages, the others staying buffered.
 */
static void
KafkaFlushBuffer(bool all_levels)
{
	SubTransactionId current = GetCurrentSubTransactionId();
	Datum	   *ids, *topics, *partitions, *keys, *vals, *headers;
	bool	   *pnulls, *knulls, *vnulls, *hnulls;
	int			n = 0;
	int			kept = 0;
	int			i;
	int			dims[1];
	int			lbs[1] = {1};
	Datum		args[9];

	if (buffered == NULL || nbuffered == 0)
		return;
	if (txn_wal)
	{
		KafkaFlushToWal(all_levels);
		return;
	}
	ids = palloc(sizeof(Datum) * nbuffered);
	topics = palloc(sizeof(Datum) * nbuffered);
	partitions = palloc(sizeof(Datum) * nbuffered);
	keys = palloc(sizeof(Datum) * nbuffered);
	vals = palloc(sizeof(Datum) * nbuffered);
	headers = palloc(sizeof(Datum) * nbuffered);
	pnulls = palloc(sizeof(bool) * nbuffered);
	knulls = palloc(sizeof(bool) * nbuffered);
	vnulls = palloc(sizeof(bool) * nbuffered);
	hnulls = palloc(sizeof(bool) * nbuffered);

	for (i = 0; i < nbuffered; i++)
	{
		BufferedMessage *m = &buffered[i];

		if (!all_levels && m->subid != current)
		{
			buffered[kept++] = *m;
			continue;
		}
		buffered_bytes -= (m->key ? VARSIZE(m->key) : 0) + (m->value ? VARSIZE(m->value) : 0);
		ids[n] = Int64GetDatum(m->id);
		topics[n] = PointerGetDatum(m->topic);
		partitions[n] = Int32GetDatum(m->partition);
		pnulls[n] = !m->has_partition;
		keys[n] = PointerGetDatum(m->key);
		knulls[n] = m->key == NULL;
		vals[n] = PointerGetDatum(m->value);
		vnulls[n] = m->value == NULL;
		headers[n] = PointerGetDatum(m->headers);
		hnulls[n] = m->headers == NULL;
		n++;
	}
	nbuffered = kept;
	if (n == 0)
		return;

	/* Ids grow in call order: the first is the row's smallest. */
	dims[0] = n;
	args[0] = ids[0];
	args[1] = Int32GetDatum(n);
	args[2] = PointerGetDatum(construct_array(ids, n, INT8OID, 8, true, TYPALIGN_DOUBLE));
	args[3] = PointerGetDatum(construct_array(topics, n, TEXTOID, -1, false, TYPALIGN_INT));
	args[4] = PointerGetDatum(construct_md_array(partitions, pnulls, 1, dims, lbs, INT4OID, 4, true, TYPALIGN_INT));
	args[5] = PointerGetDatum(construct_md_array(keys, knulls, 1, dims, lbs, BYTEAOID, -1, false, TYPALIGN_INT));
	args[6] = PointerGetDatum(construct_md_array(vals, vnulls, 1, dims, lbs, BYTEAOID, -1, false, TYPALIGN_INT));
	args[7] = PointerGetDatum(construct_md_array(headers, hnulls, 1, dims, lbs, JSONBOID, -1, false, TYPALIGN_INT));
	/* The ids were allocated in this transaction, so on this timeline. */
	args[8] = Int32GetDatum((int32) GetWALInsertionTimeLine());
	KafkaTableWrite(args, outbox_writer);
}

/*
 * Write what is buffered before the transaction commits or prepares; forget
 * it when the transaction ends either way.
 */
static void
KafkaXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
		case XACT_EVENT_PRE_PREPARE:
			KafkaFlushBuffer(true);
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* The memory goes with TopTransactionContext. */
			buffered = NULL;
			nbuffered = 0;
			buffered_bytes = 0;
			txn_wal = false;
			sends_since_check = KAFKA_PENDING_CHECK_EVERY;
			break;
	}
}

/*
 * A rolled-back savepoint drops its messages; a released one hands them to
 * its parent.
 */
static void
KafkaSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
					 SubTransactionId parentSubid, void *arg)
{
	int			i;
	int			kept = 0;

	if (buffered == NULL)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		for (i = 0; i < nbuffered; i++)
		{
			BufferedMessage *m = &buffered[i];

			if (m->subid != mySubid)
				buffered[kept++] = *m;
			else
				buffered_bytes -= (m->key ? VARSIZE(m->key) : 0) +
					(m->value ? VARSIZE(m->value) : 0);
		}
		nbuffered = kept;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (i = 0; i < nbuffered; i++)
			if (buffered[i].subid == mySubid)
				buffered[i].subid = parentSubid;
	}
}

/*
 * infra.kafka_send(topic, value text, key, headers, partition).
 */
Datum
infra_kafka_send_text(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();

	return KafkaSend(fcinfo, PG_ARGISNULL(1) ? NULL : (bytea *) PG_GETARG_TEXT_PP(1));
}

/*
 * infra.kafka_send(topic, value bytea, key, headers, partition).
 */
Datum
infra_kafka_send_bytea(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();

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

	INFRA_CHECK_SCHEMA();

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

	INFRA_CHECK_SCHEMA();
	InfraRequirePrimary("wait for Kafka deliveries");

	deadline = InfraMonotonicNs() +
		InfraIntervalToNs(PG_GETARG_INTERVAL_P(0), "timeout", true);

	/* The WAL outbox first: what it could not deliver moves to the table. */
	if (!KafkaWalFlushWait(deadline))
		PG_RETURN_BOOL(false);
	SPI_connect();
	/* Every row committed now has a first id up to this one. */
	SpiCheckResult(SPI_execute("SELECT coalesce(pg_catalog.max(first_id), 0) FROM infra.kafka_outbox_batches",
							   true, 1),
				   SPI_OK_SELECT, "infra.kafka_outbox", 1, int8_type);
	last_id = DatumGetInt64(SpiGetValue(0, 1, false, &isnull, "infra.kafka_outbox"));

	for (;;)
	{
		Oid			argtypes[1] = {INT8OID};
		Datum		values[1] = {Int64GetDatum(last_id)};
		bool		pending;

		/* Read committed: each query sees what the worker has deleted. */
		SpiCheckResult(SPI_execute_with_args("SELECT EXISTS (SELECT FROM infra.kafka_outbox_batches"
											 " WHERE first_id OPERATOR(pg_catalog.<=) $1)",
											 1, argtypes, values, NULL, false, 1),
					   SPI_OK_SELECT, "infra.kafka_outbox", 1, bool_type);
		pending = DatumGetBool(SpiGetValue(0, 1, false, &isnull, "infra.kafka_outbox"));
		if (!pending)
			break;
		if (InfraMonotonicNs() >= deadline)
		{
			KafkaProgressSleepEnd();
			SPI_finish();
			PG_RETURN_BOOL(false);
		}
		KafkaProgressSleep(deadline);
	}
	KafkaProgressSleepEnd();
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
	Datum		values[20];
	bool		nulls[20];
	bool		isnull;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.kafka_stats");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	{
		KafkaStats *mine = KafkaStatsFor(MyDatabaseId, false);

		if (mine != NULL)
		{
			SpinLockAcquire(&mine->mutex);
			memcpy(&copy, mine, sizeof(copy));
			SpinLockRelease(&mine->mutex);
		}
		else
		{
			memset(&copy, 0, sizeof(copy));
			strlcpy(copy.broker_state, "not started", sizeof(copy.broker_state));
		}
	}

	memset(nulls, 0, sizeof(nulls));
	SPI_connect();
	{
		static const Oid types[2] = {INT8OID, INTERVALOID};

		SpiCheckResult(SPI_execute("SELECT coalesce(pg_catalog.sum(messages), 0)::bigint,"
								   " pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) pg_catalog.min(created_at)"
								   " FROM infra.kafka_outbox_batches",
								   true, 1),
					   SPI_OK_SELECT, "infra.kafka_outbox", 2, types);
	}
	values[0] = SpiGetValue(0, 1, false, &isnull, "infra.kafka_outbox");
	values[1] = Int64GetDatum(copy.in_flight);
	values[2] = Int64GetDatum(copy.delivered_total);
	values[3] = Int64GetDatum(copy.failed_attempts_total);
	values[4] = SpiGetValue(0, 2, true, &nulls[4], "infra.kafka_outbox");
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
	values[12] = Float8GetDatum(copy.latency_avg_ms);
	nulls[12] = copy.latency_at == 0;
	values[13] = Float8GetDatum(copy.latency_p99_ms);
	nulls[13] = copy.latency_at == 0;
	values[14] = CStringGetTextDatum(copy.waiting_for);
	nulls[14] = copy.waiting_for[0] == '\0';
	/* Exactly once; a 1.1 declaration stops at waiting_for. */
	values[15] = Int64GetDatum(copy.txn_committed_total);
	values[16] = Int64GetDatum(copy.txn_aborted_total);
	values[17] = Int64GetDatum(copy.txn_fenced_total);
	values[18] = LSNGetDatum(copy.txn_progress);
	nulls[18] = XLogRecPtrIsInvalid(copy.txn_progress);
	nulls[19] = copy.txn_began_at == 0;
	if (!nulls[19])
	{
		Interval   *open_for = palloc0(sizeof(Interval));

		open_for->time = Max(GetCurrentTimestamp() - copy.txn_began_at, 0);
		values[19] = IntervalPGetDatum(open_for);
	}
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
	Oid			argtypes[3] = {TEXTOID, INT8ARRAYOID, INT4OID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	uint64		moved;

	INFRA_CHECK_SCHEMA();
	InfraRequirePrimary("requeue dead letters");

	values[0] = PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0);
	nulls[0] = PG_ARGISNULL(0) ? 'n' : ' ';
	values[1] = PG_ARGISNULL(1) ? (Datum) 0 : PG_GETARG_DATUM(1);
	nulls[1] = PG_ARGISNULL(1) ? 'n' : ' ';
	values[2] = Int32GetDatum((int32) GetWALInsertionTimeLine());

	SPI_connect();
	/* Back as one outbox row, with new ids (of this timeline) in the order of the old ones. */
	SpiCheckResult(SPI_execute_with_args("WITH back AS ("
										 " DELETE FROM infra.kafka_dead_letters"
										 " WHERE ($1 IS NULL OR topic OPERATOR(pg_catalog.=) $1)"
										 " AND ($2 IS NULL OR id OPERATOR(pg_catalog.=) ANY ($2))"
										 " RETURNING *),"
										 " renumbered AS ("
										 " SELECT pg_catalog.nextval('infra.kafka_outbox_id_seq'::pg_catalog.regclass) AS new_id, *"
										 " FROM (SELECT * FROM back ORDER BY id) b)"
										 " INSERT INTO infra.kafka_outbox_batches"
										 " (first_id, messages, ids, topics, partitions, keys, vals, headers, created_at, timeline)"
										 " SELECT pg_catalog.min(new_id), pg_catalog.count(*),"
										 " pg_catalog.array_agg(new_id ORDER BY new_id),"
										 " pg_catalog.array_agg(topic ORDER BY new_id),"
										 " pg_catalog.array_agg(partition ORDER BY new_id),"
										 " pg_catalog.array_agg(key ORDER BY new_id),"
										 " pg_catalog.array_agg(value ORDER BY new_id),"
										 " pg_catalog.array_agg(headers ORDER BY new_id), pg_catalog.min(created_at), $3"
										 " FROM renumbered HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 0"
										 " RETURNING messages",
										 3, argtypes, values, nulls, false, 0),
				   SPI_OK_INSERT_RETURNING, "the dead-letter requeue", 1, int4_type);
	moved = 0;
	if (SPI_processed > 0)
		moved = DatumGetInt32(SpiGetValue(0, 1, false, NULL, "the dead-letter requeue"));
	SPI_finish();
	if (moved > 0)
		InfraWorkerWakeAtCommit(INFRA_WORKER_DELIVERY);
	PG_RETURN_INT64((int64) moved);
}

/*
 * infra.kafka_payload_text(bytes): a key or value as a DBA reads it in
 * infra.kafka_outbox: the text itself when it is valid UTF-8 the database
 * can hold without conversion (a UTF-8 database, or plain ASCII), else
 * bytea's own text form ('\x...').
 */
Datum
infra_kafka_payload_text(PG_FUNCTION_ARGS)
{
	bytea	   *bytes = PG_GETARG_BYTEA_PP(0);
	const char *data = VARDATA_ANY(bytes);
	int			len = VARSIZE_ANY_EXHDR(bytes);
	bool		ascii = true;
	int			i;

	INFRA_CHECK_SCHEMA();

	for (i = 0; i < len && ascii; i++)
		ascii = data[i] != '\0' && !IS_HIGHBIT_SET(data[i]);
	if (ascii || (GetDatabaseEncoding() == PG_UTF8 && pg_verify_mbstr(PG_UTF8, data, len, true)))
		PG_RETURN_TEXT_P(cstring_to_text_with_len(data, len));
	PG_RETURN_TEXT_P(cstring_to_text(DatumGetCString(DirectFunctionCall1(byteaout,
																		PointerGetDatum(bytes)))));
}

/*
 * infra.kafka_wake_worker(): have the worker look at its work (registered
 * topics to create) when this transaction commits.
 */
Datum
infra_kafka_wake_worker(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();
	InfraRequirePrimary("change the topic registry");

	InfraWorkerWakeAtCommit(INFRA_WORKER_DELIVERY);
	PG_RETURN_VOID();
}
