# kafka_send's outbox rows hold a transaction's messages together; the
# worker delivers them in rounds that may cut through rows.  Checked against
# the real broker with kcat: per-key commit order and completeness under
# concurrent, interleaving transactions with tiny rounds; the session's
# correlation_id and traceparent as headers; produce latency from
# librdkafka's statistics in kafka_stats.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
# Rounds of 7 messages: most rounds end inside a transaction's row.
my $node = infra_node('kafka_context',
	conf => "infra.kafka_brokers = '$bootstrap'\ninfra.kafka_batch_size = 7\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');

sub consume
{
	my ($topic) = @_;
	my ($out, $err);
	IPC::Run::run(
		[ 'kcat', '-b', $bootstrap, '-C', '-t', $topic, '-o', 'beginning', '-e', '-q',
		  '-f', '%k\t%s\t%h\n' ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(120));
	return map { [ split /\t/, $_, -1 ] } split /\n/, $out;
}

sub flush_ok
{
	my ($seconds) = @_;
	return $node->safe_psql('postgres', "SELECT infra.kafka_flush('$seconds s')") eq 't';
}

# --- interleaving transactions, rounds cutting through rows -----------------
# Each transaction first sends a message under a key of its own session,
# then bumps one key's counter (a row lock: per key, counter order is commit
# order) and sends two messages for that key.  So a transaction's row can
# start before (have a smaller first id than) the row of a transaction that
# sent the same key earlier: a round that took the one row without the
# other would invert the key's order.
my $t = "infra_t_interleave_$$";
$node->safe_psql('postgres', q{
CREATE TABLE counters (k int PRIMARY KEY, n int NOT NULL);
INSERT INTO counters SELECT k, 0 FROM generate_series(0, 5) k;
});
my $script = $node->basedir . '/interleave.sql';
append_to_file($script, qq{\\set k random(0, 5)
BEGIN;
SELECT infra.kafka_send('$t', 'hello', 'session' || pg_backend_pid());
UPDATE counters SET n = n + 1 WHERE k = :k;
SELECT infra.kafka_send('$t', (SELECT n FROM counters WHERE k = :k) || '.1', 'k' || :k);
SELECT infra.kafka_send('$t', (SELECT n FROM counters WHERE k = :k) || '.2', 'k' || :k);
COMMIT;
});
my ($out, $err);
IPC::Run::run([ 'pgbench', '-n', '-c', '4', '-j', '2', '-t', '100', '-f', $script,
		'-d', $node->connstr('postgres') ],
	'>', \$out, '2>', \$err, IPC::Run::timeout(300));
like($out, qr/number of failed transactions: 0/, '400 concurrent transactions committed');
ok(flush_ok(120), 'all delivered in rounds of 7');
my %per_key;
my $hellos = 0;
for my $m (consume($t))
{
	if ($m->[1] eq 'hello') { $hellos++; next; }
	push @{ $per_key{ $m->[0] } }, $m->[1];
}
is($hellos, 400, 'every session-keyed message arrived once');
my $total = $node->safe_psql('postgres', 'SELECT sum(n) FROM counters');
is($total, '400', 'the counters saw 400 transactions');
my ($complete, $ordered) = (1, 1);
for my $k (0 .. 5)
{
	my $n = $node->safe_psql('postgres', "SELECT n FROM counters WHERE k = $k");
	my @want = map { my $i = $_; map { "$i.$_" } 1 .. 2 } 1 .. $n;
	my @got = @{ $per_key{"k$k"} // [] };
	$complete = 0 unless scalar(@got) == scalar(@want);
	$ordered = 0 unless join(',', @got) eq join(',', @want);
	diag("key k$k: got " . join(',', @got[0 .. ($#got < 11 ? $#got : 11)]) . '...')
	  unless join(',', @got) eq join(',', @want);
}
ok($complete, 'every committed message arrived exactly once');
ok($ordered, 'per key, in commit order, though rounds cut through transactions');
is($node->safe_psql('postgres', 'SELECT count(*) FROM infra.kafka_outbox_batches'), '0',
	'the outbox is empty');

# --- correlation_id and traceparent headers --------------------------------
$t = "infra_t_ctx_$$";
my $tp = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
$node->safe_psql('postgres', qq{
SET infra.correlation_id = 'order-7781';
SET infra.traceparent = '$tp';
SELECT infra.kafka_send('$t', 'with context', 'k');
RESET infra.correlation_id;
RESET infra.traceparent;
SELECT infra.kafka_send('$t', 'without', 'k');
});
ok(flush_ok(60), 'context messages delivered');
my @got = consume($t);
is(scalar @got, 2, 'both arrive');
like($got[0][2], qr/(^|,)correlation_id=order-7781(,|$)/, 'correlation_id header from the session');
# The trace is sampled (flags 01): the statement has a server span, which
# is the message's parent, in the caller's trace.
my ($hop) = $got[0][2] =~ /(?:^|,)traceparent=00-4bf92f3577b34da6a3ce929d0e0e4736-([0-9a-f]{16})-01(?:,|$)/;
ok($hop, 'traceparent header in the session\'s trace');
isnt($hop, '00f067aa0ba902b7', 'its parent is the statement\'s span, a hop below the caller');
unlike($got[1][2], qr/correlation_id|traceparent/, 'no context headers when the session has none');

# --- produce latency from librdkafka statistics ----------------------------
$node->safe_psql('postgres',
	"SELECT infra.kafka_send('$t', 'tick ' || i, 'k') FROM generate_series(1, 200) i");
ok(flush_ok(60), 'traffic for the statistics');
# Both figures are positive; the 99th percentile is not compared with the
# mean, which one slow message can lift above it.
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				'SELECT produce_latency_p99_ms > 0 AND produce_latency_avg_ms > 0 FROM infra.kafka_stats') eq 't';
		},
		30),
	'kafka_stats shows produce latency from librdkafka statistics')
  or diag($node->safe_psql('postgres', 'SELECT * FROM infra.kafka_stats'));

$node->stop;
done_testing();
