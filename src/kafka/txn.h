/*-------------------------------------------------------------------------
 *
 * txn.h
 *		Exactly once into Kafka: rounds in Kafka transactions with their
 *		progress.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_TXN_H
#define INFRA_KAFKA_TXN_H

#include "access/xlogdefs.h"

typedef enum KafkaTxnOutcome
{
	KAFKA_TXN_COMMITTED,
	KAFKA_TXN_ABORTED,			/* the producer goes on */
	KAFKA_TXN_FATAL				/* the producer must be made again */
} KafkaTxnOutcome;

extern bool KafkaTxnEnabled(void);
extern bool KafkaTxnReady(void);
extern bool KafkaTxnStart(void);
extern XLogRecPtr KafkaTxnSkipUpto(void);
extern void KafkaTxnProgressTopic(char *buf, size_t len);
extern int	KafkaTxnBegin(void);
extern bool KafkaTxnProgress(int which, XLogRecPtr upto, const int64 *ids, int nids,
							 char *why, size_t whylen);
extern KafkaTxnOutcome KafkaTxnEnd(int which, bool commit, XLogRecPtr upto, char *why, size_t whylen);
extern void KafkaTxnAbandon(void);
extern void KafkaTxnRememberDead(int64 id);
extern bool KafkaTxnIsDead(int64 id);
extern void KafkaTxnIdSpace(Oid seq);
extern void KafkaTxnSettled(const int64 *ids, int n);
extern bool KafkaTxnIsSettled(int64 id);
extern void KafkaTxnForget(const int64 *ids, int n);

#endif							/* INFRA_KAFKA_TXN_H */
