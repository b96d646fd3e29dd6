# A real failover: etcd and three Patroni-managed PostgreSQL 15 nodes with
# infra preloaded, kafka_send under steady load (the client records which
# transactions it saw commit), infra-bridge consuming the topic back into
# the cluster through a multi-host conninfo.  The primary's postmaster is
# SIGKILLed and Patroni promotes the synchronous standby; later a
# switchover back to it.  With Patroni's synchronous mode and
# infra.kafka_wait_for_standbys = 'synchronous_standby_names':
# - every transaction the client saw commit has its message in Kafka;
# - no message in Kafka belongs to a transaction the new primary lacks;
# - duplicates only under the same infra-msg-id;
# - the bridge reconnects by itself and its table holds each message once.
# Then the same failover with asynchronous replication and no wait, whose
# losses and phantoms are reported, not asserted (what async costs).
#
# Needs Debian's patroni and etcd-server (make deps); runs on PostgreSQL 15
# only (Patroni drives Debian's server binaries).
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use InfraTest;
use InfraPatroni;

InfraPatroni::require_patroni();
my $pg15 = $InfraPatroni::pg15;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $ha = InfraPatroni->start($dir,
	parameters => {
		'infra.kafka_brokers' => "'$bootstrap'",
		'infra.kafka_wait_for_standbys' => 'synchronous_standby_names' });
my $rw = $ha->{rw};
sub members { return $ha->members }
sub leader { return $ha->leader }
sub sync_standby { return $ha->sync_standby }
sub psql_rw { return $ha->psql_rw(@_) }
sub kill_leader { return $ha->kill_leader }

my $first = leader();
note "leader: $first->{name}, sync standby: " . sync_standby()->{name};

my $topic = "infra_t_patroni_$$";
kafka_create_topic($topic, 1);
psql_rw(qq{
CREATE EXTENSION infra;
CREATE TABLE ha_sent (n integer PRIMARY KEY);
CREATE TABLE ha_sink (payload jsonb);
});
ok(wait_until(sub { psql_rw("SELECT state FROM infra.worker_status") eq 'running' }, 60),
	'the infra worker serves the leader');

# --- the bridge, through the multi-host conninfo --------------------------------
open my $bfh, '>', "$dir/bridge.ini" or die;
print $bfh <<"INI";
[bridge]
conninfo = $rw
brokers = $bootstrap
group = ha_$$
batch_size = 500
batch_delay_ms = 50

[route sink]
topics = $topic
table = ha_sink
format = json
dedupe = on
INI
close $bfh;
my $bridge = bridge_spawn("$dir/bridge.ini", "$dir/bridge.log");

# --- the load: one transaction per message, recorded as the client saw it -----
sub start_load
{
	my ($tag) = @_;
	unlink "$dir/stop";
	my $start = $tag eq 'sync' ? 0 : 1_000_000;
	my $script = <<"SH";
n=$start
while [ ! -f '$dir/stop' ]; do
	n=\$((n + 1))
	if '$pg15/psql' -XAtq -v ON_ERROR_STOP=1 -d '$rw' -c "BEGIN; INSERT INTO ha_sent VALUES (\$n); SELECT infra.kafka_send('$topic', '{\\"n\\": \$n}', 'k' || (\$n % 4)); COMMIT;" >/dev/null 2>>'$dir/load_$tag.err'; then
		echo \$n >> '$dir/committed_$tag'
	else
		echo \$n >> '$dir/uncertain_$tag'
		sleep 0.05
	fi
done
SH
	return IPC::Run::start([ 'bash', '-c', $script ]);
}
sub lines { my ($f) = @_; return () unless -f $f; return grep { /\S/ } split /\n/, slurp_file($f) }

# consume: every message of the topic as [n, infra-msg-id].
sub consume
{
	my ($out, $err);
	IPC::Run::run([ 'kcat', '-b', $bootstrap, '-C', '-t', $topic, '-o', 'beginning', '-e', '-q',
			'-f', '%s\t%h\n' ], '>', \$out, '2>', \$err, IPC::Run::timeout(120));
	return map {
		my ($v, $h) = split /\t/, $_, 2;
		my ($n) = $v =~ /"n": (\d+)/;
		my ($id) = ($h // '') =~ /infra-msg-id=([^,]+)/;
		[ $n, $id ];
	} split /\n/, $out;
}

# check(TAG, SURVIVING_LEADER): what Kafka, the new primary and the client say.
sub check
{
	my ($tag, $strict) = @_;
	my @committed = lines("$dir/committed_$tag");
	my %in_db = map { $_ => 1 } split /\n/, psql_rw('SELECT n FROM ha_sent');
	ok(wait_until(sub { psql_rw("SELECT infra.kafka_flush('5 s')") eq 't' }, 120),
		"$tag: the new primary's outbox drains");
	my @msgs = grep { defined $_->[0] && ($tag eq 'sync' ? $_->[0] < 1_000_000 : $_->[0] >= 1_000_000) } consume();
	my (%in_kafka, %ids_of);
	foreach my $m (@msgs)
	{
		$in_kafka{ $m->[0] }++;
		$ids_of{ $m->[0] }{ $m->[1] // '' } = 1;
	}
	my @lost = grep { !$in_kafka{$_} } @committed;
	my @lost_db = grep { !$in_db{$_} } @committed;
	my @phantom = grep { !$in_db{$_} } keys %in_kafka;
	my @unsent = grep { !$in_kafka{$_} } keys %in_db;
	my @dup_same = grep { $in_kafka{$_} > 1 && keys %{ $ids_of{$_} } == 1 } keys %in_kafka;
	my @dup_other = grep { keys %{ $ids_of{$_} } > 1 } keys %in_kafka;
	my $report = sprintf('%s failover: %d transactions seen committed, %d messages in Kafka (%d distinct); '
		  . 'lost (seen committed, not in Kafka): %d; lost from the database: %d; phantom (in Kafka, not in the new primary): %d; '
		  . 'duplicates under one infra-msg-id: %d, under different ids: %d',
		$tag, scalar @committed, scalar @msgs, scalar keys %in_kafka, scalar @lost, scalar @lost_db,
		scalar @phantom, scalar @dup_same, scalar @dup_other);
	diag $report;
	if ($strict)
	{
		cmp_ok(scalar @committed, '>', 20, "$tag: the client committed a steady stream");
		is(scalar @lost, 0, "$tag: every transaction the client saw commit has its message in Kafka");
		is(scalar @lost_db, 0, "$tag: and is on the new primary");
		is(scalar @phantom, 0, "$tag: no message of a transaction the new primary lacks");
		is(scalar @unsent, 0, "$tag: every transaction on the new primary has its message in Kafka");
		is(scalar @dup_other, 0, "$tag: duplicates only under the same infra-msg-id");
	}
	return { kafka => \%in_kafka, msgs => scalar @msgs };
}

my $load = start_load('sync');
ok(wait_until(sub { scalar(lines("$dir/committed_sync")) >= 30 }, 60), 'load running');
my ($old, $killed_at) = kill_leader();
note "SIGKILLed the postmaster of $old->{name}";
my $new;
ok(wait_until(sub { $new = leader(); $new && $new->{name} ne $old->{name} }, 60),
	'Patroni promotes another node');
my $promoted_at = time;
my $committed_at_kill = scalar lines("$dir/committed_sync");
ok( wait_until(
		sub { scalar(lines("$dir/committed_sync")) > $committed_at_kill + 20 }, 60),
	'the load commits again on the new primary');
my $recovered_at = time;
diag sprintf('failover: new leader %s %.1f s after the kill; commits again %.1f s after the kill',
	$new->{name}, $promoted_at - $killed_at, $recovered_at - $killed_at);
my $t_deliver = time;
ok(wait_until(sub { psql_rw("SELECT infra.kafka_flush('1 s')") eq 't' }, 60), 'delivery resumes');
diag sprintf('delivery caught up %.1f s after the kill', time - $killed_at);

# --- a switchover back to the old primary ---------------------------------------
# It rejoins as a replica (pg_rewind).  In synchronous mode Patroni switches
# over only to a synchronous standby: make both replicas synchronous.
ok( wait_until(
		sub { my $m = members(); ($m->{ $old->{name} }{role} // '') =~ /replica|sync_standby/ && ($m->{ $old->{name} }{state} // '') =~ /running|streaming/ },
		120),
	"the old primary $old->{name} rejoined as a replica");
my ($sout, $serr) = ('', '');
IPC::Run::run([ 'patronictl', '-c', $new->{yml}, 'edit-config', '--force', '-s', 'synchronous_node_count=2' ],
	'>', \$sout, '2>', \$serr, IPC::Run::timeout(60));
ok(wait_until(sub { (members()->{ $old->{name} }{role} // '') eq 'sync_standby' }, 60),
	"$old->{name} is a synchronous standby") or diag "$sout\n$serr";
my $target = $old;
($sout, $serr) = ('', '');
IPC::Run::run([ 'patronictl', '-c', $new->{yml}, 'switchover', '--leader', $new->{name},
		'--candidate', $target->{name}, '--force' ], '>', \$sout, '2>', \$serr, IPC::Run::timeout(60));
ok(wait_until(sub { my $l = leader(); $l && $l->{name} eq $target->{name} }, 60),
	"patronictl switchover back to $target->{name}") or diag "$sout\n$serr";
my $at_switch = scalar lines("$dir/committed_sync");
ok(wait_until(sub { scalar(lines("$dir/committed_sync")) > $at_switch + 20 }, 60),
	'the load commits on the switched-to primary');
open my $stop, '>', "$dir/stop" or die;
close $stop;
$load->finish;

my $seen = check('sync', 1);

# The bridge followed the primary: its table holds every message once.
my $distinct = scalar keys %{ $seen->{kafka} };
ok( wait_until(
		sub { psql_rw("SELECT count(*) FROM ha_sink WHERE (payload->>'n')::int < 1000000") == $distinct }, 120),
	"the bridge wrote the topic's $distinct distinct messages");
is(psql_rw("SELECT count(*) - count(DISTINCT payload->>'n') FROM ha_sink"), '0',
	'each exactly once (duplicates in Kafka share an infra-msg-id: dedupe drops them)');
my @connects = slurp_file("$dir/bridge.log") =~ /connected to PostgreSQL/g;
cmp_ok(scalar @connects, '>', 1, 'the bridge reconnected by itself (' . scalar(@connects) . ' connections in its log)');
ok($bridge->pumpable, 'and is still running');

# --- the same with asynchronous replication and no wait: report the cost ------
$sout = $serr = '';
IPC::Run::run([ 'patronictl', '-c', $target->{yml}, 'edit-config', '--force',
		'-s', 'synchronous_mode=false', '-s', 'synchronous_node_count=1', '-p', "infra.kafka_wait_for_standbys=''" ],
	'>', \$sout, '2>', \$serr, IPC::Run::timeout(60));
ok(wait_until(sub { psql_rw('SHOW synchronous_standby_names') eq '' && psql_rw('SHOW infra.kafka_wait_for_standbys') eq '' }, 60),
	'asynchronous replication, no wait for standbys') or diag "$sout\n$serr";
$load = start_load('async');
ok(wait_until(sub { scalar(lines("$dir/committed_async")) >= 30 }, 60), 'async load running');
($old, $killed_at) = kill_leader();
ok(wait_until(sub { $new = leader(); $new && $new->{name} ne $old->{name} }, 60),
	'Patroni promotes another node (async)');
$committed_at_kill = scalar lines("$dir/committed_async");
ok(wait_until(sub { scalar(lines("$dir/committed_async")) > $committed_at_kill + 20 }, 60),
	'the load commits again (async)');
open $stop, '>', "$dir/stop" or die;
close $stop;
$load->finish;
check('async', 0);

$bridge->signal('TERM');
$bridge->finish;
$ha->stop;
done_testing();
