/*-------------------------------------------------------------------------
 *
 * encode.c
 *		infra-bridge: Kafka messages as COPY data, text and binary.
 *
 * A growable buffer, the text COPY format (escaping), the binary COPY
 * format (each column in its type's binary form: the bytes of text, json
 * and bytea, jsonb's version byte, big-endian integers, timestamps in
 * microseconds since 2000), the rows of the staging table and of a route's
 * direct COPY.  Pure functions of their input: no connection, no state,
 * safe in every writer thread.  Called by db.c.
 *
 *-------------------------------------------------------------------------
 */
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"
#include "encode.h"
#include "json.h"


/*
 * The binary form in which a field can go into a column of this type
 * (format_type's name), BINARY_NONE when only the text form fits: the
 * server then converts it with the column type's input function (a domain,
 * varchar with its length check, a number in a text message...).
 */
BinaryForm
binary_form(CopyField field, const char *type)
{
	bool		text = strcmp(type, "text") == 0;
	bool		json = strcmp(type, "json") == 0;
	bool		jsonb = strcmp(type, "jsonb") == 0;
	bool		bytea = strcmp(type, "bytea") == 0;

	switch (field)
	{
		case FIELD_VALUE_TEXT:
		case FIELD_HEADERS:
			return jsonb ? BINARY_JSONB : (text || json) ? BINARY_BYTES : BINARY_NONE;
		case FIELD_TOPIC:
		case FIELD_KEY_TEXT:
			return text ? BINARY_BYTES : BINARY_NONE;
		case FIELD_VALUE_BYTEA:
		case FIELD_KEY_BYTEA:
			return bytea ? BINARY_BYTES : BINARY_NONE;
		case FIELD_PARTITION:
			return strcmp(type, "integer") == 0 ? BINARY_INT4 :
				strcmp(type, "bigint") == 0 ? BINARY_INT8 : BINARY_NONE;
		case FIELD_OFFSET:
			return strcmp(type, "bigint") == 0 ? BINARY_INT8 : BINARY_NONE;
		case FIELD_TIMESTAMP:
			return strcmp(type, "timestamp with time zone") == 0 ? BINARY_TIMESTAMPTZ : BINARY_NONE;
		case FIELD_JSON_KEY:
			return BINARY_NONE;
	}
	return BINARY_NONE;
}

/* COPY text format: escape backslash and the delimiters. */
void
copy_text(Buf *b, const char *s, size_t n)
{
	size_t		i;

	buf_reserve(b, n * 2);
	for (i = 0; i < n; i++)
	{
		char		c = s[i];

		if (c == '\\' || c == '\t' || c == '\n' || c == '\r')
		{
			b->data[b->len++] = '\\';
			c = c == '\t' ? 't' : c == '\n' ? 'n' : c == '\r' ? 'r' : '\\';
		}
		b->data[b->len++] = c;
	}
	b->data[b->len] = '\0';
}

/* n bytes as lower-case hex. */
void
hex_append(Buf *b, const void *data, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p = data;
	size_t		i;

	buf_reserve(b, n * 2);
	for (i = 0; i < n; i++)
	{
		b->data[b->len++] = hex[p[i] >> 4];
		b->data[b->len++] = hex[p[i] & 15];
	}
	b->data[b->len] = '\0';
}

/* n bytes as standard base64, padded. */
void
base64_append(Buf *b, const void *data, size_t n)
{
	static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *p = data;
	size_t		i;

	buf_reserve(b, (n + 2) / 3 * 4);
	for (i = 0; i < n; i += 3)
	{
		unsigned	v = (unsigned) p[i] << 16 | (i + 1 < n ? (unsigned) p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);

		b->data[b->len++] = digits[(v >> 18) & 63];
		b->data[b->len++] = digits[(v >> 12) & 63];
		b->data[b->len++] = i + 1 < n ? digits[(v >> 6) & 63] : '=';
		b->data[b->len++] = i + 2 < n ? digits[v & 63] : '=';
	}
	b->data[b->len] = '\0';
}

/* A bytea field: \\x and hex (the backslash itself escaped for COPY). */
static void
copy_bytea(Buf *b, const void *data, size_t n)
{
	if (data == NULL)
	{
		buf_puts(b, "\\N");
		return;
	}
	buf_append(b, "\\\\x", 3);
	hex_append(b, data, n);
}

/* Is this valid UTF-8 without NUL bytes? */
static bool
utf8_ok(const unsigned char *s, size_t n)
{
	size_t		i = 0;

	while (i < n)
	{
		unsigned char c = s[i];
		int			extra = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : -1;

		if (c == 0 || extra < 0 || i + extra >= n + (extra == 0))
			return false;
		for (i++; extra > 0; extra--, i++)
			if (i >= n || (s[i] & 0xc0) != 0x80)
				return false;
	}
	return true;
}

/* A JSON string (escaped for COPY afterwards by the caller's copy_text). */
void
json_string(Buf *b, const char *s, size_t n)
{
	size_t		i;

	buf_puts(b, "\"");
	for (i = 0; i < n; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c == '"' || c == '\\')
			buf_printf(b, "\\%c", c);
		else if (c < 0x20)
			buf_printf(b, "\\u%04x", c);
		else
			buf_append(b, (const char *) &c, 1);
	}
	buf_puts(b, "\"");
}

/* A decimal integer, without printf. */
static void
buf_int(Buf *b, long long v)
{
	char		tmp[24];
	int			n = 0;
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long) v : (unsigned long long) v;

	do
		tmp[n++] = (char) ('0' + u % 10);
	while ((u /= 10) > 0);
	if (v < 0)
		tmp[n++] = '-';
	buf_reserve(b, (size_t) n);
	while (n > 0)
		b->data[b->len++] = tmp[--n];
	b->data[b->len] = '\0';
}

/* The message's timestamp (UTC, milliseconds), or \N. */
static void
copy_timestamp(Buf *b, const rd_kafka_message_t *msg)
{
	rd_kafka_timestamp_type_t tstype;
	int64_t		ts = rd_kafka_message_timestamp(msg, &tstype);

	if (ts >= 0)
	{
		time_t		secs = (time_t) (ts / 1000);
		struct tm	tm;
		char		stamp[64];

		gmtime_r(&secs, &tm);
		strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);
		buf_printf(b, "%s.%03d+00", stamp, (int) (ts % 1000));
	}
	else
		buf_puts(b, "\\N");
}

/*
 * The headers as a JSON object of strings (a value that is not UTF-8 as
 * \x hex) in json; false when the message has none.  *id gets
 * infra-msg-id's value, if any.
 */
bool
headers_json(Buf *json, const rd_kafka_message_t *msg, const void **id, size_t *id_size)
{
	rd_kafka_headers_t *headers = NULL;
	size_t		idx;
	const char *name;
	const void *value;
	size_t		size;

	*id = NULL;
	*id_size = 0;
	json->len = 0;
	if (rd_kafka_message_headers(msg, &headers) != RD_KAFKA_RESP_ERR_NO_ERROR || headers == NULL)
		return false;
	buf_puts(json, "{");
	for (idx = 0; rd_kafka_header_get_all(headers, idx, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; idx++)
	{
		if (idx > 0)
			buf_puts(json, ",");
		json_string(json, name, strlen(name));
		buf_puts(json, ":");
		if (value == NULL)
			buf_puts(json, "null");
		else if (utf8_ok(value, size))
			json_string(json, value, size);
		else
		{
			Buf			hex = {0};

			copy_bytea(&hex, value, size);
			json_string(json, hex.data + 1, hex.len - 1);	/* one backslash */
			free(hex.data);
		}
	}
	buf_puts(json, "}");
	(void) rd_kafka_header_get_last(headers, "infra-msg-id", id, id_size);
	return true;
}

/* The headers (see headers_json) COPY-escaped, or \N. */
static void
copy_headers(Buf *b, Buf *scratch, const rd_kafka_message_t *msg, const void **id, size_t *id_size)
{
	if (headers_json(scratch, msg, id, id_size))
		copy_text(b, scratch->data, scratch->len);
	else
		buf_puts(b, "\\N");
}

/*
 * One staging row: seq, route, topic, partition, offset, key, value,
 * timestamp, headers, infra-msg-id.
 */
void
stage_row(Buf *b, Buf *scratch, int seq, int route, const rd_kafka_message_t *msg, const MsgBody *body)
{
	const char *topic = rd_kafka_topic_name(msg->rkt);
	const void *id_value;
	size_t		id_size;

	buf_int(b, seq);
	buf_puts(b, "\t");
	buf_int(b, route);
	buf_puts(b, "\t");
	copy_text(b, topic, strlen(topic));
	buf_puts(b, "\t");
	buf_int(b, msg->partition);
	buf_puts(b, "\t");
	buf_int(b, msg->offset);
	buf_puts(b, "\t");
	copy_bytea(b, body->key, body->key_len);
	buf_puts(b, "\t");
	copy_bytea(b, body->payload, body->len);
	buf_puts(b, "\t");
	copy_timestamp(b, msg);
	buf_puts(b, "\t");
	copy_headers(b, scratch, msg, &id_value, &id_size);
	buf_puts(b, "\t");
	if (id_value != NULL && utf8_ok(id_value, id_size))
		copy_text(b, id_value, id_size);
	else
		buf_puts(b, "\\N");
	buf_puts(b, "\n");
}

/* One metadata or whole-value field of a direct COPY row, text format. */
static void
direct_field(Buf *b, Buf *scratch, CopyField field, const rd_kafka_message_t *msg, const MsgBody *body)
{
	const void *id;
	size_t		id_size;

	switch (field)
	{
		case FIELD_VALUE_TEXT:
			if (body->payload == NULL)
				buf_puts(b, "\\N");
			else
				copy_text(b, body->payload, body->len);
			break;
		case FIELD_VALUE_BYTEA:
			copy_bytea(b, body->payload, body->len);
			break;
		case FIELD_TOPIC:
			{
				const char *topic = rd_kafka_topic_name(msg->rkt);

				copy_text(b, topic, strlen(topic));
				break;
			}
		case FIELD_PARTITION:
			buf_int(b, msg->partition);
			break;
		case FIELD_OFFSET:
			buf_int(b, msg->offset);
			break;
		case FIELD_KEY_TEXT:
			if (body->key == NULL)
				buf_puts(b, "\\N");
			else
				copy_text(b, body->key, body->key_len);
			break;
		case FIELD_KEY_BYTEA:
			copy_bytea(b, body->key, body->key_len);
			break;
		case FIELD_TIMESTAMP:
			copy_timestamp(b, msg);
			break;
		case FIELD_HEADERS:
			copy_headers(b, scratch, msg, &id, &id_size);
			break;
		case FIELD_JSON_KEY:
			buf_puts(b, "\\N");	/* json_columns_row's */
			break;
	}
}

/*
 * One row of a route's direct COPY: its columns, in their order.
 */
void
direct_row(Buf *b, Buf *scratch, const CopyShape *rs, const rd_kafka_message_t *msg, const MsgBody *body)
{
	int			f;

	for (f = 0; f < rs->nfields; f++)
	{
		if (f > 0)
			buf_puts(b, "\t");
		direct_field(b, scratch, rs->fields[f], msg, body);
	}
	buf_puts(b, "\n");
}

/*
 * One row of a json_columns route's direct COPY (text format), the JSON
 * keys' values picked by json.c into picked.  False, nothing written, when
 * the message must go through the staging path (json.c says when).
 */
bool
json_columns_row(Buf *b, Buf *scratch, Buf *picked, const CopyShape *rs, const rd_kafka_message_t *msg,
				 const MsgBody *body)
{
	JsonPick	picks[SHAPE_MAX_FIELDS];
	int			f;

	picked->len = 0;
	if (!json_pick(body->payload, body->len, rs->keys, rs->raw, rs->nkeys, picks, picked))
		return false;
	for (f = 0; f < rs->nfields; f++)
	{
		if (f > 0)
			buf_puts(b, "\t");
		if (rs->fields[f] != FIELD_JSON_KEY)
			direct_field(b, scratch, rs->fields[f], msg, body);
		else if (picks[rs->key_of[f]].kind == JSON_PICK_VALUE)
			copy_text(b, picked->data + picks[rs->key_of[f]].off, picks[rs->key_of[f]].len);
		else
			buf_puts(b, "\\N");
	}
	buf_puts(b, "\n");
	return true;
}

/* A big-endian integer of this many bytes, as binary COPY has them. */
void
buf_be(Buf *b, uint64_t v, int bytes)
{
	buf_reserve(b, (size_t) bytes);
	while (bytes-- > 0)
		b->data[b->len++] = (char) (v >> (bytes * 8));
	b->data[b->len] = '\0';
}

/* A binary COPY field of these bytes: length, then data; NULL as -1. */
static void
binary_bytes(Buf *b, BinaryForm form, const void *data, size_t n)
{
	if (data == NULL)
		buf_be(b, UINT32_MAX, 4);
	else if (form == BINARY_JSONB)
	{
		buf_be(b, n + 1, 4);
		buf_append(b, "\1", 1);	/* jsonb's binary format version */
		buf_append(b, data, n);
	}
	else
	{
		buf_be(b, n, 4);
		buf_append(b, data, n);
	}
}

/* A binary COPY integer field, int4 or int8 as the column is. */
static void
binary_int(Buf *b, BinaryForm form, int64_t v)
{
	int			size = form == BINARY_INT4 ? 4 : 8;

	buf_be(b, (uint64_t) size, 4);
	buf_be(b, (uint64_t) v, size);
}

/* The signature, flags and extension length that open binary COPY data. */
void
binary_header(Buf *b)
{
	buf_append(b, "PGCOPY\n\377\r\n\0", 11);
	buf_be(b, 0, 4);
	buf_be(b, 0, 4);
}

/*
 * One row of a route's direct COPY in binary format (every column of the
 * route has a binary form, see binary_form).
 */
void
binary_row(Buf *b, Buf *scratch, const CopyShape *rs, const rd_kafka_message_t *msg, const MsgBody *body)
{
	int			f;

	buf_be(b, (uint64_t) rs->nfields, 2);
	for (f = 0; f < rs->nfields; f++)
	{
		BinaryForm	form = rs->forms[f];
		const void *id;
		size_t		id_size;

		switch (rs->fields[f])
		{
			case FIELD_VALUE_TEXT:
			case FIELD_VALUE_BYTEA:
				binary_bytes(b, form, body->payload, body->len);
				break;
			case FIELD_TOPIC:
				{
					const char *topic = rd_kafka_topic_name(msg->rkt);

					binary_bytes(b, form, topic, strlen(topic));
					break;
				}
			case FIELD_PARTITION:
				binary_int(b, form, msg->partition);
				break;
			case FIELD_OFFSET:
				binary_int(b, form, msg->offset);
				break;
			case FIELD_KEY_TEXT:
			case FIELD_KEY_BYTEA:
				binary_bytes(b, form, body->key, body->key_len);
				break;
			case FIELD_TIMESTAMP:
				{
					rd_kafka_timestamp_type_t tstype;
					int64_t		ms = rd_kafka_message_timestamp(msg, &tstype);

					if (ms < 0)
						buf_be(b, UINT32_MAX, 4);
					else
					{
						/* PostgreSQL's epoch is 2000-01-01, 946684800 s after Unix's. */
						buf_be(b, 8, 4);
						buf_be(b, (uint64_t) ((ms - INT64_C(946684800000)) * 1000), 8);
					}
					break;
				}
			case FIELD_HEADERS:
				if (headers_json(scratch, msg, &id, &id_size))
					binary_bytes(b, form, scratch->data, scratch->len);
				else
					binary_bytes(b, form, NULL, 0);
				break;
			case FIELD_JSON_KEY:	/* json_columns routes COPY text */
				binary_bytes(b, form, NULL, 0);
				break;
		}
	}
}
