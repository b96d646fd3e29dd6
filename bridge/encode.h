/*-------------------------------------------------------------------------
 *
 * encode.h
 *		infra-bridge: Kafka messages as COPY data, text and binary.
 *
 *-------------------------------------------------------------------------
 */
#ifndef BRIDGE_ENCODE_H
#define BRIDGE_ENCODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

#include "bridge.h"
#include "buf.h"

/*
 * A message's key and value as the routes read them: the message's own, or
 * what the bridge decoded them to (format = avro: JSON, see avrodec.c).
 */
typedef struct MsgBody
{
	const void *payload;		/* NULL: a tombstone */
	size_t		len;
	const void *key;			/* NULL: none */
	size_t		key_len;
} MsgBody;

/* What a column of a direct COPY gets from a message. */
typedef enum CopyField
{
	FIELD_VALUE_TEXT,			/* json, jsonb, text: the value as text */
	FIELD_VALUE_BYTEA,
	FIELD_TOPIC,
	FIELD_PARTITION,
	FIELD_OFFSET,
	FIELD_KEY_TEXT,
	FIELD_KEY_BYTEA,
	FIELD_TIMESTAMP,
	FIELD_HEADERS,
	FIELD_JSON_KEY				/* json_columns: a top-level key's value */
} CopyField;

/*
 * How a field is sent in a binary COPY: the column type's binary form
 * (what its receive function reads).
 */
typedef enum BinaryForm
{
	BINARY_NONE,				/* no binary form here: the COPY is text */
	BINARY_BYTES,				/* text, json, bytea: the bytes themselves */
	BINARY_JSONB,				/* version 1, then the JSON text */
	BINARY_INT4,
	BINARY_INT8,
	BINARY_TIMESTAMPTZ			/* microseconds since 2000-01-01 UTC */
} BinaryForm;


/* Columns of a route's COPY at most. */
#define SHAPE_MAX_FIELDS 256

/*
 * What the columns of a route's direct COPY get, and in which form; for
 * FIELD_JSON_KEY, which key of keys (a jsonb column's: raw).
 */
typedef struct CopyShape
{
	bool		binary;			/* the COPY is in binary format */
	CopyField	fields[SHAPE_MAX_FIELDS];
	BinaryForm	forms[SHAPE_MAX_FIELDS];
	int			key_of[SHAPE_MAX_FIELDS];
	int			nfields;
	const char *keys[SHAPE_MAX_FIELDS];
	bool		raw[SHAPE_MAX_FIELDS];
	int			nkeys;
} CopyShape;

extern void buf_be(Buf *b, uint64_t v, int bytes);

extern void copy_text(Buf *b, const char *s, size_t n);
extern void hex_append(Buf *b, const void *data, size_t n);
extern void base64_append(Buf *b, const void *data, size_t n);
extern BinaryForm binary_form(CopyField field, const char *type);
extern void stage_row(Buf *b, Buf *scratch, int seq, int route, const rd_kafka_message_t *msg,
					  const MsgBody *body);
extern void direct_row(Buf *b, Buf *scratch, const CopyShape *rs, const rd_kafka_message_t *msg,
					   const MsgBody *body);
extern bool json_columns_row(Buf *b, Buf *scratch, Buf *picked, const CopyShape *rs,
							 const rd_kafka_message_t *msg, const MsgBody *body);
extern void binary_header(Buf *b);
extern void binary_row(Buf *b, Buf *scratch, const CopyShape *rs, const rd_kafka_message_t *msg,
					   const MsgBody *body);
extern bool headers_json(Buf *json, const rd_kafka_message_t *msg, const void **id, size_t *id_size);
extern void json_string(Buf *b, const char *s, size_t n);

#endif							/* BRIDGE_ENCODE_H */
