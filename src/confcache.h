/*-------------------------------------------------------------------------
 *
 * confcache.h
 *		Backend-local caches of infra's configuration tables.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_CONFCACHE_H
#define INFRA_CONFCACHE_H

/*
 * One cache per table.  Entries are structs that begin with
 * char name[NAMEDATALEN], the table's primary key.
 */
typedef struct ConfigCache
{
	const char *table;			/* relation name in schema infra */
	Size		entrysize;
	struct HTAB *hash;			/* NULL until used or after invalidation */
	Oid			relid;
	uint64		generation;		/* bumped by every invalidation */
} ConfigCache;

extern void *ConfigCacheGet(ConfigCache *cache, const char *name,
							uint64 *generation);
extern void *ConfigCacheStore(ConfigCache *cache, const void *entry,
							  uint64 generation);

#endif							/* INFRA_CONFCACHE_H */
