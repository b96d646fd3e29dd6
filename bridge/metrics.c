/*-------------------------------------------------------------------------
 *
 * metrics.c
 *		infra-bridge's /metrics (Prometheus text) and /healthz, served by
 *		libmicrohttpd on [bridge] metrics_listen.
 *
 * libmicrohttpd answers from its own thread; the consumer loop updates the
 * figures under one mutex and the handler copies them out under it, so
 * neither waits on the other for long.
 *
 * Bounded as the extension's listener is (src/core/httpd.c): connections in all
 * and per client address, a silent connection closed, and a request not
 * complete METRICS_REQUEST_DEADLINE_S after it began has its socket shut by
 * a sweeper thread (a client dripping a byte a second is never silent).
 *
 *-------------------------------------------------------------------------
 */
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "bridge.h"
#include "buf.h"

/* Batch latency buckets, in seconds. */
static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

#define MAX_LAG_PARTITIONS 1024

typedef struct RouteFigures
{
	char		name[64];
	long long	consumed;
	long long	written;
	long long	dead;
} RouteFigures;

typedef struct LagFigure
{
	char		topic[256];
	int			partition;
	long long	lag;
	int64_t		position;		/* the next offset to write */
	int64_t		high;			/* high watermark: the newest offset + 1 */
	int			route;			/* whose topic it is (-1: none) */
} LagFigure;

/* End-to-end buckets (kafka_send's commit to the row's), in seconds. */
static const double e2e_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
#define NE2E (sizeof(e2e_buckets) / sizeof(e2e_buckets[0]))

/*
 * Freshness of a partition, in Kafka message timestamps (ms; -1: not
 * known): the last message written (and by which route), the oldest not
 * yet written and the newest on the broker (both looked up by the probe
 * thread, fresh.c, at the offsets noted).
 */
typedef struct FreshFigure
{
	char		topic[256];
	int			partition;
	int			route;
	int64_t		written_ts;
	int64_t		written_offset;
	int64_t		next_ts;
	int64_t		next_offset;
	int64_t		newest_ts;
	int64_t		newest_offset;
} FreshFigure;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static RouteFigures routes[BRIDGE_MAX_ROUTES];
static int	nroutes = 0;
static long long batch_counts[NBUCKETS + 1];
static double batch_sum = 0;
static long long batch_total = 0;
static LagFigure lags[MAX_LAG_PARTITIONS];
static int	nlags = 0;
static FreshFigure fresh[MAX_LAG_PARTITIONS];
static int	nfresh = 0;
static long long e2e_counts[BRIDGE_MAX_ROUTES][NE2E + 1];
static double e2e_sum[BRIDGE_MAX_ROUTES];
static long long e2e_total[BRIDGE_MAX_ROUTES];
static bool db_up = false;
static struct MHD_Daemon *daemon_handle = NULL;

/*
 * The listener's bounds, the extension's own (src/core/httpd.c): connections at
 * once (epoll, so no FD_SETSIZE ceiling), seconds a silent connection may
 * stay, and memory for a request's line and headers (larger: 414 or 431).
 */
#define METRICS_CONNECTION_LIMIT 512
#define METRICS_PER_CLIENT_LIMIT 32
#define METRICS_CONNECTION_TIMEOUT_S 5
#define METRICS_REQUEST_DEADLINE_S 5
#define METRICS_REQUEST_MEMORY 16384

/* A connection, and since when its current request has been coming in. */
typedef struct Client
{
	struct MHD_Connection *connection;	/* NULL: a free slot */
	int			fd;
	int64_t		since_ms;
	bool		shut;
} Client;

static Client clients[METRICS_CONNECTION_LIMIT + 16];
static pthread_mutex_t clients_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_t sweeper;
static volatile bool sweeping = false;

/*
 * A connection opened (kept, with its start) or closed (forgotten).  In
 * libmicrohttpd's thread.
 */
static void
client_notify(void *cls, struct MHD_Connection *connection, void **socket_context,
			  enum MHD_ConnectionNotificationCode code)
{
	size_t		i;

	pthread_mutex_lock(&clients_lock);
	for (i = 0; i < sizeof(clients) / sizeof(clients[0]); i++)
	{
		if (code == MHD_CONNECTION_NOTIFY_STARTED && clients[i].connection == NULL)
		{
			const union MHD_ConnectionInfo *info =
				MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);

			clients[i].connection = connection;
			clients[i].fd = info != NULL ? info->connect_fd : -1;
			clients[i].since_ms = now_ms();
			clients[i].shut = false;
			break;
		}
		if (code == MHD_CONNECTION_NOTIFY_CLOSED && clients[i].connection == connection)
		{
			clients[i].connection = NULL;
			break;
		}
	}
	pthread_mutex_unlock(&clients_lock);
}

/* A request answered: the connection's next one has its own deadline. */
static void
client_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
				 enum MHD_RequestTerminationCode toe)
{
	size_t		i;

	pthread_mutex_lock(&clients_lock);
	for (i = 0; i < sizeof(clients) / sizeof(clients[0]); i++)
		if (clients[i].connection == connection)
			clients[i].since_ms = now_ms();
	pthread_mutex_unlock(&clients_lock);
}

/*
 * Every second: shut the socket of each connection past its deadline
 * (libmicrohttpd then reads its end and closes it).
 */
static void *
client_sweep(void *arg)
{
	while (sweeping)
	{
		struct timespec second = {1, 0};
		int64_t		now = now_ms();
		size_t		i;

		pthread_mutex_lock(&clients_lock);
		for (i = 0; i < sizeof(clients) / sizeof(clients[0]); i++)
			if (clients[i].connection != NULL && !clients[i].shut && clients[i].fd >= 0 &&
				now - clients[i].since_ms > METRICS_REQUEST_DEADLINE_S * 1000)
			{
				(void) shutdown(clients[i].fd, SHUT_RDWR);
				clients[i].shut = true;
			}
		pthread_mutex_unlock(&clients_lock);
		nanosleep(&second, NULL);
	}
	return NULL;
}

/*
 * The routes' names (again after a reload); counters of a route that keeps
 * its name are kept.
 */
void
metrics_set_routes(const BridgeConfig *config)
{
	RouteFigures next[BRIDGE_MAX_ROUTES];
	int			r;
	int			o;

	pthread_mutex_lock(&lock);
	for (r = 0; r < config->nroutes; r++)
	{
		memset(&next[r], 0, sizeof(next[r]));
		snprintf(next[r].name, sizeof(next[r].name), "%s", config->routes[r].name);
		for (o = 0; o < nroutes; o++)
			if (strcmp(routes[o].name, next[r].name) == 0)
				next[r] = routes[o];
	}
	memcpy(routes, next, sizeof(RouteFigures) * (size_t) config->nroutes);
	nroutes = config->nroutes;
	/* Route numbers may mean other routes now: start the histograms over. */
	memset(e2e_counts, 0, sizeof(e2e_counts));
	memset(e2e_sum, 0, sizeof(e2e_sum));
	memset(e2e_total, 0, sizeof(e2e_total));
	nfresh = 0;
	pthread_mutex_unlock(&lock);
}

static int64_t
wall_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The freshness entry of a partition, made when create; NULL: none. Under lock. */
static FreshFigure *
fresh_find(const char *topic, int partition, bool create)
{
	int			i;

	for (i = 0; i < nfresh; i++)
		if (fresh[i].partition == partition && strcmp(fresh[i].topic, topic) == 0)
			return &fresh[i];
	if (!create || nfresh >= MAX_LAG_PARTITIONS)
		return NULL;
	memset(&fresh[nfresh], 0, sizeof(FreshFigure));
	snprintf(fresh[nfresh].topic, sizeof(fresh[nfresh].topic), "%s", topic);
	fresh[nfresh].partition = partition;
	fresh[nfresh].route = -1;
	fresh[nfresh].written_ts = fresh[nfresh].next_ts = fresh[nfresh].newest_ts = -1;
	fresh[nfresh].written_offset = fresh[nfresh].next_offset = fresh[nfresh].newest_offset = -1;
	return &fresh[nfresh++];
}

/*
 * Messages just committed (written or dead-lettered), routes[i] the route
 * of msgs[i] (-1: none): each partition's last message written, and the
 * end-to-end time of those kafka_send sent (their infra-commit-time
 * header, microseconds since 1970) up to now, this commit.
 */
void
metrics_written(rd_kafka_message_t *const *msgs, const int *routes, int n)
{
	struct timespec ts;
	int64_t		now_us;
	FreshFigure *f = NULL;
	int			i;

	clock_gettime(CLOCK_REALTIME, &ts);
	now_us = (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
	pthread_mutex_lock(&lock);
	for (i = 0; i < n; i++)
	{
		const rd_kafka_message_t *m = msgs[i];
		rd_kafka_headers_t *headers = NULL;
		const void *value;
		size_t		size;
		int			r = routes[i];

		if (r < 0 || r >= nroutes)
			continue;
		/* A job's messages come a partition at a time: look it up once a run. */
		if (f == NULL || f->partition != m->partition || strcmp(f->topic, rd_kafka_topic_name(m->rkt)) != 0)
			f = fresh_find(rd_kafka_topic_name(m->rkt), m->partition, true);
		if (f != NULL && m->offset >= f->written_offset)
		{
			f->written_offset = m->offset;
			f->written_ts = rd_kafka_message_timestamp(m, NULL);
			f->route = r;
		}
		if (rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR &&
			rd_kafka_header_get_last(headers, "infra-commit-time", &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR &&
			value != NULL && size > 0 && size < 32)
		{
			char		text[32];
			char	   *end;
			long long	committed;
			double		seconds;
			size_t		b;

			memcpy(text, value, size);
			text[size] = '\0';
			committed = strtoll(text, &end, 10);
			if (*end != '\0' || committed <= 0)
				continue;
			/* Clocks of two machines: a skew below zero counts as zero. */
			seconds = now_us > committed ? (double) (now_us - committed) / 1e6 : 0;
			for (b = 0; b < NE2E && seconds > e2e_buckets[b]; b++)
				;
			e2e_counts[r][b]++;
			e2e_sum[r] += seconds;
			e2e_total[r]++;
		}
	}
	pthread_mutex_unlock(&lock);
}

/*
 * For the probe thread (fresh.c): the assigned partitions whose oldest
 * unwritten message (position, when lagging) or newest message (high - 1,
 * when lagging or nothing written yet) has no known timestamp for its
 * current offset; at most max of them.  Returns how many.
 */
int
metrics_probe_targets(FreshTarget *targets, int max)
{
	int			i;
	int			n = 0;

	pthread_mutex_lock(&lock);
	for (i = 0; i < nlags && n < max; i++)
	{
		FreshFigure *f = fresh_find(lags[i].topic, lags[i].partition, false);
		FreshTarget *t = &targets[n];

		memset(t, 0, sizeof(*t));
		snprintf(t->topic, sizeof(t->topic), "%.*s", (int) sizeof(t->topic) - 1, lags[i].topic);
		t->partition = lags[i].partition;
		t->next_offset = t->newest_offset = -1;
		if (lags[i].lag > 0 && lags[i].position >= 0 && (f == NULL || f->next_offset != lags[i].position))
			t->next_offset = lags[i].position;
		if (lags[i].high > 0 && (lags[i].lag > 0 || f == NULL || f->written_ts < 0) &&
			(f == NULL || f->newest_offset != lags[i].high - 1))
			t->newest_offset = lags[i].high - 1;
		if (t->next_offset >= 0 || t->newest_offset >= 0)
			n++;
	}
	pthread_mutex_unlock(&lock);
	return n;
}

/* What the probe found (a timestamp -1: not found). */
void
metrics_probe_result(const FreshTarget *t, int64_t next_ts, int64_t newest_ts)
{
	FreshFigure *f;

	pthread_mutex_lock(&lock);
	f = fresh_find(t->topic, t->partition, true);
	if (f != NULL && t->next_offset >= 0 && next_ts >= 0)
	{
		f->next_offset = t->next_offset;
		f->next_ts = next_ts;
	}
	if (f != NULL && t->newest_offset >= 0 && newest_ts >= 0)
	{
		f->newest_offset = t->newest_offset;
		f->newest_ts = newest_ts;
	}
	pthread_mutex_unlock(&lock);
}

/*
 * One written batch: per route what was consumed, written and
 * dead-lettered, and how long the transaction took.
 */
void
metrics_batch(const long long *consumed, const long long *written, const long long *dead,
			  double seconds)
{
	size_t		b;
	int			r;

	pthread_mutex_lock(&lock);
	for (r = 0; r < nroutes; r++)
	{
		routes[r].consumed += consumed[r];
		routes[r].written += written[r];
		routes[r].dead += dead[r];
	}
	for (b = 0; b < NBUCKETS && seconds > buckets[b]; b++)
		;
	batch_counts[b]++;
	batch_sum += seconds;
	batch_total++;
	pthread_mutex_unlock(&lock);
}

void
metrics_db_up(bool up)
{
	pthread_mutex_lock(&lock);
	db_up = up;
	pthread_mutex_unlock(&lock);
}

/*
 * Lag of the assigned partitions: high watermark minus the next offset to
 * write, what next_to_write says (the offset stored with the last batch
 * written; -1: none yet, then the consumer's position or the partition's
 * first offset).  Messages
 * read but not yet written (PostgreSQL slow or away) are lag too.
 */
void
metrics_lag(rd_kafka_t *rk, int64_t (*next_to_write) (const char *topic, int32_t partition),
			int (*route_of) (const char *topic))
{
	rd_kafka_topic_partition_list_t *assigned = NULL;
	int			i;
	int			n = 0;
	LagFigure  *next;

	if (rk == NULL || rd_kafka_assignment(rk, &assigned) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	rd_kafka_position(rk, assigned);
	next = calloc(MAX_LAG_PARTITIONS, sizeof(LagFigure));
	for (i = 0; i < assigned->cnt && n < MAX_LAG_PARTITIONS; i++)
	{
		rd_kafka_topic_partition_t *p = &assigned->elems[i];
		int64_t		low;
		int64_t		high;

		if (rd_kafka_get_watermark_offsets(rk, p->topic, p->partition, &low, &high) != RD_KAFKA_RESP_ERR_NO_ERROR ||
			high < 0)
			continue;
		snprintf(next[n].topic, sizeof(next[n].topic), "%s", p->topic);
		next[n].partition = p->partition;
		next[n].position = next_to_write(p->topic, p->partition);
		/* Nothing written yet: where reading started (or will). */
		if (next[n].position < 0)
			next[n].position = p->offset >= 0 ? p->offset : low;
		next[n].lag = high - next[n].position;
		if (next[n].lag < 0)
			next[n].lag = 0;
		next[n].high = high;
		next[n].route = route_of(p->topic);
		n++;
	}
	rd_kafka_topic_partition_list_destroy(assigned);
	pthread_mutex_lock(&lock);
	memcpy(lags, next, sizeof(LagFigure) * (size_t) n);
	nlags = n;
	pthread_mutex_unlock(&lock);
	free(next);
}

/*
 * The assigned partitions' positions as metrics_lag last saw them: the
 * end (high watermark) and the Kafka timestamp of the oldest message not
 * yet written (-1 when caught up; while the probe has not looked, the last
 * written one's, which is older).  expected is left -1 for the caller.
 * Returns how many were filled.
 */
int
metrics_positions(BridgePosition *pos, int max)
{
	int			i;
	int			n = 0;

	pthread_mutex_lock(&lock);
	for (i = 0; i < nlags && n < max; i++)
	{
		FreshFigure *f = fresh_find(lags[i].topic, lags[i].partition, false);

		memcpy(pos[n].topic, lags[i].topic, sizeof(pos[n].topic));
		pos[n].topic[sizeof(pos[n].topic) - 1] = '\0';
		pos[n].partition = lags[i].partition;
		pos[n].end = lags[i].high;
		pos[n].expected = -1;
		pos[n].oldest_ms = -1;
		if (lags[i].lag > 0 && f != NULL)
			pos[n].oldest_ms = f->next_ts >= 0 ? f->next_ts : f->written_ts;
		n++;
	}
	pthread_mutex_unlock(&lock);
	return n;
}

/* A label value, escaped for the text format. */
static const char *
label(const char *value, char *buf, size_t size)
{
	size_t		o = 0;

	for (; *value && o + 3 < size; value++)
	{
		if (*value == '\\' || *value == '"')
			buf[o++] = '\\';
		if (*value == '\n')
		{
			buf[o++] = '\\';
			buf[o++] = 'n';
			continue;
		}
		buf[o++] = *value;
	}
	buf[o] = '\0';
	return buf;
}

/* One freshness sample: now - ts (ms) in seconds, never below zero. Under lock. */
static void
age_sample(Buf *t, const char *name, int route, const char *topic, int partition, int64_t now, int64_t ts)
{
	char		l1[300];
	char		l2[300];

	buf_printf(t, "%s{route=\"%s\",topic=\"%s\",partition=\"%d\"} %.3f\n", name,
			   route >= 0 && route < nroutes ? label(routes[route].name, l2, sizeof(l2)) : "",
			   label(topic, l1, sizeof(l1)), partition, now > ts ? (double) (now - ts) / 1000.0 : 0.0);
}

/*
 * Freshness in seconds, per assigned partition: the lag (0 when caught up,
 * else the age of the oldest message not yet written; while the probe has
 * not looked, that of the last written, which is older: never too low),
 * the age of the last message written and of the newest on the broker;
 * and the end-to-end histogram per route.  Under lock.
 */
static void
render_freshness(Buf *t)
{
	int64_t		now = wall_ms();
	char		l2[300];
	int			i;
	int			r;
	size_t		b;

	buf_puts(t, "# HELP infra_bridge_lag_seconds Age of the oldest message of the partition not yet written (0 when caught up).\n"
			 "# TYPE infra_bridge_lag_seconds gauge\n");
	for (i = 0; i < nlags; i++)
	{
		FreshFigure *f = fresh_find(lags[i].topic, lags[i].partition, false);
		int64_t		ts = -1;

		if (lags[i].lag == 0)
			ts = now;
		else if (f != NULL && f->next_ts >= 0)
			ts = f->next_ts;
		else if (f != NULL && f->written_ts >= 0)
			ts = f->written_ts;
		if (ts < 0)
			continue;
		age_sample(t, "infra_bridge_lag_seconds", lags[i].route, lags[i].topic, lags[i].partition, now, ts);
	}
	buf_puts(t, "# HELP infra_bridge_last_written_age_seconds Age (Kafka timestamp) of the partition's last message written.\n"
			 "# TYPE infra_bridge_last_written_age_seconds gauge\n");
	for (i = 0; i < nfresh; i++)
		if (fresh[i].written_ts >= 0 && fresh[i].route >= 0 && fresh[i].route < nroutes)
			age_sample(t, "infra_bridge_last_written_age_seconds", fresh[i].route, fresh[i].topic,
					   fresh[i].partition, now, fresh[i].written_ts);
	buf_puts(t, "# HELP infra_bridge_newest_message_age_seconds Age (Kafka timestamp) of the partition's newest message on the broker.\n"
			 "# TYPE infra_bridge_newest_message_age_seconds gauge\n");
	for (i = 0; i < nlags; i++)
	{
		FreshFigure *f = fresh_find(lags[i].topic, lags[i].partition, false);
		int64_t		ts = -1;

		if (f != NULL && lags[i].lag == 0 && f->written_offset == lags[i].high - 1)
			ts = f->written_ts;
		else if (f != NULL && f->newest_offset == lags[i].high - 1)
			ts = f->newest_ts;
		if (ts < 0)
			continue;
		age_sample(t, "infra_bridge_newest_message_age_seconds", lags[i].route, lags[i].topic,
				   lags[i].partition, now, ts);
	}
	buf_puts(t, "# HELP infra_bridge_end_to_end_seconds From the commit of kafka_send's transaction (header infra-commit-time) to the commit of its row here.\n"
			 "# TYPE infra_bridge_end_to_end_seconds histogram\n");
	for (r = 0; r < nroutes; r++)
	{
		long long	cumulative = 0;

		label(routes[r].name, l2, sizeof(l2));
		for (b = 0; b < NE2E; b++)
		{
			cumulative += e2e_counts[r][b];
			buf_printf(t, "infra_bridge_end_to_end_seconds_bucket{route=\"%s\",le=\"%g\"} %lld\n", l2, e2e_buckets[b], cumulative);
		}
		buf_printf(t, "infra_bridge_end_to_end_seconds_bucket{route=\"%s\",le=\"+Inf\"} %lld\n", l2, e2e_total[r]);
		buf_printf(t, "infra_bridge_end_to_end_seconds_sum{route=\"%s\"} %.6f\n", l2, e2e_sum[r]);
		buf_printf(t, "infra_bridge_end_to_end_seconds_count{route=\"%s\"} %lld\n", l2, e2e_total[r]);
	}
}

static char *
render(void)
{
	Buf			t = {0};
	char		l1[300];
	int			r;
	size_t		b;
	long long	cumulative = 0;
	static const struct
	{
		const char *name;
		const char *help;
	}			counters[] = {
		{"infra_bridge_consumed_total", "Messages read from Kafka and handled in a committed batch."},
		{"infra_bridge_written_total", "Rows written to the route's table."},
		{"infra_bridge_dead_lettered_total", "Messages written to infra.bridge_dead_letters."},
	};
	size_t		c;

	pthread_mutex_lock(&lock);
	for (c = 0; c < sizeof(counters) / sizeof(counters[0]); c++)
	{
		buf_printf(&t, "# HELP %s %s\n# TYPE %s counter\n", counters[c].name, counters[c].help, counters[c].name);
		for (r = 0; r < nroutes; r++)
			buf_printf(&t, "%s{route=\"%s\"} %lld\n", counters[c].name, label(routes[r].name, l1, sizeof(l1)),
						c == 0 ? routes[r].consumed : c == 1 ? routes[r].written : routes[r].dead);
	}
	buf_printf(&t, "# HELP infra_bridge_batch_seconds Time to write a batch and its offsets (one transaction).\n"
				"# TYPE infra_bridge_batch_seconds histogram\n");
	for (b = 0; b < NBUCKETS; b++)
	{
		cumulative += batch_counts[b];
		buf_printf(&t, "infra_bridge_batch_seconds_bucket{le=\"%g\"} %lld\n", buckets[b], cumulative);
	}
	buf_printf(&t, "infra_bridge_batch_seconds_bucket{le=\"+Inf\"} %lld\n", batch_total);
	buf_printf(&t, "infra_bridge_batch_seconds_sum %.6f\ninfra_bridge_batch_seconds_count %lld\n", batch_sum, batch_total);
	buf_printf(&t, "# HELP infra_bridge_lag_messages Messages of the partition not yet written (after the offset stored with the last batch).\n"
				"# TYPE infra_bridge_lag_messages gauge\n");
	for (r = 0; r < nlags; r++)
		buf_printf(&t, "infra_bridge_lag_messages{topic=\"%s\",partition=\"%d\"} %lld\n",
					label(lags[r].topic, l1, sizeof(l1)), lags[r].partition, lags[r].lag);
	render_freshness(&t);
	buf_printf(&t, "# HELP infra_bridge_postgresql_up 1 while the bridge is connected to PostgreSQL.\n"
				"# TYPE infra_bridge_postgresql_up gauge\ninfra_bridge_postgresql_up %d\n", db_up ? 1 : 0);
	pthread_mutex_unlock(&lock);
	return t.data;
}

static enum MHD_Result
respond(struct MHD_Connection *connection, unsigned int status, const char *type, char *body)
{
	struct MHD_Response *response = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
	enum MHD_Result result;

	if (response == NULL)
	{
		free(body);
		return MHD_NO;
	}
	MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	result = MHD_queue_response(connection, status, response);
	MHD_destroy_response(response);
	return result;
}

static enum MHD_Result
handle(void *cls, struct MHD_Connection *connection, const char *url, const char *method,
	   const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return respond(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", strdup("only GET and HEAD\n"));
	if (strcmp(url, "/metrics") == 0)
		return respond(connection, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", render());
	if (strcmp(url, "/healthz") == 0)
	{
		bool		up;

		pthread_mutex_lock(&lock);
		up = db_up;
		pthread_mutex_unlock(&lock);
		return respond(connection, up ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain",
					   strdup(up ? "ok\n" : "not connected to PostgreSQL\n"));
	}
	return respond(connection, MHD_HTTP_NOT_FOUND, "text/plain", strdup("not found: try /metrics or /healthz\n"));
}

/*
 * Serve on host:port (empty: do not); false when it cannot.
 */
bool
metrics_start(const char *listen_on)
{
	char		host[256];
	const char *colon;
	struct addrinfo hints;
	struct addrinfo *addr = NULL;
	int			rc;

	if (listen_on == NULL || listen_on[0] == '\0')
		return true;
	colon = strrchr(listen_on, ':');
	if (colon == NULL || (size_t) (colon - listen_on) >= sizeof(host))
	{
		log_error("metrics_listen \"%s\" is not host:port", listen_on);
		return false;
	}
	memcpy(host, listen_on, (size_t) (colon - listen_on));
	host[colon - listen_on] = '\0';
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &addr);
	if (rc != 0)
	{
		log_error("metrics_listen \"%s\": %s", listen_on, gai_strerror(rc));
		return false;
	}
	daemon_handle = MHD_start_daemon(MHD_USE_EPOLL_INTERNAL_THREAD |
									 (addr->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0),
									 0, NULL, NULL, handle, NULL,
									 MHD_OPTION_SOCK_ADDR, addr->ai_addr,
									 MHD_OPTION_CONNECTION_LIMIT, (unsigned int) METRICS_CONNECTION_LIMIT,
									 MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int) METRICS_PER_CLIENT_LIMIT,
									 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) METRICS_CONNECTION_TIMEOUT_S,
									 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) METRICS_REQUEST_MEMORY,
									 MHD_OPTION_NOTIFY_CONNECTION, client_notify, NULL,
									 MHD_OPTION_NOTIFY_COMPLETED, client_completed, NULL,
									 MHD_OPTION_END);
	freeaddrinfo(addr);
	if (daemon_handle == NULL)
	{
		log_error("cannot serve metrics on \"%s\" (is the port in use?)", listen_on);
		return false;
	}
	sweeping = true;
	if (pthread_create(&sweeper, NULL, client_sweep, NULL) != 0)
	{
		sweeping = false;
		log_error("cannot start the metrics listener's sweeper thread");
		return false;
	}
	log_info("serving /metrics on %s", listen_on);
	return true;
}

void
metrics_stop(void)
{
	if (sweeping)
	{
		sweeping = false;
		pthread_join(sweeper, NULL);
	}
	if (daemon_handle != NULL)
		MHD_stop_daemon(daemon_handle);
	daemon_handle = NULL;
}
