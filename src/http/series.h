/*-------------------------------------------------------------------------
 *
 * series.h
 *		The http workers' counters and their /metrics series (series.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_HTTP_SERIES_H
#define INFRA_HTTP_SERIES_H

#include "utils/timestamp.h"

typedef enum HttpResult
{
	HTTP_RESULT_DELIVERED = 0,
	HTTP_RESULT_FAILED,
	HTTP_RESULT_THROTTLED,
	HTTP_RESULT_REFUSED,
	HTTP_RESULTS
} HttpResult;

extern int	HttpStatsSlot(const char *database, const char *endpoint);
extern void HttpStatsAttempt(int slot, HttpResult result, double seconds);
extern void HttpStatsDead(int slot);
extern void HttpStatsEnabled(int slot, bool enabled, bool counted);
extern void HttpStatsQueue(int slot, int64 in_flight, int64 queued, TimestampTz oldest);
extern void HttpStatsForget(void);
extern void HttpRecentAdd(int64 id, const char *endpoint, const char *url, const char *method,
						  TimestampTz created_at, int attempts, int status, int64 attempt_ms);
extern void HttpSeriesInit(void);

#endif							/* INFRA_HTTP_SERIES_H */
