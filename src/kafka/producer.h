/*-------------------------------------------------------------------------
 *
 * producer.h
 *		The infra worker's Kafka producer: outbox rows to Kafka.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_PRODUCER_H
#define INFRA_PRODUCER_H

/* GUCs */
extern char *infra_kafka_brokers;
extern char *infra_kafka_config;
extern int	infra_kafka_batch_size;
extern int	infra_kafka_linger_ms;

extern void InfraProducerInit(void);

#endif							/* INFRA_PRODUCER_H */
