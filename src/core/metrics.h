/*-------------------------------------------------------------------------
 *
 * metrics.h
 *		The labelled metrics registry and the Prometheus text exposition.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_METRICS_H
#define INFRA_METRICS_H

#include "lib/stringinfo.h"

/* Longest metric name and rendered label set kept, in bytes. */
#define METRIC_NAME_LEN 128
#define METRIC_LABELS_LEN 256

/* GUCs */
extern int	infra_metrics_max_series;

/*
 * Writing the exposition.  A module's collector writes one family header
 * and then that family's samples; labels are a rendered label set
 * (name="value",...) made with MetricsAppendLabel, or NULL.
 */
extern void MetricsWriteFamily(StringInfo out, const char *name,
							   const char *type, const char *help);
extern void MetricsWriteSample(StringInfo out, const char *name,
							   const char *labels, double value);
extern void MetricsAppendLabel(StringInfo labels, const char *name,
							   const char *value);
extern void MetricsWriteOne(StringInfo out, const char *name, const char *type,
							const char *help, double value);
extern char *MetricsExposition(void);

/*
 * Built-in series: each module registers a collector that writes its own
 * families (in _PG_init, while shared memory is being planned); the
 * exposition calls them in registration order.
 */
typedef void (*MetricsCollector) (StringInfo out);

extern void MetricsRegisterCollector(MetricsCollector collector);
extern bool MetricsFamilyExists(const char *name);

extern void InfraMetricsInit(void);

#endif							/* INFRA_METRICS_H */
