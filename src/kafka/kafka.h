/*-------------------------------------------------------------------------
 *
 * kafka.h
 *		kafka_send(): the transactional outbox and its producer.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_H
#define INFRA_KAFKA_H

#include "access/xlogdefs.h"
#include "storage/spin.h"
#include "utils/jsonb.h"

/* Advisory lock class of kafka_send's per-key ordering locks ("INFK"). */
#define KAFKA_ORDER_LOCK_CLASS 0x494E464B

/* The header every message carries its unique id in; only infra sets it. */
#define KAFKA_MSG_ID_HEADER "infra-msg-id"
/* When the message's transaction committed, microseconds since 1970. */
#define KAFKA_COMMIT_TIME_HEADER "infra-commit-time"

/* Longest error kept for kafka_stats. */
#define KAFKA_ERROR_LEN 256

/* GUCs */
extern int	infra_kafka_max_pending;
extern int	infra_kafka_on_full;
extern int	infra_environment;
extern bool infra_kafka_require_registered_topics;

/* infra.kafka_on_full */
typedef enum KafkaOnFull
{
	KAFKA_ON_FULL_ERROR,
	KAFKA_ON_FULL_WAIT
} KafkaOnFull;

/* Counters the producer of one database keeps and kafka_stats shows. */
typedef struct KafkaStats
{
	slock_t		mutex;
	Oid			database_oid;	/* InvalidOid: entry unused */
	char		database[NAMEDATALEN];	/* its name, for /metrics */
	int64		pending;		/* messages in the outbox, as of a round */
	int64		delivered_total;
	int64		failed_attempts_total;
	int64		dead_lettered_total;
	int64		batches_total;
	int64		in_flight;
	TimestampTz last_delivery_at;
	TimestampTz last_error_at;
	char		last_error[KAFKA_ERROR_LEN];
	char		broker_state[32];
	double		produce_latency_ms; /* of the last round, all of it */
	double		latency_avg_ms; /* librdkafka statistics: queue + rtt */
	double		latency_p99_ms;
	TimestampTz latency_at;		/* when they were taken; 0: never */
	char		waiting_for[256];	/* why the outbox waits ("": it does not) */
	TimestampTz oldest_pending_at;	/* created_at of the outbox's head; 0: empty */
	/* infra.kafka_delivery = exactly_once (txn.c) */
	int64		txn_committed_total;
	int64		txn_aborted_total;
	int64		txn_fenced_total;	/* this worker's producer was fenced */
	XLogRecPtr	txn_progress;	/* the WAL outbox is in Kafka up to here */
	TimestampTz txn_began_at;	/* the open Kafka transaction's start; 0: none */
} KafkaStats;

extern KafkaStats *KafkaStatsFor(Oid database_oid, bool claim);
extern int	KafkaStatsCopyAll(KafkaStats *copies);
extern int64 KafkaSendMany(text *topic, Jsonb *headers, int n, bytea *const *values,
						   text *const *keys);

extern Oid	KafkaWalDirect(void);
extern Jsonb *KafkaCheckedHeaders(text *topic);

extern void InfraKafkaInit(void);

#endif							/* INFRA_KAFKA_H */
