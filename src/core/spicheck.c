/*-------------------------------------------------------------------------
 *
 * spicheck.c
 *		Checked SPI results and the pinned search_path of infra's statements.
 *
 * Every statement infra runs through SPI names its tables, functions and
 * operators with their schema (OPERATOR(pg_catalog.=) included), so no
 * object a role creates on its search_path can stand in for them.  As a
 * second line, nothing is read from a result before its status, shape,
 * column types and NULLs were checked here: a result that is not what the
 * statement should return (an altered extension object, a catalog that
 * changed under us) is an error, never a misread Datum.
 *
 * Background workers run as the bootstrap superuser; InfraPinSearchPath
 * makes their search_path pg_catalog, pg_temp whatever the database's or
 * role's settings say, so that code they run from the install script
 * (CHECK constraints calling PL/pgSQL, for instance) cannot be steered by
 * a database owner's ALTER DATABASE ... SET search_path.
 *
 * No shared memory, no locks.  Called by every module that uses SPI.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "core/spicheck.h"

/*
 * Check what SPI returned for the statement described by what: the status
 * must be expected and, when types is given, the result must have exactly
 * ncols columns of those types.
 */
void
SpiCheckResult(int ret, int expected, const char *what, int ncols,
			   const Oid *types)
{
	TupleDesc	desc;
	int			i;

	if (ret != expected)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("unexpected result from %s: %s", what,
						SPI_result_code_string(ret)),
				 errdetail("Expected %s.", SPI_result_code_string(expected)),
				 errhint("Check that the objects of the infra extension were not altered; reinstall it if they were.")));
	if (types == NULL)
		return;
	if (SPI_tuptable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("unexpected result from %s: no rows returned", what),
				 errhint("Check that the objects of the infra extension were not altered; reinstall it if they were.")));
	desc = SPI_tuptable->tupdesc;
	if (desc->natts != ncols)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("unexpected result from %s: %d columns instead of %d",
						what, desc->natts, ncols),
				 errhint("Check that the objects of the infra extension were not altered; reinstall it if they were.")));
	for (i = 0; i < ncols; i++)
	{
		Oid			got = TupleDescAttr(desc, i)->atttypid;

		if (got != types[i])
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("unexpected result from %s: column %d is of type %s instead of %s",
							what, i + 1, format_type_be(got), format_type_be(types[i])),
					 errhint("Check that the objects of the infra extension were not altered; reinstall it if they were.")));
	}
}

/*
 * Column col (from 1) of row row of the last SPI result, already checked
 * with SpiCheckResult.  A NULL is an error unless null_ok; *isnull may be
 * NULL when null_ok is false.
 */
Datum
SpiGetValue(uint64 row, int col, bool null_ok, bool *isnull, const char *what)
{
	bool		null;
	Datum		value;

	if (row >= SPI_processed)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("unexpected result from %s: row " UINT64_FORMAT " of " UINT64_FORMAT,
						what, row + 1, SPI_processed)));
	value = SPI_getbinval(SPI_tuptable->vals[row], SPI_tuptable->tupdesc, col, &null);
	if (null && !null_ok)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("unexpected NULL in column %d of the result from %s", col, what),
				 errhint("Check that the objects of the infra extension were not altered; reinstall it if they were.")));
	if (isnull != NULL)
		*isnull = null;
	return value;
}

/*
 * SpiExecKept in an SPI connection of its own, as role: a restricted
 * operation (infra's tables belong to the extension's owner, and the
 * caller of kafka_send or http_send needs no right on them).  Returns the
 * rows processed; with first, the first column of the first row (a
 * by-value type; untouched when no row came).  The caller provides the
 * snapshot.
 */
uint64
SpiExecKeptAs(Oid role, SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes,
			  Datum *args, const char *nulls, bool read_only, int expected,
			  const char *what, Datum *first)
{
	Oid			save_user;
	int			save_context;
	uint64		processed = 0;

	GetUserIdAndSecContext(&save_user, &save_context);
	SetUserIdAndSecContext(role, save_context |
						   SECURITY_LOCAL_USERID_CHANGE | SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		SPI_connect();
		SpiExecKept(plan, sql, nargs, argtypes, args, nulls, read_only, expected, what, 0, NULL);
		processed = SPI_processed;
		if (first != NULL && processed > 0)
			*first = SpiGetValue(0, 1, false, NULL, what);
		SPI_finish();
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_user, save_context);
	}
	PG_END_TRY();
	return processed;
}

/*
 * Make this process's search_path pg_catalog, pg_temp for good: for
 * background workers, right after they connect to their database.
 */
void
InfraPinSearchPath(void)
{
	SetConfigOption("search_path", INFRA_SAFE_SEARCH_PATH, PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * Run a statement prepared and kept on first use (*plan; plans follow the
 * tables through the plan cache, DROP/CREATE EXTENSION included), then
 * check what it returned as SpiCheckResult does.  For workers, which run
 * the same few statements for as long as they live.
 */
void
SpiExecKept(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes,
			Datum *args, const char *nulls, bool read_only, int expected,
			const char *what, int ncols, const Oid *types)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, argtypes);

		if (p == NULL)
			elog(ERROR, "could not prepare \"%s\": %s", sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(p);
		*plan = p;
	}
	SpiCheckResult(SPI_execute_plan(*plan, args, nulls, read_only, 0),
				   expected, what, ncols, types);
}
