/*-------------------------------------------------------------------------
 *
 * outbox.c
 *		Where a transaction's Kafka messages are written before its commit.
 *
 * kafka_send buffers a transaction's messages (kafka.c) and writes them,
 * at the latest just before the commit record, one of two ways, chosen by
 * infra.kafka_outbox:
 *
 *   table  a row of infra.kafka_outbox_batches (arrays of a thousand
 *          messages); the worker reads rows in id order, and a per-key
 *          advisory lock makes id order commit order.
 *   wal    one transactional logical message (LogLogicalMessage) per
 *          thousand messages: the WAL record every transactional outbox
 *          must write, and nothing else (no heap row to delete and vacuum,
 *          no lock, ids from per-backend blocks).  The worker decodes them
 *          from its logical slot (walread.c) in commit order, so per key
 *          Kafka sees commit order without any lock, and a rolled-back
 *          transaction or savepoint is never decoded.
 *
 * A transaction decides at its first send: the WAL if infra.kafka_outbox
 * is wal and the worker's slot is ready (consistent), else the table.  A
 * slot that is consistent while the transaction runs decodes all of it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xloginsert.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "common/hmac.h"
#include "common/sha2.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/message.h"
#include "replication/slot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "core/clock.h"
#include "core/compat.h"
#include "core/spicheck.h"
#include "core/worker.h"
#include "kafka/outbox.h"
#include "kafka/progress.h"

int			infra_kafka_outbox = KAFKA_OUTBOX_TABLE;

static const struct config_enum_entry outbox_options[] = {
	{"table", KAFKA_OUTBOX_TABLE, false},
	{"wal", KAFKA_OUTBOX_WAL, false},
	{NULL, 0, false}
};

static SPIPlanPtr insert_plan = NULL;

/* This backend's block of WAL-outbox ids: next_id up to block_end. */
static int64 next_id = 0;
static int64 block_end = 0;
static Oid	block_sequence_seen = InvalidOid;

/* infra.kafka_wal_secret, read once per install (its table's oid). */
#define KAFKA_WAL_SECRET_LEN 32
static uint8 secret[KAFKA_WAL_SECRET_LEN];
static Oid	secret_table = InvalidOid;

void
KafkaOutboxInit(void)
{
	DefineCustomEnumVariable("infra.kafka_outbox",
							 "Where kafka_send writes a transaction's messages: table or wal.",
							 "wal writes transactional logical messages that the delivery worker decodes "
							 "from its slot (needs wal_level = logical); table writes rows of "
							 "infra.kafka_outbox_batches.",
							 &infra_kafka_outbox,
							 KAFKA_OUTBOX_TABLE, outbox_options,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
}

/*
 * The name of this database's delivery slot (one per database, the plugin
 * "infra"), into name (NAMEDATALEN bytes).
 */
void
KafkaWalSlotName(char *name)
{
	snprintf(name, NAMEDATALEN, "infra_kafka_%u", MyDatabaseId);
}

/*
 * This database's delivery slot: how far it has confirmed, InvalidXLogRecPtr
 * while it is being created or when it is not there (*exists, when given,
 * tells the two apart).  A consistent slot decodes whole every transaction
 * running now.
 */
XLogRecPtr
KafkaWalSlotConfirmed(bool *exists)
{
	char		name[NAMEDATALEN];
	ReplicationSlot *slot;
	XLogRecPtr	confirmed = InvalidXLogRecPtr;

	KafkaWalSlotName(name);
	LWLockAcquire(ReplicationSlotControlLock, LW_SHARED);
	slot = SearchNamedReplicationSlot(name, false);
	if (slot != NULL)
	{
		SpinLockAcquire(&slot->mutex);
		if (slot->data.database == MyDatabaseId)
			confirmed = slot->data.confirmed_flush;
		SpinLockRelease(&slot->mutex);
	}
	LWLockRelease(ReplicationSlotControlLock);
	if (exists)
		*exists = slot != NULL;
	return confirmed;
}

/*
 * The next WAL-outbox id of this backend: one sequence call per
 * KAFKA_WAL_BLOCK ids.  A block dies with its backend (gaps, never reuse:
 * the sequence is WAL-logged ahead).  The caller needs no right on the
 * sequence: EXECUTE on kafka_send is the gate.
 */
int64
KafkaWalNextId(Oid block_sequence)
{
	if (next_id >= block_end || block_sequence != block_sequence_seen)
	{
		int64		block = nextval_internal(block_sequence, false);

		next_id = block * KAFKA_WAL_BLOCK;
		block_end = next_id + KAFKA_WAL_BLOCK;
		block_sequence_seen = block_sequence;
	}
	return next_id++;
}

/* The largest write buffer a backend keeps between transactions. */
#define KAFKA_WAL_KEEP_BYTES (1024 * 1024)

/*
 * Bytes of a varlena of n data bytes as KafkaWalWrite lays it out.
 */
static inline Size
KafkaWalVarlenaSize(int32 n)
{
	return INTALIGN(VARHDRSZ + n);
}

/*
 * Copy n bytes as a varlena (4-byte header) padded to 4 bytes at p, sized
 * for it by the caller (KafkaWalVarlenaSize); returns the byte after it.
 */
static inline char *
KafkaWalPutVarlena(char *p, const void *data, int32 n)
{
	Size		padded = KafkaWalVarlenaSize(n);

	SET_VARSIZE(p, VARHDRSZ + n);
	memcpy(p + VARHDRSZ, data, n);
	memset(p + VARHDRSZ + n, 0, padded - (VARHDRSZ + n));
	return p + padded;
}

/*
 * Append len bytes as a varlena (4-byte header), padded to 4 bytes: the
 * worker points at it in place (walread.c).
 */
void
KafkaWalAppendVarlena(StringInfo buf, const void *data, int32 len)
{
	Size		size = KafkaWalVarlenaSize(len);

	enlargeStringInfo(buf, size);
	(void) KafkaWalPutVarlena(buf->data + buf->len, data, len);
	buf->len += size;
	buf->data[buf->len] = '\0';
}

/*
 * Read the database's secret (once per install) as reader (InvalidOid: as
 * the current user), as a restricted operation.  In a transaction.
 */
void
KafkaWalLoadSecret(Oid reader)
{
	Oid			table = get_relname_relid("kafka_wal_secret", get_namespace_oid("infra", false));
	Oid			save_user;
	int			save_context;
	bool		pushed = false;
	bytea	   *value;

	if (!OidIsValid(table))
		elog(ERROR, "infra.kafka_wal_secret does not exist");
	if (table == secret_table)
		return;
	if (!ActiveSnapshotSet())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		pushed = true;
	}
	GetUserIdAndSecContext(&save_user, &save_context);
	if (OidIsValid(reader))
		SetUserIdAndSecContext(reader, save_context |
							   SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		static const Oid types[1] = {BYTEAOID};

		SPI_connect();
		SpiCheckResult(SPI_execute("SELECT secret FROM infra.kafka_wal_secret", true, 2),
					   SPI_OK_SELECT, "infra.kafka_wal_secret", 1, types);
		if (SPI_processed != 1)
			elog(ERROR, "infra.kafka_wal_secret must hold one row, not " UINT64_FORMAT, SPI_processed);
		value = DatumGetByteaPP(SpiGetValue(0, 1, false, NULL, "infra.kafka_wal_secret"));
		if (VARSIZE_ANY_EXHDR(value) != KAFKA_WAL_SECRET_LEN)
			elog(ERROR, "infra.kafka_wal_secret holds %zu bytes, not %d",
				 VARSIZE_ANY_EXHDR(value), KAFKA_WAL_SECRET_LEN);
		memcpy(secret, VARDATA_ANY(value), KAFKA_WAL_SECRET_LEN);
		SPI_finish();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_user, save_context);
	}
	PG_END_TRY();
	if (pushed)
		PopActiveSnapshot();
	secret_table = table;
}

/*
 * Has this process read the secret (the worker has, before it decodes)?
 */
bool
KafkaWalSecretLoaded(void)
{
	return OidIsValid(secret_table);
}

/*
 * The token of the transaction xid's logical messages: HMAC-SHA256 of
 * "infra.kafka" and the xid under the secret, its first bytes.
 */
void
KafkaWalToken(TransactionId xid, uint8 *token)
{
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);
	uint8		mac[PG_SHA256_DIGEST_LENGTH];
	uint32		x = xid;

	if (ctx == NULL ||
		pg_hmac_init(ctx, secret, KAFKA_WAL_SECRET_LEN) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) KAFKA_WAL_PREFIX, strlen(KAFKA_WAL_PREFIX)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) &x, sizeof(x)) < 0 ||
		pg_hmac_final(ctx, mac, sizeof(mac)) < 0)
		elog(ERROR, "could not compute the WAL outbox's token: %s",
			 ctx ? pg_hmac_error(ctx) : "out of memory");
	pg_hmac_free(ctx);
	memcpy(token, mac, KAFKA_WAL_TOKEN_LEN);
}

/*
 * Write n messages as one transactional logical message, in call order,
 * with the transaction's token (KafkaWalLoadSecret came first).  The
 * record is sized first and laid out in a buffer this backend keeps for
 * the next transaction (at most KAFKA_WAL_KEEP_BYTES of it): a fresh one
 * each time would be faulted in and trimmed again at every commit.
 */
void
KafkaWalWrite(const BufferedMessage *msgs, int n)
{
	static char *buffer = NULL;
	static Size buffer_size = 0;
	KafkaWalHead head;
	Size		size = sizeof(KafkaWalHead);
	char	   *p;
	int			i;

	for (i = 0; i < n; i++)
	{
		const BufferedMessage *m = &msgs[i];

		size += sizeof(KafkaWalItem) + KafkaWalVarlenaSize(VARSIZE_ANY_EXHDR(m->topic));
		if (m->key)
			size += KafkaWalVarlenaSize(VARSIZE_ANY_EXHDR(m->key));
		if (m->value)
			size += KafkaWalVarlenaSize(VARSIZE_ANY_EXHDR(m->value));
		if (m->headers)
			size += KafkaWalVarlenaSize(VARSIZE(m->headers) - VARHDRSZ);
	}
	if (size > buffer_size)
	{
		if (buffer != NULL)
			pfree(buffer);
		buffer = MemoryContextAlloc(TopMemoryContext, size);
		buffer_size = size;
	}

	memset(&head, 0, sizeof(head));
	head.magic = KAFKA_WAL_MAGIC;
	/* The ids were allocated in this transaction, so on this timeline. */
	head.timeline = (int32) GetWALInsertionTimeLine();
	head.written_at = GetCurrentTimestamp();
	head.n = n;
	/* The message goes under the top transaction's xid as decoding sees it. */
	KafkaWalToken(GetTopTransactionId(), head.token);
	memcpy(buffer, &head, sizeof(head));
	p = buffer + sizeof(head);
	for (i = 0; i < n; i++)
	{
		const BufferedMessage *m = &msgs[i];
		KafkaWalItem item;

		item.id = m->id;
		item.partition = m->has_partition ? m->partition : -1;
		item.topic_len = VARSIZE_ANY_EXHDR(m->topic);
		item.key_len = m->key ? (int32) VARSIZE_ANY_EXHDR(m->key) : -1;
		item.value_len = m->value ? (int32) VARSIZE_ANY_EXHDR(m->value) : -1;
		item.headers_len = m->headers ? (int32) VARSIZE(m->headers) - VARHDRSZ : -1;
		memcpy(p, &item, sizeof(item));
		p += sizeof(item);
		p = KafkaWalPutVarlena(p, VARDATA_ANY(m->topic), item.topic_len);
		if (m->key)
			p = KafkaWalPutVarlena(p, VARDATA_ANY(m->key), item.key_len);
		if (m->value)
			p = KafkaWalPutVarlena(p, VARDATA_ANY(m->value), item.value_len);
		if (m->headers)
			p = KafkaWalPutVarlena(p, VARDATA(m->headers), item.headers_len);
	}
	Assert(p == buffer + size);
	(void) InfraLogLogicalMessage(KAFKA_WAL_PREFIX, buffer, size, true);
	if (buffer_size > KAFKA_WAL_KEEP_BYTES)
	{
		pfree(buffer);
		buffer = NULL;
		buffer_size = 0;
	}
}

/*
 * Insert one outbox row (args: first id, count, the six arrays and the
 * timeline) as the outbox's owner, as a restricted operation: the caller
 * may not write the outbox itself.
 */
void
KafkaTableWrite(Datum *args, Oid writer)
{
	Oid			argtypes[9] = {INT8OID, INT4OID, INT8ARRAYOID, TEXTARRAYOID, INT4ARRAYOID,
	BYTEAARRAYOID, BYTEAARRAYOID, JSONBARRAYOID, INT4OID};
	bool		pushed_snapshot = false;

	/* At pre-commit no snapshot is active any more; the INSERT needs one. */
	if (!ActiveSnapshotSet())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		pushed_snapshot = true;
	}
	(void) SpiExecKeptAs(writer, &insert_plan,
						 "INSERT INTO infra.kafka_outbox_batches "
						 "(first_id, messages, ids, topics, partitions, keys, vals, headers, timeline) "
						 "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
						 9, argtypes, args, NULL, false, SPI_OK_INSERT, "the outbox insert", NULL);
	if (pushed_snapshot)
		PopActiveSnapshot();
}

/*
 * kafka_flush's WAL part: a marker (a non-transactional logical message,
 * which the plugin ignores) written now, then wait until the worker has
 * confirmed past it: every WAL-outbox message committed before the call
 * has then been delivered, dead-lettered or moved to the table outbox (for
 * retries), which kafka_flush waits on next.  True without a slot.
 */
bool
KafkaWalFlushWait(int64 deadline_ns)
{
	XLogRecPtr	marker;
	bool		done = false;

	if (XLogRecPtrIsInvalid(KafkaWalSlotConfirmed(NULL)))
		return true;
	marker = InfraLogLogicalMessage(KAFKA_WAL_PREFIX ".flush", "", 0, false);
	XLogFlush(marker);
	for (;;)
	{
		XLogRecPtr	confirmed;

		InfraWorkerWakeNow(INFRA_WORKER_DELIVERY);
		confirmed = KafkaWalSlotConfirmed(NULL);

		/* The marker's LSN is its end: confirmed up to there is past it. */
		if (XLogRecPtrIsInvalid(confirmed) || confirmed >= marker)
		{
			done = true;
			break;
		}
		if (InfraMonotonicNs() >= deadline_ns)
			break;
		KafkaProgressSleep(deadline_ns);
	}
	KafkaProgressSleepEnd();
	return done;
}