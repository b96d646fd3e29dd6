# Replay from SQL: infra.bridge_seek moves a group's stored offsets in the
# caller's transaction, and the running bridges read again from there at
# their next batch, without a stop and without a write of the old position
# slipping in.  Under load with two members of one group: a transaction
# that empties the table and seeks every partition to 0 ends with every
# message exactly once.  A seek by time on one partition, with its rows
# deleted in the same transaction, brings back exactly those rows.  A seek
# rolled back does nothing.  infra.bridge_positions shows each partition's
# end, lag and lag in seconds.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $run = $$;
my $node = infra_node('bridge_seek', conf => "infra.database = 'postgres'\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION infra;
CREATE TABLE events (payload jsonb NOT NULL, part integer NOT NULL, off bigint NOT NULL)});
my $connstr = $node->connstr('postgres');
my $topic = "seek_$run";
my $group = "seek_group_$run";
my $partitions = 4;
kafka_create_topic($topic, $partitions);

# Produce messages {"n": from..to, "phase": PHASE}, keyed so that they
# spread over the partitions.
sub produce
{
	my ($from, $to, $phase) = @_;
	my $file = "$dir/produce_$from";
	open my $fh, '>', $file or die;
	print $fh map { "k$_:{\"n\":$_,\"phase\":\"$phase\"}\n" } $from .. $to;
	close $fh;
	my ($out, $err);
	IPC::Run::run([ 'kcat', '-P', '-b', $bootstrap, '-t', $topic, '-K', ':', '-l', $file ], '>', \$out, '2>', \$err)
	  or die "kcat: $err";
}

my $ini = "$dir/seek.ini";
open my $fh, '>', $ini or die;
print $fh <<"INI";
[bridge]
conninfo = $connstr
brokers = $bootstrap
group = $group
batch_size = 2000
batch_delay_ms = 50
log_level = debug

[kafka]
session.timeout.ms = 6000
heartbeat.interval.ms = 500

[route events]
topics = $topic
table = events
format = json
column = payload
partition_column = part
offset_column = off
INI
close $fh;

my @members = map { bridge_spawn($ini, "$dir/member$_.log") } 1 .. 2;

sub count_is
{
	my ($want, $timeout) = @_;
	return wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM events') == $want }, $timeout // 120);
}

# Every message once: no (partition, offset) twice, every n of 1..total.
sub exactly_once
{
	my ($total, $what) = @_;
	is( $node->safe_psql('postgres',
			q{SELECT count(*), count(DISTINCT (part, off)), count(DISTINCT (payload->>'n')::int),
			  min((payload->>'n')::int), max((payload->>'n')::int) FROM events}),
		"$total|$total|$total|1|$total", $what);
}

produce(1, 20000, 'A');
ok(count_is(20000), 'two members wrote the first 20,000 messages')
  or diag(slurp_file("$dir/member1.log"), slurp_file("$dir/member2.log"));

# Under load: a producer runs while a transaction empties the table and
# seeks every partition to 0.
my $producer = IPC::Run::start([ 'perl', '-e', qq{
	for my \$chunk (0 .. 19) {
		open my \$k, '|-', 'kcat', '-P', '-b', '$bootstrap', '-t', '$topic', '-K', ':' or die;
		print \$k map { "k\$_:{\\"n\\":\$_,\\"phase\\":\\"B\\"}\\n" } (20001 + \$chunk * 1000) .. (20000 + (\$chunk + 1) * 1000);
		close \$k;
		select undef, undef, undef, 0.1;
	}
} ]);
wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM events') > 21000 }, 60);
is( $node->safe_psql('postgres', qq{
BEGIN;
DELETE FROM events;
SELECT infra.bridge_seek('$group', '$topic', NULL, 0);
COMMIT}), $partitions, 'bridge_seek moved every partition, in the transaction that emptied the table');
$producer->finish;
ok(count_is(40000, 180), 'after the seek, the bridges wrote everything again: 40,000 rows')
  or diag($node->safe_psql('postgres', 'SELECT count(*) FROM events'));
sleep 1;
exactly_once(40000, 'each of the 40,000 messages exactly once after a replay under load');
my $logs = slurp_file("$dir/member1.log") . slurp_file("$dir/member2.log");
like($logs, qr/a stored offset was moved \(infra.bridge_seek\)/, 'a member saw the seek');

# The positions: every partition caught up, its end reported.
ok( wait_until(sub {
		$node->safe_psql('postgres',
			"SELECT count(*) FROM infra.bridge_positions WHERE consumer_group = '$group' AND lag = 0 AND lag_seconds = 0"
			  . " AND end_offset = next_offset AND end_seen_at > now() - interval '30 s'") == $partitions }, 60),
	'bridge_positions: every partition at its end, lag 0 and 0 seconds');
is( $node->safe_psql('postgres',
		"SELECT sum(end_offset) FROM infra.bridge_positions WHERE consumer_group = '$group'"),
	40000, 'the ends add up to the messages produced');

# A seek rolled back changes nothing.
$node->safe_psql('postgres', qq{
BEGIN;
DELETE FROM events;
SELECT infra.bridge_seek('$group', '$topic', NULL, 0);
ROLLBACK});
sleep 2;
exactly_once(40000, 'a seek rolled back with its delete: nothing replayed');

# A seek by time on partition 0: its phase C rows deleted in the same
# transaction come back, once.
sleep 2;
my $mark = $node->safe_psql('postgres', 'SELECT now()');
sleep 1;
produce(40001, 44000, 'C');
ok(count_is(44000), 'phase C written');
my $c0 = $node->safe_psql('postgres', q{SELECT count(*) FROM events WHERE part = 0 AND payload->>'phase' = 'C'});
cmp_ok($c0, '>', 0, "partition 0 holds $c0 phase C messages");
is( $node->safe_psql('postgres', qq{
BEGIN;
DELETE FROM events WHERE part = 0 AND payload->>'phase' = 'C';
SELECT infra.bridge_seek('$group', '$topic', 0, '$mark'::timestamptz);
COMMIT}), 1, 'a seek by time of partition 0');
ok(count_is(44000), 'its rows came back') or diag($node->safe_psql('postgres', 'SELECT count(*) FROM events'));
sleep 1;
exactly_once(44000, 'every message once after the seek by time');
ok( wait_until(sub {
		$node->safe_psql('postgres',
			"SELECT seek_pending IS NULL FROM infra.bridge_positions WHERE consumer_group = '$group' AND topic = '$topic' AND partition = 0") eq 't' }, 30),
	'the seek by time was resolved');
$logs = slurp_file("$dir/member1.log") . slurp_file("$dir/member2.log");
like($logs, qr/\[0\]: seek to \S+ \S+ resolved to offset \d+/, 'the member owning partition 0 resolved it');

# A seek by time past the newest message: the end, nothing replayed.
$node->safe_psql('postgres', "SELECT infra.bridge_seek('$group', '$topic', NULL, now() + interval '1 hour')");
ok( wait_until(sub {
		$node->safe_psql('postgres',
			"SELECT count(*) FROM infra.bridge_positions WHERE consumer_group = '$group' AND seek_pending IS NULL AND next_offset = end_offset") == $partitions }, 60),
	'a seek past the newest message: every partition at its end');
exactly_once(44000, 'and nothing written twice');

# The bridge stopped: a seek waits in the table and applies at the start.
$_->signal('TERM') for @members;
$_->finish for @members;
$node->safe_psql('postgres', qq{
BEGIN;
DELETE FROM events WHERE part = 1;
SELECT infra.bridge_seek('$group', '$topic', 1, 0);
COMMIT});
my $restarted = bridge_spawn($ini, "$dir/member3.log");
ok(count_is(44000), 'a seek made while no bridge ran applies when one starts');
sleep 1;
exactly_once(44000, 'every message once');
$restarted->signal('TERM');
$restarted->finish;

done_testing();
