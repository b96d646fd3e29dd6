/*-------------------------------------------------------------------------
 *
 * shmem.c
 *		One registry for the shared memory of every infra module.
 *
 * Each module describes its segment (name, size function, LWLock count,
 * initialiser) from its XxxInit() while shared_preload_libraries is being
 * processed.  The chained shmem_request_hook asks the postmaster for the sum
 * of all segments and for one LWLock tranche covering all their locks; the
 * chained shmem_startup_hook creates each segment with ShmemInitStruct and
 * hands it its slice of the tranche.
 *
 * Locking: the registry itself is written only in the postmaster before any
 * backend exists, and is read-only afterwards (backends inherit it by fork).
 * Segment creation runs under AddinShmemInitLock, as the server requires.
 * What a segment's own locks protect is stated in the module that owns it.
 *
 * Called by every module's XxxInit (InfraShmemRegister) and by SQL
 * functions that need shared memory (InfraShmemRequire).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"

#include "core/infra.h"
#include "core/shmem.h"
#include "core/version.h"

PG_FUNCTION_INFO_V1(infra_shmem_segments);

static InfraShmemSegment segments[INFRA_SHMEM_MAX_SEGMENTS];
static int	nsegments = 0;

/* Set in the postmaster once every segment exists; inherited by backends. */
static bool shmem_ready = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void InfraShmemRequest(void);
static void InfraShmemStartup(void);
static int	InfraShmemTotalLocks(void);

/*
 * Install the hooks.  Without shared_preload_libraries there is no shared
 * memory to be had, and InfraShmemRequire() says so to the caller.
 */
void
InfraShmemInit(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = InfraShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = InfraShmemStartup;
}

/*
 * Add a module's segment to the registry.  Only valid from an XxxInit()
 * during shared_preload_libraries processing; elsewhere it is a no-op, since
 * the memory could never be created.
 */
void
InfraShmemRegister(const InfraShmemSegment *segment)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	if (nsegments >= INFRA_SHMEM_MAX_SEGMENTS)
		elog(ERROR, "too many infra shared memory segments");
	segments[nsegments++] = *segment;
}

/*
 * Raise the documented error for a function that needs shared memory in a
 * server where infra was not preloaded.
 */
void
InfraShmemRequire(const char *function_name)
{
	if (shmem_ready)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("%s requires infra to be loaded via shared_preload_libraries",
					function_name),
			 errdetail("infra keeps its state in shared memory, which can only be reserved when the server starts."),
			 errhint("Add infra to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * LWLocks all segments asked for: the size of infra's one tranche.
 */
static int
InfraShmemTotalLocks(void)
{
	int			total = 0;
	int			i;

	for (i = 0; i < nsegments; i++)
		total += segments[i].nlocks;
	return total;
}

/*
 * shmem_request_hook: reserve every segment and the shared LWLock tranche.
 */
static void
InfraShmemRequest(void)
{
	Size		total = 0;
	int			i;

	if (prev_shmem_request_hook)
		prev_shmem_request_hook();

	for (i = 0; i < nsegments; i++)
	{
		total = add_size(total, MAXALIGN(segments[i].size()));
		if (segments[i].extra)
			total = add_size(total, segments[i].extra());
	}
	RequestAddinShmemSpace(total);

	if (InfraShmemTotalLocks() > 0)
		RequestNamedLWLockTranche(INFRA_NAME, InfraShmemTotalLocks());
}

/*
 * shmem_startup_hook: create or attach each segment and run its initialiser.
 */
static void
InfraShmemStartup(void)
{
	LWLockPadded *locks = NULL;
	int			next_lock = 0;
	int			i;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	if (InfraShmemTotalLocks() > 0)
		locks = GetNamedLWLockTranche(INFRA_NAME);
	for (i = 0; i < nsegments; i++)
	{
		InfraShmemSegment *seg = &segments[i];
		bool		found;
		void	   *ptr;

		ptr = ShmemInitStruct(seg->name, seg->size(), &found);
		*seg->pointer = ptr;
		seg->init(ptr, found, seg->nlocks > 0 ? &locks[next_lock] : NULL);
		next_lock += seg->nlocks;
	}
	LWLockRelease(AddinShmemInitLock);

	shmem_ready = true;
}

/*
 * infra.shmem_segments(): what each module reserved, for DBAs sizing GUCs.
 */
Datum
infra_shmem_segments(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int			i;

	INFRA_CHECK_SCHEMA();

	InfraShmemRequire("infra.shmem_segments()");
	InitMaterializedSRF(fcinfo, 0);

	for (i = 0; i < nsegments; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		values[0] = CStringGetTextDatum(segments[i].name);
		values[1] = Int64GetDatum((int64) add_size(segments[i].size(),
												   segments[i].extra ? segments[i].extra() : 0));
		values[2] = Int32GetDatum(segments[i].nlocks);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
