# Fuzzing: sqlsmith (fixed seed, bounded number of queries) as a role
# granted EXECUTE on every infra function and SELECT on every infra table,
# then a targeted fuzzer that calls every infra.* signature with boundary
# values in each argument in turn (NULL, empty and 10 MB strings, negative,
# zero and extreme numbers and intervals, NaN and infinities, malformed
# JSON and traceparents).  Every call must return a result or a clean
# error: no backend crash, no internal error (SQLSTATE class XX).  Both run
# again as a role that owns nothing (PUBLIC's rights only) and as a
# CREATEROLE role (which on 16+ holds ADMIN, not SET, on the roles it
# makes), with their own objects first on their search_path.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $node = infra_node('fuzz', conf => <<"CONF");
infra.database = 'postgres'
infra.kafka_brokers = '$bootstrap'
restart_after_crash = on
CONF
$node->start;
my $log_start = -s $node->logfile;
$node->safe_psql('postgres', q{
CREATE EXTENSION infra;
CREATE ROLE fuzzer LOGIN;
GRANT EXECUTE ON ALL ROUTINES IN SCHEMA infra TO fuzzer;
GRANT SELECT ON ALL TABLES IN SCHEMA infra TO fuzzer;
ALTER ROLE fuzzer SET statement_timeout = '1s';
ALTER ROLE fuzzer SET lock_timeout = '500ms';
-- sqlsmith would end its own session with these and take that for a crash.
REVOKE EXECUTE ON FUNCTION pg_terminate_backend(integer, bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_cancel_backend(integer) FROM PUBLIC;
CREATE ROLE owns_nothing LOGIN;
CREATE ROLE creator LOGIN CREATEROLE;
GRANT CREATE ON DATABASE postgres TO creator;
ALTER ROLE owns_nothing SET statement_timeout = '1s';
ALTER ROLE creator SET statement_timeout = '1s';
});
# The creator's own objects first on its path: functions named like ones
# infra's C code calls, and roles it made.
$node->safe_psql('postgres', q{
CREATE SCHEMA creator;
CREATE FUNCTION creator.has_privs_of_role(name, name) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE FUNCTION creator.now() RETURNS timestamptz LANGUAGE sql AS $$SELECT '2000-01-01'::timestamptz$$;
ALTER ROLE creator SET search_path = creator, public, pg_catalog;
}, extra_params => [ '-U', 'creator' ]);
$node->safe_psql('postgres', 'CREATE ROLE made_by_creator; CREATE ROLE also_made', extra_params => [ '-U', 'creator' ]);

# --- sqlsmith -------------------------------------------------------------------
# sqlsmith as ROLE, QUERIES queries.
sub run_sqlsmith
{
	my ($role, $queries) = @_;
	my ($out, $err) = ('', '');
	my $target = $node->connstr('postgres') . " user=$role";
	my $xacts = q{SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'postgres'};
	my $before = $node->safe_psql('postgres', $xacts);
	my $from = -s $node->logfile;
	my $t0 = time();
	IPC::Run::run(
		[ 'sqlsmith', "--target=$target", '--seed=20261130', "--max-queries=$queries",
		  '--exclude-catalog', '--verbose' ],
		'<', \undef, '>', \$out, '2>', \$err, IPC::Run::timeout(240));
	note(sprintf('sqlsmith as %s: %d queries in %d s', $role, $queries, time() - $t0));
	my ($summary) = "$out$err" =~ /(queries: \d+.*)/;
	note("sqlsmith says: " . ($summary // substr("$out$err", -400)));
	unlike("$out$err", qr/connection to the server was lost|server closed the connection/,
		"sqlsmith as $role never lost its connection");
	my @crashes = slurp_log_since($node, $from) =~ /terminated by signal/g;
	is(scalar @crashes, 0, "sqlsmith as $role: zero backend crashes in the server log");
	sleep 2;
	cmp_ok($node->safe_psql('postgres', $xacts) - $before, '>=', $queries / 2,
		"sqlsmith as $role ran its queries");
}
my $queries = $ENV{INFRA_SQLSMITH_QUERIES} // 6000;
run_sqlsmith('fuzzer', $queries);
run_sqlsmith($_, int($queries / 4)) for 'owns_nothing', 'creator';

# --- targeted: every signature, boundary values one argument at a time ----------
my $ten_mb = q{pg_catalog.repeat('x', 10485760)};
my %bad = (
	'text' => [ 'NULL', q{''}, $ten_mb, q{E'\\x01\\x7f'}, q{'ünïcödé'}, q{'00-zz-00-01'},
		q{'00-00000000000000000000000000000000-0000000000000000-01'}, q|'{"a":'|, q{'%'} ],
	'integer' => [ 'NULL', '0', '-1', '2147483647', '-2147483648' ],
	'bigint' => [ 'NULL', '0', '-1', '9223372036854775807', '-9223372036854775808' ],
	'interval' => [ 'NULL', q{'0'}, q{'-1 s'}, q{'1 microsecond'}, q{'178000000 years'},
		q{'-178000000 years'}, q{'1 mon'} ],
	'jsonb' => [ 'NULL', q{'{}'}, q{'[]'}, q{'"s"'}, q{'null'}, q{'{"a": {"b": [1, 2]}}'},
		q{'{"infra-msg-id": "1/2/3"}'}, q{'{"traceparent": "garbage"}'},
		q{pg_catalog.jsonb_build_object('k', pg_catalog.repeat('v', 10485760))} ],
	'double precision' => [ 'NULL', '0', '-1', q{'NaN'}, q{'Infinity'}, q{'-Infinity'}, '1e308' ],
	'double precision[]' => [ 'NULL', q{'{}'}, q{'{NaN}'}, q{'{3,2,1}'}, q{'{1,1}'}, q{'{Infinity}'},
		q{'{NULL}'} ],
	'text[]' => [ 'NULL', q{'{}'}, q{'{NULL}'}, q{'{XX%}'}, q{'{40001}'}, q{'{toolongstate}'} ],
	'bigint[]' => [ 'NULL', q{'{}'}, q{'{-1}'}, q{'{NULL}'} ],
	'bytea' => [ 'NULL', q{''}, q{'\\x00ff'}, "pg_catalog.convert_to($ten_mb, 'UTF8')" ],
	'boolean' => [ 'NULL', 'true', 'false' ],
);
my %good = (
	'text' => q{'api'}, 'integer' => '1', 'bigint' => '1', 'interval' => q{'10 ms'},
	'jsonb' => q{'{}'}, 'double precision' => '1', 'double precision[]' => q{'{1,2}'},
	'text[]' => q{'{40001}'}, 'bigint[]' => q{'{1}'}, 'bytea' => q{'\\x01'}, 'boolean' => 'true',
);
my @procs = map { [ split /\|/, $_, -1 ] } split /\n/, $node->safe_psql('postgres', q{
SELECT p.proname, p.prokind,
       coalesce(array_to_string(array(SELECT format_type(t, NULL)
                                       FROM unnest(p.proargtypes) WITH ORDINALITY AS a(t, n)
                                       ORDER BY n), ','), '')
  FROM pg_proc p
 WHERE p.pronamespace = 'infra'::regnamespace AND p.prorettype <> 'trigger'::regtype
 ORDER BY 1, 3});
cmp_ok(scalar @procs, '>', 40, 'the targeted fuzzer found infra\'s signatures');

my $script = "\\set VERBOSITY verbose\nSET statement_timeout = '2s';\nSET client_min_messages = error;\n"
  . "SET infra.traceparent = 'garbage';\n/*traceparent='00-zz'*/ SELECT 1;\n";
my $calls = 0;
for my $proc (@procs)
{
	my ($name, $kind, $args) = @$proc;
	my @types = $args eq '' ? () : split /,/, $args;
	my @sets = ([ map { $good{$_} // 'NULL' } @types ]);
	for my $i (0 .. $#types)
	{
		for my $value (@{ $bad{ $types[$i] } // ['NULL'] })
		{
			my @call = map { $good{$_} // 'NULL' } @types;
			$call[$i] = $value;
			push @sets, \@call;
		}
	}
	for my $set (@sets)
	{
		my @typed = map { "$set->[$_]::$types[$_]" } 0 .. $#types;
		my $call = "infra.$name(" . join(', ', @typed) . ')';
		$script .= $kind eq 'p' ? "CALL $call;\n" : "SELECT $call;\n";
		$calls++;
	}
}
note("targeted fuzzer: $calls calls");
my $file = PostgreSQL::Test::Utils::tempdir . '/fuzz.sql';
open my $fh, '>', $file or die;
print $fh $script;
close $fh;
# The script as the superuser, then as the role that owns nothing and the
# CREATEROLE role: refused, not crashed, where they lack the rights.
for my $role ('', 'owns_nothing', 'creator')
{
	my $as = $role eq '' ? 'superuser' : $role;
	my $from = -s $node->logfile;
	my ($fout, $ferr) = ('', '');
	IPC::Run::run([ 'psql', '-X', '-d', $node->connstr('postgres') . ($role eq '' ? '' : " user=$role"), '-f', $file ],
		'<', \undef, '>', \$fout, '2>', \$ferr, IPC::Run::timeout(600));
	unlike($ferr, qr/connection to the server was lost|server closed the connection/,
		"targeted fuzzer as $as: the session survived every call");
	my @internal = $ferr =~ /(ERROR:\s+XX\d\d\d:[^\n]*)/g;
	is(scalar @internal, 0, "targeted fuzzer as $as: no internal error (SQLSTATE XX...)")
	  or diag join("\n", @internal[ 0 .. ($#internal < 20 ? $#internal : 20) ]);
	my @errors = $ferr =~ /ERROR:\s+([0-9A-Z]{5}):/g;
	cmp_ok(scalar @errors, '>', 100, "targeted fuzzer as $as: bad inputs were refused with SQLSTATEs");
	is(scalar(() = slurp_log_since($node, $from) =~ /terminated by signal/g), 0,
		"targeted fuzzer as $as: zero backend crashes");
}
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server still answers');

done_testing();
