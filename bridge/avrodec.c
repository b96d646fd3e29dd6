/*-------------------------------------------------------------------------
 *
 * avrodec.c
 *		infra-bridge: Avro messages in Confluent's wire format (a zero byte,
 *		the schema's id in four bytes big-endian, the Avro binary) decoded
 *		with avro-c into the JSON the routes read, so that format = avro
 *		goes as json_columns and Debezium's Avro envelopes as the JSON
 *		converter's.
 *
 * Schemas come from a registry serving Confluent's API (GET
 * /schemas/ids/N), once per id: a registry never changes what an id means.
 * avro-c reads the binary; what it does not keep of a schema (logicalType,
 * Kafka Connect's connect.name and connect.parameters) is read from the
 * schema's JSON, walked next to the value.
 *
 * AVRO_COLUMNS writes each value as PostgreSQL reads it from json_columns'
 * jsonb_populate_record: decimals as numbers at their scale, dates, times
 * and timestamps as text (UTC, or local for local-timestamp-*), bytes as
 * bytea's \x text, durations as intervals, records and maps as objects.
 * AVRO_CONNECT writes what Kafka Connect's JSON converter would for the
 * same Connect data: {"schema": S, "payload": P}, S made from the Avro
 * schema (Connect's types, connect.name, connect.parameters; Avro's
 * logical types by their Connect names), bytes as base64.
 *
 *-------------------------------------------------------------------------
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <avro.h>
#include <curl/curl.h>

#include "avrodec.h"
#include "bridge.h"
#include "convert.h"
#include "encode.h"
#include "json.h"

#define AVRO_MAX_DEPTH 200		/* nesting of a value or a schema */
#define REGISTRY_TIMEOUT_S 10

typedef struct TypeName
{
	char	   *full;			/* namespace.name */
	int			node;			/* its definition in the schema's JSON */
} TypeName;

/* One schema of the registry, kept for the life of the process. */
typedef struct SchemaEntry
{
	int32_t		id;
	avro_schema_t schema;
	avro_value_iface_t *iface;
	avro_value_t values[BRIDGE_MAX_WRITERS];	/* one per writer slot */
	bool		have[BRIDGE_MAX_WRITERS];
	char	   *text;			/* the schema's JSON */
	JsonTree	tree;			/* parsed */
	TypeName   *names;
	int			nnames;
	bool		connect_ok;		/* Connect can say it */
	Buf			connect;		/* the schema part of AVRO_CONNECT */
	struct SchemaEntry *next;
} SchemaEntry;

static SchemaEntry *entries = NULL;
static pthread_mutex_t entries_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * Per writer slot, read and written by its writer alone: the entries it
 * used last (each with a value of the slot's), found without the lock, and
 * its reader.  An entry never changes once made nor goes away.
 */
#define SLOT_RECENT 4
static SchemaEntry *recent[BRIDGE_MAX_WRITERS][SLOT_RECENT];
static avro_reader_t readers[BRIDGE_MAX_WRITERS];
static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

typedef enum Logical
{
	LT_NONE,
	LT_DATE,
	LT_TIME_MS, LT_TIME_US, LT_TIME_NS,
	LT_TS_MS, LT_TS_US, LT_TS_NS,	/* UTC */
	LT_LTS_MS, LT_LTS_US, LT_LTS_NS,	/* local */
	LT_DECIMAL,
	LT_DURATION
} Logical;

/* A value being written: its entry and where it goes. */
typedef struct Render
{
	const SchemaEntry *e;
	AvroShape	shape;
	Buf		   *out;
	char	   *why;
	size_t		whylen;
} Render;

static void
curl_setup(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

/*----- the schema's JSON -----*/

static const char *
str_attr(const JsonTree *t, int node, const char *key)
{
	int			c;
	size_t		len;

	if (node < 0 || t->nodes[node].type != JSON_NODE_OBJECT || (c = json_child(t, node, key)) < 0 ||
		t->nodes[c].type != JSON_NODE_STRING)
		return NULL;
	return json_text(t, c, &len);
}

static bool
is_primitive(const char *s)
{
	static const char *const names[] = {"null", "boolean", "int", "long", "float", "double", "bytes", "string", NULL};
	int			i;

	for (i = 0; names[i] != NULL; i++)
		if (strcmp(s, names[i]) == 0)
			return true;
	return false;
}

static bool
is_complex(const char *s)
{
	return strcmp(s, "record") == 0 || strcmp(s, "error") == 0 || strcmp(s, "enum") == 0 ||
		strcmp(s, "fixed") == 0 || strcmp(s, "array") == 0 || strcmp(s, "map") == 0;
}

static void
add_name(SchemaEntry *e, const char *name, const char *ns, int node, char *inner_ns, size_t nslen)
{
	char		full[1024];
	const char *dot;

	if (strchr(name, '.') != NULL || ns == NULL || ns[0] == '\0')
		snprintf(full, sizeof(full), "%s", name);
	else
		snprintf(full, sizeof(full), "%s.%s", ns, name);
	e->names = realloc(e->names, sizeof(TypeName) * (size_t) (e->nnames + 1));
	if (e->names == NULL)
		abort();
	e->names[e->nnames].full = strdup(full);
	e->names[e->nnames].node = node;
	e->nnames++;
	dot = strrchr(full, '.');
	snprintf(inner_ns, nslen, "%.*s", dot ? (int) (dot - full) : 0, full);
}

/* Every named type's definition, by its full name (Avro's namespace rules). */
static void
collect_names(SchemaEntry *e, int node, const char *ns, int depth)
{
	const JsonTree *t = &e->tree;
	const char *type;
	int			c;

	if (node < 0 || depth > AVRO_MAX_DEPTH)
		return;
	if (t->nodes[node].type == JSON_NODE_ARRAY)
	{
		for (c = t->nodes[node].first; c >= 0; c = t->nodes[c].next)
			collect_names(e, c, ns, depth + 1);
		return;
	}
	if (t->nodes[node].type != JSON_NODE_OBJECT)
		return;
	type = str_attr(t, node, "type");
	if (type == NULL)
		collect_names(e, json_child(t, node, "type"), ns, depth + 1);
	else if (strcmp(type, "record") == 0 || strcmp(type, "error") == 0 || strcmp(type, "enum") == 0 ||
			 strcmp(type, "fixed") == 0)
	{
		const char *name = str_attr(t, node, "name");
		const char *own = str_attr(t, node, "namespace");
		char		inner[1024];
		int			fields = json_child(t, node, "fields");

		snprintf(inner, sizeof(inner), "%s", ns ? ns : "");
		if (name != NULL)
			add_name(e, name, own != NULL ? own : ns, node, inner, sizeof(inner));
		if (fields >= 0 && t->nodes[fields].type == JSON_NODE_ARRAY)
			for (c = t->nodes[fields].first; c >= 0; c = t->nodes[c].next)
				collect_names(e, json_child(t, c, "type"), inner, depth + 1);
	}
	else if (strcmp(type, "array") == 0)
		collect_names(e, json_child(t, node, "items"), ns, depth + 1);
	else if (strcmp(type, "map") == 0)
		collect_names(e, json_child(t, node, "values"), ns, depth + 1);
}

static int
lookup_name(const SchemaEntry *e, const char *name)
{
	int			i;
	size_t		n = strlen(name);

	for (i = 0; i < e->nnames; i++)
		if (strcmp(e->names[i].full, name) == 0)
			return e->names[i].node;
	/* a short name, in the namespace it was used in */
	for (i = 0; i < e->nnames; i++)
	{
		size_t		f = strlen(e->names[i].full);

		if (f > n && e->names[i].full[f - n - 1] == '.' && strcmp(e->names[i].full + f - n, name) == 0)
			return e->names[i].node;
	}
	return -1;
}

/*
 * The node that says what a type is: a primitive's name, an object with a
 * "type" of a primitive or complex kind, or a union's array; -1 if none.
 */
static int
resolve(const SchemaEntry *e, int node)
{
	const JsonTree *t = &e->tree;
	int			depth;

	for (depth = 0; node >= 0 && depth < AVRO_MAX_DEPTH; depth++)
	{
		const char *s;
		size_t		len;
		int			tn;

		switch (t->nodes[node].type)
		{
			case JSON_NODE_STRING:
				s = json_text(t, node, &len);
				return is_primitive(s) ? node : lookup_name(e, s);
			case JSON_NODE_ARRAY:
				return node;
			case JSON_NODE_OBJECT:
				if ((tn = json_child(t, node, "type")) < 0)
					return -1;
				if (t->nodes[tn].type == JSON_NODE_STRING)
				{
					s = json_text(t, tn, &len);
					return is_primitive(s) || is_complex(s) ? node : lookup_name(e, s);
				}
				node = tn;
				break;
			default:
				return -1;
		}
	}
	return -1;
}

/* A resolved node's kind: "int", "record", ... */
static const char *
kind_of(const SchemaEntry *e, int node)
{
	size_t		len;

	if (e->tree.nodes[node].type == JSON_NODE_STRING)
		return json_text(&e->tree, node, &len);
	return str_attr(&e->tree, node, "type");
}

static Logical
logical_of(const SchemaEntry *e, int node)
{
	static const struct
	{
		const char *name;
		Logical		lt;
	}			names[] = {
		{"date", LT_DATE}, {"time-millis", LT_TIME_MS}, {"time-micros", LT_TIME_US},
		{"timestamp-millis", LT_TS_MS}, {"timestamp-micros", LT_TS_US}, {"timestamp-nanos", LT_TS_NS},
		{"local-timestamp-millis", LT_LTS_MS}, {"local-timestamp-micros", LT_LTS_US},
		{"local-timestamp-nanos", LT_LTS_NS}, {"decimal", LT_DECIMAL}, {"duration", LT_DURATION},
		/* Debezium's and Kafka Connect's names, as the Avro converter writes them */
		{"io.debezium.time.Date", LT_DATE}, {"io.debezium.time.Time", LT_TIME_MS},
		{"io.debezium.time.MicroTime", LT_TIME_US}, {"io.debezium.time.NanoTime", LT_TIME_NS},
		{"io.debezium.time.Timestamp", LT_LTS_MS}, {"io.debezium.time.MicroTimestamp", LT_LTS_US},
		{"io.debezium.time.NanoTimestamp", LT_LTS_NS}, {"org.apache.kafka.connect.data.Decimal", LT_DECIMAL},
		{"org.apache.kafka.connect.data.Date", LT_DATE}, {"org.apache.kafka.connect.data.Time", LT_TIME_MS},
		{"org.apache.kafka.connect.data.Timestamp", LT_TS_MS},
	};
	const char *lt = str_attr(&e->tree, node, "logicalType");
	const char *cn = str_attr(&e->tree, node, "connect.name");
	size_t		i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if ((lt != NULL && strcmp(lt, names[i].name) == 0) || (cn != NULL && strcmp(cn, names[i].name) == 0))
			return names[i].lt;
	return LT_NONE;
}

/* A decimal's scale: Avro's "scale", else Connect's parameter; 0 if neither. */
static int
scale_of(const SchemaEntry *e, int node)
{
	const JsonTree *t = &e->tree;
	int			c = json_child(t, node, "scale");
	size_t		len;
	long long	v;

	if (c < 0 || t->nodes[c].type != JSON_NODE_NUMBER)
		c = json_child(t, json_child(t, node, "connect.parameters"), "scale");
	if (c >= 0 && (t->nodes[c].type == JSON_NODE_NUMBER || t->nodes[c].type == JSON_NODE_STRING) &&
		convert_integer(json_text(t, c, &len), &v) && v >= 0 && v <= 1000)
		return (int) v;
	return 0;
}

/*----- Kafka Connect's schema part -----*/

static const char *
connect_type(const SchemaEntry *e, int node, const char *kind)
{
	const char *ct = str_attr(&e->tree, node, "connect.type");	/* int8, int16 */

	if (ct != NULL && (strcmp(ct, "int8") == 0 || strcmp(ct, "int16") == 0))
		return ct;
	if (strcmp(kind, "int") == 0)
		return "int32";
	if (strcmp(kind, "long") == 0)
		return "int64";
	if (strcmp(kind, "double") == 0)
		return "float64";
	if (strcmp(kind, "float") == 0 || strcmp(kind, "boolean") == 0 || strcmp(kind, "string") == 0 ||
		strcmp(kind, "bytes") == 0 || strcmp(kind, "array") == 0 || strcmp(kind, "map") == 0)
		return kind;
	if (strcmp(kind, "record") == 0 || strcmp(kind, "error") == 0)
		return "struct";
	if (strcmp(kind, "enum") == 0)
		return "string";
	if (strcmp(kind, "fixed") == 0)
		return "bytes";
	return NULL;				/* null alone */
}

/* The Connect name of a type: connect.name, else its logical type's, else a record's full name. */
static void
connect_name(const SchemaEntry *e, int node, const char *kind, Buf *b)
{
	static const char *const by_logical[][2] = {
		{"decimal", "org.apache.kafka.connect.data.Decimal"}, {"date", "org.apache.kafka.connect.data.Date"},
		{"time-millis", "org.apache.kafka.connect.data.Time"},
		{"timestamp-millis", "org.apache.kafka.connect.data.Timestamp"},
		{"time-micros", "io.debezium.time.MicroTime"}, {"timestamp-micros", "io.debezium.time.MicroTimestamp"},
		{"timestamp-nanos", "io.debezium.time.NanoTimestamp"},
	};
	const char *cn = str_attr(&e->tree, node, "connect.name");
	const char *lt = str_attr(&e->tree, node, "logicalType");
	const char *name = NULL;
	size_t		i;
	int			k;

	if (cn != NULL)
		name = cn;
	for (i = 0; name == NULL && lt != NULL && i < sizeof(by_logical) / sizeof(by_logical[0]); i++)
		if (strcmp(lt, by_logical[i][0]) == 0)
			name = by_logical[i][1];
	for (k = 0; name == NULL && (strcmp(kind, "record") == 0 || strcmp(kind, "error") == 0) && k < e->nnames; k++)
		if (e->names[k].node == node)
			name = e->names[k].full;
	if (name == NULL)
		return;
	buf_puts(b, ",\"name\":");
	json_string(b, name, strlen(name));
}

static bool connect_schema(SchemaEntry *e, int node, bool optional, const char *field, Buf *b, int depth);

/* A union: Connect has optional types only (null and one other). */
static bool
connect_union(SchemaEntry *e, int node, const char *field, Buf *b, int depth)
{
	const JsonTree *t = &e->tree;
	int			c;
	int			other = -1;
	int			nothers = 0;
	bool		has_null = false;

	for (c = t->nodes[node].first; c >= 0; c = t->nodes[c].next)
	{
		int			r = resolve(e, c);

		if (r >= 0 && kind_of(e, r) != NULL && strcmp(kind_of(e, r), "null") == 0)
			has_null = true;
		else
		{
			other = c;
			nothers++;
		}
	}
	if (nothers != 1)
		return false;
	return connect_schema(e, other, has_null, field, b, depth + 1);
}

static bool
connect_schema(SchemaEntry *e, int node, bool optional, const char *field, Buf *b, int depth)
{
	const JsonTree *t = &e->tree;
	int			r = resolve(e, node);
	const char *kind;
	const char *type;
	int			c;

	if (r < 0 || depth > AVRO_MAX_DEPTH)
		return false;
	if (t->nodes[r].type == JSON_NODE_ARRAY)
		return connect_union(e, r, field, b, depth);
	if ((kind = kind_of(e, r)) == NULL || (type = connect_type(e, r, kind)) == NULL)
		return false;
	buf_printf(b, "{\"type\":\"%s\"", type);
	if (strcmp(type, "struct") == 0)
	{
		int			fields = json_child(t, r, "fields");
		bool		first = true;

		buf_puts(b, ",\"fields\":[");
		for (c = fields >= 0 ? t->nodes[fields].first : -1; c >= 0; c = t->nodes[c].next)
		{
			const char *fname = str_attr(t, c, "name");

			if (fname == NULL)
				return false;
			if (!first)
				buf_puts(b, ",");
			first = false;
			if (!connect_schema(e, json_child(t, c, "type"), false, fname, b, depth + 1))
				return false;
		}
		buf_puts(b, "]");
	}
	else if (strcmp(type, "array") == 0)
	{
		buf_puts(b, ",\"items\":");
		if (!connect_schema(e, json_child(t, r, "items"), false, NULL, b, depth + 1))
			return false;
	}
	else if (strcmp(type, "map") == 0)
	{
		buf_puts(b, ",\"keys\":{\"type\":\"string\",\"optional\":false},\"values\":");
		if (!connect_schema(e, json_child(t, r, "values"), false, NULL, b, depth + 1))
			return false;
	}
	buf_printf(b, ",\"optional\":%s", optional ? "true" : "false");
	connect_name(e, r, kind, b);
	if ((c = json_child(t, r, "connect.parameters")) >= 0 && t->nodes[c].type == JSON_NODE_OBJECT)
	{
		size_t		len;
		const char *p = json_text(t, c, &len);

		buf_puts(b, ",\"parameters\":");
		buf_append(b, p, len);
	}
	else if (logical_of(e, r) == LT_DECIMAL)
		buf_printf(b, ",\"parameters\":{\"scale\":\"%d\"}", scale_of(e, r));
	if (field != NULL)
	{
		buf_puts(b, ",\"field\":");
		json_string(b, field, strlen(field));
	}
	buf_puts(b, "}");
	return true;
}

/*----- values -----*/

static bool
refuse(Render *r, const char *what)
{
	snprintf(r->why, r->whylen, "%s", what);
	return false;
}

static void
double_append(Buf *b, double d, bool is_float)
{
	if (isnan(d))
		buf_puts(b, "\"NaN\"");
	else if (isinf(d))
		buf_puts(b, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
	else
		buf_printf(b, is_float ? "%.9g" : "%.17g", d);
}

/* A temporal long or int as PostgreSQL's text (AVRO_COLUMNS). */
static bool
temporal(Render *r, Logical lt, int64_t v)
{
	Buf		   *b = r->out;
	int64_t		us;

	buf_puts(b, "\"");
	switch (lt)
	{
		case LT_DATE:
			if (!date_text(b, v))
				return refuse(r, "a date outside years 1 to 9999");
			break;
		case LT_TIME_MS:
		case LT_TIME_US:
		case LT_TIME_NS:
			us = lt == LT_TIME_MS ? v * 1000 : lt == LT_TIME_US ? v : v / 1000;
			if (v < 0 || us > INT64_C(86400000000))
				return refuse(r, "a time of day outside 00:00 to 24:00");
			clock_text(b, us);
			break;
		default:
			if (lt == LT_TS_MS || lt == LT_LTS_MS)
			{
				if (v > INT64_MAX / 1000 || v < INT64_MIN / 1000)
					return refuse(r, "a timestamp outside years 1 to 9999");
				us = v * 1000;
			}
			else if (lt == LT_TS_NS || lt == LT_LTS_NS)
				us = v / 1000 - (v % 1000 < 0 ? 1 : 0);
			else
				us = v;
			if (!timestamp_text(b, us))
				return refuse(r, "a timestamp outside years 1 to 9999");
			if (lt == LT_TS_MS || lt == LT_TS_US || lt == LT_TS_NS)
				buf_puts(b, "+00");
			break;
	}
	buf_puts(b, "\"");
	return true;
}

/* bytes or fixed */
static bool
bytes_value(Render *r, int node, Logical lt, const unsigned char *p, size_t n)
{
	Buf		   *b = r->out;

	if (r->shape != AVRO_COLUMNS)
	{
		buf_puts(b, "\"");
		base64_append(b, p, n);
		buf_puts(b, "\"");
		return true;
	}
	if (lt == LT_DECIMAL)
		return decimal_text(b, p, n, scale_of(r->e, node)) || refuse(r, "a decimal beyond 512 bytes or empty");
	if (lt == LT_DURATION && n == 12)
	{
		uint32_t	f[3];
		int			i;

		for (i = 0; i < 3; i++)
			f[i] = (uint32_t) p[4 * i] | (uint32_t) p[4 * i + 1] << 8 | (uint32_t) p[4 * i + 2] << 16 |
				(uint32_t) p[4 * i + 3] << 24;
		buf_printf(b, "\"%u months %u days %u.%03u seconds\"", f[0], f[1], f[2] / 1000, f[2] % 1000);
		return true;
	}
	buf_puts(b, "\"\\\\x");
	hex_append(b, p, n);
	buf_puts(b, "\"");
	return true;
}

static bool render(Render *r, avro_value_t *v, int node, int depth);

/* A record, map or array. */
static bool
render_container(Render *r, avro_value_t *v, int node, const char *kind, int depth)
{
	const JsonTree *t = &r->e->tree;
	size_t		size = 0;
	size_t		i;
	bool		record = strcmp(kind, "record") == 0 || strcmp(kind, "error") == 0;
	bool		map = strcmp(kind, "map") == 0;
	int			fields = record ? json_child(t, node, "fields") : -1;
	int			f = fields >= 0 ? t->nodes[fields].first : -1;
	int			inner = record ? -1 : json_child(t, node, map ? "values" : "items");

	if (avro_value_get_size(v, &size) != 0)
		return refuse(r, "avro-c cannot size a value");
	buf_puts(r->out, map || record ? "{" : "[");
	for (i = 0; i < size; i++)
	{
		avro_value_t child;
		const char *name = NULL;

		if (avro_value_get_by_index(v, i, &child, &name) != 0)
			return refuse(r, "avro-c cannot read a value");
		if (i > 0)
			buf_puts(r->out, ",");
		if (record)
		{
			if (f < 0)
				return refuse(r, "a record with more fields than its schema's JSON");
			inner = json_child(t, f, "type");
			f = t->nodes[f].next;
		}
		if (name != NULL && (record || map))
		{
			json_string(r->out, name, strlen(name));
			buf_puts(r->out, ":");
		}
		if (!render(r, &child, inner, depth + 1))
			return false;
	}
	buf_puts(r->out, map || record ? "}" : "]");
	return true;
}

/* A value of a primitive type, an enum or fixed. */
static bool
render_scalar(Render *r, avro_value_t *v, int rn, Logical lt)
{
	Buf		   *b = r->out;
	int			i = 0;
	int32_t		i32 = 0;
	int64_t		i64 = 0;
	float		f = 0;
	double		d = 0;
	const char *s = NULL;
	const void *p = NULL;
	size_t		n = 0;

	switch (avro_value_get_type(v))
	{
		case AVRO_NULL:
			buf_puts(b, "null");
			return true;
		case AVRO_BOOLEAN:
			avro_value_get_boolean(v, &i);
			buf_puts(b, i ? "true" : "false");
			return true;
		case AVRO_INT32:
		case AVRO_INT64:
			if (avro_value_get_type(v) == AVRO_INT32)
			{
				avro_value_get_int(v, &i32);
				i64 = i32;
			}
			else
				avro_value_get_long(v, &i64);
			if (r->shape == AVRO_COLUMNS && lt != LT_NONE && lt != LT_DECIMAL && lt != LT_DURATION)
				return temporal(r, lt, i64);
			buf_printf(b, "%lld", (long long) i64);
			return true;
		case AVRO_FLOAT:
			avro_value_get_float(v, &f);
			double_append(b, f, true);
			return true;
		case AVRO_DOUBLE:
			avro_value_get_double(v, &d);
			double_append(b, d, false);
			return true;
		case AVRO_STRING:
			avro_value_get_string(v, &s, &n);
			json_string(b, s, n > 0 ? n - 1 : 0);	/* avro-c counts the NUL */
			return true;
		case AVRO_BYTES:
			avro_value_get_bytes(v, &p, &n);
			return bytes_value(r, rn, lt, p, n);
		case AVRO_FIXED:
			avro_value_get_fixed(v, &p, &n);
			return bytes_value(r, rn, lt, p, n);
		case AVRO_ENUM:
			avro_value_get_enum(v, &i);
			if ((s = avro_schema_enum_get(avro_value_get_schema(v), i)) == NULL)
				return refuse(r, "an enum symbol out of range");
			json_string(b, s, strlen(s));
			return true;
		default:
			return refuse(r, "an Avro type the bridge does not write");
	}
}

static bool
render(Render *r, avro_value_t *v, int node, int depth)
{
	const SchemaEntry *e = r->e;
	int			rn = resolve(e, node);
	const char *kind;
	avro_type_t type = avro_value_get_type(v);

	if (depth > AVRO_MAX_DEPTH)
		return refuse(r, "a value nested more than 200 deep");
	if (rn < 0)
		return refuse(r, "a type its schema's JSON does not define");
	if (e->tree.nodes[rn].type == JSON_NODE_ARRAY)
	{
		int			d;
		int			c;
		avro_value_t branch;

		if (avro_value_get_discriminant(v, &d) != 0 || avro_value_get_current_branch(v, &branch) != 0)
			return refuse(r, "avro-c cannot read a union");
		for (c = e->tree.nodes[rn].first; c >= 0 && d > 0; c = e->tree.nodes[c].next)
			d--;
		if (c < 0)
			return refuse(r, "a union branch its schema's JSON lacks");
		return render(r, &branch, c, depth + 1);
	}
	if (type != AVRO_RECORD && type != AVRO_MAP && type != AVRO_ARRAY)
		return render_scalar(r, v, rn, logical_of(e, rn));
	if ((kind = kind_of(e, rn)) == NULL)
		return refuse(r, "a type its schema's JSON does not define");
	return render_container(r, v, rn, kind, depth);
}

/*----- the registry -----*/

static size_t
on_body(char *p, size_t size, size_t n, void *arg)
{
	Buf		   *body = arg;

	if (body->len + size * n > 16 * 1024 * 1024)
		return 0;				/* no schema is that big */
	buf_append(body, p, size * n);
	return size * n;
}

/* GET /schemas/ids/N: its schema's JSON text in body. */
static AvroResult
fetch(const char *registry, int32_t id, Buf *body, char *why, size_t whylen)
{
	CURL	   *c;
	char		url[BRIDGE_VALUE_LEN + 64];
	size_t		n = strlen(registry);
	struct curl_slist *hdr;
	CURLcode	rc;
	long		code = 0;

	pthread_once(&curl_once, curl_setup);
	while (n > 0 && registry[n - 1] == '/')
		n--;
	snprintf(url, sizeof(url), "%.*s/schemas/ids/%d", (int) n, registry, (int) id);
	if ((c = curl_easy_init()) == NULL)
	{
		snprintf(why, whylen, "cannot start an HTTP request");
		return AVRO_RETRY;
	}
	hdr = curl_slist_append(NULL, "Accept: application/vnd.schemaregistry.v1+json, application/json");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, (long) REGISTRY_TIMEOUT_S);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 5L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
#endif
	rc = curl_easy_perform(c);
	if (rc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
	curl_easy_cleanup(c);
	curl_slist_free_all(hdr);
	if (rc != CURLE_OK)
	{
		snprintf(why, whylen, "cannot reach the schema registry for schema id %d: %s", (int) id,
				 curl_easy_strerror(rc));
		return AVRO_RETRY;
	}
	if (code == 404)
	{
		snprintf(why, whylen, "schema id %d is not in the schema registry (404)", (int) id);
		return AVRO_BAD;
	}
	if (code != 200)
	{
		snprintf(why, whylen, "the schema registry answered %ld for schema id %d", code, (int) id);
		return AVRO_RETRY;
	}
	return AVRO_DECODED;
}

/* The entry of schema id, fetched and parsed if new; NULL with why set if not. */
static SchemaEntry *
entry_for(const char *registry, int32_t id, AvroResult *res, char *why, size_t whylen)
{
	SchemaEntry *e;
	Buf			body = {0};
	JsonTree	reply = {0};
	int			s;
	const char *kind;
	size_t		len;

	for (e = entries; e != NULL; e = e->next)
		if (e->id == id)
			return e;
	if ((*res = fetch(registry, id, &body, why, whylen)) != AVRO_DECODED)
	{
		free(body.data);
		return NULL;
	}
	*res = AVRO_RETRY;			/* a registry that does not answer as one */
	if (!json_tree(body.data, body.len, &reply) || reply.nodes[0].type != JSON_NODE_OBJECT ||
		(s = json_child(&reply, 0, "schema")) < 0 || reply.nodes[s].type != JSON_NODE_STRING)
	{
		snprintf(why, whylen, "the schema registry's answer for schema id %d has no schema", (int) id);
		e = NULL;
		goto out;
	}
	*res = AVRO_BAD;
	if ((kind = str_attr(&reply, 0, "schemaType")) != NULL && strcmp(kind, "AVRO") != 0)
	{
		snprintf(why, whylen, "schema id %d is a %s schema, not Avro", (int) id, kind);
		e = NULL;
		goto out;
	}
	e = calloc(1, sizeof(SchemaEntry));
	if (e == NULL)
		abort();
	e->id = id;
	e->text = strdup(json_text(&reply, s, &len));
	if (e->text == NULL)
		abort();
	if (avro_schema_from_json_length(e->text, len, &e->schema) != 0 ||
		(e->iface = avro_generic_class_from_schema(e->schema)) == NULL || !json_tree(e->text, len, &e->tree))
	{
		snprintf(why, whylen, "schema id %d: avro-c cannot read it: %s", (int) id, avro_strerror());
		/* kept out of the cache and let go (rare: the registry checked it) */
		if (e->iface != NULL)
			avro_value_iface_decref(e->iface);
		if (e->schema != NULL)
			avro_schema_decref(e->schema);
		free(e->tree.nodes);
		free(e->tree.text.data);
		free(e->text);
		free(e);
		e = NULL;
		goto out;
	}
	collect_names(e, 0, "", 0);
	e->connect_ok = connect_schema(e, 0, false, NULL, &e->connect, 0);
	e->next = entries;
	entries = e;
	*res = AVRO_DECODED;
out:
	free(body.data);
	free(reply.nodes);
	free(reply.text.data);
	return e;
}

/*
 * The entry of schema id for a writer slot, with a value of the slot's:
 * from the slot's recent ones, else under the lock (fetched if new).
 */
static SchemaEntry *
slot_entry(const char *registry, int slot, int32_t id, AvroResult *res, char *why, size_t whylen)
{
	SchemaEntry **mine = recent[slot];
	SchemaEntry *e;
	int			k;

	for (k = 0; k < SLOT_RECENT; k++)
		if (mine[k] != NULL && mine[k]->id == id)
			return mine[k];
	pthread_mutex_lock(&entries_lock);
	e = entry_for(registry, id, res, why, whylen);
	if (e != NULL && !e->have[slot])
		e->have[slot] = avro_generic_value_new(e->iface, &e->values[slot]) == 0;
	pthread_mutex_unlock(&entries_lock);
	if (e == NULL)
		return NULL;
	if (!e->have[slot])
	{
		snprintf(why, whylen, "avro-c cannot make a value of schema id %d", (int) id);
		*res = AVRO_RETRY;
		return NULL;
	}
	memmove(&mine[1], &mine[0], sizeof(*mine) * (SLOT_RECENT - 1));
	mine[0] = e;
	return e;
}

/*
 * Decode one message (data, len) into out (appended), as shape says:
 * AVRO_BAD with why when the message cannot be decoded, AVRO_RETRY when
 * the registry could not be asked.  slot: the calling writer's.
 */
AvroResult
avro_decode(const char *registry, int slot, const void *data, size_t len, AvroShape shape, Buf *out,
			char *why, size_t whylen)
{
	const unsigned char *p = data;
	SchemaEntry *e;
	AvroResult	res = AVRO_DECODED;
	avro_value_t *value;
	Render		r = {.shape = shape, .out = out, .why = why, .whylen = whylen};
	int32_t		id;
	int			rc;

	if (len < 5 || p[0] != 0)
	{
		snprintf(why, whylen, "not in Confluent's wire format (a zero byte, then the schema id in four bytes)");
		return AVRO_BAD;
	}
	id = (int32_t) ((uint32_t) p[1] << 24 | (uint32_t) p[2] << 16 | (uint32_t) p[3] << 8 | p[4]);
	if ((e = slot_entry(registry, slot, id, &res, why, whylen)) == NULL)
		return res;
	if (shape == AVRO_CONNECT && !e->connect_ok)
	{
		snprintf(why, whylen, "schema id %d has a type Kafka Connect has none of (a union of two types)", (int) id);
		return AVRO_BAD;
	}
	value = &e->values[slot];
	avro_value_reset(value);
	if (readers[slot] == NULL &&
		(readers[slot] = avro_reader_memory((const char *) p + 5, (int64_t) (len - 5))) == NULL)
		abort();
	else
		avro_reader_memory_set_source(readers[slot], (const char *) p + 5, (int64_t) (len - 5));
	rc = avro_value_read(readers[slot], value);
	if (rc != 0)
	{
		snprintf(why, whylen, "not an Avro value of schema id %d: %s", (int) id, avro_strerror());
		return AVRO_BAD;
	}
	r.e = e;
	if (shape == AVRO_CONNECT)
	{
		buf_puts(out, "{\"schema\":");
		buf_append(out, e->connect.data, e->connect.len);
		buf_puts(out, ",\"payload\":");
	}
	if (!render(&r, value, 0, 0))
		return AVRO_BAD;
	if (shape == AVRO_CONNECT)
		buf_puts(out, "}");
	return AVRO_DECODED;
}
