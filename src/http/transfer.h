/*-------------------------------------------------------------------------
 *
 * transfer.h
 *		The http worker's libcurl transfers (transfer.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_HTTP_TRANSFER_H
#define INFRA_HTTP_TRANSFER_H

#include "http/http.h"
#include "http/request.h"

/* How one attempt ended. */
typedef struct HttpAttempt
{
	bool		completed;		/* a response came (status set) */
	bool		refused;		/* an address refused: nothing was sent */
	int			status;
	int64		retry_after_s;
	int64		elapsed_ms;
	char		error[HTTP_ERROR_LEN];
} HttpAttempt;

typedef void (*HttpTransferDone) (HttpRequest *request, void *owner, const HttpAttempt *attempt);

extern void HttpTransferInit(void);
extern void HttpTransferShutdown(void);
extern pgsocket HttpTransferSocket(void);
extern int	HttpTransfersRunning(void);
extern long HttpTransferTimeout(void);
extern void HttpTransferStart(HttpRequest *r, const HttpEndpointConf *conf, const char *url,
							  const HttpAllowList *allow, bool host_allowed, void *owner);
extern void HttpTransferDrive(HttpTransferDone done);

#endif							/* INFRA_HTTP_TRANSFER_H */
