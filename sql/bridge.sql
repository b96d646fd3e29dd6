--
-- infra-bridge's SQL surface: bridge_seek (replay from SQL) and
-- bridge_positions.  The running bridge's side (a seek taking effect under
-- load, seeks by time resolved) is TAP's (test/t/044_bridge_seek.pl).
--
CREATE EXTENSION infra;
\set VERBOSITY default

-- Offsets as a bridge of group g left them, with its last report.
INSERT INTO infra.bridge_offsets (consumer_group, topic, partition, next_offset, end_offset, end_seen_at,
                                  oldest_unwritten_at)
VALUES ('g', 'orders', 0, 100, 150, now(), now() - interval '30 s'),
       ('g', 'orders', 1, 200, 200, now(), NULL),
       ('g', 'audit', 0, 5, NULL, NULL, NULL),
       ('other', 'orders', 0, 7, 7, now(), NULL);
SELECT consumer_group, topic, partition, next_offset, end_offset, lag,
       lag_seconds BETWEEN 29 AND 60 AS lag_seconds_about_30, seek_pending
  FROM infra.bridge_positions ORDER BY 1, 2, 3;

-- Every partition of a topic, then one, to an offset.
SELECT infra.bridge_seek('g', 'orders', NULL, 0);
SELECT infra.bridge_seek('g', 'orders', 1, 150);
-- A partition the group has not written yet gets its row.
SELECT infra.bridge_seek('g', 'orders', 7, 42);
SELECT consumer_group, topic, partition, next_offset, seek_pending FROM infra.bridge_positions ORDER BY 1, 2, 3;

-- By time: it waits for a bridge to resolve it; a seek by offset clears it.
SELECT infra.bridge_seek('g', 'orders', NULL, '2026-01-01 00:00:00+00'::timestamptz);
SELECT partition, next_offset, seek_pending FROM infra.bridge_positions
 WHERE consumer_group = 'g' AND topic = 'orders' ORDER BY partition;
SELECT infra.bridge_seek('g', 'orders', 0, 10);
SELECT partition, next_offset, seek_pending FROM infra.bridge_positions
 WHERE consumer_group = 'g' AND topic = 'orders' ORDER BY partition;

-- A seek rolled back moves nothing.
BEGIN;
SELECT infra.bridge_seek('g', 'audit', 0, 1);
ROLLBACK;
SELECT next_offset FROM infra.bridge_offsets WHERE consumer_group = 'g' AND topic = 'audit';

-- Bad input: each refused with its reason.
SELECT infra.bridge_seek('g', 'orders', 0, -1);
SELECT infra.bridge_seek('g', 'orders', -1, 0);
SELECT infra.bridge_seek(NULL, 'orders', 0, 0);
SELECT infra.bridge_seek('g', NULL, 0, 0);
SELECT infra.bridge_seek('g', 'orders', 0, NULL::bigint);
SELECT infra.bridge_seek('nosuch', 'orders', NULL, 0);
SELECT infra.bridge_seek('g', 'nosuch', NULL, '2026-01-01'::timestamptz);
SELECT infra.bridge_seek('g', 'orders', 9, '2026-01-01'::timestamptz);
SELECT infra.bridge_seek('g', 'orders', NULL, 'infinity'::timestamptz);
SELECT infra.bridge_seek('g', 'orders', -2, now());

-- Privileges: nothing for PUBLIC; the documented grants for an operator
-- who replays (EXECUTE, and SELECT, INSERT, UPDATE on bridge_offsets,
-- which bridge_seek writes as its caller); pg_monitor reads the positions.
CREATE ROLE bridge_regress_nobody;
SET ROLE bridge_regress_nobody;
SELECT infra.bridge_seek('g', 'orders', NULL, 0);
SELECT count(*) FROM infra.bridge_positions;
RESET ROLE;
CREATE ROLE bridge_regress_replay;
GRANT USAGE ON SCHEMA infra TO bridge_regress_replay;
GRANT EXECUTE ON FUNCTION infra.bridge_seek(text, text, integer, bigint),
                          infra.bridge_seek(text, text, integer, timestamptz) TO bridge_regress_replay;
SET ROLE bridge_regress_replay;
-- EXECUTE alone is not enough: it writes the offsets as its caller.
SELECT infra.bridge_seek('g', 'orders', NULL, 0);
RESET ROLE;
GRANT SELECT, INSERT, UPDATE ON infra.bridge_offsets TO bridge_regress_replay;
CREATE SCHEMA bridge_regress_replay AUTHORIZATION bridge_regress_replay;
SET ROLE bridge_regress_replay;
-- Its own objects first on search_path change nothing.
CREATE FUNCTION bridge_regress_replay.pg_notify(text, text) RETURNS void
    LANGUAGE sql AS $$ SELECT NULL::void $$;
SET search_path = bridge_regress_replay, public;
SELECT infra.bridge_seek('g', 'orders', NULL, 3);
SELECT infra.bridge_seek('g', 'orders', 0, '2026-02-01 00:00:00+00'::timestamptz);
RESET search_path;
RESET ROLE;
SELECT partition, next_offset, seek_pending FROM infra.bridge_positions
 WHERE consumer_group = 'g' AND topic = 'orders' ORDER BY partition;
CREATE ROLE bridge_regress_monitor IN ROLE pg_monitor;
SET ROLE bridge_regress_monitor;
SELECT count(*) FROM infra.bridge_positions;
SELECT infra.bridge_seek('g', 'orders', NULL, 0);
RESET ROLE;

DROP SCHEMA bridge_regress_replay CASCADE;
REVOKE ALL ON infra.bridge_offsets FROM bridge_regress_replay;
REVOKE ALL ON SCHEMA infra FROM bridge_regress_replay;
REVOKE ALL ON FUNCTION infra.bridge_seek(text, text, integer, bigint),
                       infra.bridge_seek(text, text, integer, timestamptz) FROM bridge_regress_replay;
DROP ROLE bridge_regress_nobody, bridge_regress_replay, bridge_regress_monitor;
DROP EXTENSION infra;
