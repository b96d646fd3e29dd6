/*-------------------------------------------------------------------------
 *
 * settle.h
 *		Writing a delivery round's outcome back to the outbox.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_SETTLE_H
#define INFRA_KAFKA_SETTLE_H

#include "kafka/round.h"

extern void KafkaSettleWal(OutboxRow *rows, int nrows, OutboxMessage *messages, int n,
						   int ndead, const char *first_error, bool move_failed);
extern void KafkaSettle(OutboxRow *rows, int nrows, OutboxMessage *messages, int n,
						int ndead, const char *first_error);

#endif							/* INFRA_KAFKA_SETTLE_H */
