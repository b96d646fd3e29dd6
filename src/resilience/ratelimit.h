/*-------------------------------------------------------------------------
 *
 * ratelimit.h
 *		Cluster-wide rate limits (GCRA) in shared memory.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_RATELIMIT_H
#define INFRA_RATELIMIT_H

/* Longest key, in bytes, plus one. */
#define RATE_LIMIT_KEY_LEN 128

/* Partitions of the key table, each with its own LWLock; a power of 2. */
#define RATE_LIMIT_PARTITIONS 16

/* GUC */
extern int	infra_rate_limit_max_keys;

extern bool InfraRateLimitAllow(const char *name, int64 *retry_in_ns);

extern void InfraRateLimitInit(void);

#endif							/* INFRA_RATELIMIT_H */
