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
 * Called by ratelimit.c, breaker.c and retry.c; no shared memory.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "confcache.h"
#include "infra.h"
#include "spicheck.h"

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
		memcpy(entry, cached, cache->entrysize);
		return true;
	}

	values[0] = CStringGetTextDatum(name);
	SPI_connect();
	SpiCheckResult(SPI_execute_with_args(cache->query, 1, argtypes, values, NULL,
										 true, 1),
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

		/* The readers take every column as present. */
		for (col = 1; col <= cache->ncols; col++)
			(void) SpiGetValue(0, col, false, NULL, cache->table);
	}
	memset(entry, 0, cache->entrysize);
	strlcpy((char *) entry, name, NAMEDATALEN);
	cache->read(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, entry);
	SPI_finish();

	/* An invalidation while reading: the row may be stale, serve it once. */
	if (generation == cache->generation)
	{
		ConfigCacheOpen(cache);
		memcpy(hash_search(cache->hash, entry, HASH_ENTER, NULL), entry,
			   cache->entrysize);
	}
	return true;
}
