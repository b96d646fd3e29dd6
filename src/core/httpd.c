/*-------------------------------------------------------------------------
 *
 * httpd.c
 *		The metrics server: GET /metrics and GET /healthz over HTTP, served
 *		by a background worker with libmicrohttpd.
 *
 * Started by the postmaster when infra.metrics_listen names an address.
 * libmicrohttpd runs without threads of its own: the worker waits on its
 * latch and on libmicrohttpd's epoll descriptor together, and calls
 * MHD_run when there is something to do, so every request is answered in
 * the worker's own thread (PostgreSQL's APIs are not thread-safe).  The
 * exposition reads shared memory only; the worker connects to no database.
 *
 * Bounded against floods and slow clients: at most HTTPD_CONNECTION_LIMIT
 * connections, HTTPD_PER_CLIENT_LIMIT of them from one address, so that one
 * host cannot take every slot; a connection silent for
 * HTTPD_CONNECTION_TIMEOUT_S is closed, and so is one whose request is not
 * complete HTTPD_REQUEST_DEADLINE_S after it began (a client that drips a
 * byte a second is never silent, slowloris' trick): the worker keeps each
 * connection's start and shuts the socket of one past its deadline.
 *
 * Runs in its own background worker, started by the postmaster when
 * infra.metrics_listen is set; calls metrics.c and worker.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <microhttpd.h>
#include <netdb.h>
#include <sys/socket.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "core/httpd.h"
#include "core/infra.h"
#include "core/metrics.h"
#include "core/worker.h"

PGDLLEXPORT void InfraHttpdMain(Datum main_arg);

/*
 * The listener's bounds.  Connections served at once: enough that hundreds
 * of idle or slow clients leave room for real scrapes (epoll has no
 * FD_SETSIZE ceiling; the server's usual 1024 descriptors leave margin).
 * How long a connection may stay silent.  Memory for one request's line
 * and headers: a larger request gets 414 or 431 and is closed.
 */
#define HTTPD_CONNECTION_LIMIT 512
#define HTTPD_PER_CLIENT_LIMIT 32
#define HTTPD_CONNECTION_TIMEOUT_S 5
#define HTTPD_REQUEST_DEADLINE_S 5
#define HTTPD_REQUEST_MEMORY 16384

/* A connection, and since when its current request has been coming in. */
typedef struct HttpdClient
{
	struct MHD_Connection *connection;	/* NULL: a free slot */
	int			fd;
	TimestampTz since;
	bool		shut;
} HttpdClient;

static HttpdClient clients[HTTPD_CONNECTION_LIMIT + 16];

char	   *infra_metrics_listen = NULL;

static struct MHD_Daemon *daemon_handle = NULL;
static MemoryContext request_context = NULL;

static bool HttpdListenCheckHook(char **newval, void **extra, GucSource source);
static void HttpdNotifyConnection(void *cls, struct MHD_Connection *connection,
								  void **socket_context, enum MHD_ConnectionNotificationCode code);
static void HttpdRequestCompleted(void *cls, struct MHD_Connection *connection,
								  void **con_cls, enum MHD_RequestTerminationCode toe);
static bool HttpdSweep(void);
static bool HttpdSplitAddress(const char *value, char *host, size_t hostlen,
							  char *port, size_t portlen);
static enum MHD_Result HttpdHandle(void *cls, struct MHD_Connection *connection,
								   const char *url, const char *method,
								   const char *version, const char *upload_data,
								   size_t *upload_data_size, void **con_cls);
static enum MHD_Result HttpdRespond(struct MHD_Connection *connection, unsigned int status,
									const char *content_type, const char *body);
static void HttpdStop(int code, Datum arg);

/*
 * Define infra.metrics_listen and, when it is set, register the server.
 * Called by InfraMetricsInit while preloading.
 */
void
InfraHttpdInit(void)
{
	/* Like the metrics registry it serves: only when preloaded. */
	if (!process_shared_preload_libraries_in_progress)
		return;
	DefineCustomStringVariable("infra.metrics_listen",
							   "Address (host:port) where GET /metrics and GET /healthz are served; empty: off.",
							   "For example 127.0.0.1:9187.",
							   &infra_metrics_listen,
							   "",
							   PGC_POSTMASTER, 0,
							   HttpdListenCheckHook, NULL, NULL);
	if (infra_metrics_listen == NULL || infra_metrics_listen[0] == '\0')
		return;

	InfraRegisterWorker("InfraHttpdMain", "infra metrics server", "infra metrics server", false, 5, (Datum) 0);
}

/*
 * "host:port", "[v6 address]:port" or ":port" (every address).
 */
static bool
HttpdSplitAddress(const char *value, char *host, size_t hostlen, char *port, size_t portlen)
{
	const char *colon;
	const char *p;
	long		n;

	if (value[0] == '[')
	{
		const char *close = strchr(value, ']');

		if (close == NULL || close[1] != ':')
			return false;
		if ((size_t) (close - value - 1) >= hostlen)
			return false;
		memcpy(host, value + 1, close - value - 1);
		host[close - value - 1] = '\0';
		colon = close + 1;
	}
	else
	{
		colon = strrchr(value, ':');
		if (colon == NULL || (size_t) (colon - value) >= hostlen)
			return false;
		memcpy(host, value, colon - value);
		host[colon - value] = '\0';
	}
	p = colon + 1;
	if (*p == '\0' || strlen(p) >= portlen)
		return false;
	for (n = 0; *p; p++)
	{
		if (*p < '0' || *p > '9')
			return false;
		n = n * 10 + (*p - '0');
		if (n > 65535)
			return false;
	}
	if (n == 0)
		return false;
	strlcpy(port, colon + 1, portlen);
	return true;
}

/*
 * check_hook of infra.metrics_listen.
 */
static bool
HttpdListenCheckHook(char **newval, void **extra, GucSource source)
{
	char		host[256];
	char		port[8];

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (!HttpdSplitAddress(*newval, host, sizeof(host), port, sizeof(port)))
	{
		GUC_check_errmsg("invalid infra.metrics_listen \"%s\"", *newval);
		GUC_check_errdetail("Expected host:port, [IPv6 address]:port or :port, with a port from 1 to 65535.");
		GUC_check_errhint("For example: infra.metrics_listen = '127.0.0.1:9187'.");
		return false;
	}
	return true;
}

/*
 * The server's main loop.
 */
void
InfraHttpdMain(Datum main_arg)
{
	char		host[256];
	char		port[8];
	struct addrinfo hints;
	struct addrinfo *addr = NULL;
	int			rc;
	const union MHD_DaemonInfo *info;
	int			epoll_fd;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	if (!HttpdSplitAddress(infra_metrics_listen, host, sizeof(host), port, sizeof(port)))
		elog(ERROR, "invalid infra.metrics_listen \"%s\"", infra_metrics_listen);
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &addr);
	if (rc != 0)
		ereport(ERROR,
				(errmsg("infra metrics server could not resolve \"%s\": %s",
						infra_metrics_listen, gai_strerror(rc)),
				 errhint("Set infra.metrics_listen to an address of this machine.")));

	daemon_handle = MHD_start_daemon(MHD_USE_EPOLL |
									 (addr->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0),
									 0, NULL, NULL, HttpdHandle, NULL,
									 MHD_OPTION_SOCK_ADDR, addr->ai_addr,
									 MHD_OPTION_CONNECTION_LIMIT, (unsigned int) HTTPD_CONNECTION_LIMIT,
									 MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int) HTTPD_PER_CLIENT_LIMIT,
									 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) HTTPD_CONNECTION_TIMEOUT_S,
									 MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) HTTPD_REQUEST_MEMORY,
									 MHD_OPTION_NOTIFY_CONNECTION, HttpdNotifyConnection, NULL,
									 MHD_OPTION_NOTIFY_COMPLETED, HttpdRequestCompleted, NULL,
									 MHD_OPTION_END);
	freeaddrinfo(addr);
	if (daemon_handle == NULL)
		ereport(ERROR,
				(errmsg("infra metrics server could not listen on \"%s\"", infra_metrics_listen),
				 errhint("Another process may use that port; change infra.metrics_listen.")));
	on_proc_exit(HttpdStop, (Datum) 0);
	info = MHD_get_daemon_info(daemon_handle, MHD_DAEMON_INFO_EPOLL_FD);
	epoll_fd = info->epoll_fd;
	request_context = AllocSetContextCreate(TopMemoryContext, "infra metrics request",
											ALLOCSET_DEFAULT_SIZES);
	ereport(LOG,
			(errmsg("infra metrics server listening on %s", infra_metrics_listen)));

	while (!ShutdownRequestPending)
	{
		MHD_UNSIGNED_LONG_LONG mhd_timeout;
		long		timeout = -1;
		int			events = WL_LATCH_SET | WL_SOCKET_READABLE | WL_EXIT_ON_PM_DEATH;

		if (MHD_get_timeout(daemon_handle, &mhd_timeout) == MHD_YES)
		{
			timeout = (long) Min(mhd_timeout, (MHD_UNSIGNED_LONG_LONG) 60000);
			events |= WL_TIMEOUT;
		}
		/* Connections open: look at their deadlines every second. */
		if (HttpdSweep())
		{
			timeout = timeout < 0 ? 1000 : Min(timeout, 1000);
			events |= WL_TIMEOUT;
		}
		(void) WaitLatchOrSocket(MyLatch, events, epoll_fd, timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		MHD_run(daemon_handle);
		MemoryContextReset(request_context);
	}
	proc_exit(0);
}

/*
 * A connection opened (kept, with its start) or closed (forgotten).
 */
static void
HttpdNotifyConnection(void *cls, struct MHD_Connection *connection,
					  void **socket_context, enum MHD_ConnectionNotificationCode code)
{
	int			i;

	for (i = 0; i < lengthof(clients); i++)
	{
		if (code == MHD_CONNECTION_NOTIFY_STARTED && clients[i].connection == NULL)
		{
			const union MHD_ConnectionInfo *info =
				MHD_get_connection_info(connection, MHD_CONNECTION_INFO_CONNECTION_FD);

			clients[i].connection = connection;
			clients[i].fd = info != NULL ? info->connect_fd : -1;
			clients[i].since = GetCurrentTimestamp();
			clients[i].shut = false;
			return;
		}
		if (code == MHD_CONNECTION_NOTIFY_CLOSED && clients[i].connection == connection)
		{
			clients[i].connection = NULL;
			return;
		}
	}
}

/*
 * A request answered: the connection's next one has its own deadline.
 */
static void
HttpdRequestCompleted(void *cls, struct MHD_Connection *connection,
					  void **con_cls, enum MHD_RequestTerminationCode toe)
{
	int			i;

	for (i = 0; i < lengthof(clients); i++)
		if (clients[i].connection == connection)
			clients[i].since = GetCurrentTimestamp();
}

/*
 * Shut the socket of every connection whose request is past its deadline
 * (libmicrohttpd then reads its end and closes it).  True while any
 * connection is open.
 */
static bool
HttpdSweep(void)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		open = false;
	int			i;

	for (i = 0; i < lengthof(clients); i++)
	{
		if (clients[i].connection == NULL)
			continue;
		open = true;
		if (!clients[i].shut && clients[i].fd >= 0 &&
			TimestampDifferenceExceeds(clients[i].since, now, HTTPD_REQUEST_DEADLINE_S * 1000))
		{
			(void) shutdown(clients[i].fd, SHUT_RDWR);
			clients[i].shut = true;
		}
	}
	return open;
}

/*
 * libmicrohttpd's request handler, called from MHD_run in the worker.  An
 * error while rendering is caught here: it must not unwind through
 * libmicrohttpd.
 */
static enum MHD_Result
HttpdHandle(void *cls, struct MHD_Connection *connection, const char *url,
			const char *method, const char *version, const char *upload_data,
			size_t *upload_data_size, void **con_cls)
{
	MemoryContext old;
	enum MHD_Result result;

	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return HttpdRespond(connection, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain; charset=utf-8",
							"only GET and HEAD are served\n");

	old = MemoryContextSwitchTo(request_context);
	if (strcmp(url, "/metrics") == 0)
	{
		char	   *body = NULL;

		PG_TRY();
		{
			body = MetricsExposition();
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(request_context);
			EmitErrorReport();
			FlushErrorState();
			body = NULL;
		}
		PG_END_TRY();
		if (body != NULL)
			result = HttpdRespond(connection, MHD_HTTP_OK,
								  "text/plain; version=0.0.4; charset=utf-8", body);
		else
			result = HttpdRespond(connection, MHD_HTTP_INTERNAL_SERVER_ERROR,
								  "text/plain; charset=utf-8",
								  "could not render the metrics; see the server log\n");
	}
	else if (strcmp(url, "/healthz/primary") == 0 || strcmp(url, "/healthz/standby") == 0)
	{
		/* For a load balancer: 200 only on a node of that role. */
		bool		standby = RecoveryInProgress();
		bool		wanted = strcmp(url, "/healthz/standby") == 0;

		result = HttpdRespond(connection, standby == wanted ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
							  "text/plain; charset=utf-8", standby ? "standby\n" : "primary\n");
	}
	else if (strcmp(url, "/healthz") == 0)
	{
		StringInfoData why;

		initStringInfo(&why);
		if (InfraWorkersHealthy(&why))
			result = HttpdRespond(connection, MHD_HTTP_OK, "text/plain; charset=utf-8", "ok\n");
		else
			result = HttpdRespond(connection, MHD_HTTP_SERVICE_UNAVAILABLE,
								  "text/plain; charset=utf-8", why.data);
	}
	else
		result = HttpdRespond(connection, MHD_HTTP_NOT_FOUND, "text/plain; charset=utf-8",
							  "not found: try /metrics, /healthz, /healthz/primary or /healthz/standby\n");
	MemoryContextSwitchTo(old);
	return result;
}

/*
 * Queue a response; libmicrohttpd copies the body.
 */
static enum MHD_Result
HttpdRespond(struct MHD_Connection *connection, unsigned int status,
			 const char *content_type, const char *body)
{
	struct MHD_Response *response;
	enum MHD_Result result;

	response = MHD_create_response_from_buffer(strlen(body), (void *) body,
											   MHD_RESPMEM_MUST_COPY);
	if (response == NULL)
		return MHD_NO;
	MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	result = MHD_queue_response(connection, status, response);
	MHD_destroy_response(response);
	return result;
}

/*
 * Close the listening socket and open connections at exit.
 */
static void
HttpdStop(int code, Datum arg)
{
	if (daemon_handle != NULL)
		MHD_stop_daemon(daemon_handle);
	daemon_handle = NULL;
}
