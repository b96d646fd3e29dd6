# Exactly once into Kafka (infra.kafka_delivery = exactly_once, with the
# WAL outbox, then the table outbox) against the real broker.  Every check compares what a
# read_committed consumer (kcat's default) sees with what PostgreSQL
# committed: the sending transactions record each value in a table too, so
# the committed set is known exactly even when a crash cuts a client off.
# Faults: the worker SIGKILLed at random points of its rounds (each kill
# restarts PostgreSQL: the slot goes back to its last saved position, so
# transactions Kafka already has are decoded again and must be skipped),
# PostgreSQL stopped -m immediate mid-round, the broker SIGKILLed and
# started again, infra.kafka_delivery switched back and forth on the live
# system, the worker SIGKILLed with the table outbox, a zombie producer
# with the worker's transactional id, the broker hung.  A read_uncommitted consumer shows the aborted
# copies exist, so the checks can fail.  EXACTLY_ONCE_KILLS sizes the
# fault loop (default 20).
use strict;
use warnings;

use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;
use InfraExactlyOnce;

my $bootstrap = kafka_bootstrap();
my $kills = $ENV{EXACTLY_ONCE_KILLS} // 20;

my $plugins = plugins_conf();

my $metrics_port = PostgreSQL::Test::Cluster::get_free_port();
my $node = infra_node('exactly_once', conf => "infra.kafka_brokers = '$bootstrap'\n"
	  . "infra.metrics_listen = '127.0.0.1:$metrics_port'\n"
	  . "wal_level = logical\nmax_replication_slots = 4\n"
	  . "infra.kafka_outbox = wal\ninfra.kafka_delivery = exactly_once\n"
	  . "restart_after_crash = on\n$plugins");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
my $db_oid = $node->safe_psql('postgres', "SELECT oid FROM pg_database WHERE datname = 'postgres'");
my $sysid = $node->safe_psql('postgres', 'SELECT system_identifier FROM pg_control_system()');
my $slot = "infra_kafka_$db_oid";
my $progress_topic = "__infra_progress_${sysid}_$db_oid";
# The worker's producers take rounds in turn, each with its own id.
my @txn_ids = map { "infra-$sysid-$db_oid-$_" } 0 .. 2;
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot' AND confirmed_flush_lsn IS NOT NULL"
			) eq '1';
		},
		60),
	'the worker has its slot');

my $t = "infra_t_eos_$$";
eos_setup($node, $t);

sub consume { return eos_consume($bootstrap, @_) }

sub flush_ok
{
	my ($seconds) = @_;
	my ($rc, $out) = $node->psql('postgres', "SELECT infra.kafka_flush('$seconds s')");
	return $rc == 0 && $out eq 't';
}

sub check_exactly_once { return eos_check($node, $bootstrap, $t, @_) }

# --- the progress record ------------------------------------------------------
my $before = $node->safe_psql('postgres', 'SELECT pg_current_wal_lsn()');
$node->safe_psql('postgres', 'SELECT send_batch(500)');
ok(flush_ok(60), 'delivered');
check_exactly_once('steady');
my @progress = consume($progress_topic);
ok(@progress >= 1, 'the round wrote its progress to ' . $progress_topic);
like($progress[-1][1], qr/^\{"timeline": 1, "lsn": "[0-9A-F]+\/[0-9A-F]+"\}$/, 'the progress: timeline and LSN');
my ($progress_lsn) = $progress[-1][1] =~ /"lsn": "([^"]+)"/;
is($node->safe_psql('postgres', "SELECT '$progress_lsn'::pg_lsn > '$before'::pg_lsn"), 't',
	'the progress covers the sending transaction\'s commit');
my $config = `kcat -b $bootstrap -L -t $progress_topic 2>&1`;
like($config, qr/partitions?: ?1|1 partitions/, 'the progress topic has one partition');

# --- the worker SIGKILLed at random points of its rounds ---------------------
# One sender keeps committing transactions of 200 messages; the worker is
# killed after a random pause (0-600 ms), so at any point of a round:
# before producing, while producing, before or after its Kafka commit.
sub start_sender { eos_sender_start($node, 100, 200) }
sub stop_sender { eos_sender_stop() }

# kill_at_random(): the worker SIGKILLed $kills times, each after a random
# pause, the sender started again each time; how often it came back.
sub kill_at_random
{
	my $back = 0;
	for my $i (1 .. $kills)
	{
		select(undef, undef, undef, rand(0.6));
		my $pid = eval { worker_pid($node, 'postgres') };
		next unless $pid;
		kill 'KILL', $pid;
		$back++ if eos_worker_back($node, $pid);
		start_sender();
		# Let a few rounds commit before the next kill.
		select(undef, undef, undef, 0.3);
	}
	return $back;
}

start_sender();
is(kill_at_random(), $kills, "the worker came back after each of $kills SIGKILLs");
stop_sender();
ok(flush_ok(180), 'everything committed is delivered after the kills');
my $committed_count = check_exactly_once('worker SIGKILLed ' . $kills . ' times');
my $uncommitted = () = consume($t, '-X', 'isolation.level=read_uncommitted');
cmp_ok($uncommitted, '>', $committed_count,
	'a read_uncommitted consumer sees aborted copies (so these checks can fail)');
like(slurp_log_since($node, 0), qr/delivers exactly once: Kafka holds the WAL outbox up to/,
	'each new worker read the progress back');

# --- PostgreSQL stopped -m immediate mid-round --------------------------------
start_sender();
select(undef, undef, undef, 1.5);
$node->stop('immediate');
stop_sender();
$node->start;
ok(flush_ok(180), 'after an immediate stop, everything committed is delivered');
check_exactly_once('PostgreSQL stopped -m immediate');

# --- the broker SIGKILLed mid-stream, then started again -----------------------
# The transaction in flight dies with the broker's connection; the worker
# aborts or, fenced by its own restart of the producer, starts again and
# reads the progress back; the coordinator resolves what was open.
start_sender();
select(undef, undef, undef, 1.0);
ok(kafka_ctl('kill'), 'broker SIGKILLed mid-stream');
select(undef, undef, undef, 2.0);
ok(kafka_ctl('start'), 'broker started again');
select(undef, undef, undef, 2.0);
stop_sender();
ok(flush_ok(240), 'after the broker came back, everything committed is delivered');
check_exactly_once('broker SIGKILLed');

# --- switching modes on a live system -------------------------------------------
# at_least_once and exactly_once in turn, by reload, while a sender runs:
# the round in flight finishes with the producer that sent it, the new
# producer starts where the slot stands; nothing lost, nothing doubled.
start_sender();
for my $mode (qw(at_least_once exactly_once at_least_once exactly_once))
{
	select(undef, undef, undef, 1.0);
	$node->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_delivery = '$mode'; SELECT pg_reload_conf()");
}
select(undef, undef, undef, 1.0);
stop_sender();
ok(flush_ok(180), 'after four switches, everything committed is delivered');
check_exactly_once('modes switched live');

# --- a backlog: one Kafka transaction carried across rounds -------------------------
# Delivery stopped (no brokers), 30 transactions of 1,000 messages are
# committed and, among them, one the broker refuses for good (2 MB, over
# its message.max.bytes; librdkafka is let send it).  Delivered again, the
# backlog goes in rounds of up to infra.kafka_batch_size that carry one
# Kafka transaction on (more rounds than transactions); the refused
# message aborts the transaction it is in, with the rounds before it that
# the transaction carried, and they are read again without it.
sub kafka_stats
{
	my @v = split /\|/, $node->safe_psql('postgres',
		'SELECT batches_total, transactions_committed_total, transactions_aborted_total, delivered_total, dead_lettered_total FROM infra.kafka_stats()');
	return (rounds => $v[0], committed => $v[1], aborted => $v[2], delivered => $v[3], dead => $v[4]);
}
$node->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_config = 'message.max.bytes=10000000'; ALTER SYSTEM SET infra.kafka_brokers = ''; SELECT pg_reload_conf()");
ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT broker_state FROM infra.kafka_stats()') eq 'not configured' }, 30),
	'delivery stopped');
my %before = kafka_stats();
$node->safe_psql('postgres', join "\n", ('SELECT send_batch(1000);') x 15,
	"SELECT infra.kafka_send('$t', repeat('x', 2000000), 'big');", ('SELECT send_batch(1000);') x 15);
# The rounds' messages are stamped (CreateTime) when they are produced.
my $since_ms = $node->safe_psql('postgres', 'SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint');
$node->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_brokers = '$bootstrap'; SELECT pg_reload_conf()");
ok(flush_ok(180), 'the backlog is delivered');
my %after = kafka_stats();
check_exactly_once('a backlog in transactions carried across rounds');
is($after{delivered} - $before{delivered}, 30000, 'kafka_stats counts each of the 30,000 once, when its transaction commits');
is($after{dead} - $before{dead}, 1, 'the refused message is a dead letter');
like($node->safe_psql('postgres', "SELECT error FROM infra.kafka_dead_letters WHERE key = 'big'"),
	qr/MSG_SIZE_TOO_LARGE|MESSAGE_TOO_LARGE/, "with the broker's error");
cmp_ok($after{aborted} - $before{aborted}, '>=', 1, 'it aborted the transaction it was in');
cmp_ok($after{rounds} - $before{rounds}, '>', ($after{committed} + $after{aborted}) - ($before{committed} + $before{aborted}),
	sprintf('transactions carried across rounds (%d rounds, %d committed, %d aborted)',
		$after{rounds} - $before{rounds}, $after{committed} - $before{committed}, $after{aborted} - $before{aborted}));
my $backlog_copies = () = consume($t, '-X', 'isolation.level=read_uncommitted', '-o', "s\@$since_ms");
cmp_ok($backlog_copies, '>', 30000,
	'a read_uncommitted consumer sees the aborted copies of the rounds it carried');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET infra.kafka_config; SELECT pg_reload_conf()');

# --- the table outbox ---------------------------------------------------------------
# With infra.kafka_outbox = table a round's progress record lists its
# message ids; a worker killed after the Kafka commit but before the rows'
# delete commits finds them in the progress and leaves them out.
my $inserted = "SELECT coalesce(n_tup_ins, 0) FROM pg_stat_user_tables WHERE relid = 'infra.kafka_outbox_batches'::regclass";
my $inserted_before = $node->safe_psql('postgres', $inserted);
$node->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_outbox = 'table'; SELECT pg_reload_conf()");
ok(wait_until(sub { $node->safe_psql('postgres', 'SHOW infra.kafka_outbox') eq 'table' }, 30),
	'switched to the table outbox');
start_sender();
ok(wait_until(sub { $node->safe_psql('postgres', $inserted) > $inserted_before + 10 }, 30),
	'the sender writes the outbox table');
is(kill_at_random(), $kills, "the worker came back after each of $kills SIGKILLs (table outbox)");
stop_sender();
ok(flush_ok(180), 'everything committed to the table outbox is delivered after the kills');
check_exactly_once('table outbox, worker SIGKILLed ' . $kills . ' times');
like(slurp_log_since($node, 0), qr/and [1-9]\d* messages of the table outbox's last rounds/,
	'a new worker read the table outbox\'s ids back from the progress');
is($node->safe_psql('postgres', 'SELECT count(*) FROM infra.kafka_outbox_batches'), '0',
	'the outbox table is empty');
$node->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_outbox = 'wal'; SELECT pg_reload_conf()");

# --- zombies with the worker's transactional ids -----------------------------
# A second producer with the same id (kcat, transactional) fences the
# worker's: the worker's transaction fails, it makes its producers again
# (fencing the zombie in turn) and nothing is lost or doubled.  Each of
# its ids in turn, while rounds flow.
start_sender();
select(undef, undef, undef, 1.0);
for my $txn_id (@txn_ids)
{
	my ($zout, $zerr);
	IPC::Run::run([ 'kcat', '-b', $bootstrap, '-P', '-t', "${t}_zombie", '-X', "transactional.id=$txn_id" ],
		'<', \"zombie\n", '>', \$zout, '2>', \$zerr, IPC::Run::timeout(60));
	select(undef, undef, undef, 1.0);
}
stop_sender();
ok(flush_ok(180), 'after the zombie, everything committed is delivered');
check_exactly_once('zombie producers');
like(slurp_log_since($node, 0), qr/Another producer with this transactional id took over/,
	'the worker says it was fenced');

# --- a transaction held open: kafka_stats and /metrics show for how long --------
# The broker hangs (SIGSTOP) while a sender runs: the worker's transaction
# stays open, which holds back every read_committed consumer.
start_sender();
select(undef, undef, undef, 0.5);
ok(kafka_ctl('pause'), 'broker paused mid-stream');
ok(wait_until(sub {
			$node->safe_psql('postgres',
				"SELECT transaction_open_for > interval '2 s' FROM infra.kafka_stats") eq 't';
		}, 30),
	'kafka_stats shows how long the open transaction has been open');
my $open_metric = HTTP::Tiny->new(timeout => 10)->get("http://127.0.0.1:$metrics_port/metrics")->{content} // '';
my ($open_seconds) = $open_metric =~ /^infra_kafka_transaction_open_seconds\{database="postgres"\} (\S+)$/m;
cmp_ok($open_seconds // 0, '>', 2, 'and so does /metrics (what InfraKafkaTransactionOpenTooLong fires on)');
ok(kafka_ctl('resume'), 'broker resumed');
stop_sender();
ok(flush_ok(180), 'after the hang, everything committed is delivered');
check_exactly_once('broker hung');

# --- /metrics and kafka_stats ---------------------------------------------------------
my $metrics = HTTP::Tiny->new(timeout => 10)->get("http://127.0.0.1:$metrics_port/metrics")->{content} // '';
my %m = map { /^(\w+)\{database="postgres"\} (\S+)$/ ? ($1 => $2) : () } split /\n/, $metrics;
cmp_ok($m{infra_kafka_transactions_committed_total} // 0, '>', 100, '/metrics counts committed Kafka transactions');
cmp_ok($m{infra_kafka_fenced_total} // 0, '>=', 1, 'and the fencing by the zombies');
cmp_ok(($m{infra_kafka_transactions_aborted_total} // -1), '>=', 0, 'the aborted-transactions series is served');
cmp_ok($m{infra_kafka_transaction_open_seconds} // -1, '==', 0, 'no transaction open when idle');
my ($progress_now) = (consume($progress_topic))[-1][1] =~ /"lsn": "([^"]+)"/;
cmp_ok($m{infra_kafka_progress_lsn_bytes} // -1, '==',
	$node->safe_psql('postgres', "SELECT pg_wal_lsn_diff('$progress_now', '0/0')::bigint"),
	'the progress gauge is the last committed progress record');
is($node->safe_psql('postgres',
		"SELECT transactions_committed_total || ' ' || transactions_aborted_total || ' ' || fenced_total"
		  . " || ' ' || progress_lsn || ' ' || (transaction_open_for IS NULL) FROM infra.kafka_stats"),
	join(' ', $m{infra_kafka_transactions_committed_total} // '', $m{infra_kafka_transactions_aborted_total} // '',
		$m{infra_kafka_fenced_total} // '', $progress_now, 'true'),
	'kafka_stats shows the same transactions, fencing and progress, and no transaction open when idle');

# --- the extension made again ---------------------------------------------------------
# Its id sequence starts again: the ids the last progress record names
# (a table round's) are not the new rows'.  The new ids are set inside
# that record's range, the worker is killed so that it reads the record
# back, and every new message must still go.
$node->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_outbox = 'table'; SELECT pg_reload_conf()");
ok(wait_until(sub { $node->safe_psql('postgres', 'SHOW infra.kafka_outbox') eq 'table' }, 30),
	'the table outbox again');
$node->safe_psql('postgres', 'SELECT send_batch(300)');
ok(flush_ok(60), 'a table round delivered');
my ($named) = (consume($progress_topic))[-1][1] =~ /"ids": "\d+:(\d+)/;
ok($named, "the last progress record names table-outbox ids (from $named)");
$node->safe_psql('postgres', 'DROP EXTENSION infra CASCADE');
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
$node->safe_psql('postgres', "SELECT setval('infra.kafka_outbox_id_seq', $named - 1)");
my $old_worker = worker_pid($node, 'postgres');
kill 'KILL', $old_worker;
ok(eos_worker_back($node, $old_worker), 'the worker is back after the extension was made again');
$node->safe_psql('postgres', 'SELECT send_batch(300)');
ok(flush_ok(120), 'the new install delivers');
check_exactly_once('ids of a new install inside the old record\'s range');

$node->stop;
done_testing();
