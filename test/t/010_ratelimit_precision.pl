# Rate limits are exact under concurrency: 4 clients hammering one key of
# 1000/s with burst 100 for 10 s are allowed 100 + 10000 requests (+-1), and
# the per-client counts add up to the shared counter.  Also: a full key
# table evicts idle keys and refuses, clearly, when none is idle.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $node = infra_node('ratelimit', conf => "infra.rate_limit_max_keys = 100\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
$node->safe_psql('postgres', q{
CREATE FUNCTION hammer(t0 timestamptz, seconds float8) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	n bigint := 0;
	stop timestamptz := t0 + seconds * interval '1 second';
BEGIN
	PERFORM pg_sleep_until(t0 - interval '50 ms');
	WHILE clock_timestamp() < t0 LOOP END LOOP;
	WHILE clock_timestamp() < stop LOOP
		IF infra.rate_limit('precision', 1000, '1 second', 100) THEN
			n := n + 1;
		END IF;
	END LOOP;
	RETURN n;
END $$;
});

my $t0 = $node->safe_psql('postgres', "SELECT now() + interval '2 s'");
my @clients;
for my $i (1 .. 4)
{
	my $out = '';
	my $h = IPC::Run::start(
		[ 'psql', '-XAtq', '-d', $node->connstr('postgres'),
		  '-c', "SELECT hammer('$t0', 10)" ],
		'>', \$out, '2>', \my $err, IPC::Run::timeout(60));
	push @clients, [ $h, \$out ];
}
my $sum = 0;
for my $c (@clients)
{
	$c->[0]->finish;
	my $n = ${ $c->[1] };
	chomp $n;
	like($n, qr/^\d+$/, "client counted $n allowed requests");
	$sum += $n;
}
my ($shared, $denied) = split /\|/, $node->safe_psql('postgres',
	"SELECT allowed_total, denied_total FROM infra.rate_limits WHERE key = 'precision'");
is($sum, $shared, "clients' counts add up to the shared allowed_total ($shared)");
cmp_ok(abs($shared - 10100), '<=', 1, "allowed = 100 + 10000 within 1 (got $shared)");
cmp_ok($denied, '>', 0, "the rest were denied ($denied)");

# Eviction: 100 slots.  Keys at 1 per hour are busy (they remember a use).
$node->safe_psql('postgres', 'SELECT infra.rate_limit_reset()');
$node->safe_psql('postgres',
	"SELECT infra.rate_limit('busy' || i, 1, '1 hour') FROM generate_series(1, 100) i");
my ($rc, $out, $err) = $node->psql('postgres',
	"SELECT infra.rate_limit('one-more', 1, '1 hour')");
isnt($rc, 0, 'a full table of busy keys refuses a new key');
like($err, qr/rate limit table is full \(100 keys in use\)/, 'with a clear error');
like($err, qr/HINT:  Raise infra\.rate_limit_max_keys/, 'and a hint');
is($node->safe_psql('postgres', "SELECT infra.rate_limit('busy1', 1, '1 hour')"),
	'f', 'existing keys keep working (and keep their state)');

# Keys at 1000/s are idle again after 1 ms: they make room.
$node->safe_psql('postgres', 'SELECT infra.rate_limit_reset()');
$node->safe_psql('postgres',
	"SELECT infra.rate_limit('idle' || i, 1000, '1 second') FROM generate_series(1, 100) i");
$node->safe_psql('postgres', 'SELECT pg_sleep(0.05)');
is($node->safe_psql('postgres',
	"SELECT bool_and(infra.rate_limit('new' || i, 1, '1 hour')) FROM generate_series(1, 50) i"),
	't', 'new keys fit once idle keys are evicted');
is($node->safe_psql('postgres', "SELECT count(*) FROM infra.rate_limits WHERE key LIKE 'new%'"),
	'50', 'all 50 new keys are kept');

$node->stop;
done_testing();
