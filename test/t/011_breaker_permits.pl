# A half-open probe permit is never lost with the backend holding it: it is
# given back when the backend's query is cancelled, when the backend is
# terminated, and a crash (SIGKILL) resets shared state rather than leaving
# the breaker stuck in half-open.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $node = infra_node('breaker', conf => "restart_after_crash = on\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION infra;
INSERT INTO infra.circuit_breakers (name, open_duration, half_open_permitted_calls)
VALUES ('tap_b', '1 hour', 1);
});

sub permits
{
	return $node->safe_psql('postgres',
		"SELECT state || '/' || half_open_permits_in_use "
		  . "FROM infra.circuit_breaker_state WHERE name = 'tap_b'");
}

# A session that takes the only permit, then sits in a long query.
sub start_holder
{
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('postgres') . ' application_name=holder',
		  '-c', "SELECT infra.breaker_allow('tap_b'); SELECT pg_sleep(600)" ],
		'>', \my $out, '2>', \my $err, IPC::Run::timeout(700));
	ok(wait_until(sub { permits() eq 'half_open/1' }, 30), 'the holder took the permit');
	is($node->safe_psql('postgres', "SELECT infra.breaker_allow('tap_b')"),
		'f', 'nobody else gets a probe while it holds it');
	return $h;
}

my $holder_pid = q{(SELECT pid FROM pg_stat_activity WHERE application_name = 'holder')};

# Cancel: the query errors, the transaction aborts, the permit comes back.
$node->safe_psql('postgres', "SELECT infra.breaker_force('tap_b', 'half_open')");
my $h = start_holder();
$node->safe_psql('postgres', "SELECT pg_cancel_backend($holder_pid)");
$h->finish;
ok(wait_until(sub { permits() eq 'half_open/0' }, 30), 'cancel gives the permit back');

# Terminate: the backend exits, the permit comes back.
$node->safe_psql('postgres', "SELECT infra.breaker_force('tap_b', 'half_open')");
$h = start_holder();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($holder_pid)");
$h->finish;
ok(wait_until(sub { permits() eq 'half_open/0' }, 30), 'terminate gives the permit back');
# Permits belong to a session: probe and report in the same one.
is( $node->safe_psql('postgres',
		"SELECT infra.breaker_allow('tap_b'); SELECT infra.breaker_success('tap_b')"),
	"t\n", 'the next caller may probe');
is(permits(), 'closed/0', 'and its success closes the breaker');

# SIGKILL: the postmaster reinitialises shared memory; no stuck half-open.
$node->safe_psql('postgres', "SELECT infra.breaker_force('tap_b', 'half_open')");
$h = start_holder();
my $pid = $node->safe_psql('postgres', "SELECT $holder_pid");
kill 'KILL', $pid;
$h->finish;
ok( wait_until(
		sub {
			# While the postmaster restarts, psql may exit before it reads its
			# input: a broken pipe means not yet (it ended this test once on 18).
			my ($rc, $out) = eval { $node->psql('postgres', "SELECT infra.breaker_allow('tap_b')") };
			defined $rc && $rc == 0 && $out eq 't';
		},
		60),
	'after a crash the breaker lets calls through again');

$node->stop;
done_testing();
