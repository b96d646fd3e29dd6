/*-------------------------------------------------------------------------
 *
 * progress.h
 *		kafka_flush woken when the outbox moves on.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_KAFKA_PROGRESS_H
#define INFRA_KAFKA_PROGRESS_H

extern void KafkaProgressInit(void);
extern void KafkaProgressSleep(int64 deadline_ns);
extern void KafkaProgressSleepEnd(void);
extern void KafkaProgressed(void);

#endif							/* INFRA_KAFKA_PROGRESS_H */
