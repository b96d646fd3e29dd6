/*-------------------------------------------------------------------------
 *
 * json.h
 *		infra-bridge: the top-level fields of a JSON object, picked out
 *		with PostgreSQL's own JSON parser, for json_columns routes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BRIDGE_JSON_H
#define BRIDGE_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

/* What a picked key came to. */
typedef enum JsonPickKind
{
	JSON_PICK_MISSING = 0,		/* no such key: NULL */
	JSON_PICK_NULL,				/* the JSON null: NULL */
	JSON_PICK_VALUE				/* a value: len bytes at out->data + off */
} JsonPickKind;

typedef struct JsonPick
{
	JsonPickKind kind;
	size_t		off;
	size_t		len;
} JsonPick;

extern bool json_pick(const char *json, size_t len, const char *const *keys, const bool *raw,
					  int nkeys, JsonPick *picks, Buf *out);

#endif							/* BRIDGE_JSON_H */
