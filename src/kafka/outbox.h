/*-------------------------------------------------------------------------
 *
 * outbox.h
 *		The two ways a transaction's Kafka messages are written: rows of
 *		infra.kafka_outbox_batches, or transactional logical messages in the
 *		WAL, which the delivery worker decodes from a slot (walread.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_OUTBOX_H
#define INFRA_KAFKA_OUTBOX_H

#include "access/xlogdefs.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"

/* infra.kafka_outbox */
typedef enum KafkaOutboxKind
{
	KAFKA_OUTBOX_TABLE,
	KAFKA_OUTBOX_WAL
} KafkaOutboxKind;

extern int	infra_kafka_outbox;

/* The prefix of infra's logical messages; the output plugin keeps only these. */
#define KAFKA_WAL_PREFIX "infra.kafka"

/*
 * Message ids of the WAL outbox come in blocks of KAFKA_WAL_BLOCK per
 * backend from infra.kafka_outbox_block_seq, whose values start at
 * 2^41: the ids start at 2^51, far above the table outbox's sequence.
 */
#define KAFKA_WAL_BLOCK 1024

/* One message a transaction sent, buffered until it is written. */
typedef struct BufferedMessage
{
	int64		id;
	text	   *topic;
	bool		has_partition;
	int32		partition;
	bytea	   *key;			/* UTF-8 */
	bytea	   *value;
	Jsonb	   *headers;
	SubTransactionId subid;
} BufferedMessage;

/*
 * The record the output plugin writes for each logical message: where its
 * transaction committed, then the message's bytes (KafkaWalWrite's).
 */
typedef struct KafkaWalCommit
{
	XLogRecPtr	commit_lsn;
	XLogRecPtr	end_lsn;
	TimestampTz commit_time;
} KafkaWalCommit;

/*
 * The head of one logical message: n messages follow.  Anyone may write a
 * logical message with any prefix (pg_logical_emit_message is PUBLIC): the
 * token, an HMAC of the writing transaction's xid under the database's
 * secret (infra.kafka_wal_secret, which callers cannot read), tells the
 * worker that kafka_send wrote it.
 */
#define KAFKA_WAL_TOKEN_LEN 16
typedef struct KafkaWalHead
{
	uint32		magic;
	int32		timeline;		/* the ids' timeline */
	TimestampTz written_at;
	int32		n;
	uint8		token[KAFKA_WAL_TOKEN_LEN];
} KafkaWalHead;

#define KAFKA_WAL_MAGIC 0x494B5731	/* "IKW1" */

/*
 * Each message: this, then its topic, key, value and headers (a Jsonb) as
 * varlenas with 4-byte headers, each padded to 4 bytes (lengths here
 * exclude the header).  The head and the items are copied out, not
 * aligned; the varlenas are used in place.
 */
typedef struct KafkaWalItem
{
	int64		id;
	int32		partition;		/* -1: none */
	int32		topic_len;
	int32		key_len;		/* -1: NULL */
	int32		value_len;		/* -1: NULL */
	int32		headers_len;	/* -1: NULL */
} KafkaWalItem;

/*
 * A statement's rows in the WAL outbox (rows.c), rendered into messages by
 * the worker's output plugin (render.c): this head, then as varlenas the
 * topic, the envelope's text before the first row, between the rows (an
 * UPDATE's) and after them, and the headers (when has_headers); then per
 * row its id (int64) and its old and new tuples (varlenas holding the
 * tuple's header and data).
 */
#define KAFKA_WAL_ROWS_MAGIC 0x494B5231	/* "IKR1" */
#define KAFKA_WAL_MAX_KEYS 32
typedef struct KafkaWalRowsHead
{
	uint32		magic;
	int32		timeline;
	TimestampTz written_at;
	int32		n;
	uint8		token[KAFKA_WAL_TOKEN_LEN];
	Oid			relid;
	bool		has_old;
	bool		has_new;
	bool		has_headers;
	bool		key_column;		/* one named column: NULL value, NULL key */
	int16		nkeys;			/* 0: no key */
	int16		keys[KAFKA_WAL_MAX_KEYS];	/* attribute numbers */
} KafkaWalRowsHead;

extern void KafkaOutboxInit(void);
extern void KafkaWalAppendVarlena(StringInfo buf, const void *data, int32 len);
extern bool KafkaWalSecretLoaded(void);
extern void KafkaWalSlotName(char *name);
extern XLogRecPtr KafkaWalSlotConfirmed(bool *exists);
extern int64 KafkaWalNextId(Oid block_sequence);
extern void KafkaWalWrite(const BufferedMessage *msgs, int n);
extern void KafkaTableWrite(Datum *args, Oid writer);
extern bool KafkaWalFlushWait(int64 deadline_ns);
extern void KafkaWalLoadSecret(Oid reader);
extern void KafkaWalToken(TransactionId xid, uint8 *token);

#endif							/* INFRA_KAFKA_OUTBOX_H */
