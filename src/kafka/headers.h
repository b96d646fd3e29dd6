/*-------------------------------------------------------------------------
 *
 * headers.h
 *		The headers of one Kafka message: the user's, infra-msg-id and
 *		infra-commit-time.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_HEADERS_H
#define INFRA_KAFKA_HEADERS_H

#include "datatype/timestamp.h"
#include "utils/jsonb.h"

#include "kafka/librdkafka.h"

extern rd_kafka_headers_t *KafkaHeaders(int64 id, int32 timeline, TimestampTz written_at,
										Jsonb *user_headers);

#endif							/* INFRA_KAFKA_HEADERS_H */
