/*-------------------------------------------------------------------------
 *
 * worker.c
 *		The infra background worker and its status in shared memory.
 *
 * The postmaster starts three workers per database named in infra.database:
 * the "infra worker" (delivery: the Kafka outbox), the "infra metric-query
 * worker", which runs the SQL of infra.metric_queries as the roles those
 * rows name, and the "infra http worker" (http_send's requests; its
 * service also gives a socket to wait on).  They are one program: each connects to its
 * database, waits until CREATE EXTENSION infra has happened there, and then
 * runs the services registered for its kind (InfraWorkerKind), without
 * naming them.  Keeping other roles' SQL out of the delivery worker's
 * session means nothing it does (a setting, a session lock, a slow query)
 * can reach delivery.  Each worker pins at connect the settings it relies
 * on, whatever ALTER DATABASE or ALTER ROLE set, and services start their
 * transactions with InfraWorkerStartTransaction.  A worker
 * sleeps on its latch with no timeout: backends wake it at commit through
 * InfraWorkerWakeAtCommit(), and CREATE/DROP EXTENSION wake it through the
 * object access hook, so an idle worker costs nothing.
 *
 * A database that does not exist makes the connection attempt FATAL.  The
 * slot remembers that, and the next incarnation connects to no database,
 * waits with exponential backoff until the database appears, and exits so
 * the postmaster starts it afresh; it never crash-loops.
 *
 * Locking: each slot has a spinlock guarding all its fields.  The worker owns
 * its slot and is its only writer once running; backends only read it (to
 * fill infra.worker_status, or to fetch the latch to set).  No palloc or
 * ereport happens with a spinlock held: readers copy the slot out first.
 *
 * Started by the postmaster; modules register services for its loop
 * (InfraWorkerRegisterService); backends call InfraWorkerWakeAtCommit; httpd.c
 * asks InfraWorkersHealthy.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_database.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"

#include "core/infra.h"
#include "core/metrics.h"
#include "core/shmem.h"
#include "core/spicheck.h"
#include "core/version.h"
#include "core/worker.h"

PG_FUNCTION_INFO_V1(infra_worker_status);
PG_FUNCTION_INFO_V1(infra_metric_query_workers);
PGDLLEXPORT void InfraWorkerMain(Datum main_arg);

/* Longest last_error kept, in bytes. */
#define INFRA_WORKER_ERROR_LEN 256

typedef struct InfraWorkerSlot
{
	slock_t		mutex;
	InfraWorkerKind kind;		/* set once, at shared memory init */
	char		database[NAMEDATALEN];
	pid_t		pid;			/* 0 when not running */
	Oid			database_oid;	/* InvalidOid until connected */
	Latch	   *latch;			/* the running worker's latch */
	InfraWorkerState state;
	bool		probe_database; /* last connection attempt did not return */
	int			connect_failures;	/* in a row, drives the backoff */
	TimestampTz started_at;
	TimestampTz last_reload;
	TimestampTz last_error_at;
	char		last_error[INFRA_WORKER_ERROR_LEN];
} InfraWorkerSlot;

/*
 * Slots: kind k of database i is slots[k * ndatabases + i].
 */
typedef struct InfraWorkerShared
{
	int			ndatabases;
	int			nslots;
	InfraWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} InfraWorkerShared;

char	   *infra_database = NULL;

/*
 * A value of infra.database that the check hook rejected.  PostgreSQL only
 * warns and keeps the default for a bad value in postgresql.conf; infra
 * refuses to start instead of serving a database nobody asked for.
 */
static void WorkerCollectMetrics(StringInfo out);
static char *rejected_database = NULL;
static char rejected_detail[128];

/* Databases parsed from infra.database in the postmaster. */
static char worker_databases[INFRA_MAX_DATABASES][NAMEDATALEN];
static int	worker_ndatabases = 0;

static InfraWorkerShared *worker_shared = NULL;

/* Backend-local: kinds (bits) of this database's workers to wake at commit. */
static int	wake_at_commit = 0;

/* Backend-local: a committed CREATE DATABASE should wake waiting workers. */
static bool wake_probers_at_commit = false;

static object_access_hook_type prev_object_access_hook = NULL;

/* The running worker's own slot. */
static InfraWorkerSlot *my_slot = NULL;

/* Services registered by the modules, run in this order. */
#define INFRA_WORKER_MAX_SERVICES 8
static InfraWorkerService services[INFRA_WORKER_MAX_SERVICES];
static int	nservices = 0;

static bool InfraDatabaseCheckHook(char **newval, void **extra, GucSource source);
static int	InfraParseDatabases(const char *value, char names[][NAMEDATALEN]);
static Size InfraWorkerShmemSize(void);
static void InfraWorkerShmemInit(void *segment, bool found, LWLockPadded *locks);
static void InfraWorkerXactCallback(XactEvent event, void *arg);
static void InfraWorkerObjectAccess(ObjectAccessType access, Oid classId,
									Oid objectId, int subId, void *arg);
static void InfraWorkerSetState(InfraWorkerState state);
static void InfraWorkerRecordError(const char *message);
static void InfraWorkerDetach(int code, Datum arg);
static void InfraWorkerProbeDatabase(void);
static InfraWorkerState InfraWorkerLook(char *installed, Size size);
static long InfraWorkerServe(void);
static void InfraWorkerReload(void);
static void InfraWorkerAnnounce(InfraWorkerState state, const char *installed);
static void InfraWorkerLoop(void);
static pgsocket InfraWorkerSocket(void);
static void InfraWorkerWait(pgsocket sock, long timeout);
static long InfraWorkerBackoffMs(int failures);
static const char *InfraWorkerStateName(InfraWorkerState state);
static InfraWorkerState InfraWorkerShownState(const InfraWorkerSlot *slot);
static void InfraWorkerSlotCopy(int i, InfraWorkerSlot *copy);
static void InfraWorkerPinSettings(void);
static void InfraWorkerStatusRows(FunctionCallInfo fcinfo, InfraWorkerKind kind);

/* What each kind is called in process titles and pg_stat_activity. */
static const char *const kind_names[INFRA_WORKER_KINDS] = {
	"infra worker", "infra metric-query worker", "infra http worker"
};

void
InfraRegisterWorker(const char *function, const char *name, const char *type,
					bool database, int restart_seconds, Datum arg)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		(database ? BGWORKER_BACKEND_DATABASE_CONNECTION : 0);
	worker.bgw_start_time = database ? BgWorkerStart_RecoveryFinished : BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = restart_seconds;
	strlcpy(worker.bgw_library_name, INFRA_NAME, BGW_MAXLEN);
	strlcpy(worker.bgw_function_name, function, BGW_MAXLEN);
	strlcpy(worker.bgw_name, name, BGW_MAXLEN);
	strlcpy(worker.bgw_type, type, BGW_MAXLEN);
	worker.bgw_main_arg = arg;
	RegisterBackgroundWorker(&worker);
}

/*
 * Define infra.database, reserve the worker's shared memory and register one
 * worker per listed database.
 */
void
InfraWorkerInit(void)
{
	int			i;

	/* PostgreSQL allows restart-only settings only while preloading. */
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomStringVariable("infra.database",
							   "Databases the infra worker serves, comma-separated.",
							   "One worker is started per database; an empty list starts none.",
							   &infra_database,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   InfraDatabaseCheckHook, NULL, NULL);

	if (rejected_database != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid value for parameter \"infra.database\": \"%s\"",
						rejected_database),
				 errdetail("%s", rejected_detail),
				 errhint("List existing database names separated by commas, each once, in postgresql.conf.")));

	worker_ndatabases = InfraParseDatabases(infra_database, worker_databases);

	{
		InfraShmemSegment seg = {
			.name = "infra worker status",
			.size = InfraWorkerShmemSize,
			.nlocks = 0,
			.init = InfraWorkerShmemInit,
			.pointer = (void **) &worker_shared,
		};

		InfraShmemRegister(&seg);
		MetricsRegisterCollector(WorkerCollectMetrics);
	}

	for (i = 0; i < worker_ndatabases * INFRA_WORKER_KINDS; i++)
	{
		char		name[BGW_MAXLEN];
		const char *kind = kind_names[i / Max(worker_ndatabases, 1)];

		snprintf(name, sizeof(name), "%s for database %s", kind,
				 worker_databases[i % worker_ndatabases]);
		InfraRegisterWorker("InfraWorkerMain", name, kind, true,
							INFRA_WORKER_RESTART_SECONDS, Int32GetDatum(i));
	}

	RegisterXactCallback(InfraWorkerXactCallback, NULL);
	prev_object_access_hook = object_access_hook;
	object_access_hook = InfraWorkerObjectAccess;
}

/*
 * Split infra.database into names; returns how many, or -1 with a GUC error
 * detail set when the list is malformed.
 */
static int
InfraParseDatabases(const char *value, char names[][NAMEDATALEN])
{
	char	   *raw = pstrdup(value);
	List	   *list = NIL;
	ListCell   *lc;
	int			n = 0;

	if (!SplitGUCList(raw, ',', &list))
	{
		GUC_check_errdetail("Expected database names separated by commas, none of them empty.");
		return -1;
	}
	foreach(lc, list)
	{
		const char *name = (const char *) lfirst(lc);
		int			i;

		if (strlen(name) >= NAMEDATALEN)
		{
			GUC_check_errdetail("Database name \"%s\" is longer than %d bytes.",
								name, NAMEDATALEN - 1);
			return -1;
		}
		if (n >= INFRA_MAX_DATABASES)
		{
			GUC_check_errdetail("At most %d databases can be listed.",
								INFRA_MAX_DATABASES);
			return -1;
		}
		for (i = 0; i < n; i++)
		{
			if (strcmp(names[i], name) == 0)
			{
				GUC_check_errdetail("Database \"%s\" is listed twice.", name);
				return -1;
			}
		}
		strlcpy(names[n++], name, NAMEDATALEN);
	}
	list_free(list);
	pfree(raw);
	return n;
}

/*
 * check_hook for infra.database: reject what would start no sensible worker.
 */
static bool
InfraDatabaseCheckHook(char **newval, void **extra, GucSource source)
{
	char		names[INFRA_MAX_DATABASES][NAMEDATALEN];

	if (*newval == NULL)
		return true;
	if (InfraParseDatabases(*newval, names) >= 0)
		return true;
	if (process_shared_preload_libraries_in_progress)
	{
		rejected_database = MemoryContextStrdup(TopMemoryContext, *newval);
		strlcpy(rejected_detail, GUC_check_errdetail_string ? GUC_check_errdetail_string : "",
				sizeof(rejected_detail));
	}
	return false;
}

/*
 * One status slot per configured database and kind of worker.
 */
static Size
InfraWorkerShmemSize(void)
{
	return add_size(offsetof(InfraWorkerShared, slots),
					mul_size(Max(worker_ndatabases, 1) * INFRA_WORKER_KINDS,
							 sizeof(InfraWorkerSlot)));
}

/*
 * Fresh slots, named after infra.database, with no worker behind them yet.
 */
static void
InfraWorkerShmemInit(void *segment, bool found, LWLockPadded *locks)
{
	InfraWorkerShared *shared = (InfraWorkerShared *) segment;
	int			i;

	if (found)
		return;
	memset(shared, 0, InfraWorkerShmemSize());
	shared->ndatabases = worker_ndatabases;
	shared->nslots = worker_ndatabases * INFRA_WORKER_KINDS;
	for (i = 0; i < shared->nslots; i++)
	{
		SpinLockInit(&shared->slots[i].mutex);
		shared->slots[i].kind = (InfraWorkerKind) (i / worker_ndatabases);
		strlcpy(shared->slots[i].database, worker_databases[i % worker_ndatabases], NAMEDATALEN);
		shared->slots[i].state = INFRA_WORKER_STOPPED;
	}
}

/*
 * Ask for this database's worker of that kind to be woken when the current
 * transaction commits.  Nothing happens if it aborts.  Cheap: only a flag
 * until commit.
 */
void
InfraWorkerWakeAtCommit(InfraWorkerKind kind)
{
	wake_at_commit |= 1 << kind;
}

/*
 * Set the latch of this database's worker of that kind now (kafka_flush
 * waits for it inside its transaction).
 */
void
InfraWorkerWakeNow(InfraWorkerKind kind)
{
	int			i;

	for (i = 0; worker_shared != NULL && i < worker_shared->nslots; i++)
	{
		InfraWorkerSlot *slot = &worker_shared->slots[i];
		Latch	   *latch = NULL;

		SpinLockAcquire(&slot->mutex);
		if (slot->pid != 0 && slot->kind == kind && slot->database_oid == MyDatabaseId)
			latch = slot->latch;
		SpinLockRelease(&slot->mutex);
		if (latch != NULL)
			SetLatch(latch);
	}
}

/*
 * At commit, set the latch of the worker serving this database.
 */
static void
InfraWorkerXactCallback(XactEvent event, void *arg)
{
	int			i;

	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			wake_at_commit = 0;
			wake_probers_at_commit = false;
			return;
		default:
			return;
	}
	if ((!wake_at_commit && !wake_probers_at_commit) || worker_shared == NULL)
		return;

	for (i = 0; i < worker_shared->nslots; i++)
	{
		InfraWorkerSlot *slot = &worker_shared->slots[i];
		Latch	   *latch = NULL;

		SpinLockAcquire(&slot->mutex);
		if (slot->pid != 0 &&
			(((wake_at_commit & (1 << slot->kind)) && slot->database_oid == MyDatabaseId) ||
			 (wake_probers_at_commit &&
			  slot->state == INFRA_WORKER_WAITING_FOR_DATABASE)))
			latch = slot->latch;
		SpinLockRelease(&slot->mutex);
		if (latch != NULL)
			SetLatch(latch);
	}
	wake_at_commit = 0;
	wake_probers_at_commit = false;
}

/*
 * CREATE, ALTER (UPDATE) or DROP EXTENSION in this database may start or
 * stop what the worker serves, and CREATE DATABASE may create one a worker waits for:
 * wake them at commit so they look again.
 */
static void
InfraWorkerObjectAccess(ObjectAccessType access, Oid classId, Oid objectId,
						int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);

	if (classId == ExtensionRelationId &&
		(access == OAT_POST_CREATE || access == OAT_POST_ALTER || access == OAT_DROP))
		wake_at_commit |= (1 << INFRA_WORKER_KINDS) - 1;
	if (classId == DatabaseRelationId && access == OAT_POST_CREATE)
		wake_probers_at_commit = true;
}

/*
 * Worker-side: change the state shown in infra.worker_status and in
 * pg_stat_activity.query.
 */
static void
InfraWorkerSetState(InfraWorkerState state)
{
	char		activity[NAMEDATALEN + 64];

	SpinLockAcquire(&my_slot->mutex);
	my_slot->state = state;
	SpinLockRelease(&my_slot->mutex);

	switch (state)
	{
		case INFRA_WORKER_WAITING_FOR_DATABASE:
			snprintf(activity, sizeof(activity),
					 "waiting for database \"%s\" to exist", my_slot->database);
			break;
		case INFRA_WORKER_WAITING_FOR_EXTENSION:
			snprintf(activity, sizeof(activity),
					 "waiting for CREATE EXTENSION infra");
			break;
		case INFRA_WORKER_WAITING_FOR_UPDATE:
			snprintf(activity, sizeof(activity),
					 "waiting for ALTER EXTENSION infra UPDATE");
			break;
		default:
			snprintf(activity, sizeof(activity), "%s",
					 InfraWorkerStateName(state));
			break;
	}
	pgstat_report_activity(STATE_IDLE, activity);
}

/*
 * Worker-side: keep message as last_error for infra.worker_status.
 */
static void
InfraWorkerRecordError(const char *message)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&my_slot->mutex);
	strlcpy(my_slot->last_error, message, INFRA_WORKER_ERROR_LEN);
	my_slot->last_error_at = now;
	SpinLockRelease(&my_slot->mutex);
}

/*
 * on_shmem_exit: the slot no longer has a process behind it.
 */
static void
InfraWorkerDetach(int code, Datum arg)
{
	SpinLockAcquire(&my_slot->mutex);
	my_slot->pid = 0;
	my_slot->latch = NULL;
	my_slot->state = INFRA_WORKER_STOPPED;
	SpinLockRelease(&my_slot->mutex);
}

/* 1 s, 2 s, 4 s ... capped at INFRA_WORKER_MAX_BACKOFF_MS. */
static long
InfraWorkerBackoffMs(int failures)
{
	long		ms = 1000;

	while (--failures > 0 && ms < INFRA_WORKER_MAX_BACKOFF_MS)
		ms *= 2;
	return Min(ms, INFRA_WORKER_MAX_BACKOFF_MS);
}

/*
 * The last attempt to connect to our database failed (FATAL, so it could not
 * be caught).  Connect to no database, wait with backoff until ours exists,
 * then exit so the postmaster restarts us into a normal connection.
 */
static void
InfraWorkerProbeDatabase(void)
{
	int			failures;
	int			attempt = 0;
	char		message[INFRA_WORKER_ERROR_LEN];

	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	InfraWorkerSetState(INFRA_WORKER_WAITING_FOR_DATABASE);

	SpinLockAcquire(&my_slot->mutex);
	failures = my_slot->connect_failures;
	SpinLockRelease(&my_slot->mutex);

	for (;;)
	{
		bool		exists;

		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			proc_exit(1);
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		StartTransactionCommand();
		exists = OidIsValid(get_database_oid(my_slot->database, true));
		CommitTransactionCommand();
		if (exists)
			break;

		if (attempt == 0)
		{
			snprintf(message, sizeof(message),
					 "database \"%s\" named in infra.database does not exist",
					 my_slot->database);
			InfraWorkerRecordError(message);
			ereport(LOG,
					(errcode(ERRCODE_UNDEFINED_DATABASE),
					 errmsg("%s", message),
					 errhint("Create the database, or change infra.database and restart the server; the worker checks again with backoff up to %d seconds.",
							 INFRA_WORKER_MAX_BACKOFF_MS / 1000)));
		}

		/* CREATE DATABASE sets our latch at commit; the timeout is a fallback. */
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 InfraWorkerBackoffMs(++attempt), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	/*
	 * The database was there all along, yet connecting failed (it may not
	 * allow connections): back off by the count of failures in a row.
	 */
	if (attempt == 0 && failures > 1)
	{
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 InfraWorkerBackoffMs(failures), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}

	ereport(LOG,
			(errmsg("infra worker: database \"%s\" is available, reconnecting",
					my_slot->database)));
	proc_exit(1);
}

/*
 * Is CREATE EXTENSION infra in effect in our database, and at this
 * library's version?  RUNNING if so, else what the worker waits for;
 * installed gets the version found.
 */
static InfraWorkerState
InfraWorkerLook(char *installed, Size size)
{
	bool		matches;

	StartTransactionCommand();

	/*
	 * A backend wakes us from its commit callback, before it sends its
	 * catalog invalidations: a catalog snapshot kept from our last look
	 * would still miss its CREATE EXTENSION.  Look with a new one.
	 */
	InvalidateCatalogSnapshot();
	matches = InfraSchemaVersionMatches(installed, size);
	CommitTransactionCommand();
	if (matches)
		return INFRA_WORKER_RUNNING;
	return installed[0] ? INFRA_WORKER_WAITING_FOR_UPDATE : INFRA_WORKER_WAITING_FOR_EXTENSION;
}

/*
 * Add a service to the worker's loop (in _PG_init, while preloading).
 */
void
InfraWorkerRegisterService(const InfraWorkerService *service)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	if (nservices >= INFRA_WORKER_MAX_SERVICES)
		elog(ERROR, "too many infra worker services");
	services[nservices++] = *service;
}

/*
 * One round of every service of this worker's kind; the shortest sleep any
 * of them asks for.
 */
static long
InfraWorkerServe(void)
{
	long		timeout = -1;
	int			i;

	for (i = 0; i < nservices; i++)
	{
		long		mine;

		if (services[i].kind != my_slot->kind)
			continue;
		mine = services[i].serve();

		if (mine >= 0 && (timeout < 0 || mine < timeout))
			timeout = mine;
	}
	return timeout;
}

/*
 * SIGHUP: read the configuration again and say when.
 */
static void
InfraWorkerReload(void)
{
	TimestampTz now = GetCurrentTimestamp();

	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	SpinLockAcquire(&my_slot->mutex);
	my_slot->last_reload = now;
	SpinLockRelease(&my_slot->mutex);
	ereport(LOG,
			(errmsg("%s for database \"%s\" reloaded its configuration",
					kind_names[my_slot->kind], my_slot->database)));
}

/*
 * State and log line when what the worker does changes: it serves, or waits
 * for CREATE EXTENSION, or for ALTER EXTENSION UPDATE.
 */
static void
InfraWorkerAnnounce(InfraWorkerState state, const char *installed)
{
	InfraWorkerSetState(state);
	if (state == INFRA_WORKER_RUNNING && InfraSchemaIsPrevious())
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s serving database \"%s\", whose infra SQL objects are version %s, with the infra library of version %s",
						kind_names[my_slot->kind], my_slot->database, installed, INFRA_VERSION),
				 errhint("Run ALTER EXTENSION infra UPDATE; in that database when convenient: until then it keeps %s's objects and rules.",
						 installed)));
	else if (state == INFRA_WORKER_RUNNING)
		ereport(LOG,
				(errmsg("%s serving database \"%s\"",
						kind_names[my_slot->kind], my_slot->database)));
	else if (state == INFRA_WORKER_WAITING_FOR_UPDATE)
		ereport(WARNING,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("infra worker waiting: infra's SQL objects in database \"%s\" are version %s, but the loaded infra library is version %s",
						my_slot->database, installed, INFRA_VERSION),
				 errhint("Run ALTER EXTENSION infra UPDATE; in that database (or install infra %s's library if it is newer); the worker serves nothing until the versions agree.",
						 installed)));
	else
		ereport(LOG,
				(errmsg("infra worker waiting for CREATE EXTENSION infra in database \"%s\"",
						my_slot->database)));
}

/*
 * The descriptor a service of this worker's kind wants to be woken by, if
 * any (one per worker: the services of a kind share no socket).
 */
static pgsocket
InfraWorkerSocket(void)
{
	int			i;

	for (i = 0; i < nservices; i++)
		if (services[i].kind == my_slot->kind && services[i].socket != NULL)
		{
			pgsocket	sock = services[i].socket();

			if (sock != PGINVALID_SOCKET)
				return sock;
		}
	return PGINVALID_SOCKET;
}

/*
 * Sleep until the latch is set, the socket (if any) is readable or timeout
 * milliseconds (-1: none) have passed.
 */
static void
InfraWorkerWait(pgsocket sock, long timeout)
{
	int			events = WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | (timeout > 0 ? WL_TIMEOUT : 0);

	if (sock != PGINVALID_SOCKET)
		(void) WaitLatchOrSocket(MyLatch, events | WL_SOCKET_READABLE, sock, timeout,
								 PG_WAIT_EXTENSION);
	else
		(void) WaitLatch(MyLatch, events, timeout, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
}

/*
 * Sleep on the latch, look at what changed, serve; forever.
 */
static void
InfraWorkerLoop(void)
{
	MemoryContext loop_context;
	int			i;
	sigjmp_buf	local_sigjmp_buf;
	volatile InfraWorkerState seen = INFRA_WORKER_STARTING;
	volatile bool seen_previous = false;

	loop_context = AllocSetContextCreate(TopMemoryContext,
										 "infra worker loop",
										 ALLOCSET_DEFAULT_SIZES);

	/*
	 * An ERROR in the loop lands here: record it for infra.worker_status,
	 * clean up and go on after a pause rather than exit and lose our state.
	 */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		ErrorData  *edata;

		/*
		 * The error may come from deep inside SPI, whose error context
		 * callbacks lived on stack frames the jump just left: forget them
		 * before anything reports again, as PostgresMain does.
		 */
		error_context_stack = NULL;
		HOLD_INTERRUPTS();
		MemoryContextSwitchTo(loop_context);
		edata = CopyErrorData();
		EmitErrorReport();
		AbortCurrentTransaction();
		FlushErrorState();
		InfraWorkerRecordError(edata->message);
		MemoryContextReset(loop_context);
		RESUME_INTERRUPTS();
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 1000,
						 PG_WAIT_EXTENSION);
	}
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		InfraWorkerState state;
		char		installed[NAMEDATALEN];
		long		timeout = -1;

		CHECK_FOR_INTERRUPTS();
		if (ShutdownRequestPending)
			break;
		if (ConfigReloadPending)
			InfraWorkerReload();

		MemoryContextSwitchTo(loop_context);
		state = InfraWorkerLook(installed, sizeof(installed));
		/* Committing left us in TopMemoryContext. */
		MemoryContextSwitchTo(loop_context);
		/* Said again when ALTER EXTENSION infra UPDATE ends the previous release's objects. */
		if (state != seen || InfraSchemaIsPrevious() != seen_previous)
			InfraWorkerAnnounce(state, installed);
		seen = state;
		seen_previous = InfraSchemaIsPrevious();

		/* The services' work; each says how long it may sleep. */
		if (state == INFRA_WORKER_RUNNING)
			timeout = InfraWorkerServe();

		MemoryContextSwitchTo(loop_context);
		MemoryContextReset(loop_context);
		if (timeout == 0)
			continue;
		InfraWorkerWait(state == INFRA_WORKER_RUNNING ? InfraWorkerSocket() : PGINVALID_SOCKET,
						timeout);
	}
	for (i = 0; i < nservices; i++)
		if (services[i].kind == my_slot->kind)
			services[i].shutdown();
}

/*
 * Entry point of every infra worker; main_arg is its slot number.
 */
void
InfraWorkerMain(Datum main_arg)
{
	int			index = DatumGetInt32(main_arg);
	bool		probe;
	TimestampTz now;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
	BackgroundWorkerUnblockSignals();

	if (worker_shared == NULL || index < 0 || index >= worker_shared->nslots)
		elog(FATAL, "infra worker started without its shared memory slot");
	my_slot = &worker_shared->slots[index];

	now = GetCurrentTimestamp();
	SpinLockAcquire(&my_slot->mutex);
	my_slot->pid = MyProcPid;
	my_slot->latch = MyLatch;
	my_slot->started_at = now;
	my_slot->state = INFRA_WORKER_STARTING;
	probe = my_slot->probe_database;
	if (!probe)
	{
		/* Assume failure: a FATAL inside the connect cannot be caught. */
		my_slot->probe_database = true;
		my_slot->connect_failures++;
	}
	SpinLockRelease(&my_slot->mutex);
	before_shmem_exit(InfraWorkerDetach, (Datum) 0);

	if (probe)
	{
		SpinLockAcquire(&my_slot->mutex);
		my_slot->probe_database = false;
		SpinLockRelease(&my_slot->mutex);
		InfraWorkerProbeDatabase();
	}

	BackgroundWorkerInitializeConnection(my_slot->database, NULL, 0);
	/* Superuser: no database or role setting may steer what it runs. */
	InfraPinSearchPath();
	InfraWorkerPinSettings();

	SpinLockAcquire(&my_slot->mutex);
	my_slot->probe_database = false;
	my_slot->connect_failures = 0;
	my_slot->database_oid = MyDatabaseId;
	SpinLockRelease(&my_slot->mutex);
	pgstat_report_appname(kind_names[my_slot->kind]);

	/*
	 * The worker's own commits (deleting delivered outbox rows) need not wait
	 * for the WAL flush: one lost in a crash only makes those rows be sent
	 * again, with the same infra-msg-id, which at-least-once allows.  What
	 * users commit keeps its own durability.
	 */
	SetConfigOption("synchronous_commit", "off", PGC_SUSET, PGC_S_OVERRIDE);

	InfraWorkerLoop();

	ereport(LOG,
			(errmsg("%s for database \"%s\" shutting down",
					kind_names[my_slot->kind], my_slot->database)));

	/*
	 * Exit code 1 so that a pg_terminate_backend() by a DBA is followed by a
	 * restart; at server shutdown the postmaster restarts nothing anyway.
	 */
	proc_exit(1);
}

/*
 * The name of a state as infra.worker_status shows it.
 */
static const char *
InfraWorkerStateName(InfraWorkerState state)
{
	switch (state)
	{
		case INFRA_WORKER_STOPPED:
			return "stopped";
		case INFRA_WORKER_STARTING:
			return "starting";
		case INFRA_WORKER_WAITING_FOR_DATABASE:
			return "waiting_for_database";
		case INFRA_WORKER_WAITING_FOR_EXTENSION:
			return "waiting_for_extension";
		case INFRA_WORKER_WAITING_FOR_UPDATE:
			return "waiting_for_update";
		case INFRA_WORKER_WAITING_FOR_PROMOTION:
			return "waiting_for_promotion";
		case INFRA_WORKER_RUNNING:
			return "running";
	}
	return "unknown";
}

/*
 * What a slot's worker does, as the status view and /healthz say it: on a
 * standby, where the postmaster starts it only at promotion, it waits for
 * that.
 */
static InfraWorkerState
InfraWorkerShownState(const InfraWorkerSlot *slot)
{
	if (slot->pid == 0 && RecoveryInProgress())
		return INFRA_WORKER_WAITING_FOR_PROMOTION;
	return slot->state;
}

/*
 * Refuse what writes tables (the outbox, the dead letters, the topic
 * registry) on a standby, with what to do instead.
 */
void
InfraRequirePrimary(const char *what)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s on a standby", what),
				 errdetail("This server is in recovery: infra's tables are read-only here, and its worker waits for promotion."),
				 errhint("Connect to the primary, e.g. with target_session_attrs=read-write in the connection string.")));
}

/*
 * A consistent copy of slot i, taken under its spinlock (readers then
 * work on the copy, with no lock held).
 */
static void
InfraWorkerSlotCopy(int i, InfraWorkerSlot *copy)
{
	SpinLockAcquire(&worker_shared->slots[i].mutex);
	memcpy(copy, &worker_shared->slots[i], sizeof(InfraWorkerSlot));
	SpinLockRelease(&worker_shared->slots[i].mutex);
}

/*
 * The rows of infra.worker_status (delivery workers) or of
 * infra.metric_query_workers: one per configured database.
 */
static void
InfraWorkerStatusRows(FunctionCallInfo fcinfo, InfraWorkerKind kind)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	InfraShmemRequire("infra.worker_status()");
	InitMaterializedSRF(fcinfo, 0);

	for (i = 0; i < worker_shared->ndatabases; i++)
	{
		InfraWorkerSlot copy;
		Datum		values[7];
		bool		nulls[7];

		InfraWorkerSlotCopy(kind * worker_shared->ndatabases + i, &copy);

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(copy.pid);
		nulls[0] = copy.pid == 0;
		values[1] = CStringGetTextDatum(copy.database);
		values[2] = CStringGetTextDatum(InfraWorkerStateName(InfraWorkerShownState(&copy)));
		values[3] = TimestampTzGetDatum(copy.started_at);
		nulls[3] = copy.started_at == 0;
		values[4] = TimestampTzGetDatum(copy.last_reload);
		nulls[4] = copy.last_reload == 0;
		values[5] = CStringGetTextDatum(copy.last_error);
		nulls[5] = copy.last_error[0] == '\0';
		values[6] = TimestampTzGetDatum(copy.last_error_at);
		nulls[6] = copy.last_error_at == 0;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
}

/*
 * infra.worker_status(): the delivery worker of each configured database.
 */
Datum
infra_worker_status(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();
	InfraWorkerStatusRows(fcinfo, INFRA_WORKER_DELIVERY);
	return (Datum) 0;
}

/*
 * infra.metric_query_workers(): the metric-query worker of each.
 */
Datum
infra_metric_query_workers(PG_FUNCTION_ARGS)
{
	INFRA_CHECK_SCHEMA();
	InfraWorkerStatusRows(fcinfo, INFRA_WORKER_METRIC_QUERIES);
	return (Datum) 0;
}

/*
 * Built-in series: whether each configured database's worker is running.
 */
static void
WorkerCollectMetrics(StringInfo out)
{
	int			i;
	int			kind;

	if (worker_shared == NULL)
		return;
	/* A load balancer routes on it; a standby's workers wait by design. */
	MetricsWriteFamily(out, "infra_node_role", "gauge",
					   "1 for this server's role: primary, or standby (in recovery).");
	MetricsWriteSample(out, "infra_node_role", "role=\"primary\"", RecoveryInProgress() ? 0 : 1);
	MetricsWriteSample(out, "infra_node_role", "role=\"standby\"", RecoveryInProgress() ? 1 : 0);
	for (kind = 0; kind < INFRA_WORKER_KINDS; kind++)
	{
		static const char *const families[INFRA_WORKER_KINDS] = {
			"infra_worker_up", "infra_metric_query_worker_up", "infra_http_worker_up"
		};
		static const char *const helps[INFRA_WORKER_KINDS] = {
			"1 when the infra worker (delivery) of the database is running.",
			"1 when the metric-query worker of the database is running.",
			"1 when the http worker (http_send) of the database is running."
		};

		MetricsWriteFamily(out, families[kind], "gauge", helps[kind]);
		for (i = 0; i < worker_shared->ndatabases; i++)
		{
			InfraWorkerSlot copy;
			StringInfoData labels;

			InfraWorkerSlotCopy(kind * worker_shared->ndatabases + i, &copy);
			initStringInfo(&labels);
			MetricsAppendLabel(&labels, "database", copy.database);
			MetricsWriteSample(out, families[kind], labels.data,
							   copy.state == INFRA_WORKER_RUNNING && copy.pid != 0);
		}
	}
}

/*
 * For /healthz: true when every configured database's worker is running;
 * otherwise why not, a line per database.
 */
bool
InfraWorkersHealthy(StringInfo why)
{
	bool		healthy = true;
	int			i;

	if (worker_shared == NULL)
	{
		appendStringInfoString(why, "infra's shared memory is not set up\n");
		return false;
	}
	for (i = 0; i < worker_shared->nslots; i++)
	{
		InfraWorkerSlot copy;
		InfraWorkerState shown;

		InfraWorkerSlotCopy(i, &copy);
		shown = InfraWorkerShownState(&copy);
		if ((shown == INFRA_WORKER_RUNNING && copy.pid != 0) ||
			shown == INFRA_WORKER_WAITING_FOR_PROMOTION)
			continue;
		healthy = false;
		appendStringInfo(why, "%s for database \"%s\" is %s%s%s\n",
						 kind_names[copy.kind], copy.database, InfraWorkerStateName(shown),
						 copy.last_error[0] ? ": " : "", copy.last_error);
	}
	return healthy;
}

/*
 * Is a worker of that kind serving this database now (running, its
 * extension there and of the library's version)?  For what a worker
 * publishes to be shown only while it stands (metric queries after DROP
 * EXTENSION).
 */
bool
InfraWorkerServing(Oid database_oid, InfraWorkerKind kind)
{
	int			i;

	if (worker_shared == NULL)
		return false;
	for (i = 0; i < worker_shared->nslots; i++)
	{
		InfraWorkerSlot copy;

		InfraWorkerSlotCopy(i, &copy);
		if (copy.kind == kind && copy.database_oid == database_oid && copy.pid != 0 &&
			InfraWorkerShownState(&copy) == INFRA_WORKER_RUNNING)
			return true;
	}
	return false;
}

/*
 * At connect: the settings the worker's own statements rely on, whatever
 * ALTER DATABASE or ALTER ROLE ... SET said (a database owner may set
 * default_transaction_read_only there, which would leave delivery unable
 * to delete what it sent).  PGC_S_OVERRIDE outranks those sources.
 */
static void
InfraWorkerPinSettings(void)
{
	static const char *const pinned[][2] = {
		{"default_transaction_read_only", "off"},
		{"default_transaction_isolation", "read committed"},
		{"statement_timeout", "0"},
		{"lock_timeout", "0"},
		{"idle_in_transaction_session_timeout", "0"},
		{"session_replication_role", "origin"},
		{"transaction_timeout", "0"},	/* 17+ */
	};
	int			i;

	for (i = 0; i < lengthof(pinned); i++)
		if (GetConfigOption(pinned[i][0], true, false) != NULL)
			SetConfigOption(pinned[i][0], pinned[i][1], PGC_SUSET, PGC_S_OVERRIDE);
}

/*
 * Start a transaction of a worker's own: read-write (on a primary) whatever
 * the session's settings say.  Services use it instead of
 * StartTransactionCommand.
 */
void
InfraWorkerStartTransaction(void)
{
	StartTransactionCommand();
	if (!RecoveryInProgress())
		XactReadOnly = false;
}

/*
 * A worker's transaction with a snapshot and an SPI connection: what a
 * service's SQL step runs in.
 */
void
InfraWorkerSpiBegin(void)
{
	InfraWorkerStartTransaction();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
}

/*
 * Close what InfraWorkerSpiBegin opened, committing.  The caller is left in
 * the memory context current before the transaction began (TopMemoryContext
 * for a worker, unless it switched).
 */
void
InfraWorkerSpiEnd(void)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * The first database of infra.database (where infra's workers without a
 * database of their own read configuration), or NULL when none is listed.
 */
const char *
InfraWorkerFirstDatabase(void)
{
	return worker_ndatabases > 0 ? worker_databases[0] : NULL;
}
