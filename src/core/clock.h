/*-------------------------------------------------------------------------
 *
 * clock.h
 *		The monotonic clock infra's shared state is kept in.
 *
 * Rate limits and breakers measure time on CLOCK_MONOTONIC, in integer
 * nanoseconds: it is the same for every process of the machine and never
 * jumps with wall-clock changes, unlike now() or gettimeofday().
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_CLOCK_H
#define INFRA_CLOCK_H

#include <time.h>

#include "datatype/timestamp.h"
#include "utils/timestamp.h"

#define NS_PER_US INT64CONST(1000)
#define NS_PER_SEC INT64CONST(1000000000)

/*
 * Nanoseconds on the machine's monotonic clock.
 */
static inline int64
InfraMonotonicNs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64) ts.tv_sec * NS_PER_SEC + ts.tv_nsec;
}

/*
 * Wall-clock time of a moment given on the monotonic clock, for display.
 */
static inline TimestampTz
InfraMonotonicToTimestamp(int64 moment_ns, int64 now_ns, TimestampTz now)
{
	return now - (now_ns - moment_ns) / NS_PER_US;
}

/*
 * A duration in nanoseconds as an interval, rounded up to the microsecond
 * (so that "retry after" is never too early).
 */
static inline Interval *
InfraNsToInterval(int64 ns)
{
	Interval   *result = (Interval *) palloc0(sizeof(Interval));

	result->time = (ns + NS_PER_US - 1) / NS_PER_US;
	return result;
}

extern int64 InfraIntervalToNs(const Interval *span, const char *argname,
							   bool allow_zero);

#endif							/* INFRA_CLOCK_H */
