/*-------------------------------------------------------------------------
 *
 * compat.h
 *		The one place for PostgreSQL version differences.
 *
 * infra targets PostgreSQL 15 and later.  Every PG_VERSION_NUM test in the
 * project lives here, so that the rest of the code reads as if written for
 * one server version.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_COMPAT_H
#define INFRA_COMPAT_H

#if PG_VERSION_NUM < 150000
#error "infra requires PostgreSQL 15 or later (it uses shmem_request_hook)"
#endif

/* fmgr.h declares the module initialiser from PostgreSQL 16 on. */
#if PG_VERSION_NUM < 160000
extern PGDLLEXPORT void _PG_init(void);
#endif

/*
 * Whether this process's stderr goes to the logging collector's pipe.  The
 * postmaster defines it for elog.c without declaring it in a header (up to
 * PostgreSQL 17 at least); infra's log hook needs it to write where elog.c
 * would.
 */
extern PGDLLIMPORT bool redirection_done;

#endif							/* INFRA_COMPAT_H */
