/*-------------------------------------------------------------------------
 *
 * avrodec.h
 *		infra-bridge: Avro in Confluent's wire format, with its schemas from
 *		a schema registry, decoded to the JSON the routes read (avrodec.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_BRIDGE_AVRODEC_H
#define INFRA_BRIDGE_AVRODEC_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

typedef enum AvroResult
{
	AVRO_DECODED,
	AVRO_BAD,					/* the message's fault: a dead letter */
	AVRO_RETRY					/* the registry's: the batch is tried again */
} AvroResult;

/* How the JSON is written. */
typedef enum AvroShape
{
	AVRO_COLUMNS,				/* values as PostgreSQL reads them (format = avro) */
	AVRO_CONNECT,				/* as Kafka Connect's JSON converter, with its schema part */
	AVRO_CONNECT_PAYLOAD		/* the same without the schema part (a key) */
} AvroShape;

extern AvroResult avro_decode(const char *registry, int slot, const void *data, size_t len, AvroShape shape,
							  Buf *out, char *why, size_t whylen);

#endif							/* INFRA_BRIDGE_AVRODEC_H */
