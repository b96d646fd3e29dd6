--
-- http_send and its outbox, its checks and privileges.  Delivery itself is
-- tested by TAP against a local receiver (test/t/100_http.pl); here the
-- requests stay queued where their content can be checked.
--
CREATE EXTENSION infra;

-- Committed requests are queued, one row of arrays per transaction;
-- rolled-back ones (and rolled-back savepoints') vanish.
BEGIN;
SELECT infra.http_send('https://hooks.example/a', 'plain') > 0 AS queued;
SELECT infra.http_send('https://hooks.example/b', '{"n": 1}'::jsonb, 'PUT',
                       '{"X-Request": "r1"}') > 0 AS queued;
SELECT infra.http_send('https://hooks.example/c', '\x00ff'::bytea, 'PATCH') > 0 AS queued;
SELECT infra.http_send('https://hooks.example/d', NULL::text, 'DELETE') > 0 AS queued;
SAVEPOINT s;
SELECT infra.http_send('https://hooks.example/dropped', 'x') > 0 AS queued;
ROLLBACK TO s;
COMMIT;
BEGIN;
SELECT infra.http_send('https://hooks.example/never', 'x') > 0 AS queued;
ROLLBACK;
SELECT state, endpoint, url, method, attempts FROM infra.http_requests ORDER BY id;
SELECT requests, u.url, u.method, u.headers, u.body
  FROM infra.http_outbox_batches b,
       unnest(b.urls, b.methods, b.headers, b.bodies) AS u(url, method, headers, body)
 ORDER BY u.url;

-- Bad input: each refused with its reason.
SELECT infra.http_send(NULL, 'x');
SELECT infra.http_send('ftp://hooks.example/', 'x');
SELECT infra.http_send('hooks.example/path', 'x');
SELECT infra.http_send('https://hooks.example/a b', 'x');
SELECT infra.http_send('http://:80/nohost', 'x');
SELECT infra.http_send('https://hooks.example/', 'x', 'GET POST');
SELECT infra.http_send('https://hooks.example/', 'x', '');
SELECT infra.http_send('https://hooks.example/', 'x', NULL);
SELECT infra.http_send('https://hooks.example/', 'x', headers => '[1]');
SELECT infra.http_send('https://hooks.example/', 'x', headers => '{"X-N": 1}');
SELECT infra.http_send('https://hooks.example/', 'x', headers => '{"X-A": "1\r\nX-Injected: 2"}');
SELECT infra.http_send('https://hooks.example/', 'x', headers => '{"bad name": "1"}');
SELECT infra.http_send('https://hooks.example/', 'x', headers => '{"Webhook-Signature": "v1,forged"}');
SELECT infra.http_send('https://hooks.example/', 'x', headers => '{"host": "elsewhere"}');
SELECT infra.http_send(NULL, 'x', endpoint => 'nowhere');

-- Named endpoints: the URL must be http(s), secrets Standard Webhooks ones
-- (the error never shows the secret).
INSERT INTO infra.http_endpoints (name, url) VALUES ('bad url', 'https://hooks.example/');
INSERT INTO infra.http_endpoints (name, url) VALUES ('ftp', 'ftp://hooks.example/');
INSERT INTO infra.http_endpoints (name, url, secrets) VALUES ('badsecret', 'https://hooks.example/', ARRAY['not-a-secret']);
INSERT INTO infra.http_endpoints (name, url, secrets)
    VALUES ('billing', 'https://billing.example/hooks', ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw']);
SELECT name, url, enabled, concurrency, timeout_ms, retry_schedule FROM infra.http_endpoints;
DELETE FROM infra.http_outbox_batches;
SELECT infra.http_send(NULL, 'x', endpoint => 'billing') > 0 AS queued;
SELECT infra.http_send('/invoices/7', 'x', endpoint => 'billing') > 0 AS queued;
SELECT infra.http_send('https://other.example/', 'x', endpoint => 'billing');
SELECT infra.http_send('invoices', 'x', endpoint => 'billing');
SELECT endpoint, url FROM infra.http_requests ORDER BY id;

-- Privileges: nothing for PUBLIC but reading endpoints without their
-- secrets; EXECUTE on http_send is the grant to send, and needs no right
-- on the outbox or its sequence.
CREATE ROLE http_regress_app;
SET ROLE http_regress_app;
SELECT infra.http_send('https://hooks.example/', 'x');
SELECT name, url FROM infra.http_endpoints;
SELECT secrets FROM infra.http_endpoints;
SELECT count(*) FROM infra.http_requests;
SELECT count(*) FROM infra.http_outbox_batches;
SELECT infra.http_retry_dead_letters();
RESET ROLE;
GRANT EXECUTE ON FUNCTION infra.http_send(text, text, text, jsonb, text) TO http_regress_app;
SET ROLE http_regress_app;
SELECT infra.http_send(NULL, 'from the app', endpoint => 'billing') > 0 AS queued;
RESET ROLE;
SELECT count(*) FROM infra.http_requests WHERE endpoint = 'billing';

-- A role granted writing endpoints sets secrets, never reads them back;
-- pg_monitor reads the requests.
CREATE ROLE http_regress_admin;
GRANT INSERT, UPDATE, DELETE ON infra.http_endpoints TO http_regress_admin;
SET ROLE http_regress_admin;
INSERT INTO infra.http_endpoints (name, url, secrets)
    VALUES ('crm', 'https://crm.example/', ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw']);
UPDATE infra.http_endpoints SET secrets = ARRAY['whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw',
    'whsec_dGhlIG5leHQga2V5IGluIHRoZSByb3RhdGlvbg=='] WHERE name = 'crm';
UPDATE infra.http_endpoints SET secrets = ARRAY['whsec_!!'] WHERE name = 'crm';
UPDATE infra.http_endpoints SET allow = '{10.0.0.0/8}' WHERE name = 'crm';
SELECT secrets FROM infra.http_endpoints WHERE name = 'crm';
SELECT name, url FROM infra.http_endpoints WHERE name = 'crm';
RESET ROLE;
SELECT cardinality(secrets) FROM infra.http_endpoints WHERE name = 'crm';
UPDATE infra.http_endpoints SET allow = '{10.0.0.0/33}' WHERE name = 'crm';
UPDATE infra.http_endpoints SET allow = '{10.0.0.0/8, hooks.internal}', breaker_failure_rate = 20 WHERE name = 'crm';
SELECT allow, failure_rate_threshold FROM infra.http_endpoints e
  JOIN infra.circuit_breakers b ON b.name = 'http:' || e.name WHERE e.name = 'crm';
CREATE ROLE http_regress_monitor IN ROLE pg_monitor;
SET ROLE http_regress_monitor;
SELECT state, count(*) FROM infra.http_requests GROUP BY 1;
RESET ROLE;

-- The publishing trigger: each change as a Standard Webhooks payload to the
-- endpoint, written by a role with only http_send's jsonb form.
DELETE FROM infra.http_outbox_batches;
CREATE TABLE public.invoices (id integer PRIMARY KEY, total numeric);
CREATE TRIGGER invoices_hook AFTER INSERT OR UPDATE OR DELETE ON public.invoices
    FOR EACH ROW EXECUTE FUNCTION infra.http_publish('billing', '/invoices');
CREATE TRIGGER invoices_bad BEFORE INSERT ON public.invoices
    FOR EACH ROW EXECUTE FUNCTION infra.http_publish('billing');
INSERT INTO public.invoices VALUES (1, 10);
DROP TRIGGER invoices_bad ON public.invoices;
GRANT SELECT, INSERT, UPDATE, DELETE ON public.invoices TO http_regress_app;
SET ROLE http_regress_app;
INSERT INTO public.invoices VALUES (1, 10);
RESET ROLE;
GRANT EXECUTE ON FUNCTION infra.http_send(text, jsonb, text, jsonb, text) TO http_regress_app;
SET ROLE http_regress_app;
INSERT INTO public.invoices VALUES (1, 10);
UPDATE public.invoices SET total = 12 WHERE id = 1;
DELETE FROM public.invoices;
RESET ROLE;
SELECT u.endpoint, u.url, (convert_from(u.body, 'UTF8')::jsonb - 'timestamp') #- '{data,txid}' AS body,
       convert_from(u.body, 'UTF8')::jsonb #> '{data,txid}' IS NOT NULL AS has_txid,
       convert_from(u.body, 'UTF8')::jsonb ->> 'timestamp' ~ '^\d{4}-\d\d-\d\dT[0-9:.]+Z$' AS timestamp_ok
  FROM infra.http_outbox_batches b,
       unnest(b.endpoints, b.urls, b.bodies, b.ids) AS u(endpoint, url, body, id)
 ORDER BY u.id;
DROP TABLE public.invoices;
-- A role granted http_publish() makes such triggers on its own tables.
GRANT CREATE ON SCHEMA public TO http_regress_app;
SET ROLE http_regress_app;
CREATE TABLE public.app_events (id integer PRIMARY KEY);
CREATE TRIGGER app_events_hook AFTER INSERT ON public.app_events
    FOR EACH ROW EXECUTE FUNCTION infra.http_publish('billing');
RESET ROLE;
GRANT EXECUTE ON FUNCTION infra.http_publish() TO http_regress_app;
SET ROLE http_regress_app;
CREATE TRIGGER app_events_hook AFTER INSERT ON public.app_events
    FOR EACH ROW EXECUTE FUNCTION infra.http_publish('billing');
INSERT INTO public.app_events VALUES (7);
DROP TABLE public.app_events;
RESET ROLE;
SELECT count(*) FROM infra.http_requests WHERE endpoint = 'billing' AND url IS NULL AND state = 'queued';
REVOKE ALL ON FUNCTION infra.http_publish() FROM http_regress_app;
REVOKE CREATE ON SCHEMA public FROM http_regress_app;
REVOKE ALL ON FUNCTION infra.http_send(text, jsonb, text, jsonb, text) FROM http_regress_app;

-- Dead letters go back to the retries with a fresh schedule.
INSERT INTO infra.http_dead_letters (id, timeline, endpoint, url, method, created_at, attempts, error, outcomes)
    VALUES (-1, 1, 'billing', NULL, 'POST', now(), 3, 'HTTP status 500', '[]');
SELECT infra.http_retry_dead_letters('billing');
SELECT id, attempts, last_error, next_attempt_at <= clock_timestamp() AS due FROM infra.http_retries;
SELECT state FROM infra.http_requests WHERE id = -1;
SELECT infra.http_enable_endpoint('billing'), infra.http_enable_endpoint('none');

DELETE FROM infra.http_outbox_batches;
DELETE FROM infra.http_retries;
DELETE FROM infra.http_endpoints;
REVOKE ALL ON FUNCTION infra.http_send(text, text, text, jsonb, text) FROM http_regress_app;
DROP ROLE http_regress_app;
DROP ROLE http_regress_monitor;
REVOKE ALL ON infra.http_endpoints FROM http_regress_admin;
DROP ROLE http_regress_admin;
DROP EXTENSION infra;
