/*-------------------------------------------------------------------------
 *
 * shmem.h
 *		Registry of infra's shared-memory segments.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_SHMEM_H
#define INFRA_SHMEM_H

#include "storage/lwlock.h"

/* Most segments a build of infra registers; raise when a module needs more. */
#define INFRA_SHMEM_MAX_SEGMENTS 16

/*
 * Called once per segment in the postmaster after shared memory is created,
 * under AddinShmemInitLock.  "found" is true when the segment already existed
 * (EXEC_BACKEND re-attach); "locks" points at the segment's own LWLocks.
 */
typedef void (*InfraShmemInitHook) (void *segment, bool found,
									LWLockPadded *locks);

/* What a module declares about its segment. */
typedef struct InfraShmemSegment
{
	const char *name;			/* shown in infra.shmem_segments */
	Size		(*size) (void); /* called when MaxBackends is known */
	Size		(*extra) (void);	/* more that init allocates itself, e.g.
									 * with ShmemInitHash; may be NULL */
	int			nlocks;			/* LWLocks in infra's tranche for it */
	InfraShmemInitHook init;
	void	  **pointer;		/* where the segment's address is stored */
} InfraShmemSegment;

extern void InfraShmemRegister(const InfraShmemSegment *segment);
extern void InfraShmemRequire(const char *function_name);

extern void InfraShmemInit(void);

#endif							/* INFRA_SHMEM_H */
