-- infra.log: what it accepts and refuses.  The lines themselves (with
-- timestamps and pids) are checked by TAP test 032.
CREATE EXTENSION infra;
SET client_min_messages = warning;
-- Every level, in any case; below client_min_messages nothing shows here
-- (info always reaches the client, so it is left to TAP).
SELECT count(infra.log(l, 'level ' || l))
  FROM unnest(ARRAY['debug5', 'debug4', 'debug3', 'debug2', 'debug1', 'debug',
                    'log', 'notice', 'LOG', 'Notice']) l;
SELECT infra.log('log', 'no context', NULL);
-- Bad input.
SELECT infra.log('error', 'would abort the transaction');
SELECT infra.log('fatal', 'would end the session');
SELECT infra.log('verbose', 'unknown level');
SELECT infra.log(NULL, 'no level');
SELECT infra.log('log', NULL);
SELECT infra.log('log', 'context must be an object', '[1, 2]');
SELECT infra.log('log', 'context must be an object', '"text"');
RESET client_min_messages;
DROP EXTENSION infra;
