/*-------------------------------------------------------------------------
 *
 * render.c
 *		A statement's rows from the WAL outbox (rows.c) rendered into the
 *		messages the publishing trigger sends, by the output plugin.
 *
 * Runs in the delivery worker, inside decoding, where the catalog is read
 * as it was when the statement ran (a historic snapshot): the table's row
 * type as of then renders each row with row_to_json, the same text
 * to_json(row) gives, between the envelope's parts the trigger computed;
 * the key is each key column's to_jsonb(value) #>> '{}', joined by commas
 * for a primary key (concat_ws), as the trigger's SQL does.  The output is
 * a logical message of kafka_send's format (outbox.h), so the worker
 * delivers it like any other.  Only the worker renders (it has read the
 * secret and checks the token first); elsewhere the rows output nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "nodes/makefuncs.h"
#include "replication/logical.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/relcache.h"

#include "kafka/outbox.h"
#include "kafka/render.h"

/* The rows' message, parsed. */
typedef struct RenderInput
{
	KafkaWalRowsHead head;
	const char *p;				/* the next unread byte */
	const char *end;
} RenderInput;

/* The varlena at in->p (4-byte header, padded to 4); NULL past the end. */
static const struct varlena *
RenderVarlena(RenderInput *in)
{
	const char *v = in->p;

	if (in->end - v < VARHDRSZ || in->end - v < (long) INTALIGN(VARSIZE(v)))
		elog(ERROR, "infra WAL outbox: a statement's rows are cut short");
	in->p += INTALIGN(VARSIZE(v));
	return (const struct varlena *) v;
}

/* A varlena's bytes as a NUL-terminated string. */
static char *
RenderString(RenderInput *in)
{
	const struct varlena *v = RenderVarlena(in);

	return pnstrdup(VARDATA(v), VARSIZE(v) - VARHDRSZ);
}

/*
 * to_jsonb(value) #>> '{}' for a value of att's type, to_jsonb called as
 * from SQL (it asks its call expression for the argument's type).
 */
static char *
RenderScalar(Form_pg_attribute att, FmgrInfo *to_jsonb, Datum value)
{
	LOCAL_FCINFO(fcinfo, 2);
	Datum		jb;
	Datum		text_value;

	if (to_jsonb->fn_oid == InvalidOid)
	{
		fmgr_info(F_TO_JSONB, to_jsonb);
		to_jsonb->fn_expr = (Node *) makeFuncExpr(F_TO_JSONB, JSONBOID,
												  list_make1(makeNullConst(att->atttypid, att->atttypmod,
																		   att->attcollation)),
												  InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
	}
	jb = FunctionCall1(to_jsonb, value);
	InitFunctionCallInfoData(*fcinfo, NULL, 2, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = jb;
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = PointerGetDatum(construct_empty_array(TEXTOID));
	fcinfo->args[1].isnull = false;
	text_value = jsonb_extract_path_text(fcinfo);
	return fcinfo->isnull ? NULL : TextDatumGetCString(text_value);
}

/*
 * The message's key from the row (the new one, else the old): NULL without
 * key columns or, for a named column, when it is NULL.
 */
static char *
RenderKey(const KafkaWalRowsHead *head, HeapTuple tuple, TupleDesc desc, FmgrInfo *to_jsonb)
{
	StringInfoData key;
	int			k;

	if (head->nkeys == 0)
		return NULL;
	initStringInfo(&key);
	for (k = 0; k < head->nkeys; k++)
	{
		bool		isnull;
		Datum		value = heap_getattr(tuple, head->keys[k], desc, &isnull);
		char	   *text;

		if (isnull)
		{
			if (head->key_column)
				return NULL;
			continue;
		}
		text = RenderScalar(TupleDescAttr(desc, head->keys[k] - 1), &to_jsonb[k], value);
		if (text == NULL)
		{
			if (head->key_column)
				return NULL;
			continue;
		}
		if (key.len > 0)
			appendStringInfoChar(&key, ',');
		appendStringInfoString(&key, text);
	}
	return key.data;
}

/*
 * The next tuple of the input as a row of the table (aligned copy), and its
 * rendering.
 */
static char *
RenderRow(RenderInput *in, TupleDesc desc, HeapTuple tuple)
{
	const struct varlena *v = RenderVarlena(in);
	Datum		row;

	tuple->t_len = VARSIZE(v) - VARHDRSZ;
	tuple->t_data = palloc(tuple->t_len);
	memcpy(tuple->t_data, VARDATA(v), tuple->t_len);
	ItemPointerSetInvalid(&tuple->t_self);
	tuple->t_tableOid = InvalidOid;
	row = heap_copy_tuple_as_datum(tuple, desc);
	return TextDatumGetCString(DirectFunctionCall1(row_to_json, row));
}

/*
 * One output message of kafka_send's format: the rows rendered.
 */
static void
RenderMessages(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, RenderInput *in,
			   Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	const struct varlena *topic = RenderVarlena(in);
	char	   *start = RenderString(in);
	char	   *mid = RenderString(in);
	char	   *end = RenderString(in);
	const struct varlena *headers = in->head.has_headers ? RenderVarlena(in) : NULL;
	FmgrInfo	to_jsonb[KAFKA_WAL_MAX_KEYS];
	KafkaWalCommit commit;
	KafkaWalHead out;
	StringInfoData value;
	int			i;

	memset(to_jsonb, 0, sizeof(to_jsonb));
	commit.commit_lsn = txn->final_lsn;
	commit.end_lsn = txn->end_lsn;
	commit.commit_time = txn->xact_time.commit_time;
	memset(&out, 0, sizeof(out));
	out.magic = KAFKA_WAL_MAGIC;
	out.timeline = in->head.timeline;
	out.written_at = in->head.written_at;
	out.n = in->head.n;
	memcpy(out.token, in->head.token, KAFKA_WAL_TOKEN_LEN);
	OutputPluginPrepareWrite(ctx, true);
	appendBinaryStringInfo(ctx->out, (char *) &commit, sizeof(commit));
	appendBinaryStringInfo(ctx->out, (char *) &out, sizeof(out));
	initStringInfo(&value);
	for (i = 0; i < in->head.n; i++)
	{
		HeapTupleData old_row;
		HeapTupleData new_row;
		KafkaWalItem item;
		char	   *key;

		if (in->end - in->p < (long) sizeof(int64))
			elog(ERROR, "infra WAL outbox: a statement's rows are cut short");
		memcpy(&item.id, in->p, sizeof(int64));
		in->p += sizeof(int64);
		resetStringInfo(&value);
		appendStringInfoString(&value, start);
		if (in->head.has_old)
			appendStringInfoString(&value, RenderRow(in, desc, &old_row));
		appendStringInfoString(&value, mid);
		if (in->head.has_new)
			appendStringInfoString(&value, RenderRow(in, desc, &new_row));
		appendStringInfoString(&value, end);
		key = RenderKey(&in->head, in->head.has_new ? &new_row : &old_row, desc, to_jsonb);

		item.partition = -1;
		item.topic_len = VARSIZE(topic) - VARHDRSZ;
		item.key_len = key ? (int32) strlen(key) : -1;
		item.value_len = value.len;
		item.headers_len = headers ? (int32) (VARSIZE(headers) - VARHDRSZ) : -1;
		appendBinaryStringInfo(ctx->out, (char *) &item, sizeof(item));
		KafkaWalAppendVarlena(ctx->out, VARDATA(topic), item.topic_len);
		if (key)
			KafkaWalAppendVarlena(ctx->out, key, item.key_len);
		KafkaWalAppendVarlena(ctx->out, value.data, value.len);
		if (headers)
			KafkaWalAppendVarlena(ctx->out, VARDATA(headers), item.headers_len);
	}
	OutputPluginWrite(ctx, true);
}

/*
 * A statement's rows (message, size bytes) of transaction txn, rendered
 * into one output message.  Not in the worker (no secret read): nothing.
 * With a token not the transaction's: the bytes as they are, which the
 * worker refuses and counts.
 */
void
KafkaRenderRows(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, const char *message, Size size)
{
	RenderInput in;
	uint8		token[KAFKA_WAL_TOKEN_LEN];
	MemoryContext render_context;
	MemoryContext old;
	Relation	rel;

	if (!KafkaWalSecretLoaded())
		return;
	if (size < sizeof(KafkaWalRowsHead))
		elog(ERROR, "infra WAL outbox: a statement's rows are cut short");
	memcpy(&in.head, message, sizeof(in.head));
	KafkaWalToken(txn->xid, token);
	if (memcmp(token, in.head.token, KAFKA_WAL_TOKEN_LEN) != 0 || in.head.n <= 0 ||
		in.head.nkeys < 0 || in.head.nkeys > KAFKA_WAL_MAX_KEYS)
	{
		OutputPluginPrepareWrite(ctx, true);
		appendBinaryStringInfo(ctx->out, message, size);
		OutputPluginWrite(ctx, true);
		return;
	}
	in.p = message + sizeof(KafkaWalRowsHead);
	in.end = message + size;
	rel = RelationIdGetRelation(in.head.relid);
	if (!RelationIsValid(rel))
		elog(ERROR, "infra WAL outbox: the table %u of a statement's rows is gone", in.head.relid);
	render_context = AllocSetContextCreate(CurrentMemoryContext, "infra rows rendering",
										   ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(render_context);
	RenderMessages(ctx, txn, &in, rel);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(render_context);
	RelationClose(rel);
}
