/*-------------------------------------------------------------------------
 *
 * rows.c
 *		A statement's rows into the WAL outbox as they are, for the worker
 *		to render (render.c).
 *
 * Rendering every row of a statement as JSON in the statement costs more
 * than the statement itself (to_json of the old and the new row, a few
 * microseconds a row).  With the WAL outbox the publishing statement
 * trigger writes instead the transition tables' tuples, with what the
 * envelope needs (the text around the rows, computed once), into logical
 * messages of up to a thousand rows; the worker's output plugin renders
 * them when it decodes the commit, with the catalog as it was at the
 * statement (a historic snapshot), into exactly the messages the trigger
 * would have sent.  Values stored out of line (TOAST) are inlined first:
 * the old row's may be vacuumed away before the worker reads them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/heaptoast.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "replication/message.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "core/compat.h"
#include "kafka/kafka.h"
#include "kafka/outbox.h"
#include "kafka/rows.h"

/* Rows, and bytes, of one logical message. */
#define ROWS_PER_MESSAGE 1000
#define ROWS_BYTES_PER_MESSAGE (8 * 1024 * 1024)

/* One transition table, read through a read pointer of our own. */
typedef struct RowsReader
{
	Tuplestorestate *store;
	TupleTableSlot *slot;
	int			pointer;
} RowsReader;

static void
RowsReaderStart(RowsReader *reader, Tuplestorestate *store, TupleDesc desc)
{
	reader->store = store;
	if (store == NULL)
		return;
	reader->slot = MakeSingleTupleTableSlot(desc, &TTSOpsMinimalTuple);
	reader->pointer = tuplestore_alloc_read_pointer(store, EXEC_FLAG_REWIND);
	tuplestore_select_read_pointer(store, reader->pointer);
	tuplestore_rescan(store);
}

/*
 * The next row of the transition table appended to buf as a varlena (the
 * tuple's header and data, external values inlined); false at the end.
 */
static bool
RowsReaderNext(RowsReader *reader, TupleDesc desc, StringInfo buf)
{
	HeapTuple	tuple;
	HeapTuple	flat;
	bool		should_free;

	tuplestore_select_read_pointer(reader->store, reader->pointer);
	if (!tuplestore_gettupleslot(reader->store, true, false, reader->slot))
		return false;
	tuple = ExecFetchSlotHeapTuple(reader->slot, false, &should_free);
	flat = HeapTupleHasExternal(tuple) ? toast_flatten_tuple(tuple, desc) : tuple;
	KafkaWalAppendVarlena(buf, flat->t_data, flat->t_len);
	if (flat != tuple)
		heap_freetuple(flat);
	if (should_free)
		heap_freetuple(tuple);
	return true;
}

/*
 * Start a logical message: its head (n filled in when it is written), then
 * what every row shares.
 */
static void
RowsBegin(StringInfo buf, const KafkaWalRowsHead *head, const PublishRows *what)
{
	resetStringInfo(buf);
	appendBinaryStringInfo(buf, (const char *) head, sizeof(*head));
	KafkaWalAppendVarlena(buf, VARDATA_ANY(what->topic), VARSIZE_ANY_EXHDR(what->topic));
	KafkaWalAppendVarlena(buf, what->start, strlen(what->start));
	KafkaWalAppendVarlena(buf, what->mid, strlen(what->mid));
	KafkaWalAppendVarlena(buf, what->end, strlen(what->end));
	if (what->headers)
		KafkaWalAppendVarlena(buf, VARDATA(what->headers), VARSIZE(what->headers) - VARHDRSZ);
}

static void
RowsWrite(StringInfo buf, int n)
{
	((KafkaWalRowsHead *) buf->data)->n = n;
	(void) InfraLogLogicalMessage(KAFKA_WAL_PREFIX, buf->data, buf->len, true);
}

/*
 * Write the trigger's rows (both transition tables read in step: an
 * UPDATE's old and new versions of a row are at the same place) into the
 * WAL outbox, ids from block_sequence.  Returns how many.
 */
int64
KafkaWalPublishRows(TriggerData *trigdata, const PublishRows *what, Oid block_sequence)
{
	TupleDesc	desc = RelationGetDescr(trigdata->tg_relation);
	KafkaWalRowsHead head;
	RowsReader	old_rows;
	RowsReader	new_rows;
	StringInfoData buf;
	int64		total = 0;
	int			n = 0;
	int			k;

	memset(&head, 0, sizeof(head));
	head.magic = KAFKA_WAL_ROWS_MAGIC;
	head.timeline = (int32) GetWALInsertionTimeLine();
	head.written_at = GetCurrentTimestamp();
	KafkaWalToken(GetTopTransactionId(), head.token);
	head.relid = RelationGetRelid(trigdata->tg_relation);
	head.has_old = what->old_rows;
	head.has_new = what->new_rows;
	head.has_headers = what->headers != NULL;
	head.key_column = what->key_column;
	head.nkeys = what->nkeys;
	for (k = 0; k < what->nkeys; k++)
		head.keys[k] = what->keys[k];

	RowsReaderStart(&old_rows, what->old_rows ? trigdata->tg_oldtable : NULL, desc);
	RowsReaderStart(&new_rows, what->new_rows ? trigdata->tg_newtable : NULL, desc);
	initStringInfo(&buf);
	RowsBegin(&buf, &head, what);
	for (;;)
	{
		int			before = buf.len;
		int64		id = KafkaWalNextId(block_sequence);
		bool		more = true;

		appendBinaryStringInfo(&buf, (char *) &id, sizeof(id));
		if (old_rows.store)
			more = RowsReaderNext(&old_rows, desc, &buf);
		if (more && new_rows.store)
			more = RowsReaderNext(&new_rows, desc, &buf);
		if (!more)
		{
			buf.len = before;
			break;
		}
		n++;
		total++;
		if (n >= ROWS_PER_MESSAGE || buf.len >= ROWS_BYTES_PER_MESSAGE)
		{
			RowsWrite(&buf, n);
			RowsBegin(&buf, &head, what);
			n = 0;
		}
	}
	if (n > 0)
		RowsWrite(&buf, n);
	pfree(buf.data);
	if (old_rows.store)
		ExecDropSingleTupleTableSlot(old_rows.slot);
	if (new_rows.store)
		ExecDropSingleTupleTableSlot(new_rows.slot);
	return total;
}
