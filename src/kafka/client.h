/*-------------------------------------------------------------------------
 *
 * client.h
 *		The worker's librdkafka producer handle and what it reports.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_CLIENT_H
#define INFRA_KAFKA_CLIENT_H

#include "kafka/kafka.h"
#include "kafka/librdkafka.h"

/*
 * What a delivery report says of one message: the opaque handed to
 * rd_kafka_producev points at one of these.
 */
/*
 * With exactly once, this many transactional producers take the rounds in
 * turn (txn.c).  Fixed: a new worker fences exactly the ids an old one
 * used.
 */
#define KAFKA_TXN_PRODUCERS 3

typedef struct KafkaReport
{
	bool		reported;
	rd_kafka_resp_err_t err;
} KafkaReport;

extern KafkaStats *KafkaMyStats(void);
extern uint64 KafkaProducerGeneration(void);
extern void KafkaTransactionalId(char *buf, size_t len, int which);
extern bool KafkaEnsureProducer(void);
extern bool KafkaProducerCurrent(void);
extern void KafkaClientShutdown(void);
extern rd_kafka_t *KafkaProducer(void);
extern int	KafkaProducerCount(void);
extern void KafkaUseProducer(int which);
extern rd_kafka_topic_t *KafkaTopic(const char *name, bool *temporary);
extern void KafkaPoll(int timeout_ms);
extern void KafkaAbsorbStats(void);
extern bool KafkaErrorIsPermanent(rd_kafka_resp_err_t err);
extern const char *KafkaClientError(void);
extern void KafkaClientErrorClear(void);
extern void KafkaRecordError(const char *message);
extern void KafkaSetState(const char *state);
extern void KafkaSetWaiting(const char *why);

#endif							/* INFRA_KAFKA_CLIENT_H */
