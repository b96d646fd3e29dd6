--
-- Query metrics: per-statement counters, histogram percentiles, normalised
-- text; connection stats.  Timings vary, so only their relations are shown.
--
CREATE EXTENSION infra;
SELECT infra.query_metrics_reset();
SELECT max, entries, evictions FROM infra.query_metrics_info;

-- Constants are replaced by $n: these two are one statement.
SELECT 1 + 1 AS two;
SELECT 2 + 2 AS four;
SELECT 'text constant' AS t, -5 AS negative;
SELECT x FROM generate_series(1, 5) x;
SELECT 1 / 0;
SELECT 1 / 0;
CREATE TABLE qm_t (a int);
INSERT INTO qm_t SELECT generate_series(1, 3);
UPDATE qm_t SET a = a + 10 WHERE a > 1;

-- Only top-level statements count: a function's own statements do not.
CREATE FUNCTION qm_inner() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN RETURN (SELECT count(*) FROM qm_t WHERE a > 100); END $$;
SELECT qm_inner();

-- An error a function catches is not the statement's; one in a savepoint is.
CREATE FUNCTION qm_caught() RETURNS int LANGUAGE plpgsql AS $$
BEGIN PERFORM 1 / 0; RETURN 1; EXCEPTION WHEN division_by_zero THEN RETURN 0; END $$;
SELECT qm_caught();
BEGIN;
SAVEPOINT s;
SELECT a / 0 FROM qm_t;
ROLLBACK TO s;
COMMIT;

-- Turned off, nothing is recorded.
SET infra.query_metrics = off;
SELECT 'not recorded' AS off;
RESET infra.query_metrics;

SELECT query, calls, errors, rows,
       min_ms <= p50_ms AND p50_ms <= p95_ms AND p95_ms <= p99_ms AND p99_ms <= max_ms AS ordered,
       total_ms >= max_ms AND abs(mean_ms * calls - total_ms) < 1e-6 AS consistent,
       username = current_user AS mine
  FROM infra.query_metrics
 WHERE database = current_database()
   AND query NOT LIKE '%infra.query_metrics%' AND query NOT LIKE '%query_metrics_reset%'
 ORDER BY query COLLATE "C";
SELECT entries > 0 AS has_entries, evictions FROM infra.query_metrics_info;

-- Connections: this session is an active client backend.
SELECT total >= 1 AS counted, active >= 1 AS active, pct_of_max_connections > 0 AS share
  FROM infra.connection_stats
 WHERE database = current_database() AND username = current_user;

-- Bad input and privileges.
CREATE ROLE qm_user;
SET ROLE qm_user;
SELECT infra.query_metrics_reset();
SET infra.query_metrics = off;
SELECT count(*) >= 0 AS can_read FROM infra.query_metrics;
SELECT count(*) AS others_text_hidden FROM infra.query_metrics
 WHERE username <> 'qm_user' AND query <> '<insufficient privilege>';
RESET ROLE;
DROP ROLE qm_user;
SET infra.query_metrics_max = 10;

-- Parallel workers run parts of their leader's statement: it counts once.
CREATE TABLE qm_par AS SELECT g AS x FROM generate_series(1, 10000) g;
ANALYZE qm_par;
SELECT infra.query_metrics_reset();
-- Parallel workers forced (force_parallel_mode, renamed debug_parallel_query
-- in PostgreSQL 16).
SELECT set_config(CASE WHEN current_setting('server_version_num')::int >= 160000
                       THEN 'debug_parallel_query' ELSE 'force_parallel_mode' END,
                  'on', false) AS parallel_forced;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT count(*) FROM qm_par WHERE x > 0;
SELECT count(*) FROM qm_par WHERE x > 0;
SELECT count(*) FROM qm_par WHERE x > 0;
SELECT set_config(CASE WHEN current_setting('server_version_num')::int >= 160000
                       THEN 'debug_parallel_query' ELSE 'force_parallel_mode' END,
                  'off', false) AS parallel_forced;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
RESET min_parallel_table_scan_size;
RESET max_parallel_workers_per_gather;
SELECT calls, rows FROM infra.query_metrics WHERE query LIKE 'SELECT count(*) FROM qm_par%';
DROP TABLE qm_par;

DROP FUNCTION qm_inner(), qm_caught();
DROP TABLE qm_t;
SELECT infra.query_metrics_reset();
SELECT entries, evictions FROM infra.query_metrics_info;
DROP EXTENSION infra;
