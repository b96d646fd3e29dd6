/*-------------------------------------------------------------------------
 *
 * request.h
 *		The http worker's requests and endpoints in memory (deliver.c keeps
 *		them, store.c reads and writes them).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_HTTP_REQUEST_H
#define INFRA_HTTP_REQUEST_H

#include "postgres.h"

#include "lib/ilist.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#define HTTP_ENDPOINT_NAME_LEN 64
#define HTTP_ERROR_LEN 256

/* An endpoint's settings, as infra.http_endpoints has them. */
typedef struct HttpEndpointConf
{
	char		name[HTTP_ENDPOINT_NAME_LEN];
	char	   *url;
	char	  **secrets;
	int			nsecrets;
	Jsonb	   *headers;
	int			timeout_ms;
	int			connect_timeout_ms;
	int			low_speed_seconds;
	int64	   *schedule_ms;
	int			nschedule;
	double		rate;			/* requests per second, 0: unlimited */
	int			concurrency;
	int			max_response_bytes;
	int64		disable_after_ms;
	bool		enabled;
	char	   *disabled_reason;
	TimestampTz failing_since;	/* 0: not failing */
	char	   *allow;			/* its allow list beyond infra.http_allow, or NULL */
} HttpEndpointConf;

/* What happens to a request after an attempt. */
typedef enum HttpFate
{
	HTTP_FATE_NONE = 0,			/* not tried yet */
	HTTP_FATE_DELIVERED,
	HTTP_FATE_RETRY,			/* to infra.http_retries, at next_attempt_at */
	HTTP_FATE_DEAD				/* to infra.http_dead_letters */
} HttpFate;

typedef struct HttpRequest
{
	dlist_node	node;			/* in its endpoint's queue, or a batch's list */
	int64		id;
	int32		timeline;
	int64		batch;			/* its row of http_outbox_batches, 0: from retries */
	char	   *endpoint;		/* NULL: url is absolute */
	char	   *url;			/* NULL: the endpoint's URL */
	char	   *method;
	Jsonb	   *headers;
	char	   *body;
	int			bodylen;
	bool		has_body;
	TimestampTz created_at;
	int			attempts;		/* made so far, this one included once tried */
	StringInfoData outcomes;	/* JSON array text, unbracketed; data NULL until an attempt fails */
	/* the outcome of the last attempt */
	HttpFate	fate;
	int			status;			/* HTTP status, 0: none */
	char		error[HTTP_ERROR_LEN];
	TimestampTz next_attempt_at;
	bool		in_table;		/* a row of http_retries exists */
	int			slot;			/* its endpoint's counters (series.c) */
} HttpRequest;

/* store.c */
typedef void (*HttpEndpointSink) (const HttpEndpointConf *conf, void *arg);
typedef void (*HttpRequestSink) (HttpRequest *request, void *arg);
typedef void (*HttpBatchSink) (int64 first_id, void *arg);

extern void HttpStoreEndpoints(HttpEndpointSink sink, void *arg);
extern int	HttpStoreBatches(int64 *skip, int nskip, int limit, MemoryContext cxt,
							 HttpRequestSink sink, HttpBatchSink empty, void *arg);
extern int	HttpStoreDueRetries(int64 *skip, int nskip, int limit, MemoryContext cxt,
								HttpRequestSink sink, void *arg);
extern TimestampTz HttpStoreNextDue(int64 *skip, int nskip);
extern void HttpStoreSettle(List *requests, int64 *batches, int nbatches, List *endpoints);

#endif							/* INFRA_HTTP_REQUEST_H */
