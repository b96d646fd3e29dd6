/*-------------------------------------------------------------------------
 *
 * topic_admin.c
 *		The topics of infra.topics created on the broker.
 *
 * topic_register() marks a topic pending; each delivery round asks, in its
 * read transaction, whether any is (KafkaAnyPendingTopic: nearly always
 * none, and then nothing else is done), and if so creates them before
 * anything is produced, so that a new topic has its settings.  Creation
 * uses librdkafka's Admin API on the worker's producer, with no snapshot
 * held while the broker thinks.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "postmaster/interrupt.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "core/clock.h"
#include "core/spicheck.h"
#include "core/worker.h"
#include "kafka/client.h"
#include "kafka/topic_admin.h"

/* Its statements, planned once (per extension install). */
static SPIPlanPtr pending_topics_plan = NULL;
static SPIPlanPtr any_pending_topic_plan = NULL;

/*
 * Describe the topics read into SPI_tuptable for the Admin API, into
 * topics[0..n-1] (each filled before anything can fail after it).
 */
static void
KafkaDescribeTopics(rd_kafka_NewTopic_t **topics, int n)
{
	char		errbuf[512];
	int			i;

	for (i = 0; i < n; i++)
	{
		char	   *name = TextDatumGetCString(SpiGetValue(i, 1, false, NULL, "infra.topics"));
		Jsonb	   *config = DatumGetJsonbP(SpiGetValue(i, 4, false, NULL, "infra.topics"));
		JsonbIterator *it;
		JsonbValue	v;
		JsonbIteratorToken tok;
		char	   *key = NULL;

		topics[i] = rd_kafka_NewTopic_new(name,
										  DatumGetInt32(SpiGetValue(i, 2, false, NULL, "infra.topics")),
										  DatumGetInt32(SpiGetValue(i, 3, false, NULL, "infra.topics")),
										  errbuf, sizeof(errbuf));
		if (topics[i] == NULL)
			elog(ERROR, "could not describe topic \"%s\": %s", name, errbuf);
		it = JsonbIteratorInit(&config->root);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			if (tok == WJB_KEY)
				key = pnstrdup(v.val.string.val, v.val.string.len);
			else if (tok == WJB_VALUE && key != NULL)
			{
				char	   *value;

				if (v.type == jbvString)
					value = pnstrdup(v.val.string.val, v.val.string.len);
				else
				{
					Jsonb	   *one = JsonbValueToJsonb(&v);

					value = JsonbToCString(NULL, &one->root, VARSIZE(one));
				}
				rd_kafka_NewTopic_set_config(topics[i], key, value);
				key = NULL;
			}
		}
	}
}

/*
 * Record each topic's outcome of a CreateTopics request in broker_state.
 */
static void
KafkaRecordTopicResults(rd_kafka_event_t *event)
{
	const rd_kafka_CreateTopics_result_t *result = rd_kafka_event_CreateTopics_result(event);
	const rd_kafka_topic_result_t **results;
	size_t		nresults;
	size_t		r;

	results = rd_kafka_CreateTopics_result_topics(result, &nresults);
	for (r = 0; r < nresults; r++)
	{
		rd_kafka_resp_err_t err = rd_kafka_topic_result_error(results[r]);
		const char *state;
		Oid			argtypes[2] = {TEXTOID, TEXTOID};
		Datum		args[2];

		if (err == RD_KAFKA_RESP_ERR_NO_ERROR)
			state = "created";
		else if (err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
			state = "exists";
		else
			state = psprintf("error: %s: %s", rd_kafka_err2name(err),
							 rd_kafka_topic_result_error_string(results[r]) ?
							 rd_kafka_topic_result_error_string(results[r]) : rd_kafka_err2str(err));
		args[0] = CStringGetTextDatum(rd_kafka_topic_result_name(results[r]));
		args[1] = CStringGetTextDatum(state);
		SpiCheckResult(SPI_execute_with_args("UPDATE infra.topics SET broker_state = $2"
											 " WHERE name OPERATOR(pg_catalog.=) $1",
											 2, argtypes, args, NULL, false, 0),
					   SPI_OK_UPDATE, "the update of infra.topics", 0, NULL);
	}
}

/*
 * Create on the broker the topics of infra.topics still marked pending, with
 * the Admin API, and record each outcome in broker_state.  The topics are
 * read (and described) in one short transaction, the request waits for its
 * answer (up to 15 s) in none, and the outcomes are written in another: no
 * snapshot is held while the broker thinks.  A request that gets no answer
 * leaves them pending for the next round.  The Admin API's objects are
 * freed on every path, errors included.
 */
void
KafkaCreateRegisteredTopics(MemoryContext memory)
{
	static const Oid types[4] = {TEXTOID, INT4OID, INT4OID, JSONBOID};
	rd_kafka_NewTopic_t **topics = NULL;
	rd_kafka_AdminOptions_t *volatile options = NULL;
	rd_kafka_queue_t *volatile queue = NULL;
	rd_kafka_event_t *volatile event = NULL;
	volatile int n = 0;
	char		errbuf[512];

	InfraWorkerSpiBegin();
	SpiExecKept(&pending_topics_plan,
			  "SELECT name, partitions, replication_factor, config FROM infra.topics"
			  " WHERE broker_state OPERATOR(pg_catalog.=) 'pending'"
			  " ORDER BY name LIMIT 100",
			  0, NULL, NULL, NULL, true,
			  SPI_OK_SELECT, "infra.topics", 4, types);
	if (SPI_processed > 0)
	{
		n = (int) SPI_processed;
		topics = MemoryContextAllocZero(memory, sizeof(rd_kafka_NewTopic_t *) * n);
	}
	PG_TRY();
	{
		if (n > 0)
			KafkaDescribeTopics(topics, n);
		InfraWorkerSpiEnd();
		MemoryContextSwitchTo(memory);
		if (n > 0)
		{
			int64		deadline = InfraMonotonicNs() + 15 * NS_PER_SEC;

			queue = rd_kafka_queue_new(KafkaProducer());
			options = rd_kafka_AdminOptions_new(KafkaProducer(), RD_KAFKA_ADMIN_OP_CREATETOPICS);
			rd_kafka_AdminOptions_set_request_timeout(options, 10000, errbuf, sizeof(errbuf));
			rd_kafka_CreateTopics(KafkaProducer(), topics, n, options, queue);
			while (event == NULL && InfraMonotonicNs() < deadline && !ShutdownRequestPending)
			{
				event = rd_kafka_queue_poll(queue, 100);
				CHECK_FOR_INTERRUPTS();
			}
			if (event != NULL && rd_kafka_event_error(event) == RD_KAFKA_RESP_ERR_NO_ERROR)
			{
				InfraWorkerSpiBegin();
				KafkaRecordTopicResults(event);
				InfraWorkerSpiEnd();
				MemoryContextSwitchTo(memory);
			}
			else
				KafkaRecordError(event ? rd_kafka_event_error_string(event) :
								 "no answer from the broker to CreateTopics");
		}
	}
	PG_FINALLY();
	{
		int			i;

		if (event)
			rd_kafka_event_destroy(event);
		if (options)
			rd_kafka_AdminOptions_destroy(options);
		if (queue)
			rd_kafka_queue_destroy(queue);
		for (i = 0; i < n; i++)
			if (topics[i])
				rd_kafka_NewTopic_destroy(topics[i]);
	}
	PG_END_TRY();
}

/*
 * Are there registered topics to create?  Asked in the read's transaction,
 * so that creating them (in transactions of their own) costs nothing when
 * there are none, which is nearly always.
 */
bool
KafkaAnyPendingTopic(void)
{
	static const Oid types[1] = {BOOLOID};

	SpiExecKept(&any_pending_topic_plan,
			  "SELECT EXISTS (SELECT FROM infra.topics"
			  " WHERE broker_state OPERATOR(pg_catalog.=) 'pending')",
			  0, NULL, NULL, NULL, true,
			  SPI_OK_SELECT, "infra.topics", 1, types);
	return DatumGetBool(SpiGetValue(0, 1, false, NULL, "infra.topics"));
}
