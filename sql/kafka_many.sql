-- Set-based publishing: kafka_send_many and the statement-level publish
-- trigger.  Messages stay in the outbox here (no broker): what is read back
-- is exactly what the worker would send.
CREATE EXTENSION infra;

-- Many messages, one call: in order, keyed, as kafka_send would send them.
SELECT infra.kafka_send_many('many', ARRAY['{"a": 1}', '{"b": [2]}', NULL]::jsonb[], ARRAY['k1', NULL, 'k3']);
SELECT infra.kafka_send_many('many', ARRAY['t1', 't2']);
SELECT infra.kafka_send_many('many', ARRAY['\x00ff'::bytea], ARRAY['kb'], '{"h": "1"}');
SELECT infra.kafka_send_many('many', ARRAY[]::text[]);
SELECT infra.kafka_send_many('many', NULL::text[]);
SELECT id - min(id) OVER () AS n, topic, key, value, headers FROM infra.kafka_outbox ORDER BY id;
-- The same messages from kafka_send, for comparison.
DELETE FROM infra.kafka_outbox_batches;
SELECT infra.kafka_send('many', '{"a": 1}'::jsonb, 'k1') > 0 AS sent;
SELECT key, value FROM infra.kafka_outbox;
DELETE FROM infra.kafka_outbox_batches;

-- Sent if and only if the transaction commits; a savepoint rolled back
-- takes its messages.
BEGIN;
SELECT infra.kafka_send_many('many', ARRAY['kept']);
SAVEPOINT s;
SELECT infra.kafka_send_many('many', array_agg('gone ' || i)) FROM generate_series(1, 1500) i;
ROLLBACK TO s;
COMMIT;
BEGIN;
SELECT infra.kafka_send_many('many', ARRAY['rolled back']);
ROLLBACK;
SELECT value FROM infra.kafka_outbox ORDER BY id;
DELETE FROM infra.kafka_outbox_batches;

-- 3,000 messages in one call: written as outbox rows of at most 1,000.
SELECT infra.kafka_send_many('many', array_agg('m' || i), array_agg('key' || (i % 7))) FROM generate_series(1, 3000) i;
SELECT count(*) AS messages, count(DISTINCT id) AS ids, max(id) - min(id) + 1 AS span FROM infra.kafka_outbox;
SELECT messages FROM infra.kafka_outbox_batches ORDER BY first_id;
DELETE FROM infra.kafka_outbox_batches;

-- Bad input.
SELECT infra.kafka_send_many(NULL, ARRAY['x']);
SELECT infra.kafka_send_many('no spaces', ARRAY['x']);
SELECT infra.kafka_send_many('many', ARRAY['x', 'y'], ARRAY['only one']);
SELECT infra.kafka_send_many('many', ARRAY[['x'], ['y']]);
SELECT infra.kafka_send_many('many', ARRAY['x'], headers => '[1]');
SELECT infra.kafka_send_many('many', ARRAY['x'], headers => '{"infra-msg-id": "mine"}');

-- The statement trigger sends the row trigger's envelope, row for row:
-- two tables alike, one with each, the same statements.
CREATE TABLE rows_t (region text, id int, name text, PRIMARY KEY (region, id));
CREATE TABLE stmt_t (region text, id int, name text, PRIMARY KEY (region, id));
CREATE TRIGGER rows_t_publish AFTER INSERT OR UPDATE OR DELETE ON rows_t
    FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish('crm.rows');
CREATE TRIGGER stmt_t_insert AFTER INSERT ON stmt_t REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('crm.stmt');
CREATE TRIGGER stmt_t_update AFTER UPDATE ON stmt_t REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('crm.stmt');
CREATE TRIGGER stmt_t_delete AFTER DELETE ON stmt_t REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('crm.stmt');
INSERT INTO rows_t SELECT CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i, 'n' || i FROM generate_series(1, 5) i;
INSERT INTO stmt_t SELECT CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, i, 'n' || i FROM generate_series(1, 5) i;
UPDATE rows_t SET name = upper(name) WHERE id > 2;
UPDATE stmt_t SET name = upper(name) WHERE id > 2;
UPDATE rows_t SET id = id + 100 WHERE id = 1;     -- a change of primary key
UPDATE stmt_t SET id = id + 100 WHERE id = 1;
DELETE FROM rows_t WHERE region = 'eu';
DELETE FROM stmt_t WHERE region = 'eu';
UPDATE stmt_t SET name = name WHERE false;        -- no row: no message
SELECT count(*) FILTER (WHERE topic = 'crm.rows') AS row_trigger,
       count(*) FILTER (WHERE topic = 'crm.stmt') AS statement_trigger
  FROM infra.kafka_outbox;
-- Same keys and envelopes, in the same order (but the table's name).
SELECT r.key = s.key AS same_key,
       (r.value::jsonb - 'ts_ms' - 'txid' - 'table') = (s.value::jsonb - 'ts_ms' - 'txid' - 'table') AS same_envelope,
       s.key, s.value::jsonb - 'ts_ms' - 'txid' AS envelope,
       (s.value::jsonb ->> 'txid')::bigint > 0 AS has_txid
  FROM (SELECT row_number() OVER (ORDER BY id) AS i, key, value FROM infra.kafka_outbox WHERE topic = 'crm.rows') r
  JOIN (SELECT row_number() OVER (ORDER BY id) AS i, key, value FROM infra.kafka_outbox WHERE topic = 'crm.stmt') s
 USING (i) ORDER BY i;
DELETE FROM infra.kafka_outbox_batches;

-- Keyed by a named column; no primary key and no column: no key.  (A
-- column named like the transition table is still a column.)
CREATE TABLE no_pk_t (v int, tag text, n int, infra_new int);
CREATE TRIGGER by_tag AFTER INSERT ON no_pk_t REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('tags', 'tag');
CREATE TRIGGER no_key AFTER DELETE ON no_pk_t REFERENCING OLD TABLE AS o
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('untagged');
INSERT INTO no_pk_t VALUES (1, 'x', 10, 20), (2, NULL, 11, 21);
DELETE FROM no_pk_t;
SELECT topic, key, value::jsonb -> 'after' AS after, value::jsonb -> 'before' AS before FROM infra.kafka_outbox ORDER BY id;
DELETE FROM infra.kafka_outbox_batches;
BEGIN;
INSERT INTO no_pk_t VALUES (3, 'rolled back');
ROLLBACK;
SELECT count(*) AS after_rollback FROM infra.kafka_outbox;

-- Names and values that need quoting, in SQL and in JSON.
CREATE TABLE "odd ""t""" (id int PRIMARY KEY, "q""col" text);
CREATE TRIGGER odd AFTER INSERT ON "odd ""t""" REFERENCING NEW TABLE AS "n""ew"
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('odd', 'q"col');
INSERT INTO "odd ""t""" VALUES (1, 'x"y\z');
SELECT key, value::jsonb ->> 'table' AS tbl, value::jsonb -> 'after' AS after FROM infra.kafka_outbox WHERE topic = 'odd';
DROP TABLE "odd ""t""";
DELETE FROM infra.kafka_outbox_batches;

-- Misuse is refused with a hint.
CREATE TABLE misuse_t (id int PRIMARY KEY);
CREATE TRIGGER as_row AFTER INSERT ON misuse_t FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish_statement('t');
INSERT INTO misuse_t VALUES (1);
DROP TRIGGER as_row ON misuse_t;
CREATE TRIGGER no_table AFTER INSERT ON misuse_t FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('t');
INSERT INTO misuse_t VALUES (2);
DROP TRIGGER no_table ON misuse_t;
CREATE TRIGGER no_topic AFTER INSERT ON misuse_t REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement();
INSERT INTO misuse_t VALUES (3);
DROP TRIGGER no_topic ON misuse_t;
CREATE TRIGGER bad_column AFTER INSERT ON misuse_t REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('t', 'nope');
INSERT INTO misuse_t VALUES (4);
DROP TRIGGER bad_column ON misuse_t;
CREATE TRIGGER bad_topic AFTER INSERT ON misuse_t REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('no spaces');
INSERT INTO misuse_t VALUES (5);
DROP TRIGGER bad_topic ON misuse_t;
SELECT count(*) AS nothing_sent FROM infra.kafka_outbox;

-- Rights: sending needs EXECUTE on kafka_send_many; the statement trigger
-- asks it of the role writing the table.
CREATE ROLE many_app;
GRANT ALL ON stmt_t TO many_app;
SET ROLE many_app;
SELECT infra.kafka_send_many('many', ARRAY['x']);
INSERT INTO stmt_t VALUES ('eu', 50, 'no right');
RESET ROLE;
GRANT EXECUTE ON FUNCTION infra.kafka_send_many(text, jsonb[], text[], jsonb) TO many_app;
SET ROLE many_app;
INSERT INTO stmt_t VALUES ('eu', 51, 'granted');
RESET ROLE;
SELECT key, value::jsonb -> 'after' ->> 'name' AS name FROM infra.kafka_outbox ORDER BY id;
DELETE FROM infra.kafka_outbox_batches;
DROP TABLE rows_t, stmt_t, no_pk_t, misuse_t;
REVOKE ALL ON FUNCTION infra.kafka_send_many(text, jsonb[], text[], jsonb) FROM many_app;
DROP ROLE many_app;
DROP EXTENSION infra;
