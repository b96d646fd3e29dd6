/*-------------------------------------------------------------------------
 *
 * series.c
 *		The Kafka delivery's series in /metrics: each producing database's
 *		delivery counters, backlog, latency and (exactly once) Kafka
 *		transactions.
 *
 * A collector of the metrics registry (core/metrics.c): it runs where
 * /metrics is served and reads a copy of the shared counters (kafka.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/timestamp.h"

#include "core/metrics.h"
#include "core/worker.h"
#include "kafka/kafka.h"
#include "kafka/series.h"

static void KafkaCollectMetrics(StringInfo out);

void
InfraKafkaSeriesInit(void)
{
	MetricsRegisterCollector(KafkaCollectMetrics);
}

static void
KafkaCollectMetrics(StringInfo out)
{
	static const struct
	{
		const char *name;
		const char *type;
		const char *help;
	}			families[] = {
		{"infra_kafka_delivered_total", "counter", "Messages Kafka acknowledged."},
		{"infra_kafka_failed_attempts_total", "counter", "Delivery attempts that failed and will be retried."},
		{"infra_kafka_dead_lettered_total", "counter", "Messages moved to infra.kafka_dead_letters."},
		{"infra_kafka_rounds_total", "counter", "Delivery rounds of the worker."},
		{"infra_kafka_pending_messages", "gauge", "Messages in infra.kafka_outbox, as of the worker's last round."},
		{"infra_kafka_in_flight_messages", "gauge", "Messages handed to librdkafka and not yet acknowledged."},
		{"infra_kafka_broker_up", "gauge", "1 when the broker is reachable: the last delivery round reached it without errors or, idle, the producer is connected."},
		{"infra_kafka_produce_latency_avg_seconds", "gauge", "Average produce latency (queue and round trip), from librdkafka statistics."},
		{"infra_kafka_produce_latency_p99_seconds", "gauge", "99th percentile produce latency (queue and round trip), from librdkafka statistics."},
		{"infra_kafka_oldest_pending_age_seconds", "gauge", "Age of the oldest message waiting in the outbox (0 when it is empty), as of now; it grows while nothing is delivered."},
		{"infra_kafka_transactions_committed_total", "counter", "Kafka transactions the worker committed (infra.kafka_delivery = exactly_once)."},
		{"infra_kafka_transactions_aborted_total", "counter", "Kafka transactions the worker aborted; their rounds are sent again."},
		{"infra_kafka_fenced_total", "counter", "Times another producer with the worker's transactional id fenced its producer."},
		{"infra_kafka_transaction_open_seconds", "gauge", "How long the worker's current Kafka transaction has been open (0: none); it holds back every read_committed consumer."},
		{"infra_kafka_progress_lsn_bytes", "gauge", "How far the WAL outbox is in Kafka by its committed progress record: an LSN, as bytes."},
	};
	TimestampTz now = GetCurrentTimestamp();
	KafkaStats	copies[INFRA_MAX_DATABASES];
	int			n = KafkaStatsCopyAll(copies);
	int			f;
	int			i;

	MetricsWriteOne(out, "infra_kafka_max_pending_messages", "gauge",
					"Messages the outbox may hold (infra.kafka_max_pending); past it kafka_send fails or waits (infra.kafka_on_full).",
					(double) infra_kafka_max_pending);
	for (f = 0; f < lengthof(families); f++)
	{
		MetricsWriteFamily(out, families[f].name, families[f].type, families[f].help);
		for (i = 0; i < n; i++)
		{
			KafkaStats *s = &copies[i];
			StringInfoData labels;

			/* In the order of families[]. */
			double		values[] = {
				s->delivered_total, s->failed_attempts_total, s->dead_lettered_total,
				s->batches_total, s->pending, s->in_flight,
				strcmp(s->broker_state, "up") == 0,
				s->latency_avg_ms / 1000.0, s->latency_p99_ms / 1000.0,
				s->oldest_pending_at == 0 ? 0 :
				Max(0, (double) (now - s->oldest_pending_at) / USECS_PER_SEC),
				s->txn_committed_total, s->txn_aborted_total, s->txn_fenced_total,
				s->txn_began_at == 0 ? 0 :
				Max(0, (double) (now - s->txn_began_at) / USECS_PER_SEC),
				(double) s->txn_progress
			};

			StaticAssertStmt(lengthof(values) == lengthof(families), "a value per family");
			/* No latency sample yet: no series, rather than a false 0. */
			if (f >= 7 && f <= 8 && s->latency_at == 0)
				continue;
			initStringInfo(&labels);
			MetricsAppendLabel(&labels, "database", s->database);
			MetricsWriteSample(out, families[f].name, labels.data, values[f]);
		}
	}
}
