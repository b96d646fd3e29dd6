/*-------------------------------------------------------------------------
 *
 * http.h
 *		Transactional HTTP: http_send's outbox and the http worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_HTTP_H
#define INFRA_HTTP_H

#include "postgres.h"

#include <sys/socket.h>

/* Requests (or bytes of bodies) a transaction buffers before writing a row. */
#define HTTP_SEND_BUFFER 1000
#define HTTP_SEND_BUFFER_BYTES (8 * 1024 * 1024)

/* Longest method token, and the largest body http_send takes. */
#define HTTP_METHOD_MAX 32
#define HTTP_BODY_MAX (64 * 1024 * 1024)

/* GUCs */
extern char *infra_http_allow;
extern int	infra_http_max_requests;

/* guard.c: may a connection go to this address?  why says why not. */
typedef struct HttpAllowList HttpAllowList;
extern HttpAllowList *HttpAllowListParse(const char *value, char *why, size_t whylen);
extern bool HttpAllowedHost(const HttpAllowList *list, const char *host);
extern bool HttpAddressAllowed(const HttpAllowList *list, const struct sockaddr *sa,
							   bool host_allowed, char *why, size_t whylen);
extern bool HttpAddressTextAllowed(const HttpAllowList *list, const char *ip,
								   bool host_allowed, char *why, size_t whylen);

/* sign.c: Standard Webhooks */
extern bool HttpSecretValid(const char *secret);
extern void HttpSecretsInit(void);
extern char *HttpSignature(const char *const *secrets, int nsecrets, const char *msg_id,
						   int64 timestamp, const char *body, size_t bodylen);

/* deliver.c */
extern void HttpDeliverInit(void);

#endif							/* INFRA_HTTP_H */
