-- Metrics registry: counters, gauges, histograms, labels, the view, the
-- Prometheus text, and every bad input.
CREATE EXTENSION infra;
SELECT infra.metrics_reset() >= 0 AS reset;

-- Counters are stored and exposed as name_total; labels in any order are
-- one series.
SELECT infra.counter_inc('orders_placed');
SELECT infra.counter_inc('orders_placed', 2.5);
SELECT infra.counter_inc('orders_placed', 1, '{"region": "eu", "channel": "web"}');
SELECT infra.counter_inc('orders_placed_total', 1, '{"channel": "web", "region": "eu"}');
SELECT infra.counter_inc('jobs_total', 0, '{"ok": true, "shard": 3}');
SELECT name, type, labels, value FROM infra.metrics ORDER BY name, labels::text;

-- Gauges go both ways.
SELECT infra.gauge_set('queue_depth', 10);
SELECT infra.gauge_add('queue_depth', -3);
SELECT infra.gauge_add('queue_depth', 0.5, NULL);
SELECT value FROM infra.metrics WHERE name = 'queue_depth';

-- Histograms: buckets are upper bounds (le), cumulative, +Inf last.
SELECT infra.histogram_observe('job_seconds', v, '{"queue": "a"}', '{0.1, 1, 10}')
  FROM unnest(ARRAY[0.05, 0.1, 0.5, 3, 30]) v;
SELECT infra.histogram_observe('job_seconds', 2, '{"queue": "b"}');
SELECT labels, count, sum, bucket_bounds, bucket_counts
  FROM infra.metrics WHERE name = 'job_seconds' ORDER BY labels::text;
-- Prometheus' default buckets for a new histogram without any.
SELECT bucket_bounds FROM infra.metrics WHERE name = 'render_seconds' UNION ALL
SELECT bucket_bounds FROM (SELECT infra.histogram_observe('render_seconds', 0.2)) x,
       infra.metrics WHERE name = 'render_seconds';

-- The exposition: HELP and TYPE once per family, escaped label values.
SELECT infra.gauge_set('escaped', 1, '{"path": "a\"b\\c\nd"}');
SELECT line FROM regexp_split_to_table(infra.metrics_prometheus(), E'\n') line
 WHERE line ~ '^(# (HELP|TYPE) )?(orders_placed_total|queue_depth|job_seconds|escaped)'
 ORDER BY line;
-- Built-in series are there too.
SELECT count(*) > 0 AS has_builtin
  FROM regexp_split_to_table(infra.metrics_prometheus(), E'\n') line
 WHERE line LIKE '# TYPE infra_query_calls_total counter';

-- Bad names.
SELECT infra.counter_inc('');
SELECT infra.counter_inc('9lives');
SELECT infra.counter_inc('orders-placed');
SELECT infra.counter_inc(repeat('x', 200));
SELECT infra.counter_inc('infra_kafka_delivered');
SELECT infra.counter_inc(NULL);
-- Bad labels.
SELECT infra.counter_inc('orders_placed', 1, '{"bad-name": "x"}');
SELECT infra.counter_inc('orders_placed', 1, '{"__name__": "x"}');
SELECT infra.counter_inc('orders_placed', 1, '{"nested": {"a": 1}}');
SELECT infra.counter_inc('orders_placed', 1, '{"n": null}');
SELECT infra.counter_inc('orders_placed', 1, '["region"]');
SELECT infra.counter_inc('orders_placed', 1, jsonb_build_object('long', repeat('v', 300)));
SELECT infra.histogram_observe('job_seconds', 1, '{"le": "1"}');
-- Bad values.
SELECT infra.counter_inc('orders_placed', -1);
SELECT infra.counter_inc('orders_placed', 'NaN');
SELECT infra.gauge_set('queue_depth', 'Infinity');
SELECT infra.gauge_set('queue_depth', NULL);
-- Type and bucket conflicts.
SELECT infra.gauge_set('orders_placed_total', 1);
SELECT infra.histogram_observe('queue_depth', 1);
SELECT infra.histogram_observe('job_seconds', 1, '{"queue": "c"}', '{1, 2}');
SELECT infra.histogram_observe('job_seconds', 1, '{"queue": "a"}', '{0.1, 1, 11}');
SELECT infra.histogram_observe('bad_buckets', 1, '{}', '{2, 1}');
SELECT infra.histogram_observe('bad_buckets', 1, '{}', '{}');
SELECT infra.histogram_observe('bad_buckets', 1, '{}', '{1, NULL}');
SELECT infra.gauge_set('job_seconds_count', 1);
-- name_sum of a histogram, both ways round; other names are free.
SELECT infra.gauge_set('pre_sum', 1);
SELECT infra.histogram_observe('pre', 1);
SELECT infra.histogram_observe('post', 1);
SELECT infra.gauge_set('post_sum', 1);
SELECT infra.histogram_observe('post_sum_x', 1);
-- Nothing of the above was recorded.
SELECT name, type, labels, value FROM infra.metrics
 WHERE name IN ('orders_placed_total', 'queue_depth', 'bad_buckets', 'job_seconds_count')
 ORDER BY name, labels::text;

-- Reset: one metric (by either name of a counter), then all.
SELECT infra.metrics_reset('orders_placed');
SELECT infra.metrics_reset('job_seconds');
SELECT name FROM infra.metrics ORDER BY name;
SELECT infra.metrics_reset();
SELECT count(*) FROM infra.metrics;
-- A family removed with its last series may come back with another type.
SELECT infra.histogram_observe('queue_depth', 1);
SELECT name, type FROM infra.metrics;
SELECT infra.metrics_reset();

-- Only superusers (or those granted it) reset.
CREATE ROLE metrics_user;
SET ROLE metrics_user;
SELECT infra.counter_inc('by_anyone');
SELECT infra.metrics_reset();
RESET ROLE;
DROP ROLE metrics_user;
SELECT infra.metrics_reset();
DROP EXTENSION infra;
