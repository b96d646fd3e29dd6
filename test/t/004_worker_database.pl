# The worker's database: missing (backoff, no crash loop), created late,
# extension not yet created, dropped and created again.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use InfraTest;

my $node = infra_node('workerdb', conf => "infra.database = 'postgres, latecomer'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');

sub latecomer { return worker_status($node, 'latecomer', $_[0]); }

ok(wait_until(sub { latecomer('state') eq 'waiting_for_database' }),
	'worker for a missing database waits for it');
is(latecomer('last_error'),
	'database "latecomer" named in infra.database does not exist',
	'worker_status says why');
is(worker_status($node, 'postgres', 'state'),
	'running', 'the other database is served meanwhile');

# Backoff, not a crash loop: over 8 s, a 2 s restart loop would make four
# failed connections per worker; each of the database's three workers
# (delivery, metric queries, http) makes one and then waits.
sleep 8;
my $log = slurp_file($node->logfile);
my $fatals = () = $log =~ /FATAL:  database "latecomer" does not exist/g;
is($fatals, 3, 'one failed connection per worker, then backoff');
my $reports = () = $log =~ /LOG:  database "latecomer" named in infra.database does not exist/g;
is($reports, 3, 'the missing database is logged once per worker, with a hint');
like($log, qr/HINT:  Create the database, or change infra\.database/,
	'the hint says what to do');

# CREATE DATABASE wakes the waiting worker at commit.  By now its backoff is
# 8 s, so connecting within 6 s shows it did not just time out.
my $t0 = time();
$node->safe_psql('postgres', 'CREATE DATABASE latecomer');
ok(wait_until(sub { latecomer('state') eq 'waiting_for_extension' }, 30),
	'worker connects once the database exists');
my $elapsed = time() - $t0;
cmp_ok($elapsed, '<', 6, sprintf('CREATE DATABASE woke the worker (%.1f s)', $elapsed));
like(slurp_file($node->logfile),
	qr/infra worker waiting for CREATE EXTENSION infra in database "latecomer"/,
	'waiting for the extension is logged');

my $pid = latecomer('pid');
$node->safe_psql('latecomer', 'CREATE EXTENSION infra');
ok(wait_until(sub { latecomer('state') eq 'running' }, 10),
	'CREATE EXTENSION starts the service');

$node->safe_psql('latecomer', 'DROP EXTENSION infra');
ok(wait_until(sub { latecomer('state') eq 'waiting_for_extension' }, 10),
	'DROP EXTENSION puts the worker back to waiting');
is(latecomer('pid'), $pid, 'the worker keeps running across DROP EXTENSION');

$node->safe_psql('latecomer', 'CREATE EXTENSION infra');
ok(wait_until(sub { latecomer('state') eq 'running' }, 10),
	'a later CREATE EXTENSION is picked up');
is(latecomer('pid'), $pid, 'by the same worker');

$node->stop;
done_testing();
