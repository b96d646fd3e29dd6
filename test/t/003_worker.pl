# The infra worker's lifecycle: start, idle without polling, SIGHUP reload,
# SIGTERM exit and restart, SIGKILL crash and restart.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

# TAP clusters default to restart_after_crash = off; servers in production don't.
my $node = infra_node('worker', conf => "restart_after_crash = on\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');

sub status { return worker_status($node, 'postgres', $_[0]); }

ok(wait_until(sub { status('state') eq 'running' }),
	'worker reaches state running');
my $pid = status('pid');
like($pid, qr/^\d+$/, 'worker_status shows its pid');
is( $node->safe_psql('postgres',
		"SELECT backend_type || '/' || datname || '/' || application_name "
		  . "FROM pg_stat_activity WHERE pid = $pid"),
	'infra worker/postgres/infra worker',
	'pg_stat_activity shows the worker with its own backend_type');
is($node->safe_psql('postgres', "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $pid"),
	'Extension', 'an idle worker waits on its latch');

# An idle worker must not wake up: count its context switches over 3 s.
sub switches
{
	my $status = slurp_file("/proc/$pid/status");
	$status =~ /^voluntary_ctxt_switches:\s+(\d+)/m or die "no ctxt switches";
	return $1;
}
my $before = switches();
sleep 3;
my $idle_wakeups = switches() - $before;
cmp_ok($idle_wakeups, '<=', 1, "idle worker does not poll ($idle_wakeups wakeups in 3 s)");

# SIGHUP: configuration reloaded by the same process.
my $offset = -s $node->logfile;
is(status('last_reload'), '', 'no reload recorded before SIGHUP');
kill 'HUP', $pid;
ok(wait_until(sub { status('last_reload') ne '' }), 'SIGHUP is recorded as a reload');
is(status('pid'), $pid, 'worker survives SIGHUP');
like(slurp_log_since($node, $offset),
	qr/infra worker for database "postgres" reloaded its configuration/,
	'reload is logged');

# SIGTERM: clean exit, then the postmaster starts a new worker.
$offset = -s $node->logfile;
kill 'TERM', $pid;
ok(wait_until(sub { my $p = status('pid'); $p ne '' && $p ne $pid }, 30),
	'a new worker replaces one stopped by SIGTERM');
ok(wait_until(sub { status('state') eq 'running' }), 'the new worker serves');
my $log = slurp_log_since($node, $offset);
like($log, qr/infra worker for database "postgres" shutting down/,
	'SIGTERM leads to a clean, logged exit');
unlike($log, qr/terminated by signal|server process .* was terminated/,
	'SIGTERM is not a crash');
$pid = status('pid');

# SIGKILL: the postmaster treats it as a crash, reinitialises and restarts.
$offset = -s $node->logfile;
kill 'KILL', $pid;
ok( wait_until(
		sub {
			my ($rc, $p) = $node->psql('postgres',
				"SELECT pid FROM infra.worker_status WHERE database = 'postgres'");
			$rc == 0 && $p ne '' && $p ne $pid;
		},
		60),
	'a new worker replaces one killed by SIGKILL');
ok(wait_until(sub { status('state') eq 'running' }), 'and serves again');
like(slurp_log_since($node, $offset),
	qr/infra worker.*was terminated by signal 9/,
	'the kill was handled as a crash by the postmaster');

$node->stop;
done_testing();
