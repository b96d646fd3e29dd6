# InfraExactlyOnce: what the exactly-once TAP tests (025 against one broker,
# 096 against the three-node cluster) share: a sending function that
# records each value it sends in a table in the same transaction (so the
# committed set is known exactly, even when a crash cuts a client off), a
# steady sender, and the check of a read_committed stream against that set.
package InfraExactlyOnce;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use Test::More;
use InfraTest;

our @EXPORT = qw(eos_setup eos_consume eos_check eos_sender_start eos_sender_stop eos_worker_back
  eos_bridge eos_check_sink);

my $sender;

# eos_setup(NODE, TOPIC): table sent (v, k, n), sequence vals and
# send_batch(cnt), which sends cnt values to TOPIC, keys k0..k6, in n order.
sub eos_setup
{
	my ($node, $topic) = @_;
	$node->safe_psql('postgres', qq{
CREATE TABLE sent (v text PRIMARY KEY, k text NOT NULL, n bigint NOT NULL);
CREATE SEQUENCE vals;
CREATE FUNCTION send_batch(cnt int) RETURNS bigint LANGUAGE sql AS \$\$
    WITH s AS (
        INSERT INTO sent
        SELECT 'k' || (x % 7) || ':' || x, 'k' || (x % 7), x
        FROM (SELECT nextval('vals') AS x FROM generate_series(1, cnt)) q
        RETURNING v, k, n)
    SELECT count(infra.kafka_send('$topic', v, k)) FROM (SELECT * FROM s ORDER BY n) o
\$\$;
});
}

# eos_consume(BOOTSTRAP, TOPIC, KCAT_ARGS...): every message of TOPIC as
# [key, value], read_committed unless the arguments say otherwise.
sub eos_consume
{
	my ($bootstrap, $topic, @extra) = @_;
	my ($out, $err);
	IPC::Run::run(
		[ 'kcat', '-b', $bootstrap, '-C', '-t', $topic, '-o', 'beginning', '-e', '-q',
		  @extra, '-f', '%k\t%s\n' ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(180));
	return map { [ split /\t/, $_, -1 ] } split /\n/, $out;
}

# eos_check(NODE, BOOTSTRAP, TOPIC, LABEL): the read_committed stream
# against the committed set: exactly equal, no duplicate, per key in commit
# order (one sender: nextval order).  Returns how many messages were read.
sub eos_check
{
	my ($node, $bootstrap, $topic, $label) = @_;
	my @got = eos_consume($bootstrap, $topic);
	my %committed = map { $_ => 1 } split /\n/, $node->safe_psql('postgres', 'SELECT v FROM sent');
	my (%count, %last);
	my ($dups, $extra, $disorder) = (0, 0, 0);
	for my $m (@got)
	{
		$dups++ if $count{ $m->[1] }++;
		$extra++ unless $committed{ $m->[1] };
		my ($n) = $m->[1] =~ /:(\d+)$/;
		$disorder++ if defined $last{ $m->[0] } && $n <= $last{ $m->[0] };
		$last{ $m->[0] } = $n;
	}
	my $missing = grep { !$count{$_} } keys %committed;
	is($dups, 0, "$label: no duplicate");
	is($missing, 0, "$label: nothing committed is missing");
	is($extra, 0, "$label: nothing uncommitted arrives");
	is($disorder, 0, "$label: per key, commit order");
	note(sprintf '%s: %d committed, %d read', $label, scalar(keys %committed), scalar(@got));
	return scalar(@got);
}

# eos_sender_start(NODE, RATE, BATCH): (re)start one pgbench client calling
# send_batch(BATCH) RATE times a second; a crash of PostgreSQL ends it.
sub eos_sender_start
{
	my ($node, $rate, $batch) = @_;
	eos_sender_stop();
	my $script = $node->basedir . "/send_$batch.sql";
	open my $fh, '>', $script or die "cannot write $script: $!";
	print $fh "SELECT send_batch($batch);\n";
	close $fh;
	my ($out, $err) = ('', '');
	$sender = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '1', '-T', '600', '-R', $rate, '-f', $script,
		  '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$out, '2>', \$err);
}

sub eos_sender_stop
{
	return unless $sender;
	eval { $sender->kill_kill; $sender->finish; };
	undef $sender;
}

# eos_worker_back(NODE, OLD_PID): wait (90 s at most) until NODE's infra
# worker runs again under another pid, after a SIGKILL made PostgreSQL
# restart; true if it does.
sub eos_worker_back
{
	my ($node, $old) = @_;
	return wait_until(
		sub {
			# During crash recovery psql may exit before it reads its input.
			my ($rc, $p) = eval {
				$node->psql('postgres', "SELECT pid FROM pg_stat_activity WHERE backend_type = 'infra worker' AND datname = 'postgres'");
			};
			defined $rc && $rc == 0 && $p ne '' && $p ne $old;
		},
		90);
}

# eos_bridge(DIR, NODE, CONNINFO, BOOTSTRAP, TOPIC, GROUP, KAFKA_LINES): infra-bridge
# reading TOPIC read_committed, dedupe off, into table sink (v, part, off),
# which it creates through NODE; KAFKA_LINES are more [kafka] settings.  Returns the
# harness.
sub eos_bridge
{
	my ($dir, $node, $conninfo, $bootstrap, $topic, $group, $kafka) = @_;
	$node->safe_psql('postgres', 'CREATE TABLE sink (v text, part integer, off bigint)');
	open my $bfh, '>', "$dir/bridge.ini" or die;
	print $bfh <<"INI";
[bridge]
conninfo = $conninfo
brokers = $bootstrap
group = $group
batch_size = 500
batch_delay_ms = 50

[kafka]
isolation.level = read_committed
@{[ $kafka // '' ]}
[route sink]
topics = $topic
table = sink
format = text
column = v
partition_column = part
offset_column = off
dedupe = off
INI
	close $bfh;
	return bridge_spawn("$dir/bridge.ini", "$dir/bridge.log");
}

# eos_check_sink(NODE): the bridge's table holds exactly the committed set.
sub eos_check_sink
{
	my ($node) = @_;
	my $total = $node->safe_psql('postgres', 'SELECT count(*) FROM sent');
	ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM sink') >= $total }, 120),
		"the bridge wrote $total rows");
	sleep 1;
	is( $node->safe_psql('postgres', q{
	SELECT (SELECT count(*) FROM sink) || '/' || (SELECT count(DISTINCT v) FROM sink) || '/'
	    || (SELECT count(*) FROM sent s FULL JOIN sink k USING (v) WHERE s.v IS NULL OR k.v IS NULL)}),
		"$total/$total/0", 'the bridge (read_committed, dedupe off) holds exactly the committed set, once each');
}

1;
