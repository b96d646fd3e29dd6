/*-------------------------------------------------------------------------
 *
 * walread.c
 *		The delivery worker's read of the WAL outbox: its logical slot,
 *		decoded with infra's output plugin (decode.c), in commit order.
 *
 * The worker holds its slot ("infra_kafka_<database oid>") and one
 * decoding context for as long as it runs, reading on from where the last
 * round stopped: each round decodes only new WAL, never what it already
 * read.  A round reads committed transactions (up to the WAL flushed here)
 * until it holds infra.kafka_batch_size messages or the bytes bound; once
 * they are settled (delivered, dead-lettered, or moved to the table outbox
 * to be retried from there) the slot confirms past them, which is the whole
 * of "how far Kafka has it": one LSN.  Two reads may be open at once (a
 * round waiting for its acknowledgements, the next being produced); they
 * are confirmed in the order they were read.  An error between a read and
 * its confirmation starts decoding again from the slot (at least once, as
 * after a crash).
 *
 * With infra.kafka_outbox = wal the worker creates the slot; with table it
 * still drains a slot left from wal (never drops it: a transaction that
 * began under wal may still commit into it).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlogreader.h"
#include "access/xlogutils.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "replication/decode.h"
#include "replication/logical.h"
#include "replication/slot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/varlena.h"
#include "utils/memutils.h"

#include "core/compat.h"
#include "core/spicheck.h"
#include "core/version.h"
#include "core/worker.h"
#include "kafka/outbox.h"
#include "kafka/progress.h"
#include "kafka/txn.h"
#include "kafka/producer.h"
#include "kafka/walread.h"

/* Most key and value bytes one round reads (at least one transaction). */
#define WAL_BATCH_BYTES (16 * 1024 * 1024)

/* One logical message decoded: its commit, then KafkaWalWrite's bytes. */
typedef struct WalChunk
{
	char	   *data;
	Size		len;
} WalChunk;

static LogicalDecodingContext *decoding = NULL;

/*
 * What one read decoded, kept until it is confirmed.  Two: one round may be
 * waiting for its acknowledgements while the next is read and produced.
 */
typedef struct WalBatch
{
	MemoryContext context;
	WalChunk   *chunks;
	int			nchunks;
	int			capacity;
	int64		messages;
	Size		bytes;
	XLogRecPtr	upto;			/* the reader's position after it */
	bool		open;			/* read, not yet confirmed */
} WalBatch;

static WalBatch batches[KAFKA_WAL_BATCHES];
static WalBatch *filling = NULL;	/* the one WalWrite appends to */
static bool reading = false;	/* inside a decode */
static bool warned_wal_level = false;
static bool warned_plugin = false;
static int	ignored = 0;		/* logical messages of ours kafka_send did not write */

static void
WalPrepareWrite(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid, bool last_write)
{
	resetStringInfo(ctx->out);
}

/*
 * Did kafka_send write this logical message (the token of its transaction)
 * and is it whole?  Anyone can write a logical message with our prefix.
 */
static bool
KafkaWalValid(const char *data, Size len, TransactionId xid)
{
	static TransactionId token_xid = InvalidTransactionId;
	static uint8 token[KAFKA_WAL_TOKEN_LEN];
	const char *p = data + sizeof(KafkaWalCommit) + sizeof(KafkaWalHead);
	const char *end = data + len;
	KafkaWalHead head;
	int			j;

	if (len < sizeof(KafkaWalCommit) + sizeof(KafkaWalHead))
		return false;
	memcpy(&head, data + sizeof(KafkaWalCommit), sizeof(head));
	if (head.magic != KAFKA_WAL_MAGIC || head.n <= 0)
		return false;
	if (xid != token_xid)
	{
		KafkaWalToken(xid, token);
		token_xid = xid;
	}
	if (memcmp(head.token, token, KAFKA_WAL_TOKEN_LEN) != 0)
		return false;
	for (j = 0; j < head.n; j++)
	{
		KafkaWalItem item;
		int32		lens[4];
		int			k;

		if (end - p < (long) sizeof(item))
			return false;
		memcpy(&item, p, sizeof(item));
		p += sizeof(item);
		lens[0] = item.topic_len;
		lens[1] = item.key_len;
		lens[2] = item.value_len;
		lens[3] = item.headers_len;
		if (lens[0] < 0)
			return false;
		for (k = 0; k < 4; k++)
		{
			if (lens[k] < 0)
				continue;
			if (lens[k] > MaxAllocSize || end - p < (long) INTALIGN(VARHDRSZ + lens[k]) ||
				VARSIZE(p) != VARHDRSZ + lens[k])
				return false;
			p += INTALIGN(VARHDRSZ + lens[k]);
		}
	}
	return p == end;
}

static void
WalWrite(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid, bool last_write)
{
	WalChunk   *chunk;
	KafkaWalHead head;

	if (!KafkaWalValid(ctx->out->data, ctx->out->len, xid))
	{
		ignored++;
		return;
	}
	memcpy(&head, ctx->out->data + sizeof(KafkaWalCommit), sizeof(head));
	/* Exactly once: a transaction Kafka has already (txn.c) is not read again. */
	if (!XLogRecPtrIsInvalid(KafkaTxnSkipUpto()))
	{
		KafkaWalCommit commit;

		memcpy(&commit, ctx->out->data, sizeof(commit));
		if (commit.end_lsn <= KafkaTxnSkipUpto())
			return;
	}
	if (filling->nchunks >= filling->capacity)
	{
		filling->capacity = Max(64, filling->capacity * 2);
		filling->chunks = filling->chunks == NULL ?
			MemoryContextAlloc(filling->context, sizeof(WalChunk) * filling->capacity) :
			repalloc(filling->chunks, sizeof(WalChunk) * filling->capacity);
	}
	chunk = &filling->chunks[filling->nchunks++];
	chunk->len = ctx->out->len;
	chunk->data = MemoryContextAlloc(filling->context, chunk->len);
	memcpy(chunk->data, ctx->out->data, chunk->len);
	filling->messages += head.n;
	filling->bytes += chunk->len;
}

static void
WalProgress(LogicalDecodingContext *ctx, XLogRecPtr lsn, TransactionId xid, bool skipped_xact)
{
}

/*
 * Forget what batch b read.
 */
static void
KafkaWalForget(WalBatch *b)
{
	if (b->context != NULL)
		MemoryContextReset(b->context);
	b->chunks = NULL;
	b->nchunks = 0;
	b->capacity = 0;
	b->messages = 0;
	b->bytes = 0;
	b->upto = InvalidXLogRecPtr;
	b->open = false;
}

/*
 * Let go of the decoding context and the slot (shutdown, or an error cut
 * a round short: the next read decodes again from the slot).
 */
void
KafkaWalStop(void)
{
	int			i;

	if (decoding != NULL)
		FreeDecodingContext(decoding);
	decoding = NULL;
	if (MyReplicationSlot != NULL)
	{
		/* Keep what was confirmed across a restart. */
		ReplicationSlotMarkDirty();
		ReplicationSlotSave();
		ReplicationSlotRelease();
	}
	for (i = 0; i < KAFKA_WAL_BATCHES; i++)
		KafkaWalForget(&batches[i]);
	reading = false;
}

/*
 * Create the slot (infra.kafka_outbox = wal).  Until it is consistent,
 * kafka_send writes the table outbox.  Waits for the transactions running
 * now, as any logical slot's creation does.
 */
static void
KafkaWalCreateSlot(const char *name)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		arg = CStringGetTextDatum(name);

	InfraWorkerSpiBegin();
	SpiCheckResult(SPI_execute_with_args("SELECT FROM pg_catalog.pg_create_logical_replication_slot($1, 'infra')",
										 1, argtypes, &arg, NULL, false, 1),
				   SPI_OK_SELECT, "the WAL outbox's slot", 0, NULL);
	InfraWorkerSpiEnd();
	ereport(LOG,
			(errmsg("infra worker created the logical replication slot \"%s\" for the WAL outbox", name)));
}

/*
 * Where the server lists the libraries trusted as output plugins
 * (output_plugin_libraries), is infra one of them?  A server without the
 * setting trusts any.
 */
static bool
KafkaWalPluginTrusted(void)
{
	const char *setting = GetConfigOption("output_plugin_libraries", true, false);
	char	   *copy;
	List	   *names;
	ListCell   *cell;
	bool		found = false;

	if (setting == NULL)
		return true;
	copy = pstrdup(setting);
	if (!SplitIdentifierString(copy, ',', &names))
		return false;
	foreach(cell, names)
		if (strcmp(lfirst(cell), "infra") == 0)
			found = true;
	return found;
}

/*
 * Is the WAL outbox to be read: infra.kafka_outbox = wal (the slot is made
 * here if need be), or a slot left from it?
 */
bool
KafkaWalWanted(void)
{
	char		name[NAMEDATALEN];
	bool		exists;

	if (decoding != NULL)
		return true;
	/* The previous release's objects have no WAL outbox (online upgrade). */
	if (InfraSchemaIsPrevious())
		return false;
	/* Made by this worker under wal, or left from it. */
	(void) KafkaWalSlotConfirmed(&exists);
	if (exists)
		return true;
	if (infra_kafka_outbox != KAFKA_OUTBOX_WAL)
		return false;
	if (wal_level < WAL_LEVEL_LOGICAL)
	{
		if (!warned_wal_level)
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("infra.kafka_outbox is wal but wal_level is not logical: kafka_send writes the table outbox"),
					 errhint("Set wal_level = logical and restart.")));
		warned_wal_level = true;
		return false;
	}
	if (!KafkaWalPluginTrusted())
	{
		if (!warned_plugin)
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("infra.kafka_outbox is wal but \"infra\" is not in output_plugin_libraries: kafka_send writes the table outbox"),
					 errhint("Add infra to output_plugin_libraries and reload.")));
		warned_plugin = true;
		return false;
	}
	KafkaWalSlotName(name);
	KafkaWalCreateSlot(name);
	return true;
}

/*
 * Acquire the slot and start decoding where it stands.
 */
static void
KafkaWalStart(void)
{
	MemoryContext old;
	char		name[NAMEDATALEN];
	int			i;

	for (i = 0; i < KAFKA_WAL_BATCHES; i++)
		if (batches[i].context == NULL)
			batches[i].context = AllocSetContextCreate(TopMemoryContext, "infra WAL outbox",
													   ALLOCSET_DEFAULT_SIZES);
	KafkaWalSlotName(name);
	InfraSlotAcquire(name);
	old = MemoryContextSwitchTo(TopMemoryContext);
	decoding = CreateDecodingContext(InvalidXLogRecPtr, NIL, false,
									 XL_ROUTINE(.page_read = read_local_xlog_page,
												.segment_open = wal_segment_open,
												.segment_close = wal_segment_close),
									 WalPrepareWrite, WalWrite, WalProgress);
	MemoryContextSwitchTo(old);
	XLogBeginRead(decoding->reader, MyReplicationSlot->data.restart_lsn);
}

/*
 * Decode on, up to the WAL flushed here, until the round is full.
 */
static void
KafkaWalDecode(void)
{
	XLogRecPtr	upto = GetFlushRecPtr(NULL);

	StartTransactionCommand();
	reading = true;
	KafkaWalLoadSecret(InvalidOid);
	if (decoding == NULL)
		KafkaWalStart();
	while (decoding->reader->EndRecPtr < upto &&
		   filling->messages < infra_kafka_batch_size && filling->bytes < WAL_BATCH_BYTES &&
		   !ShutdownRequestPending)
	{
		char	   *errm = NULL;
		XLogRecord *record;

		/*
		 * The reader allocates its decode buffer at its first read, in the
		 * current context: the decoding context's, which outlives this
		 * transaction.
		 */
		MemoryContextSwitchTo(decoding->context);
		record = XLogReadRecord(decoding->reader, &errm);

		if (errm != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DATA_CORRUPTED),
					 errmsg("could not read the WAL outbox: %s", errm)));
		if (record != NULL)
			LogicalDecodingProcessRecord(decoding, decoding->reader);
		CHECK_FOR_INTERRUPTS();
	}
	MemoryContextSwitchTo(CurTransactionContext);
	if (ignored > 0)
		ereport(WARNING,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("infra worker ignored %d logical messages with the prefix \"%s\" that kafka_send did not write",
						ignored, KAFKA_WAL_PREFIX),
				 errdetail("They carry no valid token of their transaction: pg_logical_emit_message wrote them, or they are damaged. They are not sent.")));
	ignored = 0;
	filling->upto = decoding->reader->EndRecPtr;
	filling->open = true;
	reading = false;
	CommitTransactionCommand();
}

/*
 * The LSN the round of this batch read up to: what the slot confirms once
 * it is settled, and (exactly once) the progress its transaction carries.
 */
XLogRecPtr
KafkaWalUpto(int batch)
{
	return batches[batch].upto;
}

/*
 * Confirm what the round of this batch read: delivered, dead, or moved to
 * the table.  Rounds are confirmed in the order they were read.
 */
void
KafkaWalConfirm(int batch)
{
	WalBatch   *b = &batches[batch];

	if (decoding == NULL || !b->open)
		return;
	LogicalConfirmReceivedLocation(b->upto);
	/* A checkpoint then saves the confirmed position too. */
	ReplicationSlotMarkDirty();
	KafkaWalForget(b);
	KafkaProgressed();
}

/*
 * Let go of what the round of this batch read without confirming it
 * (exactly once: its Kafka transaction goes on with the next round, read
 * after it, whose confirmation covers it; if that transaction aborts,
 * decoding starts again from the slot, before it).
 */
void
KafkaWalRelease(int batch)
{
	KafkaWalForget(&batches[batch]);
}

/*
 * The varlena of n data bytes at *p, in place (KafkaWalWrite aligned it);
 * step past it and its padding.
 */
static Datum
KafkaWalVarlena(const char **p, int32 n, const WalChunk *chunk)
{
	const char *v = *p;

	if (n < 0 || v + INTALIGN(VARHDRSZ + n) > chunk->data + chunk->len || VARSIZE(v) != VARHDRSZ + n)
		elog(ERROR, "infra WAL outbox: logical message of %zu bytes does not match its contents",
			 chunk->len);
	*p += INTALIGN(VARHDRSZ + n);
	return PointerGetDatum(v);
}

/*
 * One decoded logical message as a round row (in the current context).
 */
static void
KafkaWalUnpack(const WalChunk *chunk, OutboxRow *row)
{
	const char *p = chunk->data + sizeof(KafkaWalCommit);
	KafkaWalHead head;
	int			j;

	memcpy(&head, p, sizeof(head));
	p += sizeof(head);
	row->nmsgs = head.n;
	row->created_at = head.written_at;
	row->timeline = head.timeline;
	row->ids = palloc(sizeof(Datum) * head.n);
	row->topics = palloc(sizeof(Datum) * head.n);
	row->partitions = palloc(sizeof(Datum) * head.n);
	row->keys = palloc(sizeof(Datum) * head.n);
	row->vals = palloc(sizeof(Datum) * head.n);
	row->headers = palloc(sizeof(Datum) * head.n);
	row->pnulls = palloc(sizeof(bool) * head.n);
	row->knulls = palloc(sizeof(bool) * head.n);
	row->vnulls = palloc(sizeof(bool) * head.n);
	row->hnulls = palloc(sizeof(bool) * head.n);
	row->keep = palloc(sizeof(bool) * head.n);
	for (j = 0; j < head.n; j++)
	{
		KafkaWalItem item;

		memcpy(&item, p, sizeof(item));
		p += sizeof(item);
		row->ids[j] = Int64GetDatum(item.id);
		row->pnulls[j] = item.partition < 0;
		row->partitions[j] = Int32GetDatum(Max(item.partition, 0));
		row->topics[j] = KafkaWalVarlena(&p, item.topic_len, chunk);
		row->knulls[j] = item.key_len < 0;
		row->keys[j] = row->knulls[j] ? (Datum) 0 : KafkaWalVarlena(&p, item.key_len, chunk);
		row->vnulls[j] = item.value_len < 0;
		row->vals[j] = row->vnulls[j] ? (Datum) 0 : KafkaWalVarlena(&p, item.value_len, chunk);
		row->hnulls[j] = item.headers_len < 0;
		row->headers[j] = row->hnulls[j] ? (Datum) 0 : KafkaWalVarlena(&p, item.headers_len, chunk);
		row->keep[j] = true;
	}
	row->first_id = DatumGetInt64(row->ids[0]);
	if (p != chunk->data + chunk->len)
		elog(ERROR, "infra WAL outbox: logical message of %zu bytes does not match its contents",
			 chunk->len);
}

/*
 * The batch read and held back (the breaker, the standbys), which must go
 * before anything read after it; -1 when none is.  Not one in flight: the
 * producer asks only when none is.
 */
int
KafkaWalHeldBatch(void)
{
	int			i;

	for (i = 0; i < KAFKA_WAL_BATCHES; i++)
		if (batches[i].open)
			return i;
	return -1;
}

/*
 * The next round from the WAL outbox into round (rows in commit order,
 * round->wal set), in batch slot `batch` (the other may be in flight): what
 * an earlier read there left unconfirmed (held back: the breaker, the
 * standbys), else newly decoded transactions.  Returns its messages; 0 when
 * the WAL up to the flushed position holds none (then, with no batch open,
 * the slot confirms past it at once, so it keeps no WAL for nothing).
 */
int
KafkaWalRead(KafkaRound *round, int batch)
{
	WalBatch   *b = &batches[batch];
	int			i;

	/* An error cut the last read short: decode again from the slot. */
	if (reading)
		KafkaWalStop();
	if (!b->open)
	{
		filling = b;
		KafkaWalDecode();
	}
	if (b->nchunks == 0)
	{
		bool		other_open = false;

		for (i = 0; i < KAFKA_WAL_BATCHES; i++)
			other_open |= (&batches[i] != b && batches[i].open);
		if (!other_open)
			KafkaWalConfirm(batch);
		else
			KafkaWalForget(b);
		return 0;
	}
	round->wal = true;
	round->wal_batch = batch;
	round->rows = palloc0(sizeof(OutboxRow) * b->nchunks);
	for (i = 0; i < b->nchunks; i++)
	{
		KafkaWalUnpack(&b->chunks[i], &round->rows[i]);
		round->total += round->rows[i].nmsgs;
	}
	round->nincluded = b->nchunks;
	return round->total;
}
