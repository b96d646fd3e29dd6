# kafka_send under broker faults, against the real broker: a message the
# broker refuses for good goes to infra.kafka_dead_letters with the broker's
# error while the rest flows; a paused (SIGSTOP) broker fills the outbox up
# to infra.kafka_max_pending, kafka_stats shows the backlog and the error,
# and resuming drains it; the "kafka" circuit breaker holds delivery back
# while open.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();

# The producer may send up to 10 MB, so that an oversized message reaches the
# broker (whose limit is about 1 MB) and is refused there, not locally.
my $node = infra_node('kafkafaults', conf => qq{
infra.kafka_brokers = '$bootstrap'
infra.kafka_config = 'message.max.bytes=10000000'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');

sub flush_ok
{
	my ($seconds) = @_;
	return $node->safe_psql('postgres', "SELECT infra.kafka_flush('$seconds s')") eq 't';
}

# --- a message too large for the broker -------------------------------------
my $t = "infra_t_dead_$$";
$node->safe_psql('postgres', qq{
BEGIN;
SELECT infra.kafka_send('$t', 'before', 'k');
SELECT infra.kafka_send('$t', repeat('x', 2000000), 'k');
SELECT infra.kafka_send('$t', 'after', 'k');
COMMIT;
});
ok(flush_ok(90), 'the outbox empties: delivered or dead-lettered');
my ($out, $err);
IPC::Run::run([ 'kcat', '-b', $bootstrap, '-C', '-t', $t, '-o', 'beginning', '-e', '-q', '-f', '%s\n' ],
	'>', \$out, '2>', \$err, IPC::Run::timeout(60));
is($out, "before\nafter\n", 'the messages around the oversized one are delivered');
my ($dead_topic, $dead_len, $dead_error) = split /\|/, $node->safe_psql('postgres',
	'SELECT topic, length(value), error FROM infra.kafka_dead_letters');
is($dead_topic, $t, 'the oversized message is a dead letter');
is($dead_len, '2000000', 'with its whole value');
like($dead_error, qr/MSG_SIZE_TOO_LARGE/, "and the broker's error ($dead_error)");
is($node->safe_psql('postgres', 'SELECT dead_lettered_total FROM infra.kafka_stats'),
	'1', 'kafka_stats counts it');

# --- a paused broker: backlog, bound, drain ----------------------------------
$node->append_conf('postgresql.conf', "infra.kafka_max_pending = 200\n");
$node->reload;
$t = "infra_t_pause_$$";
ok(kafka_ctl('pause'), 'broker paused (SIGSTOP)');
for my $i (1 .. 10)
{
	$node->safe_psql('postgres',
		"SELECT infra.kafka_send('$t', 'p' || g, 'k' || g) FROM generate_series(($i - 1) * 20 + 1, $i * 20) g");
}
is($node->safe_psql('postgres', 'SELECT pending FROM infra.kafka_stats'), '200',
	'200 messages wait while the broker is paused');
my ($rc, $o, $e) = $node->psql('postgres', "SELECT infra.kafka_send('$t', 'one too many')");
isnt($rc, 0, 'past infra.kafka_max_pending, kafka_send refuses');
like($e, qr/Kafka outbox is full \(200 messages pending, infra\.kafka_max_pending is 200\)/,
	'with a clear error');
ok( wait_until(
		sub {
			$node->safe_psql('postgres', 'SELECT last_error IS NOT NULL FROM infra.kafka_stats') eq 't';
		},
		60),
	'kafka_stats reports the delivery error');
note $node->safe_psql('postgres', 'SELECT last_error, broker_state FROM infra.kafka_stats');

# With kafka_on_full = wait, a sender waits for room instead.
my ($in, $wout) = ('', '');
my $waiter = IPC::Run::start(
	[ 'psql', '-XAtq', '-d', $node->connstr('postgres'),
	  '-c', "SET infra.kafka_on_full = wait; SELECT infra.kafka_send('$t', 'waited')" ],
	'>', \$wout, '2>', \$wout, IPC::Run::timeout(180));
sleep 1;
$waiter->pump_nb;
is($wout, '', 'with kafka_on_full = wait the sender waits');

ok(kafka_ctl('resume'), 'broker resumed');
$waiter->finish;
like($wout, qr/^\d+$/m, 'the waiting sender gets through once the backlog drains');
ok(flush_ok(120), 'the backlog drains');
IPC::Run::run([ 'kcat', '-b', $bootstrap, '-C', '-t', $t, '-o', 'beginning', '-e', '-q', '-f', '%s\n' ],
	'>', \$out, '2>', \$err, IPC::Run::timeout(60));
my %got = map { $_ => 1 } split /\n/, $out;
is(scalar(grep { $got{"p$_"} } 1 .. 200), 200, 'all 200 waiting messages arrive');
ok($got{waited}, 'and the one that waited');

# --- the "kafka" circuit breaker guards delivery ----------------------------
$t = "infra_t_breaker_$$";
$node->safe_psql('postgres', "SELECT infra.breaker_force('kafka', 'forced_open')");
$node->safe_psql('postgres', "SELECT infra.kafka_send('$t', 'held ' || g) FROM generate_series(1, 5) g");
ok( wait_until(
		sub {
			$node->safe_psql('postgres', 'SELECT broker_state FROM infra.kafka_stats') eq 'breaker open';
		},
		30),
	'with the kafka breaker open the worker does not produce');
is($node->safe_psql('postgres', 'SELECT pending || \'/\' || breaker_state FROM infra.kafka_stats'),
	'5/forced_open', 'the messages wait, and kafka_stats shows the breaker');
$node->safe_psql('postgres', "SELECT infra.breaker_reset('kafka')");
ok(flush_ok(60), 'once the breaker closes, they are delivered');
cmp_ok($node->safe_psql('postgres',
		"SELECT calls_total FROM infra.circuit_breaker_state WHERE name = 'kafka'"),
	'>', 0, 'delivery rounds are recorded as calls of the breaker');

$node->stop;
done_testing();
