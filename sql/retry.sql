--
-- Retry: backoff delays, policies, retry() and retry_transaction().
--
CREATE EXTENSION infra;

-- Deterministic strategies.
SELECT n, infra.backoff_delay(n, '100 ms', '1 s', 'none') AS none,
       infra.backoff_delay(n, '100 ms', '1 s', 'exponential') AS exponential
  FROM generate_series(1, 6) n;
-- Huge attempts do not overflow: the cap holds.
SELECT infra.backoff_delay(1000, '100 ms', '30 s', 'exponential');

-- Jittered strategies stay within their bounds (the cap applies before
-- the draw), over many draws.
SELECT bool_and(d BETWEEN '0' AND '400 ms') AS full_jitter_bounded,
       count(DISTINCT d) > 100 AS full_jitter_varies
  FROM (SELECT infra.backoff_delay(3, '100 ms', '1 s', 'full_jitter') d
          FROM generate_series(1, 1000)) s;
SELECT bool_and(d BETWEEN '200 ms' AND '400 ms') AS equal_jitter_bounded
  FROM (SELECT infra.backoff_delay(3, '100 ms', '1 s', 'equal_jitter') d
          FROM generate_series(1, 1000)) s;
SELECT bool_and(d BETWEEN '100 ms' AND '1 s') AS decorrelated_bounded,
       max(d) > '500 ms' AS decorrelated_grows
  FROM (SELECT infra.backoff_delay(8, '100 ms', '1 s', 'decorrelated') d
          FROM generate_series(1, 1000)) s;
SELECT bool_and(d <= '150 ms') AS capped_before_draw
  FROM (SELECT infra.backoff_delay(10, '100 ms', '150 ms', 'full_jitter') d
          FROM generate_series(1, 1000)) s;
SELECT infra.backoff_delay(1) <= '100 ms' AS defaults;

-- The presets.
SELECT name, max_attempts, base, cap, strategy, sqlstates FROM infra.retry_policies ORDER BY name;

-- A statement that fails twice with 40001, then succeeds.  Attempts are
-- counted by a sequence (not rolled back); their writes are rolled back.
CREATE SEQUENCE attempts;
CREATE TABLE written (attempt int);
INSERT INTO infra.retry_policies (name, max_attempts, base, cap, strategy, sqlstates)
VALUES ('fast', 4, '1 ms', '5 ms', 'exponential', '{40001,08%}');
CREATE FUNCTION flaky(fail_until int, code text DEFAULT '40001') RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO written VALUES (nextval('attempts'));
    IF currval('attempts') < fail_until THEN
        RAISE EXCEPTION 'attempt % fails', currval('attempts') USING ERRCODE = code;
    END IF;
END $$;

SELECT infra.retry('SELECT flaky(3)', 'fast');
SELECT attempt FROM written;

-- Out of attempts: the last error, its SQLSTATE, and how many attempts.
TRUNCATE written; ALTER SEQUENCE attempts RESTART;
SELECT infra.retry('SELECT flaky(10)', 'fast');
\echo :LAST_ERROR_SQLSTATE
-- A SQLSTATE the policy does not list is not retried.
TRUNCATE written; ALTER SEQUENCE attempts RESTART;
SELECT infra.retry($$SELECT flaky(10, '23505')$$, 'fast');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS attempts_made FROM written;
-- Class patterns: 08006 matches 08%.
TRUNCATE written; ALTER SEQUENCE attempts RESTART;
SELECT infra.retry($$SELECT flaky(2, '08006')$$, 'fast');
SELECT attempt FROM written;

-- Rows processed come back.
SELECT infra.retry('UPDATE written SET attempt = attempt', 'fast');

-- retry_transaction: each attempt its own transaction.
TRUNCATE written; ALTER SEQUENCE attempts RESTART;
CALL infra.retry_transaction('SELECT flaky(3)', 'fast');
SELECT attempt FROM written;
BEGIN;
CALL infra.retry_transaction('SELECT 1', 'fast');
ROLLBACK;
ALTER SEQUENCE attempts RESTART;
CALL infra.retry_transaction('SELECT flaky(100)', 'fast');
\echo :LAST_ERROR_SQLSTATE

-- Bad input.
SELECT infra.backoff_delay(0);
SELECT infra.backoff_delay(1, '-1 s');
SELECT infra.backoff_delay(1, '1 s', '1 mon');
SELECT infra.backoff_delay(1, '1 s', '2 s', 'linear');
SELECT infra.backoff_delay(NULL);
SELECT infra.retry('SELECT 1', 'no_such_policy');
SELECT infra.retry(NULL);
SELECT infra.retry('SELECT 1', NULL);
INSERT INTO infra.retry_policies (name, sqlstates) VALUES ('bad', '{4000}');
INSERT INTO infra.retry_policies (name, sqlstates) VALUES ('bad', '{08%%}');
INSERT INTO infra.retry_policies (name, sqlstates, strategy) VALUES ('bad', '{08%}', 'linear');
INSERT INTO infra.retry_policies (name, sqlstates, max_attempts) VALUES ('bad', '{08%}', 0);

DROP FUNCTION flaky(int, text);
DROP TABLE written;
DROP SEQUENCE attempts;
DELETE FROM infra.retry_policies WHERE name = 'fast';

DROP EXTENSION infra;
