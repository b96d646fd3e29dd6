# A real Kafka cluster: three KRaft nodes, the topic replicated three times
# with min.insync.replicas = 2.  Under steady kafka_send load, the broker
# leading the partitions infra produces to is SIGKILLed mid-stream (and
# brought back), then the active controller.  Every committed message
# arrives, with no duplicate (the idempotent producer; a duplicate would
# have to share its infra-msg-id), per key in commit order; infra-bridge,
# consuming the same topic from the same cluster, writes each message
# exactly once through the leader changes.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use InfraTest;

my $dir = PostgreSQL::Test::Utils::tempdir;
my $broker = src_path('test/kafka/broker.sh');
sub cluster { return kafka_cluster(@_) }
cluster('start', "$dir/kafka");
my $bootstrap = cluster('bootstrap', "$dir/kafka");
pass("a three-node Kafka cluster: $bootstrap");
my $topic = "infra_t_cluster_$$";
cluster('create-topic', "$dir/kafka", $topic, 3);
my %leader_of = kafka_cluster_leaders("$dir/kafka", $topic);
is(scalar keys %leader_of, 3, 'three partitions, each with a leader');

my $node = infra_node('kcluster', conf => "infra.kafka_brokers = '$bootstrap'\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION infra;
CREATE TABLE sink (payload jsonb, part integer, off bigint);
});
my $connstr = $node->connstr('postgres');

open my $bfh, '>', "$dir/bridge.ini" or die;
print $bfh <<"INI";
[bridge]
conninfo = $connstr
brokers = $bootstrap
group = kc_$$
batch_size = 500
batch_delay_ms = 50

[kafka]
session.timeout.ms = 6000
heartbeat.interval.ms = 1000

[route sink]
topics = $topic
table = sink
format = json
column = payload
partition_column = part
offset_column = off
dedupe = on
INI
close $bfh;
my $bridge = bridge_spawn("$dir/bridge.ini", "$dir/bridge.log");

# The load: one client, one transaction per message, keys k0..k7 in turn,
# each message's n in commit order; what the client saw commit is recorded.
my $psql = `which psql`;
chomp $psql;
my $load = IPC::Run::start([ 'bash', '-c', <<"SH" ]);
n=0
while [ ! -f '$dir/stop' ]; do
	n=\$((n + 1))
	if '$psql' -XAtq -v ON_ERROR_STOP=1 -d '$connstr' -c "SELECT infra.kafka_send('$topic', '{\\"n\\": \$n}', 'k' || (\$n % 8))" >/dev/null 2>>'$dir/load.err'; then
		echo \$n >> '$dir/committed'
	fi
done
SH
sub committed { return -f "$dir/committed" ? scalar(split /\n/, slurp_file("$dir/committed")) : 0 }
sub node_of { return cluster('node', "$dir/kafka", $_[0]) }

ok(wait_until(sub { committed() >= 200 }, 60), 'load running');

# The broker leading partition 0 (and whatever else it leads) dies.
my $at_kill = committed();
my ($victim, $moved, $took) = kafka_cluster_kill_leader("$dir/kafka", $topic, 0);
note "SIGKILLed broker $victim, the leader of partition 0";
ok($moved, 'its partitions get new leaders');
note sprintf('new leaders %.1f s after the kill', $took);
ok(wait_until(sub { committed() >= $at_kill + 200 }, 60), 'commits go on meanwhile');
system($broker, 'start', node_of($victim)) == 0 or die;
pass("broker $victim back");

# Then the active controller.
my $controller = cluster('controller', "$dir/kafka");
like($controller, qr/^[123]$/, "the active controller is node $controller");
system($broker, 'kill', node_of($controller)) == 0 or die;
my $at_ckill = committed();
ok( wait_until(
		sub { my $c = eval { cluster('controller', "$dir/kafka") } // ''; $c =~ /^[123]$/ && $c ne $controller },
		60),
	'another controller takes over');
ok(wait_until(sub { committed() >= $at_ckill + 200 }, 60), 'commits go on');
system($broker, 'start', node_of($controller)) == 0 or die;

open my $stop, '>', "$dir/stop" or die;
close $stop;
$load->finish;
my @committed = split /\n/, slurp_file("$dir/committed");
ok(wait_until(sub { $node->safe_psql('postgres', "SELECT infra.kafka_flush('5 s')") eq 't' }, 120),
	'the outbox drains');

my ($out, $err);
IPC::Run::run([ 'kcat', '-b', $bootstrap, '-C', '-t', $topic, '-o', 'beginning', '-e', '-q',
		'-f', '%p\t%o\t%k\t%s\t%h\n' ], '>', \$out, '2>', \$err, IPC::Run::timeout(120));
my (%count, %id_of, %by_partition);
foreach my $line (split /\n/, $out)
{
	my ($p, $o, $k, $v, $h) = split /\t/, $line;
	my ($n) = $v =~ /"n": (\d+)/;
	my ($id) = $h =~ /infra-msg-id=([^,]+)/;
	$count{$n}++;
	$id_of{$n}{$id} = 1;
	push @{ $by_partition{$p} }, [ $o, $k, $n ];
}
my @missing = grep { !$count{$_} } @committed;
my @dups = grep { $count{$_} > 1 } keys %count;
my @dup_ids = grep { keys %{ $id_of{$_} } > 1 } keys %count;
diag sprintf('%d committed, %d in Kafka, %d missing, %d duplicated (%d under different ids)',
	scalar @committed, scalar keys %count, scalar @missing, scalar @dups, scalar @dup_ids);
is(scalar @missing, 0, 'every committed message arrived');
is(scalar @dup_ids, 0, 'duplicates, if any, share their infra-msg-id');
is(scalar @dups, 0, 'and there are none (idempotent producer)');
my $out_of_order = 0;
foreach my $p (keys %by_partition)
{
	my %last;
	foreach my $m (sort { $a->[0] <=> $b->[0] } @{ $by_partition{$p} })
	{
		my ($o, $k, $n) = @$m;
		$out_of_order++ if defined $last{$k} && $n <= $last{$k};
		$last{$k} = $n;
	}
}
is($out_of_order, 0, 'per key, Kafka has the messages in commit order');

my $distinct = scalar keys %count;
ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM sink') >= $distinct }, 120),
	"the bridge wrote the topic's $distinct messages");
sleep 1;
is($node->safe_psql('postgres', "SELECT count(*) || '/' || count(DISTINCT payload->>'n') FROM sink"),
	"$distinct/$distinct", 'each exactly once, through the leader changes');

$bridge->signal('TERM');
$bridge->finish;
cluster('kill', "$dir/kafka");
$node->stop;
done_testing();
