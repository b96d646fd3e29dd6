/*-------------------------------------------------------------------------
 *
 * publish.c
 *		Set-based publishing: many messages in one call, and the
 *		statement-level publish trigger.
 *
 * kafka_send_many(topic, values[], keys[], headers) sends each value with
 * the key at the same place, in order, exactly as as many kafka_send calls
 * would (same ids, per-key locks, headers, buffering, guarantees), for the
 * cost of one call.  kafka_publish_statement() is the set-based twin of
 * the row trigger kafka_publish(): an AFTER ... FOR EACH STATEMENT trigger
 * with transition tables, sending the row trigger's envelope {op, schema,
 * table, before, after, ts_ms (the statement's), txid} for every row the
 * statement changed,
 * keyed the same way (the column given, else the primary key), in one pass
 * over the transition tables and without a trigger call per row.
 *
 * An UPDATE's old and new transition tables hold a row's two versions at
 * the same place (the executor captures them together): the trigger pairs
 * them by position, so a change of primary key keeps its before and after.
 * Rows are named as whole rows (alias.*): a bare alias would be taken for a
 * column of the same name.
 *
 * Rights: the trigger sends as kafka_send_many would, so the role writing
 * the table needs EXECUTE on kafka_send_many's jsonb form, as the row
 * trigger's writers need kafka_send's.  No shared memory; kafka.c buffers.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/formatting.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "core/spicheck.h"
#include "core/version.h"
#include "kafka/kafka.h"
#include "kafka/rows.h"

PG_FUNCTION_INFO_V1(infra_kafka_send_many);
PG_FUNCTION_INFO_V1(infra_kafka_publish_statement);

/* Rows the trigger reads from its transition tables at a time. */
#define PUBLISH_FETCH 1000

/*
 * An array argument as n elements (NULLs kept as NULL pointers); a
 * multidimensional array is refused.
 */
static Datum *
PublishElements(ArrayType *array, const char *what, bool **nulls, int *n)
{
	Oid			elemtype = ARR_ELEMTYPE(array);
	int16		typlen;
	bool		typbyval;
	char		typalign;
	Datum	   *elems;

	if (ARR_NDIM(array) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", what),
				 errhint("Aggregate the messages with array_agg().")));
	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	deconstruct_array(array, elemtype, typlen, typbyval, typalign, &elems, nulls, n);
	return elems;
}

/*
 * infra.kafka_send_many(topic, vals jsonb[] | text[] | bytea[], keys text[],
 * headers jsonb): the number of messages sent.
 */
Datum
infra_kafka_send_many(PG_FUNCTION_ARGS)
{
	ArrayType  *vals;
	Datum	   *velems;
	bool	   *vnulls;
	int			n;
	Datum	   *kelems = NULL;
	bool	   *knulls = NULL;
	int			nkeys = 0;
	bytea	  **values;
	text	  **keys = NULL;
	Oid			type;
	int			i;

	INFRA_CHECK_SCHEMA();
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("topic must not be NULL"),
				 errhint("Give the Kafka topic to send to.")));
	if (PG_ARGISNULL(1))
		PG_RETURN_INT64(0);
	vals = PG_GETARG_ARRAYTYPE_P(1);
	type = ARR_ELEMTYPE(vals);
	velems = PublishElements(vals, "vals", &vnulls, &n);
	if (!PG_ARGISNULL(2))
	{
		kelems = PublishElements(PG_GETARG_ARRAYTYPE_P(2), "keys", &knulls, &nkeys);
		if (nkeys != n)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("keys has %d elements but vals has %d", nkeys, n),
					 errhint("Give one key per value (NULL for none), or no keys at all.")));
		keys = palloc(sizeof(text *) * (n + 1));
	}
	values = palloc(sizeof(bytea *) * (n + 1));
	for (i = 0; i < n; i++)
	{
		if (vnulls[i])
			values[i] = NULL;
		else if (type == JSONBOID)
		{
			Jsonb	   *jb = DatumGetJsonbP(velems[i]);

			values[i] = (bytea *) cstring_to_text(JsonbToCString(NULL, &jb->root, VARSIZE(jb)));
		}
		else
			values[i] = (bytea *) PG_DETOAST_DATUM_PACKED(velems[i]);
		if (keys)
			keys[i] = knulls[i] ? NULL : (text *) PG_DETOAST_DATUM_PACKED(kelems[i]);
	}
	(void) KafkaSendMany(PG_GETARG_TEXT_PP(0), PG_ARGISNULL(3) ? NULL : PG_GETARG_JSONB_P(3),
						 n, values, keys);
	PG_RETURN_INT64(n);
}

/*
 * The SQL expression of a message's key over the row rowvar: the key
 * column's value, else the primary key's columns joined by commas (as
 * kafka_publish does), else NULL; each value as its JSON renders it (what
 * kafka_publish's ->> gives: true, not t).
 */
static char *
PublishKeyExpression(Relation rel, const char *key_column, const char *rowvar)
{
	StringInfoData expr;
	List	   *index_oids;
	ListCell   *lc;

	initStringInfo(&expr);
	if (key_column != NULL)
	{
		if (get_attnum(RelationGetRelid(rel), key_column) == InvalidAttrNumber)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("column \"%s\" of infra.kafka_publish_statement() does not exist in %s.%s",
							key_column, get_namespace_name(RelationGetNamespace(rel)),
							RelationGetRelationName(rel)),
					 errhint("Name a column of the table as the second argument, or omit it to use the primary key.")));
		appendStringInfo(&expr, "pg_catalog.to_jsonb(%s.%s) OPERATOR(pg_catalog.#>>) '{}'::pg_catalog.text[]",
						 rowvar, quote_identifier(key_column));
		return expr.data;
	}
	index_oids = RelationGetIndexList(rel);
	foreach(lc, index_oids)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);
		int			k;

		if (index->rd_index->indisprimary)
		{
			appendStringInfoString(&expr, "pg_catalog.concat_ws(','");
			for (k = 0; k < index->rd_index->indnkeyatts; k++)
				appendStringInfo(&expr, ", pg_catalog.to_jsonb(%s.%s) OPERATOR(pg_catalog.#>>) '{}'::pg_catalog.text[]",
								 rowvar,
								 quote_identifier(get_attname(RelationGetRelid(rel),
															  index->rd_index->indkey.values[k], false)));
			appendStringInfoChar(&expr, ')');
		}
		index_close(index, AccessShareLock);
	}
	list_free(index_oids);
	return expr.len > 0 ? expr.data : pstrdup("NULL::pg_catalog.text");
}

/*
 * The statement that reads the trigger's transition tables as (envelope
 * text, key) in the order the executor captured the rows: each row as JSON
 * text (to_json: no jsonb built and printed again) between $1 (the
 * envelope's start, up to "before" or "after"), $2 (between them, for an
 * UPDATE) and $3 (the end, with the statement's ts_ms and txid).
 */
static char *
PublishQuery(TriggerData *trigdata, const char *op, const char *key_column)
{
	Trigger    *trigger = trigdata->tg_trigger;
	Relation	rel = trigdata->tg_relation;
	bool		old_rows = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_DELETE(trigdata->tg_event);
	bool		new_rows = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_INSERT(trigdata->tg_event);
	StringInfoData q;

	if ((old_rows && trigger->tgoldtable == NULL) || (new_rows && trigger->tgnewtable == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("infra.kafka_publish_statement() needs the %s transition table of an %s", old_rows && trigger->tgoldtable == NULL ? "OLD" : "NEW", op),
				 errhint("CREATE TRIGGER ... AFTER %s ON t REFERENCING %s FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('topic').",
						 op, strcmp(op, "UPDATE") == 0 ? "OLD TABLE AS old_rows NEW TABLE AS new_rows" :
						 strcmp(op, "DELETE") == 0 ? "OLD TABLE AS old_rows" : "NEW TABLE AS new_rows")));
	initStringInfo(&q);
	if (old_rows && new_rows)
		appendStringInfo(&q,
						 "SELECT $1 OPERATOR(pg_catalog.||) ob.b OPERATOR(pg_catalog.||) $2 OPERATOR(pg_catalog.||) nb.a"
						 " OPERATOR(pg_catalog.||) $3, nb.k"
						 " FROM (SELECT pg_catalog.row_number() OVER () AS i,"
						 " pg_catalog.to_json(infra_old.*)::pg_catalog.text AS b FROM %s infra_old) ob"
						 " JOIN (SELECT pg_catalog.row_number() OVER () AS i,"
						 " pg_catalog.to_json(infra_new.*)::pg_catalog.text AS a, %s AS k FROM %s infra_new) nb"
						 " ON ob.i OPERATOR(pg_catalog.=) nb.i ORDER BY ob.i",
						 quote_identifier(trigger->tgoldtable),
						 PublishKeyExpression(rel, key_column, "infra_new"),
						 quote_identifier(trigger->tgnewtable));
	else
		appendStringInfo(&q,
						 "SELECT $1 OPERATOR(pg_catalog.||) pg_catalog.to_json(infra_row.*)::pg_catalog.text"
						 " OPERATOR(pg_catalog.||) $3, %s FROM %s infra_row",
						 PublishKeyExpression(rel, key_column, "infra_row"),
						 quote_identifier(old_rows ? trigger->tgoldtable : trigger->tgnewtable));
	return q.data;
}

/*
 * The envelope's text around the rows (see PublishQuery): op, schema and
 * table; the statement's time (ms since 1970) and transaction id.
 */
static void
PublishEnvelope(TriggerData *trigdata, const char *op, PublishRows *rows)
{
	Relation	rel = trigdata->tg_relation;
	StringInfoData start;
	StringInfoData end;
	TimestampTz now = GetCurrentTimestamp();
	int64		ts_ms = now / 1000 + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY * 1000;

	initStringInfo(&start);
	appendStringInfo(&start, "{\"op\": \"%s\", \"schema\": ", asc_tolower(op, strlen(op)));
	escape_json(&start, get_namespace_name(RelationGetNamespace(rel)));
	appendStringInfoString(&start, ", \"table\": ");
	escape_json(&start, RelationGetRelationName(rel));
	appendStringInfoString(&start, TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ?
						   ", \"before\": null, \"after\": " : ", \"before\": ");
	initStringInfo(&end);
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		appendStringInfoString(&end, ", \"after\": null");
	appendStringInfo(&end, ", \"ts_ms\": " INT64_FORMAT ", \"txid\": " UINT64_FORMAT "}",
					 ts_ms, U64FromFullTransactionId(GetTopFullTransactionId()));
	rows->start = start.data;
	rows->mid = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? ", \"after\": " : "";
	rows->end = end.data;
}

/*
 * The key's columns into rows, as PublishKeyExpression names them: the
 * key column, else the primary key's, else none.
 */
static void
PublishKeyColumns(Relation rel, const char *key_column, PublishRows *rows)
{
	List	   *index_oids;
	ListCell   *lc;

	rows->nkeys = 0;
	rows->key_column = key_column != NULL;
	if (key_column != NULL)
	{
		rows->keys[rows->nkeys++] = get_attnum(RelationGetRelid(rel), key_column);
		return;
	}
	index_oids = RelationGetIndexList(rel);
	foreach(lc, index_oids)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);
		int			k;

		if (index->rd_index->indisprimary)
			for (k = 0; k < index->rd_index->indnkeyatts && k < KAFKA_WAL_MAX_KEYS; k++)
				rows->keys[rows->nkeys++] = index->rd_index->indkey.values[k];
		index_close(index, AccessShareLock);
	}
	list_free(index_oids);
}

/*
 * The writer must have EXECUTE on kafka_send_many's jsonb form: the
 * trigger sends as it would.
 */
static void
PublishCheckRight(void)
{
	static const Oid types[1] = {BOOLOID};

	SpiCheckResult(SPI_execute("SELECT pg_catalog.has_function_privilege("
							   "'infra.kafka_send_many(pg_catalog.text, pg_catalog.jsonb[], pg_catalog.text[], pg_catalog.jsonb)',"
							   " 'EXECUTE')", true, 1),
				   SPI_OK_SELECT, "the right to send", 1, types);
	if (!DatumGetBool(SpiGetValue(0, 1, false, NULL, "the right to send")))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function kafka_send_many"),
				 errdetail("infra.kafka_publish_statement() sends as infra.kafka_send_many would."),
				 errhint("GRANT EXECUTE ON FUNCTION infra.kafka_send_many(text, jsonb[], text[], jsonb) to the roles writing the table.")));
}

/*
 * Send one fetched chunk of (envelope, key) rows.
 */
static void
PublishChunk(text *topic)
{
	uint64		n = SPI_processed;
	bytea	  **values = palloc(sizeof(bytea *) * (n + 1));
	text	  **keys = palloc(sizeof(text *) * (n + 1));
	uint64		i;

	for (i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		key = SpiGetValue(i, 2, true, &isnull, "a transition table");

		values[i] = (bytea *) DatumGetTextPP(SpiGetValue(i, 1, false, NULL, "a transition table"));
		keys[i] = isnull ? NULL : DatumGetTextPP(key);
	}
	(void) KafkaSendMany(topic, NULL, (int) n, values, keys);
	pfree(values);
	pfree(keys);
}

/*
 * infra.kafka_publish_statement('topic' [, 'key_column']): an AFTER INSERT,
 * UPDATE or DELETE ... FOR EACH STATEMENT trigger with the statement's
 * transition tables.
 */
Datum
infra_kafka_publish_statement(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Trigger    *trigger;
	const char *op;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		args[3];
	char		nulls[3] = {' ', ' ', ' '};
	static const Oid types[2] = {TEXTOID, TEXTOID};
	Portal		portal;
	text	   *topic;
	PublishRows rows;
	char	   *query;
	Oid			block_sequence;

	INFRA_CHECK_SCHEMA();
	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event) ||
		TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("infra.kafka_publish_statement() must be an AFTER INSERT, UPDATE or DELETE ... FOR EACH STATEMENT trigger"),
				 errhint("CREATE TRIGGER ... AFTER UPDATE ON t REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('topic').")));
	trigger = trigdata->tg_trigger;
	if (trigger->tgnargs < 1 || trigger->tgnargs > 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("infra.kafka_publish_statement() takes the topic and, optionally, the key column"),
				 errhint("EXECUTE FUNCTION infra.kafka_publish_statement('topic', 'key_column').")));
	op = TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ? "INSERT" :
		TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? "UPDATE" : "DELETE";
	topic = cstring_to_text(trigger->tgargs[0]);

	SPI_connect();
	PublishCheckRight();
	if (SPI_register_trigger_data(trigdata) != SPI_OK_TD_REGISTER)
		elog(ERROR, "could not register the transition tables");
	memset(&rows, 0, sizeof(rows));
	PublishEnvelope(trigdata, op, &rows);
	query = PublishQuery(trigdata, op, trigger->tgnargs > 1 ? trigger->tgargs[1] : NULL);

	/* The WAL outbox: the rows as they are, rendered by the worker. */
	block_sequence = KafkaWalDirect();
	if (OidIsValid(block_sequence))
	{
		rows.topic = topic;
		rows.headers = KafkaCheckedHeaders(topic);
		rows.old_rows = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ||
			TRIGGER_FIRED_BY_DELETE(trigdata->tg_event);
		rows.new_rows = !TRIGGER_FIRED_BY_DELETE(trigdata->tg_event);
		PublishKeyColumns(trigdata->tg_relation, trigger->tgnargs > 1 ? trigger->tgargs[1] : NULL, &rows);
		(void) KafkaWalPublishRows(trigdata, &rows, block_sequence);
		SPI_finish();
		return PointerGetDatum(NULL);
	}
	args[0] = CStringGetTextDatum(rows.start);
	args[1] = CStringGetTextDatum(", \"after\": ");
	nulls[1] = TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event) ? ' ' : 'n';
	args[2] = CStringGetTextDatum(rows.end);
	portal = SPI_cursor_open_with_args(NULL, query, 3, argtypes, args, nulls, true, 0);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, PUBLISH_FETCH);
		SpiCheckResult(SPI_OK_FETCH, SPI_OK_FETCH, "a transition table", 2, types);
		if (SPI_processed == 0)
			break;
		PublishChunk(topic);
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	SPI_finish();
	return PointerGetDatum(NULL);
}
