# Metric queries attacked as a role with only the documented grant (INSERT,
# UPDATE, DELETE on infra.metric_queries) would attack them:
# - a row naming a role its author may not SET ROLE to (16+: a membership
#   granted WITH SET FALSE, as a CREATEROLE user's in the roles it creates)
#   is refused as it is written, and a right revoked later stops the next
#   run;
# - nothing a query does outlives it: a session setting
#   (default_transaction_read_only) is undone, a session advisory lock is
#   released and the run failed for it, a prepared statement is dropped;
# - none of it reaches Kafka delivery, which runs in another session: every
#   message reaches the broker once while such queries run, and delivery
#   latency does not move while a metric query sleeps for its whole timeout;
# - the delivery worker sets what it relies on itself: a database setting
#   default_transaction_read_only = on does not stop it.
use strict;
use warnings;

use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $node = infra_node('mq_isolation', conf => <<"CONF");
infra.database = 'postgres'
infra.kafka_brokers = '$bootstrap'
infra.metrics_listen = '127.0.0.1:$port'
CONF
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
my $pg16 = $node->safe_psql('postgres', q{SELECT current_setting('server_version_num')::int >= 160000}) eq 't';
my $http = HTTP::Tiny->new(timeout => 10);
sub scrape { my $r = $http->get("http://127.0.0.1:$port/metrics"); return $r->{status} == 200 ? $r->{content} : ''; }

sub status
{
	my ($name, $col) = @_;
	return $node->safe_psql('postgres', "SELECT $col FROM infra.metric_query_status WHERE name = '$name'");
}

# The attacker: the documented grant on metric_queries, CREATEROLE, and its
# own schema first on its search_path.
$node->safe_psql('postgres', q{
CREATE ROLE mallory LOGIN CREATEROLE;
GRANT INSERT, UPDATE, DELETE, SELECT ON infra.metric_queries TO mallory;
CREATE SCHEMA mallory AUTHORIZATION mallory;
ALTER ROLE mallory SET search_path = mallory, public, pg_catalog;
CREATE ROLE payroll;
CREATE SCHEMA payroll AUTHORIZATION payroll;
CREATE TABLE payroll.salaries (who text, amount int);
ALTER TABLE payroll.salaries OWNER TO payroll;
INSERT INTO payroll.salaries VALUES ('ceo', 999999);
});
my @as_mallory = (extra_params => [ '-U', 'mallory' ]);

# --- hole 1: run_as a role the author may not become --------------------------------------
SKIP:
{
	skip 'membership WITH SET FALSE exists from PostgreSQL 16', 5 unless $pg16;
	$node->safe_psql('postgres', 'GRANT payroll TO mallory WITH SET FALSE, INHERIT FALSE');
	my ($rc, $out, $err) = $node->psql('postgres', 'SELECT * FROM payroll.salaries', @as_mallory);
	like($err, qr/permission denied/, 'mallory cannot read payroll\'s table herself');
	($rc, $out, $err) = $node->psql('postgres', q{INSERT INTO infra.metric_queries (name, query, labels, gauges, run_as, "interval", timeout, enabled)
		VALUES ('leak', 'SELECT who, amount FROM payroll.salaries', '{who}', '{amount}', 'payroll', '1 s', '1 s', true)}, @as_mallory);
	like($err, qr/ERROR:  the role that wrote metric query "leak" may not SET ROLE to "payroll"/,
		'a row naming a role she is a member of WITH SET FALSE is refused at write');
	# A role mallory creates with CREATEROLE: on 16+ her membership in it has
	# no SET option unless createrole_self_grant says so.
	$node->safe_psql('postgres', 'CREATE ROLE made_by_mallory', @as_mallory);
	($rc, $out, $err) = $node->psql('postgres', q{INSERT INTO infra.metric_queries (name, query, gauges, run_as)
		VALUES ('own_role', 'SELECT 1 AS v', '{v}', 'made_by_mallory')}, @as_mallory);
	like($err, qr/may not SET ROLE to "made_by_mallory"/, 'a role she created (membership WITH ADMIN, not SET) is refused too');
	# SET granted, the row written, then the SET option taken away: the next
	# run fails and nothing of payroll's is served.
	$node->safe_psql('postgres', 'GRANT payroll TO mallory WITH SET TRUE');
	$node->safe_psql('postgres', q{INSERT INTO infra.metric_queries (name, query, labels, gauges, run_as, "interval", timeout, enabled)
		VALUES ('leak', 'SELECT who, amount FROM payroll.salaries', '{who}', '{amount}', 'payroll', '1 s', '1 s', true)}, @as_mallory);
	ok(wait_until(sub { scrape() =~ /^leak_amount\{who="ceo"\} 999999$/m }, 30), 'with the SET option the row runs as payroll');
	$node->safe_psql('postgres', 'GRANT payroll TO mallory WITH SET FALSE');
	ok( wait_until(
			sub {
				(status('leak', 'last_error') // '') =~ /^42501: the role that wrote metric query "leak" may not SET ROLE to "payroll"/
				  && scrape() !~ /^leak_amount/m;
			},
			30),
		'the SET option revoked: the next run fails, nothing of payroll\'s served');
}
# On every version: a membership revoked after the write stops the next run.
$node->safe_psql('postgres', 'REVOKE payroll FROM mallory; GRANT payroll TO mallory');
$node->safe_psql('postgres', q{DELETE FROM infra.metric_queries WHERE name = 'leak'});
$node->safe_psql('postgres', q{INSERT INTO infra.metric_queries (name, query, labels, gauges, run_as, "interval", timeout, enabled)
	VALUES ('leak2', 'SELECT who, amount FROM payroll.salaries', '{who}', '{amount}', 'payroll', '1 s', '1 s', true)}, @as_mallory);
ok(wait_until(sub { scrape() =~ /^leak2_amount\{who="ceo"\} 999999$/m }, 30), 'a member may run it as payroll');
$node->safe_psql('postgres', 'REVOKE payroll FROM mallory');
ok(wait_until(sub { (status('leak2', 'last_error') // '') =~ /^42501: .*may not SET ROLE to "payroll"/ && scrape() !~ /^leak2_amount/m }, 30),
	'membership revoked: the next run fails, nothing served');
$node->safe_psql('postgres', q{DELETE FROM infra.metric_queries WHERE name = 'leak2'});

# --- hole 2: nothing a query does outlives it, nor reaches delivery ------------------------
my $worker = $node->safe_psql('postgres', q{SELECT pid FROM infra.metric_query_workers});
my $delivery = $node->safe_psql('postgres', q{SELECT pid FROM infra.worker_status});
like($worker, qr/^\d+$/, 'a metric-query worker runs');
isnt($worker, $delivery, 'in a process apart from the delivery worker');

$node->safe_psql('postgres', q{INSERT INTO infra.metric_queries (name, query, gauges, "interval", timeout, run_as, enabled) VALUES
    ('read_only', $$SELECT 1 AS v FROM pg_catalog.set_config('default_transaction_read_only', 'on', false)$$, '{v}', '1 s', '1 s', 'mallory', true),
    ('session_set', $$SET SESSION statement_timeout = '1ms'; SELECT 1 AS v$$, '{v}', '1 s', '1 s', 'mallory', true),
    ('locks', 'SELECT 1 AS v FROM pg_catalog.pg_advisory_lock(4242)', '{v}', '1 s', '1 s', 'mallory', true),
    ('prepares', 'PREPARE mallory_plan AS SELECT 1; SELECT 1 AS v', '{v}', '1 s', '1 s', 'mallory', true),
    ('sees', $$SELECT (pg_catalog.current_setting('default_transaction_read_only') = 'off'
                       AND pg_catalog.current_setting('statement_timeout') = '0'
                       AND NOT EXISTS (SELECT FROM pg_catalog.pg_prepared_statements))::int AS clean$$, '{clean}', '1 s', '1 s', 'mallory', true)},
	@as_mallory);
ok(wait_until(sub { $node->safe_psql('postgres', q{SELECT count(*) FROM infra.metric_query_status WHERE runs >= 3}) == 5 }, 60),
	'each query has run three times');
like(status('locks', 'last_error'), qr/^0A000: metric query "locks" took a session-level advisory lock \(released\)/,
	'a session-level advisory lock fails the run, with the error in the status');
is(status('read_only', 'last_error'), '', 'a session setting changed is undone, not an error');
like(scrape(), qr/^sees_clean 1$/m, 'the next query sees the settings as they were and no prepared statement');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted}),
	'0', 'the advisory lock is not held between runs');

# Delivery while they run: each message once, and flush returns.
my $t = "infra_t_mqiso_$$";
$node->safe_psql('postgres', "SELECT count(infra.kafka_send('$t', 'm' || g, 'k')) FROM generate_series(1, 20) g");
is($node->safe_psql('postgres', q{SELECT infra.kafka_flush('30 s')}), 't', 'kafka_flush returns true while the queries run');
sleep 3;
my ($out, $err);
IPC::Run::run([ 'kcat', '-b', $bootstrap, '-C', '-t', $t, '-o', 'beginning', '-e', '-q', '-f', '%s\n' ],
	'>', \$out, '2>', \$err, IPC::Run::timeout(60));
is(scalar(() = $out =~ /^m\d+$/mg), 20, 'each of 20 messages reached the broker once, not again each round');
$node->safe_psql('postgres', q{DELETE FROM infra.metric_queries WHERE name IN ('read_only', 'session_set', 'locks', 'prepares', 'sees')});
ok(wait_until(sub { $node->safe_psql('postgres', q{SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND objid = 4242}) == 0 }, 10),
	'no advisory lock is left after the rows are gone');

# A query sleeping its whole timeout does not delay delivery.
sub send_latency
{
	my @ms;
	for my $i (1 .. 8)
	{
		my $start = time;
		$node->safe_psql('postgres', "SELECT infra.kafka_send('$t', 'lat$i'); SELECT infra.kafka_flush('30 s')");
		push @ms, (time - $start) * 1000;
		usleep(100_000);
	}
	return (sort { $a <=> $b } @ms)[-1];
}
my $idle_max = send_latency();
$node->safe_psql('postgres', q{INSERT INTO infra.metric_queries (name, query, gauges, "interval", timeout, run_as, enabled)
	VALUES ('sleeper', 'SELECT 1 AS v FROM pg_catalog.pg_sleep(4)', '{v}', '5 s', '4 s', 'mallory', true)}, @as_mallory);
ok(wait_until(sub { $node->safe_psql('postgres', q{SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE wait_event = 'PgSleep' AND backend_type = 'infra metric-query worker'}) == 1 }, 20),
	'the sleeping query runs');
my $busy_max = send_latency();
cmp_ok($busy_max, '<', 1500, "delivery latency while a metric query sleeps 4 s: max $busy_max ms (idle: $idle_max ms)");
$node->safe_psql('postgres', q{DELETE FROM infra.metric_queries WHERE name = 'sleeper'});

# --- the delivery worker sets what it relies on --------------------------------------------
$node->safe_psql('postgres', q{ALTER DATABASE postgres SET default_transaction_read_only = on});
$node->safe_psql('postgres', q{SELECT pg_terminate_backend(pid) FROM infra.worker_status});
ok(wait_until(sub { $node->safe_psql('postgres', q{SET default_transaction_read_only = off; SELECT state FROM infra.worker_status}) eq 'running' }, 30),
	'the delivery worker is back after a restart');
my $t2 = "infra_t_mqiso_ro_$$";
$node->safe_psql('postgres', "SET default_transaction_read_only = off; SELECT count(infra.kafka_send('$t2', 'r' || g)) FROM generate_series(1, 10) g");
is($node->safe_psql('postgres', q{SET default_transaction_read_only = off; SELECT infra.kafka_flush('30 s')}), 't',
	'with the database read-only by default, the worker still deletes what it sent');
sleep 2;
IPC::Run::run([ 'kcat', '-b', $bootstrap, '-C', '-t', $t2, '-o', 'beginning', '-e', '-q', '-f', '%s\n' ],
	'>', \$out, '2>', \$err, IPC::Run::timeout(60));
is(scalar(() = $out =~ /^r\d+$/mg), 10, 'each message once');
$node->safe_psql('postgres', q{SET default_transaction_read_only = off; ALTER DATABASE postgres RESET default_transaction_read_only});

done_testing();
