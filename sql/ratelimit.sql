--
-- Rate limiting: GCRA semantics, throttle fields, named limiters, waits,
-- reset, the view, and every bad input.  Periods are long (1 hour) where
-- output must not depend on timing.
--
CREATE EXTENSION infra;
SELECT infra.rate_limit_reset() >= 0 AS started_clean;

-- Burst 3 at 1 per hour: three allowed at once, then denied.
SELECT infra.rate_limit('rl:burst', 1, '1 hour', 3) FROM generate_series(1, 4);

-- Burst defaults to rate.
SELECT count(*) FILTER (WHERE infra.rate_limit('rl:default', 5, '1 hour'))
  FROM generate_series(1, 8);

-- throttle: limit, remaining, retry_after and reset_after.
SELECT allowed, "limit", remaining,
       retry_after = '0' AS no_wait,
       reset_after BETWEEN '59 min' AND '1 hour' AS reset_in_an_hour
  FROM infra.throttle('rl:throttle', 2, '2 hours', 2);
SELECT allowed, "limit", remaining,
       reset_after BETWEEN '119 min' AND '2 hours' AS reset_in_two_hours
  FROM infra.throttle('rl:throttle', 2, '2 hours', 2);
SELECT allowed, remaining,
       retry_after BETWEEN '59 min' AND '1 hour' AS retry_in_an_hour
  FROM infra.throttle('rl:throttle', 2, '2 hours', 2);

-- cost 0 looks without consuming; cost > 1 consumes that much.
SELECT allowed, remaining FROM infra.throttle('rl:cost', 10, '1 hour', 10, 0);
SELECT allowed, remaining FROM infra.throttle('rl:cost', 10, '1 hour', 10, 7);
SELECT allowed, remaining FROM infra.throttle('rl:cost', 10, '1 hour', 10, 4);
SELECT allowed, remaining FROM infra.throttle('rl:cost', 10, '1 hour', 10, 3);
SELECT allowed, remaining FROM infra.throttle('rl:cost', 10, '1 hour', 10, 0);

-- Keys are independent.
SELECT infra.rate_limit('rl:a', 1, '1 hour'), infra.rate_limit('rl:b', 1, '1 hour'),
       infra.rate_limit('rl:a', 1, '1 hour');

-- Refill is exact: at 10 per 100 ms, after 120 ms one more is allowed.
SELECT count(*) FILTER (WHERE infra.rate_limit('rl:refill', 10, '100 ms', 1))
  FROM generate_series(1, 3);
SELECT pg_sleep(0.12);
SELECT infra.rate_limit('rl:refill', 10, '100 ms', 1) AS refilled;

-- rate_limit_wait: waits for the next slot, or refuses at once when the
-- timeout cannot be met.
SELECT infra.rate_limit('rl:wait', 1, '200 ms', 1);
SELECT infra.rate_limit_wait('rl:wait', 1, '200 ms', 1, 1, '2 s') AS waited;
SELECT infra.rate_limit_wait('rl:wait', 1, '1 hour', 1, 1, '10 ms') AS too_long;

-- Named limiters come from infra.rate_limiters; changes apply at once.
SELECT name, rate, per, burst FROM infra.rate_limiters ORDER BY name;
SELECT infra.rate_limit('api');
SELECT infra.rate_limit('api', cost => 19);
SELECT infra.rate_limit('api', cost => 1) AS over_burst;
INSERT INTO infra.rate_limiters (name, rate, per, burst) VALUES ('rl_named', 1, '1 hour', 2);
SELECT infra.rate_limit('rl_named'), infra.rate_limit('rl_named'), infra.rate_limit('rl_named');
UPDATE infra.rate_limiters SET burst = 5 WHERE name = 'rl_named';
SELECT infra.rate_limit('rl_named') AS allowed_after_raise;
-- A named limiter and a key of the same name are different limits.
SELECT infra.rate_limit('rl_named', 1, '1 hour', 1) AS key_of_same_name;

-- Two positional arguments match both forms: name the second one.
SELECT infra.rate_limit('api', 2);

-- The view: state and counters of every key (those whose numbers cannot
-- move while the test runs: hour-long periods, no waits).
SELECT kind, key, rate, per, burst, remaining, allowed_total, denied_total,
       last_used > now() - interval '1 minute' AS recent
  FROM infra.rate_limits
 WHERE key LIKE 'rl%' AND per >= '1 hour' AND key <> 'rl:wait'
 ORDER BY kind, key;

-- Reset one key (it starts afresh), then all.
SELECT infra.rate_limit_reset('rl:burst');
SELECT infra.rate_limit('rl:burst', 1, '1 hour', 3) AS fresh_after_reset;
SELECT infra.rate_limit_reset('rl:nothing-here');
SELECT infra.rate_limit_reset() > 0 AS reset_all;
SELECT count(*) FROM infra.rate_limits;

-- Bad input: each a clear error.
\set VERBOSITY default
SELECT infra.rate_limit(NULL, 10, '1 s');
SELECT infra.rate_limit('', 10, '1 s');
SELECT infra.rate_limit(repeat('x', 200), 10, '1 s');
SELECT infra.rate_limit('rl:bad', 0, '1 s');
SELECT infra.rate_limit('rl:bad', -5, '1 s');
SELECT infra.rate_limit('rl:bad', 10, '0 s');
SELECT infra.rate_limit('rl:bad', 10, '-1 s');
SELECT infra.rate_limit('rl:bad', 10, '1 month');
SELECT infra.rate_limit('rl:bad', 10, NULL);
SELECT infra.rate_limit('rl:bad', 10, '1 s', 0);
SELECT infra.rate_limit('rl:bad', 10, '1 s', 5, 6);
SELECT infra.rate_limit('rl:bad', 10, '1 s', 5, -1);
SELECT infra.rate_limit_wait('rl:bad', 10, '1 s', 5, 1, NULL);
SELECT infra.rate_limit_wait('rl:bad', 10, '1 s', 5, 1, '-1 s');
SELECT infra.rate_limit('no_such_limiter');
SELECT infra.rate_limit(NULL::text, cost => 1);
SELECT infra.rate_limit('api', cost => 1000);
INSERT INTO infra.rate_limiters (name, rate) VALUES ('rl_zero', 0);
INSERT INTO infra.rate_limiters (name, rate, per) VALUES ('rl_month', 1, '1 mon');

-- Privileges: applications may limit, not reconfigure or reset.
CREATE ROLE rl_app;
SET ROLE rl_app;
SELECT infra.rate_limit('rl:app', 1, '1 hour');
SELECT infra.rate_limit('api');
UPDATE infra.rate_limiters SET rate = 1000000;
SELECT infra.rate_limit_reset();
SELECT count(*) FROM infra.rate_limits;
-- A key is its role's own: the same text is another role's other key.
SELECT infra.rate_limit('rl:app', 1, '1 hour');
RESET ROLE;
SELECT infra.rate_limit('rl:app', 1, '1 hour') AS superuser_has_its_own;
SELECT key, owner, public, remaining FROM infra.rate_limits WHERE key = 'rl:app' ORDER BY owner::text;
-- Made public by its owner, every role's call without a key of its own uses it.
CREATE ROLE rl_other;
SET ROLE rl_app;
SELECT infra.grant_use('rate_limit_key', 'rl:app', 'public');
SELECT infra.grant_use('rate_limit_key', 'rl:app', 'rl_other');
SET ROLE rl_other;
SELECT infra.rate_limit('rl:app', 1, '1 hour') AS other_uses_public_key;
SELECT infra.revoke_use('rate_limit_key', 'rl:app', 'public');
RESET ROLE;
SELECT key, owner, public FROM infra.rate_limits WHERE key = 'rl:app' ORDER BY owner::text;
SELECT infra.rate_limit_reset('rl:app');
RESET ROLE;
DROP ROLE rl_app;
DROP ROLE rl_other;
DELETE FROM infra.rate_limiters WHERE name = 'rl_named';

-- A peek (the view, cost 0, throttle with cost 0) changes nothing of a key:
-- not its last use, not its parameters, and an unknown key is not created.
SELECT infra.rate_limit('rl:peek', rate => 10);
SELECT last_used AS peek_t1, remaining AS peek_r1 FROM infra.rate_limits WHERE key = 'rl:peek' \gset
SELECT pg_sleep(0.3);
SELECT infra.rate_limit('rl:peek', 20, cost => 0) AS peek_allowed;
SELECT allowed, remaining FROM infra.throttle('rl:peek', 10, cost => 0);
SELECT abs(extract(epoch FROM last_used - :'peek_t1')) < 0.1 AS last_use_kept,
       rate, burst
  FROM infra.rate_limits WHERE key = 'rl:peek';
SELECT * FROM infra.throttle('rl:peek:unknown', 5, cost => 0);
SELECT count(*) AS unknown_keys_made FROM infra.rate_limits WHERE key = 'rl:peek:unknown';

DROP EXTENSION infra;
