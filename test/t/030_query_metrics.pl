# Query metrics on a known workload: counts, percentiles read from the
# histogram, and eviction in a small table that keeps the busy statements.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $node = infra_node('query_metrics', conf => "infra.query_metrics_max = 100\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
$node->safe_psql('postgres', 'SELECT infra.query_metrics_reset()');

# 80 sleeps of 5 ms and 20 of 50 ms, interleaved: one statement (the
# duration is a constant).
my $sql = join('', map { $_ % 5 == 4 ? "SELECT pg_sleep(0.05);\n" : "SELECT pg_sleep(0.005);\n" } 0 .. 99);
$node->safe_psql('postgres', $sql);
my ($calls, $min, $p50, $p95, $p99, $max, $mean, $query) = split /\|/, $node->safe_psql('postgres', q{
SELECT calls, min_ms, p50_ms, p95_ms, p99_ms, max_ms, mean_ms, query
  FROM infra.query_metrics WHERE query LIKE 'SELECT pg_sleep%'});
is($calls, 100, '100 calls of one statement');
is($query, 'SELECT pg_sleep($1)', 'normalised text');
# pg_sleep sleeps at least as long as asked; allow for a loaded machine.
cmp_ok($p50, '>=', 5 * 0.984, "p50 $p50 ms is the 5 ms sleep (histogram within 1.6%)");
cmp_ok($p50, '<', 8, "p50 $p50 ms is not the 50 ms sleep");
cmp_ok($p95, '>=', 50 * 0.984, "p95 $p95 ms is the 50 ms sleep");
cmp_ok($p95, '<', 60, "p95 $p95 ms is close to it");
cmp_ok($p99, '>=', $p95, 'p99 >= p95');
cmp_ok($min, '>=', 5, "min $min ms");
cmp_ok($max, '>=', 50, "max $max ms");
cmp_ok($mean, '>=', 14, "mean $mean ms (80 x 5 + 20 x 50) / 100 = 14");
cmp_ok($mean, '<', 20, 'mean close to 14 ms');

# Eviction: 300 distinct statements through a table of 100, one of them
# run again and again; it must survive, the count of evictions shows.
$node->safe_psql('postgres', 'SELECT infra.query_metrics_reset()');
my $busy = "SELECT 'busy' AS hot";
my $load = '';
for my $n (1 .. 300)
{
	$load .= 'SELECT ' . join(', ', ('1') x $n) . ";\n";
	$load .= "$busy;\n" if $n % 3 == 0;
}
$node->safe_psql('postgres', $load);
my ($entries, $evictions) = split /\|/,
  $node->safe_psql('postgres', 'SELECT entries, evictions FROM infra.query_metrics_info');
cmp_ok($entries, '<=', 100, "the table stays within infra.query_metrics_max ($entries entries)");
cmp_ok($evictions, '>=', 200, "evictions are counted ($evictions)");
is( $node->safe_psql('postgres',
		"SELECT calls FROM infra.query_metrics WHERE query = 'SELECT \$1 AS hot'"),
	'100', 'the busy statement survives eviction with all its calls');

# Off costs nothing and records nothing.
$node->safe_psql('postgres', 'ALTER SYSTEM SET infra.query_metrics = off');
$node->reload;
$node->safe_psql('postgres', 'SELECT infra.query_metrics_reset()');
$node->safe_psql('postgres', "SELECT 'while off' AS off");
is($node->safe_psql('postgres', "SELECT count(*) FROM infra.query_metrics WHERE query LIKE '%off%'"),
	'0', 'infra.query_metrics = off records nothing');

$node->stop;
done_testing();
