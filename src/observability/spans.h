/*-------------------------------------------------------------------------
 *
 * spans.h
 *		Spans of this session and the shared ring the exporter drains.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_SPANS_H
#define INFRA_SPANS_H

#include "storage/latch.h"

/* A span's name, its attributes (OTLP JSON) and status message, in bytes. */
#define SPAN_NAME_LEN 128
#define SPAN_ATTRS_LEN 2048
#define SPAN_STATUS_LEN 128

/* GUCs */
extern double infra_trace_sample_rate;
extern int	infra_trace_buffer_spans;

/* A finished span waiting in the shared ring for the exporter. */
typedef struct SpanRecord
{
	uint8		trace_id[16];
	uint8		span_id[8];
	uint8		parent_id[8];
	bool		has_parent;
	uint8		kind;			/* OTLP SpanKind: 1 internal .. 5 consumer */
	uint8		status;			/* OTLP StatusCode: 0 unset, 1 ok, 2 error */
	int64		start_ns;		/* Unix epoch nanoseconds */
	int64		end_ns;
	char		name[SPAN_NAME_LEN];
	char		status_message[SPAN_STATUS_LEN];
	char		attributes[SPAN_ATTRS_LEN]; /* OTLP KeyValue objects, comma-separated */
} SpanRecord;

/* What one export attempt came to, for infra.trace_stats. */
typedef enum SpanExportOutcome
{
	SPAN_EXPORT_OK,
	SPAN_EXPORT_REJECTED,		/* the collector refused them: dropped */
	SPAN_EXPORT_FAILED			/* kept, to be retried */
} SpanExportOutcome;

extern void InfraSpansInit(void);
extern void SpansHex(const uint8 *bytes, int n, char *out);

/* The exporter's side of the ring. */
extern int	SpanRingPeek(SpanRecord *out, int max, int64 *oldest_end_ns);
extern void SpanRingConsume(int n, SpanExportOutcome outcome, const char *error);
extern void SpanRingSetExporter(Latch *latch, int wake_every);

#endif							/* INFRA_SPANS_H */
