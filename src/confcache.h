/*-------------------------------------------------------------------------
 *
 * confcache.h
 *		Backend-local caches of infra's configuration tables.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_CONFCACHE_H
#define INFRA_CONFCACHE_H

#include "access/htup.h"
#include "access/tupdesc.h"

/* Fill a cache entry from the row the cache's query returned. */
typedef void (*ConfigRowReader) (HeapTuple tuple, TupleDesc desc, void *entry);

/*
 * One cache per table.  Entries are structs that begin with
 * char name[NAMEDATALEN], the table's primary key.
 */
typedef struct ConfigCache
{
	const char *table;			/* relation name in schema infra */
	Size		entrysize;
	const char *query;			/* one row by name = $1, schema-qualified */
	int			ncols;			/* columns the query returns, none NULL */
	const Oid  *types;			/* and their types */
	ConfigRowReader read;
	const char *what;			/* "circuit breaker", for errors */
	const char *hint;			/* for the not-found error */
	struct HTAB *hash;			/* NULL until used or after invalidation */
	Oid			relid;
	uint64		generation;		/* bumped by every invalidation */
} ConfigCache;

extern bool ConfigCacheFetch(ConfigCache *cache, const char *name, void *entry,
							 bool missing_ok);

#endif							/* INFRA_CONFCACHE_H */
