--
-- infra: extension install, version, status views, GUC rules, privileges.
-- Runs in a cluster with infra in shared_preload_libraries.
--
CREATE EXTENSION infra;

-- The library and the control file agree on the version.
SELECT infra.version() = extversion AS version_matches
  FROM pg_extension WHERE extname = 'infra';
SELECT infra.version();

-- Everything lives in schema infra, which belongs to the extension.
SELECT pg_describe_object(classid, objid, objsubid) AS member
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'infra')
   AND classid = 'pg_namespace'::regclass;

-- One worker row per database in infra.database, in configuration order;
-- the harness configures postgres and infra_isolation.
SELECT database FROM infra.worker_status;

-- The worker of "postgres" is a live backend of its own type.
SELECT a.backend_type, a.datname
  FROM infra.worker_status w JOIN pg_stat_activity a ON a.pid = w.pid
 WHERE w.database = 'postgres';

-- The shared-memory registry lists the worker's segment.
SELECT name, size > 0 AS has_size, lwlocks FROM infra.shmem_segments;

-- "infra." is a reserved GUC prefix: a misspelt setting is an error.
SET infra.no_such_setting = 'on';
SHOW infra.no_such_setting;

-- infra.database is fixed at server start.
SHOW infra.database;
SET infra.database = 'other';

-- Status views are for monitoring roles; version() is for everyone.
CREATE ROLE infra_regress_app;
SET ROLE infra_regress_app;
SELECT infra.version();
SELECT count(*) FROM infra.worker_status;
SELECT count(*) FROM infra.worker_status();
RESET ROLE;
GRANT pg_monitor TO infra_regress_app;
SET ROLE infra_regress_app;
SELECT count(*) > 0 AS monitor_sees_workers FROM infra.worker_status;
RESET ROLE;
DROP ROLE infra_regress_app;

-- A user's table in schema infra is never dropped silently with it.
CREATE TABLE infra.user_data (id int);
INSERT INTO infra.user_data VALUES (1);
DROP EXTENSION infra;
SELECT count(*) AS user_rows_kept FROM infra.user_data;
DROP TABLE infra.user_data;

-- The schema goes with the extension, and comes back with it.
DROP EXTENSION infra;
SELECT count(*) FROM pg_namespace WHERE nspname = 'infra';
CREATE EXTENSION infra;
SELECT infra.version();
DROP EXTENSION infra;
