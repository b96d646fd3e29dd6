# kafka_send() against the real broker, verified from outside with kcat:
# commit vs rollback, keys/headers/partition, per-key commit order across
# concurrent transactions, nothing lost when the broker is SIGKILLed, the
# worker is SIGKILLed or PostgreSQL crashes mid-stream, and a bad
# infra.kafka_config refused while the producer keeps working.
use strict;
use warnings;

use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $node = infra_node('kafka',
	conf => "infra.kafka_brokers = '$bootstrap'\nrestart_after_crash = on\nautovacuum_naptime = 1\nlog_autovacuum_min_duration = 0\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');

# consume(topic, expected_count): every message as [key, value, headers, partition].
sub consume
{
	my ($topic) = @_;
	my ($out, $err);
	IPC::Run::run(
		[ 'kcat', '-b', $bootstrap, '-C', '-t', $topic, '-o', 'beginning', '-e', '-q',
		  '-f', '%k\t%s\t%h\t%p\n' ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(120));
	return map { [ split /\t/, $_, -1 ] } split /\n/, $out;
}

sub flush_ok
{
	my ($seconds) = @_;
	return $node->safe_psql('postgres', "SELECT infra.kafka_flush('$seconds s')") eq 't';
}

# --- commit vs rollback -----------------------------------------------------
my $t = "infra_t_send_$$";
$node->safe_psql('postgres', qq{
BEGIN;
SELECT infra.kafka_send('$t', 'one', 'k1', '{"origin": "test", "n": 1}');
SELECT infra.kafka_send('$t', '{"two": 2}'::jsonb, 'k2');
SELECT infra.kafka_send('$t', '\\x0001ff'::bytea, NULL, NULL, 0);
COMMIT;
BEGIN;
SELECT infra.kafka_send('$t', 'rolled back', 'k1');
ROLLBACK;
});
ok(flush_ok(60), 'kafka_flush sees the committed messages delivered');
my @got = consume($t);
is(scalar @got, 3, 'exactly the three committed messages arrive');
is_deeply([ map { $_->[1] } @got[0, 1] ], [ 'one', '{"two": 2}' ], 'values, text and jsonb, in order');
is($got[0][0], 'k1', 'the key is kept');
like($got[0][2], qr{infra-msg-id=\d+/\d+/1/\d+}, 'infra-msg-id header: system id, database, timeline, outbox id');
like($got[0][2], qr/origin=test/, 'user headers are sent');
like($got[0][2], qr/n=1/, 'non-string header values are sent as JSON');
is($got[2][3], '0', 'an explicit partition is used');
my ($pending, $delivered) = split /\|/, $node->safe_psql('postgres',
	'SELECT pending, delivered_total FROM infra.kafka_stats');
is($pending, '0', 'the outbox is empty once delivered');
is($delivered, '3', 'kafka_stats counts the deliveries');

# --- per-key commit order across concurrent transactions --------------------
$t = "infra_t_order_$$";
my ($in1, $out1, $in2, $out2) = ('', '', '', '');
my $s1 = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres') ],
	'<', \$in1, '>', \$out1, '2>', \$out1, IPC::Run::timeout(60));
my $s2 = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres') ],
	'<', \$in2, '>', \$out2, '2>', \$out2, IPC::Run::timeout(60));
$in1 .= "BEGIN; SELECT infra.kafka_send('$t', 'a1', 'same');\n";
$s1->pump until $out1 =~ /^\d+$/m;
$in2 .= "BEGIN; SELECT infra.kafka_send('$t', 'b1', 'same'); COMMIT;\n";
ok( wait_until(
		sub {
			$s2->pump_nb;
			$node->safe_psql('postgres',
				"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted") eq '1';
		},
		30),
	'a second sender of the same key waits for the first');
$in1 .= "SELECT infra.kafka_send('$t', 'a2', 'same'); COMMIT;\n";
$in1 .= "\\q\n";
$s1->finish;
$in2 .= "\\q\n";
$s2->finish;
ok(flush_ok(60), 'both transactions delivered');
is_deeply([ map { $_->[1] } consume($t) ], [ 'a1', 'a2', 'b1' ],
	'per key, messages arrive in commit order');

# --- broker SIGKILLed while 10,000 messages flow ----------------------------
$t = "infra_t_crash_$$";
$node->safe_psql('postgres', qq{
SELECT infra.kafka_send('$t', 'm' || i, 'k' || (i % 10))
  FROM generate_series(1, 5000) i;
});
ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT pending FROM infra.kafka_stats') < 5000 }, 60),
	'delivery has started');
ok(kafka_ctl('kill'), 'broker SIGKILLed mid-stream');
$node->safe_psql('postgres', qq{
SELECT infra.kafka_send('$t', 'm' || i, 'k' || (i % 10))
  FROM generate_series(5001, 10000) i;
});
cmp_ok($node->safe_psql('postgres', 'SELECT pending FROM infra.kafka_stats'), '>=', 5000,
	'messages committed while the broker is down wait in the outbox');
ok(kafka_ctl('start'), 'broker restarted');
ok(flush_ok(180), 'every message is delivered after the restart');
my %value_of_id;
my %values;
my $conflicts = 0;
for my $m (consume($t))
{
	my ($id) = $m->[2] =~ /infra-msg-id=([^,]+)/;
	$conflicts++ if defined $value_of_id{$id} && $value_of_id{$id} ne $m->[1];
	$value_of_id{$id} = $m->[1];
	$values{ $m->[1] }++;
}
is(scalar(keys %values), 10000, 'all 10,000 messages arrived (none lost)');
is(scalar(keys %value_of_id), 10000, 'with 10,000 distinct infra-msg-ids');
is($conflicts, 0, 'every duplicate shares its infra-msg-id with its original');

# --- worker SIGKILLed, then PostgreSQL crashed, mid-stream ------------------
$t = "infra_t_pgcrash_$$";
$node->safe_psql('postgres', qq{
SELECT infra.kafka_send('$t', 'p' || i, 'k' || (i % 10)) FROM generate_series(1, 5000) i;
});
my $killed = worker_pid($node, 'postgres');
kill 'KILL', $killed;
# A new worker, not the killed one still listed before the postmaster has
# noticed (its crash restart would then break the next statement).
# While the server restarts, psql may exit before reading its input: IPC::Run
# then dies of the broken pipe, which only means "not yet".
ok(wait_until(sub { my ($rc, $p) = eval { $node->psql('postgres', 'SELECT pid FROM infra.worker_status') };
		defined $rc && $rc == 0 && $p ne '' && $p ne $killed }, 60), 'the worker is back after SIGKILL');
$node->safe_psql('postgres', qq{
SELECT infra.kafka_send('$t', 'p' || i, 'k' || (i % 10)) FROM generate_series(5001, 10000) i;
});
$node->stop('immediate');
$node->start;
ok(flush_ok(180), 'after a crash of PostgreSQL, every committed message is delivered');
my %seen = map { $_->[1] => 1 } consume($t);
is(scalar(keys %seen), 10000, 'none of the 10,000 is lost');

# --- configuration ----------------------------------------------------------
my ($rc, $out, $err) = $node->psql('postgres',
	"ALTER SYSTEM SET infra.kafka_config = 'no.such.property=1'");
isnt($rc, 0, 'an unknown librdkafka property is refused');
like($err, qr/invalid value for parameter "infra\.kafka_config"/, 'naming the setting');
like($err, qr/librdkafka refused property "no\.such\.property"/, 'and the property');
# Secrets go in a file: PostgreSQL logs every changed setting on reload.
my $props = $node->data_dir . '/kafka.properties';
append_to_file($props, "# producer properties\nclient.id = infra-test\nsasl.password = s3cret\n");
chmod 0600, $props;
$node->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_config = '\@$props'");
$node->reload;
is($node->safe_psql('postgres', 'SHOW infra.kafka_config'), '(hidden)', 'the setting is never shown');
$t = "infra_t_after_$$";
$node->safe_psql('postgres', "SELECT infra.kafka_send('$t', 'still works')");
ok(flush_ok(60), 'the producer works with the properties from the file');
unlike(slurp_file($node->logfile), qr/s3cret/, 'the secret never reaches the log');
($rc, $out, $err) = $node->psql('postgres',
	"ALTER SYSTEM SET infra.kafka_config = '\@/nonexistent/kafka.properties'");
like($err, qr/Cannot read file "\/nonexistent\/kafka\.properties"/, 'a missing properties file is refused');

# --- bad input --------------------------------------------------------------
($rc, $out, $err) = $node->psql('postgres', "SELECT infra.kafka_send('bad topic', 'x')");
like($err, qr/topic name "bad topic" contains the character " "/, 'invalid topic names are refused');
($rc, $out, $err) = $node->psql('postgres', "SELECT infra.kafka_send(NULL, 'x')");
like($err, qr/topic must not be NULL/, 'NULL topic is refused');
($rc, $out, $err) = $node->psql('postgres', "SELECT infra.kafka_send('t', 'x', 'k', '[1]')");
like($err, qr/headers must be a JSON object/, 'headers must be an object');
($rc, $out, $err) = $node->psql('postgres', "SELECT infra.kafka_send('t', 'x', partition => -1)");
like($err, qr/partition must not be negative/, 'negative partitions are refused');

# --- set-based publishing reaches the broker ------------------------------------
# kafka_send_many and the statement trigger write the same outbox rows as
# kafka_send: delivered in order, keyed, the rolled-back ones never.
my $t_many = "infra_t_many_$$";
$node->safe_psql('postgres', qq{
	SELECT infra.kafka_send_many('$t_many', array_agg('v' || g ORDER BY g), array_agg('k' || (g % 3) ORDER BY g))
	  FROM generate_series(1, 1200) g;
	BEGIN;
	SELECT infra.kafka_send_many('$t_many', ARRAY['rolled back']);
	ROLLBACK;
	CREATE TABLE many_t (id int PRIMARY KEY, n int);
	INSERT INTO many_t SELECT g, 0 FROM generate_series(1, 50) g;
	CREATE TRIGGER many_t_publish AFTER UPDATE ON many_t
	    REFERENCING OLD TABLE AS o NEW TABLE AS n
	    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('$t_many');
	UPDATE many_t SET n = n + 1;
});
ok(flush_ok(60), 'kafka_send_many and the statement trigger: delivered');
my @many = consume($t_many);
is(scalar(@many), 1250, 'every message once, none of the rolled-back call');
is(join(',', map { $_->[1] } grep { $_->[0] eq 'k1' } @many),
	join(',', map { "v$_" } grep { $_ % 3 == 1 } 1 .. 1200), 'per key, in the order of the array');
my @updates = grep { $_->{op} eq 'update' } map { $_->[1] =~ /^\{/ ? JSON::PP::decode_json($_->[1]) : () } @many;
is( scalar(
		grep {
			     $_->{before}{id} == $_->{after}{id}
			  && $_->{before}{n} == 0
			  && $_->{after}{n} == 1
		} @updates),
	50,
	'the statement trigger sends each updated row with its before and after');
is(join(',', sort { $a <=> $b } map { $_->[0] } grep { $_->[1] =~ /^\{/ } @many), join(',', 1 .. 50),
	'keyed by the primary key');

# --- an error in a round is survived ------------------------------------------
# A table the worker reads is gone for a while: each round fails inside SPI.
# The worker's error recovery must forget SPI's error context callbacks (their
# stack frames are gone); it once called them at its next report and crashed.
my $wpid = worker_pid($node, 'postgres');
my $err_offset = -s $node->logfile;
$node->safe_psql('postgres', 'ALTER TABLE infra.topics RENAME TO topics_away');
my $t_err = "infra_t_err_$$";
$node->safe_psql('postgres', "SELECT infra.kafka_send('$t_err', 'during the errors')");
ok( wait_until(
		sub {
			my @failed = slurp_log_since($node, $err_offset) =~ /relation "infra\.topics" does not exist/g;
			return @failed >= 2;
		},
		30),
	'the rounds fail while the table is away, again and again');
$node->safe_psql('postgres', 'ALTER TABLE infra.topics_away RENAME TO topics');
ok(flush_ok(60), 'delivery resumes once the table is back');
my $err_log = slurp_log_since($node, $err_offset);
unlike($err_log, qr/terminated by signal/, 'and no process crashed');
is(worker_pid($node, 'postgres'), $wpid, 'the same worker process serves on');

# --- the worker reports its table statistics: autovacuum sees the outbox ------
# A background worker reports them itself; without it the outbox showed no
# deletes and every row live, and autovacuum never came.
# No autoanalyze of it meanwhile: an ANALYZE sets n_live_tup and n_dead_tup
# to what its sample saw, so one that sampled before the worker's deletes
# and reported after them left 29 dead rows counted of 300 and autovacuum
# never came (once in a full run on PostgreSQL 15).
$node->safe_psql('postgres', 'ALTER TABLE infra.kafka_outbox_batches SET '
	  . '(autovacuum_vacuum_threshold = 50, autovacuum_vacuum_scale_factor = 0,'
	  . ' autovacuum_analyze_threshold = 2147483647)');
my $tab = q{SELECT n_tup_del, autovacuum_count FROM pg_stat_user_tables
             WHERE relid = 'infra.kafka_outbox_batches'::regclass};
my ($del_before) = split /\|/, $node->safe_psql('postgres', $tab);
# The dead rows must stay dead until autovacuum looks: any scan of a full page
# prunes the rows deleted on it and takes them off n_dead_tup, so with the
# worker reading and deleting round after round, the count left could fall
# under the threshold and autovacuum rightly never came (twice in full CI
# runs, once on each version). A snapshot held open keeps them unprunable.
my ($hold_in, $hold_out) = ('', '');
my $holder = IPC::Run::start([ 'psql', '-XAtq', '-d', $node->connstr('postgres') ],
	'<', \$hold_in, '>', \$hold_out, '2>', \$hold_out, IPC::Run::timeout(300));
$hold_in .= "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 'held';\n";
$holder->pump until $hold_out =~ /^held$/m;
my $av_before = (split /\|/, $node->safe_psql('postgres', $tab))[1];
my $t_stats = "infra_t_stats_$$";
$node->safe_psql('postgres', join('', map { "SELECT infra.kafka_send('$t_stats', 'm$_');\n" } 1 .. 300));
ok(flush_ok(60), '300 single-message transactions delivered');
ok( wait_until(
		sub {
			my ($del) = split /\|/, $node->safe_psql('postgres', $tab);
			return $del >= $del_before + 300;
		},
		30),
	'pg_stat_user_tables counts the worker\'s deletes from the outbox')
  or diag($node->safe_psql('postgres', $tab));
ok( wait_until(sub { (split /\|/, $node->safe_psql('postgres', $tab))[1] > $av_before }, 180),
	'and autovacuum has vacuumed the outbox')
  or diag(
	$node->safe_psql('postgres', q{SELECT n_live_tup, n_dead_tup, last_autovacuum, autovacuum_count
	                                FROM pg_stat_user_tables WHERE relid = 'infra.kafka_outbox_batches'::regclass}),
	"\n",
	$node->safe_psql('postgres', q{SELECT pid, backend_type, state, wait_event_type, wait_event, xact_start, query
	                                FROM pg_stat_activity WHERE backend_type <> 'client backend'}),
	"\n",
	$node->safe_psql('postgres', q{SELECT pid, mode, granted FROM pg_locks
	                                WHERE relation = 'infra.kafka_outbox_batches'::regclass}),
	"\n",
	join("\n", grep { defined } (grep { /vacuum/i } split /\n/, slurp_log_since($node, 0))[-40 .. -1]));
$hold_in .= "COMMIT;\n\\q\n";
$holder->finish;

# --- an idle worker says what it knows of the broker --------------------------
# After a restart, with nothing sent, the worker has asked the broker for its
# metadata: up, not "connecting" until the first message.
$node->restart;
ok( wait_until(
		sub { $node->safe_psql('postgres', 'SELECT broker_state FROM infra.kafka_stats') eq 'up' }, 15),
	'after a restart, with no message sent, broker_state is up');
like($node->safe_psql('postgres', 'SELECT infra.metrics_prometheus()'),
	qr/^infra_kafka_broker_up\{[^}]*\} 1$/m, 'and infra_kafka_broker_up is 1 on the idle system');
$node->stop;

# No broker where the setting points: never "up".
my $nobroker = infra_node('kafka_nobroker', conf => "infra.kafka_brokers = '127.0.0.1:1'\n");
$nobroker->start;
$nobroker->safe_psql('postgres', 'CREATE EXTENSION infra');
sleep 7;
isnt($nobroker->safe_psql('postgres', 'SELECT broker_state FROM infra.kafka_stats'), 'up',
	'with no broker listening, broker_state is not up');
like($nobroker->safe_psql('postgres', 'SELECT infra.metrics_prometheus()'),
	qr/^infra_kafka_broker_up\{[^}]*\} 0$/m, 'and infra_kafka_broker_up is 0');
# librdkafka's own lines (here: the refused connection) go through the
# server's logging, with a level, never raw ("%3|...|FAIL|...").
my $nolog = slurp_file($nobroker->logfile);
like($nolog, qr/WARNING:  librdkafka FAIL: .*127\.0\.0\.1:1/, 'librdkafka\'s lines are server log lines with a level');
unlike($nolog, qr/^%\d\|/m, 'no raw librdkafka line reaches the server log');
$nobroker->stop;
done_testing();
