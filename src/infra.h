/*-------------------------------------------------------------------------
 *
 * infra.h
 *		Names shared by every module of the infra extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_H
#define INFRA_H

#include "compat.h"

/* Version of the SQL API and of the library; infra.control must agree. */
#define INFRA_VERSION "1.0"

/* Name used for GUC prefix, LWLock tranche and log messages. */
#define INFRA_NAME "infra"

/*
 * Module entry points called by _PG_init (the newer modules declare theirs
 * in their own headers).
 */
extern void InfraShmemInit(void);
extern void InfraWorkerInit(void);
extern void InfraRateLimitInit(void);
extern void InfraBreakerInit(void);
extern void InfraKafkaInit(void);
extern void InfraTracingInit(void);
extern void InfraMetricsInit(void);

#endif							/* INFRA_H */
