/*-------------------------------------------------------------------------
 *
 * walread.h
 *		The delivery worker's read of the WAL outbox (its logical slot).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_WALREAD_H
#define INFRA_KAFKA_WALREAD_H

#include "kafka/round.h"

/* Rounds read from the WAL that may be open at once (one in flight). */
#define KAFKA_WAL_BATCHES 2

extern bool KafkaWalWanted(void);
extern int	KafkaWalRead(KafkaRound *round, int batch);
extern void KafkaWalConfirm(int batch);
extern void KafkaWalRelease(int batch);
extern XLogRecPtr KafkaWalUpto(int batch);
extern int	KafkaWalHeldBatch(void);
extern void KafkaWalStop(void);

#endif							/* INFRA_KAFKA_WALREAD_H */
