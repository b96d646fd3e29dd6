/*-------------------------------------------------------------------------
 *
 * clock.c
 *		infra-bridge: the monotonic clock its deadlines and durations use.
 *
 * The lowest file of the daemon: it calls nothing of the bridge's, so the
 * loop (consume.c), the freshness probe (fresh.c) and the listener
 * (metrics.c) can all read the same clock without calling each other.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <time.h>

#include "bridge.h"

/* Milliseconds of CLOCK_MONOTONIC, for deadlines and durations. */
int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
