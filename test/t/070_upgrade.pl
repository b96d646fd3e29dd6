# Upgrades in place: a database made with the released 1.0 script and
# holding data (messages waiting in the outbox, dead letters, rows in every
# configuration table, bridge offsets) goes through ALTER EXTENSION infra
# UPDATE with nothing lost; the waiting messages are then delivered; and the
# upgraded database's schema is exactly a fresh 1.2 install's (through 1.1).  Before the
# update, today's library refuses the 1.0 objects with an error naming both
# versions and the command to run; the worker waits.  A library older than
# the installed objects is refused the same way.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $node = infra_node('upgrade',
	conf => "infra.kafka_brokers = '$bootstrap'\ninfra.database = 'postgres'\n");
$node->start;

my $library = $node->safe_psql('postgres',
	"SELECT default_version FROM pg_available_extensions WHERE name = 'infra'");
is($library, '1.2', 'the default version is 1.2');
is($node->safe_psql('postgres',
		"SELECT string_agg(source || '>' || target, ',') FROM pg_extension_update_paths('infra') WHERE path IS NOT NULL"),
	'1.0>1.1,1.0>1.2,1.1>1.2', 'update paths: 1.0 to 1.1, 1.1 to 1.2, and 1.0 to 1.2 through 1.1');

# --- 1.0 installed, today's library loaded ----------------------------------
$node->safe_psql('postgres', "CREATE EXTENSION infra VERSION '1.0'");
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'infra'"),
	'1.0', 'CREATE EXTENSION infra VERSION 1.0 installs the released script');

ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT query FROM pg_stat_activity WHERE backend_type = 'infra worker'")
			  eq 'waiting for ALTER EXTENSION infra UPDATE';
		}),
	'the worker waits for the update instead of serving 1.0 objects');
like(slurp_file($node->logfile),
	qr/WARNING:  infra worker waiting: infra's SQL objects in database "postgres" are version 1\.0, but the loaded infra library is version 1\.2\n.*HINT:  Run ALTER EXTENSION infra UPDATE;/,
	'the worker says why it waits and what to run');

my ($rc, $out, $err) = $node->psql('postgres', "SELECT infra.kafka_send('t', 'v')");
isnt($rc, 0, 'kafka_send is refused while the SQL objects are 1.0');
like($err, qr/ERROR:  infra's SQL objects in database "postgres" are version 1\.0, but the loaded infra library is version 1\.2/,
	'the error names both versions');
like($err, qr/HINT:  Run ALTER EXTENSION infra UPDATE; to update them to 1\.2\./, 'the hint gives the command');
($rc, $out, $err) = $node->psql('postgres', "SELECT infra.rate_limit('api')");
like($err, qr/are version 1\.0, but the loaded infra library is version 1\.2/,
	'every C function refuses, not just kafka_send');
is($node->safe_psql('postgres', 'SELECT infra.version()'), '1.2',
	'infra.version() still answers: it reports the library');

# --- fill the 1.0 database as a 1.0 system would have left it ---------------
my $topic = "infra_t_upgrade_$$";
kafka_create_topic($topic, 1);
$node->safe_psql('postgres', qq{
INSERT INTO infra.kafka_outbox_batches
       (first_id, messages, ids, topics, partitions, keys, vals, headers)
SELECT ids[1], 3, ids, ARRAY['$topic', '$topic', '$topic'], ARRAY[NULL, NULL, NULL]::int[],
       ARRAY['k', 'k', 'k']::bytea[], ARRAY['one', 'two', 'three']::bytea[],
       ARRAY[NULL, '{"h": "1"}', NULL]::jsonb[]
  FROM (SELECT array_agg(nextval('infra.kafka_outbox_id_seq') ORDER BY g) AS ids
          FROM generate_series(1, 3) g) s;
INSERT INTO infra.kafka_dead_letters (id, topic, key, value, created_at, attempts, error)
VALUES (nextval('infra.kafka_outbox_id_seq'), '$topic', 'k', 'dead', now(), 3,
        'MSG_SIZE_TOO_LARGE: Broker: Message size too large');
INSERT INTO infra.rate_limiters (name, rate, per, burst) VALUES ('upgrade_api', 5, '1 second', 10);
INSERT INTO infra.circuit_breakers (name, window_size, minimum_calls) VALUES ('upgrade_svc', 20, 5);
INSERT INTO infra.retry_policies (name, max_attempts, sqlstates) VALUES ('upgrade_retry', 4, '{40001,40P01}');
INSERT INTO infra.topics (name, env, domain, entity, version, partitions)
VALUES ('prod.sales.orders.v2', 'prod', 'sales', 'orders', 2, 3);
INSERT INTO infra.bridge_offsets (consumer_group, topic, partition, next_offset)
VALUES ('upgrade_group', '$topic', 0, 42);
INSERT INTO infra.bridge_dead_letters (route, topic, partition, "offset", payload, error)
VALUES ('r', '$topic', 0, 7, 'bad', 'invalid input syntax for type json');
});

# A fingerprint of every table the extension owns: its rows, in order.
my $tables = $node->safe_psql('postgres', q{
SELECT string_agg(c.oid::regclass::text, ' ' ORDER BY c.relname)
  FROM pg_depend d JOIN pg_class c ON c.oid = d.objid
 WHERE d.classid = 'pg_class'::regclass AND d.deptype = 'e' AND c.relkind = 'r'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'infra')});
my @tables = split / /, $tables;
cmp_ok(scalar @tables, '>=', 9, "the extension's tables are found (@tables)");
# One query fingerprinting them all: each table's row count and rows' md5,
# over the columns 1.0 has (1.1 and 1.2 add some; infra.topics without
# broker_state, which the worker sets once it serves; infra.circuit_breakers
# without the otlp preset 1.2 adds).
my %columns = map {
	my $t = $_;
	($t => $node->safe_psql('postgres', qq{
SELECT string_agg('t.' || quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
 WHERE attrelid = '$t'::regclass AND attnum > 0 AND NOT attisdropped AND attname <> 'broker_state'}))
} @tables;
my $fingerprint_sql = join " || E'\\n' || ", map {
	my $row = "ROW($columns{$_})";
	my $old = $_ eq 'infra.circuit_breakers' ? " WHERE t.name <> 'otlp'" : '';
	"(SELECT '$_ ' || count(*) || ' ' || coalesce(md5(string_agg(CAST($row AS text), '|' ORDER BY CAST($row AS text))), '-') FROM $_ t$old)";
} @tables;
my $before = $node->safe_psql('postgres', "SELECT $fingerprint_sql");
like($before, qr/infra\.kafka_outbox_batches 1 /, 'one outbox batch (three messages) waits');
my $seq_before = $node->safe_psql('postgres', 'SELECT last_value FROM infra.kafka_outbox_id_seq');

# --- the update ---------------------------------------------------------------
# The rows are compared inside the updating transaction: once it commits,
# the worker starts delivering (and emptying the outbox).
my ($after, $untimed) = split /\n(?=\d+$)/, $node->safe_psql('postgres',
	"BEGIN; ALTER EXTENSION infra UPDATE; SELECT $fingerprint_sql;"
	  . " SELECT count(*) FROM infra.kafka_outbox_batches WHERE timeline IS NULL; COMMIT;");
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'infra'"),
	'1.2', 'ALTER EXTENSION infra UPDATE reaches 1.2');
is($after, $before, 'every row of every table is still there, unchanged');
is($node->safe_psql('postgres', q{SELECT preset::text || ' ' || (acl IS NULL)::text FROM infra.circuit_breakers WHERE name = 'otlp'}),
	'true true', 'the update adds the trace exporter\'s own breaker, otlp, granted to no one');
is($node->safe_psql('postgres', q{SELECT string_agg(name || ':' || (owner::text = current_user)::text || ':' || (acl IS NOT NULL)::text, ' ' ORDER BY name) FROM infra.rate_limiters}),
	'api:true:true database:true:true upgrade_api:true:true', 'rows from before 1.2 belong to the updating role, their use granted to PUBLIC as before');
is($untimed, '1', 'the waiting batch has no timeline: its messages keep their 1.0 ids');
is($node->safe_psql('postgres', 'SELECT last_value FROM infra.kafka_outbox_id_seq'),
	$seq_before, 'the message id sequence goes on where it was');

ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT query FROM pg_stat_activity WHERE backend_type = 'infra worker'") eq 'running';
		}),
	'the worker serves once the objects are 1.2');
is($node->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')"), 't',
	'the messages waiting since 1.0 are delivered');
is($node->safe_psql('postgres', 'SELECT count(*) FROM infra.kafka_outbox'), '0', 'the outbox is empty');
$node->safe_psql('postgres', "SELECT infra.kafka_retry_dead_letters(topic => '$topic')");
is($node->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')"), 't',
	'a dead letter from 1.0 goes out again on request');

my ($kout, $kerr);
IPC::Run::run([ 'kcat', '-b', $bootstrap, '-C', '-t', $topic, '-o', 'beginning', '-e', '-q',
		'-f', '%k=%s %h\n' ], '>', \$kout, '2>', \$kerr, IPC::Run::timeout(120));
my @got = split /\n/, $kout;
is_deeply([ map { (split / /, $_)[0] } @got ], [ 'k=one', 'k=two', 'k=three', 'k=dead' ],
	'Kafka has the three waiting messages, in order, then the dead letter');
like($got[1], qr/h=1/, 'headers written under 1.0 are sent');
like($got[0], qr{infra-msg-id=\d+/\d+/\d+(,|$)}, 'messages waiting since 1.0 keep the 1.0 form of infra-msg-id (a dedupe recognises them)');
like($got[3], qr{infra-msg-id=\d+/\d+/1/\d+(,|$)}, 'a message queued under 1.2 carries its timeline in infra-msg-id');
is($node->safe_psql('postgres',
		"SELECT infra.rate_limit('upgrade_api', cost => 10)::text || ' ' || infra.rate_limit('upgrade_api')::text"),
	'true false', 'a rate limiter configured under 1.0 works after the update (burst 10, then empty)');

# --- the upgraded schema is a fresh 1.2 install's ----------------------------
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION infra');

# pg_dump, with statements sorted and what differs by nature left out (the
# objects' oids and xids, sequence positions, the restrict key, the header).
sub schema_dump
{
	my ($db, @flags) = @_;
	my ($dump, $derr);
	IPC::Run::run([ 'pg_dump', '--schema-only', @flags, '-d', $node->connstr($db) ],
		'>', \$dump, '2>', \$derr) or die "pg_dump $db: $derr";
	my @out;
	for my $block (split /\n\s*\n/, $dump)
	{
		# Frozen xids and sequence positions are state, not schema.
		next if $block =~ /relfrozenxid|^SELECT pg_catalog\.setval\(/m;
		my @l = grep {
			!/^-- (For binary upgrade|Dumped|Name:|TOC entry)/
			  && !/binary_upgrade_set_next_/
			  && !/^\\(un)?restrict /
		} split /\n/, $block;
		next unless grep { /\S/ && !/^--\s*$/ } @l;
		my $t = join "\n", @l;
		$t =~ s/(binary_upgrade_create_empty_extension\('infra', 'pg_catalog', false, '[^']*', )'\{[0-9,]*\}'/$1'{oids}'/;
		push @out, $t;
	}
	return join "\n\n", sort @out;
}
# The data rows and the test's own database differ; the schema must not.
is(schema_dump('postgres'), schema_dump('fresh'),
	'pg_dump --schema-only: upgraded equals fresh 1.2');
my $upgraded = schema_dump('postgres', '--binary-upgrade');
like($upgraded, qr/ALTER EXTENSION infra ADD FUNCTION infra\.kafka_payload_text/,
	'the binary-upgrade dump lists every member object');
is($upgraded, schema_dump('fresh', '--binary-upgrade'),
	'pg_dump --schema-only --binary-upgrade (every member, its grants, comments and settings): upgraded equals fresh 1.2');

# --- a library older than the installed objects -------------------------------
# What a downgraded library would meet: objects of a later version.
$node->safe_psql('fresh', "UPDATE pg_extension SET extversion = '1.3' WHERE extname = 'infra'");
($rc, $out, $err) = $node->psql('fresh', "SELECT infra.rate_limit('x')");
like($err, qr/ERROR:  infra's SQL objects in database "fresh" are version 1\.3, but the loaded infra library is version 1\.2/,
	'a library older than the objects is refused, naming both versions');
like($err, qr/HINT:  Install infra 1\.3's library \(make install, or its package\), then restart PostgreSQL\./,
	'and the hint says what to install');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'the server is up: an error, never a crash');

$node->stop;
done_testing();
