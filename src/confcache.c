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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "confcache.h"
#include "infra.h"

/* Caches in use in this backend, for the invalidation callback. */
#define MAX_CONFIG_CACHES 8
static ConfigCache *caches[MAX_CONFIG_CACHES];
static int	ncaches = 0;

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
			CacheRegisterRelcacheCallback(ConfigCacheInvalidate, (Datum) 0);
		if (ncaches >= MAX_CONFIG_CACHES)
			elog(ERROR, "too many infra configuration caches");
		caches[ncaches++] = cache;
	}
	if (cache->hash != NULL)
		return;

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
 * The cached row for name, or NULL (then read the table and store it,
 * passing back *generation).
 */
void *
ConfigCacheGet(ConfigCache *cache, const char *name, uint64 *generation)
{
	char		key[NAMEDATALEN];

	ConfigCacheOpen(cache);
	*generation = cache->generation;
	if (strlen(name) >= NAMEDATALEN)
		return NULL;
	memset(key, 0, sizeof(key));
	strlcpy(key, name, NAMEDATALEN);
	return hash_search(cache->hash, key, HASH_FIND, NULL);
}

/*
 * Keep a row read from the table.  If the table was invalidated since
 * ConfigCacheGet, the row may already be stale: it is not kept, and the
 * caller's copy serves this one call.  Returns the cached entry or NULL.
 */
void *
ConfigCacheStore(ConfigCache *cache, const void *entry, uint64 generation)
{
	void	   *stored;

	if (generation != cache->generation)
		return NULL;
	ConfigCacheOpen(cache);
	stored = hash_search(cache->hash, entry, HASH_ENTER, NULL);
	memcpy(stored, entry, cache->entrysize);
	return stored;
}
