# infra-bridge reading Avro in Confluent's wire format, its schemas from a
# real schema registry (Apicurio Registry, Confluent's API), the messages
# written by a real Avro producer (confluent-kafka's AvroSerializer):
#   - format = avro onto typed columns: every Avro type and logical type
#     (decimal as bytes and as fixed, date, time and timestamp in each unit,
#     local timestamps, uuid, duration, enum, arrays with nulls, maps, a
#     nested record and a reference to it), two versions of the schema in
#     one topic, and messages that cannot be decoded (not the wire format,
#     a schema id the registry lacks, a body cut short) as dead letters
#     holding the bytes as they came; the rows equal the producer's, each as
#     text;
#   - Avro keys, upserts and tombstones (mode = upsert, deletes = on);
#   - Debezium's envelope as Kafka Connect's Avro converter writes it
#     (format = debezium, encoding = avro): snapshot reads, creates,
#     updates, the unavailable-value placeholder, deletes with tombstones, a
#     primary-key change and a truncate, applied by the bridge's own
#     decoding and by the server's SQL; both tables equal the producer's;
#   - a registry that cannot be reached: the batch is tried again, nothing
#     written and nothing dead-lettered, until it can.
#   - 2,000 valid messages mutated (bytes flipped, cut, repeated, added,
#     random bodies): the bridge keeps running, each is a row or a dead
#     letter.
# Java (the registry) runs with PostgreSQL 18 only, as TAP 047.
# INFRA_AVRO_MESSAGES: messages per scenario (default 400);
# INFRA_AVRO_FUZZ: mutated messages (default 2,000).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

plan skip_all => 'the registry runs with PostgreSQL 18 only; this run is another version'
  unless `pg_config --version` =~ /^PostgreSQL 18\./;
my $cache = $ENV{INFRA_CACHE} // die 'INFRA_CACHE is not set: run through test/run.sh';
plan skip_all => 'Apicurio Registry is not in the cache (make deps)'
  unless -f "$cache/apicurio-registry-2.4.2/target/registry-1.0-runner.jar";

my $n = $ENV{INFRA_AVRO_MESSAGES} // 400;
my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $run = $$;
my $python = "$cache/python/bin/python3";
my $registry_sh = src_path('test/registry/registry.sh');

my $port = PostgreSQL::Test::Cluster::get_free_port();
system($registry_sh, 'start', "$dir/registry", $port) == 0 or BAIL_OUT('the registry did not start');
END { system($registry_sh, 'stop', "$dir/registry") if defined $dir && -d "$dir/registry" }
my $registry = "http://127.0.0.1:$port/apis/ccompat/v6";

my $node = infra_node('bridge_avro', conf => "infra.database = 'postgres'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
my $connstr = $node->connstr('postgres');

# Produce a scenario's messages into a new topic; returns the topic, the
# message count and the directory with expected.sql.
sub produce
{
	my ($scenario, $size) = @_;
	my $topic = "avro_${scenario}_$run";
	my $out = "$dir/$scenario";
	mkdir $out;
	kafka_create_topic($topic, 1);
	system($python, src_path('test/registry/avro_produce.py'), $bootstrap, $registry, $topic, $scenario,
		$size // $n, $out) == 0
	  or die "avro_produce.py $scenario failed";
	chomp(my $count = slurp_file("$out/count"));
	return ($topic, $count, $out);
}

sub ini
{
	my ($name, $topic, $route, $batch, $reg) = @_;
	return bridge_ini("$dir/$name.ini", $connstr, "${name}_$run", "[route r_$name]\ntopics = $topic\n$route\n", $batch, 500,
		'schema_registry = ' . ($reg // $registry) . "\n");
}

sub stored
{
	my ($name) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(max(next_offset), 0) FROM infra.bridge_offsets WHERE consumer_group = '${name}_$run'");
}

# Run the bridge on a route until the topic's count messages are settled.
sub run_all
{
	my ($name, $topic, $count, $route, $batch, %env) = @_;
	my $file = ini($name, $topic, $route, $batch);
	local @ENV{ keys %env } = values %env;
	my $h = bridge_spawn($file, "$file.log");
	my $ok = wait_until(sub { stored($name) >= $count }, 180);
	$h->signal('TERM');
	$h->finish;
	ok($ok, "$name: $count messages read") or diag(slurp_file("$file.log"));
	return slurp_file("$file.log");
}

# Rows of table equal expected's, each row compared as text.
sub same_rows
{
	my ($table, $what, $want) = @_;
	$want //= 'TABLE expected';
	my $diff = $node->safe_psql('postgres', qq{
		SELECT count(*) FROM ((SELECT t::text FROM $table t EXCEPT ALL SELECT e::text FROM ($want) e)
		  UNION ALL (SELECT e::text FROM ($want) e EXCEPT ALL SELECT t::text FROM $table t)) d});
	is($diff, '0', "$table: $what") or diag($node->safe_psql('postgres',
		"SELECT 'got', t::text FROM $table t UNION ALL SELECT 'want', e::text FROM ($want) e ORDER BY 2, 1 LIMIT 40"));
	my $rows = $node->safe_psql('postgres', "SELECT count(*) FROM $table");
	cmp_ok($rows, '>', 0, "$table: has rows ($rows)");
}

sub expect_rows
{
	my ($columns, $out) = @_;
	$node->safe_psql('postgres', "DROP TABLE IF EXISTS expected; CREATE TABLE expected ($columns)");
	$node->safe_psql('postgres', slurp_file("$out/expected.sql")) if -s "$out/expected.sql";
}

# --- format = avro: every type onto columns -------------------------------
my $plain_columns = q{id integer PRIMARY KEY, name text, price numeric(12,3), ratio numeric, born date,
    seen timestamptz, seen_ms timestamptz, loc timestamp, t_ms time, t_us time, ref uuid, flag boolean,
    score double precision, small real, big bigint, blob bytea, tags text[], attrs jsonb, nested jsonb,
    nested2 jsonb, mood text, dur interval, note text};
my ($ptopic, $pcount, $pout) = produce('plain');
expect_rows($plain_columns, $pout);
(my $direct_columns = $plain_columns) =~ s/ tags text\[\],//;
$node->safe_psql('postgres', "CREATE TABLE plain_all ($plain_columns); CREATE TABLE plain_staged ($plain_columns);
    CREATE TABLE plain_direct ($direct_columns)");
my $log = run_all('plain_all', $ptopic, $pcount, "table = plain_all\nformat = avro", 1000);
same_rows('plain_all', 'every type as the producer wrote it, two schema versions');
like($log, qr/column tags \(text\[\]\) is filled by jsonb_populate_record on the server/,
	'an array column sends the route through the staging table');
run_all('plain_staged', $ptopic, $pcount, "table = plain_staged\nformat = avro\nmode = upsert\nkey_columns = id", 7);
same_rows('plain_staged', 'the same, upserted in batches of 7');
# Without the array column the bridge picks the keys itself and COPYs
# straight into the table, but for the batch holding the one number written
# with an exponent (json_columns' rule: the server decides it).
$log = run_all('plain_direct', $ptopic, $pcount, "table = plain_direct\nformat = avro", 50);
same_rows('plain_direct', 'the same, COPYed straight in', 'SELECT id, name, price, ratio, born, seen, seen_ms, loc,'
	  . ' t_ms, t_us, ref, flag, score, small, big, blob, attrs, nested, nested2, mood, dur, note FROM expected');
my @staged = $log =~ /route \\"r_plain_direct\\": message at \S+ \[0\] offset (\d+) goes through the staging table/g;
is("@staged", '6', 'every batch was COPYed straight in but the one with an exponent');
unlike($log, qr/filled by jsonb_populate_record/, 'no column of plain_direct needs the server');

my @bad = map { [ split / / ] } split /\n/, slurp_file("$pout/bad");
for my $route ('r_plain_all', 'r_plain_staged', 'r_plain_direct')
{
	my $dead = $node->safe_psql('postgres',
		"SELECT string_agg(\"offset\" || ' ' || encode(payload, 'hex'), E'\\n' ORDER BY \"offset\")"
		  . " FROM infra.bridge_dead_letters WHERE route = '$route'");
	is($dead, join("\n", map { "$_->[0] $_->[1]" } @bad), "$route: the three undecodable messages are dead letters, bytes kept");
}
my $errors = $node->safe_psql('postgres',
	q{SELECT string_agg(error, E'\n' ORDER BY "offset") FROM infra.bridge_dead_letters WHERE route = 'r_plain_all'});
like($errors, qr/^22P02: not in Confluent's wire format/m, 'dead letter: not the wire format');
like($errors, qr/^22P02: schema id 2147483632 is not in the schema registry \(404\)/m, 'dead letter: an unknown schema id');
like($errors, qr/^22P02: not an Avro value of schema id \d+/m, 'dead letter: a body cut short');
my $ids = () = $log =~ /schema id/g;
ok($ids >= 2, 'the log says why each was dead-lettered');

# --- Avro keys, upserts and tombstones ------------------------------------
my ($ktopic, $kcount, $kout) = produce('keyed');
expect_rows('id integer PRIMARY KEY, n bigint, label text', $kout);
$node->safe_psql('postgres', 'CREATE TABLE keyed (id integer PRIMARY KEY, n bigint, label text)');
run_all('keyed', $ktopic, $kcount, "table = keyed\nformat = avro\nmode = upsert\nkey_columns = id\ndeletes = on", 50);
same_rows('keyed', 'the last message of each Avro key; tombstones deleted');

# --- Debezium's envelope in Avro ------------------------------------------
my $dbz_columns = q{id integer PRIMARY KEY, name text, price numeric(10,2), born date, seen timestamp,
    at_tz timestamptz, ref uuid, doc jsonb, tags text[], blob bytea, big text};
my ($dtopic, $dcount, $dout) = produce('debezium');
expect_rows($dbz_columns, $dout);
$node->safe_psql('postgres', "CREATE TABLE dbz_bridge ($dbz_columns); CREATE TABLE dbz_server ($dbz_columns)");
$log = run_all('dbz_bridge', $dtopic, $dcount, "table = dbz_bridge\nformat = debezium\nencoding = avro", 7);
same_rows('dbz_bridge', 'Debezium Avro events applied (the bridge decoding where it can)');
like($log, qr/change events applied in the bridge/, 'some ranges were applied by the bridge itself');
like($log, qr/is for the staging path \(it may hold the unavailable-value placeholder\)/,
	'ranges with the placeholder went to the server');
run_all('dbz_server', $dtopic, $dcount, "table = dbz_server\nformat = debezium\nencoding = avro", 1000,
	INFRA_BRIDGE_CHANGE_DECODE => 'server');
same_rows('dbz_server', "Debezium Avro events applied by the server's SQL");
is($node->safe_psql('postgres', q{SELECT count(*) FROM infra.bridge_dead_letters WHERE route LIKE 'r_dbz%'}),
	'0', 'no Debezium event was a dead letter');

# --- hostile bodies: mutated messages ------------------------------------
{
	my ($ftopic, $fcount) = produce('fuzz', $ENV{INFRA_AVRO_FUZZ} // 2000);
	$node->safe_psql('postgres', "CREATE TABLE fuzz ($plain_columns)");
	my $file = ini('fuzz', $ftopic, "table = fuzz\nformat = avro", 100);
	my $h = bridge_spawn($file, "$file.log");
	my $done = wait_until(sub { stored('fuzz') >= $fcount }, 300);
	ok($done, "fuzz: $fcount mutated messages settled") or diag(slurp_file("$file.log"));
	ok($h->pumpable, 'the bridge is still running');
	$h->signal('TERM');
	$h->finish;
	is($h->full_result(0), 0, 'and exits 0 on SIGTERM (no crash)');
	my ($rows, $dead) = split /\|/, $node->safe_psql('postgres',
		q{SELECT (SELECT count(*) FROM fuzz), (SELECT count(*) FROM infra.bridge_dead_letters WHERE route = 'r_fuzz')});
	is($rows + $dead, $fcount, "every mutated message is a row ($rows) or a dead letter ($dead)");
	cmp_ok($dead, '>', 0, 'some are dead letters');
}

# --- a registry that cannot be reached ------------------------------------
{
	my $closed = PostgreSQL::Test::Cluster::get_free_port();
	$node->safe_psql('postgres', "CREATE TABLE unreachable ($plain_columns)");
	my $file = ini('unreachable', $ptopic, "table = unreachable\nformat = avro", 1000, "http://127.0.0.1:$closed");
	my $h = bridge_spawn($file, "$file.log");
	my $said = wait_until(sub { slurp_file("$file.log") =~ /cannot reach the schema registry/ }, 60);
	sleep 2;
	$h->signal('TERM');
	$h->finish;
	ok($said, 'the bridge says it cannot reach the registry');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM unreachable}), '0', 'nothing written meanwhile');
	is(stored('unreachable'), '0', 'no offset moved');
	is($node->safe_psql('postgres', q{SELECT count(*) FROM infra.bridge_dead_letters WHERE route = 'r_unreachable'}),
		'0', 'nothing dead-lettered for the registry being away');
	run_all('unreachable', $ptopic, $pcount, "table = unreachable\nformat = avro", 1000);
	my $diff = $node->safe_psql('postgres',
		q{SELECT count(*) FROM ((SELECT t::text FROM unreachable t EXCEPT SELECT e::text FROM plain_all e)
		  UNION ALL (SELECT e::text FROM plain_all e EXCEPT SELECT t::text FROM unreachable t)) d});
	is($diff, '0', 'once it can be reached, every message is written');
}

done_testing();
