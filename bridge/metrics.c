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
 *-------------------------------------------------------------------------
 */
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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
} LagFigure;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static RouteFigures routes[BRIDGE_MAX_ROUTES];
static int	nroutes = 0;
static long long batch_counts[NBUCKETS + 1];
static double batch_sum = 0;
static long long batch_total = 0;
static LagFigure lags[MAX_LAG_PARTITIONS];
static int	nlags = 0;
static bool db_up = false;
static struct MHD_Daemon *daemon_handle = NULL;

/*
 * The listener's bounds, the extension's own (src/httpd.c): connections at
 * once (epoll, so no FD_SETSIZE ceiling), seconds a silent connection may
 * stay, and memory for a request's line and headers (larger: 414 or 431).
 */
#define METRICS_CONNECTION_LIMIT 512
#define METRICS_CONNECTION_TIMEOUT_S 5
#define METRICS_REQUEST_MEMORY 16384

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
 * Lag of the assigned partitions: high watermark minus position.
 */
void
metrics_lag(rd_kafka_t *rk)
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
		next[n].lag = p->offset >= 0 ? high - p->offset : high - low;
		if (next[n].lag < 0)
			next[n].lag = 0;
		n++;
	}
	rd_kafka_topic_partition_list_destroy(assigned);
	pthread_mutex_lock(&lock);
	memcpy(lags, next, sizeof(LagFigure) * (size_t) n);
	nlags = n;
	pthread_mutex_unlock(&lock);
	free(next);
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
	buf_printf(&t, "# HELP infra_bridge_lag_messages Messages in the partition after the bridge's position.\n"
				"# TYPE infra_bridge_lag_messages gauge\n");
	for (r = 0; r < nlags; r++)
		buf_printf(&t, "infra_bridge_lag_messages{topic=\"%s\",partition=\"%d\"} %lld\n",
					label(lags[r].topic, l1, sizeof(l1)), lags[r].partition, lags[r].lag);
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
									 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) METRICS_CONNECTION_TIMEOUT_S,
									 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) METRICS_REQUEST_MEMORY,
									 MHD_OPTION_END);
	freeaddrinfo(addr);
	if (daemon_handle == NULL)
	{
		log_error("cannot serve metrics on \"%s\" (is the port in use?)", listen_on);
		return false;
	}
	log_info("serving /metrics on %s", listen_on);
	return true;
}

void
metrics_stop(void)
{
	if (daemon_handle != NULL)
		MHD_stop_daemon(daemon_handle);
	daemon_handle = NULL;
}
