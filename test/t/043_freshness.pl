# Freshness in seconds: the age of the oldest message waiting in the outbox
# (/metrics), the infra-commit-time header kafka_send's messages carry
# (the commit's own time with track_commit_timestamp), and infra-bridge's
# lag in seconds, ages of the last message written and of the newest on
# the broker, and end-to-end histogram (commit in the source to commit
# in the sink), while PostgreSQL keeps the bridge from writing and after.
use strict;
use warnings;

use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $run = $$;
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $node = infra_node('freshness', conf => <<"CONF");
infra.database = 'postgres'
infra.kafka_brokers = '127.0.0.1:1'
infra.kafka_linger_ms = 5
infra.metrics_listen = '127.0.0.1:$port'
track_commit_timestamp = on
CONF
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra; CREATE TABLE marker (n int)');
my $http = HTTP::Tiny->new(timeout => 10);

sub scrape
{
	my ($url) = @_;
	my $res = $http->get($url);
	return $res->{status} == 200 ? $res->{content} : '';
}

sub sample
{
	my ($metrics, $series) = @_;
	return $metrics =~ /^\Q$series\E (\S+)$/m ? $1 : undef;
}

# --- the outbox's oldest message --------------------------------------------------
my $t1 = "fresh_outbox_$run";
kafka_create_topic($t1, 1);
for my $n (1 .. 3)
{
	$node->safe_psql('postgres', "BEGIN; INSERT INTO marker VALUES ($n); SELECT infra.kafka_send('$t1', 'm$n'); COMMIT;");
}
my $age_series = 'infra_kafka_oldest_pending_age_seconds{database="postgres"}';
ok( wait_until(
		sub { (sample(scrape("http://127.0.0.1:$port/metrics"), $age_series) // 0) >= 3 }, 30),
	'the broker unreachable: the oldest pending message ages past 3 s');
my $first = sample(scrape("http://127.0.0.1:$port/metrics"), $age_series);
sleep 1;
cmp_ok(sample(scrape("http://127.0.0.1:$port/metrics"), $age_series), '>', $first, 'and keeps growing');
is($node->safe_psql('postgres', q{SELECT oldest_pending_age >= interval '3 s' FROM infra.kafka_stats}), 't',
	'kafka_stats agrees');

$node->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_brokers = '$bootstrap'; SELECT pg_reload_conf()");
is($node->safe_psql('postgres', q{SELECT infra.kafka_flush('60 s')}), 't', 'the broker reachable: delivered');
ok(wait_until(sub { (sample(scrape("http://127.0.0.1:$port/metrics"), $age_series) // -1) == 0 }, 30),
	'the outbox empty: age 0');

# infra-commit-time: when the transaction wrote its outbox row, just before
# its commit record (microseconds since 1970).
my ($out, $err) = ('', '');
IPC::Run::run([ 'kcat', '-C', '-b', $bootstrap, '-t', $t1, '-e', '-q', '-f', '%s %h\n' ], '>', \$out, '2>', \$err)
  or die "kcat: $err";
my %sent = map { /^(m\d) .*infra-commit-time=(\d+)/ ? ($1 => $2) : () } split /\n/, $out;
is(scalar keys %sent, 3, 'three messages with infra-commit-time') or diag($out);
my %committed = map { split /\|/ } split /\n/, $node->safe_psql('postgres',
	q{SELECT 'm' || n, (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint FROM marker});
my @off = grep { !defined $sent{$_} || $committed{$_} - $sent{$_} < 0 || $committed{$_} - $sent{$_} > 1_000_000 }
  sort keys %committed;
is("@off", '', 'each within a second before its transaction\'s commit timestamp')
  or diag(join ', ', map { "$_: sent $sent{$_} committed $committed{$_}" } sort keys %committed);

# --- infra-bridge -----------------------------------------------------------------------
my $t2 = "fresh_bridge_$run";
kafka_create_topic($t2, 2);
$node->safe_psql('postgres', 'CREATE TABLE fresh (payload jsonb)');
my $mport = PostgreSQL::Test::Cluster::get_free_port();
my $ini = "$dir/fresh.ini";
open my $fh, '>', $ini or die;
print $fh <<"INI";
[bridge]
conninfo = @{[ $node->connstr('postgres') ]}
brokers = $bootstrap
group = fresh_$run
batch_delay_ms = 50
metrics_listen = 127.0.0.1:$mport

[kafka]
session.timeout.ms = 6000

[route r]
topics = $t2
table = fresh
format = json
column = payload
INI
close $fh;
my $log = "$dir/fresh.log";
my $bridge = bridge_spawn($ini, $log);
my $murl = "http://127.0.0.1:$mport/metrics";
ok(wait_until(sub { scrape($murl) =~ /^infra_bridge_lag_messages\{topic="\Q$t2\E",partition="1"\} 0$/m }, 60),
	'the bridge is assigned both partitions, nothing to do') or diag(slurp_file($log));

# A session holds the table: the bridge reads but cannot write.
my $lock_sql = "BEGIN; LOCK TABLE fresh; SELECT pg_sleep(60);";
my $locker = IPC::Run::start([ 'psql', '-X', '-d', $node->connstr('postgres'), '-c', $lock_sql ],
	'>', \my $lock_out, '2>', \my $lock_err);
ok(wait_until(sub { $node->safe_psql('postgres',
	q{SELECT count(*) FROM pg_locks WHERE relation = 'fresh'::regclass AND mode = 'AccessExclusiveLock' AND granted}) == 1 }, 30),
	'the table is locked');
$node->safe_psql('postgres',
	"SELECT infra.kafka_send('$t2', json_build_object('n', g)::text, 'k' || g, partition => g % 2) FROM generate_series(1, 6) g");
is($node->safe_psql('postgres', q{SELECT infra.kafka_flush('60 s')}), 't', 'six messages for the bridge');

# Nothing written yet: the probe reads the timestamps of the oldest unwritten
# message and of the newest on the broker; they age while the table is held.
my $lagging = sub {
	my $m = scrape($murl);
	my @lags = $m =~ /^infra_bridge_lag_seconds\{route="r",topic="\Q$t2\E",partition="\d"\} (\S+)$/mg;
	my @newest = $m =~ /^infra_bridge_newest_message_age_seconds\{route="r",topic="\Q$t2\E",partition="\d"\} (\S+)$/mg;
	return @lags == 2 && @newest == 2 && !grep({ $_ < 4 } @lags, @newest);
};
ok(wait_until($lagging, 30), 'blocked: lag in seconds and the newest message\'s age, both over 4 s, per partition')
  or diag(scrape($murl) . slurp_file($log));
my $m = scrape($murl);
like($m, qr/^infra_bridge_lag_messages\{topic="\Q$t2\E",partition="\d"\} [1-9]\d*$/m,
	'lag in messages counts what is read but not written');
unlike($m, qr/^infra_bridge_last_written_age_seconds/m, 'nothing written: no last-written age yet');

# Let go: written, caught up.
$node->safe_psql('postgres', q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'BEGIN; LOCK TABLE fresh%'});
$locker->finish;
ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM fresh') == 6 }, 60), 'the six rows written');
ok( wait_until(
		sub {
			my $s = scrape($murl);
			my @lags = $s =~ /^infra_bridge_lag_seconds\{route="r",topic="\Q$t2\E",partition="\d"\} (\S+)$/mg;
			@lags == 2 && !grep { $_ != 0 } @lags;
		},
		30),
	'caught up: lag 0 s');
$m = scrape($murl);
my @written = $m =~ /^infra_bridge_last_written_age_seconds\{route="r",topic="\Q$t2\E",partition="\d"\} (\S+)$/mg;
ok(@written == 2 && !grep({ $_ < 4 } @written), 'the age of the last message written, per partition (over 4 s)')
  or diag($m);
is(sample($m, 'infra_bridge_end_to_end_seconds_count{route="r"}'), 6, 'end to end: six messages from kafka_send');
cmp_ok(sample($m, 'infra_bridge_end_to_end_seconds_sum{route="r"}'), '>=', 6 * 4, 'each over 4 s (they waited)');
is(sample($m, 'infra_bridge_end_to_end_seconds_bucket{route="r",le="1"}'), 0, 'none under a second');
is(sample($m, 'infra_bridge_end_to_end_seconds_bucket{route="r",le="+Inf"}'), 6, 'all counted');
{
	my $file = "$dir/metrics.txt";
	open my $mf, '>', $file or die;
	print $mf $m;
	close $mf;
	my ($o, $e) = ('', '');
	ok(IPC::Run::run([ 'promtool', 'check', 'metrics' ], '<', $file, '>', \$o, '2>', \$e),
		'promtool check metrics accepts it') or diag("$o$e");
}
$bridge->signal('TERM');
$bridge->finish;
is($bridge->full_result(0), 0, 'the bridge exits cleanly');

done_testing();
