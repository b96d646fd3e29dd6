/*-------------------------------------------------------------------------
 *
 * logging.c
 *		Structured logs: infra.log() writes one JSON object per line, and
 *		infra.log_json renders every server log line as JSON, both with the
 *		session's correlation id and trace context.
 *
 * infra.log(level, message, context) reports its JSON object at the level
 * asked, so log_min_messages and client_min_messages apply as to any other
 * message.
 *
 * With infra.log_json on, a chained emit_log_hook writes the JSON line
 * itself where PostgreSQL would write the plain stderr line (through the
 * logging collector's chunk protocol when it runs, so long lines are not
 * torn) and stops PostgreSQL's own output of that message; csvlog and
 * jsonlog still receive it, written as PostgreSQL would.  When syslog or
 * eventlog is a destination too, the message is left to PostgreSQL
 * untouched: those cannot be written from outside elog.c.  Hooks installed
 * before infra's run first and see the message as it was.
 *
 * Called by PostgreSQL's error reporting (emit_log_hook) in every
 * process, and by SQL (infra.log).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "fmgr.h"
/*
 * Only Port's database and user names are read.  Its layout is the same
 * with or without GSSAPI (PostgreSQL keeps the pointer either way), so the
 * GSSAPI headers, which libpq-be.h would want, are not needed.
 */
#undef ENABLE_GSS
#include "libpq/libpq-be.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "postmaster/syslogger.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "core/infra.h"
#include "core/logging.h"
#include "core/tracing.h"
#include "core/version.h"

PG_FUNCTION_INFO_V1(infra_log);

bool		infra_log_json = false;

/* Set while infra.log() reports: its message is a JSON object already. */
static bool in_infra_log = false;

static emit_log_hook_type prev_emit_log_hook = NULL;

static void LogEmit(ErrorData *edata);
static const char *LogNow(void);
static void LogAppendCommon(StringInfo buf);
static void LogAppendField(StringInfo buf, const char *key, const char *value);
static void LogWriteLine(const char *line, int len);
static bool LogIsStandardField(const char *key);

/* Fields infra.log() writes itself. */
static const char *const standard_fields[] = {
	"ts", "level", "message", "correlation_id", "trace_id", "span_id",
	"database", "user", "application", "pid", "backend_type"
};

/* Levels infra.log() accepts, with what they map to. */
static const struct
{
	const char *name;
	int			elevel;
}			log_levels[] = {
	{"debug5", DEBUG5}, {"debug4", DEBUG4}, {"debug3", DEBUG3}, {"debug2", DEBUG2},
	{"debug1", DEBUG1}, {"debug", DEBUG2}, {"log", LOG}, {"info", INFO},
	{"notice", NOTICE}, {"warning", WARNING},
};

/*
 * Define infra.log_json and chain the emit_log_hook.
 */
void
InfraLoggingInit(void)
{
	DefineCustomBoolVariable("infra.log_json",
							 "Write every server log line to stderr as a JSON object, with correlation and trace ids.",
							 "csvlog and jsonlog are still written; with syslog or eventlog as a destination lines are left as they are.",
							 &infra_log_json,
							 false,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_emit_log_hook = emit_log_hook;
	emit_log_hook = LogEmit;
}

/*
 * infra.log(level, message, context): one JSON line in the server log.
 */
Datum
infra_log(PG_FUNCTION_ARGS)
{
	char	   *level;
	int			elevel = -1;
	StringInfoData buf;
	int			i;

	INFRA_CHECK_SCHEMA();

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("log level and message must not be null")));
	level = text_to_cstring(PG_GETARG_TEXT_PP(0));
	for (i = 0; i < lengthof(log_levels); i++)
		if (pg_strcasecmp(level, log_levels[i].name) == 0)
		{
			elevel = log_levels[i].elevel;
			level = unconstify(char *, log_levels[i].name);
			break;
		}
	if (elevel < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown log level \"%s\"", level),
				 errhint("Use one of debug5 to debug1, debug, log, info, notice or warning; to fail, raise an error instead.")));

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	LogAppendField(&buf, "ts", LogNow());
	LogAppendField(&buf, "level", level);
	LogAppendField(&buf, "message", text_to_cstring(PG_GETARG_TEXT_PP(1)));
	LogAppendCommon(&buf);
	if (!PG_ARGISNULL(2))
	{
		Jsonb	   *context = PG_GETARG_JSONB_P(2);
		JsonbIterator *it;
		JsonbValue	v;
		JsonbIteratorToken tok;

		if (!JB_ROOT_IS_OBJECT(context))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("log context must be a JSON object"),
					 errhint("Pass context as '{\"key\": value}'.")));
		/* Context fields follow the standard ones, at the top level. */
		it = JsonbIteratorInit(&context->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			char	   *key;

			if (tok != WJB_KEY)
				continue;
			key = pnstrdup(v.val.string.val, v.val.string.len);
			tok = JsonbIteratorNext(&it, &v, true);
			appendStringInfoChar(&buf, ',');
			/* A key the line has already keeps its value under another name. */
			escape_json(&buf, LogIsStandardField(key) ? psprintf("context.%s", key) : key);
			appendStringInfoChar(&buf, ':');
			if (v.type == jbvBinary)
				(void) JsonbToCString(&buf, v.val.binary.data, v.val.binary.len);
			else
			{
				Jsonb	   *scalar = JsonbValueToJsonb(&v);

				(void) JsonbToCString(&buf, &scalar->root, VARSIZE(scalar));
			}
		}
	}
	appendStringInfoChar(&buf, '}');

	in_infra_log = true;
	PG_TRY();
	{
		ereport(elevel,
				(errmsg_internal("%s", buf.data),
				 errhidestmt(true),
				 errhidecontext(true)));
	}
	PG_FINALLY();
	{
		in_infra_log = false;
	}
	PG_END_TRY();
	PG_RETURN_VOID();
}

/*
 * Fields every infra log line has: the ids and who is speaking.  Absent
 * values are left out rather than written as null.
 */
static void
LogAppendCommon(StringInfo buf)
{
	const char *correlation_id = InfraCorrelationId();
	const char *traceparent = InfraTraceparent();

	if (correlation_id != NULL)
		LogAppendField(buf, "correlation_id", correlation_id);
	if (traceparent != NULL)
	{
		char		trace_id[33];
		char		span_id[17];

		/* 00-<32 hex trace id>-<16 hex span id>-<flags> */
		memcpy(trace_id, traceparent + 3, 32);
		trace_id[32] = '\0';
		memcpy(span_id, traceparent + 36, 16);
		span_id[16] = '\0';
		LogAppendField(buf, "trace_id", trace_id);
		LogAppendField(buf, "span_id", span_id);
	}
	if (MyProcPort != NULL)
	{
		if (MyProcPort->database_name != NULL)
			LogAppendField(buf, "database", MyProcPort->database_name);
		if (MyProcPort->user_name != NULL)
			LogAppendField(buf, "user", MyProcPort->user_name);
	}
	if (application_name != NULL && application_name[0] != '\0')
		LogAppendField(buf, "application", application_name);
	appendStringInfo(buf, ",\"pid\":%d", MyProcPid);
	/* The postmaster has no backend type of its own. */
	LogAppendField(buf, "backend_type",
				   MyBackendType == B_INVALID && !IsUnderPostmaster ? "postmaster" :
				   MyBackendType == B_BG_WORKER && MyBgworkerEntry != NULL ?
				   MyBgworkerEntry->bgw_type : GetBackendTypeDesc(MyBackendType));
}

static bool
LogIsStandardField(const char *key)
{
	int			i;

	for (i = 0; i < lengthof(standard_fields); i++)
		if (strcmp(key, standard_fields[i]) == 0)
			return true;
	return false;
}

/*
 * ,"key":"value" (no comma for the first field of the object).
 */
static void
LogAppendField(StringInfo buf, const char *key, const char *value)
{
	if (buf->len > 1)
		appendStringInfoChar(buf, ',');
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
	escape_json(buf, value);
}

/*
 * The time now, as PostgreSQL's log lines write it ("2026-11-30 01:02:03.456
 * UTC", in log_timezone).  Not get_formatted_log_time(): elog.c fills that
 * once per line it writes and an emit_log_hook runs before the line is
 * written, so it would give the previous line's time (in a new backend, the
 * postmaster's last line, inherited at fork), and infra.log() reports
 * outside any line.
 */
static const char *
LogNow(void)
{
	static char buf[64];
	struct timeval tv;
	pg_time_t	stamp;
	char		ms[8];

	gettimeofday(&tv, NULL);
	stamp = (pg_time_t) tv.tv_sec;
	pg_strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S     %Z",
				log_timezone ? pg_localtime(&stamp, log_timezone) : pg_gmtime(&stamp));
	/* Milliseconds go into the five spaces left after the seconds. */
	snprintf(ms, sizeof(ms), ".%03d", (int) (tv.tv_usec / 1000));
	memcpy(buf + 19, ms, 4);
	return buf;
}

/*
 * The emit_log_hook.  Runs in every process with ErrorContext current; it
 * must not report errors itself.
 */
static void
LogEmit(ErrorData *edata)
{
	StringInfoData buf;
	int			others = Log_destination & ~(LOG_DESTINATION_STDERR |
											 LOG_DESTINATION_CSVLOG |
											 LOG_DESTINATION_JSONLOG);

	if (prev_emit_log_hook)
		prev_emit_log_hook(edata);
	if (!infra_log_json || !edata->output_to_server ||
		!(Log_destination & LOG_DESTINATION_STDERR) || others != 0)
		return;

	initStringInfo(&buf);
	if (in_infra_log && edata->message != NULL)
		appendStringInfoString(&buf, edata->message);
	else
	{
		appendStringInfoChar(&buf, '{');
		LogAppendField(&buf, "ts", LogNow());
		{
			char	   *level = pstrdup(error_severity(edata->elevel));
			char	   *c;

			for (c = level; *c; c++)
				*c = pg_ascii_tolower((unsigned char) *c);
			LogAppendField(&buf, "level", level);
		}
		LogAppendField(&buf, "message", edata->message ? edata->message : "");
		if (edata->sqlerrcode != 0 && edata->elevel >= ERROR)
			LogAppendField(&buf, "sqlstate", unpack_sql_state(edata->sqlerrcode));
		if (edata->detail_log != NULL)
			LogAppendField(&buf, "detail", edata->detail_log);
		else if (edata->detail != NULL)
			LogAppendField(&buf, "detail", edata->detail);
		if (edata->hint != NULL)
			LogAppendField(&buf, "hint", edata->hint);
		if (edata->context != NULL && !edata->hide_ctx)
			LogAppendField(&buf, "context", edata->context);
		if (debug_query_string != NULL && !edata->hide_stmt && check_log_of_query(edata))
			LogAppendField(&buf, "statement", debug_query_string);
		LogAppendCommon(&buf);
		appendStringInfoChar(&buf, '}');
	}
	appendStringInfoChar(&buf, '\n');
	LogWriteLine(buf.data, buf.len);

	/* PostgreSQL writes nothing more of it: the other destinations here. */
	edata->output_to_server = false;
	if (Log_destination & LOG_DESTINATION_CSVLOG && (redirection_done || MyBackendType == B_LOGGER))
		write_csvlog(edata);
	if (Log_destination & LOG_DESTINATION_JSONLOG && (redirection_done || MyBackendType == B_LOGGER))
		write_jsonlog(edata);
	pfree(buf.data);
}

/*
 * Where PostgreSQL writes its stderr lines: the logging collector's pipe
 * in chunks (so concurrent long lines do not interleave), else stderr.
 */
static void
LogWriteLine(const char *line, int len)
{
	if (redirection_done && MyBackendType != B_LOGGER)
		write_pipe_chunks(unconstify(char *, line), len, LOG_DESTINATION_STDERR);
	else
	{
		ssize_t		rc pg_attribute_unused();

		rc = write(fileno(stderr), line, len);
	}
}
