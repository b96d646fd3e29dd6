# Loaded without shared_preload_libraries: the extension installs, functions
# that need no shared memory work, the others explain how to fix it.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $node = infra_node('nopreload', preload => 0);
$node->start;

my ($rc, $out, $err) = $node->psql('postgres', 'CREATE EXTENSION infra');
is($rc, 0, 'CREATE EXTENSION succeeds without shared_preload_libraries');
is($node->safe_psql('postgres', 'SELECT infra.version()'),
	'1.2', 'infra.version() needs no shared memory');

for my $query ('SELECT * FROM infra.worker_status',
	'SELECT * FROM infra.shmem_segments')
{
	($rc, $out, $err) =
	  $node->psql('postgres', $query, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
	isnt($rc, 0, "$query fails without preload");
	like($err, qr/ERROR:  55000: .* requires infra to be loaded via shared_preload_libraries/,
		'error has SQLSTATE 55000 and says what is missing');
	like($err,
		qr/HINT:  Add infra to shared_preload_libraries in postgresql\.conf and restart the server\./,
		'hint says how to fix it');
}

is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'infra worker'"),
	'0',
	'no worker runs without preload');

# Preloading afterwards brings everything to life without reinstalling.
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'infra'\n");
$node->restart;
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				'SELECT state FROM infra.worker_status') eq 'running';
		}),
	'after a restart with preload the worker serves the existing extension');

$node->stop;
done_testing();
