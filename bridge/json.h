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

/* A document as a tree (json_tree): nodes by index, 0 the root. */
typedef enum JsonNodeType
{
	JSON_NODE_NULL,
	JSON_NODE_STRING,
	JSON_NODE_NUMBER,
	JSON_NODE_BOOL,
	JSON_NODE_OBJECT,
	JSON_NODE_ARRAY
} JsonNodeType;

typedef struct JsonNode
{
	JsonNodeType type;
	int			first;			/* first child, or -1 */
	int			last;			/* last child, or -1 */
	int			next;			/* next sibling, or -1 */
	bool		has_key;		/* a field of an object */
	size_t		key;			/* its name in text */
	size_t		key_len;
	size_t		val;			/* scalars: in text; containers: in the source */
	size_t		len;
} JsonNode;

typedef struct JsonTree
{
	JsonNode   *nodes;
	int			n;
	int			cap;
	Buf			text;			/* names and scalars, each NUL-terminated */
	const char *src;
} JsonTree;

extern bool json_tree(const char *json, size_t len, JsonTree *t);
extern int	json_child(const JsonTree *t, int node, const char *key);
extern const char *json_text(const JsonTree *t, int node, size_t *len);
extern bool json_utf8(const char *s, size_t len);
extern bool json_negative_zero(const char *s);

extern bool json_pick(const char *json, size_t len, const char *const *keys, const bool *raw,
					  int nkeys, JsonPick *picks, Buf *out);

#endif							/* BRIDGE_JSON_H */
