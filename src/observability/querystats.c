/*-------------------------------------------------------------------------
 *
 * querystats.c
 *		Query metrics: per (query id, user, database) counters and a latency
 *		histogram in shared memory, shown by infra.query_metrics.
 *
 * The executor and utility hooks (chained to whatever was installed before)
 * time every top-level statement.  Each entry keeps calls, errors, rows,
 * total/min/max time, an exponentially weighted moving average and a
 * log-linear histogram: 32 linear sub-buckets per power of two of
 * microseconds, so a percentile read from it (the bucket's midpoint) is
 * within 1/64 (1.6%) of the true value, from 1 us to 71 minutes.
 *
 * The normalised text (constants replaced by $n, as pg_stat_statements
 * shows it) is made at parse analysis, where the constants' locations are
 * known, and kept bounded.
 *
 * Locking: one LWLock guards the hash table from keys to entries: shared to
 * look up, exclusive only to add an entry.  Counters of an entry are under
 * its spinlock.  When the table is full, adding an entry evicts one chosen
 * by a clock sweep over at most QS_SWEEP entries (usage halves as the hand
 * passes): the exclusive lock is held for a bounded, short time, never for
 * a sort of the whole table.  Evictions are counted.
 *
 * Called by PostgreSQL's executor and utility hooks, by SQL, and by
 * spans.c (QueryStatsText, the normalised text of a statement's span).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/hash.h"
#include "access/parallel.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "executor/executor.h"
#include "executor/instrument.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/analyze.h"
#include "parser/scanner.h"
#include "parser/scansup.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "core/infra.h"
#include INFRA_QUERYJUMBLE_H	/* compat.h names it */
#include "core/metrics.h"
#include "core/shmem.h"
#include "core/version.h"
#include "observability/querystats.h"

PG_FUNCTION_INFO_V1(infra_query_metrics);
PG_FUNCTION_INFO_V1(infra_query_metrics_info);
PG_FUNCTION_INFO_V1(infra_query_metrics_reset);

/* Histogram: QS_SUB linear buckets per power of two of microseconds. */
#define QS_SUB 32
#define QS_OCTAVES 32
#define QS_BUCKETS (QS_SUB * QS_OCTAVES)

/* Longest normalised query text kept, in bytes. */
#define QS_TEXT_LEN 1024

/* Entries the clock hand looks at, at most, to find one to evict. */
#define QS_SWEEP 64

/* Weight of the newest sample in the moving average. */
#define QS_EWMA_ALPHA 0.1

typedef struct QSKey
{
	Oid			userid;
	Oid			dbid;
	uint64		queryid;
} QSKey;

typedef struct QSHashEntry
{
	QSKey		key;			/* hash key: first */
	int			slot;			/* in QSShared.entries */
} QSHashEntry;

typedef struct QSEntry
{
	QSKey		key;
	bool		used;
	slock_t		mutex;			/* guards what follows */
	uint32		usage;			/* clock sweep: calls since the hand passed, halved */
	int64		calls;
	int64		errors;
	int64		rows;
	double		total_ms;
	double		min_ms;
	double		max_ms;
	double		ewma_ms;
	uint32		hist[QS_BUCKETS];
	char		text[QS_TEXT_LEN];
} QSEntry;

typedef struct QSShared
{
	LWLock	   *lock;
	int			nused;			/* entries ever taken (up to max) */
	int			hand;			/* clock sweep position */
	int64		evictions;		/* under lock exclusively */
	int64		evicted_calls;	/* what evicted entries had counted, so */
	int64		evicted_errors; /* that the totals /metrics shows never */
	int64		evicted_rows;	/* go down: under lock exclusively too */
	double		evicted_ms;
	uint64		evicted_hist[QS_BUCKETS];
	TimestampTz reset_at;
	QSEntry		entries[FLEXIBLE_ARRAY_MEMBER];
} QSShared;

bool		infra_query_metrics_on = true;
int			infra_query_metrics_max = 5000;

static void QueryStatsCollectMetrics(StringInfo out);
static QSShared *qs_shared = NULL;
static HTAB *qs_hash = NULL;

/* Statements of this backend being executed, for top-level-only tracking. */
static int	nesting_level = 0;

/*
 * The top-level statement under way, so that an error anywhere in it (in
 * planning too) is counted when its transaction or subtransaction aborts.
 * The text is kept only for a statement without constants, whose entry may
 * not exist yet; one with constants got its entry at parse analysis.
 */
static struct
{
	bool		active;
	uint64		queryid;
	int			len;
	char		text[QS_TEXT_LEN];
}			pending;
static bool callbacks_registered = false;

static post_parse_analyze_hook_type prev_post_parse_analyze = NULL;
static ExecutorStart_hook_type prev_executor_start = NULL;
static ExecutorRun_hook_type prev_executor_run = NULL;
static ExecutorFinish_hook_type prev_executor_finish = NULL;
static ExecutorEnd_hook_type prev_executor_end = NULL;
static ProcessUtility_hook_type prev_process_utility = NULL;

static Size QSShmemSize(void);
static Size QSHashSize(void);
static void QSShmemInit(void *segment, bool found, LWLockPadded *locks);
static void QSPostParseAnalyze(ParseState *pstate, Query *query, JumbleState *jstate);
static void QSExecutorStart(QueryDesc *queryDesc, int eflags);
static void QSExecutorRun(INFRA_EXECUTOR_RUN_PARAMS);
static void QSExecutorFinish(QueryDesc *queryDesc);
static void QSExecutorEnd(QueryDesc *queryDesc);
static void QSProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
							 ProcessUtilityContext context, ParamListInfo params,
							 QueryEnvironment *queryEnv, DestReceiver *dest,
							 QueryCompletion *qc);
static QSEntry *QSEntryFor(uint64 queryid, const char *text, int location, int text_len,
						   LWLockMode *held);
static void QSRecord(uint64 queryid, const char *source, int location, int len,
					 double ms, uint64 rows, bool error);
static void QSXactCallback(XactEvent event, void *arg);
static void QSSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
							  SubTransactionId parentSubid, void *arg);
static void QSBegin(uint64 queryid, const char *source, int location, int len, bool keep_text);

/* Parallel workers run parts of a statement their leader counts. */
#define QS_ACTIVE() \
	(infra_query_metrics_on && qs_shared != NULL && nesting_level == 0 && \
	 !IsParallelWorker())

void
InfraQueryStatsInit(void)
{
	InfraShmemSegment seg = {
		.name = "infra query metrics",
		.size = QSShmemSize,
		.extra = QSHashSize,
		.nlocks = 1,
		.init = QSShmemInit,
		.pointer = (void **) &qs_shared,
	};

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomBoolVariable("infra.query_metrics",
							 "Record per-statement metrics in infra.query_metrics.",
							 NULL,
							 &infra_query_metrics_on,
							 true,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("infra.query_metrics_max",
							"Statements (query id, user, database) infra.query_metrics keeps; about 5 kB each.",
							"When full, a rarely used entry is evicted.",
							&infra_query_metrics_max,
							5000, 100, 1000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	InfraShmemRegister(&seg);
	MetricsRegisterCollector(QueryStatsCollectMetrics);
	/* Have the core compute query ids (compute_query_id = auto). */
	EnableQueryId();

	prev_post_parse_analyze = post_parse_analyze_hook;
	post_parse_analyze_hook = QSPostParseAnalyze;
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = QSExecutorStart;
	prev_executor_run = ExecutorRun_hook;
	ExecutorRun_hook = QSExecutorRun;
	prev_executor_finish = ExecutorFinish_hook;
	ExecutorFinish_hook = QSExecutorFinish;
	prev_executor_end = ExecutorEnd_hook;
	ExecutorEnd_hook = QSExecutorEnd;
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = QSProcessUtility;
}

static Size
QSShmemSize(void)
{
	return add_size(offsetof(QSShared, entries),
					mul_size(sizeof(QSEntry), infra_query_metrics_max));
}

static Size
QSHashSize(void)
{
	return hash_estimate_size(infra_query_metrics_max, sizeof(QSHashEntry));
}

/*
 * No entries, nothing evicted, counted from now (the hash table is the
 * caller's to empty).
 */
static void
QSStartOver(QSShared *shared)
{
	int			i;

	for (i = 0; i < shared->nused; i++)
		shared->entries[i].used = false;
	shared->nused = 0;
	shared->hand = 0;
	shared->evictions = 0;
	shared->evicted_calls = shared->evicted_errors = shared->evicted_rows = 0;
	shared->evicted_ms = 0;
	memset(shared->evicted_hist, 0, sizeof(shared->evicted_hist));
	shared->reset_at = GetCurrentTimestamp();
}

static void
QSShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	QSShared   *shared = (QSShared *) segment;
	HASHCTL		info;
	int			i;

	if (!found)
	{
		shared->lock = &locks[0].lock;
		for (i = 0; i < infra_query_metrics_max; i++)
		{
			shared->entries[i].used = false;
			SpinLockInit(&shared->entries[i].mutex);
		}
		shared->nused = 0;
		QSStartOver(shared);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(QSKey);
	info.entrysize = sizeof(QSHashEntry);
	qs_hash = ShmemInitHash("infra query metrics keys",
							infra_query_metrics_max, infra_query_metrics_max,
							&info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
}

/* ---------------------------------------------------------------------------
 * Histogram
 * ------------------------------------------------------------------------- */

static int
QSBucket(double ms)
{
	double		us = ms * 1000.0;
	double		m;
	int			e;
	int			idx;

	if (!(us >= 1.0))
		return 0;
	m = frexp(us, &e);			/* us = m * 2^e, m in [0.5, 1), e >= 1 */
	idx = (e - 1) * QS_SUB + (int) ((m - 0.5) * 2 * QS_SUB);
	return Min(idx, QS_BUCKETS - 1);
}

/* The midpoint of a bucket, in milliseconds. */
static double
QSBucketMid(int idx)
{
	int			octave = idx / QS_SUB;
	int			sub = idx % QS_SUB;
	double		low = ldexp(1.0, octave) * (1.0 + (double) sub / QS_SUB);
	double		width = ldexp(1.0, octave) / QS_SUB;

	if (idx == 0)
		return 0.0005;			/* below 1 us */
	return (low + width / 2) / 1000.0;
}

/* The q-quantile (0 < q <= 1) of a histogram, clamped to [min, max]. */
static double
QSPercentile(const uint32 *hist, int64 total, double q, double min, double max)
{
	int64		rank = (int64) ceil(q * total);
	int64		seen = 0;
	int			i;

	if (total <= 0)
		return 0;
	rank = Max(rank, 1);
	for (i = 0; i < QS_BUCKETS; i++)
	{
		seen += hist[i];
		if (seen >= rank)
		{
			double		v = QSBucketMid(i);

			return Max(min, Min(max, v));
		}
	}
	return max;
}

/* ---------------------------------------------------------------------------
 * Normalised text
 * ------------------------------------------------------------------------- */

static int
QSLocationCmp(const void *a, const void *b)
{
	int			x = ((const LocationLen *) a)->location;
	int			y = ((const LocationLen *) b)->location;

	return (x > y) - (x < y);
}

/*
 * The statement's text with each constant replaced by $n, numbered after
 * the statement's own parameters, like pg_stat_statements.  The constants'
 * lengths are found with the core scanner (jumbling only records where they
 * start).
 */
static char *
QSNormalise(const char *query, int location, int len, JumbleState *jstate, int *out_len)
{
	LocationLen *locs = jstate->clocations;
	int			n = jstate->clocations_count;
	core_yyscan_t scanner;
	core_yy_extra_type extra;
	core_YYSTYPE yylval;
	YYLTYPE		yylloc;
	int			last_loc = -1;
	int			i;
	StringInfoData out;
	int			copied;
	int			param = jstate->highest_extern_param_id;
	char	   *text = pnstrdup(query + location, len);

	qsort(locs, n, sizeof(LocationLen), QSLocationCmp);

	scanner = scanner_init(text, &extra, &ScanKeywords, ScanKeywordTokens);
	extra.escape_string_warning = false;
	extra.standard_conforming_strings = true;
	for (i = 0; i < n; i++)
	{
		int			loc = locs[i].location - location;

		/* A squashed list's length is known; a $n stays as written. */
		if (InfraLocationIsList(&locs[i]))
			continue;
		locs[i].length = -1;
		if (InfraLocationIsParam(&locs[i]) || loc < 0 || loc >= len || loc == last_loc)
			continue;
		for (;;)
		{
			int			tok = core_yylex(&yylval, &yylloc, scanner);

			if (tok == 0)
				break;
			if (yylloc >= loc)
			{
				if (tok == '-')
					tok = core_yylex(&yylval, &yylloc, scanner);	/* a negative number */
				/* The scanner ends each token with a zero byte in its buffer. */
				locs[i].length = (yylloc - loc) + strlen(extra.scanbuf + yylloc);
				break;
			}
		}
		last_loc = loc;
	}
	scanner_finish(scanner);

	initStringInfo(&out);
	copied = 0;
	for (i = 0; i < n; i++)
	{
		int			loc = locs[i].location - location;

		if (locs[i].length < 0 || loc < copied)
			continue;
		appendBinaryStringInfo(&out, text + copied, loc - copied);
		appendStringInfo(&out, "$%d", ++param);
		copied = loc + locs[i].length;
	}
	if (copied < len)
		appendBinaryStringInfo(&out, text + copied, len - copied);
	*out_len = out.len;
	return out.data;
}

/*
 * A utility statement's text with every literal replaced by $n.  Utility
 * statements are not jumbled with constant locations, and their literals
 * can be secrets (ALTER SYSTEM SET infra.kafka_config = '...', ALTER ROLE
 * ... PASSWORD '...'), which must not be kept for pg_read_all_stats to
 * read.  A literal is a token that starts with a quote, a digit, a prefixed
 * quote (E'', B'', X'', N'', U&'') or a dollar quote.
 */
static char *
QSMaskLiterals(const char *query, int location, int len)
{
	char	   *text = pnstrdup(query + location, len);
	core_yyscan_t scanner;
	core_yy_extra_type extra;
	core_YYSTYPE yylval;
	YYLTYPE		yylloc;
	StringInfoData out;
	int			copied = 0;
	int			param = 0;

	initStringInfo(&out);
	scanner = scanner_init(text, &extra, &ScanKeywords, ScanKeywordTokens);
	extra.escape_string_warning = false;
	extra.standard_conforming_strings = true;
	for (;;)
	{
		int			tok = core_yylex(&yylval, &yylloc, scanner);
		const char *start;
		bool		literal;

		if (tok == 0)
			break;
		start = text + yylloc;
		literal = start[0] == '\'' || start[0] == '$' ||
			(start[0] >= '0' && start[0] <= '9') ||
			(start[0] == '.' && start[1] >= '0' && start[1] <= '9') ||
			(strchr("EeBbXxNn", start[0]) != NULL && start[0] != '\0' && start[1] == '\'') ||
			((start[0] == 'U' || start[0] == 'u') && start[1] == '&' && start[2] == '\'');
		if (!literal || yylloc < copied)
			continue;
		appendBinaryStringInfo(&out, text + copied, yylloc - copied);
		appendStringInfo(&out, "$%d", ++param);
		/* The scanner ends each token with a zero byte in its buffer. */
		copied = yylloc + strlen(extra.scanbuf + yylloc);
	}
	scanner_finish(scanner);
	if (copied < len)
		appendBinaryStringInfo(&out, text + copied, len - copied);
	pfree(text);
	return out.data;
}

/* Where the statement is in its source text (the whole text when unknown). */
static void
QSStatementBounds(const char *source, int *location, int *len)
{
	int			total = strlen(source);

	if (*location < 0 || *location > total)
	{
		*location = 0;
		*len = total;
	}
	else if (*len <= 0 || *location + *len > total)
		*len = total - *location;
	/* Leading white space is not part of it. */
	while (*len > 0 && scanner_isspace(source[*location]))
	{
		(*location)++;
		(*len)--;
	}
}

/* ---------------------------------------------------------------------------
 * Entries
 * ------------------------------------------------------------------------- */

/*
 * A slot for a new entry, under the exclusive lock: a free one, or the
 * first with no usage within QS_SWEEP steps of the clock hand (halving the
 * usage of the others passed), else the least used of those seen.
 */
static int
QSTakeSlot(void)
{
	int			best = -1;
	uint32		best_usage = PG_UINT32_MAX;
	int			i;

	if (qs_shared->nused < infra_query_metrics_max)
		return qs_shared->nused++;
	for (i = 0; i < QS_SWEEP; i++)
	{
		int			slot = qs_shared->hand;
		QSEntry    *e = &qs_shared->entries[slot];
		uint32		usage;

		qs_shared->hand = (qs_shared->hand + 1) % infra_query_metrics_max;
		SpinLockAcquire(&e->mutex);
		usage = e->usage;
		e->usage = usage / 2;
		SpinLockRelease(&e->mutex);
		if (usage < best_usage)
		{
			best = slot;
			best_usage = usage;
			if (usage == 0)
				break;
		}
	}
	hash_search(qs_hash, &qs_shared->entries[best].key, HASH_REMOVE, NULL);
	qs_shared->entries[best].used = false;
	qs_shared->evictions++;
	/* Updates happen under the shared lock: the counts are still. */
	qs_shared->evicted_calls += qs_shared->entries[best].calls;
	qs_shared->evicted_errors += qs_shared->entries[best].errors;
	qs_shared->evicted_rows += qs_shared->entries[best].rows;
	qs_shared->evicted_ms += qs_shared->entries[best].total_ms;
	{
		int			b;

		for (b = 0; b < QS_BUCKETS; b++)
			qs_shared->evicted_hist[b] += qs_shared->entries[best].hist[b];
	}
	return best;
}

/*
 * The entry of a statement of this user and database; added with the text
 * when missing and text is given: the statement is at location in text (its
 * source), or, when location is negative, text is the statement itself.
 * With a NULL text only looks up.  Returns with the lock held in *held mode.
 */
static QSEntry *
QSEntryFor(uint64 queryid, const char *text, int location, int text_len, LWLockMode *held)
{
	QSKey		key;
	QSHashEntry *h;
	bool		found;
	QSEntry    *e;
	int			slot;

	memset(&key, 0, sizeof(key));
	key.userid = GetUserId();
	key.dbid = MyDatabaseId;
	key.queryid = queryid;

	LWLockAcquire(qs_shared->lock, LW_SHARED);
	*held = LW_SHARED;
	h = hash_search(qs_hash, &key, HASH_FIND, NULL);
	if (h != NULL)
		return &qs_shared->entries[h->slot];
	if (text == NULL)
		return NULL;

	LWLockRelease(qs_shared->lock);
	LWLockAcquire(qs_shared->lock, LW_EXCLUSIVE);
	*held = LW_EXCLUSIVE;
	h = hash_search(qs_hash, &key, HASH_FIND, NULL);
	if (h != NULL)
		return &qs_shared->entries[h->slot];

	slot = QSTakeSlot();
	h = hash_search(qs_hash, &key, HASH_ENTER, &found);
	h->slot = slot;
	e = &qs_shared->entries[slot];
	SpinLockAcquire(&e->mutex);
	e->key = key;
	e->used = true;
	e->usage = 1;
	e->calls = e->errors = e->rows = 0;
	e->total_ms = e->max_ms = e->ewma_ms = 0;
	e->min_ms = 0;
	memset(e->hist, 0, sizeof(e->hist));
	/* Only a new entry needs the statement's bounds in its source text. */
	if (location >= 0)
	{
		QSStatementBounds(text, &location, &text_len);
		text += location;
	}
	text_len = Min(text_len, QS_TEXT_LEN - 1);
	text_len = pg_mbcliplen(text, text_len, text_len);
	memcpy(e->text, text, text_len);
	e->text[text_len] = '\0';
	SpinLockRelease(&e->mutex);
	return e;
}

/*
 * Count one execution (or failure) of a top-level statement.
 */
static void
QSRecord(uint64 queryid, const char *source, int location, int len,
		 double ms, uint64 rows, bool error)
{
	QSEntry    *e;
	LWLockMode	held;

	if (queryid == UINT64CONST(0))
		return;
	e = QSEntryFor(queryid, source, location, len, &held);
	if (e == NULL)
	{
		/* An error of a statement whose entry is gone: nothing to add to. */
		LWLockRelease(qs_shared->lock);
		return;
	}
	SpinLockAcquire(&e->mutex);
	e->usage = Min(e->usage + 1, 1 << 20);
	if (error)
		e->errors++;
	else
	{
		e->calls++;
		e->rows += rows;
		e->total_ms += ms;
		if (e->calls == 1 || ms < e->min_ms)
			e->min_ms = ms;
		if (ms > e->max_ms)
			e->max_ms = ms;
		e->ewma_ms = e->calls == 1 ? ms : QS_EWMA_ALPHA * ms + (1 - QS_EWMA_ALPHA) * e->ewma_ms;
		e->hist[QSBucket(ms)]++;
	}
	SpinLockRelease(&e->mutex);
	LWLockRelease(qs_shared->lock);
}

/* ---------------------------------------------------------------------------
 * Hooks
 * ------------------------------------------------------------------------- */

/*
 * A top-level statement starts: remember it until it ends, so that an
 * error in it can be counted.
 */
static void
QSBegin(uint64 queryid, const char *source, int location, int len, bool keep_text)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(QSXactCallback, NULL);
		RegisterSubXactCallback(QSSubXactCallback, NULL);
		callbacks_registered = true;
	}
	pending.active = true;
	pending.queryid = queryid;
	pending.len = 0;
	if (keep_text && source != NULL)
	{
		QSStatementBounds(source, &location, &len);
		len = Min(len, QS_TEXT_LEN - 1);
		len = pg_mbcliplen(source + location, len, len);
		memcpy(pending.text, source + location, len);
		pending.text[len] = '\0';
		pending.len = len;
	}
}

/* The statement under way failed: count an error for it. */
static void
QSCountError(void)
{
	if (!pending.active)
		return;
	pending.active = false;
	if (!infra_query_metrics_on || qs_shared == NULL)
		return;
	QSRecord(pending.queryid, pending.len > 0 ? pending.text : NULL, -1, pending.len,
			 0, 0, true);
}

static void
QSXactCallback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		/* No executor is running once the transaction aborts. */
		nesting_level = 0;
		QSCountError();
	}
}

/*
 * A statement failing inside a savepoint aborts a subtransaction; one caught
 * by a PL/pgSQL exception block does too, but inside the top-level
 * statement (nesting_level > 0), which goes on.
 */
static void
QSSubXactCallback(SubXactEvent event, SubTransactionId mySubid,
				  SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && nesting_level == 0)
		QSCountError();
}

/*
 * Parse analysis: a statement with constants seen for the first time gets
 * its entry now, with the normalised text.
 */
static void
QSPostParseAnalyze(ParseState *pstate, Query *query, JumbleState *jstate)
{
	if (prev_post_parse_analyze)
		prev_post_parse_analyze(pstate, query, jstate);

	if (!QS_ACTIVE() || query->queryId == UINT64CONST(0) || pstate->p_sourcetext == NULL)
		return;
	if (query->commandType == CMD_UTILITY)
	{
		/* Kept for an error of the statement: without its literals. */
		int			location = query->stmt_location;
		int			len = query->stmt_len;
		char	   *masked;

		QSStatementBounds(pstate->p_sourcetext, &location, &len);
		masked = QSMaskLiterals(pstate->p_sourcetext, location, len);
		QSBegin(query->queryId, masked, 0, strlen(masked), true);
		pfree(masked);
		return;
	}
	QSBegin(query->queryId, pstate->p_sourcetext, query->stmt_location, query->stmt_len,
			jstate == NULL || jstate->clocations_count == 0);
	if (jstate == NULL || jstate->clocations_count == 0)
		return;
	{
		int			location = query->stmt_location;
		int			len = query->stmt_len;
		LWLockMode	held;
		QSEntry    *e;

		QSStatementBounds(pstate->p_sourcetext, &location, &len);
		e = QSEntryFor(query->queryId, NULL, -1, 0, &held);
		if (e == NULL)
		{
			char	   *text;
			int			text_len;

			LWLockRelease(qs_shared->lock);
			text = QSNormalise(pstate->p_sourcetext, location, len, jstate, &text_len);
			e = QSEntryFor(query->queryId, text, -1, text_len, &held);
			pfree(text);
		}
		LWLockRelease(qs_shared->lock);
	}
}

static void
QSExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (QS_ACTIVE() && queryDesc->plannedstmt->queryId != UINT64CONST(0) &&
		!(pending.active && pending.queryid == queryDesc->plannedstmt->queryId))
		QSBegin(queryDesc->plannedstmt->queryId, NULL, 0, 0, false);

	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);

	/* Time the whole run; EXPLAIN without ANALYZE runs nothing. */
	if (QS_ACTIVE() && queryDesc->plannedstmt->queryId != UINT64CONST(0) &&
		!(eflags & EXEC_FLAG_EXPLAIN_ONLY) && queryDesc->totaltime == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(queryDesc->estate->es_query_cxt);

		queryDesc->totaltime = InstrAlloc(1, INSTRUMENT_TIMER, false);
		MemoryContextSwitchTo(old);
	}
}

static void
QSExecutorRun(INFRA_EXECUTOR_RUN_PARAMS)
{
	nesting_level++;
	PG_TRY();
	{
		if (prev_executor_run)
			prev_executor_run(INFRA_EXECUTOR_RUN_ARGS);
		else
			standard_ExecutorRun(INFRA_EXECUTOR_RUN_ARGS);
	}
	PG_FINALLY();
	{
		/* An error is counted when the (sub)transaction aborts. */
		nesting_level--;
	}
	PG_END_TRY();
}

static void
QSExecutorFinish(QueryDesc *queryDesc)
{
	nesting_level++;
	PG_TRY();
	{
		if (prev_executor_finish)
			prev_executor_finish(queryDesc);
		else
			standard_ExecutorFinish(queryDesc);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
}

static void
QSExecutorEnd(QueryDesc *queryDesc)
{
	uint64		queryid = queryDesc->plannedstmt->queryId;

	if (QS_ACTIVE() && queryid != UINT64CONST(0) && queryDesc->totaltime != NULL)
	{
		pending.active = false;
		InstrEndLoop(queryDesc->totaltime);
		QSRecord(queryid, queryDesc->sourceText,
				 Max(queryDesc->plannedstmt->stmt_location, 0),
				 queryDesc->plannedstmt->stmt_location < 0 ? 0 : queryDesc->plannedstmt->stmt_len,
				 queryDesc->totaltime->total * 1000.0,
				 queryDesc->estate->es_processed, false);
	}
	if (prev_executor_end)
		prev_executor_end(queryDesc);
	else
		standard_ExecutorEnd(queryDesc);
}

/*
 * Utility statements, timed here; EXECUTE, PREPARE and DEALLOCATE are not
 * (the statements they run are counted by the executor hooks).
 */
static void
QSProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				 ProcessUtilityContext context, ParamListInfo params,
				 QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	uint64		queryid = pstmt->queryId;
	bool		track = QS_ACTIVE() && queryid != UINT64CONST(0) &&
		!IsA(stmt, ExecuteStmt) && !IsA(stmt, PrepareStmt) && !IsA(stmt, DeallocateStmt);
	instr_time	start;
	instr_time	duration;
	int			location = Max(pstmt->stmt_location, 0);
	int			len = pstmt->stmt_location < 0 ? 0 : pstmt->stmt_len;

	if (track)
		INSTR_TIME_SET_CURRENT(start);
	nesting_level++;
	PG_TRY();
	{
		if (prev_process_utility)
			prev_process_utility(pstmt, queryString, readOnlyTree, context, params,
								 queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
									queryEnv, dest, qc);
	}
	PG_FINALLY();
	{
		nesting_level--;
	}
	PG_END_TRY();
	if (nesting_level == 0)
		pending.active = false;
	if (track)
	{
		char	   *masked;

		INSTR_TIME_SET_CURRENT(duration);
		INSTR_TIME_SUBTRACT(duration, start);
		QSStatementBounds(queryString, &location, &len);
		masked = QSMaskLiterals(queryString, location, len);
		QSRecord(queryid, masked, 0, strlen(masked),
				 INSTR_TIME_GET_MILLISEC(duration),
				 (qc && qc->commandTag != CMDTAG_UNKNOWN) ? qc->nprocessed : 0, false);
	}
}

/* ---------------------------------------------------------------------------
 * SQL functions
 * ------------------------------------------------------------------------- */

/*
 * infra.query_metrics(): one row per entry.  Entries are copied under their
 * spinlocks while the shared lock keeps the table still.
 */
Datum
infra_query_metrics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	QSEntry    *copy;
	int			i;
	Oid			me = GetUserId();
	bool		read_all;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.query_metrics");
	/* pg_stat_statements' rule: other users' texts need pg_read_all_stats. */
	read_all = has_privs_of_role(me, ROLE_PG_READ_ALL_STATS);
	InitMaterializedSRF(fcinfo, 0);
	copy = palloc(sizeof(QSEntry));

	LWLockAcquire(qs_shared->lock, LW_SHARED);
	for (i = 0; i < qs_shared->nused; i++)
	{
		QSEntry    *e = &qs_shared->entries[i];
		Datum		values[15];
		bool		nulls[15];
		int			j;

		SpinLockAcquire(&e->mutex);
		memcpy(copy, e, sizeof(QSEntry));
		SpinLockRelease(&e->mutex);
		if (!copy->used)
			continue;
		memset(nulls, 0, sizeof(nulls));
		values[0] = Int64GetDatum((int64) copy->key.queryid);
		values[1] = ObjectIdGetDatum(copy->key.userid);
		values[2] = ObjectIdGetDatum(copy->key.dbid);
		values[3] = Int64GetDatum(copy->calls);
		values[4] = Int64GetDatum(copy->errors);
		values[5] = Int64GetDatum(copy->rows);
		values[6] = Float8GetDatum(copy->total_ms);
		values[7] = Float8GetDatum(copy->min_ms);
		values[8] = Float8GetDatum(copy->max_ms);
		values[9] = Float8GetDatum(copy->calls > 0 ? copy->total_ms / copy->calls : 0);
		values[10] = Float8GetDatum(copy->ewma_ms);
		values[11] = Float8GetDatum(QSPercentile(copy->hist, copy->calls, 0.50, copy->min_ms, copy->max_ms));
		values[12] = Float8GetDatum(QSPercentile(copy->hist, copy->calls, 0.95, copy->min_ms, copy->max_ms));
		values[13] = Float8GetDatum(QSPercentile(copy->hist, copy->calls, 0.99, copy->min_ms, copy->max_ms));
		if (read_all || copy->key.userid == me)
			values[14] = CStringGetTextDatum(copy->text);
		else
			values[14] = CStringGetTextDatum("<insufficient privilege>");
		for (j = 7; j <= 13; j++)
			nulls[j] = copy->calls == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	LWLockRelease(qs_shared->lock);
	return (Datum) 0;
}

/*
 * infra.query_metrics_info(): capacity, entries in use, evictions, reset time.
 */
Datum
infra_query_metrics_info(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	int			used = 0;
	int			i;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.query_metrics_info");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	LWLockAcquire(qs_shared->lock, LW_SHARED);
	for (i = 0; i < qs_shared->nused; i++)
		used += qs_shared->entries[i].used;
	values[0] = Int32GetDatum(infra_query_metrics_max);
	values[1] = Int32GetDatum(used);
	values[2] = Int64GetDatum(qs_shared->evictions);
	values[3] = TimestampTzGetDatum(qs_shared->reset_at);
	LWLockRelease(qs_shared->lock);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls)));
}

/*
 * infra.query_metrics_reset(): forget every entry and the eviction count.
 */
Datum
infra_query_metrics_reset(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS status;
	QSHashEntry *h;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.query_metrics_reset");
	LWLockAcquire(qs_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&status, qs_hash);
	while ((h = hash_seq_search(&status)) != NULL)
		hash_search(qs_hash, &h->key, HASH_REMOVE, NULL);
	QSStartOver(qs_shared);
	LWLockRelease(qs_shared->lock);
	PG_RETURN_VOID();
}

/* Bounds of infra_query_duration_seconds' buckets, in seconds. */
static const double qs_le[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

/*
 * Built-in series: totals over every statement (evicted ones included, so
 * they only go down at infra.query_metrics_reset()) and the table's use.
 */
static void
QueryStatsCollectMetrics(StringInfo out)
{
	int64		calls;
	int64		errors;
	int64		rows;
	double		ms;
	int			used = 0;
	int64		evictions;
	int			i;
	int			b;
	static int	to[QS_BUCKETS];
	static bool mapped = false;
	uint64		counts[lengthof(qs_le) + 1];
	uint64		cumulative = 0;

	if (qs_shared == NULL)
		return;
	/* Each of our buckets into the first Prometheus bucket that holds it all. */
	for (b = 0; b < QS_BUCKETS && !mapped; b++)
	{
		double		upper_s = (b == 0 ? 1.0 : ldexp(1.0, b / QS_SUB) * (1.0 + (double) (b % QS_SUB + 1) / QS_SUB)) / 1e6;

		for (to[b] = 0; to[b] < (int) lengthof(qs_le) && upper_s > qs_le[to[b]]; to[b]++)
			;
	}
	mapped = true;
	memset(counts, 0, sizeof(counts));
	LWLockAcquire(qs_shared->lock, LW_SHARED);
	calls = qs_shared->evicted_calls;
	errors = qs_shared->evicted_errors;
	rows = qs_shared->evicted_rows;
	ms = qs_shared->evicted_ms;
	evictions = qs_shared->evictions;
	for (b = 0; b < QS_BUCKETS; b++)
		counts[to[b]] += qs_shared->evicted_hist[b];
	for (i = 0; i < qs_shared->nused; i++)
	{
		QSEntry    *e = &qs_shared->entries[i];

		SpinLockAcquire(&e->mutex);
		if (e->used)
		{
			used++;
			calls += e->calls;
			errors += e->errors;
			rows += e->rows;
			ms += e->total_ms;
			for (b = 0; b < QS_BUCKETS; b++)
				counts[to[b]] += e->hist[b];
		}
		SpinLockRelease(&e->mutex);
	}
	LWLockRelease(qs_shared->lock);

	/*
	 * The histogram's count is the bucket counts' sum: a statement being
	 * counted between the reads cannot make them disagree.
	 */
	MetricsWriteFamily(out, "infra_query_duration_seconds", "histogram",
					   "Duration of top-level statements (infra.query_metrics), every statement together.");
	for (b = 0; b <= (int) lengthof(qs_le); b++)
	{
		char		labels[48];

		cumulative += counts[b];
		if (b < (int) lengthof(qs_le))
			snprintf(labels, sizeof(labels), "le=\"%g\"", qs_le[b]);
		else
			strlcpy(labels, "le=\"+Inf\"", sizeof(labels));
		MetricsWriteSample(out, "infra_query_duration_seconds_bucket", labels, (double) cumulative);
	}
	MetricsWriteSample(out, "infra_query_duration_seconds_sum", NULL, ms / 1000.0);
	MetricsWriteSample(out, "infra_query_duration_seconds_count", NULL, (double) cumulative);

	MetricsWriteOne(out, "infra_query_calls_total", "counter",
					"Top-level statements executed (infra.query_metrics).", (double) calls);
	MetricsWriteOne(out, "infra_query_errors_total", "counter",
					"Top-level statements that failed.", (double) errors);
	MetricsWriteOne(out, "infra_query_rows_total", "counter",
					"Rows returned or affected by top-level statements.", (double) rows);
	MetricsWriteOne(out, "infra_query_time_seconds_total", "counter",
					"Time spent executing top-level statements.", ms / 1000.0);
	MetricsWriteOne(out, "infra_query_metrics_statements", "gauge",
					"Statements infra.query_metrics holds.", used);
	MetricsWriteOne(out, "infra_query_metrics_evictions_total", "counter",
					"Statements evicted from infra.query_metrics to make room.", (double) evictions);
}

/*
 * The normalised text of this user's statement in this database, for a
 * span; false when infra.query_metrics has no entry for it.
 */
bool
QueryStatsText(uint64 queryid, char *buf, int buflen)
{
	LWLockMode	held;
	QSEntry    *e;
	bool		found = false;

	if (qs_shared == NULL || queryid == UINT64CONST(0))
		return false;
	e = QSEntryFor(queryid, NULL, -1, 0, &held);
	if (e != NULL)
	{
		SpinLockAcquire(&e->mutex);
		if (e->used)
		{
			strlcpy(buf, e->text, buflen);
			found = true;
		}
		SpinLockRelease(&e->mutex);
	}
	LWLockRelease(qs_shared->lock);
	return found;
}
