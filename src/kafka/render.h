/*-------------------------------------------------------------------------
 *
 * render.h
 *		A statement's rows from the WAL outbox rendered by the output plugin.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_RENDER_H
#define INFRA_KAFKA_RENDER_H

#include "replication/logical.h"
#include "replication/reorderbuffer.h"

extern void KafkaRenderRows(LogicalDecodingContext *ctx, ReorderBufferTXN *txn,
							const char *message, Size size);

#endif							/* INFRA_KAFKA_RENDER_H */
