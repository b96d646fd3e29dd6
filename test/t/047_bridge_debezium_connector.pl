# infra-bridge, format = debezium, against a real Debezium PostgreSQL
# connector on Kafka Connect streaming a real source table (Debezium's
# default modes: precise decimals, adaptive time, bytes; truncates not
# skipped).  Two connectors on one source: one with the JSON converter's
# schema part, one without.  The source gets a snapshot, inserts, updates,
# updates that leave a big TOASTed column unchanged (Debezium sends a
# placeholder for it), primary-key changes, deletes, a truncate and a new
# big value; the bridge is SIGKILLed twice mid-stream.  At the end each
# target table equals the source table, row by row and column by column.
#
# Java-heavy (Kafka Connect): runs on PostgreSQL 18 only; fetches Connect
# and Debezium's jars come from the cache make deps fills (Maven Central).
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use InfraTest;

plan skip_all => 'Kafka Connect runs with PostgreSQL 18 only; this run is another version'
  unless `pg_config --version` =~ /^PostgreSQL 18\./;
my $connect = src_path('test/debezium/connect.sh');
my $cache = $ENV{INFRA_CACHE} // die 'INFRA_CACHE is not set: run through test/run.sh';
plan skip_all => 'Kafka Connect and Debezium are not in the cache (make deps)'
  unless glob("$cache/debezium-3.6/plugins/postgres/debezium-connector-postgres-*.jar");

my $user = getpwuid($<);
my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $run = $$;
my $node = infra_node('bridge_dbz_connector',
	conf => "infra.database = 'postgres'\nwal_level = logical\nmax_replication_slots = 8\nmax_wal_senders = 8\n"
	  . "listen_addresses = '127.0.0.1'\n");
$node->start;
my $port = $node->port;
my $table = q{(
    id integer PRIMARY KEY, name text, code varchar(20), flag boolean, score double precision,
    price numeric(12,3), ratio numeric, born date, seen timestamp, seen3 timestamp(3), at_tz timestamptz,
    t time, t3 time(3), ttz timetz, ref uuid, doc jsonb, dj json, tags text[], nums integer[], blob bytea,
    span interval, mood public.mood, big text)};
$node->safe_psql('postgres', qq{
CREATE EXTENSION infra;
CREATE TYPE public.mood AS ENUM ('sad', 'ok', 'happy');
CREATE TABLE public.items $table;
ALTER TABLE public.items ALTER big SET STORAGE EXTERNAL;
CREATE SCHEMA mirror;
CREATE SCHEMA mirror_plain;
CREATE TABLE mirror.items $table;
CREATE TABLE mirror_plain.items $table;
CREATE FUNCTION public.big_value(n integer) RETURNS text LANGUAGE sql
    AS \$\$ SELECT string_agg(md5((n * 1000 + i)::text), '') FROM generate_series(1, 300) i \$\$;
CREATE FUNCTION public.add_items(first integer, last integer) RETURNS void LANGUAGE sql AS \$\$
    INSERT INTO public.items
    SELECT g, 'name ' || g, 'c' || g, g % 2 = 0, g / 7.0, g * 1.125 - 500, (g / 3.0)::numeric(20, 7),
           DATE '2024-02-29' + g, TIMESTAMP '2024-02-29 12:34:56.123456' + g * interval '1 hour 0.000001 s',
           TIMESTAMP '2024-02-29 12:34:56.123' + g * interval '1 minute', TIMESTAMPTZ '2024-02-29 12:34:56.654321+02' + g * interval '1 s',
           TIME '12:34:56.123456' + g * interval '1 s', TIME '01:02:03.456', TIMETZ '10:11:12.131415+00',
           ('00000000-0000-0000-0000-' || lpad(g::text, 12, '0'))::uuid,
           jsonb_build_object('g', g, 'list', jsonb_build_array(1, 'two', NULL)), ('{"b": 1,  "a": [' || g || ']}')::json,
           ARRAY['x' || g, NULL, 'y'], ARRAY[g, -g], decode(md5(g::text), 'hex'),
           g * interval '1 day 02:03:04.5', (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::public.mood,
           CASE WHEN g % 4 = 0 THEN public.big_value(g) END
    FROM generate_series(first, last) g
\$\$});

# Each target's rows against the source's, column by column (json as text).
my @columns = qw(id name code flag score price ratio born seen seen3 at_tz t t3 ttz ref doc dj tags nums blob span mood big);
sub differences
{
	my ($target) = @_;
	my $cols = join(' OR ', map { $_ eq 'dj' ? "s.dj::text IS DISTINCT FROM t.dj::text" : "s.$_ IS DISTINCT FROM t.$_" }
		@columns[ 1 .. $#columns ]);
	return $node->safe_psql('postgres',
		"SELECT count(*) FROM public.items s FULL JOIN $target t USING (id) WHERE s.id IS NULL OR t.id IS NULL OR $cols");
}

# Per column, how many rows differ and the first one's values.
sub explain_differences
{
	my ($target) = @_;
	my $out = '';
	for my $c (@columns)
	{
		my $cmp = $c eq 'id' ? 's.id IS NULL OR t.id IS NULL' : $c eq 'dj' ? 's.dj::text IS DISTINCT FROM t.dj::text'
		  : "s.$c IS DISTINCT FROM t.$c";
		my ($vs, $vt) = map { $c eq 'big' ? "left($_.big, 40)" : "$_.$c" } ('s', 't');
		$out .= $node->safe_psql('postgres',
			"SELECT '$c: ' || count(*) OVER () || ' rows, e.g. id ' || coalesce(s.id, t.id) || ': source '"
			  . " || coalesce(($vs)::text, 'NULL') || ', target ' || coalesce(($vt)::text, 'NULL')"
			  . " FROM public.items s FULL JOIN $target t USING (id) WHERE $cmp ORDER BY coalesce(s.id, t.id) LIMIT 1")
		  . "\n";
	}
	return $out;
}

# The snapshot's rows, before the connectors start.
$node->safe_psql('postgres', 'SELECT public.add_items(1, 200)');

my $connect_port = PostgreSQL::Test::Cluster::get_free_port();
open my $w, '>', "$dir/worker.properties" or die;
print $w <<"EOF";
bootstrap.servers=$bootstrap
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
offset.storage.file.filename=$dir/connect/offsets
offset.flush.interval.ms=1000
plugin.path=$cache/debezium-3.6/plugins
listeners=http://127.0.0.1:$connect_port
EOF
close $w;
my %prefix = (schema => "dbz047s_$run", plain => "dbz047p_$run");
for my $kind ('schema', 'plain')
{
	kafka_create_topic("$prefix{$kind}.public.items", 1);    # a truncate is ordered within its partition only
	open my $c, '>', "$dir/$kind.properties" or die;
	print $c <<"EOF";
name=items_$kind
connector.class=io.debezium.connector.postgresql.PostgresConnector
plugin.name=pgoutput
database.hostname=127.0.0.1
database.port=$port
database.user=$user
database.password=unused
database.dbname=postgres
topic.prefix=$prefix{$kind}
table.include.list=public.items
publication.name=dbz_$kind
publication.autocreate.mode=filtered
slot.name=dbz_$kind
snapshot.mode=initial
skipped.operations=none
poll.interval.ms=50
EOF
	print $c "key.converter.schemas.enable=false\nvalue.converter.schemas.enable=false\n"
	  . "key.converter=org.apache.kafka.connect.json.JsonConverter\nvalue.converter=org.apache.kafka.connect.json.JsonConverter\n"
	  if $kind eq 'plain';
	close $c;
}
my $connstr = $node->connstr('postgres');
open my $ini, '>', "$dir/bridge.ini" or die;
print $ini <<"INI";
[bridge]
conninfo = $connstr
brokers = $bootstrap
group = dbz047_$run
batch_size = 40
batch_delay_ms = 200
writers = 2
log_level = debug

[kafka]
session.timeout.ms = 6000

[route schema]
topics = $prefix{schema}.public.items
table = mirror.items
format = debezium

[route plain]
topics = $prefix{plain}.public.items
table = mirror_plain.items
format = debezium
INI
close $ini;

system($connect, 'start', "$dir/connect", "$dir/worker.properties", "$dir/schema.properties", "$dir/plain.properties") == 0
  or BAIL_OUT('Kafka Connect did not start');
ok( wait_until(
		sub {
			$node->safe_psql('postgres', q{SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('dbz_schema', 'dbz_plain') AND active})
			  eq '2';
		},
		180),
	'both connectors stream from their slots') or diag(slurp_file("$dir/connect/connect.log"));

my $bridge = bridge_spawn("$dir/bridge.ini", "$dir/bridge.log");
END
{
	$bridge->kill_kill if $bridge;
	system($connect, 'kill', "$dir/connect") if $dir;
}
sub kill_bridge
{
	$bridge->signal('KILL');
	$bridge->finish;
	$bridge = bridge_spawn("$dir/bridge.ini", "$dir/bridge.log");
}

# The stream, the bridge killed twice on the way.
my @steps = (
	'SELECT public.add_items(201, 600)',
	q{UPDATE public.items SET name = 'renamed ' || id, score = score * 2 WHERE id % 3 = 0},    # big unchanged: a placeholder
	q{UPDATE public.items SET id = id + 100000 WHERE id % 10 = 7},    # primary-key changes
	'DELETE FROM public.items WHERE id % 11 = 5',
	q{UPDATE public.items SET big = public.big_value(-id) WHERE id % 8 = 2},    # new big values
	q{UPDATE public.items SET ratio = NULL, tags = '{}', nums = NULL WHERE id % 13 = 1},
	'TRUNCATE public.items',
	'SELECT public.add_items(1000, 1300)',
	q{UPDATE public.items SET name = 'again ' || id WHERE id % 4 = 0},    # placeholders after the truncate
	q{UPDATE public.items SET id = -id WHERE id % 9 = 0 AND big IS NULL},    # (with big: see docs/bridge.md)
	'DELETE FROM public.items WHERE id % 6 = 1',
	q{INSERT INTO public.items (id, name, big) VALUES (5, 'last', public.big_value(5))},
	q{UPDATE public.items SET code = 'final' WHERE id = 5},
);
for my $i (0 .. $#steps)
{
	$node->safe_psql('postgres', $steps[$i]);
	usleep(300_000);
	kill_bridge() if $i == 2 || $i == 8;
}
my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM public.items');
cmp_ok($rows, '>', 250, "the source ends with $rows rows");
for my $target ('mirror.items', 'mirror_plain.items')
{
	my $ok = wait_until(sub { differences($target) eq '0' }, 240);
	ok($ok, "$target equals the source, row by row and column by column") or diag(explain_differences($target));
}
is( $node->safe_psql('postgres', q{SELECT count(*) FROM mirror.items WHERE big LIKE '%debezium_unavailable%'}),
	'0', 'no placeholder was written over a stored value');
cmp_ok(
	$node->safe_psql('postgres', q{SELECT count(*) FROM mirror.items WHERE id % 4 = 0 AND big IS NOT NULL AND name LIKE 'again %'}),
	'>', 50, 'rows updated without their big value kept it');
is($node->safe_psql('postgres', 'SELECT count(*) FROM infra.bridge_dead_letters'), '0', 'no dead letters');
my $placeholders = `kcat -C -b $bootstrap -t $prefix{schema}.public.items -e -q -f '%s\\n' 2>/dev/null | grep -c __debezium_unavailable_value`;
chomp $placeholders;
cmp_ok($placeholders, '>', 50, "Debezium sent the placeholder ($placeholders events): the test covers it");

# Both ways of applying ran: events the bridge decoded itself, and ranges
# holding the placeholder left to the server's SQL.
my $blog = slurp_file("$dir/bridge.log");
like($blog, qr/change events applied in the bridge/, 'the bridge decoded some of the connector\'s events itself');
like($blog, qr/is for the staging path \(it may hold the unavailable-value placeholder\)/,
	'ranges with the placeholder went to the server\'s SQL');

$bridge->signal('TERM');
$bridge->finish;
system($connect, 'stop', "$dir/connect");
done_testing();
