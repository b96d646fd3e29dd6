/*-------------------------------------------------------------------------
 *
 * series.h
 *		The Kafka delivery's series in /metrics.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_SERIES_H
#define INFRA_KAFKA_SERIES_H

extern void InfraKafkaSeriesInit(void);

#endif							/* INFRA_KAFKA_SERIES_H */
