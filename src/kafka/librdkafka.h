/*-------------------------------------------------------------------------
 *
 * librdkafka.h
 *		The one place infra includes librdkafka's header.
 *
 * Only the files of src/kafka/ include this header, and only those that
 * hand librdkafka's types around (config, client, headers, topic_admin,
 * settle, producer).  librdkafka runs threads of its own: nothing called
 * from them may call PostgreSQL (STYLE.md rule 5); every callback infra
 * registers runs inside rd_kafka_poll() on the worker's thread.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_LIBRDKAFKA_H
#define INFRA_LIBRDKAFKA_H

#include <librdkafka/rdkafka.h>

#endif							/* INFRA_LIBRDKAFKA_H */
