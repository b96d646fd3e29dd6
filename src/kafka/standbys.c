/*-------------------------------------------------------------------------
 *
 * standbys.c
 *		infra.kafka_wait_for_standbys: produce a message only once the named
 *		standbys have flushed its commit.
 *
 * After a failover, a message the old primary produced for a transaction
 * the new primary never received is a phantom: Kafka has it, the database
 * does not.  With this setting the infra worker produces a round only when
 * the standbys it names have flushed WAL past the round's commits (the
 * outbox's version of PostgreSQL 17's synchronized_standby_slots), so a
 * standby promoted among them has every message that went out.
 *
 * The value has synchronous_standby_names' syntax and meaning ("s1, s2" is
 * FIRST 1 (s1, s2); FIRST n (...); ANY n (...); * for any standby) and is
 * parsed by PostgreSQL's own parser for it; the standbys are matched by
 * application_name in pg_stat_replication.  The value
 * 'synchronous_standby_names' follows the server's synchronous replication
 * instead, as a failover manager such as Patroni maintains it: a round goes
 * once synchronous commit would have returned for it (at once when no
 * synchronous standby is defined).  Empty (the default): no wait.
 *
 * Called by producer.c in its read transaction; the GUC is defined from
 * _PG_init.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"
#include "miscadmin.h"
#include "replication/syncrep.h"
#include "replication/walsender_private.h"
#include "storage/lwlock.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/pg_lsn.h"

#include "core/infra.h"
#include INFRA_GUC_HOOKS_H	/* compat.h names it */
#include "core/spicheck.h"
#include "kafka/standbys.h"

char	   *infra_kafka_wait_for_standbys = NULL;

/* The parsed list (GUC's extra), or NULL; or follow synchronous replication. */
static SyncRepConfigData *standbys_config = NULL;
static bool standbys_follow_sync = false;

static bool StandbysCheckHook(char **newval, void **extra, GucSource source);
static void StandbysAssignHook(const char *newval, void *extra);
static bool StandbysSyncFlushed(XLogRecPtr lsn, StringInfo why);
static bool StandbysListFlushed(XLogRecPtr lsn, StringInfo why);
static int	StandbysPriority(const char *application_name);

void
InfraStandbysInit(void)
{
	DefineCustomStringVariable("infra.kafka_wait_for_standbys",
							   "Standbys that must have flushed a message's commit before the infra worker produces it.",
							   "synchronous_standby_names syntax (FIRST n (...), ANY n (...), *), "
							   "or 'synchronous_standby_names' to follow the server's synchronous replication; "
							   "empty: no wait.",
							   &infra_kafka_wait_for_standbys,
							   "",
							   PGC_SIGHUP,
							   0,
							   StandbysCheckHook, StandbysAssignHook, NULL);
}

/*
 * PostgreSQL's parser of synchronous_standby_names checks the list and
 * leaves its parse as the setting's extra.
 */
static bool
StandbysCheckHook(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || (*newval)[0] == '\0' ||
		pg_strcasecmp(*newval, STANDBYS_SYNCHRONOUS) == 0)
	{
		*extra = NULL;
		return true;
	}
	return check_synchronous_standby_names(newval, extra, source);
}

static void
StandbysAssignHook(const char *newval, void *extra)
{
	standbys_config = (SyncRepConfigData *) extra;
	standbys_follow_sync = newval != NULL && pg_strcasecmp(newval, STANDBYS_SYNCHRONOUS) == 0;
}

bool
StandbysWaitWanted(void)
{
	return standbys_follow_sync || standbys_config != NULL;
}

/*
 * Have the standbys flushed WAL up to lsn?  If not, why says which and how
 * far they are.  Runs in a transaction with SPI connected.
 */
bool
StandbysFlushed(XLogRecPtr lsn, StringInfo why)
{
	if (standbys_follow_sync)
		return StandbysSyncFlushed(lsn, why);
	if (standbys_config != NULL)
		return StandbysListFlushed(lsn, why);
	return true;
}

/*
 * As synchronous commit waits: the position the synchronous standbys have
 * flushed, as the walsenders compute it from synchronous_standby_names.
 */
static bool
StandbysSyncFlushed(XLogRecPtr lsn, StringInfo why)
{
	bool		defined;
	XLogRecPtr	flushed;

	LWLockAcquire(SyncRepLock, LW_SHARED);
	defined = (WalSndCtl->sync_standbys_status & SYNC_STANDBY_DEFINED) != 0;
	flushed = WalSndCtl->lsn[SYNC_REP_WAIT_FLUSH];
	LWLockRelease(SyncRepLock);
	if (!defined || flushed >= lsn)
		return true;
	appendStringInfo(why, "standbys: the synchronous standbys (synchronous_standby_names) have flushed up to %X/%X, not yet %X/%X",
					 LSN_FORMAT_ARGS(flushed), LSN_FORMAT_ARGS(lsn));
	return false;
}

/*
 * Position of application_name in the list (its priority, 0 first), or -1
 * when the list does not name it.
 */
static int
StandbysPriority(const char *application_name)
{
	const char *member = standbys_config->member_names;
	int			i;

	for (i = 0; i < standbys_config->nmembers; i++)
	{
		if (strcmp(member, "*") == 0 || pg_strcasecmp(member, application_name) == 0)
			return i;
		member += strlen(member) + 1;
	}
	return -1;
}

/*
 * The named standbys, from pg_stat_replication: ANY n needs n of them past
 * lsn; FIRST n needs the n connected ones of highest priority past it.
 */
static bool
StandbysListFlushed(XLogRecPtr lsn, StringInfo why)
{
	static const Oid types[2] = {TEXTOID, PG_LSNOID};
	const char *what = "pg_stat_replication";
	int			need = standbys_config->num_sync;
	bool		quorum = standbys_config->syncrep_method == SYNC_REP_QUORUM;
	int		   *connected = palloc0(sizeof(int) * standbys_config->nmembers);
	int		   *ahead = palloc0(sizeof(int) * standbys_config->nmembers);
	int			past = 0;
	int			chosen = 0;
	int			chosen_past = 0;
	uint64		i;
	int			p;
	StringInfoData seen;

	SpiCheckResult(SPI_execute("SELECT application_name, flush_lsn FROM pg_catalog.pg_stat_replication"
							   " WHERE state OPERATOR(pg_catalog.=) 'streaming'", true, 0),
				   SPI_OK_SELECT, what, 2, types);
	initStringInfo(&seen);
	for (i = 0; i < SPI_processed; i++)
	{
		bool		name_null,
					lsn_null;
		Datum		name = SpiGetValue(i, 1, true, &name_null, what);
		Datum		flushed = SpiGetValue(i, 2, true, &lsn_null, what);
		char	   *application_name;
		XLogRecPtr	at;

		if (name_null || lsn_null)
			continue;
		application_name = TextDatumGetCString(name);
		at = DatumGetLSN(flushed);
		p = StandbysPriority(application_name);
		if (p < 0)
			continue;
		appendStringInfo(&seen, "%s%s at %X/%X", seen.len ? ", " : "", application_name,
						 LSN_FORMAT_ARGS(at));
		/* Per priority: how many are connected, how many of them are past. */
		connected[p]++;
		if (at >= lsn)
		{
			ahead[p]++;
			past++;
		}
	}
	if (quorum)
	{
		if (past >= need)
			return true;
	}
	else
	{
		/* FIRST n: the connected ones in priority order, n of them. */
		for (p = 0; p < standbys_config->nmembers && chosen < need; p++)
		{
			int			take = Min(connected[p], need - chosen);

			/* Within one priority any may be chosen: prefer those past lsn. */
			chosen += take;
			chosen_past += Min(ahead[p], take);
		}
		if (chosen >= need && chosen_past >= need)
			return true;
	}
	appendStringInfo(why, "standbys: waiting for %s to flush %X/%X (%d named standby%s past it; streaming: %s)",
					 infra_kafka_wait_for_standbys, LSN_FORMAT_ARGS(lsn),
					 past, past == 1 ? " is" : "s are",
					 seen.len ? seen.data : "none of them");
	return false;
}
