/*-------------------------------------------------------------------------
 *
 * logging.h
 *		infra.log() and the JSON rendering of every server log line.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_LOGGING_H
#define INFRA_LOGGING_H

/* GUCs */
extern bool infra_log_json;

extern void InfraLoggingInit(void);

#endif							/* INFRA_LOGGING_H */
