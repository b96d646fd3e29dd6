/*-------------------------------------------------------------------------
 *
 * headers.c
 *		The headers of one Kafka message.
 *
 * Every message carries the user's headers (a JSON object) and two of
 * infra's own, which a user header of the same name never replaces:
 * infra-msg-id, unique across databases, clusters and timelines and the
 * same for every attempt, so that consumers can drop duplicates; and
 * infra-commit-time, for end-to-end latency.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xlog.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

#include "kafka/headers.h"
#include "kafka/kafka.h"

/*
 * Headers of one message: the user's (a JSON object) and infra-msg-id,
 * "<system identifier>/<database oid>/<timeline>/<outbox id>": the timeline
 * the id was allocated on keeps ids unique when a failover lost WAL and the
 * new primary's sequence hands out ids the old one used.  Rows written
 * before 1.1 (no timeline) keep the 1.0 form, without it, so a message sent
 * again carries the id it had.
 */
rd_kafka_headers_t *
KafkaHeaders(int64 id, int32 timeline, TimestampTz written_at, Jsonb *user_headers)
{
	/* Sized for what it will hold: infra's two and the user's. */
	rd_kafka_headers_t *headers =
		rd_kafka_headers_new(2 + (user_headers != NULL ? JB_ROOT_COUNT(user_headers) : 0));
	static char prefix[48];
	static int	prefix_len = 0;
	char		msg_id[96];
	char		commit_time[32];
	int			len;

	/* "<system identifier>/<database oid>/", the same for every message. */
	if (prefix_len == 0)
		prefix_len = snprintf(prefix, sizeof(prefix), UINT64_FORMAT "/%u/",
							  GetSystemIdentifier(), MyDatabaseId);
	memcpy(msg_id, prefix, prefix_len);
	len = prefix_len;
	if (timeline > 0)
	{
		len += pg_ltoa(timeline, msg_id + len);
		msg_id[len++] = '/';
	}
	len += pg_lltoa(id, msg_id + len);
	rd_kafka_header_add(headers, KAFKA_MSG_ID_HEADER, -1, msg_id, len);
	/*
	 * infra-commit-time, for end-to-end latency (infra-bridge's): when the
	 * sending transaction wrote the message's outbox row, in microseconds
	 * since 1970.  That is at its commit (just before the commit record),
	 * or for a transaction of more than a thousand messages at each
	 * thousand.  The commit timestamp itself cannot serve: a row the worker
	 * rewrote (a failed attempt) has the worker's transaction as xmin.
	 */
	len = pg_lltoa((int64) written_at + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * USECS_PER_SEC,
				   commit_time);
	rd_kafka_header_add(headers, KAFKA_COMMIT_TIME_HEADER, -1, commit_time, len);

	if (user_headers != NULL)
	{
		JsonbIterator *it = JsonbIteratorInit(&user_headers->root);
		JsonbValue	v;
		JsonbIteratorToken tok;
		char	   *name = NULL;

		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
			{
				name = pnstrdup(v.val.string.val, v.val.string.len);
				/*
				 * kafka_send refuses infra-msg-id; a row written otherwise
				 * loses it.  infra-commit-time is infra's too.
				 */
				if (pg_strcasecmp(name, KAFKA_MSG_ID_HEADER) == 0 ||
					pg_strcasecmp(name, KAFKA_COMMIT_TIME_HEADER) == 0)
					name = NULL;
			}
			else if (tok == WJB_VALUE && name != NULL)
			{
				if (v.type == jbvString)
					rd_kafka_header_add(headers, name, -1, v.val.string.val, v.val.string.len);
				else if (v.type == jbvNull)
					rd_kafka_header_add(headers, name, -1, NULL, 0);
				else
				{
					Jsonb	   *one = JsonbValueToJsonb(&v);
					char	   *s = JsonbToCString(NULL, &one->root, VARSIZE(one));

					rd_kafka_header_add(headers, name, -1, s, -1);
				}
				name = NULL;
			}
		}
	}
	return headers;
}
