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

static bool
negative_zero(const char *s)
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
		if (type == JSON_TOKEN_NUMBER && negative_zero(token))
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
 * recurses) sees the text; JSON_MAX_DEPTH + 1 when deeper than that.
 */
static int
nesting(const char *s, size_t len)
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
		else if ((c == '{' || c == '[') && ++depth > JSON_MAX_DEPTH)
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
		nesting(json, len) > JSON_MAX_DEPTH)
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
