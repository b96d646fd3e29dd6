# Extension install in a preloaded server, and bad configuration at start.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $node = infra_node('install');
$node->start;

$node->safe_psql('postgres', 'CREATE EXTENSION infra');
is($node->safe_psql('postgres', 'SELECT infra.version()'),
	'1.2', 'infra.version() reports the library version');
is( $node->safe_psql('postgres',
		"SELECT extversion FROM pg_extension WHERE extname = 'infra'"),
	'1.2',
	'extension installs at version 1.2');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_proc p WHERE pronamespace = 'infra'::regnamespace "
		  . "AND NOT EXISTS (SELECT FROM pg_depend d WHERE d.objid = p.oid "
		  . "AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e')"),
	'0',
	'every function in schema infra belongs to the extension');

# A second database can have the extension too.
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION infra');
is($node->safe_psql('other', 'SELECT count(*) FROM infra.worker_status'),
	'1', 'worker_status is the same cluster-wide view from any database');

# A misspelt infra.* setting in postgresql.conf is reported, not kept.
my $offset = -s $node->logfile;
$node->append_conf('postgresql.conf', "infra.no_such_setting = 'x'\n");
$node->restart;
like(
	slurp_log_since($node, $offset),
	qr/invalid configuration parameter name "infra\.no_such_setting", removing it/,
	'unknown infra.* GUC in postgresql.conf is reported at start');
my ($rc, $out, $err) =
  $node->psql('postgres', 'SHOW infra.no_such_setting');
like($err, qr/unrecognized configuration parameter "infra\.no_such_setting"/,
	'unknown infra.* GUC does not exist afterwards');

# A malformed infra.database keeps the server from starting, with a reason.
$node->stop;
for my $case (
	[ 'postgres,postgres', qr/Database "postgres" is listed twice/ ],
	[ 'postgres,,other',   qr/Expected database names separated by commas, none of them empty/ ],
	[ 'x' x 70,            qr/is longer than 63 bytes/ ])
{
	my ($value, $why) = @$case;
	$node->append_conf('postgresql.conf', "infra.database = '$value'\n");
	$offset = -s $node->logfile;
	ok(!$node->start(fail_ok => 1),
		"server refuses to start with infra.database = '"
		  . substr($value, 0, 20) . "'");
	my $log = slurp_log_since($node, $offset);
	like($log, qr/invalid value for parameter "infra\.database"/,
		'the log names the bad parameter');
	like($log, $why, 'the log says what is wrong with it');
}
$node->append_conf('postgresql.conf', "infra.database = 'postgres'\n");
$node->start;
is($node->safe_psql('postgres', 'SELECT database FROM infra.worker_status'),
	'postgres', 'a corrected infra.database starts again');
$node->stop;

done_testing();
