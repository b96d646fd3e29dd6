/*-------------------------------------------------------------------------
 *
 * change.c
 *		infra-bridge: a format = debezium route's range of a batch applied
 *		from the bridge: each change event decoded here (json.c's parser,
 *		an envelope's schema part once per distinct text), its columns
 *		converted to the text the staging path's SQL would cast, and the
 *		range reduced as offset order would apply it: a truncate drops what
 *		came before it, a key with a delete or tombstone is deleted, a key
 *		whose last event is a create, read or update is upserted with that
 *		event's row.  The server then runs a COPY of those rows into a text
 *		stage, one DELETE and one INSERT ... ON CONFLICT: no JSON.
 *
 * The contract is json.c's: whenever this file is not certain to write
 * what debezium.c's statements would, it writes nothing and the range
 * takes the staging path (CHANGE_STAGED), which decides and makes dead
 * letters: a message it cannot parse, a value it does not convert exactly
 * as the SQL does, an event that may hold the unavailable-value
 * placeholder (Debezium's unchanged TOASTed columns: the stored value is
 * kept there), a key column left out.  What the server refuses (a value
 * its cast rejects, a constraint) rolls back to the staging path too.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "change.h"
#include "convert.h"
#include "encode.h"
#include "json.h"

#define SCHEMA_CACHE 4

/* A schema part, parsed once per distinct text in a range. */
typedef struct SchemaInfo
{
	const char *text;
	size_t		len;
	bool		ok;				/* the staging path would read it without error */
	bool		has_f;			/* its after has fields (else as without a schema) */
	FieldInfo  *fields;			/* per plan column */
} SchemaInfo;

/* One event's outcome so far: per key. */
typedef struct KeyEntry
{
	size_t		key;			/* in keys: the key's text */
	size_t		key_len;
	uint32_t	hash;
	bool		deleted;		/* a delete or tombstone in the range */
	int			upsert;			/* the last create, read or update (an index into rows), or -1 */
} KeyEntry;

typedef struct Range
{
	const ChangePlan *plan;
	JsonTree	tree;
	JsonTree	key_tree;
	JsonTree	schema_tree;
	SchemaInfo	schemas[SCHEMA_CACHE];
	int			nschemas;
	Buf			vals;			/* the event's column values, COPY text */
	size_t	   *spans;			/* per column: offset into vals, or SIZE_MAX for NULL */
	size_t	   *lens;
	Buf			keys;			/* the keys' texts */
	Buf			rows;			/* upserted rows, COPY text (without seq, d) */
	size_t	   *row_off;
	int			nrows;
	int			row_cap;
	KeyEntry   *map;			/* open addressing, cap a power of two */
	int			map_cap;
	int			nkeys;
	Buf			scratch;
	bool		truncate;
	char		why[160];		/* why the staging path must decide */
} Range;

static int	made[BRIDGE_MAX_WRITERS][BRIDGE_MAX_ROUTES];

static void *
must(void *p)
{
	if (p == NULL)
	{
		fprintf(stderr, "infra-bridge: out of memory\n");
		exit(1);
	}
	return p;
}

/* A new connection on slot: its stages are made again. */
void
change_forget(int slot)
{
	memset(made[slot], 0, sizeof(made[slot]));
}

/* INFRA_BRIDGE_CHANGE_DECODE=server: every range through the staging path (tests compare both). */
bool
change_direct_enabled(void)
{
	const char *v = getenv("INFRA_BRIDGE_CHANGE_DECODE");

	return v == NULL || strcmp(v, "server") != 0;
}

/*----- the schema part -----*/

/* A field object's ->> text when a string, else NULL (it equals none of the names asked). */
static const char *
field_string(const JsonTree *t, int node, const char *key)
{
	int			i = json_child(t, node, key);
	size_t		len;

	return i >= 0 && t->nodes[i].type == JSON_NODE_STRING ? json_text(t, i, &len) : NULL;
}

static int64_t
named_units(const char *name, bool is_time)
{
	if (name == NULL)
		return 0;
	if (strcmp(name, is_time ? "io.debezium.time.MicroTime" : "io.debezium.time.MicroTimestamp") == 0)
		return 1000000;
	if (strcmp(name, is_time ? "io.debezium.time.NanoTime" : "io.debezium.time.NanoTimestamp") == 0)
		return 1000000000;
	if (strcmp(name, is_time ? "io.debezium.time.Time" : "io.debezium.time.Timestamp") == 0 ||
		strcmp(name, is_time ? "org.apache.kafka.connect.data.Time" : "org.apache.kafka.connect.data.Timestamp") == 0)
		return 1000;
	return 0;
}

/* One field object g of after's schema, for the plan's column of its name. */
static bool
schema_field(const ChangePlan *plan, const JsonTree *t, int g, FieldInfo *fields)
{
	int			name = json_child(t, g, "field");
	int			k;
	size_t		len;
	const char *fname;

	if (t->nodes[g].type != JSON_NODE_OBJECT || name < 0 || t->nodes[name].type != JSON_NODE_STRING)
		return false;			/* the SQL's jsonb_object_agg refuses a NULL name */
	fname = json_text(t, name, &len);
	for (k = 0; k < plan->ncols; k++)
	{
		FieldInfo  *f = &fields[k];
		const char *sem = field_string(t, g, "name");
		const char *type = field_string(t, g, "type");
		int			params = json_child(t, g, "parameters");
		int			scale = json_child(t, params, "scale");
		long long	v;

		if (strcmp(plan->cols[k].name, fname) != 0)
			continue;
		memset(f, 0, sizeof(*f));	/* the last field of a name wins */
		f->found = true;
		f->decimal = sem != NULL && strcmp(sem, "org.apache.kafka.connect.data.Decimal") == 0;
		f->bytes = type != NULL && strcmp(type, "bytes") == 0;
		f->units = named_units(sem, plan->cols[k].kind == KIND_TIME);
		if (scale >= 0 && t->nodes[scale].type != JSON_NODE_NULL)
		{
			if ((t->nodes[scale].type != JSON_NODE_STRING && t->nodes[scale].type != JSON_NODE_NUMBER) ||
				!convert_integer(json_text(t, scale, &len), &v) || v < INT32_MIN || v > INT32_MAX)
				return false;
			f->has_scale = true;
			f->scale = (int) v;
		}
	}
	return true;
}

/*
 * The schema part's fields of after, as the staging path's SQL reads them
 * (jsonb_array_elements of fields, and of each one's fields): ok false
 * where that SQL would fail.
 */
static void
parse_schema(Range *rg, SchemaInfo *si)
{
	const ChangePlan *plan = rg->plan;
	JsonTree   *t = &rg->schema_tree;
	int			fields;
	int			h;

	si->ok = false;
	si->has_f = false;
	si->fields = must(calloc(plan->ncols > 0 ? plan->ncols : 1, sizeof(FieldInfo)));
	if (!json_tree(si->text, si->len, t))
		return;
	if (t->nodes[0].type != JSON_NODE_OBJECT || (fields = json_child(t, 0, "fields")) < 0)
	{
		si->ok = true;			/* no fields: as without a schema */
		return;
	}
	if (t->nodes[fields].type != JSON_NODE_ARRAY)
		return;
	for (h = t->nodes[fields].first; h >= 0; h = t->nodes[h].next)
	{
		int			inner = json_child(t, h, "fields");
		const char *name = field_string(t, h, "field");
		bool		after = name != NULL && strcmp(name, "after") == 0;
		int			g;

		if (inner < 0)
			continue;
		if (t->nodes[inner].type != JSON_NODE_ARRAY)
			return;
		for (g = t->nodes[inner].first; after && g >= 0; g = t->nodes[g].next)
		{
			if (!schema_field(plan, t, g, si->fields))
				return;
			si->has_f = true;
		}
	}
	si->ok = true;
}

/* The schema part of this text, parsed once per range; NULL when the staging path must decide. */
static const SchemaInfo *
schema_info(Range *rg, const char *text, size_t len)
{
	SchemaInfo *si;
	int			i;

	for (i = 0; i < rg->nschemas; i++)
		if (rg->schemas[i].len == len && memcmp(rg->schemas[i].text, text, len) == 0)
			return rg->schemas[i].ok ? &rg->schemas[i] : NULL;
	if (rg->nschemas == SCHEMA_CACHE)
	{
		free(rg->schemas[0].fields);
		memmove(&rg->schemas[0], &rg->schemas[1], sizeof(SchemaInfo) * (SCHEMA_CACHE - 1));
		rg->nschemas--;
	}
	si = &rg->schemas[rg->nschemas++];
	si->text = text;
	si->len = len;
	parse_schema(rg, si);
	return si->ok ? si : NULL;
}

/*----- the envelope -----*/

static size_t
skip_space(const char *s, size_t i, size_t len)
{
	while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
		i++;
	return i;
}

/* The end of the JSON value at s[i] (its brackets and strings matched), or 0. */
static size_t
skip_value(const char *s, size_t i, size_t len)
{
	int			depth = 0;
	bool		in_string = false;

	for (; i < len; i++)
	{
		char		ch = s[i];

		if (in_string)
		{
			if (ch == '\\')
				i++;
			else if (ch == '"')
			{
				in_string = false;
				if (depth == 0)
					return i + 1;
			}
		}
		else if (ch == '"')
			in_string = true;
		else if (ch == '{' || ch == '[')
			depth++;
		else if (ch == '}' || ch == ']')
		{
			if (--depth < 0)
				return 0;
			if (depth == 0)
				return i + 1;
		}
		else if (depth == 0 && (ch == ',' || ch == ' ' || ch == '\n' || ch == '\t' || ch == '\r'))
			return i;
	}
	return depth == 0 && !in_string ? i : 0;
}

/* The end of a schema part at s[i]: a text parsed before ends where it did (no scan). */
static size_t
skip_schema(const Range *rg, const char *s, size_t i, size_t len)
{
	int			k;

	for (k = rg->nschemas - 1; k >= 0; k--)
		if (len - i > rg->schemas[k].len && memcmp(s + i, rg->schemas[k].text, rg->schemas[k].len) == 0)
			return i + rg->schemas[k].len;
	return skip_value(s, i, len);
}

/*
 * The JSON converter's wrapping, {"schema": S, "payload": P} and nothing
 * else (names without escapes): S's and P's spans.  False for any other
 * text (then parsed whole).  What is skipped here is parsed afterwards: P
 * every time, S once per distinct text (a complete JSON value: the same
 * bytes again are the same value).  P after S is taken up to the last
 * closing brace, unscanned: its parse fails if anything else is there.
 */
static bool
wrapped(const Range *rg, const char *s, size_t len, size_t *so, size_t *sl, size_t *po, size_t *pl)
{
	size_t		i = skip_space(s, 0, len);
	bool		seen_s = false,
				seen_p = false;

	if (i >= len || s[i++] != '{')
		return false;
	for (;;)
	{
		size_t		end;
		bool		is_s;

		i = skip_space(s, i, len);
		if (len - i > 10 && memcmp(s + i, "\"schema\"", 8) == 0 && !seen_s)
			is_s = seen_s = true, i += 8;
		else if (len - i > 10 && memcmp(s + i, "\"payload\"", 9) == 0 && !seen_p)
			is_s = false, seen_p = true, i += 9;
		else
			return false;
		i = skip_space(s, i, len);
		if (i >= len || s[i++] != ':')
			return false;
		i = skip_space(s, i, len);
		if (!is_s && seen_s)
		{
			for (end = len; end > i && strchr(" \t\n\r", s[end - 1]) != NULL; end--)
				;
			if (end <= i + 1 || s[end - 1] != '}')
				return false;
			for (end--; end > i && strchr(" \t\n\r", s[end - 1]) != NULL; end--)
				;
			*po = i;
			*pl = end - i;
			return true;
		}
		if ((end = is_s ? skip_schema(rg, s, i, len) : skip_value(s, i, len)) == 0 || end == i)
			return false;
		*(is_s ? so : po) = i;
		*(is_s ? sl : pl) = end - i;
		i = skip_space(s, end, len);
		if (i < len && s[i] == ',' && !(seen_s && seen_p))
		{
			i++;
			continue;
		}
		if (i >= len || s[i] != '}' || !(seen_s && seen_p))
			return false;
		return skip_space(s, i + 1, len) == len;
	}
}

/* needle (not empty) is in the n bytes at s. */
static bool
contains(const char *s, size_t n, const char *needle)
{
	size_t		len = strlen(needle);
	const char *end = s + n;
	const char *p;

	for (p = s; (size_t) (end - p) >= len && (p = memchr(p, needle[0], (size_t) (end - p) - len + 1)) != NULL; p++)
		if (memcmp(p, needle, len) == 0)
			return true;
	return false;
}

/* The message holds one of the placeholder's forms (the SQL's ph). */
static bool
may_hold_placeholder(const ChangePlan *plan, const MsgBody *m)
{
	int			k;

	for (k = 0; k < 3; k++)
		if (plan->forms[k][0] != '\0' && contains(m->payload, m->len, plan->forms[k]))
			return true;
	return false;
}

/*----- the range -----*/

/* A key column's text compares as its value (the plan's key classes). */
static bool
key_comparable(KeyClass cls, const JsonTree *t, int node, const char *s, size_t len)
{
	long long	v;
	size_t		i;

	switch (cls)
	{
		case KEY_INT:
			return t->nodes[node].type == JSON_NODE_NUMBER && convert_integer(s, &v) && !json_negative_zero(s);
		case KEY_TEXT:
			return t->nodes[node].type == JSON_NODE_STRING;
		case KEY_UUID:
			if (t->nodes[node].type != JSON_NODE_STRING || len != 36)
				return false;
			for (i = 0; i < len; i++)
				if ((i == 8 || i == 13 || i == 18 || i == 23) ? s[i] != '-' :
					!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
					return false;
			return true;
	}
	return false;
}

/*
 * The values of obj (an event's after, before or key) into rg->vals and
 * spans, every column or only the keys, and the key's text into
 * rg->keys (its offset in *key).  False when the staging path must decide.
 */
static bool
event_values(Range *rg, const SchemaInfo *si, const JsonTree *t, int obj, bool keys_only, size_t *key)
{
	const ChangePlan *plan = rg->plan;
	Buf			one = {0};
	bool		ok = true;
	int			k;
	int			c;

	if (t->nodes[obj].type != JSON_NODE_OBJECT)
	{
		snprintf(rg->why, sizeof(rg->why), "no JSON object of columns");
		return false;
	}
	rg->vals.len = 0;
	for (c = 0; c < plan->ncols; c++)
		rg->spans[c] = SIZE_MAX;
	for (c = 0; c < plan->ncols && ok; c++)
	{
		bool		null;
		int			node;
		bool		is_key = plan->key_of[c] >= 0;

		if (keys_only && !is_key)
			continue;
		node = json_child(t, obj, plan->cols[c].name);
		one.len = 0;
		ok = convert_value(rg->plan, &rg->scratch, &plan->cols[c],
						   si != NULL && si->fields[c].found ? &si->fields[c] : NULL, si != NULL && si->has_f, t, node,
						   &one, &null);
		if (ok && !null)
		{
			rg->spans[c] = rg->vals.len;
			copy_text(&rg->vals, one.data ? one.data : "", one.len);
			rg->lens[c] = rg->vals.len - rg->spans[c];
		}
		if (ok && is_key)
			ok = !null && key_comparable(plan->key_class[plan->key_of[c]], t, node, one.data, one.len);
		if (!ok)
			snprintf(rg->why, sizeof(rg->why), "the value of column \"%s\"%s", plan->cols[c].name,
					 is_key ? " (a key)" : node < 0 ? " (left out, with a default)" : "");
	}
	free(one.data);
	if (!ok)
		return false;
	/* The key's text: each key column's COPY text, tab-separated (a tab inside is escaped). */
	*key = rg->keys.len;
	for (k = 0; k < plan->nkeys; k++)
	{
		buf_append(&rg->keys, rg->vals.data + rg->spans[plan->keys[k]], rg->lens[plan->keys[k]]);
		buf_append(&rg->keys, "\t", 1);
	}
	return true;
}

static uint32_t
hash_bytes(const char *s, size_t len)
{
	uint32_t	h = 2166136261u;
	size_t		i;

	for (i = 0; i < len; i++)
		h = (h ^ (unsigned char) s[i]) * 16777619u;
	return h;
}

/* The entry of the key just appended to rg->keys at off (made when new). */
static KeyEntry *
key_entry(Range *rg, size_t off)
{
	size_t		len = rg->keys.len - off;
	uint32_t	h = hash_bytes(rg->keys.data + off, len);
	int			i;

	if ((rg->nkeys + 1) * 2 > rg->map_cap)
	{
		KeyEntry   *old = rg->map;
		int			old_cap = rg->map_cap;

		rg->map_cap = rg->map_cap ? rg->map_cap * 2 : 1024;
		rg->map = must(calloc(rg->map_cap, sizeof(KeyEntry)));
		for (i = 0; i < old_cap; i++)
			if (old[i].key_len > 0)
			{
				int			j = old[i].hash & (rg->map_cap - 1);

				while (rg->map[j].key_len > 0)
					j = (j + 1) & (rg->map_cap - 1);
				rg->map[j] = old[i];
			}
		free(old);
	}
	for (i = h & (rg->map_cap - 1); rg->map[i].key_len > 0; i = (i + 1) & (rg->map_cap - 1))
		if (rg->map[i].hash == h && rg->map[i].key_len == len &&
			memcmp(rg->keys.data + rg->map[i].key, rg->keys.data + off, len) == 0)
		{
			rg->keys.len = off;	/* known: its text kept once */
			return &rg->map[i];
		}
	rg->map[i].key = off;
	rg->map[i].key_len = len;
	rg->map[i].hash = h;
	rg->map[i].deleted = false;
	rg->map[i].upsert = -1;
	rg->nkeys++;
	return &rg->map[i];
}

/* The event's row (rg->vals by spans), kept as COPY text: its index. */
static int
keep_row(Range *rg)
{
	int			c;

	if (rg->nrows == rg->row_cap)
	{
		rg->row_cap = rg->row_cap ? rg->row_cap * 2 : 1024;
		rg->row_off = must(realloc(rg->row_off, sizeof(size_t) * rg->row_cap));
	}
	rg->row_off[rg->nrows] = rg->rows.len;
	for (c = 0; c < rg->plan->ncols; c++)
	{
		buf_puts(&rg->rows, "\t");
		if (rg->spans[c] == SIZE_MAX)
			buf_puts(&rg->rows, "\\N");
		else
			buf_append(&rg->rows, rg->vals.data + rg->spans[c], rg->lens[c]);
	}
	buf_puts(&rg->rows, "\n");
	return rg->nrows++;
}

/* A truncate event: what came before it in the range is moot. */
static void
forget_all(Range *rg)
{
	if (rg->map != NULL)
		memset(rg->map, 0, sizeof(KeyEntry) * rg->map_cap);
	rg->nkeys = 0;
	rg->keys.len = 0;
	rg->rows.len = 0;
	rg->nrows = 0;
	rg->truncate = true;
}

/* The key just appended to rg->keys at off is deleted (its last event, so far). */
static void
deleted(Range *rg, size_t off)
{
	KeyEntry   *e = key_entry(rg, off);

	e->deleted = true;
	e->upsert = -1;
}

/* False, saying why. */
static bool
refuse(Range *rg, const char *why)
{
	snprintf(rg->why, sizeof(rg->why), "%s", why);
	return false;
}

/* A tombstone: its key (the JSON converter's wrapping allowed) deleted. */
static bool
tombstone(Range *rg, const MsgBody *m)
{
	JsonTree   *t = &rg->key_tree;
	int			root = 0;
	size_t		key;

	if (m->key == NULL || !json_tree(m->key, m->key_len, t) || t->nodes[0].type != JSON_NODE_OBJECT)
		return refuse(rg, "a tombstone without a JSON object key");
	if (json_child(t, 0, "schema") >= 0 && json_child(t, 0, "payload") >= 0)
		root = json_child(t, 0, "payload");
	if (!event_values(rg, NULL, t, root, true, &key))
		return false;
	deleted(rg, key);
	return true;
}

/* One change event of the range taken in: false when the staging path must decide. */
static bool
take_event(Range *rg, const MsgBody *m)
{
	const ChangePlan *plan = rg->plan;
	JsonTree   *t = &rg->tree;
	const SchemaInfo *si = NULL;
	size_t		so = 0,
				sl = 0,
				po = 0,
				pl = 0;
	int			op;
	int			part;
	size_t		len;
	size_t		key;
	char		o;

	if (m->payload == NULL)
		return !plan->route->deletes || tombstone(rg, m);
	if (may_hold_placeholder(plan, m))
		return refuse(rg, "it may hold the unavailable-value placeholder");
	if (wrapped(rg, m->payload, m->len, &so, &sl, &po, &pl))
	{
		/* The bytes between S and P are ASCII, checked; S and P are parsed. */
		if ((si = schema_info(rg, (const char *) m->payload + so, sl)) == NULL)
			return refuse(rg, "its schema part");
		if (!json_tree((const char *) m->payload + po, pl, t))
			return refuse(rg, "its payload's JSON");
	}
	else if (!json_tree(m->payload, m->len, t) ||
			 (json_child(t, 0, "schema") >= 0 && json_child(t, 0, "payload") >= 0))
		return refuse(rg, "its JSON");
	op = json_child(t, 0, "op");
	if (op < 0 || t->nodes[op].type != JSON_NODE_STRING)
		return refuse(rg, "no op");
	o = json_text(t, op, &len)[0];
	if (len != 1 || strchr("crudt", o) == NULL)
		return refuse(rg, "not one of Debezium's ops");
	if (o == 't' || o == 'd')
	{
		if (!plan->route->deletes)
			return true;
		if (o == 't')
		{
			forget_all(rg);
			return true;
		}
		part = json_child(t, 0, "before");
		if (part < 0 || !event_values(rg, si, t, part, true, &key))
			return false;
		deleted(rg, key);
		return true;
	}
	part = json_child(t, 0, "after");
	if (part < 0 || !event_values(rg, si, t, part, false, &key))
		return false;
	key_entry(rg, key)->upsert = keep_row(rg);
	return true;
}

static void
range_free(Range *rg)
{
	int			i;

	for (i = 0; i < rg->nschemas; i++)
		free(rg->schemas[i].fields);
	free(rg->tree.nodes);
	free(rg->tree.text.data);
	free(rg->key_tree.nodes);
	free(rg->key_tree.text.data);
	free(rg->schema_tree.nodes);
	free(rg->schema_tree.text.data);
	free(rg->vals.data);
	free(rg->spans);
	free(rg->lens);
	free(rg->keys.data);
	free(rg->rows.data);
	free(rg->row_off);
	free(rg->map);
	free(rg->scratch.data);
}

/* The stage's rows: each deleted key (d), then each upserted row in offset order. */
static void
stage_rows(const Range *rg, Buf *copy, int *ndeleted, int *nupserted)
{
	const ChangePlan *plan = rg->plan;
	char	   *upserted = must(calloc(rg->nrows > 0 ? rg->nrows : 1, 1));
	int			i;
	int			c;

	*ndeleted = *nupserted = 0;
	for (i = 0; i < rg->map_cap; i++)
	{
		const KeyEntry *e = &rg->map[i];
		const char *k;

		if (e->key_len == 0)
			continue;
		if (e->upsert >= 0)
			upserted[e->upsert] = 1;
		if (!e->deleted)
			continue;
		(*ndeleted)++;
		buf_puts(copy, "0\tt");
		/* The key's text holds its columns' COPY texts, each ended by a tab. */
		k = rg->keys.data + e->key;
		for (c = 0; c < plan->ncols; c++)
		{
			int			n = plan->key_of[c];

			buf_puts(copy, "\t");
			if (n < 0)
				buf_puts(copy, "\\N");
			else
			{
				const char *f = k;
				int			skip;
				const char *end;

				for (skip = 0; skip < n; skip++)
					f = strchr(f, '\t') + 1;
				end = strchr(f, '\t');
				buf_append(copy, f, (size_t) (end - f));
			}
		}
		buf_puts(copy, "\n");
	}
	for (i = 0; i < rg->nrows; i++)
		if (upserted[i])
		{
			size_t		end = i + 1 < rg->nrows ? rg->row_off[i + 1] : rg->rows.len;
			char		seq[16];
			int			k = sizeof(seq);
			int			v = i + 1;

			(*nupserted)++;
			seq[--k] = 'f';
			seq[--k] = '\t';
			do
			{
				seq[--k] = (char) ('0' + v % 10);
				v /= 10;
			} while (v > 0);
			buf_append(copy, seq + k, sizeof(seq) - k);
			buf_append(copy, rg->rows.data + rg->row_off[i], end - rg->row_off[i]);
		}
	free(upserted);
}

/* One statement of the apply; false with *failed its result when it did not go through. */
static bool
exec(PGconn *conn, const char *sql, PGresult **failed)
{
	PGresult   *res = PQexec(conn, sql);

	if (PQresultStatus(res) == PGRES_COMMAND_OK)
	{
		PQclear(res);
		return true;
	}
	*failed = res;
	return false;
}

/* COPY the stage's rows. */
static bool
copy_stage(PGconn *conn, const char *sql, const Buf *copy, PGresult **failed)
{
	PGresult   *res = PQexec(conn, sql);

	if (PQresultStatus(res) != PGRES_COPY_IN)
	{
		*failed = res;
		return false;
	}
	PQclear(res);
	if (PQputCopyData(conn, copy->data, (int) copy->len) != 1 || PQputCopyEnd(conn, NULL) != 1)
	{
		*failed = PQgetResult(conn);
		return false;
	}
	res = PQgetResult(conn);
	while (PQgetResult(conn) != NULL)
		;
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
	{
		*failed = res;
		return false;
	}
	PQclear(res);
	return true;
}

/*
 * Apply route's messages among messages[lo..hi] (routes[i] == route) in
 * the open transaction on conn (writer slot): CHANGE_STAGED, nothing run,
 * when the staging path must decide; CHANGE_FAILED with *failed the result
 * of the statement that did not go through (the caller tells a bad row
 * from a failure); else the messages applied in *written.
 */
ChangeResult
change_apply(PGconn *conn, int slot, int route, const ChangePlan *plan, rd_kafka_message_t **messages,
			 const MsgBody *bodies, const int *routes, int lo, int hi, long long *written, PGresult **failed)
{
	Range		rg = {.plan = plan};
	Buf			copy = {0};
	long long	n = 0;
	int			ndeleted,
				nupserted;
	int			i;
	bool		ok = true;

	*failed = NULL;
	rg.spans = must(malloc(sizeof(size_t) * (plan->ncols + 1)));
	rg.lens = must(malloc(sizeof(size_t) * (plan->ncols + 1)));
	for (i = lo; i <= hi && ok; i++)
		if (routes[i] == route)
		{
			ok = take_event(&rg, &bodies[i]);
			n++;
			if (!ok)
				log_debug("route \"%s\": message at %s [%d] offset %lld is for the staging path (%s): its range"
						  " goes there", plan->route->name, rd_kafka_topic_name(messages[i]->rkt),
						  (int) messages[i]->partition, (long long) messages[i]->offset, rg.why);
		}
	if (!ok)
	{
		range_free(&rg);
		return CHANGE_STAGED;
	}
	stage_rows(&rg, &copy, &ndeleted, &nupserted);
	if (made[slot][route] != plan->gen)
	{
		ok = exec(conn, plan->create, failed);
		if (ok)
			made[slot][route] = plan->gen;
	}
	ok = ok && (copy.len == 0 || copy_stage(conn, plan->copy, &copy, failed));
	ok = ok && (!rg.truncate || exec(conn, plan->truncate, failed));
	ok = ok && (ndeleted == 0 || exec(conn, plan->delete, failed));
	ok = ok && (nupserted == 0 || exec(conn, plan->upsert, failed));
	if (ok)
		log_debug("route \"%s\": %lld change events applied in the bridge: %s%d keys deleted, %d rows upserted",
				  plan->route->name, n, rg.truncate ? "a truncate, " : "", ndeleted, nupserted);
	range_free(&rg);
	free(copy.data);
	if (!ok)
		return CHANGE_FAILED;
	*written += n;
	return CHANGE_WRITTEN;
}
