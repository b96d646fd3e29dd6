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

extern bool KafkaWalWanted(void);
extern int	KafkaWalRead(KafkaRound *round);
extern void KafkaWalProducing(void);
extern void KafkaWalConfirm(void);
extern void KafkaWalStop(void);

#endif							/* INFRA_KAFKA_WALREAD_H */
