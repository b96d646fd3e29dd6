/*-------------------------------------------------------------------------
 *
 * tracing.h
 *		W3C trace context of the session, and the correlation id.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_TRACING_H
#define INFRA_TRACING_H

/* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define TRACEPARENT_LEN 55

/* GUCs */
extern char *infra_traceparent_guc;
extern char *infra_correlation_id_guc;

extern bool TraceparentValid(const char *value, const char **why);

/* The session's traceparent or correlation id; NULL when there is none. */
extern const char *InfraTraceparent(void);
extern const char *InfraCorrelationId(void);

/*
 * Where the current span's traceparent comes from: spans.c registers it, so
 * that this bottom module names none above it.  Fills buf (TRACEPARENT_LEN
 * + 1 bytes) and returns true when a span is current.
 */
typedef bool (*TraceparentSource) (char *buf);

extern void TracingSetSpanSource(TraceparentSource source);


extern void InfraTracingInit(void);

#endif							/* INFRA_TRACING_H */
