/*-------------------------------------------------------------------------
 *
 * worker.h
 *		The infra background worker: one per database in infra.database.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_WORKER_H
#define INFRA_WORKER_H

#include "lib/stringinfo.h"

/* Databases one server can list in infra.database. */
#define INFRA_MAX_DATABASES 16

/* Seconds the postmaster waits before restarting a worker that exited. */
#define INFRA_WORKER_RESTART_SECONDS 2

/* Longest pause between two checks for a database that does not exist. */
#define INFRA_WORKER_MAX_BACKOFF_MS (60 * 1000)

/* GUC */
extern char *infra_database;

/*
 * The kinds of per-database worker: the delivery worker (the outbox, Kafka),
 * the metric-query worker, which runs other roles' SQL in a session of its
 * own so that nothing those queries do can reach delivery, and the http
 * worker (http_send's requests), whose endpoints' slowness reaches neither.
 */
typedef enum InfraWorkerKind
{
	INFRA_WORKER_DELIVERY = 0,
	INFRA_WORKER_METRIC_QUERIES,
	INFRA_WORKER_HTTP,
	INFRA_WORKER_KINDS
} InfraWorkerKind;

/* What a worker is doing, as shown by infra.worker_status. */
typedef enum InfraWorkerState
{
	INFRA_WORKER_STOPPED = 0,
	INFRA_WORKER_STARTING,
	INFRA_WORKER_WAITING_FOR_DATABASE,
	INFRA_WORKER_WAITING_FOR_EXTENSION,
	INFRA_WORKER_WAITING_FOR_UPDATE,	/* SQL objects of another version */
	INFRA_WORKER_WAITING_FOR_PROMOTION, /* a standby: started at promotion */
	INFRA_WORKER_RUNNING
} InfraWorkerState;

/*
 * Register one of infra's background workers while preloading: with a
 * database connection (started once recovery is over) or without one
 * (started as soon as the server is consistent).
 */
extern void InfraRegisterWorker(const char *function, const char *name, const char *type,
								bool database, int restart_seconds, Datum arg);

/*
 * A service an infra worker runs from its loop once CREATE EXTENSION has
 * happened in its database: serve does a round of work and says how long
 * the worker may sleep (-1: until woken, 0: not at all, else milliseconds);
 * shutdown releases what serve holds when the worker stops.  kind says
 * which of the database's workers runs it.  socket, when set, gives a
 * descriptor (or PGINVALID_SOCKET) whose readability also wakes the worker
 * (an epoll set of the service's own connections).  Registered by the
 * modules in _PG_init; the worker names none of them.
 */
typedef struct InfraWorkerService
{
	const char *name;
	InfraWorkerKind kind;
	long		(*serve) (void);
	void		(*shutdown) (void);
	pgsocket	(*socket) (void);
} InfraWorkerService;

extern void InfraWorkerRegisterService(const InfraWorkerService *service);
extern void InfraWorkerWakeAtCommit(InfraWorkerKind kind);
extern void InfraWorkerWakeNow(InfraWorkerKind kind);
extern void InfraWorkerStartTransaction(void);
extern void InfraWorkerSpiBegin(void);
extern void InfraWorkerSpiEnd(void);
extern bool InfraWorkersHealthy(StringInfo why);
extern bool InfraWorkerServing(Oid database_oid, InfraWorkerKind kind);
extern void InfraRequirePrimary(const char *what);
extern const char *InfraWorkerFirstDatabase(void);

extern void InfraWorkerInit(void);

#endif							/* INFRA_WORKER_H */
