/*-------------------------------------------------------------------------
 *
 * otlp.h
 *		The trace exporter: spans to an OTLP/HTTP collector.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_OTLP_H
#define INFRA_OTLP_H

/* GUCs */
extern char *infra_otlp_endpoint;
extern int	infra_otlp_batch_size;

extern void InfraOtlpInit(void);

#endif							/* INFRA_OTLP_H */
