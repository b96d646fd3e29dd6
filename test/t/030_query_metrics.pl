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

# 80 sleeps of 5 ms and 20 of 100 ms, interleaved: one statement (the
# duration is a constant).  pg_sleep never sleeps less than asked, so the
# lower bounds check the histogram's error (1.6%); a loaded machine only
# makes sleeps longer, so the upper bounds sit halfway to the next
# population: they still fail if a percentile is read from the wrong one.
my $sql = join('', map { $_ % 5 == 4 ? "SELECT pg_sleep(0.1);\n" : "SELECT pg_sleep(0.005);\n" } 0 .. 99);
$node->safe_psql('postgres', $sql);
my ($calls, $min, $p50, $p95, $p99, $max, $mean, $query) = split /\|/, $node->safe_psql('postgres', q{
SELECT calls, min_ms, p50_ms, p95_ms, p99_ms, max_ms, mean_ms, query
  FROM infra.query_metrics WHERE query LIKE 'SELECT pg_sleep%'});
is($calls, 100, '100 calls of one statement');
is($query, 'SELECT pg_sleep($1)', 'normalised text');
cmp_ok($p50, '>=', 5 * 0.984, "p50 $p50 ms is the 5 ms sleep (histogram within 1.6%)");
cmp_ok($p50, '<', 50, "p50 $p50 ms is not the 100 ms sleep");
cmp_ok($p95, '>=', 100 * 0.984, "p95 $p95 ms is the 100 ms sleep");
cmp_ok($p95, '<', 200, "p95 $p95 ms is not far above it");
cmp_ok($p99, '>=', $p95, 'p99 >= p95');
cmp_ok($min, '>=', 5, "min $min ms");
cmp_ok($max, '>=', 100, "max $max ms");
cmp_ok($mean, '>=', 24, "mean $mean ms >= (80 x 5 + 20 x 100) / 100 = 24");
cmp_ok($mean, '<', 48, 'mean not twice that');

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
