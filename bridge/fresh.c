/*-------------------------------------------------------------------------
 *
 * fresh.c
 *		infra-bridge: the probe thread that looks up message timestamps for
 *		the freshness gauges (metrics.c): of the oldest message a lagging
 *		partition has not had written yet, and of the newest message on the
 *		broker.
 *
 * The consumer of the group only sees a message when it reads it, and
 * librdkafka 2.0 cannot ask the broker for the newest message's timestamp,
 * so a second consumer, outside the group (assign, no commits), reads the
 * one message at each offset wanted, every FRESH_INTERVAL_MS, for the
 * partitions that lag (a caught-up partition's newest message is the last
 * one written).  It runs in a thread of its own: a slow broker never holds
 * up the writing.
 *
 *-------------------------------------------------------------------------
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bridge.h"

#define FRESH_INTERVAL_MS 5000
#define FRESH_FETCH_MS 2000
#define FRESH_MAX_TARGETS 256

static pthread_t thread;
static bool running = false;
static volatile bool stopping = false;
static pthread_mutex_t fresh_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fresh_wake = PTHREAD_COND_INITIALIZER;
static rd_kafka_t *probe = NULL;

/*
 * The timestamp (ms) of the message at offset of topic/partition, or of
 * the first after it (compaction, retention); -1 when none came in time.
 */
static int64_t
fetch_timestamp(const char *topic, int32_t partition, int64_t offset)
{
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
	int64_t		deadline = now_ms() + FRESH_FETCH_MS;
	int64_t		ts = -1;

	rd_kafka_resp_err_t err;

	rd_kafka_topic_partition_list_add(list, topic, partition)->offset = offset;
	err = rd_kafka_assign(probe, list);
	if (err != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		log_debug("freshness probe: cannot read %s [%d] at %lld: %s", topic, (int) partition,
				  (long long) offset, rd_kafka_err2str(err));
		rd_kafka_topic_partition_list_destroy(list);
		return -1;
	}
	rd_kafka_topic_partition_list_destroy(list);
	while (ts < 0 && now_ms() < deadline)
	{
		rd_kafka_message_t *m = rd_kafka_consumer_poll(probe, 200);

		if (m == NULL)
			continue;
		if (m->err)
			log_debug("freshness probe: %s [%d]: %s", topic, (int) partition, rd_kafka_message_errstr(m));
		else if (m->partition == partition && m->offset >= offset &&
			strcmp(rd_kafka_topic_name(m->rkt), topic) == 0)
			ts = rd_kafka_message_timestamp(m, NULL);
		rd_kafka_message_destroy(m);
	}
	rd_kafka_assign(probe, NULL);
	return ts;
}

static void *
fresh_main(void *arg)
{
	FreshTarget *targets = calloc(FRESH_MAX_TARGETS, sizeof(FreshTarget));

	for (;;)
	{
		struct timespec until;
		int			n;
		int			i;

		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += FRESH_INTERVAL_MS / 1000;
		pthread_mutex_lock(&fresh_lock);
		while (!stopping &&
			   pthread_cond_timedwait(&fresh_wake, &fresh_lock, &until) == 0)
			;
		if (stopping)
		{
			pthread_mutex_unlock(&fresh_lock);
			break;
		}
		pthread_mutex_unlock(&fresh_lock);

		n = metrics_probe_targets(targets, FRESH_MAX_TARGETS);
		for (i = 0; i < n && !stopping; i++)
		{
			int64_t		next_ts = -1;
			int64_t		newest_ts = -1;

			if (targets[i].next_offset >= 0)
				next_ts = fetch_timestamp(targets[i].topic, targets[i].partition, targets[i].next_offset);
			if (targets[i].newest_offset >= 0)
				newest_ts = fetch_timestamp(targets[i].topic, targets[i].partition, targets[i].newest_offset);
			metrics_probe_result(&targets[i], next_ts, newest_ts);
		}
	}
	free(targets);
	return NULL;
}

/*
 * Start the probe with this consumer configuration (taken over); false,
 * logged, when librdkafka refuses it.
 */
bool
fresh_start(rd_kafka_conf_t *conf)
{
	char		errstr[512];

	if (running)
		fresh_stop();
	probe = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (probe == NULL)
	{
		log_warning("no freshness probe (lag in seconds): %s", errstr);
		return false;
	}
	rd_kafka_poll_set_consumer(probe);
	stopping = false;
	if (pthread_create(&thread, NULL, fresh_main, NULL) != 0)
	{
		rd_kafka_destroy(probe);
		probe = NULL;
		return false;
	}
	running = true;
	return true;
}

void
fresh_stop(void)
{
	if (!running)
		return;
	pthread_mutex_lock(&fresh_lock);
	stopping = true;
	pthread_cond_signal(&fresh_wake);
	pthread_mutex_unlock(&fresh_lock);
	pthread_join(thread, NULL);
	rd_kafka_consumer_close(probe);
	rd_kafka_destroy(probe);
	probe = NULL;
	running = false;
}
