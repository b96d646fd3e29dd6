/*-------------------------------------------------------------------------
 *
 * round.h
 *		The data of one delivery round: outbox rows read, their messages
 *		on their way, and what the reports said.
 *
 * Filled by producer.c (read, produce, classify) and read by settle.c.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_ROUND_H
#define INFRA_KAFKA_ROUND_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"

#include "kafka/client.h"

/*
 * Ids of the WAL outbox start here (kafka/outbox.h), above the table
 * outbox's.  A row of the table holding such ids holds WAL-outbox messages
 * moved there for retries (settle.c), in commit order, not id order: its
 * first id is a value of the table's sequence taken when it was moved,
 * which keeps its place among the rows.
 */
#define KAFKA_WAL_FIRST_ID (INT64CONST(1) << 51)

/* One outbox message on its way. */
typedef struct OutboxMessage
{
	KafkaReport report;			/* the delivery report's opaque */
	int64		id;
	int			row;			/* its row in the round */
	int			index;			/* its place in that row's arrays */
	int64		order;			/* its id; a moved WAL row's messages: the row's first id */
	bool		dead;
} OutboxMessage;

/* One row of infra.kafka_outbox_batches, unpacked. */
typedef struct OutboxRow
{
	int64		first_id;
	int			nmsgs;
	Datum	   *ids;
	Datum	   *topics;
	Datum	   *partitions;
	Datum	   *keys;
	Datum	   *vals;
	Datum	   *headers;
	bool	   *pnulls;
	bool	   *knulls;
	bool	   *vnulls;
	bool	   *hnulls;
	TimestampTz created_at;
	int			attempts;
	int32		timeline;		/* its ids' timeline; 0: written before 1.1 */
	bool	   *keep;			/* still in the outbox after this round */
	bool		failed;			/* a message of it failed (retriably) */
	bool		moved;			/* moved from the WAL outbox: ordered by first_id, then place */
} OutboxRow;

/* One delivery round, from its read to its accounting. */
typedef struct KafkaRound
{
	OutboxRow  *rows;			/* the rows read; nincluded of them go */
	int			nincluded;
	int			total;			/* messages in the included rows */
	int64		cut;			/* first id of the first row left out */
	XLogRecPtr	async_commit_lsn;	/* how far asynchronous commits of its rows reach */
	OutboxMessage *messages;	/* what goes now, in id order */
	int			n;
	struct KafkaTxnId *ids;		/* table outbox, exactly once: what it produces */
	struct KafkaTxnId *skipped; /* table outbox, exactly once: ids Kafka holds already */
	int			nskipped;
	int			sent;			/* of them given to librdkafka so far */
	int			nok;			/* delivered */
	int			nbad;			/* failed, to retry */
	int			ndead;			/* refused for good: dead letters */
	char		first_error[KAFKA_ERROR_LEN];
	int64		start_ns;		/* when producing began */
	int64		timestamp_ms;	/* its messages' CreateTime: when producing began */
	char	   *topic_name;		/* the topic being produced to, and its handle */
	Size		topic_len;
	rd_kafka_topic_t *topic_handle;
	bool		topic_temporary;	/* a handle to destroy after use */
	int			producer;		/* which producer it went to (client.c) */
	uint64		generation;		/* of which set of producers */
	bool		in_txn;			/* produced in a Kafka transaction (exactly once) */
	bool		txn_failed;		/* which did not commit */
	bool		must_abort;		/* the round before it did not commit: nor may it */
	bool		carried_in;		/* produced into the Kafka transaction of the round before it */
	bool		carried_on;		/* its transaction goes on with the next round: not ended here */
	bool		txn_gone;		/* its transaction was aborted with the round before it */
	int64		carried_ok;		/* delivered by earlier rounds of its transaction */
	bool		topics_pending; /* infra.topics has some to create */
	bool		table_empty;	/* the read found no row */
	bool		wal;			/* read from the WAL outbox, in commit order */
	int			wal_batch;		/* which of walread.c's batches holds it */
} KafkaRound;

#endif							/* INFRA_KAFKA_ROUND_H */
