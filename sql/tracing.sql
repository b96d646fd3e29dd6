-- Spans: the SQL surface and its bad input.  Export is TAP test 033.
CREATE EXTENSION infra;
-- A span id is 16 hex digits.  Inside a span, infra.traceparent() is in
-- its (sampled) trace: the span of the statement, a child of the open span.
SELECT infra.span_start('work', '{"a": 1}') AS s \gset
SELECT :'s' ~ '^[0-9a-f]{16}$' AS span_id_ok;
SELECT infra.traceparent() ~ '^00-[0-9a-f]{32}-[0-9a-f]{16}-01$' AS sampled_context,
       split_part(infra.traceparent(), '-', 2) AS t \gset
SELECT :'sampled_context' AS sampled_context;
SELECT infra.span_start('inner', NULL, 'CONSUMER') AS i \gset
SELECT split_part(infra.traceparent(), '-', 2) = :'t' AS same_trace;
SELECT infra.span_end(:'i', 'unset');
SELECT infra.span_end(:'s', 'ok', '{"rows": 3}');
-- No span, no context: nothing to propagate.
SELECT infra.traceparent() IS NULL AS no_context;
-- With infra.traceparent a root span joins the caller's trace.
SET infra.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
SELECT infra.span_start('joined') AS j \gset
SELECT split_part(infra.traceparent(), '-', 2) AS trace_id;
SELECT infra.span_end(:'j');
RESET infra.traceparent;

-- Bad input.
SELECT infra.span_start(NULL);
SELECT infra.span_start('');
SELECT infra.span_start(repeat('n', 200));
SELECT infra.span_start('x', '[1]');
SELECT infra.span_start('x', '{}', 'sideways');
SELECT infra.span_end(NULL);
SELECT infra.span_end('0123456789abcdef');
SELECT infra.span_start('y') AS y \gset
SELECT infra.span_end(:'y', 'maybe');
SELECT infra.span_end(:'y', 'ok', '"text"');
SELECT infra.span_end(:'y', 'error');
-- Bad SQLcommenter context is ignored with a warning.
/*traceparent='00-ZZZ'*/ SELECT 'runs anyway' AS result;
/*traceparent='01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/ SELECT 'runs anyway' AS result;

-- The queue's counters.
SELECT capacity > 0 AS has_capacity, exported >= 0 AS counts FROM infra.trace_stats;
DROP EXTENSION infra;
