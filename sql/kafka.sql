--
-- kafka_send and the outbox, without a broker: the harness cluster sets no
-- infra.kafka_brokers, so messages stay in infra.kafka_outbox where their
-- content can be checked.  Delivery itself is tested by TAP against a real
-- broker (test/t/020_kafka_send.pl, 021_kafka_faults.pl).
--
CREATE EXTENSION infra;

-- Committed sends are queued with their parts; rolled-back ones vanish.
BEGIN;
SELECT infra.kafka_send('orders', 'plain text', 'order-1');
SELECT infra.kafka_send('orders', '{"total": 12.5}'::jsonb, 'order-2', '{"source": "regress"}');
SELECT infra.kafka_send('orders', '\xdeadbeef'::bytea, NULL, NULL, 3);
SELECT infra.kafka_send('orders', NULL::text, 'tombstone');
COMMIT;
BEGIN;
SELECT infra.kafka_send('orders', 'never', 'order-1') IS NOT NULL AS queued;
ROLLBACK;
SELECT topic, partition, key, value, headers, attempts
  FROM infra.kafka_outbox ORDER BY id;
-- A transaction's messages are one row of the batch table, ids in order.
SELECT messages, first_id = ids[1] AS first_is_smallest,
       ids = (SELECT array_agg(i ORDER BY i) FROM unnest(ids) i) AS ids_ascending
  FROM infra.kafka_outbox_batches;

-- Without brokers, nothing is delivered: kafka_flush times out, the stats
-- say why.
SELECT infra.kafka_flush('50 ms');
SELECT pending, in_flight, delivered_total, broker_state FROM infra.kafka_stats;
SHOW infra.kafka_on_full;
SHOW infra.kafka_max_pending;
SHOW infra.kafka_config;

-- Savepoints: a rolled-back one takes its messages with it, a released one
-- keeps them, also when nested.
DELETE FROM infra.kafka_outbox_batches;
BEGIN;
SELECT infra.kafka_send('sp', 'a') > 0 AS sent;
SAVEPOINT s1;
SELECT infra.kafka_send('sp', 'b') > 0 AS sent;
ROLLBACK TO s1;
SELECT infra.kafka_send('sp', 'c') > 0 AS sent;
SAVEPOINT s2;
SELECT infra.kafka_send('sp', 'd') > 0 AS sent;
SAVEPOINT s3;
SELECT infra.kafka_send('sp', 'e') > 0 AS sent;
RELEASE s3;
ROLLBACK TO s2;
SAVEPOINT s4;
SELECT infra.kafka_send('sp', 'f') > 0 AS sent;
RELEASE s4;
COMMIT;
SELECT value FROM infra.kafka_outbox ORDER BY id;

-- More messages than the backend buffers (1000) inside a savepoint that is
-- rolled back: the outer messages survive, the inner ones do not.
DELETE FROM infra.kafka_outbox_batches;
BEGIN;
SELECT count(infra.kafka_send('sp', 'outer')) FROM generate_series(1, 700);
SAVEPOINT inner_sp;
SELECT count(infra.kafka_send('sp', 'inner')) FROM generate_series(1, 1500);
ROLLBACK TO inner_sp;
COMMIT;
SELECT value, count(*) FROM infra.kafka_outbox GROUP BY 1;
-- ... and when it is released, all of them are kept.
DELETE FROM infra.kafka_outbox_batches;
BEGIN;
SELECT count(infra.kafka_send('sp', 'outer')) FROM generate_series(1, 700);
SAVEPOINT inner_sp;
SELECT count(infra.kafka_send('sp', 'inner')) FROM generate_series(1, 1500);
RELEASE inner_sp;
COMMIT;
SELECT value, count(*) FROM infra.kafka_outbox GROUP BY 1 ORDER BY 1;
SELECT count(DISTINCT id) = count(*) AS unique_ids FROM infra.kafka_outbox;
-- A buffer full of outer messages when a savepoint starts: it grows.
DELETE FROM infra.kafka_outbox_batches;
BEGIN;
SELECT count(infra.kafka_send('sp', 'outer')) FROM generate_series(1, 1000);
SAVEPOINT inner_sp;
SELECT count(infra.kafka_send('sp', 'inner')) FROM generate_series(1, 2500);
ROLLBACK TO inner_sp;
SELECT count(infra.kafka_send('sp', 'after')) FROM generate_series(1, 10);
COMMIT;
SELECT value, count(*) FROM infra.kafka_outbox GROUP BY 1 ORDER BY 1;
DELETE FROM infra.kafka_outbox_batches;

-- The publish trigger: envelope for insert, update, delete, keyed by the
-- primary key, or by a named column.
DELETE FROM infra.kafka_outbox_batches;
CREATE TABLE customers (id int, region text, name text, PRIMARY KEY (region, id));
CREATE TRIGGER customers_publish AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish('crm.customers');
INSERT INTO customers VALUES (1, 'eu', 'Ada');
UPDATE customers SET name = 'Ada L.' WHERE id = 1;
DELETE FROM customers WHERE id = 1;
SELECT topic, key,
       value::jsonb - 'ts_ms' - 'txid' AS envelope,
       (value::jsonb ->> 'txid')::bigint > 0 AS has_txid,
       (value::jsonb ->> 'ts_ms')::bigint > 0 AS has_ts
  FROM infra.kafka_outbox ORDER BY id;
DELETE FROM infra.kafka_outbox_batches;
CREATE TRIGGER customers_by_name AFTER INSERT ON customers
    FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish('crm.names', 'name');
INSERT INTO customers VALUES (2, 'us', 'Grace');
SELECT topic, key FROM infra.kafka_outbox ORDER BY id;
BEGIN;
INSERT INTO customers VALUES (3, 'us', 'Rolled');
ROLLBACK;
SELECT count(*) AS after_rollback FROM infra.kafka_outbox;

-- The session's correlation id and trace context travel as headers; a
-- header given by the caller wins.  (The trace is not sampled, flags 00:
-- statements have no spans of their own, the context passes unchanged.)
DELETE FROM infra.kafka_outbox_batches;
SET infra.correlation_id = 'req-42';
SET infra.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00';
SELECT infra.traceparent();
SELECT infra.kafka_send('ctx', 'a') > 0 AS sent;
SELECT infra.kafka_send('ctx', 'b', headers => '{"correlation_id": "mine", "x": "1"}') > 0 AS sent;
SELECT length(infra.new_correlation_id()) AS uuid_length;
SELECT current_setting('infra.correlation_id') ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' AS is_uuid_v4;
RESET infra.correlation_id;
RESET infra.traceparent;
SELECT infra.traceparent() IS NULL AS no_trace;
SELECT infra.kafka_send('ctx', 'c') > 0 AS sent;
SELECT value, headers FROM infra.kafka_outbox ORDER BY id;
-- Invalid trace context is ignored with a warning; a bad correlation id is refused.
SET infra.traceparent = '00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01';
SET infra.traceparent = '00-00000000000000000000000000000000-00f067aa0ba902b7-01';
SET infra.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01';
SET infra.traceparent = 'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
SET infra.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7';
SET infra.traceparent = 'garbage';
SELECT infra.traceparent() IS NULL AS still_none;
SET infra.correlation_id = 'has space';
SET infra.correlation_id = 'café';
SELECT set_config('infra.correlation_id', repeat('x', 129), false);
SHOW infra.correlation_id;
DELETE FROM infra.kafka_outbox_batches;

-- Dead letters go back to the outbox on request.
INSERT INTO infra.kafka_dead_letters (id, topic, key, value, created_at, attempts, error)
VALUES (1000, 'crm.names', 'k', 'v', now(), 1, 'MSG_SIZE_TOO_LARGE: Broker: Message size too large'),
       (1001, 'other', 'k', 'v', now(), 1, 'TOPIC_AUTHORIZATION_FAILED: Broker: Topic authorization failed');
SELECT infra.kafka_retry_dead_letters(topic => 'crm.names');
SELECT topic, error FROM infra.kafka_dead_letters;
SELECT infra.kafka_retry_dead_letters();
SELECT count(*) AS dead_left FROM infra.kafka_dead_letters;
SELECT topic, count(*) FROM infra.kafka_outbox GROUP BY topic ORDER BY topic;

-- Bad input.
SELECT infra.kafka_send(NULL, 'x');
SELECT infra.kafka_send('', 'x');
SELECT infra.kafka_send('.', 'x');
SELECT infra.kafka_send('no spaces', 'x');
SELECT infra.kafka_send(repeat('t', 250), 'x');
SELECT infra.kafka_send('t', 'x', 'k', '["not", "an", "object"]');
SELECT infra.kafka_send('t', 'x', partition => -1);
SELECT infra.kafka_flush('-1 s');
ALTER SYSTEM SET infra.kafka_config = 'no.such.property = 1';
ALTER SYSTEM SET infra.kafka_config = 'acks';
ALTER SYSTEM SET infra.kafka_config = '@/nonexistent/file';
SET infra.kafka_on_full = 'block';
CREATE TABLE no_pk (v int);
CREATE TRIGGER no_topic AFTER INSERT ON no_pk FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish();
INSERT INTO no_pk VALUES (1);
DROP TRIGGER no_topic ON no_pk;
CREATE TRIGGER bad_column AFTER INSERT ON no_pk FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish('t', 'nope');
INSERT INTO no_pk VALUES (1);
DROP TRIGGER bad_column ON no_pk;
CREATE TRIGGER before_row BEFORE INSERT ON no_pk FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish('t');
INSERT INTO no_pk VALUES (1);

-- Privileges: sending needs a grant; the outbox is not writable directly.
CREATE ROLE kafka_app;
GRANT ALL ON customers TO kafka_app;
SET ROLE kafka_app;
SELECT infra.kafka_send('t', 'x');
INSERT INTO infra.kafka_outbox_batches (first_id, messages, ids, topics, partitions, keys, vals, headers) VALUES (1, 1, ARRAY[1], ARRAY['t'], ARRAY[NULL::int], ARRAY[NULL::bytea], ARRAY['x'::bytea], ARRAY[NULL::jsonb]);
SELECT count(*) FROM infra.kafka_outbox;
INSERT INTO customers VALUES (4, 'eu', 'Denied');
RESET ROLE;
GRANT EXECUTE ON FUNCTION infra.kafka_send(text, jsonb, text, jsonb, integer) TO kafka_app;
SET ROLE kafka_app;
INSERT INTO customers VALUES (4, 'eu', 'Allowed');
RESET ROLE;
SELECT key FROM infra.kafka_outbox WHERE topic = 'crm.customers';

-- The outbox view shows keys and values as text; bytes that are not valid
-- UTF-8 in bytea's text form.
SELECT infra.kafka_payload_text(convert_to('héllo wörld', 'UTF8')) AS utf8,
       infra.kafka_payload_text('\xdeadbeef'::bytea) AS binary,
       infra.kafka_payload_text('\x61006200'::bytea) AS with_nul,
       infra.kafka_payload_text(''::bytea) AS empty;

-- A header named infra-msg-id is infra's alone, whoever sends.
SELECT infra.kafka_send('orders', 'x', NULL, '{"Infra-Msg-Id": "1/2/3"}');

DROP TABLE customers, no_pk;
REVOKE ALL ON FUNCTION infra.kafka_send(text, jsonb, text, jsonb, integer) FROM kafka_app;
DROP ROLE kafka_app;
DROP EXTENSION infra;
