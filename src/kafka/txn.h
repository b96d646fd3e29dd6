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

/*
 * A table-outbox message id with the timeline it was allocated on: after
 * a failover that lost WAL the new primary may hand out the same ids again.
 */
typedef struct KafkaTxnId
{
	int64		id;
	TimeLineID	tli;
	uint32		zero;			/* padding, always 0: the pair is a hash key */
} KafkaTxnId;

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
extern bool KafkaTxnProgress(int which, XLogRecPtr upto, const KafkaTxnId *ids, int nids,
							 char *why, size_t whylen);
extern bool KafkaTxnYoung(int which, uint64 generation);
extern KafkaTxnOutcome KafkaTxnEnd(int which, bool commit, XLogRecPtr upto, char *why, size_t whylen);
extern void KafkaTxnAbandon(void);
extern void KafkaTxnRememberDead(int64 id);
extern bool KafkaTxnIsDead(int64 id);

extern void KafkaTxnIdSpace(Oid seq);
extern void KafkaTxnSettled(const KafkaTxnId *ids, int n);
extern bool KafkaTxnIsSettled(int64 id, TimeLineID tli);
extern void KafkaTxnForget(const KafkaTxnId *ids, int n, XLogRecPtr done);

#endif							/* INFRA_KAFKA_TXN_H */
