# The WAL outbox (infra.kafka_outbox = wal) against the real broker, checked
# from outside with kcat: the worker's slot; sent if and only if the
# transaction commits, through savepoints, exception blocks, two-phase
# commit and procedures that commit, also for transactions of several
# logical messages; per-key commit order with no lock taken; the statement
# trigger's rows rendered by the worker into the row trigger's messages;
# logical messages kafka_send did not write (pg_logical_emit_message by a
# role without rights) never sent; nothing lost when the broker is
# SIGKILLed (undelivered messages move to the table outbox and go first),
# the worker is SIGKILLed or PostgreSQL crashes mid-stream; the slot keeps
# no WAL once delivered; a named standby holds delivery back until it has
# the commit; and without wal_level = logical, kafka_send writes the table
# outbox instead.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $wal_first_id = 2**51;

my $plugins = plugins_conf();

my $node = infra_node('walbox', conf => "infra.kafka_brokers = '$bootstrap'\n"
	  . "wal_level = logical\nmax_replication_slots = 4\nmax_prepared_transactions = 4\n"
	  . "infra.kafka_outbox = wal\nrestart_after_crash = on\n$plugins");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
my $slot = 'infra_kafka_' . $node->safe_psql('postgres',
	"SELECT oid FROM pg_database WHERE datname = 'postgres'");
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT plugin = 'infra' AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = '$slot'"
			) eq 't';
		},
		60),
	'the worker creates its logical slot, plugin infra');

sub consume { return kafka_consume($_[0], '%k\t%s\t%h\t%p\n'); }

sub flush_ok
{
	my ($seconds) = @_;
	return $node->safe_psql('postgres', "SELECT infra.kafka_flush('$seconds s')") eq 't';
}

# Per key, values numbered "<key>:<n>" must first appear in increasing n.
sub per_key_ordered
{
	my (@messages) = @_;
	my (%last, %seen);
	for my $m (@messages)
	{
		next if $seen{ $m->[1] }++;
		my ($n) = $m->[1] =~ /:(\d+)$/;
		return 0 if defined $last{ $m->[0] } && $n < $last{ $m->[0] };
		$last{ $m->[0] } = $n;
	}
	return 1;
}

# --- sent if and only if the transaction commits ----------------------------
my $t = "infra_t_wal_$$";
my $first = $node->safe_psql('postgres', qq{
CREATE PROCEDURE wal_proc() LANGUAGE plpgsql AS \$\$
BEGIN
    PERFORM infra.kafka_send('$t', 'four', 'k1');
    COMMIT;
    PERFORM infra.kafka_send('$t', 'rolled back in a procedure', 'k1');
    ROLLBACK;
    PERFORM infra.kafka_send('$t', 'five', 'k1');
END \$\$;
BEGIN;
SELECT infra.kafka_send('$t', 'one', 'k1', '{"origin": "test"}');
SAVEPOINT s1;
SELECT infra.kafka_send('$t', 'rolled back to a savepoint', 'k1');
ROLLBACK TO s1;
SAVEPOINT s2;
SELECT infra.kafka_send('$t', 'two', 'k1');
RELEASE s2;
SELECT infra.kafka_send('$t', '\\x0001ff'::bytea, NULL, NULL, 0);
COMMIT;
});
my ($id) = $first =~ /^(\d+)$/m;
cmp_ok($id, '>=', $wal_first_id, 'kafka_send returns an id of the WAL outbox (from 2^51)');
$node->safe_psql('postgres', qq{
BEGIN;
SELECT infra.kafka_send('$t', 'rolled back', 'k1');
ROLLBACK;
DO \$\$
BEGIN
    BEGIN
        PERFORM infra.kafka_send('$t', 'in a failed exception block', 'k1');
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    PERFORM infra.kafka_send('$t', 'three', 'k1');
END \$\$;
BEGIN;
SELECT infra.kafka_send('$t', 'prepared, committed', 'k1');
PREPARE TRANSACTION 'wal_p1';
BEGIN;
SELECT infra.kafka_send('$t', 'prepared, rolled back', 'k1');
PREPARE TRANSACTION 'wal_p2';
ROLLBACK PREPARED 'wal_p2';
COMMIT PREPARED 'wal_p1';
CALL wal_proc();
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM infra.kafka_outbox_batches'), '0',
	'no row of the table outbox is written');
ok(flush_ok(60), 'kafka_flush sees the committed messages delivered');
my @got = consume($t);
is_deeply([ map { $_->[1] } @got ],
	[ 'one', 'two', "\x00\x01\xff", 'three', 'prepared, committed', 'four', 'five' ],
	'exactly the committed messages arrive, in commit order (savepoint, exception block, 2PC, procedure)');
is($got[0][0], 'k1', 'the key is kept');
like($got[0][2], qr/origin=test/, 'user headers are sent');
my ($msg_id) = $got[0][2] =~ m{infra-msg-id=\d+/\d+/1/(\d+)};
is($msg_id, $id, 'infra-msg-id ends with the id kafka_send returned');
is($got[2][3], '0', 'an explicit partition is used');

# --- transactions of several logical messages and savepoints ----------------
$t = "infra_t_wal_big_$$";
$node->safe_psql('postgres', qq{
BEGIN;
SELECT count(infra.kafka_send('$t', 'k:' || i, 'k')) FROM generate_series(1, 1500) i;
SAVEPOINT a;
SELECT count(infra.kafka_send('$t', 'k:' || i, 'k')) FROM generate_series(1501, 3000) i;
ROLLBACK TO a;
SAVEPOINT b;
SELECT count(infra.kafka_send('$t', 'k:' || i, 'k')) FROM generate_series(3001, 4200) i;
RELEASE b;
COMMIT;
BEGIN;
SELECT 1;
SAVEPOINT c;
SELECT count(infra.kafka_send('$t', 'k:' || i, 'k')) FROM generate_series(5001, 7100) i;
ROLLBACK TO c;
SELECT count(infra.kafka_send('$t', 'k:' || i, 'k')) FROM generate_series(7101, 7200) i;
COMMIT;
});
ok(flush_ok(60), 'large transactions are delivered');
my @values = map { $_->[1] =~ /:(\d+)$/ ? $1 : -1 } consume($t);
is_deeply(\@values, [ 1 .. 1500, 3001 .. 4200, 7101 .. 7200 ],
	'messages written early (a logical message a thousand) keep call order; rolled-back savepoints send nothing, also after writing');

# --- per-key commit order, with no lock --------------------------------------
$t = "infra_t_wal_order_$$";
my ($in1, $out1) = ('', '');
my $s1 = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres') ],
	'<', \$in1, '>', \$out1, '2>', \$out1, IPC::Run::timeout(60));
$in1 .= "BEGIN; SELECT infra.kafka_send('$t', 'a1', 'same');\n";
$s1->pump until $out1 =~ /^\d+$/m;
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"), '0',
	'kafka_send holds no advisory lock');
$node->safe_psql('postgres', "SELECT infra.kafka_send('$t', 'b1', 'same')");
$in1 .= "SELECT infra.kafka_send('$t', 'a2', 'same'); COMMIT;\n\\q\n";
$s1->finish;
ok(flush_ok(60), 'both transactions delivered');
is_deeply([ map { $_->[1] } consume($t) ], [ 'b1', 'a1', 'a2' ],
	'a same-key transaction that commits first is sent first, without waiting for the other');

# --- the statement trigger's rows, rendered by the worker --------------------
# With the WAL outbox the statement trigger writes the rows as they are and
# the worker renders them: the same messages the row trigger sends for the
# same statements (envelope and key), also for a value stored out of line,
# a primary-key change, a rolled-back savepoint, a column added later in
# the transaction, and a key column that is NULL.
my ($t_row, $t_stmt, $t_key) = ("infra_t_pub_row_$$", "infra_t_pub_stmt_$$", "infra_t_pub_key_$$");
$node->safe_psql('postgres', qq{
CREATE TABLE pub_r (id int, part text, name text, amount numeric, at timestamptz, doc jsonb, big text,
                    PRIMARY KEY (id, part));
CREATE TABLE pub_s (LIKE pub_r INCLUDING ALL);
CREATE TABLE pub_k (LIKE pub_r INCLUDING ALL);
CREATE TRIGGER pub_r_row AFTER INSERT OR UPDATE OR DELETE ON pub_r
    FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish('$t_row');
CREATE TRIGGER pub_s_ins AFTER INSERT ON pub_s REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('$t_stmt');
CREATE TRIGGER pub_s_upd AFTER UPDATE ON pub_s REFERENCING OLD TABLE AS o NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('$t_stmt');
CREATE TRIGGER pub_s_del AFTER DELETE ON pub_s REFERENCING OLD TABLE AS o
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('$t_stmt');
CREATE TRIGGER pub_k_ins AFTER INSERT ON pub_k REFERENCING NEW TABLE AS n
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('$t_key', 'name');
});
for my $tab (qw(pub_r pub_s))
{
	$node->safe_psql('postgres', qq{
INSERT INTO $tab VALUES
    (1, 'a', 'say "hi"\\n', 1.50, '2026-01-02 03:04:05+00', '{"x": [1, 2.0, null]}', NULL),
    (2, 'b', NULL, NULL, NULL, NULL,
     (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 4000) i)),
    (3, 'c', 'three', -0.001, 'infinity', '"s"', 'short');
BEGIN;
UPDATE $tab SET id = id + 10, amount = coalesce(amount, 0) + 1 WHERE id <= 2;
SAVEPOINT s;
UPDATE $tab SET name = 'rolled back';
ROLLBACK TO s;
ALTER TABLE $tab ADD COLUMN extra int DEFAULT 7;
UPDATE $tab SET extra = extra + id WHERE id = 3;
COMMIT;
DELETE FROM $tab WHERE id = 11;
});
}
$node->safe_psql('postgres', "INSERT INTO pub_k VALUES (1, 'a', 'named'), (2, 'b', NULL)");
my $toast = $node->safe_psql('postgres', "SELECT reltoastrelid::regclass FROM pg_class WHERE oid = 'pub_s'::regclass");
cmp_ok($node->safe_psql('postgres', "SELECT count(*) FROM $toast"), '>', 0,
	'a value of the table was stored out of line');
ok(flush_ok(60), 'the rendered rows are delivered');

sub envelopes
{
	my ($topic) = @_;
	my $json = JSON::PP->new->canonical;
	return map {
		my ($klen, $key, $value) = @$_;
		my $e = $json->decode($value);
		delete @{$e}{qw(ts_ms txid table)};
		[ $klen < 0 ? undef : $key, $json->encode($e) ]
	} kafka_consume($topic, '%K\t%k\t%s\n');
}
my @row_msgs = envelopes($t_row);
my @stmt_msgs = envelopes($t_stmt);
is(scalar @stmt_msgs, 7, 'seven rows published: three inserted, two updated, one updated after ALTER TABLE, one deleted (none rolled back)');
is_deeply(\@stmt_msgs, \@row_msgs, 'the worker renders what the row trigger sends (envelope and key), out-of-line value, key change and added column included');
is_deeply([ map { $_->[0] } envelopes($t_key) ], [ 'named', undef ], 'a NULL key column gives a message without a key');

# --- logical messages kafka_send did not write ------------------------------
# pg_logical_emit_message is PUBLIC: a role without any right on infra can
# write a logical message with infra's prefix, well-formed or not.  The
# worker sends none of them (no valid token), says so, and goes on.
$t = "infra_t_wal_forged_$$";
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');
my $log_offset = -s $node->logfile;
my $forged = $node->safe_psql('postgres', qq{
SET ROLE mallory;
SELECT pg_logical_emit_message(true, 'infra.kafka', 'not a message');
SELECT pg_logical_emit_message(true, 'infra.kafka', decode(repeat('31574b49', 40), 'hex'));
SELECT has_table_privilege('infra.kafka_wal_secret', 'SELECT');
});
like($forged, qr/\nf$/, 'the role cannot read the secret');
$node->safe_psql('postgres', "SELECT infra.kafka_send('$t', 'genuine', 'k')");
ok(flush_ok(60), 'delivery goes on');
is_deeply([ map { $_->[1] } consume($t) ], ['genuine'], 'only the genuine message is sent');
like(slurp_log_since($node, $log_offset), qr/ignored 2 logical messages with the prefix "infra\.kafka" that kafka_send did not write/,
	'the worker logs the two it ignored');

# --- broker SIGKILLed while 10,000 messages flow ----------------------------
$t = "infra_t_wal_broker_$$";
$node->safe_psql('postgres', qq{
SELECT infra.kafka_send('$t', 'k' || (i % 10) || ':' || i, 'k' || (i % 10))
  FROM generate_series(1, 5000) i;
});
ok(kafka_ctl('kill'), 'broker SIGKILLed mid-stream');
$node->safe_psql('postgres', qq{
SELECT infra.kafka_send('$t', 'k' || (i % 10) || ':' || i, 'k' || (i % 10))
  FROM generate_series(5001, 10000) i;
});
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT count(*) > 0 AND bool_and(id >= $wal_first_id) FROM infra.kafka_outbox WHERE attempts > 0")
			  eq 't';
		},
		120),
	'what the broker did not take moves to the table outbox, with its attempt counted');
ok(kafka_ctl('start'), 'broker restarted');
ok(flush_ok(180), 'every message is delivered after the restart');
my %value_of_id;
my $conflicts = 0;
my @broker_run = consume($t);
for my $m (@broker_run)
{
	my ($mid) = $m->[2] =~ /infra-msg-id=([^,]+)/;
	$conflicts++ if defined $value_of_id{$mid} && $value_of_id{$mid} ne $m->[1];
	$value_of_id{$mid} = $m->[1];
}
my %distinct = map { $_->[1] => 1 } @broker_run;
is(scalar(keys %distinct), 10000, 'all 10,000 messages arrived (none lost)');
is(scalar(keys %value_of_id), 10000, 'with 10,000 distinct infra-msg-ids');
is($conflicts, 0, 'every duplicate shares its infra-msg-id with its original');
ok(per_key_ordered(@broker_run), 'per key, first arrivals keep commit order across the retry from the table');
is($node->safe_psql('postgres', 'SELECT count(*) FROM infra.kafka_outbox'), '0', 'the table outbox is empty again');

# --- moved rows keep commit order across backends -----------------------------
# Ids come from per-backend blocks: a later commit may carry a smaller id.
# With the worker held back (no brokers), two sessions alternate commits to
# one key, the second one's block below the first's; then the worker reads
# them in one round against a dead broker, which moves them to the table
# (a row per logical message), and with the broker back Kafka must get them
# in commit order.
$t = "infra_t_wal_moved_$$";
$node->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_brokers = ''; SELECT pg_reload_conf()");
ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT broker_state FROM infra.kafka_stats') eq 'not configured' }, 30),
	'the worker holds back (no brokers)');
my %session;
for my $name (qw(b a))
{
	my %s = (in => '', out => '');
	$s{h} = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres') ],
		'<', \$s{in}, '>', \$s{out}, '2>', \$s{out}, IPC::Run::timeout(120));
	$session{$name} = \%s;
}
my $step = 0;
sub in_session
{
	my ($name, $sql) = @_;
	my $s = $session{$name};
	$step++;
	$s->{in} .= "$sql;\n\\echo step $step\n";
	$s->{h}->pump until $s->{out} =~ /^step $step$/m;
	my ($result) = $s->{out} =~ /(\d+)\nstep $step$/m;
	return $result;
}
in_session('b', "SELECT infra.kafka_send('$t', 'k:0', 'k')");    # b's block first
my $a_id = in_session('a', "SELECT infra.kafka_send('$t', 'k:1', 'k')");
my $b_id = in_session('b', "SELECT infra.kafka_send('$t', 'k:2', 'k')");
for my $n (3 .. 10)
{
	in_session($n % 2 ? 'a' : 'b', "SELECT infra.kafka_send('$t', 'k:$n', 'k')");
}
cmp_ok($b_id, "<", $a_id, 'a later commit carries a smaller id (the other backend\'s block)');
$_->{h}->finish for values %session;
$node->safe_psql('postgres', q{ALTER SYSTEM SET infra.kafka_brokers = '127.0.0.1:1';
ALTER SYSTEM SET infra.kafka_config = 'message.timeout.ms=2000'; SELECT pg_reload_conf()});
ok( wait_until(
		sub {
			$node->safe_psql('postgres', "SELECT count(*) FROM infra.kafka_outbox_batches WHERE attempts > 0") >= 2;
		},
		60),
	'against a dead broker the round moves to the table, a row per logical message');
$node->safe_psql('postgres', qq{ALTER SYSTEM SET infra.kafka_brokers = '$bootstrap';
ALTER SYSTEM RESET infra.kafka_config; SELECT pg_reload_conf()});
ok(flush_ok(120), 'with the broker back, the moved rows are delivered');
my (%first, @order);
for my $m (consume($t))
{
	push @order, $m->[1] unless $first{ $m->[1] }++;
}
is_deeply(\@order, [ map { "k:$_" } 0 .. 10 ], 'in commit order, whatever their ids');

# --- worker SIGKILLed, then PostgreSQL crashed, mid-stream ------------------
$t = "infra_t_wal_crash_$$";
$node->safe_psql('postgres', qq{
SELECT infra.kafka_send('$t', 'k' || (i % 10) || ':' || i, 'k' || (i % 10)) FROM generate_series(1, 5000) i;
});
my $killed = worker_pid($node, 'postgres');
kill 'KILL', $killed;
ok(wait_until(sub { my ($rc, $p) = eval { $node->psql('postgres', 'SELECT pid FROM infra.worker_status') };
		defined $rc && $rc == 0 && $p ne '' && $p ne $killed }, 60), 'the worker is back after SIGKILL');
$node->safe_psql('postgres', qq{
SELECT infra.kafka_send('$t', 'k' || (i % 10) || ':' || i, 'k' || (i % 10)) FROM generate_series(5001, 10000) i;
});
$node->stop('immediate');
$node->start;
ok(flush_ok(180), 'after a crash of PostgreSQL, every committed message is delivered');
my @crash_run = consume($t);
my %seen = map { $_->[1] => 1 } @crash_run;
is(scalar(keys %seen), 10000, 'none of the 10,000 is lost');
ok(per_key_ordered(@crash_run), 'per key, first arrivals keep commit order');

# --- the slot keeps no WAL once delivered -------------------------------------
$node->safe_psql('postgres', 'CHECKPOINT');
$node->safe_psql('postgres', "SELECT infra.kafka_send('$t', 'last', 'k0')");
ok(flush_ok(60), 'a last message delivered');
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn) < 1024 * 1024 FROM pg_replication_slots WHERE slot_name = '$slot'"
			) eq 't';
		},
		30),
	'the slot confirms up to the end of the WAL');
is($node->safe_psql('postgres', 'SELECT pending FROM infra.kafka_stats'), '0', 'kafka_stats shows nothing pending');

# --- infra.kafka_wait_for_standbys ---------------------------------------------
# A round read from the WAL goes only once the named standby has flushed it.
my $primary = infra_node('walbox_primary', init => { allows_streaming => 1 },
	conf => "infra.kafka_brokers = '$bootstrap'\nwal_level = logical\ninfra.kafka_outbox = wal\n$plugins");
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION infra');
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('walbox_standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);
ok( wait_until(
		sub {
			$primary->safe_psql('postgres',
				"SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical' AND confirmed_flush_lsn IS NOT NULL") eq '1';
		},
		60),
	'the primary\'s worker has its slot');
$t = "infra_t_wal_standby_$$";
$primary->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_wait_for_standbys = 'ANY 1 (walbox_standby)'; SELECT pg_reload_conf()");
$primary->safe_psql('postgres', "SELECT infra.kafka_send('$t', 'while streaming')");
is($primary->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')"), 't', 'with the standby streaming, messages go');
$standby->stop;
my $sid = $primary->safe_psql('postgres', "SELECT infra.kafka_send('$t', 'standby away')");
cmp_ok($sid, '>=', $wal_first_id, 'sent through the WAL outbox');
is($primary->safe_psql('postgres', "SELECT infra.kafka_flush('2 s')"), 'f', 'with the standby away, the message waits');
like($primary->safe_psql('postgres', 'SELECT waiting_for FROM infra.kafka_stats'), qr/^standbys: waiting for ANY 1 \(walbox_standby\)/,
	'kafka_stats.waiting_for says which standbys');
is(scalar(grep { $_->[1] eq 'standby away' } consume($t)), 0, 'Kafka does not have it');
$standby->start;
is($primary->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')"), 't', 'the standby back: the message goes');
is_deeply([ map { $_->[1] } consume($t) ], [ 'while streaming', 'standby away' ], 'each once, in order');
$standby->stop;
$primary->stop;

# --- without wal_level = logical: the table outbox ----------------------------
my $replica = infra_node('walbox_replica', conf => "infra.kafka_outbox = wal\nwal_level = replica\n$plugins");
$replica->start;
$replica->safe_psql('postgres', 'CREATE EXTENSION infra');
ok(wait_until(sub { slurp_file($replica->logfile) =~ /infra\.kafka_outbox is wal but wal_level is not logical/ }, 30),
	'a warning says the WAL outbox needs wal_level = logical');
my $rid = $replica->safe_psql('postgres', "SELECT infra.kafka_send('t', 'kept in the table')");
cmp_ok($rid, '<', $wal_first_id, 'kafka_send takes a table-outbox id');
is($replica->safe_psql('postgres', 'SELECT value FROM infra.kafka_outbox'), 'kept in the table',
	'and writes the table outbox');
$replica->stop;

$node->stop;
done_testing();
