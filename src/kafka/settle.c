/*-------------------------------------------------------------------------
 *
 * settle.c
 *		A delivery round's outcome written back to the outbox.
 *
 * In the round's second transaction: rows whose messages all went
 * (delivered or dead-lettered) are deleted, rows with some left are
 * rewritten to hold only those (their first id moving up), rows whose
 * messages all failed count an attempt and keep the error, and messages
 * refused for good move to infra.kafka_dead_letters.  A row leaves the
 * outbox only once Kafka has all of it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "core/spicheck.h"
#include "kafka/settle.h"

/* Its statements, planned once (per extension install). */
typedef struct SettlePlans
{
	SPIPlanPtr	delete_delivered;
	SPIPlanPtr	dead_letter;
	SPIPlanPtr	record_failure;
	SPIPlanPtr	rewrite;
	SPIPlanPtr	move_to_table;
} SettlePlans;

static SettlePlans plans;

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
 * The kept messages of a row as column arrays into args[0..5] (id, topic,
 * partition, key, value, headers); returns the first kept id.
 */
static Datum
KafkaKeptArrays(const OutboxRow *row, int kept, Datum *args)
{
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
	for (k = 0; k < 6; k++)
		args[k] = KafkaArray(e[k], nl[k], kept, message_column_types[k]);
	return e[0][0];
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

	memset(argnulls, ' ', sizeof(argnulls));
	args[0] = Int64GetDatum(row->first_id);
	args[1] = KafkaKeptArrays(row, kept, &args[3]);
	/* A row moved from the WAL outbox keeps its place. */
	if (row->moved)
		args[1] = Int64GetDatum(row->first_id);
	args[2] = Int32GetDatum(kept);
	args[9] = row->failed ? CStringGetTextDatum(first_error) : (Datum) 0;
	argnulls[9] = row->failed ? ' ' : 'n';
	SpiExecKept(&plans.rewrite,
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
 * WAL-outbox messages the round could not deliver become rows of the table
 * outbox (one per logical message, in commit order), retried from there
 * before the worker reads the WAL again.  Their ids come from per-backend
 * blocks, in no order: each row's first id is the table sequence's next
 * value, so the rows keep the order they are moved in (rows whose ids are
 * the WAL outbox's are read by first id, then place; see round.h).
 */
static void
KafkaMoveToTable(OutboxRow *row, int kept, const char *first_error)
{
	Oid			argtypes[10] = {INT4OID, INT8ARRAYOID, TEXTARRAYOID,
		INT4ARRAYOID, BYTEAARRAYOID, BYTEAARRAYOID, JSONBARRAYOID, INT4OID, TIMESTAMPTZOID, TEXTOID};
	Datum		args[10];
	char		argnulls[10];

	memset(argnulls, ' ', sizeof(argnulls));
	(void) KafkaKeptArrays(row, kept, &args[1]);
	args[0] = Int32GetDatum(kept);
	args[7] = Int32GetDatum(row->timeline);
	args[8] = TimestampTzGetDatum(row->created_at);
	args[9] = row->failed ? CStringGetTextDatum(first_error) : (Datum) 0;
	argnulls[9] = row->failed ? ' ' : 'n';
	SpiExecKept(&plans.move_to_table,
			  "INSERT INTO infra.kafka_outbox_batches (first_id, messages, ids, topics,"
			  " partitions, keys, vals, headers, timeline, created_at, attempts, last_error,"
			  " last_attempt_at) VALUES (pg_catalog.nextval('infra.kafka_outbox_id_seq'::pg_catalog.regclass),"
			  " $1, $2, $3, $4, $5, $6, $7, $8, $9,"
			  " ($10 IS NOT NULL)::integer, $10,"
			  " CASE WHEN $10 IS NOT NULL THEN pg_catalog.clock_timestamp() END)",
			  10, argtypes, args, argnulls, false,
			  SPI_OK_INSERT, "the move of WAL-outbox messages to the table", 0, NULL);
}

/*
 * Delete the rows whose messages all went.
 */
static void
KafkaDeleteRows(Datum *gone, int ngone)
{
	Oid			argtypes[1] = {INT8ARRAYOID};
	Datum		arg = KafkaArray(gone, NULL, ngone, INT8OID);

	SpiExecKept(&plans.delete_delivered,
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
	SpiExecKept(&plans.record_failure,
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
		e[8][m] = CStringGetTextDatum(psprintf("%s: %s", rd_kafka_err2name(msg->report.err),
											   rd_kafka_err2str(msg->report.err)));
		if (example == NULL)
			example = TextDatumGetCString(e[8][m]);
		m++;
	}
	for (k = 0; k < 6; k++)
		args[k] = KafkaArray(e[k], nl[k], m, message_column_types[k]);
	args[6] = KafkaArray(e[6], nl[6], m, TIMESTAMPTZOID);
	args[7] = KafkaArray(e[7], nl[7], m, INT4OID);
	args[8] = KafkaArray(e[8], nl[8], m, TEXTOID);
	SpiExecKept(&plans.dead_letter,
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
void
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
 * Settle a round read from the WAL outbox: dead letters move, and (with
 * move_failed) what was neither delivered nor dead moves to the table
 * outbox (the slot then confirms past all of it).  Without: a round whose
 * Kafka transaction aborted, read again from the WAL (txn.c).
 */
void
KafkaSettleWal(OutboxRow *rows, int nrows, OutboxMessage *messages, int n,
			   int ndead, const char *first_error, bool move_failed)
{
	int			i;
	int			j;

	for (i = 0; i < nrows && move_failed; i++)
	{
		int			kept = 0;

		for (j = 0; j < rows[i].nmsgs; j++)
			kept += rows[i].keep[j];
		if (kept > 0)
			KafkaMoveToTable(&rows[i], kept, first_error);
	}
	if (ndead > 0)
		KafkaMoveDeadLetters(rows, messages, n, ndead);
}
