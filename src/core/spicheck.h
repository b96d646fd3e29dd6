/*-------------------------------------------------------------------------
 *
 * spicheck.h
 *		Checked SPI results and the pinned search_path of infra's statements.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_SPICHECK_H
#define INFRA_SPICHECK_H

#include "postgres.h"

#include "executor/spi.h"

/* The search_path infra's own sessions and SECURITY DEFINER code run with. */
#define INFRA_SAFE_SEARCH_PATH "pg_catalog, pg_temp"

extern void SpiCheckResult(int ret, int expected, const char *what,
						   int ncols, const Oid *types);
extern Datum SpiGetValue(uint64 row, int col, bool null_ok, bool *isnull,
						 const char *what);
extern void SpiExecKept(SPIPlanPtr *plan, const char *sql, int nargs, Oid *argtypes,
						Datum *args, const char *nulls, bool read_only, int expected,
						const char *what, int ncols, const Oid *types);
extern uint64 SpiExecKeptAs(Oid role, SPIPlanPtr *plan, const char *sql, int nargs,
							Oid *argtypes, Datum *args, const char *nulls, bool read_only,
							int expected, const char *what, Datum *first);
extern void InfraPinSearchPath(void);

#endif							/* INFRA_SPICHECK_H */
