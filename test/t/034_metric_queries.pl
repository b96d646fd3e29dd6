# Metrics from SQL: infra.metric_queries' default rows (postgres_exporter's
# names) served on /metrics once enabled, valid for promtool; and every
# failure mode kept in infra.metric_query_status without touching the other
# queries or the scrape: bad SQL, a timeout, a column that is not a number,
# a write, too many series, duplicate labels, a name the registry has, a
# forbidden or foreign run_as, a security-restricted operation.  A query
# runs as the role its row names; a row that is disabled stops serving.
use strict;
use warnings;

use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $port = PostgreSQL::Test::Cluster::get_free_port();
my $node = infra_node('metric_queries', conf => <<"CONF");
infra.database = 'postgres'
infra.metrics_listen = '127.0.0.1:$port'
infra.metric_query_max_series = 500
CONF
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
my $su = $node->safe_psql('postgres', 'SELECT current_user');
my $http = HTTP::Tiny->new(timeout => 10);
my $url = "http://127.0.0.1:$port/metrics";

sub scrape { my $r = $http->get($url); return $r->{status} == 200 ? $r->{content} : ''; }

# promtool check metrics, passed when all it reports are the naming lints
# (a counter without _total, a gauge ending in _count) that
# postgres_exporter's own metric names draw: a parse error fails.
sub promtool_ok
{
	my ($text, $what) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'promtool', 'check', 'metrics' ], '<', \$text, '>', \$out, '2>', \$err);
	my @other = grep { !/counter metrics should have "_total" suffix$|non-histogram and non-summary metrics should not have "_count" suffix$/ }
	  grep { /\S/ } split /\n/, "$out$err";
	is(join("\n", @other), '', $what);
}

sub status
{
	my ($name, $col) = @_;
	return $node->safe_psql('postgres', "SELECT $col FROM infra.metric_query_status WHERE name = '$name'");
}

is($node->safe_psql('postgres', 'SELECT count(*), count(*) FILTER (WHERE enabled) FROM infra.metric_queries'), '7|0',
	'seven default queries, all disabled');
unlike(scrape(), qr/^pg_/m, 'nothing served while disabled');

# --- the default set -------------------------------------------------------------------
$node->safe_psql('postgres', q{UPDATE infra.metric_queries SET enabled = true, "interval" = '1 s', timeout = '1 s'});
ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM infra.metric_query_status WHERE runs > 0') == 7 }, 30),
	'the worker runs all seven');
is($node->safe_psql('postgres', q{SELECT string_agg(name || ': ' || last_error, '; ') FROM infra.metric_query_status WHERE last_error IS NOT NULL}),
	'', 'without an error');
my $m = scrape();
like($m, qr/^# TYPE pg_database_size_bytes gauge$/m, 'pg_database_size_bytes, a gauge');
like($m, qr/^pg_database_size_bytes\{datname="postgres"\} [1-9]\d*$/m, 'the database\'s size');
like($m, qr/^# TYPE pg_stat_database_xact_commit counter$/m, 'pg_stat_database_xact_commit, a counter');
like($m, qr/^pg_stat_database_xact_commit\{datname="postgres"\} [1-9]\d*$/m, 'commits of the database');
like($m, qr/^pg_stat_database_numbackends\{datname="postgres"\} \d+$/m, 'backends');
like($m, qr/^pg_locks_count\{datname="postgres",mode="accesssharelock"\} \d+$/m, 'locks per mode');
like($m, qr/^pg_stat_activity_count\{datname="postgres",state="idle"\} \d+$/m, 'sessions per state');
like($m, qr/^pg_stat_activity_max_tx_duration\{datname="postgres",state="active"\} \S+$/m, 'oldest transaction age');
like($m, qr/^pg_replication_lag_seconds 0$/m, 'replication lag (a primary: 0)');
like($m, qr/^pg_replication_is_replica 0$/m, 'not a replica');
like($m, qr/^pg_stat_user_tables_n_dead_tup\{datname="postgres",schemaname="infra",relname="kafka_outbox_batches"\} \d+$/m,
	'dead tuples of infra\'s own tables');
like($m, qr/^infra_metric_query_success\{database="postgres",name="pg_locks"\} 1$/m, 'success per query');
promtool_ok($m, 'promtool check metrics: valid (only the naming lints postgres_exporter\'s names draw)');

# --- failure modes, each alone, the others unaffected ----------------------------------------
$node->safe_psql('postgres', q{
CREATE ROLE alice LOGIN;
CREATE ROLE bob;
CREATE ROLE carol LOGIN;
GRANT INSERT, UPDATE, DELETE, SELECT ON infra.metric_queries TO alice;
SELECT infra.gauge_set('mq_taken_v', 1);
BEGIN;
INSERT INTO infra.metric_queries (name, query, labels, gauges, "interval", timeout, enabled) VALUES
    ('bad_sql', 'SELECT v FROM no_such_table', '{}', '{v}', '1 s', '1 s', true),
    ('slow', 'SELECT 1 AS v FROM pg_catalog.pg_sleep(3)', '{}', '{v}', '10 s', '200 ms', true),
    ('not_a_number', $$SELECT 'x'::text AS v$$, '{}', '{v}', '1 s', '1 s', true),
    ('writes', 'WITH d AS (DELETE FROM infra.metric_queries RETURNING 1) SELECT count(*) AS v FROM d', '{}', '{v}', '1 s', '1 s', true),
    ('too_many', 'SELECT g AS k, 1 AS v FROM pg_catalog.generate_series(1, 600) g', '{k}', '{v}', '1 s', '1 s', true),
    ('twice', 'SELECT 1 AS k, 1 AS v UNION ALL SELECT 1, 2', '{k}', '{v}', '1 s', '1 s', true),
    ('mq_taken', 'SELECT 1 AS v', '{}', '{v}', '1 s', '1 s', true),
    ('restricted', $$SELECT pg_catalog.set_config('role', 'postgres', true) AS r, 1 AS v$$, '{}', '{v}', '1 s', '1 s', true),
    ('no_label_column', 'SELECT 1 AS v', '{k}', '{v}', '1 s', '1 s', true),
    ('superuser_allowed', 'SELECT current_user AS who, 1 AS v', '{who}', '{v}', '1 s', '1 s', true);
UPDATE infra.metric_queries SET run_as = current_user, allow_superuser = true WHERE name = 'superuser_allowed';
COMMIT;
});
# A row naming a role its writer may not run as is refused as it is written.
my ($ok, $out, $err) = $node->psql('postgres', q{INSERT INTO infra.metric_queries (name, query, gauges, run_as) VALUES ('as_superuser', 'SELECT 1 AS v', '{v}', current_user)});
like($err, qr/ERROR:  metric query "as_superuser" would run as superuser "\Q$su\E"/, 'a superuser run_as without allow_superuser: refused at write');
($ok, $out, $err) = $node->psql('postgres', q{INSERT INTO infra.metric_queries (name, query, gauges, run_as) VALUES ('as_bob', 'SELECT 1 AS v', '{v}', 'bob')},
	extra_params => [ '-U', 'alice' ]);
like($err, qr/ERROR:  the role that wrote metric query "as_bob" may not SET ROLE to "bob" \(run_as\)/, 'a role its writer is not a member of: refused at write');
($ok, $out, $err) = $node->psql('postgres', q{INSERT INTO infra.metric_queries (name, query, gauges, run_as, allow_superuser) VALUES ('alice_as_superuser', 'SELECT 1 AS v', '{v}', (SELECT rolname FROM pg_roles WHERE rolsuper LIMIT 1), true)},
	extra_params => [ '-U', 'alice' ]);
like($err, qr/ERROR:  metric query "alice_as_superuser" would run as superuser "\Q$su\E"/, 'a superuser run_as written by a non-superuser: refused at write');
# Checked again at each run: a membership revoked after the write.
$node->safe_psql('postgres', 'GRANT bob TO alice');
$node->safe_psql('postgres', q{
BEGIN;
INSERT INTO infra.metric_queries (name, query, labels, gauges, "interval", timeout, run_as, enabled) VALUES
    ('as_alice', 'SELECT current_user AS who, 1 AS v', '{who}', '{v}', '1 s', '1 s', 'alice', true),
    ('as_bob', 'SELECT 1 AS v', '{}', '{v}', '1 s', '1 s', 'bob', true);
COMMIT;
}, extra_params => [ '-U', 'alice' ]);
$node->safe_psql('postgres', 'REVOKE bob FROM alice');
is($node->safe_psql('postgres', q{SELECT author FROM infra.metric_queries WHERE name = 'as_bob'}), 'alice',
	'the author is whoever wrote the row (a trigger keeps it)');
$node->safe_psql('postgres', q{UPDATE infra.metric_queries SET "interval" = '1 s' WHERE name = 'as_alice'});
is($node->safe_psql('postgres', q{SELECT author FROM infra.metric_queries WHERE name = 'as_alice'}), 'alice',
	'a superuser\'s write keeps the author');

my %expect = (
	bad_sql => qr/^42P01: relation "no_such_table" does not exist/,
	slow => qr/^57014: canceling statement due to statement timeout/,
	not_a_number => qr/^42804: value column "v" is of type text, not a number/,
	writes => qr/^25006: cannot execute \w+ in a read-only transaction/,
	too_many => qr/^54000: metric query "too_many" returned more series than infra.metric_query_max_series \(500\)/,
	twice => qr/^21000: metric query "twice" returned two rows with the same labels/,
	mq_taken => qr/^42710: metric "mq_taken_v" is a series of infra's metrics registry/,
	restricted => qr/^42501: cannot set parameter "role" within security-(restricted operation|definer function)/,
	no_label_column => qr/^42703: label column "k" is not in the query's result/,
	as_bob => qr/^42501: the role that wrote metric query "as_bob" may not SET ROLE to "bob"/,
);
# as_bob may run once before the REVOKE (it succeeds then): wait for a run
# after it, which fails.
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT count(*) FROM infra.metric_query_status WHERE runs > 0"
				  . " AND (name <> 'as_bob' OR last_error IS NOT NULL) AND name IN ("
				  . join(', ', map { "'$_'" } keys %expect, 'as_alice', 'superuser_allowed') . ')') == 12;
		},
		30),
	'every new query has run (as_bob since its author lost the membership)');
for my $name (sort keys %expect)
{
	like(status($name, 'last_error'), $expect{$name}, "$name: its error kept");
	is(status($name, 'series'), 0, "$name: serves nothing");
}
$m = scrape();
like($m, qr/^as_alice_v\{who="alice"\} 1$/m, 'a query runs as its run_as (alice)');
like($m, qr/^superuser_allowed_v\{who="\Q$su\E"\} 1$/m, 'as a superuser when allowed and written by one');
like($m, qr/^infra_metric_query_success\{database="postgres",name="bad_sql"\} 0$/m, 'failures show in /metrics');
like($m, qr/^pg_database_size_bytes\{datname="postgres"\} [1-9]\d*$/m, 'the other queries still serve');
is($node->safe_psql('postgres', q{SELECT count(*) FROM infra.metric_query_status WHERE name LIKE 'pg_%' AND last_error IS NOT NULL}),
	0, 'and still succeed');
is($node->safe_psql('postgres', 'SELECT count(*) FROM infra.metric_queries'), 19, 'the write was refused: no row deleted');
is(scalar(() = $m =~ /^# TYPE mq_taken_v /mg), 1, 'the registry\'s series is served once');
promtool_ok($m, 'the exposition stays valid');

# --- writes: who may, and a row disabled stops serving ------------------------------------
($ok, $out, $err) = $node->psql('postgres', q{INSERT INTO infra.metric_queries (name, query, gauges) VALUES ('x', 'SELECT 1 AS v', '{v}')},
	extra_params => [ '-U', 'carol' ]);
like($err, qr/permission denied for table metric_queries/, 'a role without the grant cannot add a query');
($ok, $out, $err) = $node->psql('postgres', q{INSERT INTO infra.metric_queries (name, query, gauges) VALUES ('infra_x', 'SELECT 1 AS v', '{v}')});
like($err, qr/violates check constraint/, 'a name in infra\'s own prefix is refused');
$node->safe_psql('postgres', q{UPDATE infra.metric_queries SET enabled = false WHERE name = 'as_alice'});
ok(wait_until(sub { scrape() !~ /^as_alice_v/m }, 30), 'disabled: its series are gone');
is(status('as_alice', 'count(*)'), 0, 'and its status row');

# DROP EXTENSION: the database's results go (the worker no longer serves it).
like(scrape(), qr/^pg_database_size_bytes\{/m, 'still served before DROP EXTENSION');
$node->safe_psql('postgres', 'DROP EXTENSION infra');
ok(wait_until(sub { my $s = scrape(); $s ne '' && $s !~ /^pg_database_size_bytes/m && $s !~ /^infra_metric_query_success/m }, 30),
	'after DROP EXTENSION nothing of its queries is served');
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
ok(wait_until(sub { $node->safe_psql('postgres', q{SELECT count(*) FROM infra.metric_query_status}) == 0 }, 30),
	'created again: the default rows, disabled, run nothing');
unlike(scrape(), qr/^pg_database_size_bytes/m, 'and serve nothing');

done_testing();
