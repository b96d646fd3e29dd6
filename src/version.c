/*-------------------------------------------------------------------------
 *
 * version.c
 *		The library's version against the installed SQL objects' version.
 *
 * A library serves the SQL objects of its own version only: after a new
 * library is installed, ALTER EXTENSION infra UPDATE brings the objects to
 * it; a library older than the objects is refused the same way.  Every
 * SQL-callable function checks once per transaction (INFRA_CHECK_SCHEMA)
 * and raises an error naming both versions and what to run; the infra
 * worker and the trace exporter wait, serving nothing, until the versions
 * agree.  Nothing is checked while an extension script runs (CREATE or
 * ALTER EXTENSION itself).
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
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"

#include "infra.h"
#include "version.h"

/* Versions of infra released before this library's, oldest first. */
static const char *const older_versions[] = {"1.0", "1.1"};

/* The local transaction in which this backend last found the versions equal. */
static LocalTransactionId checked_in = InvalidLocalTransactionId;

static bool InfraInstalledVersion(char *installed, Size size);
static bool InfraVersionIsOlder(const char *version);

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
 * For the worker and the exporter: is infra installed here at this
 * library's version?  installed gets the version found ("" when none).
 */
bool
InfraSchemaVersionMatches(char *installed, Size size)
{
	installed[0] = '\0';
	if (!InfraInstalledVersion(installed, size))
		return false;
	return strcmp(installed, INFRA_VERSION) == 0;
}

/*
 * For SQL-callable functions: raise an error unless the installed SQL
 * objects are this library's version.
 */
void
InfraCheckSchemaVersion(void)
{
	char		installed[NAMEDATALEN];

	if (checked_in == InfraLocalXid() || creating_extension)
		return;
	if (!InfraInstalledVersion(installed, sizeof(installed)) ||
		strcmp(installed, INFRA_VERSION) == 0)
	{
		/* Not installed: the function's own objects will say so. */
		checked_in = InfraLocalXid();
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
