/*-------------------------------------------------------------------------
 *
 * convert.c
 *		infra-bridge: a column's value in a Debezium change event (JSON)
 *		as the text debezium.c's SQL would cast to the column's type, for
 *		change.c: Decimal bytes, dates, times and timestamps in each of
 *		Debezium's units, intervals, bytes in each binary mode, arrays.
 *		False whenever the SQL might come to another value or fail: the
 *		staging path decides then.
 *
 *-------------------------------------------------------------------------
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "convert.h"
#include "encode.h"

#define USECS_PER_SEC INT64_C(1000000)
#define USECS_PER_DAY (INT64_C(86400) * USECS_PER_SEC)
#define DECIMAL_MAX_BYTES 512

/* A string of digits with an optional leading '-', as int4 and int8 read it. */
bool
convert_integer(const char *s, long long *v)
{
	char	   *end;

	if (*s == '\0' || strchr(s, '.') != NULL)
		return false;
	*v = strtoll(s, &end, 10);
	return *end == '\0' && *v > INT64_MIN / 2 && *v < INT64_MAX / 2;
}

static int
b64_digit(char c, bool url)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == (url ? '-' : '+'))
		return 62;
	if (c == (url ? '_' : '/'))
		return 63;
	return -1;
}

/* Padded base64 (url: - and _ for + and /) into out; false unless strictly so. */
static bool
base64_bytes(const char *s, size_t len, bool url, Buf *out)
{
	size_t		i;

	out->len = 0;
	if (len % 4 != 0)
		return false;
	buf_reserve(out, len / 4 * 3 + 1);
	for (i = 0; i < len; i += 4)
	{
		int			d[4];
		int			k;
		int			pad = 0;

		for (k = 0; k < 4; k++)
		{
			if (s[i + k] == '=' && i + 4 == len && k >= 2)
			{
				d[k] = 0;
				pad++;
				continue;
			}
			if (pad > 0 || (d[k] = b64_digit(s[i + k], url)) < 0)
				return false;
		}
		out->data[out->len++] = (char) (d[0] << 2 | d[1] >> 4);
		if (pad < 2)
			out->data[out->len++] = (char) ((d[1] & 15) << 4 | d[2] >> 2);
		if (pad < 1)
			out->data[out->len++] = (char) ((d[2] & 3) << 6 | d[3]);
	}
	return true;
}

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* bytea's text of bytes: \x and hex. */
static void
bytea_text(Buf *b, const unsigned char *p, size_t n)
{
	buf_append(b, "\\x", 2);
	hex_append(b, p, n);
}

/*
 * The numeric text of a Kafka Connect Decimal: big-endian two's complement
 * bytes of the unscaled value, and its scale (as infra.debezium_decimal:
 * exactly scale digits after the point).
 */
bool
decimal_text(Buf *b, const unsigned char *bytes, size_t n, int scale)
{
	unsigned char mag[DECIMAL_MAX_BYTES];
	char		digits[DECIMAL_MAX_BYTES * 3 + 2];
	int			nd = 0;
	bool		negative;
	size_t		i;
	size_t		first = 0;

	if (n == 0 || n > DECIMAL_MAX_BYTES || scale < 0 || scale > 1000)
		return false;
	negative = bytes[0] >= 128;
	memcpy(mag, bytes, n);
	if (negative)
	{
		int			carry = 1;

		for (i = n; i-- > 0;)
		{
			int			v = (unsigned char) ~mag[i] + carry;

			mag[i] = (unsigned char) v;
			carry = v >> 8;
		}
	}
	/* Divide by 10^9 until nothing is left: nine digits at a time. */
	for (;;)
	{
		uint64_t	rem = 0;
		int			k;

		while (first < n && mag[first] == 0)
			first++;
		if (first == n)
			break;
		for (i = first; i < n; i++)
		{
			uint64_t	cur = rem << 8 | mag[i];

			mag[i] = (unsigned char) (cur / 1000000000);
			rem = cur % 1000000000;
		}
		for (k = 0; k < 9; k++)
		{
			digits[nd++] = (char) ('0' + rem % 10);
			rem /= 10;
		}
	}
	while (nd > 0 && digits[nd - 1] == '0')
		nd--;
	while (nd <= scale)
		digits[nd++] = '0';
	if (negative)
		buf_puts(b, "-");
	for (i = (size_t) nd; i-- > 0;)
	{
		if ((int) i == scale - 1)
			buf_puts(b, ".");
		buf_append(b, &digits[i], 1);
	}
	return true;
}

/* Year, month, day of a day since 1970-01-01 (the proleptic Gregorian calendar). */
static void
civil(int64_t days, int *y, int *m, int *d)
{
	int64_t		z = days + 719468;
	int64_t		era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t		doe = z - era * 146097;
	int64_t		yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t		doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t		mp = (5 * doy + 2) / 153;

	*d = (int) (doy - (153 * mp + 2) / 5 + 1);
	*m = (int) (mp < 10 ? mp + 3 : mp - 9);
	*y = (int) (yoe + era * 400 + (*m <= 2));
}

static int64_t
floor_div(int64_t a, int64_t b)
{
	return a / b - (a % b != 0 && (a < 0) != (b < 0));
}

/* v (>= 0) in at least width digits, zero-padded (no printf: this is per value). */
static void
digits(Buf *b, int64_t v, int width)
{
	char		tmp[24];
	int			n = 0;

	do
	{
		tmp[n++] = (char) ('0' + v % 10);
		v /= 10;
	} while (v > 0);
	while (n < width)
		tmp[n++] = '0';
	buf_reserve(b, (size_t) n);
	while (n > 0)
		b->data[b->len++] = tmp[--n];
	b->data[b->len] = '\0';
}

/* A date's text, years 1 to 9999 only. */
bool
date_text(Buf *b, int64_t days)
{
	int			y,
				m,
				d;

	if (days < -800000 || days > 3000000)
		return false;
	civil(days, &y, &m, &d);
	if (y < 1 || y > 9999)
		return false;
	digits(b, y, 4);
	buf_append(b, "-", 1);
	digits(b, m, 2);
	buf_append(b, "-", 1);
	digits(b, d, 2);
	return true;
}

/*
 * The microseconds of a number of units per second, as the SQL adds them:
 * whole seconds, then the rest truncated to microseconds (toward zero).
 */
static bool
micros(long long v, int64_t units, int64_t *us)
{
	int64_t		secs = v / units;

	if (secs > INT64_C(300000000000) || secs < -INT64_C(300000000000))
		return false;
	*us = secs * USECS_PER_SEC + (v % units) * USECS_PER_SEC / units;
	return true;
}

void
clock_text(Buf *b, int64_t us)
{
	digits(b, us / (3600 * USECS_PER_SEC), 2);
	buf_append(b, ":", 1);
	digits(b, us / (60 * USECS_PER_SEC) % 60, 2);
	buf_append(b, ":", 1);
	digits(b, us / USECS_PER_SEC % 60, 2);
	buf_append(b, ".", 1);
	digits(b, us % USECS_PER_SEC, 6);
}

bool
timestamp_text(Buf *b, int64_t us)
{
	int64_t		days = floor_div(us, USECS_PER_DAY);

	if (!date_text(b, days))
		return false;
	buf_puts(b, " ");
	clock_text(b, us - days * USECS_PER_DAY);
	return true;
}

/* A timestamp's or time's units per second when the schema does not name them. */
static int64_t
default_units(const ChangePlan *plan, const ChangeColumn *c)
{
	DebeziumTime mode = plan->route->dbz_time;

	if (mode == DBZ_TIME_CONNECT)
		return 1000;
	if (mode == DBZ_TIME_ADAPTIVE_US && c->kind == KIND_TIME)
		return 1000000;
	return c->n > 3 ? 1000000 : 1000;
}

/* A JSON array of scalars as an array literal (elements as jsonb_array_elements_text gives them). */
static bool
array_text(Buf *b, const JsonTree *t, int node)
{
	int			i;

	buf_puts(b, "{");
	for (i = t->nodes[node].first; i >= 0; i = t->nodes[i].next)
	{
		size_t		len;
		const char *s = json_text(t, i, &len);
		size_t		k;

		if (i != t->nodes[node].first)
			buf_puts(b, ",");
		if (t->nodes[i].type == JSON_NODE_NULL)
		{
			buf_puts(b, "NULL");
			continue;
		}
		if (t->nodes[i].type == JSON_NODE_OBJECT || t->nodes[i].type == JSON_NODE_ARRAY ||
			(t->nodes[i].type == JSON_NODE_NUMBER && json_negative_zero(s)))
			return false;
		buf_puts(b, "\"");
		for (k = 0; k < len; k++)
		{
			if (s[k] == '"' || s[k] == '\\')
				buf_puts(b, "\\");
			buf_append(b, &s[k], 1);
		}
		buf_puts(b, "\"");
	}
	buf_puts(b, "}");
	return true;
}

/* Bytes of a bytea column's string: by the schema's type, else the route's mode. */
static bool
bytea_value(const ChangePlan *plan, Buf *scratch, const FieldInfo *f, const char *s, size_t len, Buf *out)
{
	DebeziumBinary mode = f != NULL && f->bytes ? DBZ_BINARY_BASE64 : plan->route->dbz_binary;
	Buf		   *bytes = scratch;
	size_t		i;

	if (mode != DBZ_BINARY_HEX)
	{
		if (!base64_bytes(s, len, mode == DBZ_BINARY_BASE64_URL, bytes))
			return false;
		bytea_text(out, (const unsigned char *) bytes->data, bytes->len);
		return true;
	}
	if (len % 2 != 0)
		return false;
	bytes->len = 0;
	buf_reserve(bytes, len / 2 + 1);
	for (i = 0; i < len; i += 2)
	{
		int			hi = hex_digit(s[i]);
		int			lo = hex_digit(s[i + 1]);

		if (hi < 0 || lo < 0)
			return false;
		bytes->data[bytes->len++] = (char) (hi << 4 | lo);
	}
	bytea_text(out, (const unsigned char *) bytes->data, bytes->len);
	return true;
}

/* A Decimal's base64 bytes at scale. */
static bool
decimal_value(const ChangePlan *plan, Buf *scratch, const char *s, size_t len, int scale, Buf *out)
{
	return base64_bytes(s, len, false, scratch) &&
		decimal_text(out, (const unsigned char *) scratch->data, scratch->len, scale);
}

/* A numeric column's value: a number, a VariableScaleDecimal, a Decimal's bytes or a number's text. */
static bool
numeric_value(const ChangePlan *plan, Buf *scratch, const ChangeColumn *c, const FieldInfo *f, bool has_f,
			  const JsonTree *t, int node, Buf *out)
{
	const JsonNode *n = &t->nodes[node];
	size_t		len;
	const char *s = json_text(t, node, &len);

	if (n->type == JSON_NODE_NUMBER)
	{
		buf_append(out, s, len);
		return true;
	}
	if (n->type == JSON_NODE_OBJECT)
	{
		int			sc = json_child(t, node, "scale");
		int			v = json_child(t, node, "value");
		long long	scale;
		size_t		vlen;
		const char *vs;

		if (sc < 0 || v < 0 || t->nodes[v].type != JSON_NODE_STRING ||
			(t->nodes[sc].type != JSON_NODE_NUMBER && t->nodes[sc].type != JSON_NODE_STRING) ||
			!convert_integer(json_text(t, sc, &vlen), &scale) || scale < 0 || scale > 1000)
			return false;
		vs = json_text(t, v, &vlen);
		return decimal_value(plan, scratch, vs, vlen, (int) scale, out);
	}
	if (n->type != JSON_NODE_STRING)
		return false;
	if (has_f ? (f != NULL && f->decimal) : plan->route->dbz_decimal == DBZ_DECIMAL_PRECISE)
	{
		int			scale = f != NULL && f->has_scale ? f->scale : c->n;

		return scale >= 0 && decimal_value(plan, scratch, s, len, scale, out);
	}
	buf_append(out, s, len);
	return true;
}

/* A date, timestamp, time or interval column's number. */
static bool
temporal_value(const ChangePlan *plan, Buf *scratch, const ChangeColumn *c, const FieldInfo *f, const char *s,
			   Buf *out)
{
	long long	v;
	int64_t		us;
	int64_t		units;

	if (!convert_integer(s, &v))
		return false;
	if (c->kind == KIND_DATE)
		return v >= INT32_MIN && v <= INT32_MAX && date_text(out, v);
	units = c->kind == KIND_INTERVAL ? 1000000 : f != NULL && f->units > 0 ? f->units : default_units(plan, c);
	if (!micros(v, units, &us))
		return false;
	if (c->kind == KIND_TIMESTAMP)
		return timestamp_text(out, us);
	if (c->kind == KIND_TIME)
	{
		clock_text(out, (us % USECS_PER_DAY + USECS_PER_DAY) % USECS_PER_DAY);
		return true;
	}
	/* An interval of microseconds only: hours, minutes, seconds. */
	if (us < 0)
	{
		buf_puts(out, "-");
		us = -us;
	}
	buf_printf(out, "%lld:%02d:%02d.%06d", (long long) (us / (3600 * USECS_PER_SEC)),
			   (int) (us / (60 * USECS_PER_SEC) % 60), (int) (us / USECS_PER_SEC % 60), (int) (us % USECS_PER_SEC));
	return true;
}

/*
 * Column c's value of node (-1: the event lacks the column) as the text
 * debezium.c's SQL would cast to the column's type, appended to out
 * (unescaped); *null for NULL.  f: the column's field in the schema part
 * (NULL when none), has_f: the event has a schema part with fields.
 */
bool
convert_value(const ChangePlan *plan, Buf *scratch, const ChangeColumn *c, const FieldInfo *f, bool has_f,
			  const JsonTree *t, int node, Buf *out, bool *null)
{
	const JsonNode *n;
	size_t		len;
	const char *s;

	*null = false;
	if (node < 0)
	{
		*null = true;
		return !c->by_default;	/* a default: the server's to take */
	}
	n = &t->nodes[node];
	if (n->type == JSON_NODE_NULL)
	{
		*null = true;
		return true;
	}
	s = json_text(t, node, &len);
	if (n->type == JSON_NODE_STRING)
	{
		if (c->kind == KIND_BYTEA)
			return bytea_value(plan, scratch, f, s, len, out);
		if (c->kind == KIND_NUMERIC)
			return numeric_value(plan, scratch, c, f, has_f, t, node, out);
		buf_append(out, s, len);	/* the cast reads it */
		return true;
	}
	switch (c->kind)
	{
		case KIND_JSONB:
			buf_append(out, s, len);
			return true;
		case KIND_JSON:
		case KIND_PLAIN:
			if (n->type == JSON_NODE_OBJECT || n->type == JSON_NODE_ARRAY ||
				(n->type == JSON_NODE_NUMBER && json_negative_zero(s)))
				return false;
			buf_append(out, s, len);
			return true;
		case KIND_NUMERIC:
			return numeric_value(plan, scratch, c, f, has_f, t, node, out);
		case KIND_DATE:
		case KIND_TIMESTAMP:
		case KIND_TIME:
		case KIND_INTERVAL:
			return n->type == JSON_NODE_NUMBER && temporal_value(plan, scratch, c, f, s, out);
		case KIND_ARRAY:
			return n->type == JSON_NODE_ARRAY && array_text(out, t, node);
		case KIND_BYTEA:
			return false;
	}
	return false;
}
