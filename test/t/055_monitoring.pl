# monitoring/: the Prometheus rules pass promtool's check and their unit
# tests; the Grafana dashboard parses, promtool accepts every expression
# in it, and every metric the rules and the dashboard name is one that a
# running infra and infra-bridge expose; then a real Prometheus scrapes
# both with the rules loaded, the broker is stopped, and the alert goes
# firing through Prometheus' API, and resolves once the broker is back.
use strict;
use warnings;

use File::Copy;
use HTTP::Tiny;
use IPC::Run;
use JSON::PP qw(decode_json);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $rules = src_path('monitoring/prometheus/infra.rules.yml');
my $rule_tests = src_path('monitoring/prometheus/infra.rules.test.yml');
my $dashboard = src_path('monitoring/grafana/infra-overview.json');
my $dir = PostgreSQL::Test::Utils::tempdir;
my $run = $$;

sub run_ok
{
	my ($cmd, $what) = @_;
	my ($out, $err) = ('', '');
	my $ok = IPC::Run::run($cmd, '<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(120));
	ok($ok, $what) or diag("$out$err");
	return $out;
}

# --- promtool --------------------------------------------------------------------
run_ok([ 'promtool', 'check', 'rules', $rules ], 'promtool check rules');
# promtool test rules resolves rule_files relative to the test file.
copy($rules, "$dir/infra.rules.yml") or die;
copy($rule_tests, "$dir/infra.rules.test.yml") or die;
run_ok([ 'promtool', 'test', 'rules', "$dir/infra.rules.test.yml" ], 'promtool test rules: every alert fires and stays silent as it should');
my @alerts = slurp_file($rules) =~ /^\s*- alert: (\S+)$/mg;
my %tested = map { $_ => 1 } slurp_file($rule_tests) =~ /alertname: (\S+)$/mg;
is(join(' ', grep { !$tested{$_} } @alerts), '', scalar(@alerts) . ' alerts, each with a unit test');
my @runbooks = slurp_file(src_path('monitoring/README.md')) =~ /^### (\S+)$/mg;
my %runbook = map { lc($_) => 1 } @runbooks;
is(join(' ', grep { !$runbook{ lc $_ } } @alerts), '', 'each with a runbook paragraph in monitoring/README.md');

# --- a running infra and infra-bridge, on a broker of this test's own ------------------
my $kdir = "$dir/kafka";
system(src_path('test/kafka/broker.sh'), 'start', $kdir) == 0 or die 'broker';
END { system(src_path('test/kafka/broker.sh'), 'stop', $kdir) if $kdir; }
my $bootstrap = slurp_file("$kdir/bootstrap");
chomp $bootstrap;
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $node = infra_node('monitoring', conf => <<"CONF");
infra.database = 'postgres'
infra.kafka_brokers = '$bootstrap'
infra.kafka_linger_ms = 5
infra.metrics_listen = '127.0.0.1:$port'
CONF
$node->start;
$node->safe_psql('postgres', "CREATE EXTENSION infra; CREATE TABLE sink (payload jsonb)");
$node->safe_psql('postgres', "SELECT infra.kafka_send('mon_$run', '{\"n\": 1}')");
is($node->safe_psql('postgres', q{SELECT infra.kafka_flush('60 s')}), 't', 'a message delivered');
my $bport = PostgreSQL::Test::Cluster::get_free_port();
open my $fh, '>', "$dir/bridge.ini" or die;
print $fh <<"INI";
[bridge]
conninfo = @{[ $node->connstr('postgres') ]}
brokers = $bootstrap
group = mon_$run
metrics_listen = 127.0.0.1:$bport

[route r]
topics = mon_$run
table = sink
format = json
column = payload
INI
close $fh;
my $bridge = bridge_spawn("$dir/bridge.ini", "$dir/bridge.log");
ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM sink') == 1 }, 60), 'the bridge wrote it')
  or diag(slurp_file("$dir/bridge.log"));

# A statement of 300 ms for the query latency histogram.
$node->safe_psql('postgres', 'SELECT pg_sleep(0.3)');

my $http = HTTP::Tiny->new(timeout => 10);
for my $target ([ 'infra', $port ], [ 'bridge', $bport ])
{
	my $res = $http->get("http://127.0.0.1:$target->[1]/metrics");
	is($res->{status}, 200, "scraped $target->[0]");
	open my $out, '>', "$dir/$target->[0].prom" or die;
	print $out $res->{content};
	close $out;
}
{
	my $m = slurp_file("$dir/infra.prom");
	my @buckets = $m =~ /^infra_query_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$/mg;
	my %le = @buckets;
	my @counts = map { $buckets[ 2 * $_ + 1 ] } 0 .. $#buckets / 2;
	ok(!grep({ $counts[$_] < $counts[ $_ - 1 ] } 1 .. $#counts), 'query latency buckets are cumulative');
	my ($count) = $m =~ /^infra_query_duration_seconds_count (\S+)$/m;
	my ($calls) = $m =~ /^infra_query_calls_total (\S+)$/m;
	is($count, $calls, 'the histogram counts every statement infra_query_calls_total counts');
	is($le{'+Inf'}, $count, '+Inf bucket = count');
	cmp_ok($le{'0.5'} - $le{'0.25'}, '>=', 1, 'the 300 ms statement is in the (0.25, 0.5] bucket');
}
my $check = run_ok(
	[ $ENV{INFRA_PYTHON} // 'python3', src_path('test/monitoring_check.py'), $rules, $dashboard, $dir, "$dir/infra.prom", "$dir/bridge.prom" ],
	'the dashboard parses, and every metric the rules and the dashboard name is exposed');
note($check);
run_ok([ 'promtool', 'check', 'rules', "$dir/dashboard.rules.yml" ], 'promtool accepts every expression of the dashboard');

# --- Prometheus with the rules: the broker stops, the alert fires ------------------
my $pport = PostgreSQL::Test::Cluster::get_free_port();
open $fh, '>', "$dir/prometheus.yml" or die;
print $fh <<"YML";
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $rules
scrape_configs:
  - job_name: infra
    static_configs:
      - targets: ['127.0.0.1:$port']
  - job_name: infra-bridge
    static_configs:
      - targets: ['127.0.0.1:$bport']
YML
close $fh;
my $prom = IPC::Run::start(
	[
		'prometheus', "--config.file=$dir/prometheus.yml",
		"--storage.tsdb.path=$dir/prometheus", "--web.listen-address=127.0.0.1:$pport"
	],
	'>', "$dir/prometheus.log", '2>&1');
END { $prom->kill_kill if $prom; }

# alert_state(NAME): "firing", "pending" or "" (none), from /api/v1/alerts.
sub alert_state
{
	my ($name) = @_;
	my $r = $http->get("http://127.0.0.1:$pport/api/v1/alerts");
	return '' unless $r->{success};
	my $data = eval { decode_json($r->{content}) } or return '';
	my @a = grep { $_->{labels}{alertname} eq $name } @{ $data->{data}{alerts} };
	return @a ? $a[0]{state} : '';
}

sub query_value
{
	my ($q) = @_;
	my $r = $http->get("http://127.0.0.1:$pport/api/v1/query?query=$q");
	return undef unless $r->{success};
	my $data = eval { decode_json($r->{content}) } or return undef;
	my $result = $data->{data}{result};
	return @$result ? $result->[0]{value}[1] : undef;
}
ok(wait_until(sub { (query_value('infra_kafka_broker_up') // '') eq '1' && (query_value('up{job="infra-bridge"}') // '') eq '1' }, 60),
	'Prometheus scrapes both, the broker up')
  or diag(slurp_file("$dir/prometheus.log"));
is(alert_state('InfraKafkaBrokerDown'), '', 'no InfraKafkaBrokerDown');

system(src_path('test/kafka/broker.sh'), 'stop', $kdir) == 0 or die 'stopping the broker';
my $stopped = time;
# A message waits: the worker's rounds find the broker gone.
$node->safe_psql('postgres', "SELECT infra.kafka_send('mon_$run', '{\"n\": 2}')");
ok(wait_until(sub { alert_state('InfraKafkaBrokerDown') eq 'pending' || alert_state('InfraKafkaBrokerDown') eq 'firing' }, 60),
	'broker stopped: InfraKafkaBrokerDown pending');
ok(wait_until(sub { alert_state('InfraKafkaBrokerDown') eq 'firing' }, 150), 'then firing (for: 1m)')
  or diag(slurp_file("$dir/prometheus.log"));
note(sprintf('firing %d s after the broker stopped', time - $stopped));

system(src_path('test/kafka/broker.sh'), 'start', $kdir) == 0 or die 'starting the broker';
ok(wait_until(sub { alert_state('InfraKafkaBrokerDown') eq '' }, 120), 'broker back: the alert resolves');
ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM sink') == 2 }, 120),
	'and the waiting message reaches the table through the bridge');

$bridge->signal('TERM');
$bridge->finish;
done_testing();
