/*-------------------------------------------------------------------------
 *
 * tracing.c
 *		The session's W3C trace context and correlation id.
 *
 * An application passes its trace context into the database with
 * SET infra.traceparent = '00-<trace id>-<parent id>-<flags>' and its
 * correlation id with SET infra.correlation_id (or
 * infra.new_correlation_id()).  Both travel with what the session does in
 * infra: Kafka messages sent by kafka_send carry them as the headers
 * "traceparent" and "correlation_id".
 *
 * A traceparent is checked strictly (version 00, lowercase hex, ids not all
 * zero): one that fails is ignored with a warning, as the W3C recommendation
 * asks of a receiver, so that a bad header from a client never fails its
 * statement.  A correlation id is any 1 to 128 visible ASCII characters;
 * anything else is refused.
 *
 * A bottom module: kafka.c, logging.c and spans.c call it; it calls none of
 * them.  The current span, when there is one, comes from the source spans.c
 * registers (TracingSetSpanSource).  No shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "core/infra.h"
#include "core/tracing.h"
#include "core/version.h"

PG_FUNCTION_INFO_V1(infra_traceparent);
PG_FUNCTION_INFO_V1(infra_new_correlation_id);

#define CORRELATION_ID_MAX 128

char	   *infra_traceparent_guc = NULL;
char	   *infra_correlation_id_guc = NULL;

/* The current span's traceparent, from spans.c; NULL until it registers. */
static TraceparentSource span_source = NULL;

static bool TraceparentCheckHook(char **newval, void **extra, GucSource source);
static bool CorrelationIdCheckHook(char **newval, void **extra, GucSource source);

void
InfraTracingInit(void)
{
	DefineCustomStringVariable("infra.traceparent",
							   "W3C traceparent of the caller's trace (00-<trace id>-<parent id>-<flags>).",
							   "An invalid value is ignored with a warning.",
							   &infra_traceparent_guc,
							   "",
							   PGC_USERSET, 0,
							   TraceparentCheckHook, NULL, NULL);
	DefineCustomStringVariable("infra.correlation_id",
							   "Correlation id of the session's work: sent with Kafka messages, logs and spans.",
							   "1 to 128 visible ASCII characters.",
							   &infra_correlation_id_guc,
							   "",
							   PGC_USERSET, 0,
							   CorrelationIdCheckHook, NULL, NULL);
}

static bool
IsLowerHex(const char *s, int n, bool *all_zero)
{
	int			i;

	*all_zero = true;
	for (i = 0; i < n; i++)
	{
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
		if (s[i] != '0')
			*all_zero = false;
	}
	return true;
}

/*
 * A W3C traceparent of version 00; otherwise false and *why says which rule
 * failed.
 */
bool
TraceparentValid(const char *value, const char **why)
{
	bool		zero;

	if (strlen(value) != TRACEPARENT_LEN ||
		value[2] != '-' || value[35] != '-' || value[52] != '-')
	{
		*why = "it must be 00-<32 hex digits>-<16 hex digits>-<2 hex digits>";
		return false;
	}
	if (!IsLowerHex(value, 2, &zero) || !IsLowerHex(value + 3, 32, &zero) ||
		!IsLowerHex(value + 36, 16, &zero) || !IsLowerHex(value + 53, 2, &zero))
	{
		*why = "its fields must be lowercase hexadecimal";
		return false;
	}
	if (strncmp(value, "00", 2) != 0)
	{
		*why = "only version 00 is known";
		return false;
	}
	(void) IsLowerHex(value + 3, 32, &zero);
	if (zero)
	{
		*why = "the trace id must not be all zeros";
		return false;
	}
	(void) IsLowerHex(value + 36, 16, &zero);
	if (zero)
	{
		*why = "the parent id must not be all zeros";
		return false;
	}
	return true;
}

/*
 * check_hook of infra.traceparent: an invalid value becomes "" (no trace
 * context) with a warning; the SET itself succeeds.
 */
static bool
TraceparentCheckHook(char **newval, void **extra, GucSource source)
{
	const char *why;

	if (*newval == NULL || (*newval)[0] == '\0' || TraceparentValid(*newval, &why))
		return true;
	ereport(WARNING,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("ignoring invalid infra.traceparent \"%s\": %s", *newval, why),
			 errhint("Use the W3C form 00-<trace id>-<parent id>-<flags>, e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.")));
	InfraGucFree(*newval);
	*newval = InfraGucStrdup("");
	return *newval != NULL;
}

/*
 * check_hook of infra.correlation_id.
 */
static bool
CorrelationIdCheckHook(char **newval, void **extra, GucSource source)
{
	const char *p;

	if (*newval == NULL || (*newval)[0] == '\0')
		return true;
	if (strlen(*newval) > CORRELATION_ID_MAX)
	{
		GUC_check_errdetail("A correlation id has at most %d characters.", CORRELATION_ID_MAX);
		return false;
	}
	for (p = *newval; *p; p++)
		if (*p < 0x21 || *p > 0x7e)
		{
			GUC_check_errdetail("A correlation id has only visible ASCII characters (no spaces).");
			return false;
		}
	return true;
}

/*
 * Register where the current span comes from (spans.c, at load).
 */
void
TracingSetSpanSource(TraceparentSource source)
{
	span_source = source;
}

/*
 * The trace context to propagate: the current span's (the registered
 * source) or the session's infra.traceparent; NULL when there is none.
 */
const char *
InfraTraceparent(void)
{
	static char current[TRACEPARENT_LEN + 1];

	if (span_source != NULL && span_source(current))
		return current;
	return (infra_traceparent_guc && infra_traceparent_guc[0]) ? infra_traceparent_guc : NULL;
}

const char *
InfraCorrelationId(void)
{
	return (infra_correlation_id_guc && infra_correlation_id_guc[0]) ? infra_correlation_id_guc : NULL;
}

/*
 * infra.traceparent(): the trace context here (the current span, else the
 * session's), or NULL.
 */
Datum
infra_traceparent(PG_FUNCTION_ARGS)
{
	const char *tp = InfraTraceparent();

	INFRA_CHECK_SCHEMA();

	if (tp == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(tp));
}

/*
 * infra.new_correlation_id(): a random UUID (version 4), made the session's
 * infra.correlation_id (as SET would: a rolled-back transaction undoes it).
 */
Datum
infra_new_correlation_id(PG_FUNCTION_ARGS)
{
	uint8		b[16];
	char		id[37];

	INFRA_CHECK_SCHEMA();

	if (!pg_strong_random(b, sizeof(b)))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random correlation id")));
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(id, sizeof(id),
			 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
			 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
			 b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
	(void) set_config_option("infra.correlation_id", id, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SET, true, 0, false);
	PG_RETURN_TEXT_P(cstring_to_text(id));
}
