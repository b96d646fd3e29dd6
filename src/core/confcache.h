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

#include "utils/acl.h"

/* Fill a cache entry from the row the cache's query returned. */
typedef void (*ConfigRowReader) (HeapTuple tuple, TupleDesc desc, void *entry);

/*
 * Who a row of an owned table (rate_limiters, circuit_breakers) belongs to,
 * and this backend's last decision on whether its current user may use it
 * (kept until the user changes or a role or membership does).
 */
typedef struct ConfigOwner
{
	Oid			owner;
	char		owner_name[NAMEDATALEN];
	Acl		   *acl;			/* USAGE grants; NULL: the owner's alone */
	Oid			checked_user;
	uint64		checked_generation;
	bool		usable;
} ConfigOwner;

/*
 * One cache per table.  Entries are structs that begin with
 * char name[NAMEDATALEN], the table's primary key.  An owned table's query
 * returns owner (regrole) and acl (aclitem[]) as its last two columns, and
 * its entries hold a ConfigOwner at owner_offset.  The previous release's
 * tables (1.1) have no owner columns: their previous_query gives what
 * ALTER EXTENSION infra UPDATE will write, the extension's owner as owner
 * and USAGE for PUBLIC (none on names infra uses itself).
 */
typedef struct ConfigCache
{
	const char *table;			/* relation name in schema infra */
	Size		entrysize;
	const char *query;			/* one row by name = $1, schema-qualified */
	const char *previous_query; /* the same from the previous release's
								 * table (InfraSchemaIsPrevious); NULL: the
								 * query serves both */
	int			ncols;			/* columns the query returns, none NULL but acl */
	const Oid  *types;			/* and their types */
	ConfigRowReader read;
	const char *what;			/* "circuit breaker", for errors */
	const char *kind;			/* "circuit_breaker", as infra.grant_use names it */
	const char *hint;			/* for the not-found error */
	bool		owned;			/* rows have an owner and USAGE grants */
	Size		owner_offset;	/* of the entry's ConfigOwner */
	struct HTAB *hash;			/* NULL until used or after invalidation */
	MemoryContext acls;			/* the entries' ACLs, reset with the hash */
	Oid			relid;
	uint64		generation;		/* bumped by every invalidation */
} ConfigCache;

extern bool ConfigCacheFetch(ConfigCache *cache, const char *name, void *entry,
							 bool missing_ok);
extern bool InfraMayUse(Oid role, Oid owner, const Acl *acl);

#endif							/* INFRA_CONFCACHE_H */
