/*-------------------------------------------------------------------------
 *
 * json.c
 *		infra-bridge: the top-level fields of a JSON object, picked out
 *		with PostgreSQL's own JSON parser (frontend libpgcommon), so that a
 *		json_columns route can COPY typed columns straight into its table
 *		instead of having the server parse every message.
 *
 * The contract: when json_pick says yes, the text of each picked value is
 * what jsonb_populate_record() would hand the column type's input function
 * (or, for a jsonb column, a JSON text of the same value), so the row the
 * COPY writes is the row the staging path would write.  Whenever that is
 * not certain, json_pick says no and the batch goes through the staging
 * path, where the server decides (and bad messages become dead letters):
 *
 *  - the message must be valid UTF-8 (the server's own check), a JSON
 *    object PostgreSQL's parser accepts, without \u0000 (jsonb refuses it),
 *    nested at most JSON_MAX_DEPTH deep (the parser recurses);
 *  - no number anywhere with an exponent, nor longer than JSON_MAX_NUMBER
 *    (jsonb turns numbers into numeric: 1e3 becomes 1000, 1e999999
 *    overflows);
 *  - a value picked for a column that is not jsonb must be a scalar, and
 *    not a negative zero (numeric prints 0).
 * Duplicate keys: the last one wins, as in jsonb.
 *
 * This is the only file of the bridge that includes PostgreSQL's headers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres_fe.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"

#include "../src/core/compat.h"
#include "json.h"

#define JSON_MAX_DEPTH 64
#define JSON_MAX_NUMBER 1000

typedef struct PickState
{
	JsonLexContext *lex;
	const char *const *keys;
	const bool *raw;
	int			nkeys;
	JsonPick   *picks;
	Buf		   *out;
	int			depth;			/* objects and arrays open */
	int			field;			/* key index of the top-level field being read, or -1 */
	const char *value_start;	/* where that field's value starts */
	bool		scalar_seen;	/* the field's value was one scalar */
	bool		top_object;		/* the document is an object */
	bool		ok;				/* nothing seen that the server could read otherwise */
} PickState;

/* Keep len bytes as key index i's value. */
static void
keep(PickState *st, int i, const char *s, size_t len)
{
	st->picks[i].kind = JSON_PICK_VALUE;
	st->picks[i].off = st->out->len;
	st->picks[i].len = len;
	buf_append(st->out, s, len);
}

static InfraJsonCallbackResult
on_object_start(void *state)
{
	PickState  *st = state;

	if (st->depth == 0)
		st->top_object = true;
	st->depth++;
	INFRA_JSON_CALLBACK_DONE;
}

static InfraJsonCallbackResult
on_array_start(void *state)
{
	PickState  *st = state;

	st->depth++;
	INFRA_JSON_CALLBACK_DONE;
}

static InfraJsonCallbackResult
on_end(void *state)
{
	PickState  *st = state;

	st->depth--;
	INFRA_JSON_CALLBACK_DONE;
}

static InfraJsonCallbackResult
on_field_start(void *state, char *fname, bool isnull)
{
	PickState  *st = state;
	int			i;

	if (st->depth == 1)
	{
		st->field = -1;
		for (i = 0; i < st->nkeys; i++)
			if (strcmp(fname, st->keys[i]) == 0)
			{
				st->field = i;
				break;
			}
		/* The lexer stands on the value's first token. */
		st->value_start = st->lex->token_start;
		st->scalar_seen = false;
	}
	pfree(fname);
	INFRA_JSON_CALLBACK_DONE;
}

static InfraJsonCallbackResult
on_field_end(void *state, char *fname, bool isnull)
{
	PickState  *st = state;

	if (st->depth == 1 && st->field >= 0)
	{
		int			i = st->field;

		if (isnull)
		{
			st->picks[i].kind = JSON_PICK_NULL;
			st->picks[i].len = 0;
		}
		else if (st->raw[i])
			keep(st, i, st->value_start, (size_t) (st->lex->prev_token_terminator - st->value_start));
		else if (!st->scalar_seen)
			st->ok = false;		/* an object or array for a scalar column */
		st->field = -1;
	}
	/* PostgreSQL 15 passes the name again (the same allocation). */
	INFRA_JSON_CALLBACK_DONE;
}

/* A JSON number that is a negative zero (numeric prints it without the sign). */
bool
json_negative_zero(const char *s)
{
	if (*s++ != '-')
		return false;
	for (; *s; s++)
		if (*s != '0' && *s != '.')
			return false;
	return true;
}

static InfraJsonCallbackResult
on_scalar(void *state, char *token, JsonTokenType type)
{
	PickState  *st = state;

	if (type == JSON_TOKEN_NUMBER &&
		(strpbrk(token, "eE") != NULL || strlen(token) > JSON_MAX_NUMBER))
		st->ok = false;
	if (st->depth == 0)
		st->ok = false;			/* a scalar document, not an object */
	else if (st->depth == 1 && st->field >= 0 && !st->raw[st->field])
	{
		if (type == JSON_TOKEN_NUMBER && json_negative_zero(token))
			st->ok = false;
		else if (type != JSON_TOKEN_NULL)
			keep(st, st->field, token, strlen(token));
		st->scalar_seen = true;
	}
	pfree(token);
	INFRA_JSON_CALLBACK_DONE;
}

/*
 * How deep brackets nest outside strings, counted before the parser (which
 * recurses) sees the text; max + 1 when deeper than that.
 */
static int
nesting(const char *s, size_t len, int max)
{
	int			depth = 0;
	bool		in_string = false;
	size_t		i;

	for (i = 0; i < len; i++)
	{
		char		c = s[i];

		if (in_string)
		{
			if (c == '\\')
				i++;
			else if (c == '"')
				in_string = false;
		}
		else if (c == '"')
			in_string = true;
		else if ((c == '{' || c == '[') && ++depth > max)
			return depth;
		else if (c == '}' || c == ']')
			depth--;
	}
	return depth;
}

/*
 * Parse one JSON object and pick the values of its top-level keys named in
 * keys (nkeys of them) into picks (same indexes), their bytes appended to
 * out.  raw[i]: key i fills a jsonb column and gets its value's JSON text;
 * else the value's text as jsonb_populate_record gives a scalar column.
 * False when the staging path must decide (see the top of this file).
 */
bool
json_pick(const char *json, size_t len, const char *const *keys, const bool *raw,
		  int nkeys, JsonPick *picks, Buf *out)
{
	JsonLexContext storage;
	JsonLexContext *lex;
	JsonSemAction sem = {
		.object_start = on_object_start,
		.object_end = on_end,
		.array_start = on_array_start,
		.array_end = on_end,
		.object_field_start = on_field_start,
		.object_field_end = on_field_end,
		.scalar = on_scalar,
	};
	PickState	st = {
		.keys = keys, .raw = raw, .nkeys = nkeys, .picks = picks, .out = out,
		.field = -1, .ok = true,
	};
	JsonParseErrorType err;
	int			i;

	if (json == NULL || len > INT32_MAX ||
		pg_encoding_verifymbstr(PG_UTF8, json, (int) len) != (int) len ||
		nesting(json, len, JSON_MAX_DEPTH) > JSON_MAX_DEPTH)
		return false;
	for (i = 0; i < nkeys; i++)
		picks[i].kind = JSON_PICK_MISSING;
	lex = InfraJsonLexMake(storage, (char *) json, (int) len);
	st.lex = lex;
	sem.semstate = &st;
	err = pg_parse_json(lex, &sem);
	InfraJsonLexFree(lex);
	return err == JSON_SUCCESS && st.ok && st.top_object;
}

/*
 * A tree's documents may nest deeper than json_pick's (the parser's
 * recursion stays far inside a thread's stack), so that a document no
 * longer than this needs no scan first: it cannot nest deeper.
 */
#define TREE_MAX_DEPTH 1024

/*
 * A whole JSON document as a tree (json_tree), for format = debezium
 * routes that apply change events in the bridge.  The same contract as
 * json_pick: false whenever the server might read the text otherwise.
 */
typedef struct TreeState
{
	JsonLexContext *lex;
	JsonTree   *t;
	const char *src;
	int			stack[TREE_MAX_DEPTH + 1];	/* the open containers */
	int			depth;
	bool		has_key;		/* a field name waits for its value */
	size_t		key;
	size_t		key_len;
	bool		ok;
} TreeState;

/* A new node under the open container (with the waiting field name). */
static int
tree_add(TreeState *st, JsonNodeType type)
{
	JsonTree   *t = st->t;
	JsonNode   *n;
	int			i;

	if (t->n == t->cap)
	{
		t->cap = t->cap ? t->cap * 2 : 64;
		t->nodes = realloc(t->nodes, sizeof(JsonNode) * t->cap);
		if (t->nodes == NULL)
		{
			fprintf(stderr, "infra-bridge: out of memory\n");
			exit(1);
		}
	}
	i = t->n++;
	n = &t->nodes[i];
	n->type = type;
	n->first = n->last = n->next = -1;
	n->key = st->key;
	n->key_len = st->has_key ? st->key_len : 0;
	n->has_key = st->has_key;
	n->val = n->len = 0;
	st->has_key = false;
	if (st->depth > 0)
	{
		JsonNode   *parent = &t->nodes[st->stack[st->depth - 1]];

		if (parent->last >= 0)
			t->nodes[parent->last].next = i;
		else
			parent->first = i;
		parent->last = i;
	}
	return i;
}

/* Text kept in the tree, NUL-terminated; its offset. */
static size_t
tree_keep(JsonTree *t, const char *s, size_t len)
{
	size_t		off = t->text.len;

	buf_append(&t->text, s, len);
	buf_append(&t->text, "", 1);
	return off;
}

static InfraJsonCallbackResult
tree_open(TreeState *st, JsonNodeType type)
{
	int			i = tree_add(st, type);

	st->t->nodes[i].val = (size_t) (st->lex->token_start - st->src);
	st->stack[st->depth++] = i;
	INFRA_JSON_CALLBACK_DONE;
}

static InfraJsonCallbackResult
tree_object_start(void *state)
{
	return tree_open(state, JSON_NODE_OBJECT);
}

static InfraJsonCallbackResult
tree_array_start(void *state)
{
	return tree_open(state, JSON_NODE_ARRAY);
}

static InfraJsonCallbackResult
tree_end(void *state)
{
	TreeState  *st = state;
	JsonNode   *n = &st->t->nodes[st->stack[--st->depth]];

	n->len = (size_t) (st->lex->prev_token_terminator - st->src) - n->val;
	INFRA_JSON_CALLBACK_DONE;
}

static InfraJsonCallbackResult
tree_field_start(void *state, char *fname, bool isnull)
{
	TreeState  *st = state;

	st->key_len = strlen(fname);
	st->key = tree_keep(st->t, fname, st->key_len);
	st->has_key = true;
	pfree(fname);
	INFRA_JSON_CALLBACK_DONE;
}

static InfraJsonCallbackResult
tree_scalar(void *state, char *token, JsonTokenType type)
{
	TreeState  *st = state;
	JsonNodeType nt = type == JSON_TOKEN_STRING ? JSON_NODE_STRING :
		type == JSON_TOKEN_NUMBER ? JSON_NODE_NUMBER :
		type == JSON_TOKEN_NULL ? JSON_NODE_NULL : JSON_NODE_BOOL;
	int			i = tree_add(st, nt);

	if (type == JSON_TOKEN_NUMBER &&
		(strpbrk(token, "eE") != NULL || strlen(token) > JSON_MAX_NUMBER))
		st->ok = false;
	st->t->nodes[i].len = strlen(token);
	st->t->nodes[i].val = tree_keep(st->t, token, st->t->nodes[i].len);
	pfree(token);
	INFRA_JSON_CALLBACK_DONE;
}

/*
 * Parse one JSON document (valid UTF-8, nested at most TREE_MAX_DEPTH, no
 * number with an exponent or longer than JSON_MAX_NUMBER, no \u0000) into
 * t, reused across calls: node 0 is the root.  False otherwise.
 */
bool
json_tree(const char *json, size_t len, JsonTree *t)
{
	JsonLexContext storage;
	JsonLexContext *lex;
	JsonSemAction sem = {
		.object_start = tree_object_start,
		.object_end = tree_end,
		.array_start = tree_array_start,
		.array_end = tree_end,
		.object_field_start = tree_field_start,
		.scalar = tree_scalar,
	};
	TreeState	st = {.t = t, .src = json, .ok = true};
	JsonParseErrorType err;

	t->n = 0;
	t->text.len = 0;
	t->src = json;
	if (json == NULL || len > INT32_MAX || !json_utf8(json, len) ||
		(len > TREE_MAX_DEPTH && nesting(json, len, TREE_MAX_DEPTH) > TREE_MAX_DEPTH))
		return false;
	lex = InfraJsonLexMake(storage, (char *) json, (int) len);
	st.lex = lex;
	sem.semstate = &st;
	err = pg_parse_json(lex, &sem);
	InfraJsonLexFree(lex);
	return err == JSON_SUCCESS && st.ok && t->n > 0;
}

/* The last child of object node named key (the one jsonb keeps), or -1. */
int
json_child(const JsonTree *t, int node, const char *key)
{
	int			found = -1;
	int			i;

	if (node < 0 || t->nodes[node].type != JSON_NODE_OBJECT)
		return -1;
	for (i = t->nodes[node].first; i >= 0; i = t->nodes[i].next)
		if (strcmp(t->text.data + t->nodes[i].key, key) == 0)
			found = i;
	return found;
}

/* A scalar's text (a string's unescaped), or a container's JSON text. */
const char *
json_text(const JsonTree *t, int node, size_t *len)
{
	const JsonNode *n = &t->nodes[node];

	*len = n->len;
	if (n->type == JSON_NODE_OBJECT || n->type == JSON_NODE_ARRAY)
		return t->src + n->val;
	return t->text.data + n->val;
}

/* Valid UTF-8, as the server checks it. */
bool
json_utf8(const char *s, size_t len)
{
	return len <= INT32_MAX && pg_encoding_verifymbstr(PG_UTF8, s, (int) len) == (int) len;
}
