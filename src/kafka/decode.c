/*-------------------------------------------------------------------------
 *
 * decode.c
 *		infra's logical decoding output plugin: the WAL outbox's messages,
 *		in commit order.
 *
 * A slot made with the plugin "infra" (the delivery worker's, one per
 * database) outputs, for every committed transaction, each logical
 * message it wrote with the prefix KAFKA_WAL_PREFIX, transactionally, as
 * one binary row: a KafkaWalCommit (where and when the transaction
 * committed) followed by the message's bytes.  Rows and relation changes
 * are not output: the outbox is the messages alone.  A rolled-back
 * transaction or savepoint, and a prepared transaction until COMMIT
 * PREPARED, output nothing.
 *
 * The worker reads the slot itself (walread.c); SQL can peek at it too,
 * with pg_logical_slot_peek_binary_changes().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "replication/logical.h"
#include "replication/output_plugin.h"
#include "replication/reorderbuffer.h"

#include "kafka/outbox.h"
#include "kafka/render.h"

extern PGDLLEXPORT void _PG_output_plugin_init(OutputPluginCallbacks *cb);

static void
DecodeStartup(LogicalDecodingContext *ctx, OutputPluginOptions *opt, bool is_init)
{
	ListCell   *option;

	foreach(option, ctx->output_plugin_options)
	{
		DefElem    *elem = lfirst(option);

		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the infra output plugin takes no option, not \"%s\"", elem->defname),
				 errhint("Read the slot without options.")));
	}
	opt->output_type = OUTPUT_PLUGIN_BINARY_OUTPUT;
	opt->receive_rewrites = false;
}

static void
DecodeBegin(LogicalDecodingContext *ctx, ReorderBufferTXN *txn)
{
}

static void
DecodeCommit(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr commit_lsn)
{
}

static void
DecodeChange(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
			 Relation relation, ReorderBufferChange *change)
{
}

static void
DecodeMessage(LogicalDecodingContext *ctx, ReorderBufferTXN *txn, XLogRecPtr lsn,
			  bool transactional, const char *prefix, Size size, const char *message)
{
	KafkaWalCommit commit;
	uint32		magic;

	if (!transactional || strcmp(prefix, KAFKA_WAL_PREFIX) != 0)
		return;
	/* A statement's rows: rendered into messages (render.c). */
	if (size >= sizeof(magic))
	{
		memcpy(&magic, message, sizeof(magic));
		if (magic == KAFKA_WAL_ROWS_MAGIC)
		{
			KafkaRenderRows(ctx, txn, message, size);
			return;
		}
	}
	commit.commit_lsn = txn->final_lsn;
	commit.end_lsn = txn->end_lsn;
	commit.commit_time = txn->xact_time.commit_time;
	OutputPluginPrepareWrite(ctx, true);
	appendBinaryStringInfo(ctx->out, (char *) &commit, sizeof(commit));
	appendBinaryStringInfo(ctx->out, message, size);
	OutputPluginWrite(ctx, true);
}

void
_PG_output_plugin_init(OutputPluginCallbacks *cb)
{
	cb->startup_cb = DecodeStartup;
	cb->begin_cb = DecodeBegin;
	cb->change_cb = DecodeChange;
	cb->commit_cb = DecodeCommit;
	cb->message_cb = DecodeMessage;
}
