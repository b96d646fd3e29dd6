/*-------------------------------------------------------------------------
 *
 * querystats.h
 *		Per-statement query metrics (infra.query_metrics).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_QUERYSTATS_H
#define INFRA_QUERYSTATS_H

/* GUCs */
extern bool infra_query_metrics_on;
extern int	infra_query_metrics_max;

extern void InfraQueryStatsInit(void);

/* A statement's normalised text, for its span (spans.c). */
extern bool QueryStatsText(uint64 queryid, char *buf, int buflen);

#endif							/* INFRA_QUERYSTATS_H */
