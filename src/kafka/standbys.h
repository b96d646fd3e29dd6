/*-------------------------------------------------------------------------
 *
 * standbys.h
 *		Have the standbys infra.kafka_wait_for_standbys names flushed WAL
 *		past a position?
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_STANDBYS_H
#define INFRA_STANDBYS_H

#include "postgres.h"

#include "access/xlogdefs.h"
#include "lib/stringinfo.h"

/* The value that follows the server's synchronous_standby_names. */
#define STANDBYS_SYNCHRONOUS "synchronous_standby_names"

/* GUC */
extern char *infra_kafka_wait_for_standbys;

extern void InfraStandbysInit(void);
extern bool StandbysWaitWanted(void);
extern bool StandbysFlushed(XLogRecPtr lsn, StringInfo why);

#endif							/* INFRA_STANDBYS_H */
