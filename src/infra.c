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

#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "infra.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(infra_version);

/*
 * Library load: set up every module, then reserve the "infra." GUC prefix so
 * a misspelt setting is an error instead of a silent placeholder.
 */
void
_PG_init(void)
{
	InfraShmemInit();
	InfraWorkerInit();

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
