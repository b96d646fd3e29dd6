/*
 * infra--1.1--1.2.sql: ALTER EXTENSION infra UPDATE from 1.1 to 1.2.
 *
 * 1.2 closes the holes of the second security round: metric queries run in
 * a worker of their own and only as a role their author may SET ROLE to;
 * named shared state (limiters, breakers, rate-limit keys) has owners;
 * configuration changes to the rows CREATE EXTENSION makes survive pg_dump.
 * Tables keep their rows.  After this script a database is what CREATE
 * EXTENSION infra VERSION '1.2' makes (the upgrade test compares the two).
 */

\echo Use "ALTER EXTENSION infra UPDATE TO '1.2'" to load this file. \quit

/* The metric-query worker of each database, apart from delivery. */
CREATE FUNCTION infra.metric_query_workers(
    OUT pid integer,
    OUT database text,
    OUT state text,
    OUT started_at timestamptz,
    OUT last_reload timestamptz,
    OUT last_error text,
    OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_metric_query_workers'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

CREATE VIEW infra.metric_query_workers AS
    SELECT * FROM infra.metric_query_workers();

COMMENT ON VIEW infra.metric_query_workers IS
'One row per database in infra.database: the worker running its infra.metric_queries, in a session apart from delivery.';

REVOKE ALL ON FUNCTION infra.metric_query_workers() FROM PUBLIC;
REVOKE ALL ON infra.metric_query_workers FROM PUBLIC;
GRANT SELECT ON infra.metric_query_workers TO pg_monitor;
GRANT EXECUTE ON FUNCTION infra.metric_query_workers() TO pg_monitor;

/*
 * The author trigger checks, as the row is written, that its writer may
 * SET ROLE to run_as (the SET option on 16+), as each run does again.
 */
DROP TRIGGER metric_queries_author ON infra.metric_queries;
DROP FUNCTION infra.metric_queries_author();
CREATE FUNCTION infra.metric_queries_author()
RETURNS trigger
AS 'MODULE_PATHNAME', 'infra_metric_queries_author'
LANGUAGE C;
CREATE TRIGGER metric_queries_author
    BEFORE INSERT OR UPDATE ON infra.metric_queries
    FOR EACH ROW EXECUTE FUNCTION infra.metric_queries_author();
REVOKE ALL ON FUNCTION infra.metric_queries_author() FROM PUBLIC;

COMMENT ON TABLE infra.metric_queries IS
'Queries whose results infra serves on /metrics: value columns (gauges, counters) become <name>_<column>, labels their labels; run by the metric-query worker every interval, read-only, with timeout, as run_as (a role the row''s author may SET ROLE to; a superuser only with allow_superuser and a superuser author). Off until enabled. Status: infra.metric_query_status.';

COMMENT ON COLUMN infra.metric_queries.author IS
'The role that last wrote the row (set by a trigger; a superuser''s write keeps it): run_as must be a role it may SET ROLE to.';

/* ---------------------------------------------------------------------------
 * Configuration rows (src/core/configrows.c): rate limiters and circuit breakers
 * belong to the role that wrote them (owner) and are used by others when
 * granted (acl, USAGE, through infra.grant_use); rows CREATE EXTENSION makes
 * are presets, and pg_dump keeps those changed, and rows users added.
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.config_rows()
RETURNS trigger
AS 'MODULE_PATHNAME', 'infra_config_rows'
LANGUAGE C;

CREATE TABLE infra.removed_presets (
    table_name text NOT NULL
        CHECK (table_name IN ('rate_limiters', 'circuit_breakers', 'retry_policies', 'metric_queries')),
    name text NOT NULL,
    removed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, name)
);

COMMENT ON TABLE infra.removed_presets IS
'Presets (rows CREATE EXTENSION makes) that were deleted, so that pg_dump and pg_restore keep them deleted. Written by infra.config_rows().';

CREATE FUNCTION infra.removed_presets_apply()
RETURNS trigger
AS 'MODULE_PATHNAME', 'infra_removed_presets_apply'
LANGUAGE C;

CREATE TRIGGER removed_presets_apply
    AFTER INSERT ON infra.removed_presets
    FOR EACH ROW EXECUTE FUNCTION infra.removed_presets_apply();

SELECT pg_catalog.pg_extension_config_dump('infra.removed_presets', '');

/* acl with grantee's USAGE set (usage) or taken away; NULL when empty. */
CREATE FUNCTION infra.acl_with(acl aclitem[], owner regrole, grantee oid, usage boolean)
RETURNS aclitem[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT NULLIF(ARRAY(SELECT a FROM unnest(coalesce($1, '{}'::aclitem[])) AS a
                         WHERE NOT EXISTS (SELECT FROM aclexplode(ARRAY[a]) AS x WHERE x.grantee = $3))
                  || CASE WHEN $4 THEN ARRAY[makeaclitem($3, $2::oid, 'USAGE', false)]
                          ELSE '{}'::aclitem[] END,
                  '{}'::aclitem[])
$$;

CREATE FUNCTION infra.rate_limit_share(key text, public boolean)
RETURNS boolean
AS 'MODULE_PATHNAME', 'infra_rate_limit_share'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.rate_limit_share(text, boolean) IS
'Move the caller''s own rate-limit key into the public scope (true), or a public key it made public back (false); what infra.grant_use(''rate_limit_key'', key, ''public'') calls.';

CREATE FUNCTION infra.grant_use(kind text, name text, grantee text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM infra.use_change(kind, name, grantee, true);
END
$$;

COMMENT ON FUNCTION infra.grant_use(text, text, text) IS
'Let grantee (a role, or public) use a rate_limiter or circuit_breaker you own, or make your rate_limit_key public.';

CREATE FUNCTION infra.revoke_use(kind text, name text, grantee text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM infra.use_change(kind, name, grantee, false);
END
$$;

COMMENT ON FUNCTION infra.revoke_use(text, text, text) IS
'Take back what infra.grant_use gave.';

CREATE FUNCTION infra.use_change(kind text, name text, grantee text, usage boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    who oid;
    n bigint;
BEGIN
    IF kind IS NULL OR name IS NULL OR grantee IS NULL THEN
        RAISE EXCEPTION 'kind, name and grantee must not be NULL'
            USING ERRCODE = '22004', HINT = 'Give a kind (rate_limiter, circuit_breaker, rate_limit_key), a name and a role or public.';
    END IF;
    who := CASE WHEN lower(grantee) = 'public' THEN 0 ELSE grantee::regrole::oid END;
    IF kind = 'rate_limit_key' THEN
        IF who <> 0 THEN
            RAISE EXCEPTION 'a rate-limit key can be made public, not given to one role'
                USING ERRCODE = '0A000',
                      HINT = 'Configure a named limiter in infra.rate_limiters and grant its use: infra.grant_use(''rate_limiter'', name, role).';
        END IF;
        IF NOT infra.rate_limit_share(name, usage) THEN
            RAISE EXCEPTION 'you have no % rate-limit key "%"', CASE WHEN usage THEN 'private' ELSE 'public' END, name
                USING ERRCODE = '42704', HINT = 'A key exists once infra.rate_limit(key, ...) used it; only the role that made a key public can take it back.';
        END IF;
        RETURN;
    ELSIF kind = 'rate_limiter' THEN
        UPDATE infra.rate_limiters r SET acl = infra.acl_with(r.acl, r.owner, who, usage)
         WHERE r.name = use_change.name;
    ELSIF kind = 'circuit_breaker' THEN
        UPDATE infra.circuit_breakers b SET acl = infra.acl_with(b.acl, b.owner, who, usage)
         WHERE b.name = use_change.name;
    ELSE
        RAISE EXCEPTION 'unknown kind "%"', kind
            USING ERRCODE = '22023', HINT = 'Use rate_limiter, circuit_breaker or rate_limit_key.';
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RAISE EXCEPTION '% "%" does not exist', replace(kind, '_', ' '), name
            USING ERRCODE = '42704', HINT = 'Named limiters and breakers are rows of infra.rate_limiters and infra.circuit_breakers.';
    END IF;
END
$$;

REVOKE ALL ON infra.removed_presets FROM PUBLIC;
GRANT SELECT ON infra.removed_presets TO PUBLIC;
REVOKE ALL ON FUNCTION infra.config_rows(), infra.removed_presets_apply() FROM PUBLIC;

/*
 * Owners for the limiters and breakers there are.  1.1 let every role use
 * every row: the rows keep that (USAGE granted to PUBLIC), owned by the role
 * running the update, except infra's own kafka breaker, now nobody's to
 * use but superusers'.  Revoke what should be private with
 * infra.revoke_use.
 */
/*
 * Columns are added without a default, filled, then given it: a default
 * given with ADD COLUMN would stay in the catalog as a missing value, which
 * a fresh install does not have.
 */
ALTER TABLE infra.rate_limiters
    ADD COLUMN owner regrole,
    ADD COLUMN acl aclitem[],
    ADD COLUMN preset boolean,
    ADD COLUMN changed boolean;
UPDATE infra.rate_limiters
   SET owner = CURRENT_USER::text::regrole, preset = false, changed = true,
       acl = infra.acl_with(NULL, CURRENT_USER::text::regrole, 0, true);
ALTER TABLE infra.rate_limiters
    ALTER COLUMN owner SET DEFAULT (CURRENT_USER::text::regrole), ALTER COLUMN owner SET NOT NULL,
    ALTER COLUMN preset SET DEFAULT false, ALTER COLUMN preset SET NOT NULL,
    ALTER COLUMN changed SET DEFAULT true, ALTER COLUMN changed SET NOT NULL;
UPDATE infra.rate_limiters r
   SET preset = true,
       changed = (r.rate, r.per, r.burst, r.description) IS DISTINCT FROM (p.rate, p.per, p.burst, p.description)
  FROM (VALUES ('database', 1000, interval '1 second', 100, 'Queries sent to a database on behalf of a service'),
               ('api', 100, interval '1 second', 20, 'Calls to an external API'))
       AS p(name, rate, per, burst, description)
 WHERE r.name = p.name;
COMMENT ON TABLE infra.rate_limiters IS
'Named rate limiters for infra.rate_limit(name, cost); burst NULL means equal to rate. A row belongs to owner; others use it when granted (infra.grant_use). Changes apply at once.';
CREATE TRIGGER rate_limiters_rows
    BEFORE INSERT OR UPDATE OR DELETE ON infra.rate_limiters
    FOR EACH ROW EXECUTE FUNCTION infra.config_rows('owned');
SELECT pg_catalog.pg_extension_config_dump('infra.rate_limiters', 'WHERE NOT preset OR changed');

ALTER TABLE infra.circuit_breakers
    ADD COLUMN owner regrole,
    ADD COLUMN acl aclitem[],
    ADD COLUMN preset boolean,
    ADD COLUMN changed boolean;
UPDATE infra.circuit_breakers
   SET owner = CURRENT_USER::text::regrole, preset = false, changed = true,
       acl = CASE WHEN name <> 'kafka' THEN infra.acl_with(NULL, CURRENT_USER::text::regrole, 0, true) END;
ALTER TABLE infra.circuit_breakers
    ALTER COLUMN owner SET DEFAULT (CURRENT_USER::text::regrole), ALTER COLUMN owner SET NOT NULL,
    ALTER COLUMN preset SET DEFAULT false, ALTER COLUMN preset SET NOT NULL,
    ALTER COLUMN changed SET DEFAULT true, ALTER COLUMN changed SET NOT NULL;
UPDATE infra.circuit_breakers b
   SET preset = true,
       changed = (b.window_kind, b.window_size, b.minimum_calls, b.failure_rate_threshold,
                  b.slow_call_duration, b.slow_call_rate_threshold, b.open_duration,
                  b.half_open_permitted_calls, b.half_open_max_wait, b.failure_sqlstates,
                  b.ignored_sqlstates)
                 IS DISTINCT FROM
                 (p.window_kind, p.window_size, p.minimum_calls, p.failure_rate_threshold,
                  p.slow_call_duration, p.slow_call_rate_threshold, p.open_duration,
                  p.half_open_permitted_calls, interval '0', p.failure_sqlstates, '{}'::text[])
  FROM (VALUES ('database', 'count', 100, 20, 50::float8, interval '2 seconds', 80::float8, interval '30 seconds', 5,
                '{08%,53%,57P01,57P02,57P03,58%,40001,40P01,55P03,57014}'::text[]),
               ('kafka', 'time', 60, 10, 50, interval '5 seconds', 80, interval '60 seconds', 3, '{}'),
               ('network', 'count', 50, 10, 50, interval '5 seconds', 80, interval '30 seconds', 3, '{}'),
               ('vault', 'count', 20, 5, 50, interval '3 seconds', 80, interval '60 seconds', 2, '{}'))
       AS p(name, window_kind, window_size, minimum_calls, failure_rate_threshold, slow_call_duration,
            slow_call_rate_threshold, open_duration, half_open_permitted_calls, failure_sqlstates)
 WHERE b.name = p.name;
/* The trace exporter's breaker, apart from everyone's "network". */
INSERT INTO infra.circuit_breakers
    (name, window_kind, window_size, minimum_calls, failure_rate_threshold,
     slow_call_duration, slow_call_rate_threshold, open_duration,
     half_open_permitted_calls, failure_sqlstates, ignored_sqlstates, description,
     acl, preset, changed)
VALUES
    ('otlp', 'count', 50, 10, 50, '5 seconds', 80, '30 seconds', 3,
     '{}', '{}', 'Trace exports of the infra trace exporter to the collector', NULL, true, false)
ON CONFLICT (name) DO NOTHING;
COMMENT ON TABLE infra.circuit_breakers IS
'Circuit breakers: window_size counts calls (count) or seconds (time); thresholds are percentages; failure_sqlstates empty means every error fails; ignored_sqlstates count neither way. A row belongs to owner; others use it when granted (infra.grant_use). Changes apply at commit.';
CREATE TRIGGER circuit_breakers_rows
    BEFORE INSERT OR UPDATE OR DELETE ON infra.circuit_breakers
    FOR EACH ROW EXECUTE FUNCTION infra.config_rows('owned');
SELECT pg_catalog.pg_extension_config_dump('infra.circuit_breakers', 'WHERE NOT preset OR changed');

/* A breaker's live state is its owner's: the view joins on both. */
DROP VIEW infra.kafka_stats;
DROP FUNCTION infra.kafka_stats();
DROP VIEW infra.circuit_breaker_state;
DROP FUNCTION infra.circuit_breaker_states();
CREATE FUNCTION infra.circuit_breaker_states(
    OUT name text,
    OUT state text,
    OUT since timestamptz,
    OUT calls integer,
    OUT failures integer,
    OUT slow_calls integer,
    OUT failure_rate double precision,
    OUT slow_call_rate double precision,
    OUT next_probe_at timestamptz,
    OUT half_open_permits_in_use integer,
    OUT rejected_total bigint,
    OUT calls_total bigint,
    OUT owner regrole)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_breaker_states'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

CREATE VIEW infra.circuit_breaker_state AS
    SELECT c.name,
           coalesce(s.state, 'closed') AS state,
           s.since,
           coalesce(s.calls, 0) AS calls,
           coalesce(s.failures, 0) AS failures,
           coalesce(s.slow_calls, 0) AS slow_calls,
           s.failure_rate,
           s.slow_call_rate,
           s.next_probe_at,
           coalesce(s.half_open_permits_in_use, 0) AS half_open_permits_in_use,
           coalesce(s.rejected_total, 0) AS rejected_total,
           coalesce(s.calls_total, 0) AS calls_total,
           c.owner
      FROM infra.circuit_breakers c
      LEFT JOIN infra.circuit_breaker_states() s USING (name, owner);

COMMENT ON VIEW infra.circuit_breaker_state IS
'Every configured breaker with its live, cluster-wide state; calls, failures and rates are those of the sliding window.';
REVOKE ALL ON FUNCTION infra.circuit_breaker_states() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infra.circuit_breaker_states() TO pg_monitor;
GRANT SELECT ON infra.circuit_breaker_state TO pg_monitor;

/* Exactly once's transactions, fencing and progress. */
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
    OUT waiting_for text,
    OUT transactions_committed_total bigint,
    OUT transactions_aborted_total bigint,
    OUT fenced_total bigint,
    OUT progress_lsn pg_lsn,
    OUT transaction_open_for interval)
RETURNS record
AS 'MODULE_PATHNAME', 'infra_kafka_stats'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION infra.kafka_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infra.kafka_stats() TO pg_monitor;

CREATE VIEW infra.kafka_stats AS
    SELECT s.*, b.state AS breaker_state
      FROM infra.kafka_stats() s
      LEFT JOIN infra.circuit_breaker_state b ON b.name = 'kafka';

COMMENT ON VIEW infra.kafka_stats IS
'The outbox backlog and the producer''s counters, last error and broker state; produce latency from librdkafka statistics (queueing plus broker round trip, last 5 s with traffic); waiting_for: why the outbox waits (standbys behind infra.kafka_wait_for_standbys), NULL when it does not; with infra.kafka_delivery = exactly_once, the Kafka transactions committed and aborted, times the producer was fenced, the WAL position Kafka holds by the committed progress, and how long the oldest open transaction has been open (it holds back every read_committed consumer).';
REVOKE ALL ON infra.kafka_stats FROM PUBLIC;
GRANT SELECT ON infra.kafka_stats TO pg_monitor;

/* A rate-limit key's owner, and whether it is public. */
DROP VIEW infra.rate_limits;
DROP FUNCTION infra.rate_limits();
CREATE FUNCTION infra.rate_limits(
    OUT kind text,
    OUT key text,
    OUT rate integer,
    OUT per interval,
    OUT burst integer,
    OUT remaining integer,
    OUT allowed_total bigint,
    OUT denied_total bigint,
    OUT last_used timestamptz,
    OUT owner regrole,
    OUT public boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_rate_limits'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

CREATE VIEW infra.rate_limits AS
    SELECT * FROM infra.rate_limits();

COMMENT ON VIEW infra.rate_limits IS
'Every rate-limit key in shared memory: its last parameters, what remains now, its counters, and its owner (a key is its role''s own unless public).';
REVOKE ALL ON FUNCTION infra.rate_limits() FROM PUBLIC;
REVOKE ALL ON infra.rate_limits FROM PUBLIC;
GRANT SELECT ON infra.rate_limits TO pg_monitor;
GRANT EXECUTE ON FUNCTION infra.rate_limits() TO pg_monitor;

/* Presets of the retry policies and metric queries, for pg_dump. */
ALTER TABLE infra.retry_policies
    ADD COLUMN preset boolean,
    ADD COLUMN changed boolean;
UPDATE infra.retry_policies SET preset = false, changed = true;
ALTER TABLE infra.retry_policies
    ALTER COLUMN preset SET DEFAULT false, ALTER COLUMN preset SET NOT NULL,
    ALTER COLUMN changed SET DEFAULT true, ALTER COLUMN changed SET NOT NULL;
UPDATE infra.retry_policies r
   SET preset = true,
       changed = (r.max_attempts, r.base, r.cap, r.strategy, r.sqlstates, r.description)
                 IS DISTINCT FROM (p.max_attempts, p.base, p.cap, p.strategy, p.sqlstates, p.description)
  FROM (VALUES ('database', 5, interval '50 milliseconds', interval '2 seconds', 'full_jitter',
                '{40001,40P01,55P03,08%,57P01,53300}'::text[],
                'Serialization failures, deadlocks, lock timeouts, lost connections'),
               ('network', 5, interval '200 milliseconds', interval '10 seconds', 'full_jitter',
                '{08%,57014,58%}', 'Network calls: connection errors and timeouts'),
               ('kafka', 8, interval '100 milliseconds', interval '5 seconds', 'decorrelated',
                '{08%,57014,53%}', 'Kafka produce and admin calls'),
               ('vault', 3, interval '500 milliseconds', interval '5 seconds', 'equal_jitter',
                '{08%,57014}', 'Calls to a secrets store'))
       AS p(name, max_attempts, base, cap, strategy, sqlstates, description)
 WHERE r.name = p.name;
CREATE TRIGGER retry_policies_rows
    BEFORE INSERT OR UPDATE OR DELETE ON infra.retry_policies
    FOR EACH ROW EXECUTE FUNCTION infra.config_rows();
SELECT pg_catalog.pg_extension_config_dump('infra.retry_policies', 'WHERE NOT preset OR changed');

ALTER TABLE infra.metric_queries
    ADD COLUMN preset boolean,
    ADD COLUMN changed boolean;
UPDATE infra.metric_queries SET preset = false, changed = true;
ALTER TABLE infra.metric_queries
    ALTER COLUMN preset SET DEFAULT false, ALTER COLUMN preset SET NOT NULL,
    ALTER COLUMN changed SET DEFAULT true, ALTER COLUMN changed SET NOT NULL;
UPDATE infra.metric_queries m
   SET preset = true,
       changed = m.enabled OR m."interval" <> '30 seconds' OR m.timeout <> '2 seconds'
                 OR m.run_as <> 'pg_monitor' OR m.allow_superuser OR md5(m.query) <> p.query_md5
  FROM (VALUES ('pg_database', '75bbd649284939c0743d2dd65a622660'),
               ('pg_stat_database', '4a1067b1d84210ce4fbbe5f33167fbcc'),
               ('pg_replication', 'a6fb5b2f607c32cc951a3b51d9164dd4'),
               ('pg_stat_replication', 'ebba35bae55a5e3ab5254fb6aa5a1112'),
               ('pg_locks', '93ce3bf5625fcb9b282a3be0146b9c45'),
               ('pg_stat_activity', 'be232ed13eebfcd6aa37da780e860244'),
               ('pg_stat_user_tables', '960b5c2bb29ac39472f5db16065d72a6'))
       AS p(name, query_md5)
 WHERE m.name = p.name;
CREATE TRIGGER metric_queries_rows
    BEFORE INSERT OR UPDATE OR DELETE ON infra.metric_queries
    FOR EACH ROW EXECUTE FUNCTION infra.config_rows();
SELECT pg_catalog.pg_extension_config_dump('infra.metric_queries', 'WHERE NOT preset OR changed');

/* ---------------------------------------------------------------------------
 * Set-based publishing (src/kafka/publish.c): many messages in one call, and
 * the statement-level twin of kafka_publish() over transition tables.
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.kafka_send_many(
    topic text,
    vals jsonb[],
    keys text[] DEFAULT NULL,
    headers jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_kafka_send_many'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION infra.kafka_send_many(
    topic text,
    vals text[],
    keys text[] DEFAULT NULL,
    headers jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_kafka_send_many'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION infra.kafka_send_many(
    topic text,
    vals bytea[],
    keys text[] DEFAULT NULL,
    headers jsonb DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_kafka_send_many'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.kafka_send_many(text, jsonb[], text[], jsonb) IS
'Send each value of vals with the key at the same place of keys (NULL: none), in order, as that many kafka_send calls would; sent if and only if the transaction commits. Returns how many.';

CREATE FUNCTION infra.kafka_publish_statement()
RETURNS trigger
AS 'MODULE_PATHNAME', 'infra_kafka_publish_statement'
LANGUAGE C;

COMMENT ON FUNCTION infra.kafka_publish_statement() IS
'Statement trigger with transition tables: send kafka_publish()''s envelope {op, schema, table, before, after, ts_ms, txid} for every row the statement changed, to the topic given as first argument, keyed by the column given as second argument or the primary key.';

REVOKE ALL ON FUNCTION infra.kafka_send_many(text, jsonb[], text[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.kafka_send_many(text, text[], text[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.kafka_send_many(text, bytea[], text[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.kafka_publish_statement() FROM PUBLIC;

/*
 * Ids of the WAL outbox (infra.kafka_outbox = wal): each backend takes a
 * block of 1024 from one value of this sequence, ids from 2^51 up, above
 * any id of infra.kafka_outbox_id_seq.  Order among them means nothing:
 * the WAL outbox is read in commit order.
 */
CREATE SEQUENCE infra.kafka_outbox_block_seq MINVALUE 2199023255552 START 2199023255552 CACHE 1;
REVOKE ALL ON SEQUENCE infra.kafka_outbox_block_seq FROM PUBLIC;

/*
 * The WAL outbox's secret: kafka_send marks its logical messages with an
 * HMAC of its transaction's xid under it, and the worker sends only
 * messages so marked (anyone may write a logical message with any prefix).
 * Readable by the extension's owner only.
 */
CREATE TABLE infra.kafka_wal_secret (
    secret bytea NOT NULL CHECK (length(secret) = 32)
);
INSERT INTO infra.kafka_wal_secret
    VALUES (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));
REVOKE ALL ON infra.kafka_wal_secret FROM PUBLIC;
COMMENT ON TABLE infra.kafka_wal_secret IS
'The key that marks the WAL outbox''s logical messages as written by kafka_send (244 random bits); readable by the extension''s owner only.';

/*
 * Transactional HTTP (src/http/): http_send writes a transaction's requests
 * as rows of arrays at commit, the infra http worker sends them with libcurl
 * and keeps what must be tried again, and what failed for good.
 */
CREATE TABLE infra.http_endpoints (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,57}$'),
    url text NOT NULL CHECK (url ~* '^https?://[^/?#]+'),
    secrets text[] CHECK (cardinality(secrets) BETWEEN 1 AND 8),
    headers jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    timeout_ms integer NOT NULL DEFAULT 30000 CHECK (timeout_ms BETWEEN 1 AND 600000),
    connect_timeout_ms integer NOT NULL DEFAULT 5000 CHECK (connect_timeout_ms BETWEEN 1 AND 600000),
    low_speed_seconds integer NOT NULL DEFAULT 10 CHECK (low_speed_seconds BETWEEN 1 AND 3600),
    retry_schedule interval[] NOT NULL
        DEFAULT '{5 seconds,30 seconds,2 minutes,10 minutes,30 minutes,1 hour,2 hours,4 hours,8 hours,8 hours}'
        CHECK (cardinality(retry_schedule) <= 100),
    rate_per_second double precision CHECK (rate_per_second > 0),
    concurrency integer NOT NULL DEFAULT 16 CHECK (concurrency BETWEEN 1 AND 1000),
    max_response_bytes integer NOT NULL DEFAULT 65536 CHECK (max_response_bytes BETWEEN 0 AND 104857600),
    disable_after interval NOT NULL DEFAULT '5 days' CHECK (disable_after > '0'),
    breaker_failure_rate double precision NOT NULL DEFAULT 50
        CHECK (breaker_failure_rate > 0 AND breaker_failure_rate <= 100),
    breaker_open_duration interval NOT NULL DEFAULT '30 seconds' CHECK (breaker_open_duration > '0'),
    allow text[],
    enabled boolean NOT NULL DEFAULT true,
    disabled_reason text,
    failing_since timestamptz
);

COMMENT ON TABLE infra.http_endpoints IS
'Named HTTP destinations for infra.http_send(endpoint => ...): base URL, Standard Webhooks signing secrets (whsec_..., several during a rotation; nobody but the extension''s owner may read them), timeouts, retry schedule, rate, concurrency, its breaker''s failure rate and open duration, addresses it may reach beyond infra.http_allow (allow: set by superusers only), and whether the worker disabled it (410, or failing for disable_after).';

SELECT pg_catalog.pg_extension_config_dump('infra.http_endpoints', '');

CREATE SEQUENCE infra.http_request_id_seq;

CREATE TABLE infra.http_outbox_batches (
    first_id bigint PRIMARY KEY,
    requests integer NOT NULL CHECK (requests > 0),
    ids bigint[] NOT NULL,
    endpoints text[] NOT NULL,
    urls text[] NOT NULL,
    methods text[] NOT NULL,
    headers jsonb[] NOT NULL,
    bodies bytea[] NOT NULL,
    timeline integer NOT NULL CHECK (timeline > 0),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CHECK (cardinality(ids) = requests)
);

ALTER TABLE infra.http_outbox_batches
    ALTER ids SET STORAGE EXTERNAL,
    ALTER urls SET STORAGE EXTERNAL,
    ALTER headers SET STORAGE EXTERNAL,
    ALTER bodies SET STORAGE EXTERNAL;

COMMENT ON TABLE infra.http_outbox_batches IS
'HTTP requests of committed transactions not yet tried, a transaction''s requests per row; read infra.http_requests instead.';

CREATE TABLE infra.http_retries (
    id bigint PRIMARY KEY,
    timeline integer NOT NULL,
    endpoint text,
    url text,
    method text NOT NULL,
    headers jsonb,
    body bytea,
    created_at timestamptz NOT NULL,
    attempts integer NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    last_status integer,
    last_error text,
    outcomes jsonb NOT NULL DEFAULT '[]'
);

CREATE INDEX http_retries_due ON infra.http_retries (next_attempt_at);

COMMENT ON TABLE infra.http_retries IS
'HTTP requests that failed and wait for their next attempt (or for their endpoint), with every attempt''s outcome.';

CREATE TABLE infra.http_dead_letters (
    id bigint PRIMARY KEY,
    timeline integer NOT NULL,
    endpoint text,
    url text,
    method text NOT NULL,
    headers jsonb,
    body bytea,
    created_at timestamptz NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts integer NOT NULL,
    last_status integer,
    error text NOT NULL,
    outcomes jsonb NOT NULL
);

COMMENT ON TABLE infra.http_dead_letters IS
'HTTP requests that failed for good (retry schedule spent, a refused address, a disabled endpoint), with every attempt''s outcome; send again with infra.http_retry_dead_letters().';

CREATE FUNCTION infra.http_send(
    url text,
    body text,
    method text DEFAULT 'POST',
    headers jsonb DEFAULT NULL,
    endpoint text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_http_send_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION infra.http_send(
    url text,
    body bytea,
    method text DEFAULT 'POST',
    headers jsonb DEFAULT NULL,
    endpoint text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_http_send_bytea'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION infra.http_send(
    url text,
    body jsonb,
    method text DEFAULT 'POST',
    headers jsonb DEFAULT NULL,
    endpoint text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_http_send_jsonb'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.http_send(text, text, text, jsonb, text) IS
'Send an HTTP request once the calling transaction commits (never if it rolls back): to url, or to the named endpoint (url NULL, or a path appended to its URL); returns the request''s id.';

CREATE FUNCTION infra.http_wake_worker()
RETURNS void
AS 'MODULE_PATHNAME', 'infra_http_wake_worker'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.http_wake_worker() IS
'Wake this database''s infra http worker when the calling transaction commits (after a change of infra.http_endpoints or the retries).';

CREATE FUNCTION infra.http_endpoints_check()
RETURNS trigger
AS 'MODULE_PATHNAME', 'infra_http_endpoints_check'
LANGUAGE C;

CREATE TRIGGER http_endpoints_check
    BEFORE INSERT OR UPDATE ON infra.http_endpoints
    FOR EACH ROW EXECUTE FUNCTION infra.http_endpoints_check();

/*
 * Each endpoint has its own circuit breaker and, with a rate, its own rate
 * limiter: rows "http:<name>" of infra.circuit_breakers and
 * infra.rate_limiters (shown by circuit_breaker_state and rate_limits),
 * made, kept in step with rate_per_second and removed with the endpoint.
 * They belong to the extension's owner; the worker asks them before each
 * request and tells the breaker each outcome.
 */
CREATE FUNCTION infra.http_endpoints_resilience()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    limit_rate integer;
    limit_per interval;
BEGIN
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.name <> NEW.name) THEN
        DELETE FROM infra.circuit_breakers WHERE name = 'http:' || OLD.name;
        DELETE FROM infra.rate_limiters WHERE name = 'http:' || OLD.name;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN NULL;
    END IF;
    INSERT INTO infra.circuit_breakers
        (name, window_kind, window_size, minimum_calls, failure_rate_threshold, open_duration, description)
        VALUES ('http:' || NEW.name, 'count', 20, 10, NEW.breaker_failure_rate, NEW.breaker_open_duration,
                'the breaker of HTTP endpoint ' || NEW.name || ' (infra.http_endpoints)')
        ON CONFLICT (name) DO UPDATE
            SET failure_rate_threshold = excluded.failure_rate_threshold,
                open_duration = excluded.open_duration;
    IF NEW.rate_per_second IS NULL THEN
        DELETE FROM infra.rate_limiters WHERE name = 'http:' || NEW.name;
        RETURN NULL;
    END IF;
    IF NEW.rate_per_second >= 1 THEN
        limit_rate := round(NEW.rate_per_second);
        limit_per := '1 second';
    ELSE
        limit_rate := 1;
        limit_per := make_interval(secs => 1 / NEW.rate_per_second);
    END IF;
    INSERT INTO infra.rate_limiters (name, rate, per, burst, description)
        VALUES ('http:' || NEW.name, limit_rate, limit_per, limit_rate,
                'the rate of HTTP endpoint ' || NEW.name || ' (infra.http_endpoints.rate_per_second)')
        ON CONFLICT (name) DO UPDATE
            SET rate = excluded.rate, per = excluded.per, burst = excluded.burst;
    RETURN NULL;
END
$$;

CREATE TRIGGER http_endpoints_resilience
    AFTER INSERT OR UPDATE OR DELETE ON infra.http_endpoints
    FOR EACH ROW EXECUTE FUNCTION infra.http_endpoints_resilience();

CREATE FUNCTION infra.http_endpoints_changed()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM infra.http_wake_worker();
    RETURN NULL;
END
$$;

CREATE TRIGGER http_endpoints_changed
    AFTER INSERT OR UPDATE OR DELETE ON infra.http_endpoints
    FOR EACH STATEMENT EXECUTE FUNCTION infra.http_endpoints_changed();

CREATE FUNCTION infra.http_retry_dead_letters(endpoint text DEFAULT NULL, ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    moved bigint;
BEGIN
    WITH gone AS (
        DELETE FROM infra.http_dead_letters d
         WHERE (http_retry_dead_letters.endpoint IS NULL
                OR d.endpoint = http_retry_dead_letters.endpoint)
           AND (http_retry_dead_letters.ids IS NULL
                OR d.id = ANY (http_retry_dead_letters.ids))
        RETURNING d.*)
    INSERT INTO infra.http_retries
        (id, timeline, endpoint, url, method, headers, body, created_at, attempts,
         next_attempt_at, last_status, last_error, outcomes)
    SELECT g.id, g.timeline, g.endpoint, g.url, g.method, g.headers, g.body, g.created_at, 0,
           clock_timestamp(), g.last_status, g.error, g.outcomes
      FROM gone g;
    GET DIAGNOSTICS moved = ROW_COUNT;
    PERFORM infra.http_wake_worker();
    RETURN moved;
END
$$;

COMMENT ON FUNCTION infra.http_retry_dead_letters(text, bigint[]) IS
'Send dead letters again (of one endpoint, or with these ids, or all), with a fresh retry schedule and the same webhook-id; returns how many.';

CREATE FUNCTION infra.http_enable_endpoint(name text)
RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE infra.http_endpoints e
       SET enabled = true, disabled_reason = NULL, failing_since = NULL
     WHERE e.name = http_enable_endpoint.name
    RETURNING true;
$$;

COMMENT ON FUNCTION infra.http_enable_endpoint(text) IS
'Enable an endpoint the worker disabled (410 Gone, or failing for its disable_after); its waiting requests go out again.';

CREATE FUNCTION infra.http_recent(
    OUT id bigint, OUT endpoint text, OUT url text, OUT method text, OUT created_at timestamptz,
    OUT attempts integer, OUT last_status integer, OUT last_attempt_ms integer,
    OUT finished_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_http_recent'
LANGUAGE C VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION infra.http_recent() IS
'The last requests of this database the http worker delivered (a ring in shared memory of 4,096 for the server, latest first; emptied by a restart).';

CREATE VIEW infra.http_requests AS
    SELECT r.id, 'queued'::text AS state, r.endpoint, r.url, r.method,
           b.created_at, 0 AS attempts, NULL::timestamptz AS next_attempt_at,
           NULL::integer AS last_status, NULL::text AS last_error,
           NULL::integer AS last_attempt_ms, NULL::timestamptz AS finished_at
      FROM infra.http_outbox_batches b,
           unnest(b.ids, b.endpoints, b.urls, b.methods) AS r(id, endpoint, url, method)
     WHERE NOT EXISTS (SELECT FROM infra.http_retries t WHERE t.id = r.id)
       AND NOT EXISTS (SELECT FROM infra.http_dead_letters d WHERE d.id = r.id)
    UNION ALL
    SELECT id, 'retrying', endpoint, url, method, created_at, attempts, next_attempt_at,
           last_status, last_error, (outcomes -> -1 ->> 'ms')::integer, NULL
      FROM infra.http_retries
    UNION ALL
    SELECT id, 'dead', endpoint, url, method, created_at, attempts, NULL, last_status, error,
           (outcomes -> -1 ->> 'ms')::integer, failed_at
      FROM infra.http_dead_letters
    UNION ALL
    SELECT id, 'delivered', endpoint, url, method, created_at, attempts, NULL, last_status, NULL,
           last_attempt_ms, finished_at
      FROM infra.http_recent();

COMMENT ON VIEW infra.http_requests IS
'HTTP requests, one row each: queued (committed, not tried yet), retrying (failed, waiting for next_attempt_at), dead (failed for good), delivered (the last 4,096 the server delivered, from memory); last_attempt_ms is the last attempt''s duration.';

/*
 * The row trigger that sends each change to an endpoint, as a Standard
 * Webhooks payload {type, timestamp, data}: type "schema.table.op", data
 * {op, schema, table, before, after, txid}.  Its arguments: the endpoint,
 * and optionally a path appended to the endpoint's URL.  Runs as the
 * writer, who needs EXECUTE on the jsonb infra.http_send.
 */
CREATE FUNCTION infra.http_publish()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    endpoint_name text := TG_ARGV[0];
    path text := TG_ARGV[1];
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'infra.http_publish() must be an AFTER ... FOR EACH ROW trigger'
            USING ERRCODE = '39P01',
                  HINT = 'CREATE TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION infra.http_publish(''endpoint'').';
    END IF;
    IF endpoint_name IS NULL THEN
        RAISE EXCEPTION 'infra.http_publish() needs an endpoint of infra.http_endpoints as its first argument'
            USING ERRCODE = '22023',
                  HINT = 'EXECUTE FUNCTION infra.http_publish(''endpoint'', ''/path'').';
    END IF;
    PERFORM infra.http_send(path,
        jsonb_build_object(
            'type', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME || '.' || lower(TG_OP),
            'timestamp', to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
            'data', jsonb_build_object(
                'op', lower(TG_OP),
                'schema', TG_TABLE_SCHEMA,
                'table', TG_TABLE_NAME,
                'before', CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
                'after', CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END,
                'txid', pg_current_xact_id()::text::bigint)),
        endpoint => endpoint_name);
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION infra.http_publish() IS
'Row trigger: send each change to the endpoint given as first argument (a path as second), as {type: "schema.table.op", timestamp, data: {op, schema, table, before, after, txid}}; sent if and only if the transaction commits.';

REVOKE ALL ON infra.http_endpoints FROM PUBLIC;
GRANT SELECT (name, url, headers, timeout_ms, connect_timeout_ms, low_speed_seconds, retry_schedule,
              rate_per_second, concurrency, max_response_bytes, disable_after, breaker_failure_rate,
              breaker_open_duration, allow, enabled, disabled_reason, failing_since)
    ON infra.http_endpoints TO PUBLIC;
REVOKE ALL ON SEQUENCE infra.http_request_id_seq FROM PUBLIC;
REVOKE ALL ON infra.http_outbox_batches FROM PUBLIC;
REVOKE ALL ON infra.http_retries FROM PUBLIC;
REVOKE ALL ON infra.http_dead_letters FROM PUBLIC;
REVOKE ALL ON infra.http_requests FROM PUBLIC;
GRANT SELECT ON infra.http_requests TO pg_monitor;
REVOKE ALL ON FUNCTION infra.http_recent() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infra.http_recent() TO pg_monitor;
REVOKE ALL ON FUNCTION infra.http_send(text, text, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.http_send(text, bytea, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.http_send(text, jsonb, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.http_wake_worker() FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.http_endpoints_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.http_endpoints_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.http_endpoints_resilience() FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.http_retry_dead_letters(text, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.http_enable_endpoint(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.http_publish() FROM PUBLIC;

/* ---------------------------------------------------------------------------
 * infra-bridge: replay from SQL and each partition's position.
 * bridge_seek moves a group's stored offsets in the caller's transaction and
 * tells the running bridges (NOTIFY infra_bridge_seek, sent at commit); a
 * batch in flight meanwhile fails its compare-and-set and is read again from
 * the new position.  A seek by time waits in seek_to_time until a bridge
 * that owns the partition resolves it with Kafka's offsets for times.
 * ------------------------------------------------------------------------- */

ALTER TABLE infra.bridge_offsets
    ADD COLUMN seek_to_time timestamptz,
    ADD COLUMN end_offset bigint,
    ADD COLUMN end_seen_at timestamptz,
    ADD COLUMN oldest_unwritten_at timestamptz;

COMMENT ON COLUMN infra.bridge_offsets.seek_to_time IS
'A seek by time (infra.bridge_seek) not yet resolved: the bridge owning the partition resumes at the first message at or after it.';
COMMENT ON COLUMN infra.bridge_offsets.end_offset IS
'The partition''s end (high watermark) as the bridge last saw it, reported every few seconds.';
COMMENT ON COLUMN infra.bridge_offsets.end_seen_at IS
'When the bridge last reported end_offset.';
COMMENT ON COLUMN infra.bridge_offsets.oldest_unwritten_at IS
'Kafka timestamp of the oldest message not yet written when the bridge last reported (NULL: caught up, or not known).';

CREATE FUNCTION infra.bridge_seek(consumer_group text, topic text, partition integer, to_offset bigint)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    moved integer;
BEGIN
    IF consumer_group IS NULL OR topic IS NULL OR to_offset IS NULL THEN
        RAISE EXCEPTION 'consumer_group, topic and to_offset must not be null'
            USING ERRCODE = '22004', HINT = 'Pass partition => NULL to move every partition of the topic.';
    END IF;
    IF to_offset < 0 THEN
        RAISE EXCEPTION 'offset % is negative', to_offset
            USING ERRCODE = '22023', HINT = 'Kafka offsets start at 0; to replay from a point in time pass a timestamptz.';
    END IF;
    IF partition IS NOT NULL AND partition < 0 THEN
        RAISE EXCEPTION 'partition % is negative', partition
            USING ERRCODE = '22023', HINT = 'Pass partition => NULL to move every partition of the topic.';
    END IF;
    IF partition IS NULL THEN
        UPDATE infra.bridge_offsets o
        SET next_offset = to_offset, seek_to_time = NULL, updated_at = now()
        WHERE o.consumer_group = bridge_seek.consumer_group AND o.topic = bridge_seek.topic;
    ELSE
        INSERT INTO infra.bridge_offsets AS o (consumer_group, topic, partition, next_offset)
        VALUES (bridge_seek.consumer_group, bridge_seek.topic, bridge_seek.partition, to_offset)
        ON CONFLICT ON CONSTRAINT bridge_offsets_pkey
        DO UPDATE SET next_offset = EXCLUDED.next_offset, seek_to_time = NULL, updated_at = now();
    END IF;
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved = 0 THEN
        RAISE EXCEPTION 'consumer group "%" has no stored offset for topic "%"', consumer_group, topic
            USING ERRCODE = '42704',
                  HINT = 'infra.bridge_positions lists what each group has stored; name a partition to seek one the group has not written yet.';
    END IF;
    PERFORM pg_notify('infra_bridge_seek', consumer_group);
    RETURN moved;
END
$$;

COMMENT ON FUNCTION infra.bridge_seek(text, text, integer, bigint) IS
'Move a consumer group''s next offset for one partition of a topic (partition => NULL: every partition it has stored) to to_offset; running bridges of the group re-read from there at their next batch. Commits with the caller''s transaction. Returns the partitions moved.';

CREATE FUNCTION infra.bridge_seek(consumer_group text, topic text, partition integer, to_time timestamptz)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    moved integer;
BEGIN
    IF consumer_group IS NULL OR topic IS NULL OR to_time IS NULL THEN
        RAISE EXCEPTION 'consumer_group, topic and to_time must not be null'
            USING ERRCODE = '22004', HINT = 'Pass partition => NULL to move every partition of the topic.';
    END IF;
    IF partition IS NOT NULL AND partition < 0 THEN
        RAISE EXCEPTION 'partition % is negative', partition
            USING ERRCODE = '22023', HINT = 'Pass partition => NULL to move every partition of the topic.';
    END IF;
    IF to_time IN ('infinity', '-infinity') THEN
        RAISE EXCEPTION 'to_time must be a point in time, not %', to_time
            USING ERRCODE = '22008', HINT = 'Kafka looks up offsets by a message timestamp.';
    END IF;
    UPDATE infra.bridge_offsets o
    SET seek_to_time = to_time, updated_at = now()
    WHERE o.consumer_group = bridge_seek.consumer_group AND o.topic = bridge_seek.topic
      AND (bridge_seek.partition IS NULL OR o.partition = bridge_seek.partition);
    GET DIAGNOSTICS moved = ROW_COUNT;
    IF moved = 0 THEN
        RAISE EXCEPTION 'consumer group "%" has no stored offset for topic "%"%', consumer_group, topic,
            CASE WHEN partition IS NULL THEN '' ELSE format(' partition %s', partition) END
            USING ERRCODE = '42704',
                  HINT = 'A seek by time moves partitions the group has written; seek one it has not by offset.';
    END IF;
    PERFORM pg_notify('infra_bridge_seek', consumer_group);
    RETURN moved;
END
$$;

COMMENT ON FUNCTION infra.bridge_seek(text, text, integer, timestamptz) IS
'Move a consumer group''s position for one partition of a topic (partition => NULL: every partition it has stored) to the first message at or after to_time (Kafka timestamps; past the newest: the end); the bridge owning each partition resolves it at its next batch. Commits with the caller''s transaction. Returns the partitions moved.';

CREATE VIEW infra.bridge_positions AS
SELECT o.consumer_group, o.topic, o.partition, o.next_offset, o.end_offset,
       CASE WHEN o.end_offset IS NULL THEN NULL ELSE greatest(o.end_offset - o.next_offset, 0) END AS lag,
       CASE WHEN o.end_offset IS NULL THEN NULL
            WHEN o.end_offset <= o.next_offset THEN 0::double precision
            WHEN o.oldest_unwritten_at IS NULL THEN NULL
            ELSE greatest(extract(epoch FROM now() - o.oldest_unwritten_at)::double precision, 0) END AS lag_seconds,
       o.seek_to_time AS seek_pending,
       o.updated_at, o.end_seen_at
FROM infra.bridge_offsets o;

COMMENT ON VIEW infra.bridge_positions IS
'Each consumer group''s position per partition: the next offset to write, the end the bridge last reported (end_seen_at), the lag in messages and in seconds (age of the oldest message not yet written, 0 when caught up), and a seek by time not yet resolved.';

REVOKE ALL ON FUNCTION infra.bridge_seek(text, text, integer, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.bridge_seek(text, text, integer, timestamptz) FROM PUBLIC;
REVOKE ALL ON infra.bridge_positions FROM PUBLIC;
GRANT SELECT ON infra.bridge_positions TO pg_monitor;

/* ---------------------------------------------------------------------------
 * infra-bridge handlers: a route may hand its messages to a function or
 * procedure taking infra.bridge_message[], run in the batch's transaction.
 * ------------------------------------------------------------------------- */

CREATE TYPE infra.bridge_message AS (
    topic text,
    partition integer,
    "offset" bigint,
    key bytea,
    value bytea,
    headers jsonb,
    "timestamp" timestamptz
);

COMMENT ON TYPE infra.bridge_message IS
'One Kafka message as infra-bridge hands it to a route''s handler: value NULL for a tombstone, headers a JSON object of strings (a value that is not UTF-8 as \x hex; the last of a repeated name wins), NULL when it has none.';

CREATE FUNCTION infra.bridge_batch(route integer, first_seq integer, last_seq integer, dedupe_route text)
RETURNS infra.bridge_message[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass('pg_temp.infra_bridge_stage') IS NULL THEN
        RAISE EXCEPTION 'no infra-bridge batch in this session'
            USING ERRCODE = '55000', HINT = 'infra-bridge calls this for a route''s handler; it is of no use elsewhere.';
    END IF;
    RETURN ARRAY(
        SELECT ROW(s.topic, s.part, s.off, s.key, s.val, s.headers, s.ts)::infra.bridge_message
        FROM (SELECT st.*, row_number() OVER (PARTITION BY st.msg_id ORDER BY st.seq) AS nth
              FROM pg_temp.infra_bridge_stage st WHERE st.route = bridge_batch.route) s
        WHERE s.seq BETWEEN first_seq AND last_seq
          AND (dedupe_route IS NULL OR s.msg_id IS NULL
               OR (s.nth = 1 AND NOT EXISTS (SELECT 1 FROM infra.bridge_message_ids m
                                             WHERE m.route = dedupe_route AND m.msg_id = s.msg_id)))
        ORDER BY s.seq);
END
$$;

COMMENT ON FUNCTION infra.bridge_batch(integer, integer, integer, text) IS
'infra-bridge''s own: the messages of a range of its batch, in offset order (with dedupe_route, those not written before), for a route''s handler.';

/* -------------------------------------------------------------------------
 * infra-bridge's format = debezium: helpers of the statements it makes.
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.debezium_decimal(unscaled bytea, scale integer)
RETURNS numeric
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT round((sum(get_byte(unscaled, i)::numeric * 256::numeric ^ (length(unscaled) - 1 - i))
                  - CASE WHEN get_byte(unscaled, 0) >= 128 THEN 256::numeric ^ length(unscaled) ELSE 0 END)
                 * 10::numeric ^ (-scale), greatest(scale, 0))
    FROM generate_series(0, length(unscaled) - 1) AS i
$$;

COMMENT ON FUNCTION infra.debezium_decimal(bytea, integer) IS
'The number of a Kafka Connect Decimal: its unscaled value (big-endian two''s complement bytes, as Debezium''s decimal.handling.mode = precise sends it) and its scale.';

CREATE FUNCTION infra.bridge_refuse(message text, hint text)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '%', message USING ERRCODE = '22023', HINT = hint;
END
$$;

COMMENT ON FUNCTION infra.bridge_refuse(text, text) IS
'infra-bridge''s own: raises invalid_parameter_value with the message and hint given, for a message its route cannot apply (it becomes a dead letter).';
