# Exactly once into Kafka through a real failover: three Patroni-managed
# PostgreSQL 15 nodes in synchronous mode, infra.kafka_delivery =
# exactly_once and infra.kafka_wait_for_standbys =
# 'synchronous_standby_names'; once with the WAL outbox, the worker's slot
# kept on the replicas by Patroni (a permanent logical slot: PostgreSQL 15
# has no failover slots), once with the table outbox (replicated as any
# table; its progress records name message ids, no slot needed).
# Under steady load the primary's postmaster is SIGKILLed; Patroni promotes
# the synchronous standby, whose worker (same system identifier, so the
# same transactional ids) fences the old primary's producers, reads the
# committed progress back and decodes from its copy of the slot, which
# Patroni advanced up to a second before: what Kafka has is skipped.
# A read_committed consumer then sees exactly the set of messages the new
# primary holds committed, once each, per key in commit order; every
# transaction the client saw commit is among them; infra-bridge
# (read_committed, dedupe off) ends with exactly that set.  The check can
# fail: with the skip disabled it counted 330 duplicates (the slot copy
# lags); aborted copies are not asserted (at this load a round is seldom
# open when the primary dies: TAP 025 and 096 show them).
#
# The worker's slot is infra_kafka_5 (the database postgres has oid 5 in a
# fresh cluster); Patroni keeps it on the replicas as a permanent slot.
# Patroni 3.0.2 drops output_plugin_libraries (it does not know it): it is
# set in a custom_conf file.
#
# Needs Debian's patroni and etcd-server (make deps); PostgreSQL 15 only.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use InfraTest;
use InfraPatroni;
use InfraExactlyOnce;

InfraPatroni::require_patroni();
my $pg15 = $InfraPatroni::pg15;
my $plugins = plugins_conf("$pg15/postgres");

my $bootstrap = kafka_bootstrap();

# The worker's slot is kept on the replicas only for the WAL outbox.
my %outbox_setup = (
	wal => {
		parameters => {
			'infra.kafka_outbox' => 'wal',
			'wal_level' => 'logical',
			'hot_standby_feedback' => "'on'",
			'max_replication_slots' => 10 },
		dcs => "slots:\n  infra_kafka_5:\n    type: logical\n    database: postgres\n    plugin: infra" },
	table => { parameters => { 'infra.kafka_outbox' => 'table' } });

for my $outbox (qw(wal table))
{
	my $dir = PostgreSQL::Test::Utils::tempdir;
	my $ha = InfraPatroni->start($dir,
		parameters => {
			'infra.kafka_brokers' => "'$bootstrap'",
			'infra.kafka_wait_for_standbys' => 'synchronous_standby_names',
			'infra.kafka_delivery' => 'exactly_once',
			%{ $outbox_setup{$outbox}{parameters} } },
		conf => $plugins,
		($outbox_setup{$outbox}{dcs} ? (dcs => $outbox_setup{$outbox}{dcs}) : ()));
	my $t = "infra_t_patroni_eos_${outbox}_$$";
	my $rw_node = setup($ha, $outbox, $t);
	my $bridge = eos_bridge($dir, $rw_node, $ha->{rw}, $bootstrap, $t, "hae_${outbox}_$$");
	failover($ha, $dir, $outbox);
	check($ha, $dir, $rw_node, $t, $outbox);
	$bridge->signal('TERM');
	$bridge->finish;
	$ha->stop;
}

# setup(HA, OUTBOX, TOPIC): the extension, the worker serving, the
# sending function; with the WAL outbox the slot on every member.
# Returns a node-like object whose safe_psql runs on the primary.
sub setup
{
	my ($ha, $outbox, $t) = @_;
	kafka_create_topic($t, 1);
	$ha->psql_rw('CREATE EXTENSION infra');
	is($ha->psql_rw("SELECT oid FROM pg_database WHERE datname = 'postgres'"), '5', 'the database postgres has oid 5');
	ok(wait_until(sub { $ha->psql_rw("SELECT state FROM infra.worker_status") eq 'running' }, 60),
		"the infra worker serves the leader ($outbox outbox)");
	if ($outbox eq 'wal')
	{
		ok( wait_until(
				sub {
					$ha->psql_rw("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'infra_kafka_5' AND plugin = 'infra' AND confirmed_flush_lsn IS NOT NULL") eq '1';
				},
				60),
			'the WAL outbox: the slot infra_kafka_5 serves on the leader');
	}
	my $rw_node = bless { ha => $ha }, 'RwNode';
	eos_setup($rw_node, $t);
	$ha->psql_rw('SELECT send_batch(50)');
	is($ha->psql_rw("SELECT infra.kafka_flush('60 s')"), 't', 'delivered from the leader');
	return $rw_node if $outbox ne 'wal';
	# Patroni copies the slot to each replica (restarting it once) and
	# advances the copies every loop.
	ok( wait_until(
			sub {
				my $leader = $ha->leader or return 0;
				$ha->sync_standby or return 0;
				my @replicas = grep { $_->{name} ne $leader->{name} } @{ $ha->{nodes} };
				!grep { $ha->psql_at($_, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'infra_kafka_5'") ne '1' }
				  @replicas;
			},
			120),
		"Patroni keeps the worker's slot on both replicas");
	return $rw_node;
}

# InfraExactlyOnce's helpers talk to a node: this one runs them on the primary.
sub RwNode::safe_psql { my ($self, $db, $sql) = @_; return $self->{ha}->psql_rw($sql) }

# failover(HA, DIR, OUTBOX): the load (transactions of 10 messages through
# the read-write conninfo; the client records the last value of each batch
# it saw commit: one sender, a batch's values are consecutive), the
# primary's postmaster SIGKILLed, the load going on on the new primary.
sub failover
{
	my ($ha, $dir, $outbox) = @_;
	my $load = IPC::Run::start([ 'bash', '-c', <<"SH" ]);
while [ ! -f '$dir/stop' ]; do
	if out=\$('$pg15/psql' -XAtq -v ON_ERROR_STOP=1 -d '$ha->{rw}' -c "SELECT send_batch(10), currval('vals')" 2>>'$dir/load.err'); then
		echo "\$out" >> '$dir/committed'
	else
		sleep 0.05
	fi
done
SH
	ok(wait_until(sub { batches($dir) >= 30 }, 60), "load running ($outbox outbox)");
	my $sync;
	ok(wait_until(sub { $sync = $ha->sync_standby }, 60), 'a synchronous standby');
	my ($old, $killed_at) = $ha->kill_leader;
	note "SIGKILLed the postmaster of $old->{name}";
	my $new;
	ok(wait_until(sub { $new = $ha->leader; $new && $new->{name} ne $old->{name} }, 60), 'Patroni promotes another node');
	is($new->{name}, $sync->{name}, "the synchronous standby ($sync->{name})");
	my $at_kill = batches($dir);
	ok(wait_until(sub { batches($dir) > $at_kill + 30 }, 90), 'the load commits again on the new primary');
	open my $stop, '>', "$dir/stop" or die;
	close $stop;
	$load->finish;
}

sub committed_lasts
{
	my ($dir) = @_;
	return -f "$dir/committed" ? map { (split /\|/)[1] } grep { /\|/ } split /\n/, slurp_file("$dir/committed") : ();
}
sub batches { return scalar(committed_lasts(@_)) }

# check(HA, DIR, NODE, TOPIC, OUTBOX): everything delivered, exactly once.
sub check
{
	my ($ha, $dir, $rw_node, $t, $outbox) = @_;
	ok(wait_until(sub { $ha->psql_rw("SELECT infra.kafka_flush('5 s')") eq 't' }, 120), 'everything committed is delivered');
	my %in_sent = map { $_ => 1 } split /\n/, $ha->psql_rw('SELECT n FROM sent');
	my @lost = grep { !$in_sent{$_} } committed_lasts($dir);
	is(scalar @lost, 0, 'every batch the client saw commit is on the new primary');
	my $read = eos_check($rw_node, $bootstrap, $t, "synchronous failover, $outbox outbox");
	my $uncommitted = () = eos_consume($bootstrap, $t, '-X', 'isolation.level=read_uncommitted');
	note "read_uncommitted: $uncommitted messages, read_committed: $read";
	eos_check_sink($rw_node);
}

done_testing();
