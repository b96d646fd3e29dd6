# infra-bridge against a real broker and a real PostgreSQL: every message
# exactly once through SIGKILLs, a PostgreSQL restart and a second member
# of the group dying; poison messages to dead letters; clean SIGTERM;
# SIGHUP reload; invalid configurations refused.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $node = infra_node('bridge', conf => "infra.database = 'postgres'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
my $connstr = $node->connstr('postgres');
# Topics and groups of this run only (a broker may outlive one run).
my $run = $$;

# Produce lines "key:value" from a file with kcat.
sub produce_file
{
	my ($topic, $file) = @_;
	my ($out, $err);
	IPC::Run::run([ 'kcat', '-P', '-b', $bootstrap, '-t', $topic, '-K', ':', '-l', $file ],
		'>', \$out, '2>', \$err)
	  or die "kcat: $err";
}

sub produce_json
{
	my ($topic, $from, $to, $poison_every) = @_;
	my $file = "$dir/$topic-$from.txt";
	open my $fh, '>', $file or die;
	for my $i ($from .. $to)
	{
		if ($poison_every && $i % $poison_every == 0)
		{
			print $fh "k$i:{\"n\": $i, broken\n";
		}
		else
		{
			print $fh "k$i:{\"n\":$i}\n";
		}
	}
	close $fh;
	produce_file($topic, $file);
}

sub write_config
{
	my ($name, $body) = @_;
	my $file = "$dir/$name.ini";
	open my $fh, '>', $file or die;
	print $fh $body;
	close $fh;
	return $file;
}

sub config_for
{
	my ($name, $topic, $table, %opt) = @_;
	my $extra = $opt{extra} // '';
	# A member that dies is noticed after the session timeout: keep it short.
	my $kafka = $opt{kafka} // "session.timeout.ms = 6000\nheartbeat.interval.ms = 500\n";
	return write_config($name, <<"INI");
[bridge]
conninfo = $connstr
brokers = $bootstrap
group = $name
batch_size = @{[ $opt{batch_size} // 5000 ]}
batch_delay_ms = 50
@{[ $opt{metrics} ? "metrics_listen = $opt{metrics}" : '' ]}

[kafka]
$kafka
[route events]
topics = $topic
table = $table
format = json
column = payload
partition_column = part
offset_column = off
$extra
INI
}

my @bridges;

sub bridge_start
{
	my ($ini, $log) = @_;
	my $h = bridge_spawn($ini, $log);
	push @bridges, $h;
	return $h;
}

sub count_rows
{
	my ($table) = @_;
	return $node->safe_psql('postgres', "SELECT count(*) FROM $table");
}

sub distinct_rows
{
	my ($table) = @_;
	return $node->safe_psql('postgres', "SELECT count(DISTINCT (part, off)) FROM $table");
}

# --- 100,000 messages over 4 partitions --------------------------------------
kafka_create_topic("bridge_a_$run", 4);
$node->safe_psql('postgres', 'CREATE TABLE events_a (id bigserial, payload jsonb, part int, off bigint)');
produce_json("bridge_a_$run", 1, 100000);
my $mport = PostgreSQL::Test::Cluster::get_free_port();
my $ini = config_for("g_a_$run", "bridge_a_$run", 'events_a', metrics => "127.0.0.1:$mport");
my $log = "$dir/bridge_a.log";
my $b = bridge_start($ini, $log);
ok(wait_until(sub { count_rows('events_a') >= 100000 }, 180), '100,000 messages arrive')
  or diag(slurp_file($log));
sleep 1;
is(count_rows('events_a'), 100000, 'exactly 100,000 rows');
is(distinct_rows('events_a'), 100000, 'no duplicates');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT payload->>'n') FROM events_a}), 100000,
	'every message once');
is($node->safe_psql('postgres', q{SELECT sum(next_offset) FROM infra.bridge_offsets WHERE consumer_group LIKE 'g_a_%'}),
	100000, 'stored offsets account for every message');
is($node->safe_psql('postgres', q{SELECT count(*) FROM infra.bridge_offsets WHERE consumer_group LIKE 'g_a_%'}),
	4, 'one offset row per partition');

# /metrics: the figures of what just happened, valid for promtool.
use HTTP::Tiny;
my $http = HTTP::Tiny->new(timeout => 10);
my $res = $http->get("http://127.0.0.1:$mport/metrics");
is($res->{status}, 200, 'GET /metrics');
my $metrics = $res->{content};
like($metrics, qr/^infra_bridge_consumed_total\{route="events"\} 100000$/m, 'consumed per route');
like($metrics, qr/^infra_bridge_written_total\{route="events"\} 100000$/m, 'written per route');
like($metrics, qr/^infra_bridge_dead_lettered_total\{route="events"\} 0$/m, 'dead-lettered per route');
like($metrics, qr/^infra_bridge_batch_seconds_count [1-9]\d*$/m, 'batch latency histogram');
ok(wait_until(sub { ($http->get("http://127.0.0.1:$mport/metrics")->{content} =~ tr/\n//) && $http->get("http://127.0.0.1:$mport/metrics")->{content} =~ /^infra_bridge_lag_messages\{topic="bridge_a_$run",partition="\d"\} 0$/m }, 30),
	'lag per partition, 0 once consumed');
like($metrics, qr/^infra_bridge_postgresql_up 1$/m, 'PostgreSQL up');
is($http->get("http://127.0.0.1:$mport/healthz")->{status}, 200, '/healthz');
{
	my $file = "$dir/bridge_metrics.txt";
	open my $mf, '>', $file or die;
	print $mf $metrics;
	close $mf;
	my ($out, $err) = ('', '');
	ok(IPC::Run::run([ 'promtool', 'check', 'metrics' ], '<', $file, '>', \$out, '2>', \$err),
		'promtool check metrics accepts it') or diag("$out$err");
}

# SIGTERM: a clean exit 0.
$b->signal('TERM');
$b->finish;
is($b->full_result(0), 0, 'SIGTERM: exit status 0');
like(slurp_file($log), qr/"msg":"stopped: 100000 rows written/, 'and a last log line with the totals');
unlike(slurp_file($log), qr/"level":"error"/, 'no errors logged');

# --- SIGKILL, again and again, mid-stream -------------------------------------
kafka_create_topic("bridge_k_$run", 4);
$node->safe_psql('postgres', 'CREATE TABLE events_k (id bigserial, payload jsonb, part int, off bigint)');
produce_json("bridge_k_$run", 1, 100000);
$ini = config_for("g_k_$run", "bridge_k_$run", 'events_k', batch_size => 2000);
$log = "$dir/bridge_k.log";
my $kills = 0;
for my $round (1 .. 4)
{
	my $before = count_rows('events_k');
	$b = bridge_start($ini, $log);
	wait_until(sub { count_rows('events_k') > $before + 5000 }, 60);
	$b->signal('KILL');
	$b->finish;
	$kills++;
}
$b = bridge_start($ini, $log);
ok(wait_until(sub { count_rows('events_k') >= 100000 }, 180), "after $kills SIGKILLs every message arrives")
  or diag(count_rows('events_k'));
sleep 1;
is(count_rows('events_k'), 100000, 'exactly once: 100,000 rows');
is(distinct_rows('events_k'), 100000, 'no duplicates');

# --- PostgreSQL restarted mid-stream --------------------------------------------
produce_json("bridge_k_$run", 100001, 150000);
wait_until(sub { count_rows('events_k') > 105000 }, 60);
$node->restart;
ok(wait_until(sub { count_rows('events_k') >= 150000 }, 180), 'after a PostgreSQL restart every message arrives')
  or diag(slurp_file($log));
sleep 1;
is(count_rows('events_k'), 150000, 'exactly once across the restart');
is(distinct_rows('events_k'), 150000, 'no duplicates');
like(slurp_file($log), qr/connected to PostgreSQL.*connected to PostgreSQL/s, 'the bridge reconnected');
$b->signal('TERM');
$b->finish;

# --- two members of one group, one killed ---------------------------------------
kafka_create_topic("bridge_g_$run", 4);
$node->safe_psql('postgres', 'CREATE TABLE events_g (id bigserial, payload jsonb, part int, off bigint)');
produce_json("bridge_g_$run", 1, 30000);
$ini = config_for("g_g_$run", "bridge_g_$run", 'events_g', batch_size => 1000);
my $b1 = bridge_start($ini, "$dir/bridge_g1.log");
ok(wait_until(sub { slurp_file("$dir/bridge_g1.log") =~ /assigned 4 partitions/ }, 60), 'the first member takes all 4 partitions');
my $b2 = bridge_start($ini, "$dir/bridge_g2.log");
ok( wait_until(sub { slurp_file("$dir/bridge_g2.log") =~ /assigned [1-3] partitions/ }, 60),
	'a second member gets a share of them');
ok(wait_until(sub { count_rows('events_g') >= 30000 }, 120), 'together they write the first 30,000');
$b1->signal('KILL');
$b1->finish;
# Messages for the dead member's partitions too: only a take-over writes them.
produce_json("bridge_g_$run", 30001, 60000);
ok( wait_until(sub { slurp_file("$dir/bridge_g2.log") =~ /assigned 4 partitions/ }, 60),
	'the survivor takes over every partition');
ok(wait_until(sub { count_rows('events_g') >= 60000 }, 180), 'and writes the rest');
sleep 1;
is(count_rows('events_g'), 60000, 'exactly once overall');
is(distinct_rows('events_g'), 60000, 'no duplicates');
$b2->signal('TERM');
$b2->finish;

# --- the defaults recover in seconds after a SIGKILL -----------------------------
# No session settings of the test's own: a member killed without leaving the
# group is noticed after the bridge's default session timeout (6 s), not
# the 45 s of librdkafka's, which kept a restarted bridge idle that long.
kafka_create_topic("bridge_r_$run", 2);
$node->safe_psql('postgres', 'CREATE TABLE events_r (id bigserial, payload jsonb, part int, off bigint)');
produce_json("bridge_r_$run", 1, 100);
$ini = config_for("g_r_$run", "bridge_r_$run", 'events_r', kafka => '');
$b = bridge_start($ini, "$dir/bridge_r1.log");
ok(wait_until(sub { count_rows('events_r') >= 100 }, 60), 'with the default settings a bridge writes');
$b->signal('KILL');
$b->finish;
produce_json("bridge_r_$run", 101, 200);
my $restart_at = time();
$b = bridge_start($ini, "$dir/bridge_r2.log");
ok(wait_until(sub { count_rows('events_r') >= 200 }, 90), 'a bridge restarted after a SIGKILL writes the rest');
my $took = time() - $restart_at;
cmp_ok($took, '<', 25, "within seconds of its start ($took s)");
$b->signal('TERM');
$b->finish;

# --- poison messages interleaved ----------------------------------------------------
kafka_create_topic("bridge_p_$run", 2);
$node->safe_psql('postgres',
	'CREATE TABLE events_p (id bigserial, payload jsonb CHECK (payload ? \'n\'), part int, off bigint)');
produce_json("bridge_p_$run", 1, 5000, 100);
produce_file("bridge_p_$run", write_config('p_extra', "x1:{\"m\": 1}\n"));    # violates the CHECK
$ini = config_for("g_p_$run", "bridge_p_$run", 'events_p');
$log = "$dir/bridge_p.log";
$b = bridge_start($ini, $log);
ok( wait_until(
		sub { count_rows('events_p') + $node->safe_psql('postgres', 'SELECT count(*) FROM infra.bridge_dead_letters') >= 5001 },
		120),
	'poisoned topic consumed');
sleep 1;
is(count_rows('events_p'), 4950, 'all 4,950 good messages written');
is($node->safe_psql('postgres', q{SELECT count(*) FROM infra.bridge_dead_letters WHERE route = 'events' AND topic LIKE 'bridge_p_%' AND error LIKE '22P02:%json%'}),
	50, '50 invalid JSON messages in dead letters, with the error');
is($node->safe_psql('postgres', q{SELECT count(*) FROM infra.bridge_dead_letters WHERE topic LIKE 'bridge_p_%' AND error LIKE '23514:%'}),
	1, 'the constraint violation too');
is($node->safe_psql('postgres', q{SELECT convert_from(payload, 'UTF8') FROM infra.bridge_dead_letters WHERE topic LIKE 'bridge_p_%' AND "offset" = (SELECT min("offset") FROM infra.bridge_dead_letters WHERE topic LIKE 'bridge_p_%' AND error LIKE '23514:%')}),
	'{"m": 1}', 'the raw payload is kept');

# SIGHUP with a broken file keeps the running configuration.
open my $fh, '>>', $ini or die;
print $fh "bogus_key = 1\n";
close $fh;
$b->signal('HUP');
ok(wait_until(sub { slurp_file($log) =~ /not reloaded: keeping the one in force/ }, 30),
	'SIGHUP with an invalid file: the old configuration stays');
produce_json("bridge_p_$run", 5001, 5100);
ok(wait_until(sub { count_rows('events_p') >= 4950 + 99 }, 60), 'and the bridge goes on consuming');

# SIGHUP with a valid file that adds a route: the consumer is rebuilt and
# the new route's topic consumed, the old one's where it stopped.
kafka_create_topic("bridge_h_$run", 1);
$node->safe_psql('postgres', 'CREATE TABLE events_h (payload jsonb, part int, off bigint)');
produce_json("bridge_h_$run", 1, 300);
my $body = slurp_file($ini);
$body =~ s/^bogus_key = 1\n//m;
$body .= "\n[route added]\ntopics = bridge_h_$run\ntable = events_h\nformat = json\noffset_column = off\npartition_column = part\n";
open $fh, '>', $ini or die;
print $fh $body;
close $fh;
my $before_reload = count_rows('events_p');
$b->signal('HUP');
ok(wait_until(sub { slurp_file($log) =~ /configuration .* reloaded/ }, 30), 'SIGHUP with a valid file: reloaded');
ok(wait_until(sub { count_rows('events_h') >= 300 }, 60), 'the added route is consumed');
produce_json("bridge_p_$run", 5101, 5200);
ok(wait_until(sub { count_rows('events_p') >= $before_reload + 99 }, 60), 'the old route goes on');
sleep 1;
is(count_rows('events_h'), 300, 'exactly once after the reload');
is(distinct_rows('events_p'), count_rows('events_p'), 'no duplicates on the old route either');
$b->signal('TERM');
$b->finish;
is($b->full_result(0), 0, 'SIGTERM after the reload attempt: exit 0');

# --- invalid configurations ---------------------------------------------------------
sub bridge_run_once
{
	my ($file) = @_;
	my ($out, $err);
	IPC::Run::run([ 'infra-bridge', '--config', $file ], '<', \undef, '>', \$out, '2>', \$err,
		IPC::Run::timeout(60));
	return ($? >> 8, $err);
}
my ($rc, $err) = bridge_run_once(write_config('bad_key', "[bridge]\nconninfo = $connstr\n[route r]\ntopics = t\ntable = events_a\nformat = json\nwhat = 1\n"));
isnt($rc, 0, 'unknown key: exit non-zero');
like($err, qr/bad_key\.ini:7: unknown key \\"what\\" in section \[route r\]/, '... naming file, line and key');
($rc, $err) = bridge_run_once(write_config('bad_conninfo', "[bridge]\nconninfo = host=x password=secret123 nonsense\n[route r]\ntopics = t\ntable = events_a\n"));
isnt($rc, 0, 'bad conninfo: exit non-zero');
like($err, qr/invalid conninfo/, '... says so');
unlike($err, qr/secret123/, '... without the password');
($rc, $err) = bridge_run_once(config_for('g_missing', "bridge_a_$run", 'no_such_table'));
isnt($rc, 0, 'missing table: exit non-zero');
like($err, qr/route \\"events\\": table \\"no_such_table\\" does not exist/, '... naming route and table');
($rc, $err) = bridge_run_once(config_for('g_col', "bridge_a_$run", 'events_a', extra => "key_column = nope\n"));
isnt($rc, 0, 'missing column: exit non-zero');
like($err, qr/column \\"nope\\" does not exist/, '... naming the column');

$node->stop;
done_testing();
