/*-------------------------------------------------------------------------
 *
 * metricqueries.h
 *		Metrics from SQL: infra.metric_queries, run by the infra worker,
 *		served on /metrics.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_METRICQUERIES_H
#define INFRA_METRICQUERIES_H

extern void InfraMetricQueriesInit(void);

#endif							/* INFRA_METRICQUERIES_H */
