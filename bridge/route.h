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
	char	   *count;			/* upsert: the range's messages applied */
	char	   *ids;			/* message ids of a range, for dedupe */
	char	   *copy;			/* direct COPY into the table, or NULL */
	CopyShape	shape;			/* what that COPY's columns get */
} RouteSql;

extern bool route_check(PGconn *conn, const char *user_search_path, const BridgeRoute *route, RouteSql *rs);

#endif							/* INFRA_BRIDGE_ROUTE_H */
