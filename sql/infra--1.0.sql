/* infra--1.0.sql: install script of the infra extension, version 1.0. */

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

/*
 * Configuration tables carry this trigger: backends cache them and drop the
 * cache on the invalidation it sends, so changes apply at commit.
 */
CREATE FUNCTION infra.config_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'infra_config_changed'
LANGUAGE C;

/* ---------------------------------------------------------------------------
 * Rate limiting (src/ratelimit.c): GCRA, exact, shared by the whole cluster.
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

CREATE TABLE infra.rate_limiters (
    name text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 63),
    rate integer NOT NULL CHECK (rate > 0),
    per interval NOT NULL DEFAULT '1 second'
        CHECK (per > '0'::interval AND date_part('month', per) = 0 AND date_part('year', per) = 0),
    burst integer CHECK (burst > 0),
    description text
);

COMMENT ON TABLE infra.rate_limiters IS
'Named rate limiters for infra.rate_limit(name, cost); burst NULL means equal to rate. Changes apply at once.';

INSERT INTO infra.rate_limiters (name, rate, per, burst, description) VALUES
    ('database', 1000, '1 second', 100, 'Queries sent to a database on behalf of a service'),
    ('api', 100, '1 second', 20, 'Calls to an external API');

CREATE TRIGGER rate_limiters_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON infra.rate_limiters
    FOR EACH STATEMENT EXECUTE FUNCTION infra.config_changed();

/* pg_dump keeps rows users add; the two above come with CREATE EXTENSION. */
SELECT pg_catalog.pg_extension_config_dump('infra.rate_limiters',
    $$WHERE name NOT IN ('database', 'api')$$);

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
    OUT last_used timestamptz)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'infra_rate_limits'
LANGUAGE C VOLATILE STRICT PARALLEL RESTRICTED;

CREATE VIEW infra.rate_limits AS
    SELECT * FROM infra.rate_limits();

COMMENT ON VIEW infra.rate_limits IS
'Every rate-limit key in shared memory: its last parameters, what remains now, and its counters.';

/* Applications limit; owners configure and reset; monitoring roles look. */
REVOKE ALL ON infra.rate_limiters FROM PUBLIC;
GRANT SELECT ON infra.rate_limiters TO PUBLIC;
REVOKE ALL ON FUNCTION infra.rate_limit_reset(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION infra.rate_limits() FROM PUBLIC;
REVOKE ALL ON infra.rate_limits FROM PUBLIC;
GRANT SELECT ON infra.rate_limits TO pg_monitor;
GRANT EXECUTE ON FUNCTION infra.rate_limits() TO pg_monitor;
