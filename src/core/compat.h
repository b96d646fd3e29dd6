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
 * Query jumbling's header moved from utils/ to nodes/ in PostgreSQL 16.
 */
#if PG_VERSION_NUM >= 160000
#define INFRA_QUERYJUMBLE_H "nodes/queryjumble.h"
#else
#define INFRA_QUERYJUMBLE_H "utils/queryjumble.h"
#endif

/*
 * A constant's location recorded by query jumbling.  From PostgreSQL 18 the
 * jumbler also records where each $n parameter is (to renumber around
 * squashed lists), which is no constant to replace, and records a squashed
 * list "IN (1, 2, 3)" as one location whose length it knows.
 */
#if PG_VERSION_NUM >= 180000
#define InfraLocationIsParam(loc)	((loc)->extern_param)
#define InfraLocationIsList(loc)	((loc)->squashed)
#else
#define InfraLocationIsParam(loc)	((void) (loc), false)
#define InfraLocationIsList(loc)	((void) (loc), false)
#endif

/*
 * ExecutorRun lost its execute_once argument in PostgreSQL 18.
 * INFRA_EXECUTOR_RUN_PARAMS declares a hook's parameters,
 * INFRA_EXECUTOR_RUN_ARGS passes them on.
 */
#if PG_VERSION_NUM >= 180000
#define INFRA_EXECUTOR_RUN_PARAMS \
	QueryDesc *queryDesc, ScanDirection direction, uint64 count
#define INFRA_EXECUTOR_RUN_ARGS queryDesc, direction, count
#else
#define INFRA_EXECUTOR_RUN_PARAMS \
	QueryDesc *queryDesc, ScanDirection direction, uint64 count, bool execute_once
#define INFRA_EXECUTOR_RUN_ARGS queryDesc, direction, count, execute_once
#endif

/*
 * A string GUC's value lives in GUC's own memory from PostgreSQL 16 on: a
 * check hook that replaces *newval frees and allocates it with these.
 */
#if PG_VERSION_NUM >= 160000
#define InfraGucFree(p)			guc_free(p)
#define InfraGucStrdup(s)		guc_strdup(LOG, (s))
#else
#define InfraGucFree(p)			free(p)
#define InfraGucStrdup(s)		strdup(s)
#endif

/*
 * May role "member" become "role" with SET ROLE?  From PostgreSQL 16 a
 * membership may be granted WITH SET FALSE (and a CREATEROLE user's
 * membership in the roles it creates is of that kind by default): only the
 * SET option counts.  Before 16, every membership allows it.
 */
#if PG_VERSION_NUM >= 160000
#define InfraRoleCanSet(member, role)	member_can_set_role((member), (role))
#else
#define InfraRoleCanSet(member, role)	is_member_of_role((member), (role))
#endif

/*
 * This backend's local transaction id: in PGPROC's vxid from PostgreSQL 17.
 */
#if PG_VERSION_NUM >= 170000
#define InfraLocalXid()			(MyProc->vxid.lxid)
#else
#define InfraLocalXid()			(MyProc->lxid)
#endif

/*
 * check_synchronous_standby_names() is declared in utils/guc_hooks.h from
 * PostgreSQL 16, in replication/syncrep.h before.
 */
#if PG_VERSION_NUM >= 160000
#define INFRA_GUC_HOOKS_H "utils/guc_hooks.h"
#else
#define INFRA_GUC_HOOKS_H "replication/syncrep.h"
#endif

/*
 * Whether this process's stderr goes to the logging collector's pipe.  The
 * postmaster defines it for elog.c without declaring it in a header (up to
 * PostgreSQL 17 at least); infra's log hook needs it to write where elog.c
 * would.
 */
extern PGDLLIMPORT bool redirection_done;

/*
 * infra-bridge's json_columns routes parse JSON with PostgreSQL's own parser
 * (common/jsonapi.h, frontend libpgcommon).  Its callbacks return an error
 * code from PostgreSQL 16; from 17 its lexer lives where the caller says
 * and freeJsonLexContext frees it.
 */
#if PG_VERSION_NUM >= 160000
#define InfraJsonCallbackResult JsonParseErrorType
#define INFRA_JSON_CALLBACK_DONE return JSON_SUCCESS
#else
#define InfraJsonCallbackResult void
#define INFRA_JSON_CALLBACK_DONE return
#endif
#if PG_VERSION_NUM >= 170000
#define InfraJsonLexMake(storage, json, len) \
	makeJsonLexContextCstringLen(&(storage), (json), (len), PG_UTF8, true)
#define InfraJsonLexFree(lex) freeJsonLexContext(lex)
#else
#define InfraJsonLexMake(storage, json, len) \
	((void) &(storage), makeJsonLexContextCstringLen((json), (len), PG_UTF8, true))
#define InfraJsonLexFree(lex) \
	do { pfree((lex)->strval->data); pfree((lex)->strval); pfree(lex); } while (0)
#endif

/*
 * The WAL outbox (kafka/outbox.c, kafka/walread.c): LogLogicalMessage takes
 * whether to flush from PostgreSQL 17; ReplicationSlotAcquire whether an
 * invalidated slot is an error from 18.
 */
#if PG_VERSION_NUM >= 170000
#define InfraLogLogicalMessage(prefix, data, size, transactional) \
	LogLogicalMessage((prefix), (data), (size), (transactional), false)
#else
#define InfraLogLogicalMessage(prefix, data, size, transactional) \
	LogLogicalMessage((prefix), (data), (size), (transactional))
#endif
#if PG_VERSION_NUM >= 180000
#define InfraSlotAcquire(name)	ReplicationSlotAcquire((name), true, true)
#else
#define InfraSlotAcquire(name)	ReplicationSlotAcquire((name), true)
#endif

#endif							/* INFRA_COMPAT_H */
