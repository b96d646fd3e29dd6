# Exactly once into Kafka (infra.kafka_delivery = exactly_once, the WAL
# outbox) against a real three-node Kafka cluster (KRaft; topics and the
# transaction state log replicated three times, min.insync.replicas 2).
# Under steady load, the broker leading the topic's partition 0 is
# SIGKILLed (and brought back), then the broker leading the transaction
# state partition of the worker's first transactional id, its transaction
# coordinator; each time the worker is SIGKILLed too while the cluster
# recovers (rounds in flight, a commit waiting for the new coordinator),
# so the new worker must fence and abort through the moved leaders and
# coordinator; then eight more times at random points of its rounds.  A read_committed consumer then sees exactly the set of
# messages PostgreSQL committed, once each, per key in commit order; a
# read_uncommitted consumer sees the aborted copies (so the check can
# fail); infra-bridge, reading read_committed with dedupe off, ends with
# exactly the committed set.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use InfraTest;
use InfraExactlyOnce;

my $dir = PostgreSQL::Test::Utils::tempdir;
my $broker = src_path('test/kafka/broker.sh');
sub cluster { return kafka_cluster(@_) }
sub node_of { return cluster('node', "$dir/kafka", $_[0]) }
sub leaders { return kafka_cluster_leaders("$dir/kafka", $_[0]) }

cluster('start', "$dir/kafka");
my $bootstrap = cluster('bootstrap', "$dir/kafka");
pass("a three-node Kafka cluster: $bootstrap");
my $t = "infra_t_cluster_eos_$$";
cluster('create-topic', "$dir/kafka", $t, 3);

my $plugins = plugins_conf();
my $node = infra_node('kcluster_eos', conf => "infra.kafka_brokers = '$bootstrap'\n"
	  . "wal_level = logical\nmax_replication_slots = 4\n"
	  . "infra.kafka_outbox = wal\ninfra.kafka_delivery = exactly_once\nrestart_after_crash = on\n$plugins");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
my $db_oid = $node->safe_psql('postgres', "SELECT oid FROM pg_database WHERE datname = 'postgres'");
my $sysid = $node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'infra_kafka_$db_oid' AND confirmed_flush_lsn IS NOT NULL"
			) eq '1';
		},
		60),
	'the worker has its slot');
eos_setup($node, $t);
$node->safe_psql('postgres', 'SELECT send_batch(100)');
is($node->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')"), 't', 'the worker delivers to the cluster');

my $bridge = eos_bridge($dir, $node, $node->connstr('postgres'), $bootstrap, $t, "kce_$$",
	"session.timeout.ms = 6000\nheartbeat.interval.ms = 1000\n");

# The transaction coordinator of a transactional id leads the partition
# abs(String.hashCode(id)) % 50 of __transaction_state.
sub txn_state_partition
{
	my ($id) = @_;
	my $h = 0;
	$h = (31 * $h + $_) % 4294967296 for unpack 'C*', $id;
	$h -= 4294967296 if $h >= 2147483648;
	return $h == -2147483648 ? 0 : abs($h) % 50;
}

sub committed
{
	my ($rc, $n) = eval { $node->psql('postgres', 'SELECT count(*) FROM sent') };
	return defined $rc && $rc == 0 ? $n : 0;
}

# SIGKILL the worker (PostgreSQL restarts), wait for the new one and start
# the sender again.
sub kill_worker
{
	my ($when) = @_;
	my $pid = worker_pid($node, 'postgres');
	kill 'KILL', $pid;
	ok(eos_worker_back($node, $pid), "the worker, SIGKILLed $when, comes back");
	eos_sender_start($node, 50, 20);
}

# 1,000 messages a second in transactions of 20.
eos_sender_start($node, 50, 20);
ok(wait_until(sub { committed() >= 1000 }, 60), 'load running');

# --- the leader of partition 0 ------------------------------------------------
my $at_kill = committed();
my ($victim, $moved, $took) = kafka_cluster_kill_leader("$dir/kafka", $t, 0);
note "SIGKILLed broker $victim, the leader of partition 0";
ok($moved, 'its partitions get new leaders');
note sprintf('new leaders %.1f s after the kill', $took);
kill_worker('with rounds in flight to the new leaders');
ok(wait_until(sub { committed() >= $at_kill + 1000 }, 90), 'commits go on meanwhile');
system($broker, 'start', node_of($victim)) == 0 or die;
pass("broker $victim back");

# --- the transaction coordinator of the worker's first producer ---------------
my $txn_part = txn_state_partition("infra-$sysid-$db_oid-0");
my %state_leader = leaders('__transaction_state');
my $coordinator = $state_leader{$txn_part};
like($coordinator // '', qr/^[123]$/, "the coordinator of the worker's first transactional id is node "
	  . ($coordinator // '?') . " (partition $txn_part of __transaction_state)");
system($broker, 'kill', node_of($coordinator)) == 0 or die;
my $at_ckill = committed();
select(undef, undef, undef, 0.5);
kill_worker('while its commits wait for a coordinator');
ok( wait_until(
		sub {
			my %l = leaders('__transaction_state');
			($l{$txn_part} // '-1') !~ /^(-1|\Q$coordinator\E)$/;
		}, 60),
	'another broker becomes its coordinator');
ok(wait_until(sub { committed() >= $at_ckill + 1000 }, 90), 'commits go on');
system($broker, 'start', node_of($coordinator)) == 0 or die;
pass("broker $coordinator back");
# Kafka's own faults abort nothing (librdkafka waits for the new leaders
# and coordinator): a few SIGKILLs of the worker at random points of its
# rounds, on the cluster, leave aborted copies for read_uncommitted to see.
for my $i (1 .. 8)
{
	select(undef, undef, undef, 0.2 + rand(0.4));
	kill_worker("at a random point ($i)");
}
select(undef, undef, undef, 2.0);
eos_sender_stop();

ok(wait_until(sub { $node->safe_psql('postgres', "SELECT infra.kafka_flush('5 s')") eq 't' }, 180),
	'everything committed is delivered');
my $read = eos_check($node, $bootstrap, $t, 'leader, coordinator and worker SIGKILLed');
my $uncommitted = () = eos_consume($bootstrap, $t, '-X', 'isolation.level=read_uncommitted');
cmp_ok($uncommitted, '>', $read, 'a read_uncommitted consumer sees aborted copies (so these checks can fail)');

# --- the bridge, read_committed, no dedupe --------------------------------------
eos_check_sink($node);

$bridge->signal('TERM');
$bridge->finish;
cluster('kill', "$dir/kafka");
$node->stop;
done_testing();
