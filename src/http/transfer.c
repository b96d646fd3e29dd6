/*-------------------------------------------------------------------------
 *
 * transfer.c
 *		The http worker's libcurl: one multi handle, driven by an epoll set.
 *
 * libcurl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION) and when
 * its next timeout is (CURLMOPT_TIMERFUNCTION); the sockets go into one
 * epoll set, whose descriptor the worker waits on together with its latch,
 * so thousands of transfers cost one wait and an idle worker none.  A
 * transfer is added only when deliver.c has decided it may start now (its
 * endpoint's concurrency and rate allow it), so libcurl's timeouts, which
 * run from the moment a transfer is added, measure the request itself and
 * never a wait in a queue of ours.  Connections are kept alive and reused
 * (HTTP/2 streams multiplexed) by the multi handle's cache.
 *
 * Every transfer refuses proxies (an empty CURLOPT_PROXY overrides the
 * environment), speaks http and https only, follows no redirect, caps the
 * response it reads, and checks its addresses with guard.c: when a socket
 * is opened (every address a name resolves to) and before each request
 * (also on a reused connection, with the peer's address).  The callbacks
 * never raise an error: they record why and refuse.
 *
 * Lock rules: none; libcurl runs on the worker's thread only (its threaded
 * resolver calls nothing of ours).  Called by deliver.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/epoll.h>
#include <unistd.h>

#include "access/xlog.h"
#include "miscadmin.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "core/clock.h"
#include "core/infra.h"
#include "core/libcurl.h"
#include "http/http.h"
#include "http/request.h"
#include "http/transfer.h"

#define HTTP_EPOLL_EVENTS 256
/* Finished easy handles kept for the next transfers (curl_easy_reset). */
#define HTTP_SPARE_HANDLES 256

typedef struct HttpTransfer
{
	HttpRequest *request;
	void	   *owner;
	CURL	   *easy;
	struct curl_slist *headers;
	const HttpAllowList *allow;
	bool		host_allowed;
	size_t		received;
	size_t		cap;
	bool		too_large;
	char		refused[HTTP_ERROR_LEN];
	char		curl_error[CURL_ERROR_SIZE];
	int64		started_ns;
} HttpTransfer;

static CURLM *multi = NULL;
static int	epoll_fd = -1;
static int64 timer_at_ns = -1;	/* -1: libcurl wants no timeout */
static int	running = 0;
static MemoryContext transfer_cxt = NULL;
static CURL *spare[HTTP_SPARE_HANDLES];
static int	nspare = 0;

static int
HttpSocketCallback(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_REMOVE)
	{
		(void) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s, NULL);
		return 0;
	}
	ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
	if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0)
		(void) epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s, &ev);
	return 0;
}

static int
HttpTimerCallback(CURLM *m, long timeout_ms, void *userp)
{
	timer_at_ns = timeout_ms < 0 ? -1 : InfraMonotonicNs() + (int64) timeout_ms * 1000000;
	return 0;
}

/*
 * CURLOPT_OPENSOCKETFUNCTION: every address libcurl is about to connect to.
 */
static curl_socket_t
HttpOpenSocket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	HttpTransfer *t = clientp;

	if (!HttpAddressAllowed(t->allow, &address->addr, t->host_allowed,
							t->refused, sizeof(t->refused)))
		return CURL_SOCKET_BAD;
	return socket(address->family, address->socktype, address->protocol);
}

/*
 * CURLOPT_PREREQFUNCTION: the peer of the connection a request is about to
 * go out on, new or reused.
 */
static int
HttpPrereq(void *clientp, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
	HttpTransfer *t = clientp;

	if (!HttpAddressTextAllowed(t->allow, primary_ip, t->host_allowed,
								t->refused, sizeof(t->refused)))
		return CURL_PREREQFUNC_ABORT;
	return CURL_PREREQFUNC_OK;
}

/* The response body is read and dropped, up to the endpoint's cap. */
static size_t
HttpWrite(char *data, size_t size, size_t nmemb, void *userp)
{
	HttpTransfer *t = userp;

	t->received += size * nmemb;
	if (t->received > t->cap)
	{
		t->too_large = true;
		return 0;
	}
	return size * nmemb;
}

void
HttpTransferInit(void)
{
	if (multi != NULL)
		return;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		elog(ERROR, "could not initialize libcurl");
	transfer_cxt = AllocSetContextCreate(TopMemoryContext, "infra http transfers",
										 ALLOCSET_DEFAULT_SIZES);
	epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (epoll_fd < 0)
		elog(ERROR, "could not create an epoll set: %m");
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "could not create a libcurl multi handle");
	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, HttpSocketCallback);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, HttpTimerCallback);
	curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long) CURLPIPE_MULTIPLEX);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) 1000);
}

pgsocket
HttpTransferSocket(void)
{
	return epoll_fd >= 0 ? epoll_fd : PGINVALID_SOCKET;
}

int
HttpTransfersRunning(void)
{
	return running;
}

/* Milliseconds until libcurl's timer (0: now), -1 when none. */
long
HttpTransferTimeout(void)
{
	int64		left;

	if (timer_at_ns < 0)
		return -1;
	left = timer_at_ns - InfraMonotonicNs();
	return left <= 0 ? 0 : (long) ((left + 999999) / 1000000);
}

/* "Name: value" for every string member of a JSON object. */
static struct curl_slist *
HttpAppendHeaders(struct curl_slist *list, Jsonb *headers)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *name = NULL;

	if (headers == NULL || !JB_ROOT_IS_OBJECT(headers))
		return list;
	it = JsonbIteratorInit(&headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			name = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE && name != NULL && v.type == jbvString &&
				 memchr(v.val.string.val, '\n', v.val.string.len) == NULL &&
				 memchr(v.val.string.val, '\r', v.val.string.len) == NULL)
		{
			char	   *line = psprintf("%s: %.*s", name, v.val.string.len, v.val.string.val);

			list = curl_slist_append(list, line);
			pfree(line);
		}
	}
	return list;
}

/*
 * The headers of one attempt: the endpoint's, the request's (which win:
 * libcurl sends the last of a name), and Standard Webhooks' three.
 */
static struct curl_slist *
HttpAttemptHeaders(HttpRequest *r, const HttpEndpointConf *conf)
{
	struct curl_slist *list = NULL;
	char		msg_id[96];
	int64		now_s = (int64) time(NULL);
	char	   *line;

	list = HttpAppendHeaders(list, conf->headers);
	list = HttpAppendHeaders(list, r->headers);
	snprintf(msg_id, sizeof(msg_id), "msg_" UINT64_FORMAT "_%u_%d_" INT64_FORMAT,
			 GetSystemIdentifier(), MyDatabaseId, r->timeline, r->id);
	line = psprintf("webhook-id: %s", msg_id);
	list = curl_slist_append(list, line);
	line = psprintf("webhook-timestamp: " INT64_FORMAT, now_s);
	list = curl_slist_append(list, line);
	if (conf->nsecrets > 0)
	{
		char	   *sig = HttpSignature((const char *const *) conf->secrets, conf->nsecrets,
										msg_id, now_s, r->has_body ? r->body : "",
										r->has_body ? r->bodylen : 0);

		if (sig != NULL)
			list = curl_slist_append(list, psprintf("webhook-signature: %s", sig));
	}
	/* No "100 Continue" round trip before a body. */
	list = curl_slist_append(list, "Expect:");
	return list;
}

/* The method and body of the request. */
static void
HttpSetMethod(CURL *e, HttpRequest *r)
{
	if (strcmp(r->method, "HEAD") == 0)
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	else if (r->has_body || strcmp(r->method, "POST") == 0)
	{
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) (r->has_body ? r->bodylen : 0));
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->has_body ? r->body : "");
		if (strcmp(r->method, "POST") != 0)
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
	}
	else if (strcmp(r->method, "GET") == 0)
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	else
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, r->method);
}

/*
 * Start one attempt of r to url now.  host_allowed: the URL's host is named
 * in the allow list.
 */
void
HttpTransferStart(HttpRequest *r, const HttpEndpointConf *conf, const char *url,
				  const HttpAllowList *allow, bool host_allowed, void *owner)
{
	MemoryContext old = MemoryContextSwitchTo(transfer_cxt);
	HttpTransfer *t = palloc0(sizeof(HttpTransfer));
	CURL	   *e = nspare > 0 ? spare[--nspare] : curl_easy_init();

	if (e == NULL)
		elog(ERROR, "could not create a libcurl handle");
	t->request = r;
	t->owner = owner;
	t->easy = e;
	t->allow = allow;
	t->host_allowed = host_allowed;
	t->cap = conf->max_response_bytes;
	t->started_ns = InfraMonotonicNs();
	MemoryContextSwitchTo(old);
	/* libcurl copies the lines; ours go with the caller's context. */
	t->headers = HttpAttemptHeaders(r, conf);

	curl_easy_setopt(e, CURLOPT_URL, url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, t);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->curl_error);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_PROXY, "");
	curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, HttpOpenSocket);
	curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, t);
	curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, HttpPrereq);
	curl_easy_setopt(e, CURLOPT_PREREQDATA, t);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, HttpWrite);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long) conf->timeout_ms);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long) conf->connect_timeout_ms);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, (long) conf->low_speed_seconds);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, INFRA_NAME "/" INFRA_VERSION);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
	HttpSetMethod(e, r);
	if (curl_multi_add_handle(multi, e) != CURLM_OK)
		elog(ERROR, "could not add a transfer to the libcurl multi handle");
}

/* A finished transfer's outcome to done, then its handle freed. */
static void
HttpTransferFinish(CURL *e, CURLcode result, HttpTransferDone done)
{
	HttpTransfer *t = NULL;
	HttpAttempt a;
	long		code = 0;
	curl_off_t	retry_after = 0;

	curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **) &t);
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_getinfo(e, CURLINFO_RETRY_AFTER, &retry_after);
	memset(&a, 0, sizeof(a));
	a.status = (int) code;
	a.retry_after_s = (int64) retry_after;
	a.elapsed_ms = (InfraMonotonicNs() - t->started_ns) / 1000000;
	a.refused = t->refused[0] != '\0';
	if (a.refused)
		strlcpy(a.error, t->refused, sizeof(a.error));
	else if (t->too_large)
		snprintf(a.error, sizeof(a.error), "response larger than %zu bytes: not read further", t->cap);
	else if (result != CURLE_OK)
		snprintf(a.error, sizeof(a.error), "%s", t->curl_error[0] ? t->curl_error : curl_easy_strerror(result));
	a.completed = result == CURLE_OK || (t->too_large && code > 0);
	curl_multi_remove_handle(multi, e);
	if (nspare < HTTP_SPARE_HANDLES)
	{
		/* Back to its defaults; the next transfer sets everything it needs. */
		curl_easy_reset(e);
		spare[nspare++] = e;
	}
	else
		curl_easy_cleanup(e);
	curl_slist_free_all(t->headers);
	done(t->request, t->owner, &a);
	pfree(t);
}

/*
 * Let libcurl act on every ready socket and an expired timer, and hand
 * each finished transfer to done.
 */
void
HttpTransferDrive(HttpTransferDone done)
{
	struct epoll_event events[HTTP_EPOLL_EVENTS];
	CURLMsg    *msg;
	int			left;
	int			n, i;

	do
	{
		n = epoll_wait(epoll_fd, events, HTTP_EPOLL_EVENTS, 0);
		for (i = 0; i < n; i++)
		{
			int			flags = 0;

			if (events[i].events & EPOLLIN)
				flags |= CURL_CSELECT_IN;
			if (events[i].events & EPOLLOUT)
				flags |= CURL_CSELECT_OUT;
			if (events[i].events & (EPOLLERR | EPOLLHUP))
				flags |= CURL_CSELECT_ERR;
			curl_multi_socket_action(multi, events[i].data.fd, flags, &running);
		}
	} while (n == HTTP_EPOLL_EVENTS);
	if (timer_at_ns >= 0 && timer_at_ns <= InfraMonotonicNs())
	{
		timer_at_ns = -1;
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
		if (msg->msg == CURLMSG_DONE)
			HttpTransferFinish(msg->easy_handle, msg->data.result, done);
}

void
HttpTransferShutdown(void)
{
	if (multi != NULL)
		curl_multi_cleanup(multi);
	multi = NULL;
	if (epoll_fd >= 0)
		close(epoll_fd);
	epoll_fd = -1;
}
