/*-------------------------------------------------------------------------
 *
 * version.c
 *		The library's version against the installed SQL objects' version.
 *
 * A library serves the SQL objects of its own version and, from 1.2 on,
 * those of the release before it (INFRA_PREVIOUS_VERSION), so that after a
 * new library is installed and PostgreSQL restarted every database keeps
 * working until ALTER EXTENSION infra UPDATE is run in it, database by
 * database, as PostgreSQL's own extensions allow.  Where the two releases'
 * objects differ, the modules ask InfraSchemaIsPrevious() and use the older
 * form (a configuration query without 1.2's owner columns; a view's
 * function returns the columns its older declaration names, which
 * InitMaterializedSRF's tuple descriptor takes care of).  Older objects
 * than that, or a library older than the objects, are refused: every
 * SQL-callable function checks (INFRA_CHECK_SCHEMA) and raises an error
 * naming both versions and what to run; the infra worker and the trace
 * exporter wait, serving nothing, until the versions agree.  Nothing is
 * checked while an extension script runs (CREATE or ALTER EXTENSION
 * itself).
 *
 * The check reads pg_extension, a catalog scan: too dear for every call of
 * rate_limit or breaker_allow.  A backend keeps a successful check until an
 * extension is created, updated or dropped anywhere in the cluster: the
 * backend that does it moves a generation in shared memory when its
 * transaction commits (visible by then), and the others look again when
 * they see it move.  Without shared memory (not preloaded) the check is
 * made once per transaction.
 *
 * Called by every module's SQL functions, by worker.c and otlp.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "access/xact.h"
#include "catalog/objectaccess.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"

#include "core/infra.h"
#include "core/shmem.h"
#include "core/version.h"

/* Versions of infra released before this library's, oldest first. */
static const char *const older_versions[] = {"1.0", "1.1"};

/*
 * The release before this library's: its SQL objects are served too, until
 * ALTER EXTENSION infra UPDATE brings them to INFRA_VERSION.
 */
#define INFRA_PREVIOUS_VERSION "1.1"

/* The last check found the previous release's objects in this database. */
static bool schema_is_previous = false;

/* The local transaction in which this backend last found the versions equal. */
static LocalTransactionId checked_in = InvalidLocalTransactionId;

/* Moved by every committed CREATE, ALTER or DROP EXTENSION. */
typedef struct VersionShared
{
	pg_atomic_uint64 extensions_changed;
} VersionShared;

static VersionShared *version_shared = NULL;

/* The generation at which this backend last found the versions equal (0: never). */
static uint64 checked_generation = 0;

/* This transaction created, updated or dropped an extension. */
static bool extension_changed_in_xact = false;

static object_access_hook_type prev_object_access_hook = NULL;

static Size
VersionShmemSize(void)
{
	return sizeof(VersionShared);
}

static void
VersionShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	if (!found)
		pg_atomic_init_u64(&((VersionShared *) segment)->extensions_changed, 1);
}

static void
VersionObjectAccess(ObjectAccessType access, Oid classId, Oid objectId, int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (classId == ExtensionRelationId &&
		(access == OAT_POST_CREATE || access == OAT_POST_ALTER || access == OAT_DROP))
		extension_changed_in_xact = true;
}

static void
VersionXactCallback(XactEvent event, void *arg)
{
	if (!extension_changed_in_xact)
		return;
	if ((event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT) && version_shared != NULL)
		pg_atomic_fetch_add_u64(&version_shared->extensions_changed, 1);
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
		extension_changed_in_xact = false;
}

/*
 * In _PG_init: the generation's shared memory, and what moves it.
 */
void
InfraVersionInit(void)
{
	InfraShmemSegment seg = {
		.name = "infra extension changes",
		.size = VersionShmemSize,
		.nlocks = 0,
		.init = VersionShmemInit,
		.pointer = (void **) &version_shared,
	};

	if (!process_shared_preload_libraries_in_progress)
		return;
	InfraShmemRegister(&seg);
	prev_object_access_hook = object_access_hook;
	object_access_hook = VersionObjectAccess;
	RegisterXactCallback(VersionXactCallback, NULL);
}

static bool InfraInstalledVersion(char *installed, Size size);
static bool InfraVersionIsOlder(const char *version);
static bool InfraVersionServed(const char *installed);

/*
 * The extversion of infra in this database into installed; false when infra
 * is not installed here.  Needs a transaction.
 */
static bool
InfraInstalledVersion(char *installed, Size size)
{
	Relation	rel;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tuple;
	bool		found = false;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum(INFRA_NAME));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
	{
		bool		isnull;
		Datum		value = heap_getattr(tuple, Anum_pg_extension_extversion,
										 RelationGetDescr(rel), &isnull);

		if (!isnull)
		{
			char	   *version = TextDatumGetCString(value);

			strlcpy(installed, version, size);
			pfree(version);
			found = true;
		}
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return found;
}

static bool
InfraVersionIsOlder(const char *version)
{
	int			i;

	for (i = 0; i < lengthof(older_versions); i++)
		if (strcmp(version, older_versions[i]) == 0)
			return true;
	return false;
}

/*
 * Does this library serve SQL objects of that version: its own, or the
 * previous release's?  Notes which, for InfraSchemaIsPrevious().
 */
static bool
InfraVersionServed(const char *installed)
{
	if (strcmp(installed, INFRA_VERSION) == 0)
		schema_is_previous = false;
	else if (strcmp(installed, INFRA_PREVIOUS_VERSION) == 0)
		schema_is_previous = true;
	else
		return false;
	return true;
}

/*
 * Are this database's infra objects the previous release's (served until
 * ALTER EXTENSION infra UPDATE)?  As of the last check in this process:
 * after INFRA_CHECK_SCHEMA() in a SQL-callable function, after
 * InfraSchemaVersionMatches() in a worker.
 */
bool
InfraSchemaIsPrevious(void)
{
	return schema_is_previous;
}

/*
 * For the worker and the exporter: is infra installed here at a version
 * this library serves (its own or the previous release's)?  installed gets
 * the version found ("" when none).
 */
bool
InfraSchemaVersionMatches(char *installed, Size size)
{
	installed[0] = '\0';
	if (!InfraInstalledVersion(installed, size))
		return false;
	return InfraVersionServed(installed);
}

/*
 * For SQL-callable functions: raise an error unless the installed SQL
 * objects are a version this library serves.
 */
void
InfraCheckSchemaVersion(void)
{
	char		installed[NAMEDATALEN];
	uint64		generation = 0;

	if (creating_extension)
		return;
	if (version_shared != NULL)
	{
		generation = pg_atomic_read_u64(&version_shared->extensions_changed);
		if (generation == checked_generation)
			return;
	}
	else if (checked_in == InfraLocalXid())
		return;
	if (!InfraInstalledVersion(installed, sizeof(installed)))
		installed[0] = '\0';
	if (installed[0] == '\0' || InfraVersionServed(installed))
	{
		/* Not installed: the function's own objects will say so. */
		if (installed[0] == '\0')
			schema_is_previous = false;
		checked_in = InfraLocalXid();
		checked_generation = generation;
		return;
	}
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("infra's SQL objects in database \"%s\" are version %s, but the loaded infra library is version %s",
					get_database_name(MyDatabaseId), installed, INFRA_VERSION),
			 InfraVersionIsOlder(installed) ?
			 errhint("Run ALTER EXTENSION infra UPDATE; to update them to %s.", INFRA_VERSION) :
			 errhint("Install infra %s's library (make install, or its package), then restart PostgreSQL.",
					 installed)));
}
