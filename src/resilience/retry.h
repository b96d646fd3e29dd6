/*-------------------------------------------------------------------------
 *
 * retry.h
 *		Retry with backoff: infra.backoff_delay, infra.retry and
 *		infra.retry_transaction.
 *
 * The module is reached only through its SQL functions; these are its
 * types.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_RETRY_H
#define INFRA_RETRY_H

#include "core/sqlstate.h"

typedef enum BackoffStrategy
{
	BACKOFF_NONE,
	BACKOFF_EXPONENTIAL,
	BACKOFF_FULL_JITTER,
	BACKOFF_EQUAL_JITTER,
	BACKOFF_DECORRELATED
} BackoffStrategy;

/* One row of infra.retry_policies, as this backend caches it. */
typedef struct RetryPolicy
{
	char		name[NAMEDATALEN];	/* cache key, must be first */
	int32		max_attempts;
	int64		base_us;
	int64		cap_us;
	BackoffStrategy strategy;
	SqlstateList retry_on;
} RetryPolicy;

#endif							/* INFRA_RETRY_H */
