/*-------------------------------------------------------------------------
 *
 * consume.c
 *		infra-bridge's Kafka side: the consumer, its partitions, batches.
 *
 * The consumer is a member of the configured group with Kafka's offset
 * commits off: where a partition resumes is the next_offset stored in
 * infra.bridge_offsets, read when the partition is assigned.  Messages
 * gather into a batch until batch_size, batch_bytes or batch_delay_ms; the
 * batch and the partitions' new offsets are written in one transaction
 * (db.c).  The offsets are then also committed to Kafka, for tools that
 * look there.
 *
 * Assignment is eager (all partitions are revoked before a rebalance), so
 * a revocation simply drops the batch: whoever gets the partitions reads
 * them again from the stored offsets.
 *
 *-------------------------------------------------------------------------
 */
#include <pthread.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bridge.h"

/* What this member knows of one assigned partition. */
typedef struct PartState
{
	char		topic[256];
	int32_t		partition;
	int64_t		expected;		/* stored next_offset; -1: no row yet */
	int64_t		start;			/* where reading resumed (-1: not known) */
	int			batched;		/* its messages in the batch in flight */
	int			writer;			/* the writer that writes them */
	int			slot;			/* its PartitionWrite in that writer's job */
} PartState;

static BridgeConfig *cfg;
static rd_kafka_t *rk = NULL;
static PartState *parts = NULL;
static int	nparts = 0;
static int	partcap = 0;

/* The batch being gathered. */
static rd_kafka_message_t **batch = NULL;
static int *batch_routes = NULL;
static int	batch_count = 0;
static int	batch_cap = 0;
static int64_t batch_bytes = 0;	/* keys and values held by the batch */
static int64_t batch_started_ms = 0;
static int	route_count[BRIDGE_MAX_ROUTES];	/* per route, in the batch */
static int64_t route_started_ms[BRIDGE_MAX_ROUTES];

/* Totals, for the log. */
static int64_t total_written = 0;
static int64_t total_dead = 0;

volatile int bridge_reload = 0;

static void settle(void);
static void reseek(void);

static PartState *
part_find(const char *topic, int32_t partition, bool create)
{
	int			i;

	for (i = 0; i < nparts; i++)
		if (parts[i].partition == partition && strcmp(parts[i].topic, topic) == 0)
			return &parts[i];
	if (!create)
		return NULL;
	if (nparts == partcap)
	{
		partcap = partcap ? partcap * 2 : 16;
		parts = realloc(parts, sizeof(PartState) * (size_t) partcap);
	}
	snprintf(parts[nparts].topic, sizeof(parts[nparts].topic), "%s", topic);
	parts[nparts].partition = partition;
	parts[nparts].expected = -1;
	parts[nparts].start = -1;
	return &parts[nparts++];
}

/* For the freshness gauges: the route of a topic (-1: none). */
static int
route_of(const char *topic)
{
	return config_route_for_topic(cfg, topic);
}

/*
 * For the lag: the next offset of a partition to write, the stored one, or
 * where reading started before any was stored; -1 when not known.
 */
static int64_t
next_to_write(const char *topic, int32_t partition)
{
	PartState  *ps = part_find(topic, partition, false);

	if (ps == NULL)
		return -1;
	return ps->expected >= 0 ? ps->expected : ps->start;
}

/*
 * Where a partition without a stored offset starts: the first offset it
 * has, or with auto.offset.reset = latest the next one, asked of the
 * broker now if that can be done before the deadline (CLOCK_MONOTONIC ms).
 * (Given the logical BEGINNING or END instead, librdkafka 2.0 looks the
 * offset up itself, and right after an assignment it may not yet know the
 * partition's leader: then it waits half a second before it asks.)
 */
static int64_t
start_offset(const char *topic, int32_t partition, int64_t deadline)
{
	bool		latest = false;
	int64_t		low;
	int64_t		high;
	int			i;

	for (i = 0; i < cfg->nkafka; i++)
		if (strcmp(cfg->kafka_keys[i], "auto.offset.reset") == 0)
			latest = strcmp(cfg->kafka_values[i], "latest") == 0 || strcmp(cfg->kafka_values[i], "largest") == 0 ||
				strcmp(cfg->kafka_values[i], "end") == 0;
	if (now_ms() < deadline &&
		rd_kafka_query_watermark_offsets(rk, topic, partition, &low, &high,
										 (int) (deadline - now_ms())) == RD_KAFKA_RESP_ERR_NO_ERROR)
		return latest ? high : low;
	return latest ? RD_KAFKA_OFFSET_END : RD_KAFKA_OFFSET_BEGINNING;
}

/* An empty batch to gather into (its messages gone or handed on). */
static void
batch_restart(void)
{
	batch_count = 0;
	batch_bytes = 0;
	memset(route_count, 0, sizeof(route_count));
}

static void
drop_batch(void)
{
	int			i;

	for (i = 0; i < batch_count; i++)
		rd_kafka_message_destroy(batch[i]);
	batch_restart();
}

/*
 * How long until the batch is due (0: now): it holds batch_bytes, a route
 * reached its batch_size, or its oldest message its batch_delay_ms.
 * Messages of no route (a pattern that changed) follow the [bridge] delay.
 */
static int64_t
batch_due_in(void)
{
	int64_t		now = now_ms();
	int64_t		due = batch_count > 0 ? batch_started_ms + cfg->batch_delay_ms - now : 500;
	int			r;

	if (batch_count >= cfg->batch_size * cfg->nroutes || batch_bytes >= cfg->batch_bytes)
		return 0;
	for (r = 0; r < cfg->nroutes; r++)
	{
		int64_t		left;

		if (route_count[r] == 0)
			continue;
		if (route_count[r] >= cfg->routes[r].batch_size)
			return 0;
		left = route_started_ms[r] + cfg->routes[r].batch_delay_ms - now;
		if (left < due)
			due = left;
	}
	return due > 0 ? due : 0;
}

/*
 * Read a partition's stored offset and a seek by time waiting there,
 * reconnecting as long as it takes.
 */
static bool
stored_offset(const char *topic, int32_t partition, int64_t *next, char *seek, size_t seeklen,
			  int64_t *seek_ms)
{
	while (!db_load_offsets(cfg, topic, partition, next, seek, seeklen, seek_ms))
	{
		if (bridge_stop || !db_connect(cfg, 0, false))
			return false;
	}
	return true;
}

/*
 * The offset of a partition's first message at or after ms (Kafka
 * timestamps), its end when it has none; -1 when the broker could not say
 * before the deadline.
 */
static int64_t
offset_for_time(const char *topic, int32_t partition, int64_t ms, int64_t deadline)
{
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
	int64_t		found = -1;
	int64_t		low;
	int64_t		high;
	int			wait = (int) (deadline - now_ms());

	rd_kafka_topic_partition_list_add(list, topic, partition)->offset = ms;
	if (wait > 0 && rd_kafka_offsets_for_times(rk, list, wait) == RD_KAFKA_RESP_ERR_NO_ERROR &&
		list->elems[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
		found = list->elems[0].offset;
	rd_kafka_topic_partition_list_destroy(list);
	/* No message that late: the end. */
	if (found < 0 && (wait = (int) (deadline - now_ms())) > 0 &&
		rd_kafka_query_watermark_offsets(rk, topic, partition, &low, &high, wait) == RD_KAFKA_RESP_ERR_NO_ERROR)
		found = high;
	return found;
}

/*
 * Where a partition of ours resumes: its stored offset (which its next
 * write must still find), a seek by time waiting there resolved first
 * (and stored), else where start_offset says.
 */
static int64_t
resume_offset(PartState *ps, int64_t deadline)
{
	int64_t		next = -1;
	int			tries;

	for (tries = 0; tries < 3; tries++)
	{
		char		seek[64];
		int64_t		seek_ms;
		int64_t		to;

		if (!stored_offset(ps->topic, ps->partition, &next, seek, sizeof(seek), &seek_ms))
		{
			next = -1;
			break;
		}
		if (seek[0] == '\0')
			break;
		to = offset_for_time(ps->topic, ps->partition, seek_ms, now_ms() + 10000);
		if (to < 0)
		{
			/* Its batch's write fails until the seek is resolved: tried again then. */
			log_warning("%s [%d]: cannot find the offset for the seek to %s yet", ps->topic, ps->partition, seek);
			break;
		}
		if (db_resolve_seek(cfg, ps->topic, ps->partition, seek, to))
		{
			log_info("%s [%d]: seek to %s resolved to offset %lld", ps->topic, ps->partition, seek, (long long) to);
			next = to;
			break;
		}
	}
	ps->expected = next;
	if (next < 0)
		next = start_offset(ps->topic, ps->partition, deadline);
	ps->start = next >= 0 ? next : -1;
	return next;
}

/*
 * librdkafka's rebalance callback (called from our consumer_poll): resume
 * assigned partitions at their stored offsets; on revocation, forget.
 */
static void
rebalance(rd_kafka_t *consumer, rd_kafka_resp_err_t err,
		  rd_kafka_topic_partition_list_t *list, void *opaque)
{
	int			i;

	/* The connection and the offsets are the writer's until it is done. */
	settle();
	if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
	{
		int64_t		deadline = now_ms() + 2000;

		for (i = 0; i < list->cnt; i++)
		{
			rd_kafka_topic_partition_t *p = &list->elems[i];

			p->offset = resume_offset(part_find(p->topic, p->partition, true), deadline);
		}
		rd_kafka_assign(consumer, list);
		log_info("assigned %d partitions", list->cnt);
	}
	else
	{
		drop_batch();
		nparts = 0;
		rd_kafka_assign(consumer, NULL);
		log_info("partitions revoked (%s)", rd_kafka_err2str(err));
	}
}

/* librdkafka's error callback: client-wide trouble such as brokers down. */
static void
on_error(rd_kafka_t *consumer, int err, const char *reason, void *opaque)
{
	static int64_t last_ms = 0;
	int64_t		t = now_ms();

	/* Say it once, then at most every 30 s: librdkafka keeps retrying. */
	if (t - last_ms >= 30000)
	{
		log_warning("Kafka: %s: %s (retrying)", rd_kafka_err2name((rd_kafka_resp_err_t) err), reason);
		last_ms = t;
	}
}

/*
 * A consumer for the configuration, subscribed to every route's topics.
 */
static rd_kafka_conf_t *
kafka_conf(bool member)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char		errstr[512];
	char		probe_group[BRIDGE_VALUE_LEN + 32];
	char		queued_kb[24];
	int			i;
	/*
	 * The probe assigns partitions itself and commits nothing: its group id
	 * (librdkafka's consumer wants one) is never joined.
	 */
	const char *fixed[][2] = {
		{"bootstrap.servers", cfg->brokers},
		{"group.id", member ? cfg->group : probe_group},
		{"enable.auto.commit", "false"},
		{"enable.auto.offset.store", "false"},
		{"enable.partition.eof", "false"},
		/* Defaults; [kafka] may set them otherwise. */
		/* A partition new to the group, or whose stored offset the log no
		 * longer has, starts at the oldest message kept. */
		{"auto.offset.reset", "earliest"},
		/* A member that died without leaving (SIGKILL, a lost machine) holds
		 * its partitions until the session times out: 6 s (the broker's
		 * smallest by default) instead of librdkafka's 45 s, so a restarted
		 * bridge resumes in seconds.  The price: a stall over 6 s (a paused
		 * process, a network blip) costs a rebalance. */
		{"session.timeout.ms", "6000"},
		{"heartbeat.interval.ms", "1000"},
		/* Throughput. */
		{"queued.min.messages", member ? "1000000" : "1"},
		{"fetch.wait.max.ms", "100"},
		/*
		 * The next batch fetched while the writers write this one: room for
		 * two batches (librdkafka's 64 MB holds half of one at the default
		 * batch_bytes), each partition's fetch up to 16 MB instead of 1 MB.
		 */
		{"queued.max.messages.kbytes", queued_kb},
		{"max.partition.fetch.bytes", "16777216"},
	};

	snprintf(probe_group, sizeof(probe_group), "%s.freshness-probe", cfg->group);
	/* librdkafka takes at most 2097151 (2 GB). */
	snprintf(queued_kb, sizeof(queued_kb), "%d",
			 !member ? 65536 : cfg->batch_bytes / 512 > 2097151 ? 2097151 : cfg->batch_bytes / 512);
	for (i = 0; i < (int) (sizeof(fixed) / sizeof(fixed[0])); i++)
		if (rd_kafka_conf_set(conf, fixed[i][0], fixed[i][1], errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		{
			log_error("Kafka setting %s: %s", fixed[i][0], errstr);
			rd_kafka_conf_destroy(conf);
			return NULL;
		}
	for (i = 0; i < cfg->nkafka; i++)
		if (rd_kafka_conf_set(conf, cfg->kafka_keys[i], cfg->kafka_values[i], errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK)
		{
			log_error("[kafka] %s: %s", cfg->kafka_keys[i], errstr);
			rd_kafka_conf_destroy(conf);
			return NULL;
		}
	return conf;
}

/*
 * The group's consumer, subscribed to the routes' topics; and the
 * freshness probe (fresh.c), a consumer of the same settings outside the
 * group.
 */
static rd_kafka_t *
consumer_new(void)
{
	rd_kafka_conf_t *conf = kafka_conf(true);
	rd_kafka_conf_t *probe_conf;
	rd_kafka_topic_partition_list_t *topics;
	char		errstr[512];
	rd_kafka_t *consumer;
	int			i;
	int			r;

	if (conf == NULL)
		return NULL;
	rd_kafka_conf_set_rebalance_cb(conf, rebalance);
	rd_kafka_conf_set_error_cb(conf, on_error);
	consumer = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (consumer == NULL)
	{
		log_error("cannot create the Kafka consumer: %s", errstr);
		return NULL;
	}
	rd_kafka_poll_set_consumer(consumer);
	topics = rd_kafka_topic_partition_list_new(16);
	for (r = 0; r < cfg->nroutes; r++)
		for (i = 0; i < cfg->routes[r].ntopics; i++)
			rd_kafka_topic_partition_list_add(topics, cfg->routes[r].topics[i], RD_KAFKA_PARTITION_UA);
	if (rd_kafka_subscribe(consumer, topics) != RD_KAFKA_RESP_ERR_NO_ERROR)
	{
		log_error("cannot subscribe to the routes' topics");
		rd_kafka_topic_partition_list_destroy(topics);
		rd_kafka_destroy(consumer);
		return NULL;
	}
	rd_kafka_topic_partition_list_destroy(topics);
	probe_conf = kafka_conf(false);
	if (probe_conf != NULL)
		(void) fresh_start(probe_conf);
	return consumer;
}

/*
 * After another member moved a partition on: every assigned partition
 * goes back to its stored offset.
 */
static void
reseek(void)
{
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(nparts);
	rd_kafka_error_t *error;
	int64_t		deadline = now_ms() + 2000;
	int			i;

	for (i = 0; i < nparts; i++)
		rd_kafka_topic_partition_list_add(list, parts[i].topic, parts[i].partition)->offset =
			resume_offset(&parts[i], deadline);
	error = rd_kafka_seek_partitions(rk, list, 10000);
	if (error != NULL)
	{
		log_warning("cannot seek: %s", rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	}
	rd_kafka_topic_partition_list_destroy(list);
}

/*
 * The batch being written while the main thread gathers the next one.  Its
 * partitions are shared out among the writers (a partition always to the
 * same one), each with its own connection and transaction holding its
 * partitions' rows and offsets.  Writers touch nothing but their
 * connection and their job; the main thread waits for them (settle) before
 * it uses a connection itself (rebalance, reseek, reconnect) or builds the
 * next batch's offsets, which depend on this one's outcome.
 */
typedef struct WriterJob
{
	rd_kafka_message_t **msgs;	/* pointers into the batch in flight */
	int		   *routes;
	int			n;
	int			cap;
	PartitionWrite *writes;
	int			nwrites;
	long long	written[BRIDGE_MAX_ROUTES];
	long long	dead[BRIDGE_MAX_ROUTES];
	WriteResult result;
	bool		running;		/* a thread writes it */
	bool		held;			/* msgs not yet released */
	pthread_t	thread;
} WriterJob;

/*
 * Once a job's outcome is final (written, or dropped after a conflict),
 * its messages are no longer needed: let them go.
 */
static void
job_release(WriterJob *job)
{
	int			i;

	for (i = 0; i < job->n; i++)
		rd_kafka_message_destroy(job->msgs[i]);
	job->held = false;
}

static WriterJob jobs[BRIDGE_MAX_WRITERS];
static rd_kafka_message_t **inflight = NULL;	/* the batch in flight */
static int *inflight_routes = NULL;
static PartState **inflight_parts = NULL;	/* each message's, NULL: not ours */
static int	inflight_n = 0;
static int	inflight_cap = 0;
static int64_t inflight_t0 = 0;
static pthread_mutex_t writer_lock = PTHREAD_MUTEX_INITIALIZER;
static int	writers_running = 0;	/* under writer_lock */

static void *
writer_main(void *arg)
{
	WriterJob  *job = (WriterJob *) arg;

	job->result = db_write_batch(cfg, (int) (job - jobs), job->msgs, job->n, job->routes,
								 job->writes, job->nwrites, job->written, job->dead);
	if (job->result == WRITE_OK)
		metrics_written(job->msgs, job->routes, job->n);
	/* Here rather than in the main thread, which gathers the next batch. */
	if (job->result != WRITE_RETRY)
		job_release(job);
	pthread_mutex_lock(&writer_lock);
	writers_running--;
	pthread_mutex_unlock(&writer_lock);
	return NULL;
}

/* Have all writers finished (so that settle will not wait)? */
static bool
writers_done(void)
{
	int			running;

	pthread_mutex_lock(&writer_lock);
	running = writers_running;
	pthread_mutex_unlock(&writer_lock);
	return running == 0;
}

/*
 * Wait for a writer's thread; when it could not run (no connection) or
 * must retry, write its share here, reconnecting, until done or stopping.
 */
static void
finish_job(WriterJob *job, int w)
{
	if (job->running)
		pthread_join(job->thread, NULL);
	job->running = false;
	if (job->n == 0)
		return;
	while (job->result == WRITE_RETRY && !bridge_stop)
	{
		if (!db_connect(cfg, w, false))
			continue;
		job->result = db_write_batch(cfg, w, job->msgs, job->n, job->routes,
									 job->writes, job->nwrites, job->written, job->dead);
		if (job->result == WRITE_OK)
			metrics_written(job->msgs, job->routes, job->n);
	}
}

/*
 * A written share: the partitions' expected offsets move on, Kafka's
 * (informational) commit list gets them, and the counts add up per route.
 */
static void
count_job(const WriterJob *job, rd_kafka_topic_partition_list_t *list,
		  long long *consumed, long long *written, long long *dead)
{
	int			i;
	int			r;

	for (i = 0; i < job->nwrites; i++)
	{
		PartState  *ps = part_find(job->writes[i].topic, job->writes[i].partition, false);

		if (ps != NULL)
			ps->expected = job->writes[i].next;
		rd_kafka_topic_partition_list_add(list, job->writes[i].topic,
										  job->writes[i].partition)->offset = job->writes[i].next;
	}
	for (i = 0; i < job->n; i++)
		if (job->routes[i] >= 0)
			consumed[job->routes[i]]++;
	for (r = 0; r < cfg->nroutes; r++)
	{
		written[r] += job->written[r];
		dead[r] += job->dead[r];
	}
}

/*
 * Wait for the batch in flight and act on each writer's outcome: offsets
 * known, Kafka told, figures counted; a writer whose connection failed
 * reconnects and writes its part again (unless stopping: then it is given
 * up, and read again at the next start); after a conflict, everything
 * gathered since is dropped and the partitions read again from the
 * stored offsets.
 */
static void
settle(void)
{
	rd_kafka_topic_partition_list_t *list;
	long long	consumed[BRIDGE_MAX_ROUTES];
	long long	written[BRIDGE_MAX_ROUTES];
	long long	dead[BRIDGE_MAX_ROUTES];
	long long	all_written = 0;
	long long	all_dead = 0;
	bool		conflict = false;
	int			w;
	int			r;

	if (inflight_n == 0)
		return;
	memset(consumed, 0, sizeof(consumed));
	memset(written, 0, sizeof(written));
	memset(dead, 0, sizeof(dead));
	list = rd_kafka_topic_partition_list_new(nparts + 1);
	for (w = 0; w < cfg->writers; w++)
	{
		WriterJob  *job = &jobs[w];

		finish_job(job, w);
		if (job->n == 0)
			continue;
		if (job->result == WRITE_OK)
			count_job(job, list, consumed, written, dead);
		else if (job->result == WRITE_CONFLICT)
			conflict = true;
		else
			log_warning("stopping with %d messages not written; they are read again at the next start",
						job->n);
		if (job->held)
			job_release(job);
		job->n = 0;
		free(job->writes);
		job->writes = NULL;
	}
	/* Informational only: the offsets that count are in PostgreSQL. */
	if (list->cnt > 0)
		rd_kafka_commit(rk, list, 1);
	rd_kafka_topic_partition_list_destroy(list);
	for (r = 0; r < cfg->nroutes; r++)
	{
		all_written += written[r];
		all_dead += dead[r];
	}
	metrics_batch(consumed, written, dead, (double) (now_ms() - inflight_t0) / 1000.0);
	total_written += all_written;
	total_dead += all_dead;
	log_debug("batch of %d messages: %lld written, %lld dead letters, %lld ms",
			  inflight_n, all_written, all_dead, (long long) (now_ms() - inflight_t0));
	if (all_dead > 0)
		log_warning("%lld messages could not be written: see infra.bridge_dead_letters", all_dead);
	inflight_n = 0;
	if (conflict)
	{
		drop_batch();
		reseek();
	}
}

/*
 * Which writer writes each partition of the batch in flight (batched: its
 * messages there): the partitions with the most messages first, each to
 * the writer with the fewest so far.  (A partition's messages stay
 * together: its rows and its offset are one writer's transaction.  Kafka
 * hands out messages in runs of one partition, so a batch is seldom even.)
 */
static void
share_out(void)
{
	long long	load[BRIDGE_MAX_WRITERS];
	int			i;
	int			w;

	memset(load, 0, sizeof(load));
	for (;;)
	{
		PartState  *largest = NULL;
		int			least = 0;

		for (i = 0; i < nparts; i++)
			if (parts[i].batched > 0 && (largest == NULL || parts[i].batched > largest->batched))
				largest = &parts[i];
		if (largest == NULL)
			break;
		for (w = 1; w < cfg->writers; w++)
			if (load[w] < load[least])
				least = w;
		largest->writer = least;
		largest->slot = jobs[least].nwrites++;
		jobs[least].writes[largest->slot] = (PartitionWrite) {
			.topic = largest->topic,
			.partition = largest->partition,
			.expected = largest->expected,
			.next = -1
		};
		load[least] += largest->batched;
		largest->batched = -largest->batched;	/* placed */
	}
}

/*
 * The gathered array goes in flight; the old one gathers the next.
 */
static void
swap_batches(void)
{
	rd_kafka_message_t **msgs = inflight;
	int		   *msg_routes = inflight_routes;
	int			cap = inflight_cap;

	inflight = batch;
	inflight_routes = batch_routes;
	inflight_cap = batch_cap;
	inflight_n = batch_count;
	batch = msgs;
	batch_routes = msg_routes;
	batch_cap = cap;
	if (batch_cap < 1024)
	{
		batch_cap = 1024;
		batch = realloc(batch, sizeof(*batch) * (size_t) batch_cap);
		batch_routes = realloc(batch_routes, sizeof(int) * (size_t) batch_cap);
	}
}

/*
 * Each message in flight to the job of its partition's writer (share_out
 * chose them), and each writer's next offset per partition; messages of
 * partitions no longer ours are dropped.
 */
static void
assign_jobs(void)
{
	int			i;
	int			w;

	for (w = 0; w < cfg->writers; w++)
	{
		jobs[w].n = 0;
		jobs[w].nwrites = 0;
		jobs[w].writes = calloc((size_t) nparts + 1, sizeof(PartitionWrite));
	}
	inflight_parts = realloc(inflight_parts, sizeof(*inflight_parts) * (size_t) inflight_cap);
	for (i = 0; i < nparts; i++)
		parts[i].batched = 0;
	for (i = 0; i < inflight_n; i++)
	{
		PartState  *ps = part_find(rd_kafka_topic_name(inflight[i]->rkt), inflight[i]->partition, false);

		if (ps != NULL)
			ps->batched++;
		else
			rd_kafka_message_destroy(inflight[i]);	/* not ours any more */
		inflight_parts[i] = ps;
	}
	share_out();
	for (i = 0; i < inflight_n; i++)
	{
		rd_kafka_message_t *m = inflight[i];
		PartState  *ps = inflight_parts[i];
		PartitionWrite *pw;
		WriterJob  *job;

		if (ps == NULL)
			continue;
		job = &jobs[ps->writer];
		if (job->n == job->cap)
		{
			job->cap = job->cap ? job->cap * 2 : 1024;
			job->msgs = realloc(job->msgs, sizeof(*job->msgs) * (size_t) job->cap);
			job->routes = realloc(job->routes, sizeof(int) * (size_t) job->cap);
		}
		job->msgs[job->n] = m;
		job->routes[job->n] = inflight_routes[i];
		job->n++;
		pw = &job->writes[ps->slot];
		if (m->offset + 1 > pw->next)
			pw->next = m->offset + 1;
	}
}

/*
 * Start a thread per writer with work and a connection (settle writes the
 * others' share itself, once it has connected).
 */
static void
start_writers(void)
{
	int			w;

	for (w = 0; w < cfg->writers; w++)
	{
		WriterJob  *job = &jobs[w];

		job->result = WRITE_RETRY;
		job->held = job->n > 0;
		if (job->n == 0)
			continue;
		if (!db_connected(w))
			continue;			/* settle connects it, and writes there */
		pthread_mutex_lock(&writer_lock);
		writers_running++;
		pthread_mutex_unlock(&writer_lock);
		job->running = pthread_create(&job->thread, NULL, writer_main, job) == 0;
		if (!job->running)
		{
			pthread_mutex_lock(&writer_lock);
			writers_running--;
			pthread_mutex_unlock(&writer_lock);
		}
	}
}

/*
 * Hand the gathered batch to the writers (after the one before it is
 * settled) and start gathering the next.
 */
static void
submit(void)
{
	settle();
	if (batch_count == 0)
		return;
	swap_batches();
	assign_jobs();
	batch_restart();
	inflight_t0 = now_ms();
	start_writers();
}

/*
 * Write everything gathered, and wait until it is written.
 */
static void
flush(void)
{
	submit();
	settle();
}

/*
 * Are two configurations the same for the consumer and the routes (all
 * but the log level and batch settings)?
 */
static bool
same_pipeline(const BridgeConfig *a, const BridgeConfig *b)
{
	int			r;
	int			i;

	if (strcmp(a->conninfo, b->conninfo) != 0 || strcmp(a->brokers, b->brokers) != 0 ||
		strcmp(a->group, b->group) != 0 || a->nkafka != b->nkafka || a->nroutes != b->nroutes ||
		a->writers != b->writers)
		return false;
	for (i = 0; i < a->nkafka; i++)
		if (strcmp(a->kafka_keys[i], b->kafka_keys[i]) != 0 ||
			strcmp(a->kafka_values[i], b->kafka_values[i]) != 0)
			return false;
	for (r = 0; r < a->nroutes; r++)
	{
		const BridgeRoute *x = &a->routes[r];
		const BridgeRoute *y = &b->routes[r];

		if (strcmp(x->name, y->name) != 0 || x->ntopics != y->ntopics || strcmp(x->table, y->table) != 0 ||
			x->format != y->format || strcmp(x->column, y->column) != 0 ||
			strcmp(x->columns, y->columns) != 0 || x->upsert != y->upsert ||
			strcmp(x->key_columns, y->key_columns) != 0 || x->dedupe != y->dedupe ||
			memcmp(x->meta, y->meta, sizeof(x->meta)) != 0)
			return false;
		for (i = 0; i < x->ntopics; i++)
			if (strcmp(x->topics[i], y->topics[i]) != 0)
				return false;
	}
	return true;
}

static void
consumer_close(void)
{
	if (rk == NULL)
		return;
	fresh_stop();
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	rk = NULL;
	nparts = 0;
}

/*
 * SIGHUP: load the file again; a file that is not valid, or routes the
 * database refuses, leave the running configuration as it is.
 */
static void
reload(const char *path)
{
	BridgeConfig *next = malloc(sizeof(BridgeConfig));
	BridgeLogLevel level;
	int			r;

	config_set_defaults(next);
	if (!config_load(path, next))
	{
		log_error("configuration \"%s\" not reloaded: keeping the one in force", path);
		free(next);
		return;
	}
	if (same_pipeline(cfg, next))
	{
		snprintf(cfg->log_level, sizeof(cfg->log_level), "%s", next->log_level);
		cfg->batch_size = next->batch_size;
		cfg->batch_bytes = next->batch_bytes;
		cfg->batch_delay_ms = next->batch_delay_ms;
		for (r = 0; r < cfg->nroutes; r++)
		{
			cfg->routes[r].batch_size = next->routes[r].batch_size;
			cfg->routes[r].batch_delay_ms = next->routes[r].batch_delay_ms;
		}
		config_free(next);
		free(next);
	}
	else
	{
		BridgeConfig *old = cfg;

		flush();
		consumer_close();
		db_disconnect();		/* the writers reconnect on their first batch */
		cfg = next;
		if (!db_connect(cfg, 0, true) || !db_check_routes(cfg))
		{
			log_error("configuration \"%s\" not reloaded: its routes do not fit the database; keeping the one in force",
					  path);
			config_free(next);
			free(next);
			cfg = old;
			db_disconnect();
			if (db_connect(cfg, 0, false))
				(void) db_check_routes(cfg);
		}
		else
		{
			*old = *next;		/* the patterns move with it */
			free(next);
			cfg = old;
		}
		rk = consumer_new();
	}
	if (config_log_level(cfg->log_level, &level))
		bridge_log_level = level;
	metrics_set_routes(cfg);
	log_info("configuration \"%s\" reloaded", path);
}

/* How often, between batches, notifications and positions are looked at. */
#define SEEK_CHECK_MS 100
#define POSITIONS_MS 5000

/*
 * Between batches (no write in flight, so the main connection is free):
 * a seek asked with infra.bridge_seek (a notification; or, every
 * POSITIONS_MS with the positions report, a stored offset that is not the
 * one expected, should a notification have been missed) drops what is
 * gathered and reads every partition again from its stored offset.
 */
static void
between_batches(void)
{
	static int64_t seek_at = 0;
	static int64_t positions_at = 0;
	bool		seek = false;
	int64_t		now = now_ms();

	if (now - seek_at >= SEEK_CHECK_MS)
	{
		seek_at = now;
		seek = db_seek_requested(cfg);
	}
	if (!seek && now - positions_at >= POSITIONS_MS && nparts > 0)
	{
		BridgePosition *pos = calloc((size_t) nparts, sizeof(BridgePosition));
		int			n = metrics_positions(pos, nparts);
		int			i;

		positions_at = now;
		for (i = 0; i < n; i++)
		{
			PartState  *ps = part_find(pos[i].topic, pos[i].partition, false);

			pos[i].expected = ps != NULL ? ps->expected : -1;
		}
		seek = db_report_positions(cfg, pos, n) > 0;
		free(pos);
	}
	if (seek)
	{
		log_info("a stored offset was moved (infra.bridge_seek): reading every partition again from its stored offset");
		drop_batch();
		reseek();
	}
}

/*
 * The daemon: returns the exit status.
 */
int
bridge_run(BridgeConfig *config, const char *path)
{
	cfg = config;
	if (!db_connect(cfg, 0, false))
		return bridge_stop ? 0 : 1;
	if (!db_check_routes(cfg))
		return 1;
	metrics_set_routes(cfg);
	rk = consumer_new();
	if (rk == NULL)
		return 1;
	log_info("consuming %d routes for group \"%s\" from %s", cfg->nroutes, cfg->group, cfg->brokers);

	while (!bridge_stop)
	{
		rd_kafka_message_t *msg;
		int			timeout = 500;
		static int64_t lag_at = 0;

		if (now_ms() - lag_at >= 1000)
		{
			metrics_lag(rk, next_to_write, route_of);
			lag_at = now_ms();
		}

		if (bridge_reload)
		{
			bridge_reload = 0;
			reload(path);
			if (rk == NULL)
				return 1;
		}
		if (batch_count > 0)
			timeout = (int) batch_due_in();
		/* A finished write is settled at once (offsets, Kafka, figures). */
		if (inflight_n > 0)
		{
			if (writers_done())
				settle();
			else if (timeout > 10)
				timeout = 10;
		}
		if (inflight_n == 0)
			between_batches();
		msg = rd_kafka_consumer_poll(rk, timeout);
		if (msg != NULL)
		{
			if (msg->err)
			{
				if (msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
					on_error(rk, msg->err, rd_kafka_message_errstr(msg), NULL);
				rd_kafka_message_destroy(msg);
			}
			else
			{
				if (batch_count == batch_cap)
				{
					batch_cap = batch_cap ? batch_cap * 2 : 1024;
					batch = realloc(batch, sizeof(*batch) * (size_t) batch_cap);
					batch_routes = realloc(batch_routes, sizeof(int) * (size_t) batch_cap);
				}
				int			r = config_route_for_topic(cfg, rd_kafka_topic_name(msg->rkt));

				if (batch_count == 0)
					batch_started_ms = now_ms();
				if (r >= 0 && route_count[r]++ == 0)
					route_started_ms[r] = now_ms();
				batch_routes[batch_count] = r;
				batch[batch_count++] = msg;
				batch_bytes += (int64_t) (msg->len + msg->key_len);
			}
		}
		if (batch_count > 0 && batch_due_in() == 0)
			submit();
	}

	/* SIGTERM: finish the batch (or give it up if PostgreSQL is away). */
	flush();
	consumer_close();
	db_disconnect();
	{
		struct rusage ru;

		getrusage(RUSAGE_SELF, &ru);
		log_info("stopped: %lld rows written, %lld dead letters in this run (CPU: %.2f s user, %.2f s system)",
				 (long long) total_written, (long long) total_dead,
				 ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
	}
	return 0;
}
