/*-------------------------------------------------------------------------
 *
 * rows.h
 *		A statement's rows into the WAL outbox, rendered by the worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_ROWS_H
#define INFRA_KAFKA_ROWS_H

#include "commands/trigger.h"
#include "utils/jsonb.h"

#include "kafka/outbox.h"

/* What every row of one publishing statement shares. */
typedef struct PublishRows
{
	text	   *topic;
	Jsonb	   *headers;		/* the session's trace context, or NULL */
	const char *start;			/* the envelope up to the first row */
	const char *mid;			/* between an UPDATE's old and new row ("" else) */
	const char *end;			/* after the last row */
	bool		old_rows;
	bool		new_rows;
	bool		key_column;
	int16		nkeys;
	int16		keys[KAFKA_WAL_MAX_KEYS];
} PublishRows;

extern int64 KafkaWalPublishRows(TriggerData *trigdata, const PublishRows *what,
								 Oid block_sequence);

#endif							/* INFRA_KAFKA_ROWS_H */
