/*
 * eos_probe: Kafka's transactions measured without PostgreSQL or infra,
 * with the librdkafka infra is built with, so that bench_exactly_once.sh
 * can print what the protocol itself costs on this machine beside what
 * infra's two delivery modes cost.
 *
 *   eos_probe throughput BROKERS TOPIC N PER_TXN idem|txn PROGRESS_TOPIC
 *       N messages of 100 bytes (keys k0..k99) produced as fast as
 *       librdkafka takes them; idem: one idempotent producer (what
 *       at_least_once uses); txn: transactions of PER_TXN messages, each
 *       with one record to PROGRESS_TOPIC, on three transactional
 *       producers in turn (as exactly_once's rounds are), each committed
 *       before the next begins.  Prints the milliseconds from the first
 *       message to the last acknowledged (txn: committed).
 *
 *   eos_probe latency BROKERS TOPIC RATE SECONDS idem|txn PROGRESS_TOPIC
 *       RATE messages a second for SECONDS, each valued with the time it
 *       became due (microseconds since the epoch, as the bench's commits
 *       are); idem: each produced when due; txn: a transaction takes every
 *       message due when it begins (and waits for one if none is), with
 *       its progress record, committed before the next begins.  A consumer
 *       started by the bench measures due-to-visible.
 *
 * Errors end the probe with exit status 1.  Test-only code: not part of
 * the extension.
 */
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PRODUCERS 3

static rd_kafka_t *producers[PRODUCERS];
static int	nproducers;

static long
monotonic_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000L + t.tv_nsec / 1000;
}

static long
epoch_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_REALTIME, &t);
	return t.tv_sec * 1000000L + t.tv_nsec / 1000;
}

static void
fail(const char *what, rd_kafka_error_t *error)
{
	fprintf(stderr, "eos_probe: %s: %s\n", what, error ? rd_kafka_error_string(error) : "failed");
	exit(1);
}

/* A delivery report with an error fails the probe. */
static void
on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
	if (m->err)
	{
		fprintf(stderr, "eos_probe: delivery failed: %s\n", rd_kafka_err2str(m->err));
		exit(1);
	}
}

static rd_kafka_t *
make_producer(const char *brokers, const char *transactional_id, const char *topic, const char *progress)
{
	char		err[512];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_t *rk;
	const char *topics[2] = {topic, progress};
	int			i;

	/* What infra's producer sets (src/kafka/client.c). */
	if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof(err)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof(err)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "acks", "all", err, sizeof(err)) != RD_KAFKA_CONF_OK ||
		rd_kafka_conf_set(conf, "linger.ms", "1", err, sizeof(err)) != RD_KAFKA_CONF_OK ||
		(transactional_id &&
		 rd_kafka_conf_set(conf, "transactional.id", transactional_id, err, sizeof(err)) != RD_KAFKA_CONF_OK))
	{
		fprintf(stderr, "eos_probe: %s\n", err);
		exit(1);
	}
	rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
	if (rk == NULL)
	{
		fprintf(stderr, "eos_probe: %s\n", err);
		exit(1);
	}
	if (transactional_id)
	{
		rd_kafka_error_t *error = rd_kafka_init_transactions(rk, 30000);

		if (error)
			fail("init_transactions", error);
	}
	/* Both topics' leaders known before the clock starts (infra asks at start too). */
	for (i = 0; i < (transactional_id ? 2 : 1); i++)
	{
		const struct rd_kafka_metadata *md;
		rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topics[i], NULL);

		if (rd_kafka_metadata(rk, 0, t, &md, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR)
			fail("metadata", NULL);
		rd_kafka_metadata_destroy(md);
		rd_kafka_topic_destroy(t);
	}
	return rk;
}

static void
produce(rd_kafka_t *rk, const char *topic, const char *key, const char *value, size_t len)
{
	rd_kafka_resp_err_t err;

	while ((err = rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
									RD_KAFKA_V_KEY(key, strlen(key)),
									RD_KAFKA_V_VALUE((void *) value, len),
									RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
									RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
		rd_kafka_poll(rk, 1);
	if (err)
	{
		fprintf(stderr, "eos_probe: produce: %s\n", rd_kafka_err2str(err));
		exit(1);
	}
	rd_kafka_poll(rk, 0);
}

static void
begin(rd_kafka_t *rk)
{
	rd_kafka_error_t *error = rd_kafka_begin_transaction(rk);

	if (error)
		fail("begin_transaction", error);
}

/* The transaction's progress record, then its commit. */
static void
commit(rd_kafka_t *rk, const char *progress, long n)
{
	char		record[64];
	rd_kafka_error_t *error;

	snprintf(record, sizeof(record), "{\"upto\": %ld}", n);
	produce(rk, progress, "progress", record, strlen(record));
	error = rd_kafka_commit_transaction(rk, -1);
	if (error)
		fail("commit_transaction", error);
}

static void
throughput(const char *topic, const char *progress, long n, long per_txn, int txn)
{
	char		value[100];
	char		key[16];
	long		start = monotonic_us();
	long		i;
	int			p = 0;

	memset(value, 'x', sizeof(value));
	for (i = 0; i < n; i++)
	{
		if (txn && i % per_txn == 0)
			begin(producers[p]);
		snprintf(key, sizeof(key), "k%ld", i % 100);
		produce(producers[p], topic, key, value, sizeof(value));
		if (txn && (i + 1 == n || (i + 1) % per_txn == 0))
		{
			commit(producers[p], progress, i + 1);
			p = (p + 1) % nproducers;
		}
	}
	if (rd_kafka_flush(producers[0], 60000) != RD_KAFKA_RESP_ERR_NO_ERROR)
		fail("flush", NULL);
	printf("%ld\n", (monotonic_us() - start) / 1000);
}

static void
latency(const char *topic, const char *progress, long rate, long seconds, int txn)
{
	long		total = rate * seconds;
	long		start_mono = monotonic_us();
	long		start_epoch = epoch_us();
	long		next = 0;
	int			p = 0;

	while (next < total)
	{
		long		now = monotonic_us() - start_mono;
		long		due = now * rate / 1000000 + 1;	/* messages due by now */
		char		value[32];
		char		key[16];

		if (due <= next)
		{
			/* Asleep until the next message is due (no core spun away). */
			long		wait_us = next * 1000000 / rate - now;
			struct timespec ts = {wait_us / 1000000, (wait_us % 1000000) * 1000};

			rd_kafka_poll(producers[p], 0);
			if (wait_us > 0)
				nanosleep(&ts, NULL);
			continue;
		}
		if (due > total)
			due = total;
		if (txn)
			begin(producers[p]);
		for (; next < due; next++)
		{
			snprintf(key, sizeof(key), "k%ld", next % 100);
			snprintf(value, sizeof(value), "%ld", start_epoch + next * 1000000 / rate);
			produce(producers[p], topic, key, value, strlen(value));
		}
		if (txn)
		{
			commit(producers[p], progress, next);
			p = (p + 1) % nproducers;
		}
	}
	if (rd_kafka_flush(producers[0], 60000) != RD_KAFKA_RESP_ERR_NO_ERROR)
		fail("flush", NULL);
}

int
main(int argc, char **argv)
{
	int			txn;
	int			i;

	if (argc != 8 || (strcmp(argv[1], "throughput") != 0 && strcmp(argv[1], "latency") != 0) ||
		(strcmp(argv[6], "idem") != 0 && strcmp(argv[6], "txn") != 0))
	{
		fprintf(stderr, "usage: eos_probe throughput BROKERS TOPIC N PER_TXN idem|txn PROGRESS_TOPIC\n"
				"       eos_probe latency BROKERS TOPIC RATE SECONDS idem|txn PROGRESS_TOPIC\n");
		return 2;
	}
	txn = strcmp(argv[6], "txn") == 0;
	nproducers = txn ? PRODUCERS : 1;
	for (i = 0; i < nproducers; i++)
	{
		char		id[128];

		snprintf(id, sizeof(id), "eos-probe-%s-%d", argv[3], i);
		producers[i] = make_producer(argv[2], txn ? id : NULL, argv[3], argv[7]);
	}
	if (strcmp(argv[1], "throughput") == 0)
		throughput(argv[3], argv[7], atol(argv[4]), atol(argv[5]), txn);
	else
		latency(argv[3], argv[7], atol(argv[4]), atol(argv[5]), txn);
	for (i = 0; i < nproducers; i++)
		rd_kafka_destroy(producers[i]);
	return 0;
}
