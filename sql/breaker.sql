--
-- Circuit breakers: configuration table, state machine, breaker_call,
-- manual states, views, and bad input.
--
CREATE EXTENSION infra;

-- The four presets.
SELECT name, window_kind, window_size, minimum_calls, failure_rate_threshold,
       open_duration, half_open_permitted_calls
  FROM infra.circuit_breakers ORDER BY name;
-- (kafka and otlp are infra's own: its worker's and its trace exporter's.)
SELECT name, state FROM infra.circuit_breaker_state ORDER BY name;

-- A count window of 4 calls, opening at 50% failures once 4 calls are in.
INSERT INTO infra.circuit_breakers
    (name, window_size, minimum_calls, failure_rate_threshold, open_duration,
     half_open_permitted_calls, slow_call_duration, slow_call_rate_threshold)
VALUES ('b_count', 4, 4, 50, '200 ms', 2, '100 ms', 75);
-- (Live state outlives DROP EXTENSION until restart: start from closed.)
SELECT infra.breaker_reset('b_count');
-- Live state outlives the extension: count only this run's transitions.
SELECT coalesce(max(seq), 0) AS events_before FROM infra.circuit_breaker_events \gset

SELECT infra.breaker_allow('b_count');
SELECT infra.breaker_failure('b_count');
SELECT infra.breaker_success('b_count');
SELECT infra.breaker_failure('b_count');
SELECT state, calls, failures, failure_rate FROM infra.circuit_breaker_state WHERE name = 'b_count';
-- The fourth call makes 2 failures of 4: open.
SELECT infra.breaker_success('b_count');
SELECT state, calls, failures, failure_rate, next_probe_at > now() AS probe_later
  FROM infra.circuit_breaker_state WHERE name = 'b_count';
SELECT infra.breaker_allow('b_count') AS rejected;

-- After open_duration: half-open, two probe permits, the third is refused.
SELECT pg_sleep(0.25);
SELECT infra.breaker_allow('b_count') AS p1, infra.breaker_allow('b_count') AS p2,
       infra.breaker_allow('b_count') AS p3;
SELECT state, half_open_permits_in_use, rejected_total
  FROM infra.circuit_breaker_state WHERE name = 'b_count';
-- One probe fails, one succeeds: 50% >= 50%, open again.
SELECT infra.breaker_failure('b_count');
SELECT infra.breaker_success('b_count');
SELECT state FROM infra.circuit_breaker_state WHERE name = 'b_count';
-- Next time both probes succeed: closed, with an empty window.
SELECT pg_sleep(0.25);
SELECT infra.breaker_allow('b_count'), infra.breaker_allow('b_count');
SELECT infra.breaker_success('b_count'), infra.breaker_success('b_count');
SELECT state, calls, half_open_permits_in_use FROM infra.circuit_breaker_state WHERE name = 'b_count';

-- Slow calls: 3 of 4 slower than 100 ms reach the 75% slow-call threshold.
SELECT infra.breaker_success('b_count', '150 ms');
SELECT infra.breaker_success('b_count', '10 ms');
SELECT infra.breaker_success('b_count', '150 ms');
SELECT infra.breaker_success('b_count', '150 ms');
SELECT state, slow_calls, slow_call_rate FROM infra.circuit_breaker_state WHERE name = 'b_count';

-- The transitions, in order.
SELECT name, from_state, to_state, reason FROM infra.circuit_breaker_events
 WHERE name = 'b_count' AND seq > :events_before ORDER BY seq;

-- breaker_call: rows processed on success; errors recorded and re-raised.
SELECT infra.breaker_reset('b_count');
SELECT infra.breaker_call('b_count', 'SELECT generate_series(1, 3)');
SELECT infra.breaker_call('b_count', 'SELECT 1/0');
SELECT infra.breaker_call('b_count', 'SELECT 1/0');
SELECT infra.breaker_call('b_count', 'SELECT 1');
SELECT state, calls, failures FROM infra.circuit_breaker_state WHERE name = 'b_count';
-- Open: breaker_call raises IB001 and says when to come back.
\set VERBOSITY terse
SELECT infra.breaker_call('b_count', 'SELECT 1');
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
DO $$
DECLARE
    detail text;
BEGIN
    PERFORM infra.breaker_call('b_count', 'SELECT 1');
EXCEPTION WHEN SQLSTATE 'IB001' THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL;
    RAISE NOTICE 'detail gives the wait: %',
        detail ~ '^The next probe call is allowed in 0\.[0-9]{3} s\.$';
END $$;

-- SQLSTATE lists: ignored errors count neither way; errors outside the
-- failure list count as successes.
INSERT INTO infra.circuit_breakers
    (name, window_size, minimum_calls, open_duration, failure_sqlstates, ignored_sqlstates)
VALUES ('b_codes', 10, 1, '1 hour', '{08%,40001}', '{57014}');
SELECT infra.breaker_reset('b_codes');
SELECT infra.breaker_failure('b_codes', '57014');
SELECT calls FROM infra.circuit_breaker_state WHERE name = 'b_codes';
SELECT infra.breaker_failure('b_codes', '23505');
SELECT state, calls, failures FROM infra.circuit_breaker_state WHERE name = 'b_codes';
SELECT infra.breaker_failure('b_codes', '08006');
SELECT state, calls, failures FROM infra.circuit_breaker_state WHERE name = 'b_codes';
SELECT infra.breaker_reset('b_codes');
SELECT infra.breaker_call('b_codes', $$SELECT (SELECT 1 UNION SELECT 2)$$);
SELECT state, calls, failures FROM infra.circuit_breaker_state WHERE name = 'b_codes';

-- Manual states.
SELECT infra.breaker_force('b_codes', 'forced_open');
SELECT infra.breaker_allow('b_codes') AS forced_open_rejects;
SELECT infra.breaker_force('b_codes', 'disabled');
SELECT infra.breaker_failure('b_codes', '08006');
SELECT infra.breaker_allow('b_codes') AS disabled_allows, state, calls
  FROM infra.circuit_breaker_state WHERE name = 'b_codes';
SELECT infra.breaker_force('b_codes', 'metrics_only');
SELECT infra.breaker_failure('b_codes', '08006') FROM generate_series(1, 5);
SELECT infra.breaker_allow('b_codes') AS metrics_only_allows, state, calls, failures
  FROM infra.circuit_breaker_state WHERE name = 'b_codes';
SELECT infra.breaker_reset('b_codes');
SELECT state, calls, rejected_total FROM infra.circuit_breaker_state WHERE name = 'b_codes';

-- Configuration changes apply at once.
UPDATE infra.circuit_breakers SET minimum_calls = 100 WHERE name = 'b_codes';
SELECT infra.breaker_failure('b_codes') FROM generate_series(1, 5);
SELECT state, failures FROM infra.circuit_breaker_state WHERE name = 'b_codes';

-- A time window of 2 seconds forgets old calls.
INSERT INTO infra.circuit_breakers (name, window_kind, window_size, minimum_calls, open_duration)
VALUES ('b_time', 'time', 2, 100, '1 hour');
SELECT infra.breaker_reset('b_time');
SELECT infra.breaker_failure('b_time') FROM generate_series(1, 3);
SELECT calls, failures FROM infra.circuit_breaker_state WHERE name = 'b_time';
SELECT pg_sleep(2.1);
SELECT calls, failures FROM infra.circuit_breaker_state WHERE name = 'b_time';

-- Bad input.
SELECT infra.breaker_allow('no_such_breaker');
SELECT infra.breaker_allow(NULL);
SELECT infra.breaker_failure('b_codes', '4000');
SELECT infra.breaker_failure('b_codes', '08%');
SELECT infra.breaker_failure('b_codes', 'abcde');
SELECT infra.breaker_force('b_codes', 'ajar');
SELECT infra.breaker_force('b_codes', NULL);
SELECT infra.breaker_success('b_codes', '-1 s');
SELECT infra.breaker_call('b_codes', NULL);
INSERT INTO infra.circuit_breakers (name, failure_sqlstates) VALUES ('b_bad', '{4000x}');
INSERT INTO infra.circuit_breakers (name, ignored_sqlstates) VALUES ('b_bad', '{08}');
INSERT INTO infra.circuit_breakers (name, window_kind) VALUES ('b_bad', 'sliding');
INSERT INTO infra.circuit_breakers (name, failure_rate_threshold) VALUES ('b_bad', 0);
INSERT INTO infra.circuit_breakers (name, window_size) VALUES ('b_bad', 1001);

-- Privileges: applications use breakers, only owners configure or force.
-- A breaker is its owner's: others use it once granted, presets are public,
-- infra's own (kafka) nobody's but superusers'.
CREATE ROLE br_app;
SET ROLE br_app;
SELECT infra.breaker_allow('b_codes');
RESET ROLE;
SELECT infra.grant_use('circuit_breaker', 'b_codes', 'br_app');
SET ROLE br_app;
SELECT infra.breaker_allow('b_codes');
SELECT infra.breaker_allow('network');
SELECT infra.breaker_failure('kafka');
SELECT infra.breaker_force('b_codes', 'closed');
SELECT infra.breaker_reset('b_codes');
DELETE FROM infra.circuit_breakers;
RESET ROLE;
SELECT infra.revoke_use('circuit_breaker', 'b_codes', 'br_app');
SET ROLE br_app;
SELECT infra.breaker_allow('b_codes');
RESET ROLE;
DROP ROLE br_app;
DELETE FROM infra.circuit_breakers WHERE name LIKE 'b\_%';

DROP EXTENSION infra;
