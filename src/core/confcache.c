/*-------------------------------------------------------------------------
 *
 * confcache.c
 *		Backend-local caches of infra's configuration tables.
 *
 * Rate limiters, breakers and retry policies are configured in tables, but
 * the functions that use them run far more often than the tables change.
 * Each backend keeps the rows it has used in a hash table and drops it when
 * the table's relcache entry is invalidated; the tables' statement trigger
 * (infra.config_changed) sends that invalidation, so a change applies in
 * every backend once it commits.
 *
 * Named limiters and breakers have owners, the PostgreSQL way: a row
 * belongs to the role that wrote it (column owner), and others may use it
 * when its owner, or a role they have the privileges of, granted them USAGE
 * (column acl, written by infra.grant_use).  The decision is cached with
 * the row for the backend's current user and made again when the user
 * changes or any role or membership does (GRANT, REVOKE, DROP ROLE send a
 * syscache invalidation), so the check costs two comparisons per call.
 *
 * Called by ratelimit.c, breaker.c and retry.c; no shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "core/confcache.h"
#include "core/infra.h"
#include "core/spicheck.h"
#include "core/version.h"

/* Caches in use in this backend, for the invalidation callback. */
#define MAX_CONFIG_CACHES 8
static ConfigCache *caches[MAX_CONFIG_CACHES];
static int	ncaches = 0;

/* Bumped when any role or membership changes: usage decisions are stale. */
static uint64 role_generation = 1;

/*
 * Syscache callback for pg_authid and pg_auth_members.
 */
static void
ConfigRolesChanged(Datum arg, int cacheid, uint32 hashvalue)
{
	role_generation++;
}

/*
 * Relcache callback: drop the cache of the table invalidated (every cache,
 * when the whole relcache is).
 */
static void
ConfigCacheInvalidate(Datum arg, Oid relid)
{
	int			i;

	for (i = 0; i < ncaches; i++)
	{
		ConfigCache *cache = caches[i];

		if (cache->hash != NULL &&
			(relid == InvalidOid || relid == cache->relid))
		{
			hash_destroy(cache->hash);
			cache->hash = NULL;
			if (cache->acls != NULL)
				MemoryContextReset(cache->acls);
			cache->generation++;
		}
	}
}

/*
 * Make sure the cache has a hash table and is known to the callback.
 */
static void
ConfigCacheOpen(ConfigCache *cache)
{
	HASHCTL		info;
	int			i;

	for (i = 0; i < ncaches; i++)
		if (caches[i] == cache)
			break;
	if (i == ncaches)
	{
		if (ncaches == 0)
		{
			CacheRegisterRelcacheCallback(ConfigCacheInvalidate, (Datum) 0);
			CacheRegisterSyscacheCallback(AUTHOID, ConfigRolesChanged, (Datum) 0);
			CacheRegisterSyscacheCallback(AUTHMEMROLEMEM, ConfigRolesChanged, (Datum) 0);
		}
		if (ncaches >= MAX_CONFIG_CACHES)
			elog(ERROR, "too many infra configuration caches");
		caches[ncaches++] = cache;
	}
	if (cache->hash != NULL)
		return;
	if (cache->owned && cache->acls == NULL)
		cache->acls = AllocSetContextCreate(TopMemoryContext, "infra configuration ACLs",
											ALLOCSET_SMALL_SIZES);

	cache->relid = get_relname_relid(cache->table,
									 get_namespace_oid(INFRA_NAME, false));
	memset(&info, 0, sizeof(info));
	info.keysize = NAMEDATALEN;
	info.entrysize = cache->entrysize;
	info.hcxt = TopMemoryContext;
	cache->hash = hash_create(cache->table, 16, &info,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
}

/*
 * May role use a name that owner owns, with these USAGE grants?  Superusers
 * and roles with the owner's privileges may; others by a grant (to them, to
 * a role whose privileges they have, or to PUBLIC).
 */
bool
InfraMayUse(Oid role, Oid owner, const Acl *acl)
{
	if (superuser_arg(role) || has_privs_of_role(role, owner))
		return true;
	return acl != NULL &&
		aclmask(acl, role, owner, ACL_USAGE, ACLMASK_ANY) != 0;
}

/*
 * An owned row's owner and grants (the query's last two columns), into the
 * entry; the ACL is copied into the cache's memory.
 */
static void
ConfigOwnerRead(ConfigCache *cache, void *entry)
{
	ConfigOwner *own = (ConfigOwner *) ((char *) entry + cache->owner_offset);
	bool		isnull;
	Datum		d;
	char	   *name;

	own->owner = DatumGetObjectId(SpiGetValue(0, cache->ncols - 1, false, NULL, cache->table));
	name = GetUserNameFromId(own->owner, true);
	strlcpy(own->owner_name, name ? name : "", NAMEDATALEN);
	d = SpiGetValue(0, cache->ncols, true, &isnull, cache->table);
	own->acl = NULL;
	if (!isnull)
	{
		MemoryContext old = MemoryContextSwitchTo(cache->acls);

		own->acl = DatumGetAclPCopy(d);
		MemoryContextSwitchTo(old);
	}
	own->checked_user = InvalidOid;
}

/*
 * Refuse the current user an owned row it may not use; the decision is
 * kept in the cached entry until the user or a role changes.
 */
static void
ConfigOwnerCheck(ConfigCache *cache, void *cached, const char *name)
{
	ConfigOwner *own = (ConfigOwner *) ((char *) cached + cache->owner_offset);
	Oid			user = GetUserId();

	if (own->checked_user != user || own->checked_generation != role_generation)
	{
		own->usable = InfraMayUse(user, own->owner, own->acl);
		own->checked_user = user;
		own->checked_generation = role_generation;
	}
	if (!own->usable)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for %s \"%s\"", cache->what, name),
				 errdetail("It belongs to role \"%s\", which has not granted its use to this role.", own->owner_name),
				 errhint("Its owner can share it: SELECT infra.grant_use('%s', '%s', '<role>');",
						 cache->kind, name)));
}

/*
 * Copy the configuration row "name" into *entry: from the cache, or read
 * with the cache's query (and kept, unless the table was invalidated while
 * it was read).  An unknown name is an error naming what is missing, or
 * with missing_ok a false return.
 */
bool
ConfigCacheFetch(ConfigCache *cache, const char *name, void *entry,
				 bool missing_ok)
{
	char		key[NAMEDATALEN];
	void	   *cached = NULL;
	uint64		generation;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];

	ConfigCacheOpen(cache);
	generation = cache->generation;
	if (strlen(name) < NAMEDATALEN)
	{
		memset(key, 0, sizeof(key));
		strlcpy(key, name, NAMEDATALEN);
		cached = hash_search(cache->hash, key, HASH_FIND, NULL);
	}
	if (cached != NULL)
	{
		if (cache->owned)
			ConfigOwnerCheck(cache, cached, name);
		memcpy(entry, cached, cache->entrysize);
		return true;
	}

	values[0] = CStringGetTextDatum(name);
	SPI_connect();
	SpiCheckResult(SPI_execute_with_args(cache->previous_query && InfraSchemaIsPrevious() ?
										 cache->previous_query : cache->query,
										 1, argtypes, values, NULL, true, 1),
				   SPI_OK_SELECT, cache->table, cache->ncols, cache->types);
	if (SPI_processed == 0 && missing_ok)
	{
		SPI_finish();
		return false;
	}
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("%s \"%s\" does not exist", cache->what, name),
				 errhint("%s", cache->hint)));
	{
		int			col;

		/* The readers take every column as present (an ACL may be NULL). */
		for (col = 1; col <= cache->ncols - (cache->owned ? 1 : 0); col++)
			(void) SpiGetValue(0, col, false, NULL, cache->table);
	}
	memset(entry, 0, cache->entrysize);
	strlcpy((char *) entry, name, NAMEDATALEN);
	if (cache->owned)
		ConfigOwnerRead(cache, entry);
	cache->read(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, entry);
	SPI_finish();

	/* An invalidation while reading: the row may be stale, serve it once. */
	if (generation == cache->generation)
	{
		ConfigCacheOpen(cache);
		cached = hash_search(cache->hash, entry, HASH_ENTER, NULL);
		memcpy(cached, entry, cache->entrysize);
	}
	else
		cached = entry;
	if (cache->owned)
		ConfigOwnerCheck(cache, cached, name);
	memcpy(entry, cached, cache->entrysize);
	return true;
}
