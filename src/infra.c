/*-------------------------------------------------------------------------
 *
 * infra.c
 *		Entry point of the infra extension.
 *
 * _PG_init only calls each module's XxxInit(); the modules define their own
 * GUCs, register their shared memory with the registry in shmem.c and
 * install their hooks.  Modules that need shared memory do nothing more than
 * define their GUCs when the library is loaded outside
 * shared_preload_libraries, and their SQL functions then raise an error that
 * says how to fix it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"

#include "core/httpd.h"
#include "core/infra.h"
#include "core/logging.h"
#include "core/metrics.h"
#include "core/shmem.h"
#include "core/tracing.h"
#include "core/version.h"
#include "core/worker.h"
#include "http/http.h"
#include "kafka/kafka.h"
#include "kafka/producer.h"
#include "kafka/series.h"
#include "kafka/standbys.h"
#include "observability/metricqueries.h"
#include "observability/otlp.h"
#include "observability/querystats.h"
#include "observability/spans.h"
#include "resilience/breaker.h"
#include "resilience/ratelimit.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(infra_version);
PG_FUNCTION_INFO_V1(infra_config_changed);

/*
 * Library load: set up every module, then reserve the "infra." GUC prefix so
 * a misspelt setting is an error instead of a silent placeholder.
 */
void
_PG_init(void)
{
	InfraShmemInit();
	InfraVersionInit();
	InfraWorkerInit();
	InfraRateLimitInit();
	InfraBreakerInit();
	InfraKafkaInit();
	InfraKafkaSeriesInit();
	InfraProducerInit();
	InfraStandbysInit();
	HttpDeliverInit();
	InfraTracingInit();
	InfraQueryStatsInit();
	InfraMetricQueriesInit();
	InfraMetricsInit();
	InfraHttpdInit();
	InfraLoggingInit();
	InfraSpansInit();
	InfraOtlpInit();

	MarkGUCPrefixReserved(INFRA_NAME);
}

/*
 * infra.version(): the version of the loaded library.
 */
Datum
infra_version(PG_FUNCTION_ARGS)
{
	PG_RETURN_TEXT_P(cstring_to_text(INFRA_VERSION));
}

/*
 * Statement trigger on infra's configuration tables (rate limiters,
 * breakers, retry policies).  Backends cache those tables and drop the copy
 * on a relcache invalidation, which DML alone does not send: send one.  It
 * is transactional, so other backends see the change when it commits.
 */
Datum
infra_config_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("infra.config_changed() must be called as a trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}
