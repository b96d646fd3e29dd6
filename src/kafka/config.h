/*-------------------------------------------------------------------------
 *
 * config.h
 *		The Kafka producer's settings, checked by librdkafka, never shown.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_CONFIG_H
#define INFRA_KAFKA_CONFIG_H

#include "kafka/librdkafka.h"

/* GUCs */
extern char *infra_kafka_brokers;
extern char *infra_kafka_config;
extern int	infra_kafka_batch_size;
extern int	infra_kafka_linger_ms;
extern int	infra_kafka_delivery;

/* infra.kafka_delivery */
typedef enum KafkaDelivery
{
	KAFKA_DELIVERY_AT_LEAST_ONCE,
	KAFKA_DELIVERY_EXACTLY_ONCE
} KafkaDelivery;

extern void KafkaConfigInit(void);
extern bool KafkaConfigApply(rd_kafka_conf_t *conf, const char *value,
							 char *errbuf, size_t errlen);

#endif							/* INFRA_KAFKA_CONFIG_H */
