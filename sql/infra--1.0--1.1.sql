/*
 * infra--1.0--1.1.sql: ALTER EXTENSION infra UPDATE from 1.0 to 1.1.
 *
 * 1.1 closes the privilege holes found in 1.0 and adds what the first hour
 * of use asked for.  Tables keep their rows: nothing here rewrites or
 * recreates a table.  After this script a database is what CREATE EXTENSION
 * infra VERSION '1.1' makes (the upgrade test compares the two).
 */

\echo Use "ALTER EXTENSION infra UPDATE TO '1.1'" to load this file. \quit

/* Monitoring roles read the shared-memory and breaker views; PUBLIC not. */
REVOKE ALL ON FUNCTION infra.shmem_segments() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infra.shmem_segments() TO pg_monitor;
GRANT SELECT ON infra.shmem_segments TO pg_monitor;
REVOKE ALL ON FUNCTION infra.circuit_breaker_states(), infra.circuit_breaker_events() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infra.circuit_breaker_states(), infra.circuit_breaker_events() TO pg_monitor;
GRANT SELECT ON infra.circuit_breaker_state, infra.circuit_breaker_events TO pg_monitor;

/*
 * The outbox view shows keys and values as text (they were bytea).  A view
 * cannot change a column's type in place: it is made again, with its
 * grants and comment; nothing else depends on it.
 */
CREATE FUNCTION infra.kafka_payload_text(bytes bytea)
RETURNS text
AS 'MODULE_PATHNAME', 'infra_kafka_payload_text'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION infra.kafka_payload_text(bytea) IS
'A message key or value as text: itself when it is valid UTF-8 (in a UTF-8 database, or ASCII), else bytea''s text form.';

DROP VIEW infra.kafka_outbox;
CREATE VIEW infra.kafka_outbox AS
    SELECT m.id, m.topic, m.partition,
           infra.kafka_payload_text(m.key) AS key,
           infra.kafka_payload_text(m.value) AS value,
           m.headers, b.created_at, b.attempts, b.last_error, b.last_attempt_at
      FROM infra.kafka_outbox_batches b,
           unnest(b.ids, b.topics, b.partitions, b.keys, b.vals, b.headers)
               AS m(id, topic, partition, key, value, headers);

COMMENT ON VIEW infra.kafka_outbox IS
'Messages sent by committed transactions and not yet acknowledged by Kafka, one row each, key and value as text (bytea''s text form when not valid UTF-8); the infra worker removes each once Kafka has it.';

REVOKE ALL ON infra.kafka_outbox FROM PUBLIC;
/* Payloads are data: monitoring roles may look, applications may not. */
GRANT SELECT ON infra.kafka_outbox TO pg_monitor;

/*
 * kafka_send runs as its caller (it was SECURITY DEFINER, which let a
 * caller's search_path reach code running as the extension's owner); the
 * library switches to the outbox's owner for its own two statements.
 */
ALTER FUNCTION infra.kafka_send(text, text, text, jsonb, integer) SECURITY INVOKER;
ALTER FUNCTION infra.kafka_send(text, bytea, text, jsonb, integer) SECURITY INVOKER;
ALTER FUNCTION infra.kafka_send(text, jsonb, text, jsonb, integer) SECURITY INVOKER;

/* These two read the outbox for callers who may not: definer, fixed path. */
ALTER FUNCTION infra.kafka_flush(interval)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.kafka_stats()
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/* SQL and PL/pgSQL functions resolve names in pg_catalog only. */
ALTER FUNCTION infra.kafka_publish() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.topic_validate(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.topic_name(text, text, integer, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.topic_parse(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.topic_register(text, text, integer, integer, integer, jsonb, text, text)
    SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.topic_exists(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.topic_drop(text) SET search_path = pg_catalog, pg_temp;

/* infra.query_metrics() masks other users' query text itself now. */
CREATE OR REPLACE VIEW infra.query_metrics AS
    SELECT m.queryid, r.rolname AS username, d.datname AS database,
           m.calls, m.errors, m.rows, m.total_ms, m.min_ms, m.max_ms, m.mean_ms,
           m.ewma_ms, m.p50_ms, m.p95_ms, m.p99_ms,
           m.query
      FROM infra.query_metrics() m
      LEFT JOIN pg_catalog.pg_roles r ON r.oid = m.userid
      LEFT JOIN pg_catalog.pg_database d ON d.oid = m.dbid;
