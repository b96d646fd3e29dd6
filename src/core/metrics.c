/*-------------------------------------------------------------------------
 *
 * metrics.c
 *		A labelled metrics registry in shared memory (counters, gauges,
 *		histograms) and its Prometheus text exposition.
 *
 * A series is a metric name and a set of labels.  The labels, given as a
 * jsonb object, are rendered once into their exposition form, sorted by
 * name (route="a",status="200"): that string is part of the hash key, so
 * the same labels in any order are the same series.  A family (one name)
 * has one type and, for a histogram, one set of bucket bounds; Prometheus
 * requires both.  Counters are exposed with the "_total" suffix the
 * Prometheus client libraries add, and are stored under that name.
 *
 * Names starting with "infra_" belong to the built-in series, which are not
 * stored here: each module registers a collector at load
 * (MetricsRegisterCollector) that writes its own at exposition time from
 * its shared state; this file names none of them.  The HTTP server
 * (httpd.c) and the SQL function serve the exposition.
 *
 * Bounds: at most infra.metrics_max_series series (and as many families);
 * past that a new series is an error that says so, and is counted.
 *
 * Locking: one LWLock guards both hash tables: shared to find a series,
 * exclusive to add or remove one.  A series' values are under its own
 * spinlock, so concurrent updates of one series are exact.
 *
 * Called by SQL, by httpd.c (the exposition served on /metrics) and by
 * every module that registers a collector at load.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "common/shortest_dec.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "core/infra.h"
#include "core/metrics.h"
#include "core/shmem.h"
#include "core/version.h"

PG_FUNCTION_INFO_V1(infra_counter_inc);
PG_FUNCTION_INFO_V1(infra_gauge_set);
PG_FUNCTION_INFO_V1(infra_gauge_add);
PG_FUNCTION_INFO_V1(infra_histogram_observe);
PG_FUNCTION_INFO_V1(infra_metrics);
PG_FUNCTION_INFO_V1(infra_metrics_reset);
PG_FUNCTION_INFO_V1(infra_metrics_prometheus);

/* Most bucket bounds a histogram has (+Inf is implicit). */
#define METRIC_MAX_BUCKETS 32

/* Prometheus' client libraries' default buckets, in seconds. */
static const double default_buckets[] = {
	0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
};

typedef enum MetricType
{
	METRIC_COUNTER,
	METRIC_GAUGE,
	METRIC_HISTOGRAM
} MetricType;

static const char *const type_names[] = {"counter", "gauge", "histogram"};

typedef struct MetricKey
{
	char		name[METRIC_NAME_LEN];
	char		labels[METRIC_LABELS_LEN];
} MetricKey;

typedef struct MetricFamily
{
	char		name[METRIC_NAME_LEN];	/* hash key: first */
	MetricType	type;
	int			nseries;
	int			nbuckets;
	double		bounds[METRIC_MAX_BUCKETS];
} MetricFamily;

typedef struct MetricSeries
{
	MetricKey	key;			/* hash key: first */
	MetricType	type;			/* set once, under the exclusive lock */
	int			nbuckets;
	slock_t		mutex;			/* guards what follows */
	double		value;			/* counter, gauge */
	double		sum;			/* histogram */
	int64		count;
	int64		buckets[METRIC_MAX_BUCKETS];	/* per bucket, not cumulative */
	TimestampTz updated_at;
} MetricSeries;

typedef struct MetricsShared
{
	LWLock	   *lock;
	int			nseries;		/* under lock exclusively */
	pg_atomic_uint64 rejected;	/* new series refused: table full */
} MetricsShared;

int			infra_metrics_max_series = 5000;

static MetricsShared *metrics_shared = NULL;
static HTAB *family_hash = NULL;
static HTAB *series_hash = NULL;

/* Collectors of built-in series, registered by the modules at load. */
#define METRICS_MAX_COLLECTORS 16
static MetricsCollector collectors[METRICS_MAX_COLLECTORS];
static int	ncollectors = 0;

/* What an update does to its series. */
typedef enum MetricOp
{
	METRIC_OP_INC,
	METRIC_OP_SET,
	METRIC_OP_ADD,
	METRIC_OP_OBSERVE
} MetricOp;

/* A pair of a label set, for sorting. */
typedef struct LabelPair
{
	char	   *name;
	char	   *value;
} LabelPair;

static Size MetricsShmemSize(void);
static Size MetricsHashSize(void);
static void MetricsShmemInit(void *segment, bool found, LWLockPadded *locks);
static void MetricsReadName(FunctionCallInfo fcinfo, MetricType type, MetricKey *key);
static void MetricsReadLabels(FunctionCallInfo fcinfo, int argno, MetricType type, MetricKey *key);
static double MetricsReadValue(FunctionCallInfo fcinfo, MetricType type);
static int	MetricsReadBuckets(FunctionCallInfo fcinfo, int argno, double *bounds);
static void MetricsUpdate(MetricType type, const MetricKey *key, MetricOp op,
						  double value, int nbuckets, const double *bounds);
static MetricSeries *MetricsAddSeries(MetricType type, const MetricKey *key,
									  int nbuckets, const double *bounds);
static void MetricsApply(MetricSeries *series, MetricOp op, double value,
						 const double *bounds);
static void MetricsAppendValue(StringInfo out, double value);
static void MetricsCollectRegistry(StringInfo out);
static void MetricsCollectSelf(StringInfo out);
static Jsonb *MetricsLabelsJsonb(const char *labels);
static bool MetricsBucketsDiffer(const MetricFamily *family, int nbuckets, const double *bounds);
static Datum MetricsSqlUpdate(FunctionCallInfo fcinfo, MetricType type, MetricOp op,
							  const char *function);
static int	MetricsCompareSeries(const void *a, const void *b);
static int	MetricsCompareFamilies(const void *a, const void *b);

/*
 * Define the registry's GUCs and reserve its shared memory.
 */
void
InfraMetricsInit(void)
{
	InfraShmemSegment seg = {
		.name = "infra metrics",
		.size = MetricsShmemSize,
		.extra = MetricsHashSize,
		.nlocks = 1,
		.init = MetricsShmemInit,
		.pointer = (void **) &metrics_shared,
	};

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("infra.metrics_max_series",
							"Series (name and labels) the metrics registry holds; about 1 kB each.",
							"Past it, a new series is an error.",
							&infra_metrics_max_series,
							5000, 10, 1000000,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);
	InfraShmemRegister(&seg);
}

static Size
MetricsShmemSize(void)
{
	return sizeof(MetricsShared);
}

static Size
MetricsHashSize(void)
{
	return add_size(hash_estimate_size(infra_metrics_max_series, sizeof(MetricFamily)),
					hash_estimate_size(infra_metrics_max_series, sizeof(MetricSeries)));
}

static void
MetricsShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	MetricsShared *shared = (MetricsShared *) segment;
	HASHCTL		info;

	if (!found)
	{
		shared->lock = &locks[0].lock;
		shared->nseries = 0;
		pg_atomic_init_u64(&shared->rejected, 0);
	}
	memset(&info, 0, sizeof(info));
	info.keysize = METRIC_NAME_LEN;
	info.entrysize = sizeof(MetricFamily);
	family_hash = ShmemInitHash("infra metric families",
								infra_metrics_max_series, infra_metrics_max_series,
								&info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(MetricKey);
	info.entrysize = sizeof(MetricSeries);
	series_hash = ShmemInitHash("infra metric series",
								infra_metrics_max_series, infra_metrics_max_series,
								&info, HASH_ELEM | HASH_BLOBS | HASH_FIXED_SIZE);
}

/* ---------------------------------------------------------------------------
 * SQL entry points
 * ---------------------------------------------------------------------------
 */

/*
 * The common body of counter_inc, gauge_set and gauge_add: name, value,
 * labels, then the update.
 */
static Datum
MetricsSqlUpdate(FunctionCallInfo fcinfo, MetricType type, MetricOp op, const char *function)
{
	MetricKey	key;
	double		value;

	InfraShmemRequire(function);
	MetricsReadName(fcinfo, type, &key);
	value = MetricsReadValue(fcinfo, type);
	MetricsReadLabels(fcinfo, 2, type, &key);
	MetricsUpdate(type, &key, op, value, 0, NULL);
	PG_RETURN_VOID();
}

/*
 * infra.counter_inc(name, value, labels): add a non-negative amount.
 */
Datum
infra_counter_inc(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();

	return MetricsSqlUpdate(fcinfo, METRIC_COUNTER, METRIC_OP_INC, "infra.counter_inc()");
}

/*
 * infra.gauge_set(name, value, labels)
 */
Datum
infra_gauge_set(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();

	return MetricsSqlUpdate(fcinfo, METRIC_GAUGE, METRIC_OP_SET, "infra.gauge_set()");
}

/*
 * infra.gauge_add(name, value, labels): value may be negative.
 */
Datum
infra_gauge_add(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();

	return MetricsSqlUpdate(fcinfo, METRIC_GAUGE, METRIC_OP_ADD, "infra.gauge_add()");
}

/*
 * infra.histogram_observe(name, value, labels, buckets): buckets (upper
 * bounds, increasing) are fixed by the family's first series; NULL takes
 * those, or Prometheus' defaults for a new family.
 */
Datum
infra_histogram_observe(PG_FUNCTION_ARGS)
{
	MetricKey	key;
	double		value;
	double		bounds[METRIC_MAX_BUCKETS];
	int			nbuckets;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.histogram_observe()");
	MetricsReadName(fcinfo, METRIC_HISTOGRAM, &key);
	value = MetricsReadValue(fcinfo, METRIC_HISTOGRAM);
	MetricsReadLabels(fcinfo, 2, METRIC_HISTOGRAM, &key);
	nbuckets = MetricsReadBuckets(fcinfo, 3, bounds);
	MetricsUpdate(METRIC_HISTOGRAM, &key, METRIC_OP_OBSERVE, value, nbuckets, bounds);
	PG_RETURN_VOID();
}

/*
 * Check the name against Prometheus' rule [a-zA-Z_:][a-zA-Z0-9_:]* and
 * infra's own, and store it (with "_total" for a counter) in the key.
 */
static void
MetricsReadName(FunctionCallInfo fcinfo, MetricType type, MetricKey *key)
{
	text	   *arg;
	const char *p;
	int			len;
	int			i;

	memset(key, 0, sizeof(MetricKey));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("metric name must not be null")));
	arg = PG_GETARG_TEXT_PP(0);
	p = VARDATA_ANY(arg);
	len = VARSIZE_ANY_EXHDR(arg);
	if (len == 0 || len > METRIC_NAME_LEN - 1 - 6)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metric name must be 1 to %d characters", METRIC_NAME_LEN - 1 - 6)));
	for (i = 0; i < len; i++)
	{
		char		c = p[i];

		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
			  (i > 0 && c >= '0' && c <= '9')))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid metric name \"%s\"", text_to_cstring(arg)),
					 errdetail("Prometheus metric names match [a-zA-Z_:][a-zA-Z0-9_:]*."),
					 errhint("Use letters, digits, underscores and colons, as in \"orders_placed\".")));
	}
	memcpy(key->name, p, len);
	if (strncmp(key->name, "infra_", 6) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_RESERVED_NAME),
				 errmsg("metric name \"%s\" is reserved", key->name),
				 errdetail("Names starting with \"infra_\" are infra's built-in series."),
				 errhint("Choose a prefix of your application's.")));
	if (type == METRIC_COUNTER && (len < 6 || strcmp(key->name + len - 6, "_total") != 0))
		memcpy(key->name + len, "_total", 6);
}

/*
 * A label name must follow Prometheus' rules and not be reserved (names
 * starting with "__"; "le" on a histogram).
 */
static void
MetricsCheckLabelName(const char *name, MetricType type)
{
	const char *c;

	for (c = name; *c; c++)
	{
		if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || *c == '_' ||
			  (c > name && *c >= '0' && *c <= '9')))
			break;
	}
	if (*c != '\0' || *name == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid metric label name \"%s\"", name),
				 errdetail("Prometheus label names match [a-zA-Z_][a-zA-Z0-9_]*."),
				 errhint("Use letters, digits and underscores.")));
	if (strncmp(name, "__", 2) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_RESERVED_NAME),
				 errmsg("metric label name \"%s\" is reserved", name),
				 errdetail("Label names starting with \"__\" are Prometheus' own.")));
	if (type == METRIC_HISTOGRAM && strcmp(name, "le") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_RESERVED_NAME),
				 errmsg("metric label name \"le\" is reserved for histogram buckets")));
}

/*
 * A label's value as text: a JSON string, number or boolean.
 */
static char *
MetricsLabelValue(const JsonbValue *v, const char *name)
{
	switch (v->type)
	{
		case jbvString:
			return pnstrdup(v->val.string.val, v->val.string.len);
		case jbvNumeric:
			return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
		case jbvBool:
			return pstrdup(v->val.boolean ? "true" : "false");
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("value of metric label \"%s\" must be a string, number or boolean", name)));
	}
	return NULL;				/* keep compiler quiet */
}

/*
 * Render the labels (a jsonb object of scalars) sorted by name into the key.
 * NULL means none.
 */
static void
MetricsReadLabels(FunctionCallInfo fcinfo, int argno, MetricType type, MetricKey *key)
{
	Jsonb	   *labels;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	LabelPair  *pairs;
	int			npairs = 0;
	int			count;
	StringInfoData buf;
	int			i;

	if (PG_ARGISNULL(argno))
		return;
	labels = PG_GETARG_JSONB_P(argno);
	if (!JB_ROOT_IS_OBJECT(labels))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metric labels must be a JSON object"),
				 errhint("Pass labels as '{\"name\": \"value\"}'.")));
	count = JB_ROOT_COUNT(labels);
	if (count == 0)
		return;

	pairs = palloc(sizeof(LabelPair) * count);
	it = JsonbIteratorInit(&labels->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok != WJB_KEY)
			continue;
		pairs[npairs].name = pnstrdup(v.val.string.val, v.val.string.len);
		MetricsCheckLabelName(pairs[npairs].name, type);
		tok = JsonbIteratorNext(&it, &v, true);
		Assert(tok == WJB_VALUE);
		pairs[npairs].value = MetricsLabelValue(&v, pairs[npairs].name);
		npairs++;
	}

	/* jsonb sorts keys by length first; Prometheus readers expect names. */
	for (i = 1; i < npairs; i++)
	{
		LabelPair	p = pairs[i];
		int			j = i - 1;

		while (j >= 0 && strcmp(pairs[j].name, p.name) > 0)
		{
			pairs[j + 1] = pairs[j];
			j--;
		}
		pairs[j + 1] = p;
	}
	initStringInfo(&buf);
	for (i = 0; i < npairs; i++)
		MetricsAppendLabel(&buf, pairs[i].name, pairs[i].value);
	if (buf.len >= METRIC_LABELS_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("metric labels are too long (%d bytes rendered, at most %d)",
						buf.len, METRIC_LABELS_LEN - 1),
				 errhint("Use fewer or shorter labels.")));
	memcpy(key->labels, buf.data, buf.len);
}

/*
 * The value argument: finite; a counter's not negative.
 */
static double
MetricsReadValue(FunctionCallInfo fcinfo, MetricType type)
{
	double		value;

	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("metric value must not be null")));
	value = PG_GETARG_FLOAT8(1);
	if (isnan(value) || isinf(value))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("metric value must be finite"),
				 errhint("NaN and infinities cannot be exposed to Prometheus as a sample; record a finite value.")));
	if (type == METRIC_COUNTER && value < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("counter increment must not be negative"),
				 errhint("Counters only go up; use a gauge (infra.gauge_add) for a value that goes down.")));
	return value;
}

/*
 * Bucket bounds of a histogram: NULL gives 0 (the family's, or defaults).
 */
static int
MetricsReadBuckets(FunctionCallInfo fcinfo, int argno, double *bounds)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			i;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return 0;
	arr = PG_GETARG_ARRAYTYPE_P(argno);
	deconstruct_array(arr, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, &n);
	if (n < 1 || n > METRIC_MAX_BUCKETS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a histogram has 1 to %d bucket bounds, not %d", METRIC_MAX_BUCKETS, n),
				 errhint("+Inf is implicit; list the finite upper bounds.")));
	for (i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("histogram bucket bounds must not be null")));
		bounds[i] = DatumGetFloat8(elems[i]);
		if (isnan(bounds[i]) || isinf(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1]))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("histogram bucket bounds must be finite and strictly increasing"),
					 errhint("+Inf is implicit; list the finite upper bounds in increasing order.")));
	}
	return n;
}

/*
 * Were other bucket bounds given than the family's?  (None given: no.)
 */
static bool
MetricsBucketsDiffer(const MetricFamily *family, int nbuckets, const double *bounds)
{
	return nbuckets > 0 &&
		(nbuckets != family->nbuckets ||
		 memcmp(bounds, family->bounds, sizeof(double) * nbuckets) != 0);
}

/*
 * Find the series (adding it if new) and apply the operation.  A type or
 * buckets that differ from the family's go to the exclusive path too, which
 * reports them.
 */
static void
MetricsUpdate(MetricType type, const MetricKey *key, MetricOp op, double value,
			  int nbuckets, const double *bounds)
{
	MetricSeries *series;
	MetricFamily *family = NULL;

	LWLockAcquire(metrics_shared->lock, LW_SHARED);
	series = (MetricSeries *) hash_search(series_hash, key, HASH_FIND, NULL);
	if (series != NULL && type == METRIC_HISTOGRAM)
		family = (MetricFamily *) hash_search(family_hash, key->name, HASH_FIND, NULL);
	if (series == NULL || series->type != type ||
		(family != NULL && MetricsBucketsDiffer(family, nbuckets, bounds)))
	{
		LWLockRelease(metrics_shared->lock);
		LWLockAcquire(metrics_shared->lock, LW_EXCLUSIVE);
		series = MetricsAddSeries(type, key, nbuckets, bounds);
		if (type == METRIC_HISTOGRAM)
			family = (MetricFamily *) hash_search(family_hash, key->name, HASH_FIND, NULL);
	}
	Assert(type != METRIC_HISTOGRAM || family != NULL);
	MetricsApply(series, op, value, family != NULL ? family->bounds : NULL);
	LWLockRelease(metrics_shared->lock);
}

/*
 * Does the registry have a family of this name (or a histogram whose
 * samples take it)?  For metric queries, whose families must not be the
 * registry's.
 */
bool
MetricsFamilyExists(const char *name)
{
	static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
	char		key[METRIC_NAME_LEN * 2];
	MetricFamily *found;
	int			len = strlen(name);
	int			i;

	if (metrics_shared == NULL || len >= METRIC_NAME_LEN)
		return false;
	LWLockAcquire(metrics_shared->lock, LW_SHARED);
	memset(key, 0, sizeof(key));
	memcpy(key, name, len);
	found = hash_search(family_hash, key, HASH_FIND, NULL);
	for (i = 0; i < lengthof(suffixes) && found == NULL; i++)
	{
		int			slen = strlen(suffixes[i]);

		if (len > slen && strcmp(name + len - slen, suffixes[i]) == 0)
		{
			memset(key, 0, sizeof(key));
			memcpy(key, name, len - slen);
			found = hash_search(family_hash, key, HASH_FIND, NULL);
			if (found != NULL && found->type != METRIC_HISTOGRAM)
				found = NULL;
		}
	}
	LWLockRelease(metrics_shared->lock);
	return found != NULL;
}

/*
 * A new family must not make the exposition ambiguous: a histogram's sample
 * names (name_bucket, name_sum, name_count) must not be another family's,
 * nor may a new name be one of an existing histogram's.
 */
static void
MetricsCheckNameClash(MetricType type, const MetricKey *key)
{
	static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
	int			len = strlen(key->name);
	int			i;

	for (i = 0; i < lengthof(suffixes); i++)
	{
		char		other[METRIC_NAME_LEN * 2];
		int			slen = strlen(suffixes[i]);
		MetricFamily *clash = NULL;

		/* Hash keys are compared as whole, zero-filled buffers. */
		memset(other, 0, sizeof(other));
		if (type == METRIC_HISTOGRAM)
		{
			snprintf(other, sizeof(other), "%s%s", key->name, suffixes[i]);
			if (strlen(other) < METRIC_NAME_LEN)
				clash = hash_search(family_hash, other, HASH_FIND, NULL);
		}
		else if (len > slen && strcmp(key->name + len - slen, suffixes[i]) == 0)
		{
			memcpy(other, key->name, len - slen);
			clash = hash_search(family_hash, other, HASH_FIND, NULL);
			if (clash != NULL && clash->type != METRIC_HISTOGRAM)
				clash = NULL;
		}
		if (clash != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_DUPLICATE_OBJECT),
					 errmsg("metric \"%s\" would clash with %s \"%s\" in the exposition",
							key->name, type_names[clash->type], clash->name),
					 errhint("A histogram exposes name_bucket, name_sum and name_count; use another name.")));
	}
}

/*
 * Under the exclusive lock: a new family for the key's name, with its
 * buckets fixed (the given ones, else Prometheus' defaults) if a histogram.
 */
static MetricFamily *
MetricsAddFamily(MetricType type, const MetricKey *key, int nbuckets, const double *bounds)
{
	MetricFamily *family;
	bool		found;

	MetricsCheckNameClash(type, key);
	family = (MetricFamily *) hash_search(family_hash, key->name, HASH_ENTER_NULL, &found);
	if (family == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of shared memory for metric families")));
	family->type = type;
	family->nseries = 0;
	family->nbuckets = 0;
	if (type == METRIC_HISTOGRAM)
	{
		if (nbuckets == 0)
		{
			nbuckets = lengthof(default_buckets);
			bounds = default_buckets;
		}
		family->nbuckets = nbuckets;
		memcpy(family->bounds, bounds, sizeof(double) * nbuckets);
	}
	return family;
}

/*
 * Under the exclusive lock: the series of the key, added if it is new,
 * with its family checked (type, buckets) or created.  Errors release the
 * lock through the usual abort path.
 */
static MetricSeries *
MetricsAddSeries(MetricType type, const MetricKey *key, int nbuckets, const double *bounds)
{
	MetricFamily *family;
	MetricSeries *series;
	bool		found;

	family = (MetricFamily *) hash_search(family_hash, key->name, HASH_FIND, NULL);
	if (family != NULL && family->type != type)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("metric \"%s\" is a %s, not a %s",
						key->name, type_names[family->type], type_names[type]),
				 errhint("A metric name has one type; use another name.")));
	if (family != NULL && type == METRIC_HISTOGRAM && MetricsBucketsDiffer(family, nbuckets, bounds))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("histogram \"%s\" already has other bucket bounds", key->name),
				 errhint("Pass the same buckets, or NULL to use the ones it has.")));

	series = (MetricSeries *) hash_search(series_hash, key, HASH_FIND, NULL);
	if (series != NULL)
		return series;

	if (metrics_shared->nseries >= infra_metrics_max_series)
	{
		pg_atomic_fetch_add_u64(&metrics_shared->rejected, 1);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many metric series: infra.metrics_max_series is %d",
						infra_metrics_max_series),
				 errdetail("Series \"%s{%s}\" would be new.", key->name, key->labels),
				 errhint("Use fewer distinct label values, remove series with infra.metrics_reset(), or raise infra.metrics_max_series.")));
	}

	if (family == NULL)
		family = MetricsAddFamily(type, key, nbuckets, bounds);

	series = (MetricSeries *) hash_search(series_hash, key, HASH_ENTER_NULL, &found);
	if (series == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of shared memory for metric series")));
	series->type = type;
	series->nbuckets = family->nbuckets;
	SpinLockInit(&series->mutex);
	series->value = 0;
	series->sum = 0;
	series->count = 0;
	memset(series->buckets, 0, sizeof(series->buckets));
	series->updated_at = 0;
	family->nseries++;
	metrics_shared->nseries++;
	return series;
}

/*
 * Apply one update under the series' spinlock.
 */
static void
MetricsApply(MetricSeries *series, MetricOp op, double value, const double *bounds)
{
	TimestampTz now = GetCurrentTimestamp();
	int			b = 0;

	if (op == METRIC_OP_OBSERVE)
	{
		/* The first bucket whose upper bound holds the value; past all: +Inf. */
		while (b < series->nbuckets && value > bounds[b])
			b++;
	}
	SpinLockAcquire(&series->mutex);
	switch (op)
	{
		case METRIC_OP_INC:
		case METRIC_OP_ADD:
			series->value += value;
			break;
		case METRIC_OP_SET:
			series->value = value;
			break;
		case METRIC_OP_OBSERVE:
			series->sum += value;
			series->count++;
			if (b < series->nbuckets)
				series->buckets[b]++;
			break;
	}
	series->updated_at = now;
	SpinLockRelease(&series->mutex);
}

/*
 * infra.metrics_reset(name): remove the series of one metric (by its
 * exposed name, or the name given to counter_inc), or all; returns how many.
 */
Datum
infra_metrics_reset(PG_FUNCTION_ARGS)
{
	char	   *name = PG_ARGISNULL(0) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(0));
	char		total[METRIC_NAME_LEN + 8];
	HASH_SEQ_STATUS scan;
	MetricSeries *series;
	int64		removed = 0;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.metrics_reset()");
	if (name != NULL)
		snprintf(total, sizeof(total), "%s_total", name);
	LWLockAcquire(metrics_shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&scan, series_hash);
	while ((series = (MetricSeries *) hash_seq_search(&scan)) != NULL)
	{
		MetricFamily *family;

		if (name != NULL && strcmp(series->key.name, name) != 0 &&
			!(series->type == METRIC_COUNTER && strcmp(series->key.name, total) == 0))
			continue;
		family = (MetricFamily *) hash_search(family_hash, series->key.name, HASH_FIND, NULL);
		if (family != NULL && --family->nseries == 0)
			hash_search(family_hash, series->key.name, HASH_REMOVE, NULL);
		hash_search(series_hash, &series->key, HASH_REMOVE, NULL);
		metrics_shared->nseries--;
		removed++;
	}
	LWLockRelease(metrics_shared->lock);
	PG_RETURN_INT64(removed);
}

/*
 * infra.metrics(): one row per series of the registry.
 */
Datum
infra_metrics(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS scan;
	MetricSeries *series;
	MetricSeries *copies;
	double	   *bounds;
	int			n = 0;
	int			i;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.metrics()");
	InitMaterializedSRF(fcinfo, 0);

	LWLockAcquire(metrics_shared->lock, LW_SHARED);
	copies = palloc(sizeof(MetricSeries) * Max(metrics_shared->nseries, 1));
	bounds = palloc(sizeof(double) * METRIC_MAX_BUCKETS * Max(metrics_shared->nseries, 1));
	hash_seq_init(&scan, series_hash);
	while ((series = (MetricSeries *) hash_seq_search(&scan)) != NULL)
	{
		SpinLockAcquire(&series->mutex);
		memcpy(&copies[n], series, sizeof(MetricSeries));
		SpinLockRelease(&series->mutex);
		if (series->type == METRIC_HISTOGRAM)
		{
			MetricFamily *family = hash_search(family_hash, series->key.name, HASH_FIND, NULL);

			memcpy(&bounds[n * METRIC_MAX_BUCKETS], family->bounds,
				   sizeof(double) * family->nbuckets);
		}
		n++;
	}
	LWLockRelease(metrics_shared->lock);

	for (i = 0; i < n; i++)
	{
		MetricSeries *s = &copies[i];
		Datum		values[9];
		bool		nulls[9];

		memset(nulls, 0, sizeof(nulls));
		values[0] = CStringGetTextDatum(s->key.name);
		values[1] = CStringGetTextDatum(type_names[s->type]);
		values[2] = JsonbPGetDatum(MetricsLabelsJsonb(s->key.labels));
		values[3] = Float8GetDatum(s->value);
		nulls[3] = s->type == METRIC_HISTOGRAM;
		values[4] = Int64GetDatum(s->count);
		values[5] = Float8GetDatum(s->sum);
		nulls[4] = nulls[5] = s->type != METRIC_HISTOGRAM;
		nulls[6] = nulls[7] = s->type != METRIC_HISTOGRAM;
		if (!nulls[6])
		{
			/* Upper bounds, and cumulative counts with +Inf's last. */
			Datum	   *b = palloc(sizeof(Datum) * s->nbuckets);
			Datum	   *c = palloc(sizeof(Datum) * (s->nbuckets + 1));
			int64		cumulative = 0;
			int			k;

			for (k = 0; k < s->nbuckets; k++)
			{
				b[k] = Float8GetDatum(bounds[i * METRIC_MAX_BUCKETS + k]);
				cumulative += s->buckets[k];
				c[k] = Int64GetDatum(cumulative);
			}
			c[s->nbuckets] = Int64GetDatum(s->count);
			values[6] = PointerGetDatum(construct_array(b, s->nbuckets, FLOAT8OID, sizeof(float8),
														FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
			values[7] = PointerGetDatum(construct_array(c, s->nbuckets + 1, INT8OID, sizeof(int64),
														FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
		}
		values[8] = TimestampTzGetDatum(s->updated_at);
		nulls[8] = s->updated_at == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/*
 * A rendered label set back as a jsonb object of strings.
 */
static Jsonb *
MetricsLabelsJsonb(const char *labels)
{
	StringInfoData json;
	const char *p = labels;

	initStringInfo(&json);
	appendStringInfoChar(&json, '{');
	while (*p)
	{
		StringInfoData value;
		const char *eq = strchr(p, '=');

		initStringInfo(&value);
		if (json.len > 1)
			appendStringInfoString(&json, ", ");
		appendBinaryStringInfo(&json, "\"", 1);
		appendBinaryStringInfo(&json, p, eq - p);
		appendBinaryStringInfo(&json, "\": ", 3);
		p = eq + 2;				/* past =" */
		while (*p != '"')
		{
			if (*p == '\\')
			{
				p++;
				appendStringInfoChar(&value, *p == 'n' ? '\n' : *p);
			}
			else
				appendStringInfoChar(&value, *p);
			p++;
		}
		p++;					/* past the closing quote */
		if (*p == ',')
			p++;
		escape_json(&json, value.data);
		pfree(value.data);
	}
	appendStringInfoChar(&json, '}');
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(json.data)));
}

/* ---------------------------------------------------------------------------
 * Exposition
 * ---------------------------------------------------------------------------
 */

/*
 * infra.metrics_prometheus(): what GET /metrics serves.
 */
Datum
infra_metrics_prometheus(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.metrics_prometheus()");
	PG_RETURN_TEXT_P(cstring_to_text(MetricsExposition()));
}

/*
 * Add a module's collector of built-in series.  Like shared memory, only
 * while the library is preloaded: elsewhere there is nothing to collect.
 */
void
MetricsRegisterCollector(MetricsCollector collector)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	if (ncollectors >= METRICS_MAX_COLLECTORS)
		elog(ERROR, "too many infra metrics collectors");
	collectors[ncollectors++] = collector;
}

/*
 * The whole exposition, palloc'd in the current context: the built-in
 * series of every module that registered a collector, then the registry's.  Reads shared memory only,
 * so it needs no transaction or database (the HTTP worker has neither).
 */
char *
MetricsExposition(void)
{
	StringInfoData out;

	int			i;

	initStringInfo(&out);
	for (i = 0; i < ncollectors; i++)
		collectors[i] (&out);
	MetricsCollectSelf(&out);
	MetricsCollectRegistry(&out);
	return out.data;
}

/*
 * # HELP and # TYPE lines of a family.  HELP escapes \ and newline.
 */
void
MetricsWriteFamily(StringInfo out, const char *name, const char *type, const char *help)
{
	const char *c;

	appendStringInfo(out, "# HELP %s ", name);
	for (c = help; *c; c++)
	{
		if (*c == '\\')
			appendStringInfoString(out, "\\\\");
		else if (*c == '\n')
			appendStringInfoString(out, "\\n");
		else
			appendStringInfoChar(out, *c);
	}
	appendStringInfo(out, "\n# TYPE %s %s\n", name, type);
}

/*
 * A family of one unlabelled sample: HELP, TYPE and the sample.
 */
void
MetricsWriteOne(StringInfo out, const char *name, const char *type, const char *help, double value)
{
	MetricsWriteFamily(out, name, type, help);
	MetricsWriteSample(out, name, NULL, value);
}

/*
 * One sample line.
 */
void
MetricsWriteSample(StringInfo out, const char *name, const char *labels, double value)
{
	appendStringInfoString(out, name);
	if (labels != NULL && labels[0] != '\0')
		appendStringInfo(out, "{%s}", labels);
	appendStringInfoChar(out, ' ');
	MetricsAppendValue(out, value);
	appendStringInfoChar(out, '\n');
}

/*
 * Append name="value" to a label set, escaping \, " and newline.
 */
void
MetricsAppendLabel(StringInfo labels, const char *name, const char *value)
{
	const char *c;

	if (labels->len > 0)
		appendStringInfoChar(labels, ',');
	appendStringInfo(labels, "%s=\"", name);
	for (c = value; *c; c++)
	{
		if (*c == '\\' || *c == '"')
		{
			appendStringInfoChar(labels, '\\');
			appendStringInfoChar(labels, *c);
		}
		else if (*c == '\n')
			appendStringInfoString(labels, "\\n");
		else
			appendStringInfoChar(labels, *c);
	}
	appendStringInfoChar(labels, '"');
}

/*
 * A sample value as Prometheus parses it: the shortest decimal that reads
 * back as the same double (0.005, not 0.0050000000000000001).
 */
static void
MetricsAppendValue(StringInfo out, double value)
{
	char		buf[DOUBLE_SHORTEST_DECIMAL_LEN];

	if (isnan(value))
		appendStringInfoString(out, "NaN");
	else if (isinf(value))
		appendStringInfoString(out, value > 0 ? "+Inf" : "-Inf");
	else
	{
		double_to_shortest_decimal_buf(value, buf);
		appendStringInfoString(out, buf);
	}
}

/*
 * The registry's own size.
 */
static void
MetricsCollectSelf(StringInfo out)
{
	int			nseries;

	LWLockAcquire(metrics_shared->lock, LW_SHARED);
	nseries = metrics_shared->nseries;
	LWLockRelease(metrics_shared->lock);
	MetricsWriteOne(out, "infra_metrics_series", "gauge",
					"Series in the metrics registry.", nseries);
	MetricsWriteOne(out, "infra_metrics_series_max", "gauge",
					"infra.metrics_max_series: series the registry holds at most.",
					infra_metrics_max_series);
	MetricsWriteOne(out, "infra_metrics_series_rejected_total", "counter",
					"New series refused because the registry was full.",
					(double) pg_atomic_read_u64(&metrics_shared->rejected));
}

/* Series copied out for the exposition, sorted by name and labels. */
static int
MetricsCompareSeries(const void *a, const void *b)
{
	const MetricSeries *x = (const MetricSeries *) a;
	const MetricSeries *y = (const MetricSeries *) b;
	int			c = strcmp(x->key.name, y->key.name);

	return c != 0 ? c : strcmp(x->key.labels, y->key.labels);
}

static int
MetricsCompareFamilies(const void *a, const void *b)
{
	return strcmp(((const MetricFamily *) a)->name, ((const MetricFamily *) b)->name);
}

/*
 * The registry's series, grouped by family.
 */
static void
MetricsCollectRegistry(StringInfo out)
{
	HASH_SEQ_STATUS scan;
	MetricSeries *series;
	MetricSeries *copies;
	MetricFamily *families;
	int			nfamilies = 0;
	int			n = 0;
	int			i;
	int			f = 0;

	LWLockAcquire(metrics_shared->lock, LW_SHARED);
	copies = palloc(sizeof(MetricSeries) * Max(metrics_shared->nseries, 1));
	families = palloc(sizeof(MetricFamily) * Max(metrics_shared->nseries, 1));
	hash_seq_init(&scan, series_hash);
	while ((series = (MetricSeries *) hash_seq_search(&scan)) != NULL)
	{
		SpinLockAcquire(&series->mutex);
		memcpy(&copies[n++], series, sizeof(MetricSeries));
		SpinLockRelease(&series->mutex);
	}
	{
		MetricFamily *family;

		hash_seq_init(&scan, family_hash);
		while ((family = (MetricFamily *) hash_seq_search(&scan)) != NULL)
			memcpy(&families[nfamilies++], family, sizeof(MetricFamily));
	}
	LWLockRelease(metrics_shared->lock);

	qsort(copies, n, sizeof(MetricSeries), MetricsCompareSeries);
	qsort(families, nfamilies, sizeof(MetricFamily), MetricsCompareFamilies);

	for (i = 0; i < n; i++)
	{
		MetricSeries *s = &copies[i];

		if (i == 0 || strcmp(s->key.name, copies[i - 1].key.name) != 0)
		{
			char		help[METRIC_NAME_LEN + 64];

			snprintf(help, sizeof(help), "Recorded with infra.%s().",
					 s->type == METRIC_COUNTER ? "counter_inc" :
					 s->type == METRIC_GAUGE ? "gauge_set/gauge_add" : "histogram_observe");
			MetricsWriteFamily(out, s->key.name, type_names[s->type], help);
			while (f < nfamilies && strcmp(families[f].name, s->key.name) < 0)
				f++;
		}
		if (s->type != METRIC_HISTOGRAM)
			MetricsWriteSample(out, s->key.name, s->key.labels, s->value);
		else
		{
			char		name[METRIC_NAME_LEN + 16];
			StringInfoData labels;
			int64		cumulative = 0;
			int			b;

			Assert(f < nfamilies && strcmp(families[f].name, s->key.name) == 0);
			initStringInfo(&labels);
			snprintf(name, sizeof(name), "%s_bucket", s->key.name);
			for (b = 0; b <= s->nbuckets; b++)
			{
				char		le[64];
				StringInfoData bound;

				resetStringInfo(&labels);
				appendStringInfoString(&labels, s->key.labels);
				initStringInfo(&bound);
				if (b < s->nbuckets)
				{
					MetricsAppendValue(&bound, families[f].bounds[b]);
					cumulative += s->buckets[b];
				}
				else
				{
					appendStringInfoString(&bound, "+Inf");
					cumulative = s->count;
				}
				strlcpy(le, bound.data, sizeof(le));
				MetricsAppendLabel(&labels, "le", le);
				MetricsWriteSample(out, name, labels.data, (double) cumulative);
			}
			snprintf(name, sizeof(name), "%s_sum", s->key.name);
			MetricsWriteSample(out, name, s->key.labels, s->sum);
			snprintf(name, sizeof(name), "%s_count", s->key.name);
			MetricsWriteSample(out, name, s->key.labels, (double) s->count);
		}
	}
}
