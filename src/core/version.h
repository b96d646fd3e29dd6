/*-------------------------------------------------------------------------
 *
 * version.h
 *		Does the library match the extension's SQL objects in this database?
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_VERSION_H
#define INFRA_VERSION_H

#include "postgres.h"

/*
 * The first statement of every SQL-callable C function but infra.version()
 * and the two that only validate or signal a change to configuration rows
 * (so that a DBA can edit those before updating): an error naming both
 * versions when the library does not serve the installed SQL objects (its
 * own version's and the previous release's it does; checked again after
 * any extension changes, see version.c).
 */
#define INFRA_CHECK_SCHEMA()	InfraCheckSchemaVersion()

extern void InfraCheckSchemaVersion(void);
extern void InfraVersionInit(void);
extern bool InfraSchemaVersionMatches(char *installed, Size size);
extern bool InfraSchemaIsPrevious(void);

#endif							/* INFRA_VERSION_H */
