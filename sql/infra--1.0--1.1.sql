/*
 * infra--1.0--1.1.sql: ALTER EXTENSION infra UPDATE from 1.0 to 1.1.
 *
 * 1.1 closes the privilege holes found in 1.0 and adds what the first hour
 * of use asked for.  Tables keep their rows: nothing here rewrites or
 * recreates a table.  After this script a database is what CREATE EXTENSION
 * infra VERSION '1.1' makes (the upgrade test compares the two).
 */

\echo Use "ALTER EXTENSION infra UPDATE TO '1.1'" to load this file. \quit

/*
 * Message ids carry the timeline they were allocated on: after a failover
 * that lost WAL, the new primary's sequence may hand out ids the old one
 * used.  Rows already waiting keep the 1.0 form (NULL timeline), so that a
 * deduplicating consumer still recognises a message sent again.
 */
ALTER TABLE infra.kafka_outbox_batches
    ADD COLUMN timeline integer CHECK (timeline > 0);
COMMENT ON COLUMN infra.kafka_outbox_batches.timeline IS
'The WAL timeline the row''s ids were allocated on, part of each message''s infra-msg-id (ids stay unique across failovers); NULL for rows written before 1.1.';

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

/* It reads the outbox for callers who may not: definer, fixed path (as
 * kafka_stats, made again below). */
ALTER FUNCTION infra.kafka_flush(interval)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

/* SQL and PL/pgSQL functions resolve names in pg_catalog only. */
ALTER FUNCTION infra.kafka_publish() SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.topic_validate(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.topic_name(text, text, integer, text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.topic_parse(text) SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION infra.topic_exists(text) SET search_path = pg_catalog, pg_temp;

/* infra.query_metrics() masks other users' query text itself now. */
CREATE OR REPLACE VIEW infra.query_metrics AS
    SELECT m.queryid, r.rolname AS username, d.datname AS database,
           m.calls, m.errors, m.rows, m.total_ms, m.min_ms, m.max_ms, m.mean_ms,
           m.ewma_ms, m.p50_ms, m.p95_ms, m.p99_ms,
           m.query
      FROM infra.query_metrics() m
      LEFT JOIN pg_catalog.pg_roles r ON r.oid = m.userid
      LEFT JOIN pg_catalog.pg_database d ON d.oid = m.dbid;

/*
 * On a standby, registering or dropping a topic is refused up front
 * (25006, with a hint) by infra.kafka_wake_worker(), now called first.
 */
CREATE OR REPLACE FUNCTION infra.topic_register(domain text, entity text, version integer DEFAULT 1,
    partitions integer DEFAULT 1, replication_factor integer DEFAULT 1,
    config jsonb DEFAULT '{}', description text DEFAULT NULL, env text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    topic text := infra.topic_name(domain, entity, version, env);
    p record := infra.topic_parse(topic);
BEGIN
    /* First: on a standby it refuses (25006) with what to do. */
    PERFORM infra.kafka_wake_worker();
    IF partitions IS NULL OR partitions NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION 'partitions must be between 1 and 10000, not %', coalesce(partitions::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'Partitions are the unit of parallelism of consumers.';
    END IF;
    IF replication_factor IS NULL OR replication_factor NOT BETWEEN 1 AND 32 THEN
        RAISE EXCEPTION 'replication_factor must be between 1 and 32, not %', coalesce(replication_factor::text, 'NULL')
            USING ERRCODE = '22023', HINT = 'Use at most the number of brokers.';
    END IF;
    INSERT INTO infra.topics (name, env, domain, entity, version, partitions,
                              replication_factor, config, description)
    VALUES (topic, p.env, p.domain, p.entity, p.version, partitions,
            replication_factor, coalesce(config, '{}'), description);
    RETURN topic;
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'topic "%" is already registered', topic
        USING ERRCODE = '42710', HINT = 'Register a new version, or infra.topic_drop() it first.';
END
$$;

CREATE OR REPLACE FUNCTION infra.topic_drop(name text)
RETURNS boolean
LANGUAGE sql STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT infra.kafka_wake_worker();  -- on a standby it refuses (25006)
      WITH d AS (DELETE FROM infra.topics t WHERE t.name = topic_drop.name RETURNING 1)
      SELECT EXISTS (SELECT FROM d) $$;

/*
 * kafka_stats says why the outbox waits (waiting_for): a new column of the
 * function, so the function and its view are made again, with their grants.
 */
DROP VIEW infra.kafka_stats;
DROP FUNCTION infra.kafka_stats();
CREATE FUNCTION infra.kafka_stats(
    OUT pending bigint,
    OUT in_flight bigint,
    OUT delivered_total bigint,
    OUT failed_attempts_total bigint,
    OUT oldest_pending_age interval,
    OUT last_error text,
    OUT last_error_at timestamptz,
    OUT last_delivery_at timestamptz,
    OUT broker_state text,
    OUT last_batch_ms double precision,
    OUT batches_total bigint,
    OUT dead_lettered_total bigint,
    OUT produce_latency_avg_ms double precision,
    OUT produce_latency_p99_ms double precision,
    OUT waiting_for text)
RETURNS record
AS 'MODULE_PATHNAME', 'infra_kafka_stats'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

CREATE VIEW infra.kafka_stats AS
    SELECT s.*, b.state AS breaker_state
      FROM infra.kafka_stats() s
      LEFT JOIN infra.circuit_breaker_state b ON b.name = 'kafka';

COMMENT ON VIEW infra.kafka_stats IS
'The outbox backlog and the producer''s counters, last error and broker state; produce latency from librdkafka statistics (queueing plus broker round trip, last 5 s with traffic); waiting_for: why the outbox waits (standbys behind infra.kafka_wait_for_standbys), NULL when it does not.';

GRANT SELECT ON infra.kafka_stats TO pg_monitor;
REVOKE ALL ON FUNCTION infra.kafka_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infra.kafka_stats() TO pg_monitor;
REVOKE ALL ON infra.kafka_stats FROM PUBLIC;

/*
 * Metrics from SQL: each row a query the infra worker of this database runs
 * every "interval" in a read-only transaction with a statement timeout, as
 * the role run_as names (see docs/metrics.md); every value column (gauges,
 * counters) becomes <name>_<column> on /metrics, the label columns its
 * labels.  The rows below come with the extension, disabled: they serve
 * what postgres_exporter's default collectors do, under its metric names.
 */
CREATE TABLE infra.metric_queries (
    name text PRIMARY KEY
        CHECK (name ~ '^[a-zA-Z_:][a-zA-Z0-9_:]*$' AND length(name) < 48 AND name !~ '^infra_'),
    query text NOT NULL,
    "interval" interval NOT NULL DEFAULT '30 seconds'
        CHECK ("interval" >= '1 second' AND "interval" <= '1 day'),
    timeout interval NOT NULL DEFAULT '2 seconds'
        CHECK (timeout >= '1 millisecond' AND timeout <= "interval"),
    labels text[] NOT NULL DEFAULT '{}',
    gauges text[] NOT NULL DEFAULT '{}',
    counters text[] NOT NULL DEFAULT '{}',
    help text,
    run_as name NOT NULL DEFAULT 'pg_monitor',
    allow_superuser boolean NOT NULL DEFAULT false,
    enabled boolean NOT NULL DEFAULT false,
    author name NOT NULL DEFAULT CURRENT_USER,
    CHECK (cardinality(gauges) + cardinality(counters) > 0)
);

COMMENT ON TABLE infra.metric_queries IS
'Queries whose results infra serves on /metrics: value columns (gauges, counters) become <name>_<column>, labels their labels; run by the infra worker every interval, read-only, with timeout, as run_as (a role the row''s author is a member of; a superuser only with allow_superuser and a superuser author). Off until enabled. Status: infra.metric_query_status.';

COMMENT ON COLUMN infra.metric_queries.author IS
'The role that last wrote the row (set by a trigger): run_as must be a role it is a member of.';

CREATE FUNCTION infra.metric_queries_author()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.author := current_user;
    RETURN NEW;
END
$$;

CREATE TRIGGER metric_queries_author
    BEFORE INSERT OR UPDATE ON infra.metric_queries
    FOR EACH ROW EXECUTE FUNCTION infra.metric_queries_author();

CREATE FUNCTION infra.metric_queries_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'infra_metric_queries_changed'
LANGUAGE C;

CREATE TRIGGER metric_queries_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON infra.metric_queries
    FOR EACH STATEMENT EXECUTE FUNCTION infra.metric_queries_changed();

INSERT INTO infra.metric_queries (name, labels, gauges, counters, help, query) VALUES
    ('pg_database', '{datname}', '{size_bytes}', '{}',
     'Disk space used by the database, in bytes.',
     $q$SELECT datname, pg_catalog.pg_database_size(oid) AS size_bytes
          FROM pg_catalog.pg_database WHERE datallowconn$q$),
    ('pg_stat_database', '{datname}', '{numbackends}',
     '{xact_commit,xact_rollback,blks_read,blks_hit,tup_returned,tup_fetched,tup_inserted,tup_updated,tup_deleted,conflicts,temp_files,temp_bytes,deadlocks,blk_read_time,blk_write_time}',
     'pg_stat_database, per database.',
     $q$SELECT datname, numbackends, xact_commit, xact_rollback, blks_read, blks_hit,
               tup_returned, tup_fetched, tup_inserted, tup_updated, tup_deleted,
               conflicts, temp_files, temp_bytes, deadlocks, blk_read_time, blk_write_time
          FROM pg_catalog.pg_stat_database WHERE datname IS NOT NULL$q$),
    ('pg_replication', '{}', '{lag_seconds,is_replica}', '{}',
     'Replay lag of this server if a standby (0 on a primary), and whether it is one.',
     $q$SELECT CASE WHEN NOT pg_catalog.pg_is_in_recovery()
                      OR pg_catalog.pg_last_wal_receive_lsn() = pg_catalog.pg_last_wal_replay_lsn() THEN 0
                    ELSE greatest(0, extract(epoch FROM pg_catalog.clock_timestamp()
                                                        - pg_catalog.pg_last_xact_replay_timestamp()))
               END::float8 AS lag_seconds,
               pg_catalog.pg_is_in_recovery()::integer AS is_replica$q$),
    ('pg_stat_replication', '{application_name,client_addr,state,pid}', '{pg_wal_lsn_diff,replay_lag_seconds}', '{}',
     'Each standby streaming from this server: bytes and seconds its replay is behind.',
     $q$SELECT application_name, coalesce(pg_catalog.host(client_addr), '') AS client_addr,
               state, pid,
               pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn)::float8 AS pg_wal_lsn_diff,
               extract(epoch FROM replay_lag)::float8 AS replay_lag_seconds
          FROM pg_catalog.pg_stat_replication$q$),
    ('pg_locks', '{datname,mode}', '{count}', '{}',
     'Locks held or awaited, per database and mode.',
     $q$SELECT d.datname, m.mode, pg_catalog.count(l.locktype) AS count
          FROM pg_catalog.pg_database d
         CROSS JOIN (VALUES ('accesssharelock'), ('rowsharelock'), ('rowexclusivelock'),
                            ('shareupdateexclusivelock'), ('sharelock'), ('sharerowexclusivelock'),
                            ('exclusivelock'), ('accessexclusivelock'), ('sireadlock')) AS m(mode)
          LEFT JOIN pg_catalog.pg_locks l ON l.database = d.oid AND pg_catalog.lower(l.mode) = m.mode
         WHERE d.datallowconn
         GROUP BY d.datname, m.mode$q$),
    ('pg_stat_activity', '{datname,state}', '{count,max_tx_duration}', '{}',
     'Sessions per database and state, and the age of the oldest transaction among them, in seconds.',
     $q$SELECT d.datname, s.state, pg_catalog.count(a.pid) AS count,
               coalesce(pg_catalog.max(extract(epoch FROM pg_catalog.clock_timestamp() - a.xact_start)), 0)::float8
                   AS max_tx_duration
          FROM pg_catalog.pg_database d
         CROSS JOIN (VALUES ('active'), ('idle'), ('idle in transaction'),
                            ('idle in transaction (aborted)'), ('fastpath function call'), ('disabled')) AS s(state)
          LEFT JOIN pg_catalog.pg_stat_activity a ON a.datname = d.datname AND a.state = s.state
         WHERE d.datallowconn
         GROUP BY d.datname, s.state$q$),
    ('pg_stat_user_tables', '{datname,schemaname,relname}', '{n_live_tup,n_dead_tup}',
     '{vacuum_count,autovacuum_count,analyze_count,autoanalyze_count}',
     'infra''s own tables: live and dead rows, vacuums and analyzes.',
     $q$SELECT pg_catalog.current_database() AS datname, schemaname, relname, n_live_tup, n_dead_tup,
               vacuum_count, autovacuum_count, analyze_count, autoanalyze_count
          FROM pg_catalog.pg_stat_user_tables WHERE schemaname = 'infra'$q$);

/* pg_dump keeps rows users add; the ones above come with CREATE EXTENSION. */
SELECT pg_catalog.pg_extension_config_dump('infra.metric_queries',
    $$WHERE name NOT IN ('pg_database', 'pg_stat_database', 'pg_replication', 'pg_stat_replication',
                         'pg_locks', 'pg_stat_activity', 'pg_stat_user_tables')$$);

CREATE FUNCTION infra.metric_query_status(
    OUT database text,
    OUT name text,
    OUT last_run_at timestamptz,
    OUT last_success_at timestamptz,
    OUT duration_ms double precision,
    OUT series bigint,
    OUT runs bigint,
    OUT failures bigint,
    OUT last_error text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_metric_query_status'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

CREATE VIEW infra.metric_query_status AS SELECT * FROM infra.metric_query_status();

COMMENT ON VIEW infra.metric_query_status IS
'Each enabled metric query of every database: its last run, success, duration, series served, runs, failures and last error (NULL after a success).';

REVOKE ALL ON infra.metric_queries FROM PUBLIC;
GRANT SELECT ON infra.metric_queries TO pg_monitor;
REVOKE ALL ON FUNCTION infra.metric_queries_author() FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.metric_queries_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.metric_query_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infra.metric_query_status() TO pg_monitor;
REVOKE ALL ON infra.metric_query_status FROM PUBLIC;
GRANT SELECT ON infra.metric_query_status TO pg_monitor;
