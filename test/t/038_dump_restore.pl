# pg_dump | pg_restore into a fresh cluster keeps every configuration change
# a user made: of every kind of preset row (rate limiters, circuit breakers,
# retry policies, metric queries) one changed and one deleted, rows added,
# grants of use given, topics registered.  The restored configuration
# equals the original, column by column (owners, grants, presets included),
# and a second dump of the restored database restores the same again.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $old = infra_node('dump_source', conf => "infra.database = 'postgres'\n");
$old->start;
$old->safe_psql('postgres', q{
CREATE EXTENSION infra;
CREATE ROLE ops LOGIN;
CREATE ROLE app;
GRANT INSERT, UPDATE, DELETE ON infra.circuit_breakers, infra.rate_limiters, infra.retry_policies,
                               infra.metric_queries TO ops;
GRANT pg_monitor TO ops;
});
# Presets are the extension owner's: changed by a superuser; rows added by ops.
$old->safe_psql('postgres', q{
-- presets changed
UPDATE infra.rate_limiters SET burst = 33 WHERE name = 'api';
UPDATE infra.circuit_breakers SET open_duration = '45 seconds' WHERE name = 'network';
UPDATE infra.retry_policies SET max_attempts = 9 WHERE name = 'kafka';
UPDATE infra.metric_queries SET enabled = true, "interval" = '10 seconds' WHERE name = 'pg_locks';
-- presets deleted
DELETE FROM infra.rate_limiters WHERE name = 'database';
DELETE FROM infra.circuit_breakers WHERE name = 'vault';
DELETE FROM infra.retry_policies WHERE name = 'vault';
DELETE FROM infra.metric_queries WHERE name = 'pg_stat_user_tables';
});
$old->safe_psql('postgres', q{
-- rows added (as ops: its own), and their use granted
INSERT INTO infra.rate_limiters (name, rate, burst) VALUES ('ops_limiter', 7, 3);
INSERT INTO infra.circuit_breakers (name, window_size) VALUES ('ops_breaker', 10);
INSERT INTO infra.retry_policies (name, sqlstates) VALUES ('ops_retry', '{40001}');
INSERT INTO infra.metric_queries (name, query, gauges, run_as, enabled) VALUES ('ops_q', 'SELECT 1 AS v', '{v}', 'ops', true);
SELECT infra.grant_use('rate_limiter', 'ops_limiter', 'app');
}, extra_params => [ '-U', 'ops' ]);
$old->safe_psql('postgres', q{
SELECT infra.grant_use('circuit_breaker', 'kafka', 'ops');
SELECT infra.topic_register('orders', 'prod', 6);
});

# Every configuration table, every column, in name order.
sub configuration
{
	my ($node) = @_;
	return join "\n", map {
		$node->safe_psql('postgres', "SELECT '$_: ' || string_agg(t::text, ' ' ORDER BY t::text) FROM infra.$_ t")
	} qw(rate_limiters circuit_breakers retry_policies metric_queries topics removed_presets);
}

sub dump_restore
{
	my ($from, $name) = @_;
	my $to = infra_node($name, conf => "infra.database = 'postgres'\n");
	$to->start;
	my $file = $PostgreSQL::Test::Utils::tmp_check . "/$name.dump";
	my ($out, $err);
	IPC::Run::run([ 'pg_dumpall', '--roles-only', '-d', $from->connstr('postgres') ], '>', \$out, '2>', \$err)
	  or die "pg_dumpall: $err";
	$to->psql('postgres', $out, on_error_stop => 0);	# the superuser exists already: that line fails
	IPC::Run::run([ 'pg_dump', '-Fc', '-f', $file, '-d', $from->connstr('postgres') ], '2>', \$err)
	  or die "pg_dump: $err";
	IPC::Run::run([ 'pg_restore', '--exit-on-error', '-d', $to->connstr('postgres'), $file ], '>', \$out, '2>', \$err);
	is($err, '', "pg_restore into $name: no error");
	return $to;
}

my $before = configuration($old);
like($before, qr/\(pg_locks,.*,00:00:10,.*,t,t\)/s, 'the source has its changed preset');
my $new = dump_restore($old, 'dump_target');
my $after = configuration($new);
is($after, $before, 'the restored configuration equals the original, column by column');
like($after, qr/\(api,100,00:00:01,33,/, 'a changed limiter preset kept');
unlike($after, qr/\(database,1000,/, 'a deleted limiter preset stays deleted');
unlike($after, qr/\(vault,count,/, 'a deleted breaker preset stays deleted');
like($after, qr/\(kafka,9,/, 'a changed retry preset kept');
unlike($after, qr/\(pg_stat_user_tables,/, 'a deleted metric query preset stays deleted');
like($after, qr/ops_limiter,7,.*\{app=U\/ops\},f,t\)/, 'a row added keeps its owner and its grants');
like($after, qr/\(kafka,time,.*\{ops=U\/\w+\},t,t\)/, 'a grant on a preset is kept');

# The restored cluster serves it: the enabled preset runs.
ok(wait_until(sub { $new->safe_psql('postgres', q{SELECT count(*) FROM infra.metric_query_status WHERE name = 'pg_locks' AND runs > 0}) == 1 }, 30),
	'the restored, enabled preset runs');

# And round again: the restored database dumps what it holds.
my $third = dump_restore($new, 'dump_again');
is(configuration($third), $before, 'a second dump and restore keeps the same');

done_testing();
