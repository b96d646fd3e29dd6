/*-------------------------------------------------------------------------
 *
 * breaker.h
 *		Circuit breakers shared by the whole cluster.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_BREAKER_H
#define INFRA_BREAKER_H

/* Longest breaker name, in bytes, plus one. */
#define BREAKER_NAME_LEN 64

/* Largest sliding window: calls (count windows) or seconds (time windows). */
#define BREAKER_MAX_WINDOW 1000

/* Recent transitions kept for infra.circuit_breaker_events. */
#define BREAKER_EVENTS 256

/* Half-open permits one backend can hold at once. */
#define BREAKER_MAX_HELD_PERMITS 64

/* SQLSTATE raised by breaker_call() when the breaker rejects the call. */
#define ERRCODE_INFRA_BREAKER_OPEN MAKE_SQLSTATE('I','B','0','0','1')

/* GUC */
extern int	infra_breaker_max;

typedef enum BreakerStateKind
{
	BREAKER_CLOSED = 0,
	BREAKER_OPEN,
	BREAKER_HALF_OPEN,
	BREAKER_FORCED_OPEN,
	BREAKER_DISABLED,
	BREAKER_METRICS_ONLY
} BreakerStateKind;

extern bool InfraBreakerAllow(const char *name, int64 *probe_in_ns);
extern void InfraBreakerRecord(const char *name, bool failed);

extern void InfraBreakerInit(void);

#endif							/* INFRA_BREAKER_H */
