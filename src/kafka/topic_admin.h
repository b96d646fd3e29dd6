/*-------------------------------------------------------------------------
 *
 * topic_admin.h
 *		Creating the topics of infra.topics on the broker (Admin API).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_TOPIC_ADMIN_H
#define INFRA_KAFKA_TOPIC_ADMIN_H

extern bool KafkaAnyPendingTopic(void);
extern void KafkaCreateRegisteredTopics(MemoryContext memory);

#endif							/* INFRA_KAFKA_TOPIC_ADMIN_H */
