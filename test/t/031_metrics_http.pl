# The metrics server: GET /metrics validated by promtool and scraped by a
# real Prometheus whose HTTP API then returns our series; GET /healthz;
# the registry's cardinality bound.
use strict;
use warnings;

use File::Temp qw(tempdir);
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $port = PostgreSQL::Test::Cluster::get_free_port();
my $node = infra_node('metrics_http', conf => <<"CONF");
infra.metrics_listen = '127.0.0.1:$port'
infra.metrics_max_series = 20
infra.database = 'postgres'
CONF
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
my $http = HTTP::Tiny->new(timeout => 10);
my $base = "http://127.0.0.1:$port";

ok(wait_until(sub { $http->get("$base/healthz")->{status} == 200 }, 30),
	'/healthz answers 200 once the worker runs');
is($http->get("$base/healthz")->{content}, "ok\n", '/healthz says ok');

# Some of everything: registry series and the built-ins they feed.
$node->safe_psql('postgres', q{
SELECT infra.counter_inc('orders_placed', 3, '{"channel": "web"}');
SELECT infra.gauge_set('queue_depth', 42);
SELECT infra.histogram_observe('job_seconds', v) FROM unnest(ARRAY[0.003, 0.2, 4]) v;
SELECT infra.rate_limit('api', 100, '1 second');
INSERT INTO infra.circuit_breakers (name) VALUES ('payments');
SELECT infra.breaker_allow('payments');
});

my $res = $http->get("$base/metrics");
is($res->{status}, 200, 'GET /metrics: 200');
like($res->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4}, 'exposition content type');
my $body = $res->{content};
like($body, qr/^orders_placed_total\{channel="web"\} 3$/m, 'counter with its labels');
like($body, qr/^queue_depth 42$/m, 'gauge');
like($body, qr/^job_seconds_bucket\{le="0\.005"\} 1$/m, 'histogram bucket (cumulative)');
like($body, qr/^job_seconds_bucket\{le="\+Inf"\} 3$/m, 'histogram +Inf bucket');
like($body, qr/^job_seconds_count 3$/m, 'histogram count');
like($body, qr/^infra_worker_up\{database="postgres"\} 1$/m, 'built-in: worker up');
like($body, qr/^infra_rate_limit_allowed_total\{limiter=""\} 1$/m, 'built-in: rate-limit decisions');
like($body, qr/^infra_breaker_state\{breaker="payments",owner="[^"]+",state="closed"\} 1$/m,
	'built-in: breaker state');
like($body, qr/^infra_query_calls_total \d+$/m, 'built-in: query metrics summary');
like($body, qr/^# TYPE infra_kafka_delivered_total counter$/m, 'built-in: Kafka family');

# promtool is Prometheus' own parser and linter.
my $file = "${PostgreSQL::Test::Utils::tmp_check}/metrics.txt";
open my $fh, '>', $file or die;
print $fh $body;
close $fh;
my ($out, $err) = ('', '');
my $ok = IPC::Run::run([ 'promtool', 'check', 'metrics' ], '<', $file, '>', \$out, '2>', \$err);
ok($ok, 'promtool check metrics accepts the exposition') or diag("$out$err");

is($http->get("$base/nope")->{status}, 404, 'unknown path: 404');
is($http->request('POST', "$base/metrics")->{status}, 405, 'POST: 405');

# Cardinality: 20 series at most, the next is refused and counted.
$node->safe_psql('postgres', 'SELECT infra.metrics_reset()');
$node->safe_psql('postgres',
	q{SELECT infra.counter_inc('per_user', 1, jsonb_build_object('user', i)) FROM generate_series(1, 20) i});
my ($rc, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT infra.counter_inc('per_user', 1, '{"user": "21"}')});
isnt($rc, 0, 'series 21 of 20 is refused');
like($stderr, qr/too many metric series: infra\.metrics_max_series is 20/, 'with a clear error');
like($stderr, qr/HINT:.*fewer distinct label values/, 'and a hint');
is($node->safe_psql('postgres', q{SELECT count(*) FROM infra.metrics}), 20, 'the registry holds 20');
$node->safe_psql('postgres', q{SELECT infra.counter_inc('per_user', 1, '{"user": "1"}')});
is($node->safe_psql('postgres', q{SELECT value FROM infra.metrics WHERE labels->>'user' = '1'}),
	2, 'existing series still count when full');
like($http->get("$base/metrics")->{content}, qr/^infra_metrics_series_rejected_total 1$/m,
	'refusals are counted');
$node->safe_psql('postgres', 'SELECT infra.metrics_reset()');

# A real Prometheus scrapes us; its query API returns our series.
$node->safe_psql('postgres', q{SELECT infra.counter_inc('orders_placed', 5, '{"channel": "shop"}')});
my $pdir = tempdir(DIR => ${PostgreSQL::Test::Utils::tmp_check});
my $pport = PostgreSQL::Test::Cluster::get_free_port();
open $fh, '>', "$pdir/prometheus.yml" or die;
print $fh <<"YML";
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: infra
    static_configs:
      - targets: ['127.0.0.1:$port']
YML
close $fh;
my $prom = IPC::Run::start(
	[
		'prometheus', "--config.file=$pdir/prometheus.yml",
		"--storage.tsdb.path=$pdir/data", "--web.listen-address=127.0.0.1:$pport"
	],
	'>', "$pdir/prometheus.log", '2>&1');
my $query = sub {
	my ($q) = @_;
	my $r = $http->get("http://127.0.0.1:$pport/api/v1/query?query=$q");
	return undef unless $r->{success};
	my $data = eval { decode_json($r->{content}) } or return undef;
	return $data->{data}{result};
};
my $result;
ok( wait_until(
		sub {
			$result = $query->('orders_placed_total');
			return $result && @$result > 0;
		},
		60),
	'Prometheus scraped orders_placed_total')
  or diag(slurp_file("$pdir/prometheus.log"));
is($result->[0]{metric}{channel}, 'shop', 'with its label');
is($result->[0]{value}[1], '5', 'and its value');
my $up = $query->('up{job="infra"}');
is($up->[0]{value}[1], '1', 'Prometheus sees the target up');
my $worker_up = $query->('infra_worker_up');
is($worker_up->[0]{value}[1], '1', 'built-in series reach Prometheus');
$prom->kill_kill;

# A worker that stopped makes /healthz fail.
$node->safe_psql('postgres', q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'infra worker'});
my $health;
ok( wait_until(
		sub {
			$health = $http->get("$base/healthz");
			return $health->{status} == 503;
		},
		10),
	'/healthz: 503 while the worker is down');
like($health->{content}, qr/infra worker for database "postgres" is /, 'saying which');
ok(wait_until(sub { $http->get("$base/healthz")->{status} == 200 }, 30),
	'/healthz: 200 again once the postmaster restarted it');

$node->stop;

# A malformed address is refused with a clear message.
my $bad = infra_node('metrics_bad', conf => "infra.metrics_listen = 'localhost'\n");
my $started = $bad->start(fail_ok => 1);
my $log = slurp_file($bad->logfile);
like($log, qr/invalid infra\.metrics_listen "localhost"/, 'malformed infra.metrics_listen: clear message');
$bad->stop if $started;

done_testing();
