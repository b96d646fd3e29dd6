/*-------------------------------------------------------------------------
 *
 * metricqueries.c
 *		Metrics from SQL: the rows of infra.metric_queries are queries the
 *		metric-query worker of their database runs on schedule, their
 *		results served on /metrics as gauges and counters, so that one
 *		exporter is enough.
 *
 * The metric-query worker is a session of its own, apart from the delivery
 * worker's: a query that is slow, or changes its session, cannot reach
 * Kafka delivery.  Each enabled row runs every `interval`, in a read-only
 * transaction of its own with a statement timeout, as the role `run_as`
 * names, with SECURITY_RESTRICTED_OPERATION (no SET ROLE, no temporary
 * objects, no LISTEN, no cursor WITH HOLD) and infra's pinned search_path,
 * inside a GUC nest level: a setting it changes, even for the session, is
 * undone when it ends, and so are prepared statements it made.  A
 * session-level advisory lock cannot be left to the next query: it is
 * released and the query fails with an error saying so.  A row may name
 * only a role its author (the role that last wrote it, kept by a trigger)
 * may SET ROLE to (on PostgreSQL 16+ the SET option of the membership, not
 * membership alone), checked when the row is written and again before each
 * run, and a superuser only with allow_superuser and an author who is a
 * superuser at run time.  Every value column becomes the family <name>_<column>, the
 * label columns its labels; names, label names, duplicate label sets, the
 * number of series (infra.metric_query_max_series) and the size of the
 * result are checked before anything is served.  A query that fails
 * (bad SQL, a timeout, a column that is not a number, too many series)
 * serves nothing until it succeeds again, keeps its error in
 * infra.metric_query_status, and affects no other query nor the scrape.
 *
 * The results live in shared memory (MQ_SLOTS slots of MQ_TEXT_LEN bytes of
 * rendered exposition text, one per query and database), written by the
 * workers under the segment's LWLock and copied out by the metrics server,
 * which has no database connection.
 *
 * The worker sleeps without a timer while no query is enabled: a statement
 * trigger on the table moves a generation counter in shared memory at
 * commit and wakes it, and it reads the table again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "catalog/pg_type.h"
#include "commands/prepare.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "portability/instr_time.h"
#include "storage/lock.h"
#include "storage/lwlock.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "core/compat.h"
#include "core/infra.h"
#include "core/metrics.h"
#include "core/shmem.h"
#include "core/spicheck.h"
#include "core/version.h"
#include "core/worker.h"
#include "observability/metricqueries.h"

PG_FUNCTION_INFO_V1(infra_metric_queries_changed);
PG_FUNCTION_INFO_V1(infra_metric_queries_author);
PG_FUNCTION_INFO_V1(infra_metric_query_status);

#define MQ_SLOTS 32
#define MQ_TEXT_LEN 32768
#define MQ_NAME_LEN 64
#define MQ_ERROR_LEN 512

/* One query's latest outcome, and what it serves. */
typedef struct MQSlot
{
	Oid			database_oid;	/* InvalidOid: free */
	char		database[NAMEDATALEN];
	char		name[MQ_NAME_LEN];
	TimestampTz last_run_at;
	TimestampTz last_success_at;
	double		duration_ms;
	int64		series;
	int64		runs;
	int64		failures;
	char		error[MQ_ERROR_LEN];	/* "" after a success */
	int			len;			/* of text; 0: serves nothing */
	char		text[MQ_TEXT_LEN];
} MQSlot;

typedef struct MQShared
{
	LWLock	   *lock;
	pg_atomic_uint64 generation;	/* bumped by each commit that changed the table */
	MQSlot		slots[MQ_SLOTS];
} MQShared;

/* A row of infra.metric_queries, as the worker keeps it. */
typedef struct MQRow
{
	char		name[MQ_NAME_LEN];
	char	   *query;
	int64		interval_ms;
	int			timeout_ms;
	char	  **labels;
	int			nlabels;
	char	  **values;			/* gauges, then counters */
	int			ngauges;
	int			nvalues;
	char	   *help;
	Oid			run_as;			/* InvalidOid: the role is gone */
	char		run_as_name[NAMEDATALEN];
	bool		allow_superuser;
	Oid			author;			/* InvalidOid: the role is gone */
	TimestampTz next_run_at;
} MQRow;

int			infra_metric_query_max_series = 1000;

static MQShared *mq_shared = NULL;

/* The worker's copy of the enabled rows, read again when the table changes. */
static MemoryContext mq_context = NULL;
static MQRow *rows = NULL;
static int	nrows = 0;
static bool rows_read = false;
static uint64 rows_generation = 0;
static bool changed_in_xact = false;
static char mq_database[NAMEDATALEN];

static Size MQShmemSize(void);
static void MQShmemInit(void *segment, bool found, LWLockPadded *locks);
static long MQServe(void);
static void MQShutdown(void);
static void MQCollectMetrics(StringInfo out);
static void MQXactCallback(XactEvent event, void *arg);

/*
 * In _PG_init.
 */
void
InfraMetricQueriesInit(void)
{
	InfraShmemSegment seg = {
		.name = "infra metric queries",
		.size = MQShmemSize,
		.nlocks = 1,
		.init = MQShmemInit,
		.pointer = (void **) &mq_shared,
	};
	InfraWorkerService service = {
		.name = "metric queries",
		.kind = INFRA_WORKER_METRIC_QUERIES,
		.serve = MQServe,
		.shutdown = MQShutdown,
	};

	DefineCustomIntVariable("infra.metric_query_max_series",
							"Most series one row of infra.metric_queries may serve.",
							"A query returning more fails, serving nothing, with an error in infra.metric_query_status.",
							&infra_metric_query_max_series,
							1000, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	InfraShmemRegister(&seg);
	InfraWorkerRegisterService(&service);
	MetricsRegisterCollector(MQCollectMetrics);
	/*
	 * After the worker's own: called before it, so the generation has moved
	 * when the worker is woken.
	 */
	RegisterXactCallback(MQXactCallback, NULL);
}

/*
 * A commit that changed infra.metric_queries moves the generation before
 * the worker is woken (XactCallbacks run newest first, and the change is
 * visible by then); an abort forgets the change.
 */
static void
MQXactCallback(XactEvent event, void *arg)
{
	if (!changed_in_xact)
		return;
	if ((event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT) && mq_shared != NULL)
		pg_atomic_fetch_add_u64(&mq_shared->generation, 1);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		changed_in_xact = false;
}

static Size
MQShmemSize(void)
{
	return sizeof(MQShared);
}

static void
MQShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	MQShared   *shared = (MQShared *) segment;

	if (!found)
	{
		memset(shared, 0, sizeof(MQShared));
		pg_atomic_init_u64(&shared->generation, 0);
	}
	shared->lock = &locks[0].lock;
}

/* ---------------------------------------------------------------------------
 * Shared slots
 * ------------------------------------------------------------------------- */

/* The slot of (database, name), claimed when claim; NULL: none. Under lock. */
static MQSlot *
MQSlotFor(Oid database_oid, const char *name, bool claim)
{
	MQSlot	   *free_slot = NULL;
	int			i;

	for (i = 0; i < MQ_SLOTS; i++)
	{
		MQSlot	   *s = &mq_shared->slots[i];

		if (s->database_oid == database_oid && strcmp(s->name, name) == 0)
			return s;
		if (s->database_oid == InvalidOid && free_slot == NULL)
			free_slot = s;
	}
	if (!claim || free_slot == NULL)
		return NULL;
	memset(free_slot, 0, offsetof(MQSlot, text));
	free_slot->database_oid = database_oid;
	strlcpy(free_slot->name, name, sizeof(free_slot->name));
	return free_slot;
}

/* Free this database's slots whose query is no longer enabled. */
static void
MQFreeGone(void)
{
	int			i;
	int			r;

	LWLockAcquire(mq_shared->lock, LW_EXCLUSIVE);
	for (i = 0; i < MQ_SLOTS; i++)
	{
		MQSlot	   *s = &mq_shared->slots[i];
		bool		kept = false;

		if (s->database_oid != MyDatabaseId)
			continue;
		for (r = 0; r < nrows && !kept; r++)
			kept = strcmp(rows[r].name, s->name) == 0;
		if (!kept)
		{
			s->database_oid = InvalidOid;
			s->len = 0;
		}
	}
	LWLockRelease(mq_shared->lock);
}

/*
 * The next family a slot's exposition text declares, from p on: its name
 * into family; returns where to look for the one after, NULL when none.
 */
static const char *
MQNextFamily(const char *p, char *family, size_t size)
{
	const char *c = strstr(p, "# TYPE ");
	int			len;

	if (c == NULL)
		return NULL;
	c += 7;
	len = strcspn(c, " ");
	snprintf(family, size, "%.*s", Min(len, (int) size - 1), c);
	return c + len;
}

/* Does another slot serve the family "name"?  Under lock. */
static const MQSlot *
MQFamilyServedElsewhere(const MQSlot *mine, const char *family)
{
	char		needle[MQ_NAME_LEN * 2 + 16];
	int			i;

	snprintf(needle, sizeof(needle), "# TYPE %s ", family);
	for (i = 0; i < MQ_SLOTS; i++)
	{
		const MQSlot *s = &mq_shared->slots[i];

		if (s == mine || s->database_oid == InvalidOid || s->len == 0)
			continue;
		if (strstr(s->text, needle) != NULL)
			return s;
	}
	return NULL;
}

/* ---------------------------------------------------------------------------
 * Reading infra.metric_queries
 * ------------------------------------------------------------------------- */

/* A text[] datum as a palloc'd array of C strings. */
static char **
MQTextArray(Datum d, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	char	  **out;
	int			i;

	deconstruct_array(DatumGetArrayTypeP(d), TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, n);
	out = palloc(sizeof(char *) * (*n + 1));
	for (i = 0; i < *n; i++)
		out[i] = nulls[i] ? pstrdup("") : TextDatumGetCString(elems[i]);
	return out;
}

/*
 * The enabled rows, into the worker's own memory; a row whose interval is
 * unchanged keeps its schedule.
 */
static void
MQReadRows(void)
{
	static const Oid types[11] = {TEXTOID, TEXTOID, INT8OID, INT4OID, TEXTARRAYOID, TEXTARRAYOID,
	TEXTARRAYOID, TEXTOID, TEXTOID, BOOLOID, TEXTOID};
	MQRow	   *next;
	int			n;
	int			i;
	int			j;
	MemoryContext old;
	MemoryContext next_context;

	if (mq_context == NULL)
		mq_context = AllocSetContextCreate(TopMemoryContext, "infra metric queries", ALLOCSET_SMALL_SIZES);
	next_context = AllocSetContextCreate(TopMemoryContext, "infra metric queries", ALLOCSET_SMALL_SIZES);

	InfraWorkerSpiBegin();
	strlcpy(mq_database, get_database_name(MyDatabaseId), NAMEDATALEN);
	SpiCheckResult(SPI_execute("SELECT name, query,"
							   " (pg_catalog.date_part('epoch', \"interval\") OPERATOR(pg_catalog.*) 1000)::bigint,"
							   " (pg_catalog.date_part('epoch', timeout) OPERATOR(pg_catalog.*) 1000)::integer,"
							   " labels, gauges, counters, coalesce(help, ''), run_as::text,"
							   " allow_superuser, author::text"
							   " FROM infra.metric_queries WHERE enabled ORDER BY name",
							   true, 0),
				   SPI_OK_SELECT, "infra.metric_queries", 11, types);
	n = (int) SPI_processed;
	old = MemoryContextSwitchTo(next_context);
	next = palloc0(sizeof(MQRow) * (n + 1));
	for (i = 0; i < n; i++)
	{
		MQRow	   *r = &next[i];
		char	  **gauges;
		char	  **counters;
		int			ngauges;
		int			ncounters;
		char	   *role;

		strlcpy(r->name, TextDatumGetCString(SpiGetValue(i, 1, false, NULL, "infra.metric_queries")),
				sizeof(r->name));
		r->query = TextDatumGetCString(SpiGetValue(i, 2, false, NULL, "infra.metric_queries"));
		r->interval_ms = DatumGetInt64(SpiGetValue(i, 3, false, NULL, "infra.metric_queries"));
		r->timeout_ms = DatumGetInt32(SpiGetValue(i, 4, false, NULL, "infra.metric_queries"));
		r->labels = MQTextArray(SpiGetValue(i, 5, false, NULL, "infra.metric_queries"), &r->nlabels);
		gauges = MQTextArray(SpiGetValue(i, 6, false, NULL, "infra.metric_queries"), &ngauges);
		counters = MQTextArray(SpiGetValue(i, 7, false, NULL, "infra.metric_queries"), &ncounters);
		r->nvalues = ngauges + ncounters;
		r->ngauges = ngauges;
		r->values = palloc(sizeof(char *) * (r->nvalues + 1));
		for (j = 0; j < ngauges; j++)
			r->values[j] = gauges[j];
		for (j = 0; j < ncounters; j++)
			r->values[ngauges + j] = counters[j];
		r->help = TextDatumGetCString(SpiGetValue(i, 8, false, NULL, "infra.metric_queries"));
		role = TextDatumGetCString(SpiGetValue(i, 9, false, NULL, "infra.metric_queries"));
		strlcpy(r->run_as_name, role, sizeof(r->run_as_name));
		r->run_as = get_role_oid(role, true);
		r->allow_superuser = DatumGetBool(SpiGetValue(i, 10, false, NULL, "infra.metric_queries"));
		r->author = get_role_oid(TextDatumGetCString(SpiGetValue(i, 11, false, NULL, "infra.metric_queries")), true);
		r->next_run_at = 0;
		for (j = 0; j < nrows; j++)
			if (strcmp(rows[j].name, r->name) == 0 && rows[j].interval_ms == r->interval_ms)
				r->next_run_at = rows[j].next_run_at;
	}
	MemoryContextSwitchTo(old);
	InfraWorkerSpiEnd();

	MemoryContextDelete(mq_context);
	mq_context = next_context;
	rows = next;
	nrows = n;
	/* Only now: an error above leaves the table to be read again. */
	rows_read = true;
	MQFreeGone();
}

/* ---------------------------------------------------------------------------
 * Running one
 * ------------------------------------------------------------------------- */

/* Prometheus' rules for metric (colons too) and label names. */
static bool
MQNameValid(const char *name, bool metric)
{
	const char *c;

	if (*name == '\0' || (!metric && strncmp(name, "__", 2) == 0))
		return false;
	for (c = name; *c; c++)
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' ||
			  (metric && *c == ':') || (c > name && *c >= '0' && *c <= '9')))
			return false;
	return true;
}

/* A label value, escaped for the text format. */
static void
MQAppendEscaped(StringInfo out, const char *s)
{
	for (; *s; s++)
	{
		if (*s == '\\' || *s == '"')
			appendStringInfoChar(out, '\\');
		if (*s == '\n')
		{
			appendStringInfoString(out, "\\n");
			continue;
		}
		appendStringInfoChar(out, *s);
	}
}

static int
MQCompareStrings(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

static int
MQColumn(TupleDesc desc, const char *name)
{
	int			i;

	for (i = 0; i < desc->natts; i++)
		if (!TupleDescAttr(desc, i)->attisdropped && strcmp(NameStr(TupleDescAttr(desc, i)->attname), name) == 0)
			return i + 1;
	return 0;
}

/*
 * The columns of the query's result (in SPI_tuptable) that its labels name,
 * after checking the query's name, each label's name and the series limit.
 */
static int *
MQLabelColumns(const MQRow *r)
{
	TupleDesc	desc = SPI_tuptable->tupdesc;
	int		   *label_col = palloc(sizeof(int) * (r->nlabels + 1));
	int			l;

	if (!MQNameValid(r->name, true))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("metric query name \"%s\" is not a valid metric name prefix", r->name)));
	for (l = 0; l < r->nlabels; l++)
	{
		label_col[l] = MQColumn(desc, r->labels[l]);
		if (label_col[l] == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("label column \"%s\" is not in the query's result", r->labels[l])));
		if (!MQNameValid(r->labels[l], false))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_NAME),
					 errmsg("label column \"%s\" is not a valid label name", r->labels[l]),
					 errhint("Prometheus label names match [a-zA-Z_][a-zA-Z0-9_]* and do not start with \"__\"; rename it with AS.")));
	}
	if ((int64) SPI_processed * r->nvalues > infra_metric_query_max_series)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("metric query \"%s\" returned more series than infra.metric_query_max_series (%d)",
						r->name, infra_metric_query_max_series),
				 errhint("Aggregate in the query, or raise infra.metric_query_max_series.")));
	return label_col;
}

/*
 * Each result row's label set as exposition text (name="value",...); two
 * rows with the same labels are refused.
 */
static char **
MQLabelSets(const MQRow *r, const int *label_col)
{
	TupleDesc	desc = SPI_tuptable->tupdesc;
	uint64		n = SPI_processed;
	char	  **label_sets = palloc(sizeof(char *) * (n + 1));
	char	  **sorted = palloc(sizeof(char *) * (n + 1));
	uint64		i;
	int			l;

	for (i = 0; i < n; i++)
	{
		StringInfoData labels;

		initStringInfo(&labels);
		for (l = 0; l < r->nlabels; l++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[i], desc, label_col[l], &isnull);
			Oid			typoutput;
			bool		varlena;

			if (l > 0)
				appendStringInfoChar(&labels, ',');
			appendStringInfo(&labels, "%s=\"", r->labels[l]);
			if (!isnull)
			{
				getTypeOutputInfo(SPI_gettypeid(desc, label_col[l]), &typoutput, &varlena);
				MQAppendEscaped(&labels, OidOutputFunctionCall(typoutput, d));
			}
			appendStringInfoChar(&labels, '"');
		}
		label_sets[i] = labels.data;
	}
	memcpy(sorted, label_sets, sizeof(char *) * n);
	qsort(sorted, n, sizeof(char *), MQCompareStrings);
	for (i = 1; i < n; i++)
		if (strcmp(sorted[i - 1], sorted[i]) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_CARDINALITY_VIOLATION),
					 errmsg("metric query \"%s\" returned two rows with the same labels {%s}", r->name, sorted[i]),
					 errhint("Add a label column that tells them apart, or aggregate.")));
	pfree(sorted);
	return label_sets;
}

/*
 * The HELP and TYPE lines of family, the family of value column v.
 */
static void
MQFamilyHeader(const MQRow *r, int v, const char *family, StringInfo out)
{
	appendStringInfo(out, "# HELP %s ", family);
	if (r->help[0] != '\0')
	{
		const char *c;

		for (c = r->help; *c; c++)
		{
			if (*c == '\\')
				appendStringInfoString(out, "\\\\");
			else if (*c == '\n')
				appendStringInfoString(out, "\\n");
			else
				appendStringInfoChar(out, *c);
		}
		appendStringInfo(out, " (%s)\n", r->values[v]);
	}
	else
		appendStringInfo(out, "Column %s of infra.metric_queries \"%s\".\n", r->values[v], r->name);
	appendStringInfo(out, "# TYPE %s %s\n", family, v < r->ngauges ? "gauge" : "counter");
}

/*
 * The family of value column v: its header and one sample per row whose
 * value is not NULL (no sample rather than a false 0), counted in *series.
 */
static void
MQRenderFamily(const MQRow *r, int v, char **label_sets, StringInfo out, int64 *series)
{
	TupleDesc	desc = SPI_tuptable->tupdesc;
	int			col = MQColumn(desc, r->values[v]);
	Oid			type;
	Oid			typoutput;
	bool		varlena;
	char		family[MQ_NAME_LEN * 2 + 2];
	uint64		i;

	if (col == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("value column \"%s\" is not in the query's result", r->values[v])));
	type = SPI_gettypeid(desc, col);
	if (type != INT2OID && type != INT4OID && type != INT8OID && type != FLOAT4OID &&
		type != FLOAT8OID && type != NUMERICOID && type != OIDOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("value column \"%s\" is of type %s, not a number", r->values[v], format_type_be(type)),
				 errhint("Cast it, e.g. %s::bigint or extract(epoch FROM ...).", r->values[v])));
	snprintf(family, sizeof(family), "%s_%s", r->name, r->values[v]);
	if (!MQNameValid(family, true))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_NAME),
				 errmsg("\"%s\" is not a valid metric name", family),
				 errhint("Rename the column with AS: letters, digits, underscores.")));
	getTypeOutputInfo(type, &typoutput, &varlena);
	MQFamilyHeader(r, v, family, out);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[i], desc, col, &isnull);
		double		value;

		if (isnull)
			continue;
		value = strtod(OidOutputFunctionCall(typoutput, d), NULL);
		appendStringInfoString(out, family);
		if (r->nlabels > 0)
			appendStringInfo(out, "{%s}", label_sets[i]);
		if (isnan(value))
			appendStringInfoString(out, " NaN\n");
		else if (isinf(value))
			appendStringInfoString(out, value > 0 ? " +Inf\n" : " -Inf\n");
		else
			appendStringInfo(out, " %.17g\n", value);
		(*series)++;
	}
}

/*
 * The query's result (in SPI_tuptable) as exposition text: one family per
 * value column.  Errors (ereport) for anything that would not make a valid
 * exposition of at most MQ_TEXT_LEN bytes and the series limit.
 */
static void
MQRender(const MQRow *r, StringInfo out, int64 *series)
{
	char	  **label_sets = MQLabelSets(r, MQLabelColumns(r));
	int			v;

	*series = 0;
	for (v = 0; v < r->nvalues; v++)
		MQRenderFamily(r, v, label_sets, out, series);
	if (out->len >= MQ_TEXT_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("metric query \"%s\" made %d bytes of exposition, more than the %d kB a query may serve",
						r->name, out->len, MQ_TEXT_LEN / 1024),
				 errhint("Return fewer rows or shorter labels.")));
}

/*
 * May author have metric query "name" run as run_as?  Errors when not: the
 * rule SET ROLE applies (the SET option of a membership on 16+), and a
 * superuser run_as only with allow_superuser written by a superuser.  In a
 * transaction (the catalog is read); when the row is written and before
 * each run.
 */
static void
MQCheckRole(const char *name, Oid author, Oid run_as, const char *run_as_name,
			bool allow_superuser)
{
	if (!OidIsValid(run_as))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" (run_as) does not exist", run_as_name)));
	if (!OidIsValid(author))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the role that wrote metric query \"%s\" no longer exists", name),
				 errhint("Write the row again (UPDATE it) as a role that may run it.")));
	if (superuser_arg(run_as))
	{
		if (!allow_superuser || !superuser_arg(author))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("metric query \"%s\" would run as superuser \"%s\"", name, run_as_name),
					 errdetail("A query runs as a superuser only when its row says allow_superuser and the role that wrote it is a superuser."),
					 errhint("Name a role with just the privileges the query needs, such as pg_monitor.")));
	}
	else if (!superuser_arg(author) && !InfraRoleCanSet(author, run_as))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the role that wrote metric query \"%s\" may not SET ROLE to \"%s\" (run_as)", name, run_as_name),
				 errdetail("A metric query runs only as a role its author could become with SET ROLE: a member of it, with the SET option on PostgreSQL 16 and later."),
				 errhint("Name a role you may SET ROLE to, or have it granted WITH SET TRUE.")));
}

/*
 * Did the query leave a session-level advisory lock (the transaction's own
 * are gone at commit)?  Release every one; true if there was any.  Out of a
 * transaction, after the query's.
 */
static bool
MQReleaseSessionLocks(void)
{
	LockData   *locks = GetLockStatusData();
	bool		held = false;
	int			i;

	for (i = 0; i < locks->nelements && !held; i++)
		held = locks->locks[i].pid == MyProcPid &&
			locks->locks[i].locktag.locktag_type == LOCKTAG_ADVISORY;
	if (held)
		LockReleaseSession(USER_LOCKMETHOD);
	return held;
}

/*
 * In the row's transaction: run its query as run_as, read-only, under the
 * statement timeout and a GUC nest level, and render the result into out
 * (caller's memory).  Raises what goes wrong.
 */
static void
MQRunQuery(MQRow *r, StringInfo out, int64 *series, MemoryContext caller)
{
	Oid			save_user;
	int			save_sec;
	int			nest;
	int			ret;

	MQCheckRole(r->name, r->author, r->run_as, r->run_as_name, r->allow_superuser);
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	XactReadOnly = true;
	/* A setting it changes, even with SET SESSION, ends with it. */
	nest = NewGUCNestLevel();
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(r->run_as, save_sec | SECURITY_RESTRICTED_OPERATION | SECURITY_LOCAL_USERID_CHANGE);
	enable_timeout_after(STATEMENT_TIMEOUT, r->timeout_ms);

	/*
	 * Not SPI's read_only (its errors would speak of functions): the
	 * transaction is read-only.
	 */
	ret = SPI_execute(r->query, false, infra_metric_query_max_series + 1);
	/* A timeout that fired just as it returned is still this query's. */
	disable_timeout(STATEMENT_TIMEOUT, true);
	CHECK_FOR_INTERRUPTS();
	SetUserIdAndSecContext(save_user, save_sec);
	AtEOXact_GUC(false, nest);
	if (ret != SPI_OK_SELECT || SPI_tuptable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("metric query \"%s\" is not a query returning rows", r->name)));
	/* Render in the caller's memory: it outlives the transaction. */
	{
		MemoryContext spi = MemoryContextSwitchTo(caller);

		MQRender(r, out, series);
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	PopActiveSnapshot();
}

/*
 * Keep a run's outcome in the row's slot: what it serves, or its error
 * (also when a family it would serve is another's).
 */
static void
MQPublish(const MQRow *r, const StringInfo out, int64 series, char *error,
		  TimestampTz now, double duration_ms)
{
	MQSlot	   *slot;
	char		family[MQ_NAME_LEN * 2 + 2];
	const char *c = out->data;

	LWLockAcquire(mq_shared->lock, LW_EXCLUSIVE);
	slot = MQSlotFor(MyDatabaseId, r->name, true);
	if (slot == NULL)
	{
		LWLockRelease(mq_shared->lock);
		ereport(WARNING,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("metric query \"%s\" not served: all %d slots for metric queries are taken", r->name, MQ_SLOTS),
				 errhint("Disable queries you do not need (enabled = false).")));
		return;
	}
	/* Every family it serves must be its own. */
	while (error[0] == '\0' && (c = MQNextFamily(c, family, sizeof(family))) != NULL)
	{
		const MQSlot *clash = MQFamilyServedElsewhere(slot, family);

		if (clash == NULL && MetricsFamilyExists(family))
			snprintf(error, MQ_ERROR_LEN, "42710: metric \"%s\" is a series of infra's metrics registry", family);
		else if (clash != NULL)
			snprintf(error, MQ_ERROR_LEN, "42710: metric \"%s\" is already served by metric query \"%s\" of database \"%s\"",
					 family, clash->name, clash->database);
	}
	strlcpy(slot->database, mq_database, NAMEDATALEN);
	slot->last_run_at = now;
	slot->duration_ms = duration_ms;
	slot->runs++;
	if (error[0] == '\0')
	{
		slot->last_success_at = now;
		slot->series = series;
		slot->error[0] = '\0';
		memcpy(slot->text, out->data, out->len + 1);
		slot->len = out->len;
	}
	else
	{
		slot->failures++;
		slot->series = 0;
		strlcpy(slot->error, error, sizeof(slot->error));
		slot->len = 0;
		slot->text[0] = '\0';
	}
	LWLockRelease(mq_shared->lock);
}

/*
 * Run one row's query and publish what it serves (or its error).  Never
 * raises: an error is kept in the row's slot.  Nothing the query did stays
 * in this session: its settings are undone (a GUC nest level), prepared
 * statements dropped, a session-level advisory lock released and the run
 * failed for it.
 */
static void
MQRun(MQRow *r)
{
	MemoryContext caller = CurrentMemoryContext;
	instr_time	start;
	instr_time	took;
	StringInfoData out;
	int64		series = 0;
	char		error[MQ_ERROR_LEN] = "";
	Oid			save_user;
	int			save_sec;
	TimestampTz now = GetCurrentTimestamp();

	INSTR_TIME_SET_CURRENT(start);
	initStringInfo(&out);
	GetUserIdAndSecContext(&save_user, &save_sec);
	StartTransactionCommand();
	PG_TRY();
	{
		MQRunQuery(r, &out, &series, caller);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		disable_timeout(STATEMENT_TIMEOUT, false);
		SetUserIdAndSecContext(save_user, save_sec);
		MemoryContextSwitchTo(caller);
		edata = CopyErrorData();
		FlushErrorState();
		snprintf(error, sizeof(error), "%s: %s", unpack_sql_state(edata->sqlerrcode), edata->message);
		FreeErrorData(edata);
		AbortCurrentTransaction();
		MemoryContextSwitchTo(caller);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(caller);
	DropAllPreparedStatements();
	if (MQReleaseSessionLocks() && error[0] == '\0')
		snprintf(error, sizeof(error),
				 "0A000: metric query \"%s\" took a session-level advisory lock (released); use pg_advisory_xact_lock, which ends with the query",
				 r->name);
	INSTR_TIME_SET_CURRENT(took);
	INSTR_TIME_SUBTRACT(took, start);
	MQPublish(r, &out, series, error, now, INSTR_TIME_GET_MILLISEC(took));
	pfree(out.data);
}

/*
 * The worker's service: read the table when it changed, run what is due;
 * sleep until the next one is due (no timer when none is enabled).
 */
static long
MQServe(void)
{
	TimestampTz now;
	long		sleep_ms = -1;
	int			i;

	/* The generation first: a change while reading makes another read. */
	if (!rows_read || pg_atomic_read_u64(&mq_shared->generation) != rows_generation)
	{
		rows_generation = pg_atomic_read_u64(&mq_shared->generation);
		rows_read = false;
		MQReadRows();
	}
	now = GetCurrentTimestamp();
	for (i = 0; i < nrows; i++)
	{
		MQRow	   *r = &rows[i];
		long		due_ms;

		if (r->next_run_at <= now)
		{
			MQRun(r);
			now = GetCurrentTimestamp();
			r->next_run_at = TimestampTzPlusMilliseconds(now, r->interval_ms);
		}
		due_ms = (long) ((r->next_run_at - now) / 1000) + 1;
		if (sleep_ms < 0 || due_ms < sleep_ms)
			sleep_ms = due_ms;
	}
	return sleep_ms;
}

static void
MQShutdown(void)
{
	if (mq_shared == NULL || !OidIsValid(MyDatabaseId))
		return;
	nrows = 0;
	MQFreeGone();
}

/* ---------------------------------------------------------------------------
 * /metrics and SQL
 * ------------------------------------------------------------------------- */

/*
 * The served results (a family the registry has since taken is left out:
 * the exposition must not name it twice; so is every result of a database
 * whose worker no longer serves it), and per query whether its last run
 * succeeded.
 */
static void
MQCollectMetrics(StringInfo out)
{
	MQSlot	   *copy;
	int			i;

	if (mq_shared == NULL)
		return;
	copy = palloc(sizeof(MQSlot));
	MetricsWriteFamily(out, "infra_metric_query_success", "gauge",
					   "1 when the metric query's last run succeeded, 0 when it failed (infra.metric_query_status has the error).");
	for (i = 0; i < MQ_SLOTS; i++)
	{
		StringInfoData labels;
		char		family[MQ_NAME_LEN * 2 + 2];
		const char *c;
		bool		clash = false;

		/* The slot's fields, and of its text only what it holds. */
		LWLockAcquire(mq_shared->lock, LW_SHARED);
		memcpy(copy, &mq_shared->slots[i], offsetof(MQSlot, text));
		if (copy->database_oid != InvalidOid)
			memcpy(copy->text, mq_shared->slots[i].text, copy->len + 1);
		LWLockRelease(mq_shared->lock);
		/* A database whose worker stopped serving (DROP EXTENSION) shows nothing. */
		if (copy->database_oid == InvalidOid || copy->runs == 0 ||
			!InfraWorkerServing(copy->database_oid, INFRA_WORKER_METRIC_QUERIES))
			continue;
		initStringInfo(&labels);
		MetricsAppendLabel(&labels, "database", copy->database);
		MetricsAppendLabel(&labels, "name", copy->name);
		MetricsWriteSample(out, "infra_metric_query_success", labels.data, copy->error[0] == '\0');
		if (copy->len == 0)
			continue;
		for (c = copy->text; !clash && (c = MQNextFamily(c, family, sizeof(family))) != NULL;)
			clash = MetricsFamilyExists(family);
		if (!clash)
			appendBinaryStringInfo(out, copy->text, copy->len);
	}
	pfree(copy);
}

/*
 * Statement trigger on infra.metric_queries: when the change commits, the
 * generation moves and the worker of this database is woken to read the
 * table again.  The row trigger infra.metric_queries_author() keeps who
 * wrote each row.
 */
Datum
infra_metric_queries_changed(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();
	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("infra.metric_queries_changed() must be called as a trigger")));
	changed_in_xact = true;
	InfraWorkerWakeAtCommit(INFRA_WORKER_METRIC_QUERIES);
	return PointerGetDatum(NULL);
}

/*
 * Row trigger on infra.metric_queries (BEFORE INSERT OR UPDATE): author
 * becomes the role writing the row, and that role must be one the row may
 * run as (MQCheckRole), so a row naming a role its writer may not become is
 * refused as it is written.  A superuser's write keeps the author the row
 * gives (pg_restore, or a superuser enabling another role's row, does not
 * make the row a superuser's).
 */
Datum
infra_metric_queries_author(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	HeapTuple	tuple;
	int			cols[4];
	bool		isnull;
	Datum		d;
	Oid			author;
	char	   *run_as = "";

	INFRA_CHECK_SCHEMA();
	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) || TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("infra.metric_queries_author() must be called as a BEFORE INSERT OR UPDATE row trigger")));
	desc = trigdata->tg_relation->rd_att;
	tuple = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? trigdata->tg_newtuple : trigdata->tg_trigtuple;
	cols[0] = SPI_fnumber(desc, "author");
	cols[1] = SPI_fnumber(desc, "run_as");
	cols[2] = SPI_fnumber(desc, "allow_superuser");
	cols[3] = SPI_fnumber(desc, "name");
	if (cols[0] <= 0 || cols[1] <= 0 || cols[2] <= 0 || cols[3] <= 0)
		elog(ERROR, "infra.metric_queries lacks a column its author trigger needs");

	if (!superuser())
	{
		NameData	me;
		Datum		values[1];
		bool		nulls[1] = {false};

		namestrcpy(&me, GetUserNameFromId(GetUserId(), false));
		values[0] = NameGetDatum(&me);
		tuple = heap_modify_tuple_by_cols(tuple, desc, 1, cols, values, nulls);
	}
	d = heap_getattr(tuple, cols[0], desc, &isnull);
	author = isnull ? InvalidOid : get_role_oid(NameStr(*DatumGetName(d)), true);
	d = heap_getattr(tuple, cols[1], desc, &isnull);
	if (!isnull)
		run_as = pstrdup(NameStr(*DatumGetName(d)));
	/*
	 * A role that does not exist yet fails at run time, with its name; rows
	 * an update of the extension rewrites are checked when they run.
	 */
	if (!creating_extension && OidIsValid(get_role_oid(run_as, true)))
	{
		bool		allow = DatumGetBool(heap_getattr(tuple, cols[2], desc, &isnull));

		MQCheckRole(TextDatumGetCString(heap_getattr(tuple, cols[3], desc, &isnull)),
					author, get_role_oid(run_as, true), run_as, allow);
	}
	return PointerGetDatum(tuple);
}


/*
 * infra.metric_query_status(): every metric query's last run.
 */
Datum
infra_metric_query_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MQSlot	   *copy;
	int			i;

	INFRA_CHECK_SCHEMA();
	InfraShmemRequire("infra.metric_query_status");
	InitMaterializedSRF(fcinfo, 0);
	copy = palloc(sizeof(MQSlot));
	for (i = 0; i < MQ_SLOTS; i++)
	{
		Datum		values[9];
		bool		nulls[9];

		LWLockAcquire(mq_shared->lock, LW_SHARED);
		memcpy(copy, &mq_shared->slots[i], offsetof(MQSlot, text));
		LWLockRelease(mq_shared->lock);
		if (copy->database_oid == InvalidOid)
			continue;
		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(copy->database);
		values[1] = CStringGetTextDatum(copy->name);
		values[2] = TimestampTzGetDatum(copy->last_run_at);
		nulls[2] = copy->last_run_at == 0;
		values[3] = TimestampTzGetDatum(copy->last_success_at);
		nulls[3] = copy->last_success_at == 0;
		values[4] = Float8GetDatum(copy->duration_ms);
		nulls[4] = copy->runs == 0;
		values[5] = Int64GetDatum(copy->series);
		values[6] = Int64GetDatum(copy->runs);
		values[7] = Int64GetDatum(copy->failures);
		values[8] = CStringGetTextDatum(copy->error);
		nulls[8] = copy->error[0] == '\0';
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	pfree(copy);
	return (Datum) 0;
}
