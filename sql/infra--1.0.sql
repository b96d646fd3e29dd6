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
