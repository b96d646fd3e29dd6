/*-------------------------------------------------------------------------
 *
 * route.h
 *		infra-bridge: a route's statements, made from its configuration and
 *		its table's columns (route.c), run by db.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_BRIDGE_ROUTE_H
#define INFRA_BRIDGE_ROUTE_H

#include <libpq-fe.h>

#include "bridge.h"
#include "encode.h"

/* Per-route statements made by route_check. */
typedef struct RouteSql
{
	char	   *insert;			/* $1 route, $2..$3 seq range, $4 route name */
	char	   *delete;			/* deletes = on: the range's tombstoned keys */
	char	   *count;			/* upsert: the range's messages applied; debezium: and its last truncate */
	char	   *merge;			/* debezium: keys whose last event left TOASTed values out */
	char	   *truncate;		/* debezium: TRUNCATE the table */
	char	   *ids;			/* message ids of a range, for dedupe */
	char	   *copy;			/* direct COPY into the table, or NULL */
	struct ChangePlan *change;	/* debezium: change.c's plan, or NULL */
	CopyShape	shape;			/* what that COPY's columns get */
} RouteSql;

typedef struct Column
{
	char		name[64];		/* as in the catalog */
	char		quoted[140];	/* quote_ident */
	char		type[64];		/* format_type */
	char		typtype;		/* pg_type's: b base, d domain, e enum, ... */
	char		typcategory;	/* pg_type's: A array, ... */
	bool		has_default;
	char		generated;		/* attgenerated: s stored */
	char		identity;		/* attidentity: a always, d by default */
	char		defexpr[512];	/* its default, "" for none (or too long) */
	bool		pkey;			/* in the primary key */
} Column;

/* The columns a route writes and the expression of each, as it is built. */
#define ROUTE_MAX_TARGETS 256
#define ROUTE_MAX_KEYS 64
typedef struct RouteTargets
{
	const BridgeRoute *route;
	const char *table;			/* qualified name */
	Column	   *cols;			/* every column of the table */
	int			ncols;
	const Column *target[ROUTE_MAX_TARGETS];
	char		expr[ROUTE_MAX_TARGETS][200];
	CopyField	fields[ROUTE_MAX_TARGETS];
	int			nt;
	const char *lateral;		/* joined to the staging table's rows, or NULL */
} RouteTargets;

extern bool route_check(PGconn *conn, const char *user_search_path, const BridgeRoute *route, RouteSql *rs);

/* route.c, for debezium.c */
extern const Column *route_column(const Column *cols, int n, const char *name, const BridgeRoute *route,
								  const char *table);
extern bool route_resolve_table(const BridgeRoute *route, char *table, size_t size);
extern bool route_load_columns(RouteTargets *rt);
extern bool route_add_target(RouteTargets *rt, const Column *col, CopyField field, const char *fmt,...)
			__attribute__((format(printf, 4, 5)));
extern bool route_add_metadata_targets(RouteTargets *rt);
extern bool route_keys(RouteTargets *rt, int *keys, int *nkeys);
extern void route_append_literal(Buf *b, const char *s);
extern void route_append_source(RouteTargets *rt, const int *keys, int nkeys, Buf *b, bool tombstones, bool with_r);
extern void route_append_upsert(RouteTargets *rt, const int *keys, int nkeys, Buf *insert);
extern void route_build_ids(const BridgeRoute *route, RouteSql *rs);
extern PGconn *route_conn(void);

extern bool route_targets(PGconn *c, const char *user_path, const BridgeRoute *route, RouteTargets *rt,
						  char *table, size_t size);
extern bool route_prepare(const BridgeRoute *route, RouteSql *rs, const char *target);
extern void route_set_statements(RouteSql *rs, char *insert, char *delete, char *count, char *merge, char *truncate);

/* debezium.c: a format = debezium route checked and its statements made */
extern bool debezium_check(PGconn *conn, const char *user_search_path, const BridgeRoute *route, RouteSql *rs);

#endif							/* INFRA_BRIDGE_ROUTE_H */
