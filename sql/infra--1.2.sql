/* infra--1.2.sql: install script of the infra extension, version 1.2. */

\echo Use "CREATE EXTENSION infra" to load this file. \quit

/* Created here, not by infra.control, so that it belongs to the extension. */
CREATE SCHEMA infra;
COMMENT ON SCHEMA infra IS 'infra: in-database infrastructure';

CREATE FUNCTION infra.version()
RETURNS text
AS 'MODULE_PATHNAME', 'infra_version'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION infra.version() IS
'Version of the loaded infra library.';

CREATE FUNCTION infra.worker_status(
    OUT pid integer,
    OUT database text,
    OUT state text,
    OUT started_at timestamptz,
    OUT last_reload timestamptz,
    OUT last_error text,
    OUT last_error_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_worker_status'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

CREATE VIEW infra.worker_status AS
    SELECT * FROM infra.worker_status();

COMMENT ON VIEW infra.worker_status IS
'One row per database in infra.database: the infra worker serving it and what it is doing.';

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

CREATE FUNCTION infra.shmem_segments(
    OUT name text,
    OUT size bigint,
    OUT lwlocks integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_shmem_segments'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

CREATE VIEW infra.shmem_segments AS
    SELECT * FROM infra.shmem_segments();

COMMENT ON VIEW infra.shmem_segments IS
'Shared memory reserved by each infra module at server start.';

GRANT USAGE ON SCHEMA infra TO PUBLIC;

/* Status views expose pids and errors: readable by monitoring roles only. */
REVOKE ALL ON FUNCTION infra.worker_status() FROM PUBLIC;
REVOKE ALL ON infra.worker_status FROM PUBLIC;
GRANT SELECT ON infra.worker_status TO pg_monitor;
GRANT EXECUTE ON FUNCTION infra.worker_status() TO pg_monitor;
REVOKE ALL ON FUNCTION infra.metric_query_workers() FROM PUBLIC;
REVOKE ALL ON infra.metric_query_workers FROM PUBLIC;
GRANT SELECT ON infra.metric_query_workers TO pg_monitor;
GRANT EXECUTE ON FUNCTION infra.metric_query_workers() TO pg_monitor;
REVOKE ALL ON FUNCTION infra.shmem_segments() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infra.shmem_segments() TO pg_monitor;
GRANT SELECT ON infra.shmem_segments TO pg_monitor;

/*
 * Configuration tables carry this trigger: backends cache them and drop the
 * cache on the invalidation it sends, so changes apply at commit.
 */
CREATE FUNCTION infra.config_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'infra_config_changed'
LANGUAGE C;

/* ---------------------------------------------------------------------------
 * Rate limiting (src/resilience/ratelimit.c): GCRA, exact, shared by the whole cluster.
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.rate_limit(
    key text,
    rate integer,
    per interval DEFAULT '1 second',
    burst integer DEFAULT NULL,
    cost integer DEFAULT 1)
RETURNS boolean
AS 'MODULE_PATHNAME', 'infra_rate_limit'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION infra.rate_limit(text, integer, interval, integer, integer) IS
'Consume cost from the limit of key (rate per period, burst NULL = rate) if allowed; true when allowed.';

CREATE FUNCTION infra.throttle(
    key text,
    rate integer,
    per interval DEFAULT '1 second',
    burst integer DEFAULT NULL,
    cost integer DEFAULT 1,
    OUT allowed boolean,
    OUT "limit" integer,
    OUT remaining integer,
    OUT retry_after interval,
    OUT reset_after interval)
RETURNS record
AS 'MODULE_PATHNAME', 'infra_throttle'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION infra.throttle(text, integer, interval, integer, integer) IS
'Like rate_limit, with limit, remaining, retry_after and reset_after for 429 responses and RateLimit headers; cost 0 looks without consuming.';

CREATE FUNCTION infra.rate_limit_wait(
    key text,
    rate integer,
    per interval DEFAULT '1 second',
    burst integer DEFAULT NULL,
    cost integer DEFAULT 1,
    timeout interval DEFAULT '5 seconds')
RETURNS boolean
AS 'MODULE_PATHNAME', 'infra_rate_limit_wait'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION infra.rate_limit_wait(text, integer, interval, integer, integer, interval) IS
'Wait (interruptibly) until the request is allowed and consume it; false, without waiting in vain, when timeout cannot be met.';

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

REVOKE ALL ON FUNCTION infra.config_rows() FROM PUBLIC;

CREATE TABLE infra.rate_limiters (
    name text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 63),
    rate integer NOT NULL CHECK (rate > 0),
    per interval NOT NULL DEFAULT '1 second'
        CHECK (per > '0'::interval AND date_part('month', per) = 0 AND date_part('year', per) = 0),
    burst integer CHECK (burst > 0),
    description text,
    owner regrole NOT NULL DEFAULT (CURRENT_USER::text::regrole),
    acl aclitem[],
    preset boolean NOT NULL DEFAULT false,
    changed boolean NOT NULL DEFAULT true
);

COMMENT ON TABLE infra.rate_limiters IS
'Named rate limiters for infra.rate_limit(name, cost); burst NULL means equal to rate. A row belongs to owner; others use it when granted (infra.grant_use). Changes apply at once.';

CREATE TRIGGER rate_limiters_rows
    BEFORE INSERT OR UPDATE OR DELETE ON infra.rate_limiters
    FOR EACH ROW EXECUTE FUNCTION infra.config_rows('owned');

/* The presets, for everyone's use. */
INSERT INTO infra.rate_limiters (name, rate, per, burst, description, acl, preset, changed) VALUES
    ('database', 1000, '1 second', 100, 'Queries sent to a database on behalf of a service',
     infra.acl_with(NULL, CURRENT_USER::text::regrole, 0, true), true, false),
    ('api', 100, '1 second', 20, 'Calls to an external API',
     infra.acl_with(NULL, CURRENT_USER::text::regrole, 0, true), true, false);

CREATE TRIGGER rate_limiters_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON infra.rate_limiters
    FOR EACH STATEMENT EXECUTE FUNCTION infra.config_changed();

/* pg_dump keeps rows users added and presets they changed. */
SELECT pg_catalog.pg_extension_config_dump('infra.rate_limiters', 'WHERE NOT preset OR changed');

CREATE FUNCTION infra.rate_limit(name text, cost integer DEFAULT 1)
RETURNS boolean
AS 'MODULE_PATHNAME', 'infra_rate_limit_named'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION infra.rate_limit(text, integer) IS
'Consume cost from the named limiter of infra.rate_limiters if allowed. With two arguments, name one: rate_limit(''api'', cost => 2).';

CREATE FUNCTION infra.rate_limit_reset(key text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_rate_limit_reset'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION infra.rate_limit_reset(text) IS
'Forget the state of key (and of the named limiter of that name), or of every key when NULL; returns how many were forgotten.';

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

/* Applications limit; owners configure and reset; monitoring roles look. */
REVOKE ALL ON infra.rate_limiters FROM PUBLIC;
GRANT SELECT ON infra.rate_limiters TO PUBLIC;
REVOKE ALL ON FUNCTION infra.rate_limit_reset(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.rate_limits() FROM PUBLIC;
REVOKE ALL ON infra.rate_limits FROM PUBLIC;
GRANT SELECT ON infra.rate_limits TO pg_monitor;
GRANT EXECUTE ON FUNCTION infra.rate_limits() TO pg_monitor;

/* ---------------------------------------------------------------------------
 * SQLSTATE patterns ('40001', '08%') used by breakers and retry policies.
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.sqlstate_patterns_valid(patterns text[])
RETURNS boolean
AS 'MODULE_PATHNAME', 'infra_sqlstate_patterns_valid'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION infra.sqlstate_patterns_valid(text[]) IS
'True when every element is a SQLSTATE (''40001'') or a class pattern (''08%''); raises a clear error otherwise.';

/* ---------------------------------------------------------------------------
 * Circuit breakers (src/resilience/breaker.c): configured here, live state shared.
 * ------------------------------------------------------------------------- */

CREATE TABLE infra.circuit_breakers (
    name text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 63),
    window_kind text NOT NULL DEFAULT 'count' CHECK (window_kind IN ('count', 'time')),
    window_size integer NOT NULL DEFAULT 100 CHECK (window_size BETWEEN 1 AND 1000),
    minimum_calls integer NOT NULL DEFAULT 10 CHECK (minimum_calls >= 1),
    failure_rate_threshold double precision NOT NULL DEFAULT 50
        CHECK (failure_rate_threshold > 0 AND failure_rate_threshold <= 100),
    slow_call_duration interval NOT NULL DEFAULT '5 seconds'
        CHECK (slow_call_duration > '0' AND date_part('month', slow_call_duration) = 0
               AND date_part('year', slow_call_duration) = 0),
    slow_call_rate_threshold double precision NOT NULL DEFAULT 100
        CHECK (slow_call_rate_threshold > 0 AND slow_call_rate_threshold <= 100),
    open_duration interval NOT NULL DEFAULT '30 seconds'
        CHECK (open_duration > '0' AND date_part('month', open_duration) = 0
               AND date_part('year', open_duration) = 0),
    half_open_permitted_calls integer NOT NULL DEFAULT 3
        CHECK (half_open_permitted_calls BETWEEN 1 AND 1000),
    half_open_max_wait interval NOT NULL DEFAULT '0'
        CHECK (half_open_max_wait >= '0' AND date_part('month', half_open_max_wait) = 0
               AND date_part('year', half_open_max_wait) = 0),
    failure_sqlstates text[] NOT NULL DEFAULT '{}'
        CHECK (infra.sqlstate_patterns_valid(failure_sqlstates)),
    ignored_sqlstates text[] NOT NULL DEFAULT '{}'
        CHECK (infra.sqlstate_patterns_valid(ignored_sqlstates)),
    description text,
    owner regrole NOT NULL DEFAULT (CURRENT_USER::text::regrole),
    acl aclitem[],
    preset boolean NOT NULL DEFAULT false,
    changed boolean NOT NULL DEFAULT true
);

COMMENT ON TABLE infra.circuit_breakers IS
'Circuit breakers: window_size counts calls (count) or seconds (time); thresholds are percentages; failure_sqlstates empty means every error fails; ignored_sqlstates count neither way. A row belongs to owner; others use it when granted (infra.grant_use). Changes apply at commit.';

CREATE TRIGGER circuit_breakers_rows
    BEFORE INSERT OR UPDATE OR DELETE ON infra.circuit_breakers
    FOR EACH ROW EXECUTE FUNCTION infra.config_rows('owned');

CREATE TRIGGER circuit_breakers_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON infra.circuit_breakers
    FOR EACH STATEMENT EXECUTE FUNCTION infra.config_changed();

/*
 * The presets: database, network and vault for everyone's use; kafka
 * (delivery) and otlp (trace exports) are infra's own, granted to no one.
 */
INSERT INTO infra.circuit_breakers
    (name, window_kind, window_size, minimum_calls, failure_rate_threshold,
     slow_call_duration, slow_call_rate_threshold, open_duration,
     half_open_permitted_calls, failure_sqlstates, ignored_sqlstates, description,
     acl, preset, changed)
VALUES
    ('database', 'count', 100, 20, 50, '2 seconds', 80, '30 seconds', 5,
     '{08%,53%,57P01,57P02,57P03,58%,40001,40P01,55P03,57014}', '{}',
     'Calls to a database: connection, resource, crash and conflict errors count',
     infra.acl_with(NULL, CURRENT_USER::text::regrole, 0, true), true, false),
    ('kafka', 'time', 60, 10, 50, '5 seconds', 80, '60 seconds', 3,
     '{}', '{}', 'Produce and admin calls to Kafka', NULL, true, false),
    ('network', 'count', 50, 10, 50, '5 seconds', 80, '30 seconds', 3,
     '{}', '{}', 'HTTP and other network calls',
     infra.acl_with(NULL, CURRENT_USER::text::regrole, 0, true), true, false),
    ('otlp', 'count', 50, 10, 50, '5 seconds', 80, '30 seconds', 3,
     '{}', '{}', 'Trace exports of the infra trace exporter to the collector', NULL, true, false),
    ('vault', 'count', 20, 5, 50, '3 seconds', 80, '60 seconds', 2,
     '{}', '{}', 'Calls to a secrets store',
     infra.acl_with(NULL, CURRENT_USER::text::regrole, 0, true), true, false);

SELECT pg_catalog.pg_extension_config_dump('infra.circuit_breakers', 'WHERE NOT preset OR changed');

CREATE FUNCTION infra.breaker_allow(name text)
RETURNS boolean
AS 'MODULE_PATHNAME', 'infra_breaker_allow'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

COMMENT ON FUNCTION infra.breaker_allow(text) IS
'May a call go ahead? In half-open, takes a probe permit that belongs to this backend until breaker_success/breaker_failure, an abort, or exit.';

CREATE FUNCTION infra.breaker_success(name text, duration interval DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'infra_breaker_success'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

CREATE FUNCTION infra.breaker_failure(name text, sqlstate text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'infra_breaker_failure'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

CREATE FUNCTION infra.breaker_call(name text, sql text)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_breaker_call'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.breaker_call(text, text) IS
'Run sql under the breaker: record success, slowness or failure (by SQLSTATE) and re-raise errors; when the breaker rejects the call, raise SQLSTATE IB001.';

CREATE FUNCTION infra.breaker_force(name text, state text)
RETURNS void
AS 'MODULE_PATHNAME', 'infra_breaker_force'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION infra.breaker_reset(name text)
RETURNS void
AS 'MODULE_PATHNAME', 'infra_breaker_reset'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

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

CREATE FUNCTION infra.circuit_breaker_events(
    OUT seq bigint,
    OUT name text,
    OUT from_state text,
    OUT to_state text,
    OUT at timestamptz,
    OUT reason text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_breaker_events'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

CREATE VIEW infra.circuit_breaker_events AS
    SELECT * FROM infra.circuit_breaker_events();

COMMENT ON VIEW infra.circuit_breaker_events IS
'The most recent breaker state transitions (a ring of 256), oldest first.';

REVOKE ALL ON infra.circuit_breakers FROM PUBLIC;
GRANT SELECT ON infra.circuit_breakers TO PUBLIC;
REVOKE ALL ON FUNCTION infra.breaker_force(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.breaker_reset(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.circuit_breaker_states(), infra.circuit_breaker_events() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infra.circuit_breaker_states(), infra.circuit_breaker_events() TO pg_monitor;
GRANT SELECT ON infra.circuit_breaker_state, infra.circuit_breaker_events TO pg_monitor;

/* ---------------------------------------------------------------------------
 * Retry with backoff (src/resilience/retry.c).
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.backoff_delay(
    attempt integer,
    base interval DEFAULT '100 milliseconds',
    cap interval DEFAULT '10 seconds',
    strategy text DEFAULT 'full_jitter')
RETURNS interval
AS 'MODULE_PATHNAME', 'infra_backoff_delay'
LANGUAGE C VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION infra.backoff_delay(integer, interval, interval, text) IS
'Delay before retrying after failed attempt number attempt (1 = first): none, exponential, full_jitter, equal_jitter or decorrelated; the cap applies before the random draw.';

CREATE TABLE infra.retry_policies (
    name text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 63),
    max_attempts integer NOT NULL DEFAULT 3 CHECK (max_attempts BETWEEN 1 AND 100),
    base interval NOT NULL DEFAULT '100 milliseconds'
        CHECK (base >= '0' AND date_part('month', base) = 0 AND date_part('year', base) = 0),
    cap interval NOT NULL DEFAULT '10 seconds'
        CHECK (cap >= '0' AND date_part('month', cap) = 0 AND date_part('year', cap) = 0),
    strategy text NOT NULL DEFAULT 'full_jitter'
        CHECK (strategy IN ('none', 'exponential', 'full_jitter', 'equal_jitter', 'decorrelated')),
    sqlstates text[] NOT NULL CHECK (infra.sqlstate_patterns_valid(sqlstates)),
    description text,
    preset boolean NOT NULL DEFAULT false,
    changed boolean NOT NULL DEFAULT true
);

COMMENT ON TABLE infra.retry_policies IS
'Retry policies for infra.retry and infra.retry_transaction: attempts in all, backoff, and the SQLSTATEs (or class patterns such as 08%) that are retried. Changes apply at commit.';

CREATE TRIGGER retry_policies_rows
    BEFORE INSERT OR UPDATE OR DELETE ON infra.retry_policies
    FOR EACH ROW EXECUTE FUNCTION infra.config_rows();

CREATE TRIGGER retry_policies_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON infra.retry_policies
    FOR EACH STATEMENT EXECUTE FUNCTION infra.config_changed();

INSERT INTO infra.retry_policies (name, max_attempts, base, cap, strategy, sqlstates, description, preset, changed) VALUES
    ('database', 5, '50 milliseconds', '2 seconds', 'full_jitter',
     '{40001,40P01,55P03,08%,57P01,53300}',
     'Serialization failures, deadlocks, lock timeouts, lost connections', true, false),
    ('network', 5, '200 milliseconds', '10 seconds', 'full_jitter',
     '{08%,57014,58%}', 'Network calls: connection errors and timeouts', true, false),
    ('kafka', 8, '100 milliseconds', '5 seconds', 'decorrelated',
     '{08%,57014,53%}', 'Kafka produce and admin calls', true, false),
    ('vault', 3, '500 milliseconds', '5 seconds', 'equal_jitter',
     '{08%,57014}', 'Calls to a secrets store', true, false);

/* pg_dump keeps rows users added and presets they changed. */
SELECT pg_catalog.pg_extension_config_dump('infra.retry_policies', 'WHERE NOT preset OR changed');

CREATE FUNCTION infra.retry(sql text, policy text DEFAULT 'database')
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_retry'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.retry(text, text) IS
'Run sql, each attempt in a subtransaction, retrying the SQLSTATEs of the policy with its backoff; returns rows processed. The last error keeps its SQLSTATE.';

CREATE PROCEDURE infra.retry_transaction(sql text, policy text DEFAULT 'database')
AS 'MODULE_PATHNAME', 'infra_retry_transaction'
LANGUAGE C;

COMMENT ON PROCEDURE infra.retry_transaction(text, text) IS
'Run sql, each attempt in its own transaction (committed on success), so serialization failures are retried correctly. Not inside BEGIN ... COMMIT.';

REVOKE ALL ON infra.retry_policies FROM PUBLIC;
GRANT SELECT ON infra.retry_policies TO PUBLIC;

/* ---------------------------------------------------------------------------
 * Kafka (src/kafka/kafka.c, src/kafka/producer.c): the transactional outbox.
 * ------------------------------------------------------------------------- */

/*
 * Messages committed and not yet acknowledged by Kafka.  WAL-logged: a crash
 * loses nothing.  A transaction's messages are written as one row of
 * parallel arrays (up to 1000 messages a row), so a send costs a fraction of
 * a row insert; infra.kafka_outbox shows one row per message.  Message ids
 * come from infra.kafka_outbox_id_seq, not cached per backend: kafka_send
 * relies on ids growing in the order same-key senders commit.  first_id is
 * the row's smallest id (the worker rewrites partly delivered rows), except
 * in rows the worker moved from the WAL outbox for retries: their ids are
 * the WAL outbox's (from 2^51) and their first_id a value of this sequence,
 * which keeps their place.
 */
CREATE SEQUENCE infra.kafka_outbox_id_seq CACHE 1;

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

CREATE TABLE infra.kafka_outbox_batches (
    first_id bigint PRIMARY KEY,
    messages integer NOT NULL CHECK (messages > 0),
    ids bigint[] NOT NULL,
    topics text[] NOT NULL,
    partitions integer[] NOT NULL,
    keys bytea[] NOT NULL,
    vals bytea[] NOT NULL,
    headers jsonb[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    last_attempt_at timestamptz,
    CHECK (cardinality(ids) = messages),
    timeline integer CHECK (timeline > 0)
);

/* Payloads are mostly unique: do not spend the commit on compressing them. */
ALTER TABLE infra.kafka_outbox_batches
    ALTER ids SET STORAGE EXTERNAL,
    ALTER topics SET STORAGE EXTERNAL,
    ALTER keys SET STORAGE EXTERNAL,
    ALTER vals SET STORAGE EXTERNAL,
    ALTER headers SET STORAGE EXTERNAL;

COMMENT ON TABLE infra.kafka_outbox_batches IS
'Messages sent by committed transactions and not yet acknowledged by Kafka, a transaction''s messages per row; read infra.kafka_outbox instead.';

COMMENT ON COLUMN infra.kafka_outbox_batches.timeline IS
'The WAL timeline the row''s ids were allocated on, part of each message''s infra-msg-id (ids stay unique across failovers); NULL for rows written before 1.1.';

CREATE FUNCTION infra.kafka_payload_text(bytes bytea)
RETURNS text
AS 'MODULE_PATHNAME', 'infra_kafka_payload_text'
LANGUAGE C STABLE STRICT PARALLEL SAFE;

COMMENT ON FUNCTION infra.kafka_payload_text(bytea) IS
'A message key or value as text: itself when it is valid UTF-8 (in a UTF-8 database, or ASCII), else bytea''s text form.';

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

CREATE FUNCTION infra.kafka_send(
    topic text,
    value text,
    key text DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    partition integer DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_kafka_send_text'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION infra.kafka_send(
    topic text,
    value bytea,
    key text DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    partition integer DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_kafka_send_bytea'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION infra.kafka_send(
    topic text,
    value jsonb,
    key text DEFAULT NULL,
    headers jsonb DEFAULT NULL,
    partition integer DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_kafka_send_jsonb'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.kafka_send(text, text, text, jsonb, integer) IS
'Queue a message for Kafka in this transaction: delivered (at least once, with header infra-msg-id) if and only if the transaction commits; per key in commit order. Returns the message id.';

/*
 * SECURITY DEFINER: it looks at the outbox, which its callers may not read;
 * it tells only whether earlier messages are still pending.
 */
CREATE FUNCTION infra.kafka_flush(timeout interval DEFAULT '30 seconds')
RETURNS boolean
AS 'MODULE_PATHNAME', 'infra_kafka_flush'
LANGUAGE C VOLATILE STRICT PARALLEL UNSAFE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION infra.kafka_flush(interval) IS
'Wait until every message committed before the call has been delivered; false if timeout passes first.';

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

CREATE VIEW infra.kafka_stats AS
    SELECT s.*, b.state AS breaker_state
      FROM infra.kafka_stats() s
      LEFT JOIN infra.circuit_breaker_state b ON b.name = 'kafka';

COMMENT ON VIEW infra.kafka_stats IS
'The outbox backlog and the producer''s counters, last error and broker state; produce latency from librdkafka statistics (queueing plus broker round trip, last 5 s with traffic); waiting_for: why the outbox waits (standbys behind infra.kafka_wait_for_standbys), NULL when it does not; with infra.kafka_delivery = exactly_once, the Kafka transactions committed and aborted, times the producer was fenced, the WAL position Kafka holds by the committed progress, and how long the oldest open transaction has been open (it holds back every read_committed consumer).';

/* Messages Kafka refused for good (too large, invalid topic, not authorised). */
CREATE TABLE infra.kafka_dead_letters (
    id bigint PRIMARY KEY,
    topic text NOT NULL,
    partition integer,
    key bytea,
    value bytea,
    headers jsonb,
    created_at timestamptz NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    attempts integer NOT NULL,
    error text NOT NULL
);

COMMENT ON TABLE infra.kafka_dead_letters IS
'Messages Kafka refused with an error no retry can cure, with the error; requeue with infra.kafka_retry_dead_letters().';

CREATE FUNCTION infra.kafka_retry_dead_letters(topic text DEFAULT NULL, ids bigint[] DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_kafka_retry_dead_letters'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.kafka_retry_dead_letters(text, bigint[]) IS
'Move dead letters (of one topic, or with these ids, or all) back to the outbox; returns how many.';

REVOKE ALL ON infra.kafka_outbox FROM PUBLIC;
REVOKE ALL ON infra.kafka_outbox_batches FROM PUBLIC;
REVOKE ALL ON SEQUENCE infra.kafka_outbox_id_seq FROM PUBLIC;
REVOKE ALL ON infra.kafka_dead_letters FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.kafka_retry_dead_letters(text, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.kafka_send(text, text, text, jsonb, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.kafka_send(text, bytea, text, jsonb, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.kafka_send(text, jsonb, text, jsonb, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.kafka_flush(interval) FROM PUBLIC;
GRANT SELECT ON infra.kafka_stats TO pg_monitor;
REVOKE ALL ON FUNCTION infra.kafka_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION infra.kafka_stats() TO pg_monitor;
REVOKE ALL ON infra.kafka_stats FROM PUBLIC;
/* Payloads are data: monitoring roles may look, applications may not. */
GRANT SELECT ON infra.kafka_outbox TO pg_monitor;

/*
 * Publish row changes: AFTER INSERT OR UPDATE OR DELETE ... FOR EACH ROW
 * EXECUTE FUNCTION infra.kafka_publish('topic' [, 'key_column']).  The key
 * is that column, or the primary key's columns joined by commas.  Runs as
 * the writer, who needs EXECUTE on infra.kafka_send.
 */
CREATE FUNCTION infra.kafka_publish()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    topic text := TG_ARGV[0];
    key_column text := TG_ARGV[1];
    row_data jsonb;
    message_key text;
BEGIN
    IF TG_LEVEL <> 'ROW' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'infra.kafka_publish() must be an AFTER ... FOR EACH ROW trigger'
            USING ERRCODE = '39P01',
                  HINT = 'CREATE TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish(''topic'').';
    END IF;
    IF topic IS NULL THEN
        RAISE EXCEPTION 'infra.kafka_publish() needs the topic as its first argument'
            USING ERRCODE = '22023',
                  HINT = 'EXECUTE FUNCTION infra.kafka_publish(''topic'', ''key_column'').';
    END IF;
    row_data := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
    IF key_column IS NOT NULL THEN
        IF NOT row_data ? key_column THEN
            RAISE EXCEPTION 'column "%" of infra.kafka_publish() does not exist in %.%',
                key_column, TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = '42703',
                      HINT = 'Name a column of the table as the second argument, or omit it to use the primary key.';
        END IF;
        message_key := row_data ->> key_column;
    ELSE
        SELECT string_agg(row_data ->> a.attname, ',' ORDER BY array_position(i.indkey::int2[], a.attnum))
          INTO message_key
          FROM pg_catalog.pg_index i
          JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
         WHERE i.indrelid = TG_RELID AND i.indisprimary;
    END IF;
    PERFORM infra.kafka_send(topic,
        jsonb_build_object(
            'op', lower(TG_OP),
            'schema', TG_TABLE_SCHEMA,
            'table', TG_TABLE_NAME,
            'before', CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
            'after', CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END,
            'ts_ms', (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
            'txid', pg_current_xact_id()::text::bigint),
        message_key);
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION infra.kafka_publish() IS
'Row trigger: send {op, schema, table, before, after, ts_ms, txid} to the topic given as first argument, keyed by the column given as second argument or the primary key; sent if and only if the transaction commits.';

REVOKE ALL ON FUNCTION infra.kafka_publish() FROM PUBLIC;

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

/* ---------------------------------------------------------------------------
 * Topic registry: <env>.<domain>.<entity>.v<version>, env from
 * infra.environment (dev | staging | prod).
 * ------------------------------------------------------------------------- */

/*
 * Kafka's rules and the naming convention; raises a clear error naming the
 * rule that failed, returns true otherwise.
 */
CREATE FUNCTION infra.topic_validate(name text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[];
BEGIN
    IF length(name) NOT BETWEEN 1 AND 249 THEN
        RAISE EXCEPTION 'topic name must have 1 to 249 characters, not %', length(name)
            USING ERRCODE = '22023', HINT = 'Kafka limits topic names to 249 characters.';
    END IF;
    IF name IN ('.', '..') THEN
        RAISE EXCEPTION 'topic name "%" is not allowed', name
            USING ERRCODE = '22023', HINT = 'Kafka reserves "." and "..".';
    END IF;
    IF name !~ '^[a-zA-Z0-9._-]+$' THEN
        RAISE EXCEPTION 'topic name "%" contains characters Kafka does not allow', name
            USING ERRCODE = '22023', HINT = 'Kafka topic names use only letters, digits, ''.'', ''_'' and ''-''.';
    END IF;
    parts := string_to_array(name, '.');
    IF array_length(parts, 1) <> 4 THEN
        RAISE EXCEPTION 'topic name "%" does not follow <env>.<domain>.<entity>.v<version>', name
            USING ERRCODE = '22023', HINT = 'Build names with infra.topic_name(domain, entity, version).';
    END IF;
    IF parts[1] NOT IN ('dev', 'staging', 'prod') THEN
        RAISE EXCEPTION 'topic name "%" starts with unknown environment "%"', name, parts[1]
            USING ERRCODE = '22023', HINT = 'The environment is one of dev, staging, prod.';
    END IF;
    IF parts[2] !~ '^[a-z0-9_-]+$' OR parts[3] !~ '^[a-z0-9_-]+$' THEN
        RAISE EXCEPTION 'domain and entity of topic "%" must be lower-case letters, digits, ''_'' or ''-''', name
            USING ERRCODE = '22023', HINT = 'For example dev.billing.invoice.v1.';
    END IF;
    IF parts[4] !~ '^v[1-9][0-9]{0,5}$' THEN
        RAISE EXCEPTION 'topic name "%" must end with a version such as v1, not "%"', name, parts[4]
            USING ERRCODE = '22023', HINT = 'Versions start at v1.';
    END IF;
    RETURN true;
END
$$;

CREATE FUNCTION infra.topic_name(domain text, entity text, version integer DEFAULT 1,
                                 env text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    result text;
BEGIN
    IF domain IS NULL OR entity IS NULL OR version IS NULL THEN
        RAISE EXCEPTION 'domain, entity and version must not be NULL'
            USING ERRCODE = '22004', HINT = 'Only env may be NULL, meaning infra.environment.';
    END IF;
    IF version < 1 THEN
        RAISE EXCEPTION 'topic version must be 1 or more, not %', version
            USING ERRCODE = '22023', HINT = 'Versions start at v1.';
    END IF;
    result := format('%s.%s.%s.v%s', coalesce(env, current_setting('infra.environment')),
                     domain, entity, version);
    PERFORM infra.topic_validate(result);
    RETURN result;
END
$$;

CREATE FUNCTION infra.topic_parse(name text,
    OUT env text, OUT domain text, OUT entity text, OUT version integer)
RETURNS record
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[];
BEGIN
    PERFORM infra.topic_validate(name);
    parts := string_to_array(name, '.');
    env := parts[1];
    domain := parts[2];
    entity := parts[3];
    version := substr(parts[4], 2)::integer;
END
$$;

CREATE TABLE infra.topics (
    name text PRIMARY KEY CHECK (infra.topic_validate(name)),
    env text NOT NULL,
    domain text NOT NULL,
    entity text NOT NULL,
    version integer NOT NULL,
    partitions integer NOT NULL DEFAULT 1 CHECK (partitions BETWEEN 1 AND 10000),
    replication_factor integer NOT NULL DEFAULT 1 CHECK (replication_factor BETWEEN 1 AND 32),
    config jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    description text,
    created_at timestamptz NOT NULL DEFAULT now(),
    broker_state text NOT NULL DEFAULT 'pending'
);

COMMENT ON TABLE infra.topics IS
'Registered Kafka topics; the infra worker creates them on the broker and records the outcome in broker_state (pending, created, exists, or the error).';

SELECT pg_catalog.pg_extension_config_dump('infra.topics', '');

/* Wakes the worker at commit; refuses on a standby. */
CREATE FUNCTION infra.kafka_wake_worker()
RETURNS void
AS 'MODULE_PATHNAME', 'infra_kafka_wake_worker'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION infra.topic_register(domain text, entity text, version integer DEFAULT 1,
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

CREATE FUNCTION infra.topic_exists(name text)
RETURNS boolean
LANGUAGE sql STABLE STRICT PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT EXISTS (SELECT FROM infra.topics t WHERE t.name = topic_exists.name) $$;

CREATE FUNCTION infra.topic_drop(name text)
RETURNS boolean
LANGUAGE sql STRICT
SET search_path = pg_catalog, pg_temp
AS $$ SELECT infra.kafka_wake_worker();  -- on a standby it refuses (25006)
      WITH d AS (DELETE FROM infra.topics t WHERE t.name = topic_drop.name RETURNING 1)
      SELECT EXISTS (SELECT FROM d) $$;

COMMENT ON FUNCTION infra.topic_drop(text) IS
'Remove a topic from the registry (the topic and its data stay on the broker); true if it was registered.';

REVOKE ALL ON infra.topics FROM PUBLIC;
GRANT SELECT ON infra.topics TO PUBLIC;
REVOKE ALL ON FUNCTION infra.topic_register(text, text, integer, integer, integer, jsonb, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.topic_drop(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.kafka_wake_worker() FROM PUBLIC;

/* ---------------------------------------------------------------------------
 * Trace context and correlation id of the session (src/core/tracing.c): set with
 * SET infra.traceparent / SET infra.correlation_id; Kafka messages carry them.
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.traceparent()
RETURNS text
AS 'MODULE_PATHNAME', 'infra_traceparent'
LANGUAGE C STABLE PARALLEL RESTRICTED;

COMMENT ON FUNCTION infra.traceparent() IS
'The session''s W3C traceparent (from SET infra.traceparent), or NULL.';

CREATE FUNCTION infra.new_correlation_id()
RETURNS text
AS 'MODULE_PATHNAME', 'infra_new_correlation_id'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.new_correlation_id() IS
'A new random correlation id (a UUID), made the session''s infra.correlation_id; returns it.';

/* ---------------------------------------------------------------------------
 * Query metrics (src/observability/querystats.c) and connections.
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.query_metrics(
    OUT queryid bigint,
    OUT userid oid,
    OUT dbid oid,
    OUT calls bigint,
    OUT errors bigint,
    OUT rows bigint,
    OUT total_ms double precision,
    OUT min_ms double precision,
    OUT max_ms double precision,
    OUT mean_ms double precision,
    OUT ewma_ms double precision,
    OUT p50_ms double precision,
    OUT p95_ms double precision,
    OUT p99_ms double precision,
    OUT query text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_query_metrics'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

/*
 * Query text is shown to its own user and to members of pg_read_all_stats,
 * as pg_stat_statements does (infra.query_metrics() hides the others).
 */
CREATE VIEW infra.query_metrics AS
    SELECT m.queryid, r.rolname AS username, d.datname AS database,
           m.calls, m.errors, m.rows, m.total_ms, m.min_ms, m.max_ms, m.mean_ms,
           m.ewma_ms, m.p50_ms, m.p95_ms, m.p99_ms,
           m.query
      FROM infra.query_metrics() m
      LEFT JOIN pg_catalog.pg_roles r ON r.oid = m.userid
      LEFT JOIN pg_catalog.pg_database d ON d.oid = m.dbid;

COMMENT ON VIEW infra.query_metrics IS
'Per statement (query id, user, database): calls, errors, rows, total/min/max/mean time, moving average (weight 0.1) and p50/p95/p99 from a log-linear histogram (within 1.6%), with the normalised text.';

CREATE FUNCTION infra.query_metrics_info(
    OUT max integer,
    OUT entries integer,
    OUT evictions bigint,
    OUT reset_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'infra_query_metrics_info'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE VIEW infra.query_metrics_info AS SELECT * FROM infra.query_metrics_info();

COMMENT ON VIEW infra.query_metrics_info IS
'Capacity of infra.query_metrics (infra.query_metrics_max), entries in use, entries evicted to make room, and the last reset.';

CREATE FUNCTION infra.query_metrics_reset()
RETURNS void
AS 'MODULE_PATHNAME', 'infra_query_metrics_reset'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.query_metrics_reset() IS
'Forget every entry of infra.query_metrics and the eviction count.';

REVOKE ALL ON FUNCTION infra.query_metrics_reset() FROM PUBLIC;
GRANT SELECT ON infra.query_metrics, infra.query_metrics_info TO PUBLIC;

/*
 * Client connections per database and user.  waiting: active and waiting
 * for a heavyweight lock.  Other users' sessions show their state only to
 * members of pg_read_all_stats (pg_stat_activity's rule).
 */
CREATE VIEW infra.connection_stats AS
    SELECT datname AS database,
           usename AS username,
           count(*) AS total,
           count(*) FILTER (WHERE state = 'active') AS active,
           count(*) FILTER (WHERE state = 'idle') AS idle,
           count(*) FILTER (WHERE state IN ('idle in transaction', 'idle in transaction (aborted)'))
               AS idle_in_transaction,
           count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock') AS waiting,
           max(clock_timestamp() - xact_start) AS longest_transaction_age,
           round(100.0 * count(*) / current_setting('max_connections')::integer, 2)
               AS pct_of_max_connections
      FROM pg_catalog.pg_stat_activity
     WHERE backend_type = 'client backend'
     GROUP BY datname, usename;

COMMENT ON VIEW infra.connection_stats IS
'Client connections per database and user: active, idle, idle in transaction, waiting for a lock, the longest open transaction, and their share of max_connections.';

GRANT SELECT ON infra.connection_stats TO PUBLIC;

/* ---------------------------------------------------------------------------
 * Metrics registry (src/core/metrics.c) and the Prometheus exposition.
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.counter_inc(name text, value double precision DEFAULT 1,
                                  labels jsonb DEFAULT '{}')
RETURNS void
AS 'MODULE_PATHNAME', 'infra_counter_inc'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.counter_inc(text, double precision, jsonb) IS
'Add a non-negative amount to a counter series (name and labels); a counter is exposed and stored as name_total.';

CREATE FUNCTION infra.gauge_set(name text, value double precision, labels jsonb DEFAULT '{}')
RETURNS void
AS 'MODULE_PATHNAME', 'infra_gauge_set'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.gauge_set(text, double precision, jsonb) IS
'Set a gauge series (name and labels) to a value.';

CREATE FUNCTION infra.gauge_add(name text, value double precision, labels jsonb DEFAULT '{}')
RETURNS void
AS 'MODULE_PATHNAME', 'infra_gauge_add'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.gauge_add(text, double precision, jsonb) IS
'Add a (possibly negative) amount to a gauge series.';

CREATE FUNCTION infra.histogram_observe(name text, value double precision,
                                        labels jsonb DEFAULT '{}',
                                        buckets double precision[] DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'infra_histogram_observe'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.histogram_observe(text, double precision, jsonb, double precision[]) IS
'Record one observation in a histogram series.  buckets (finite upper bounds, increasing) are fixed by the metric''s first series; NULL uses those, or Prometheus'' defaults (5 ms to 10 s).';

CREATE FUNCTION infra.metrics(
    OUT name text,
    OUT type text,
    OUT labels jsonb,
    OUT value double precision,
    OUT count bigint,
    OUT sum double precision,
    OUT bucket_bounds double precision[],
    OUT bucket_counts bigint[],
    OUT updated_at timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_metrics'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE VIEW infra.metrics AS SELECT * FROM infra.metrics() ORDER BY name, labels::text;

COMMENT ON VIEW infra.metrics IS
'Series of the metrics registry: counters and gauges with their value; histograms with count, sum, bucket upper bounds and cumulative counts (one more: the +Inf bucket).';

CREATE FUNCTION infra.metrics_reset(name text DEFAULT NULL)
RETURNS bigint
AS 'MODULE_PATHNAME', 'infra_metrics_reset'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.metrics_reset(text) IS
'Remove every series of one metric (or of all); returns how many were removed.';

CREATE FUNCTION infra.metrics_prometheus()
RETURNS text
AS 'MODULE_PATHNAME', 'infra_metrics_prometheus'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION infra.metrics_prometheus() IS
'Every series, built-in (infra_*) and registered, in Prometheus'' text exposition format: what GET /metrics serves.';

REVOKE ALL ON FUNCTION infra.metrics_reset(text) FROM PUBLIC;
GRANT SELECT ON infra.metrics TO PUBLIC;

/* ---------------------------------------------------------------------------
 * Structured logging (src/core/logging.c).
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.log(level text, message text, context jsonb DEFAULT '{}')
RETURNS void
AS 'MODULE_PATHNAME', 'infra_log'
LANGUAGE C VOLATILE PARALLEL SAFE;

COMMENT ON FUNCTION infra.log(text, text, jsonb) IS
'Write one JSON object to the server log at level (debug5..debug1, debug, log, info, notice, warning): ts, level, message, correlation_id, trace_id, span_id, database, user, application, pid, backend_type and the context''s fields.';

/* ---------------------------------------------------------------------------
 * Tracing (src/observability/spans.c, src/observability/otlp.c).
 * ------------------------------------------------------------------------- */

CREATE FUNCTION infra.span_start(name text, attributes jsonb DEFAULT '{}',
                                 kind text DEFAULT 'internal')
RETURNS text
AS 'MODULE_PATHNAME', 'infra_span_start'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.span_start(text, jsonb, text) IS
'Open a span (kind internal, server, client, producer or consumer) as a child of the current one, the statement''s SQLcommenter traceparent or infra.traceparent; returns its id.';

CREATE FUNCTION infra.span_end(span_id text, status text DEFAULT 'ok', attributes jsonb DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'infra_span_end'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

COMMENT ON FUNCTION infra.span_end(text, text, jsonb) IS
'End a span of this session with status ok, error or unset and more attributes; a sampled span is queued for the OTLP exporter.';

CREATE FUNCTION infra.trace_stats(
    OUT queued bigint,
    OUT capacity integer,
    OUT exported bigint,
    OUT dropped bigint,
    OUT rejected bigint,
    OUT failed_exports bigint,
    OUT last_export_at timestamptz,
    OUT last_error text,
    OUT last_error_at timestamptz)
RETURNS record
AS 'MODULE_PATHNAME', 'infra_trace_stats'
LANGUAGE C STRICT VOLATILE PARALLEL SAFE;

CREATE VIEW infra.trace_stats AS SELECT * FROM infra.trace_stats();

COMMENT ON VIEW infra.trace_stats IS
'Spans queued in shared memory for the OTLP exporter and its counters: exported, dropped (queue full), rejected by the collector (not retried), failed attempts (retried), last error.';

GRANT SELECT ON infra.trace_stats TO PUBLIC;

/* ---------------------------------------------------------------------------
 * infra-bridge (bridge/): where it keeps its offsets, dead letters and the
 * message ids it has written.
 * ------------------------------------------------------------------------- */

CREATE TABLE infra.bridge_offsets (
    consumer_group text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL CHECK (partition >= 0),
    next_offset bigint NOT NULL CHECK (next_offset >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

COMMENT ON TABLE infra.bridge_offsets IS
'Per consumer group and partition, the next Kafka offset infra-bridge writes: moved in the same transaction as the rows, so a batch is written exactly once.';

CREATE TABLE infra.bridge_dead_letters (
    id bigserial PRIMARY KEY,
    route text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    "offset" bigint NOT NULL,
    key bytea,
    payload bytea,
    headers jsonb,
    error text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE infra.bridge_dead_letters IS
'Messages infra-bridge could not write (invalid JSON, a constraint, a type), with the error; the rest of their batch was written.';

CREATE TABLE infra.bridge_message_ids (
    route text NOT NULL,
    msg_id text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (route, msg_id)
);

COMMENT ON TABLE infra.bridge_message_ids IS
'infra-msg-id headers of messages a route with dedupe = on has written: a message sent again (a producer retry) is skipped.';

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
    preset boolean NOT NULL DEFAULT false,
    changed boolean NOT NULL DEFAULT true,
    CHECK (cardinality(gauges) + cardinality(counters) > 0)
);

COMMENT ON TABLE infra.metric_queries IS
'Queries whose results infra serves on /metrics: value columns (gauges, counters) become <name>_<column>, labels their labels; run by the metric-query worker every interval, read-only, with timeout, as run_as (a role the row''s author may SET ROLE to; a superuser only with allow_superuser and a superuser author). Off until enabled. Status: infra.metric_query_status.';

COMMENT ON COLUMN infra.metric_queries.author IS
'The role that last wrote the row (set by a trigger; a superuser''s write keeps it): run_as must be a role it may SET ROLE to.';

CREATE FUNCTION infra.metric_queries_author()
RETURNS trigger
AS 'MODULE_PATHNAME', 'infra_metric_queries_author'
LANGUAGE C;

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

CREATE TRIGGER metric_queries_rows
    BEFORE INSERT OR UPDATE OR DELETE ON infra.metric_queries
    FOR EACH ROW EXECUTE FUNCTION infra.config_rows();

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

UPDATE infra.metric_queries SET preset = true, changed = false;

/* pg_dump keeps rows users added and presets they changed (enabled, say). */
SELECT pg_catalog.pg_extension_config_dump('infra.metric_queries', 'WHERE NOT preset OR changed');

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

/*
 * Presets deleted (src/core/configrows.c), last: pg_dump restores the tables
 * kept for the extension in the order they were first marked, and an
 * update from 1.1 marks this one after the others.
 */
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
REVOKE ALL ON infra.removed_presets FROM PUBLIC;
GRANT SELECT ON infra.removed_presets TO PUBLIC;
REVOKE ALL ON FUNCTION infra.removed_presets_apply() FROM PUBLIC;

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
