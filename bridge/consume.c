/*-------------------------------------------------------------------------
 *
 * consume.c
 *		infra-bridge's Kafka side: the consumer, its partitions, batches.
 *
 * The consumer is a member of the configured group with Kafka's offset
 * commits off: where a partition resumes is the next_offset stored in
 * infra.bridge_offsets, read when the partition is assigned.  Messages
 * gather into a batch until batch_size or batch_delay_ms; the batch and
 * the partitions' new offsets are written in one transaction (db.c).  The
 * offsets are then also committed to Kafka, for tools that look there.
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
static int64_t batch_started_ms = 0;
static int	route_count[BRIDGE_MAX_ROUTES];	/* per route, in the batch */
static int64_t route_started_ms[BRIDGE_MAX_ROUTES];

/* Totals, for the log. */
static int64_t total_written = 0;
static int64_t total_dead = 0;

volatile int bridge_reload = 0;

static void settle(void);
static void reseek(void);

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

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
	return &parts[nparts++];
}

/* Where a partition without a stored offset starts. */
static int64_t
start_offset(void)
{
	int			i;

	for (i = 0; i < cfg->nkafka; i++)
		if (strcmp(cfg->kafka_keys[i], "auto.offset.reset") == 0 &&
			(strcmp(cfg->kafka_values[i], "latest") == 0 || strcmp(cfg->kafka_values[i], "largest") == 0 ||
			 strcmp(cfg->kafka_values[i], "end") == 0))
			return RD_KAFKA_OFFSET_END;
	return RD_KAFKA_OFFSET_BEGINNING;
}

static void
drop_batch(void)
{
	int			i;

	for (i = 0; i < batch_count; i++)
		rd_kafka_message_destroy(batch[i]);
	batch_count = 0;
	memset(route_count, 0, sizeof(route_count));
}

/*
 * How long until the batch is due (0: now): a route reached its
 * batch_size, or its oldest message its batch_delay_ms.  Messages of no
 * route (a pattern that changed) follow the [bridge] delay.
 */
static int64_t
batch_due_in(void)
{
	int64_t		now = now_ms();
	int64_t		due = batch_count > 0 ? batch_started_ms + cfg->batch_delay_ms - now : 500;
	int			r;

	if (batch_count >= cfg->batch_size * cfg->nroutes)
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
 * Read a partition's stored offset, reconnecting as long as it takes.
 */
static bool
stored_offset(const char *topic, int32_t partition, int64_t *next)
{
	while (!db_load_offsets(cfg, topic, partition, next))
	{
		if (bridge_stop || !db_connect(cfg, false))
			return false;
	}
	return true;
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
		for (i = 0; i < list->cnt; i++)
		{
			rd_kafka_topic_partition_t *p = &list->elems[i];
			PartState  *ps = part_find(p->topic, p->partition, true);
			int64_t		next = -1;

			if (!stored_offset(p->topic, p->partition, &next))
				next = -1;
			ps->expected = next;
			p->offset = next >= 0 ? next : start_offset();
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
static rd_kafka_t *
consumer_new(void)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	rd_kafka_topic_partition_list_t *topics;
	char		errstr[512];
	rd_kafka_t *consumer;
	int			i;
	int			r;
	const char *fixed[][2] = {
		{"bootstrap.servers", cfg->brokers},
		{"group.id", cfg->group},
		{"enable.auto.commit", "false"},
		{"enable.auto.offset.store", "false"},
		{"enable.partition.eof", "false"},
		/* Defaults for throughput; [kafka] may set them otherwise. */
		{"max.partition.fetch.bytes", "4194304"},
		{"queued.min.messages", "1000000"},
		{"fetch.wait.max.ms", "100"},
	};

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
	int			i;

	for (i = 0; i < nparts; i++)
	{
		int64_t		next = -1;

		if (!stored_offset(parts[i].topic, parts[i].partition, &next))
			next = -1;
		parts[i].expected = next;
		rd_kafka_topic_partition_list_add(list, parts[i].topic, parts[i].partition)->offset =
			next >= 0 ? next : start_offset();
	}
	error = rd_kafka_seek_partitions(rk, list, 10000);
	if (error != NULL)
	{
		log_warning("cannot seek: %s", rd_kafka_error_string(error));
		rd_kafka_error_destroy(error);
	}
	rd_kafka_topic_partition_list_destroy(list);
}

/*
 * The batch being written by the writer thread, while the main thread
 * gathers the next one.  Only the writer touches the PostgreSQL connection
 * while it runs; the main thread waits for it (settle) before it uses the
 * connection itself (rebalance, reseek, reconnect) or builds the next
 * batch's offsets, which depend on this one's outcome.
 */
typedef struct Inflight
{
	rd_kafka_message_t **msgs;
	int		   *routes;
	int			n;
	int			cap;
	PartitionWrite *writes;
	int			nwrites;
	long long	written[BRIDGE_MAX_ROUTES];
	long long	dead[BRIDGE_MAX_ROUTES];
	WriteResult result;
	int64_t		t0;
} Inflight;

static Inflight inflight;
static pthread_t writer_thread;
static bool writer_busy = false;
static bool writer_joined = false;	/* written without a thread, to settle */
static pthread_mutex_t writer_lock = PTHREAD_MUTEX_INITIALIZER;
static bool writer_finished = false;	/* under writer_lock */

static void *
writer_main(void *arg)
{
	Inflight   *w = (Inflight *) arg;

	w->result = db_write_batch(cfg, w->msgs, w->n, w->routes, w->writes, w->nwrites,
							   w->written, w->dead);
	pthread_mutex_lock(&writer_lock);
	writer_finished = true;
	pthread_mutex_unlock(&writer_lock);
	return NULL;
}

/*
 * Wait for the batch in flight and act on its outcome: offsets known,
 * Kafka told, figures counted; after a conflict, everything gathered since
 * is dropped and the partitions read again from the stored offsets; while
 * PostgreSQL is away, reconnect and write it again (unless stopping: then
 * it is given up, and read again at the next start).
 */
static void
settle(void)
{
	int			i;
	int			j;

	if (!writer_busy && !writer_joined)
		return;
	if (writer_busy)
		pthread_join(writer_thread, NULL);
	writer_busy = false;
	writer_joined = false;
	for (;;)
	{
		if (inflight.result == WRITE_OK)
		{
			rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(inflight.nwrites);
			long long	consumed[BRIDGE_MAX_ROUTES];
			long long	all_written = 0;
			long long	all_dead = 0;
			int			r;

			for (j = 0; j < inflight.nwrites; j++)
			{
				PartState  *ps = part_find(inflight.writes[j].topic, inflight.writes[j].partition, false);

				if (ps != NULL)
					ps->expected = inflight.writes[j].next;
				rd_kafka_topic_partition_list_add(list, inflight.writes[j].topic,
												  inflight.writes[j].partition)->offset = inflight.writes[j].next;
			}
			/* Informational only: the offsets that count are in PostgreSQL. */
			rd_kafka_commit(rk, list, 1);
			rd_kafka_topic_partition_list_destroy(list);
			memset(consumed, 0, sizeof(consumed));
			for (i = 0; i < inflight.n; i++)
				if (inflight.routes[i] >= 0)
					consumed[inflight.routes[i]]++;
			for (r = 0; r < cfg->nroutes; r++)
			{
				all_written += inflight.written[r];
				all_dead += inflight.dead[r];
			}
			metrics_batch(consumed, inflight.written, inflight.dead, (double) (now_ms() - inflight.t0) / 1000.0);
			total_written += all_written;
			total_dead += all_dead;
			log_debug("batch of %d messages: %lld written, %lld dead letters, %lld ms",
					  inflight.n, all_written, all_dead, (long long) (now_ms() - inflight.t0));
			if (all_dead > 0)
				log_warning("%lld messages could not be written: see infra.bridge_dead_letters", all_dead);
			break;
		}
		if (inflight.result == WRITE_CONFLICT)
		{
			drop_batch();
			reseek();
			break;
		}
		if (bridge_stop)
		{
			log_warning("stopping with a batch of %d messages not written; it is read again at the next start",
						inflight.n);
			break;
		}
		if (!db_connect(cfg, false) || !db_check_routes(cfg))
			continue;
		inflight.t0 = now_ms();
		inflight.result = db_write_batch(cfg, inflight.msgs, inflight.n, inflight.routes,
										 inflight.writes, inflight.nwrites, inflight.written, inflight.dead);
	}
	for (i = 0; i < inflight.n; i++)
		rd_kafka_message_destroy(inflight.msgs[i]);
	inflight.n = 0;
	free(inflight.writes);
	inflight.writes = NULL;
}

/*
 * Hand the gathered batch to the writer thread (after the one before it
 * is settled) and start gathering the next.
 */
static void
submit(void)
{
	PartitionWrite *writes;
	int			nwrites = 0;
	int			i;
	int			j;

	settle();
	if (batch_count == 0)
		return;
	writes = calloc((size_t) nparts + 1, sizeof(PartitionWrite));
	for (i = 0; i < batch_count; i++)
	{
		const char *topic = rd_kafka_topic_name(batch[i]->rkt);
		PartState  *ps = part_find(topic, batch[i]->partition, false);

		if (ps == NULL)
			continue;			/* not ours any more */
		for (j = 0; j < nwrites; j++)
			if (writes[j].partition == ps->partition && strcmp(writes[j].topic, ps->topic) == 0)
				break;
		if (j == nwrites)
		{
			writes[j].topic = ps->topic;
			writes[j].partition = ps->partition;
			writes[j].expected = ps->expected;
			writes[j].next = -1;
			nwrites++;
		}
		if (batch[i]->offset + 1 > writes[j].next)
			writes[j].next = batch[i]->offset + 1;
	}

	/* The gathered arrays go to the writer; its old ones gather the next. */
	{
		rd_kafka_message_t **msgs = inflight.msgs;
		int		   *routes = inflight.routes;
		int			cap = inflight.cap;

		inflight.msgs = batch;
		inflight.routes = batch_routes;
		inflight.cap = batch_cap;
		inflight.n = batch_count;
		batch = msgs;
		batch_routes = routes;
		batch_cap = cap;
		batch_count = 0;
		memset(route_count, 0, sizeof(route_count));
	}
	inflight.writes = writes;
	inflight.nwrites = nwrites;
	inflight.t0 = now_ms();
	pthread_mutex_lock(&writer_lock);
	writer_finished = false;
	pthread_mutex_unlock(&writer_lock);
	writer_busy = pthread_create(&writer_thread, NULL, writer_main, &inflight) == 0;
	if (!writer_busy)
	{
		/* No thread: write it here, and settle it at once. */
		writer_main(&inflight);
		writer_joined = true;
		settle();
	}
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
		strcmp(a->group, b->group) != 0 || a->nkafka != b->nkafka || a->nroutes != b->nroutes)
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
		cfg = next;
		if (!db_connect(cfg, true) || !db_check_routes(cfg))
		{
			log_error("configuration \"%s\" not reloaded: its routes do not fit the database; keeping the one in force",
					  path);
			config_free(next);
			free(next);
			cfg = old;
			if (db_connect(cfg, false))
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

/*
 * The daemon: returns the exit status.
 */
int
bridge_run(BridgeConfig *config, const char *path)
{
	cfg = config;
	if (!db_connect(cfg, false))
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
			metrics_lag(rk);
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
		if (writer_busy)
		{
			bool		finished;

			pthread_mutex_lock(&writer_lock);
			finished = writer_finished;
			pthread_mutex_unlock(&writer_lock);
			if (finished)
				settle();
			else if (timeout > 10)
				timeout = 10;
		}
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
