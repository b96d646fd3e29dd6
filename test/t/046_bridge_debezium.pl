# infra-bridge, format = debezium, on change events written here the way
# Debezium's PostgreSQL connector and Kafka Connect's JSON converter write
# them (047 runs a real connector): snapshot reads, creates, updates,
# deletes with their tombstones, a primary-key change (a delete and a
# create), a truncate, and updates leaving unchanged TOASTed columns out
# (the placeholder in each of its forms: text, an array, base64 bytes).
# The same events applied one per batch and all in one batch end in the
# same table, the one offset order gives, checked against the expected
# rows column by column; types with and without the schema part (Decimal
# bytes and VariableScaleDecimal, each time mode's numbers, uuid, jsonb,
# arrays, bytea, interval).  Events that are none of Debezium's, and values
# that do not convert, are dead letters; configurations that cannot work
# are refused at start.
use strict;
use warnings;

use JSON::PP;
use MIME::Base64 qw(encode_base64);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $run = $$;
my $node = infra_node('bridge_debezium', conf => "infra.database = 'postgres'\n");
$node->start;
my $columns = q{id integer PRIMARY KEY, name text, price numeric(10,2), ratio numeric, born date,
    seen timestamp, seen_ms timestamp(3), at_tz timestamptz, t_us time, ref uuid, doc jsonb, tags integer[],
    blob bytea, span interval, big text, note text DEFAULT 'fresh'};
$node->safe_psql('postgres', qq{
CREATE EXTENSION infra;
CREATE TABLE one_by_one ($columns);
CREATE TABLE all_at_once ($columns);
CREATE TABLE expected ($columns)});
my $connstr = $node->connstr('postgres');
my $json = JSON::PP->new->canonical;
my $placeholder = '__debezium_unavailable_value';

# Schema of the value's after/before struct, as the JSON converter writes it.
my @fields = (
	[ 'id', 'int32' ], [ 'name', 'string' ],
	[ 'price', 'bytes', 'org.apache.kafka.connect.data.Decimal', { scale => '2' } ],
	[ 'ratio', 'struct', 'io.debezium.data.VariableScaleDecimal' ],
	[ 'born', 'int32', 'io.debezium.time.Date' ],
	[ 'seen', 'int64', 'io.debezium.time.MicroTimestamp' ],
	[ 'seen_ms', 'int64', 'io.debezium.time.Timestamp' ],
	[ 'at_tz', 'string', 'io.debezium.time.ZonedTimestamp' ],
	[ 't_us', 'int64', 'io.debezium.time.MicroTime' ],
	[ 'ref', 'string', 'io.debezium.data.Uuid' ],
	[ 'doc', 'string', 'io.debezium.data.Json' ],
	[ 'tags', 'array' ], [ 'blob', 'bytes' ],
	[ 'span', 'int64', 'io.debezium.time.MicroDuration' ],
	[ 'big', 'string' ], [ 'note', 'string' ]);
my $row_schema = {
	type => 'struct', name => 'src.public.t.Value', optional => JSON::PP::true,
	fields => [
		map {
			{ field => $_->[0], type => $_->[1], optional => JSON::PP::true,
				($_->[2] ? (name => $_->[2]) : ()), ($_->[3] ? (parameters => $_->[3]) : ()) }
		} @fields ] };
my $schema = {
	type => 'struct', name => 'src.public.t.Envelope',
	fields => [
		{ %$row_schema, field => 'before' }, { %$row_schema, field => 'after' },
		{ field => 'op', type => 'string' }, { field => 'ts_ms', type => 'int64', optional => JSON::PP::true } ] };

# A row as Debezium encodes it: numbers for the temporal types, base64
# unscaled bytes for numeric(10,2), {scale, value} for a bare numeric.
sub unscaled
{
	my ($n) = @_;
	my $bytes = pack('q>', $n);
	$bytes =~ s/^\x00+(?=[\x00-\x7f])//;
	$bytes =~ s/^\xff+(?=[\x80-\xff])//;
	return encode_base64($bytes, '');
}

sub row
{
	my ($id, %v) = @_;
	return {
		id => $id, name => "n$id", price => unscaled(1234 + $id), ratio => { scale => 3, value => unscaled(-3142) },
		born => 19782, seen => 1709210096123456 + $id, seen_ms => 1709210096123, at_tz => '2024-02-29T12:34:56.123456Z',
		t_us => 45296123456, ref => '0e9a3b8e-6a52-4a0e-9c1f-3f0d8d8f1a0' . ($id % 10), doc => '{"a": [1, 2]}',
		tags => [ 1, 2, $id ], blob => encode_base64("\x00\x01\xff", ''), span => 93784500000,
		big => 'x' x 3000 . $id, note => 'src', %v };
}

# The SQL row each event's after stands for.
sub expect
{
	my ($id, %v) = @_;
	my %r = (
		id => $id, name => "'n$id'", price => 12.34 + $id / 100, ratio => '-3.142', born => q{'2024-02-29'},
		seen => sprintf(q{'2024-02-29 12:34:56.%06d'}, 123456 + $id), seen_ms => q{'2024-02-29 12:34:56.123'},
		at_tz => q{'2024-02-29 12:34:56.123456+00'}, t_us => q{'12:34:56.123456'},
		ref => "'0e9a3b8e-6a52-4a0e-9c1f-3f0d8d8f1a0" . ($id % 10) . "'", doc => q{'{"a": [1, 2]}'},
		tags => "'{1,2,$id}'", blob => q{'\x0001ff'}, span => q{'1 day 02:03:04.5'},
		big => "repeat('x', 3000) || '$id'", note => q{'src'}, %v);
	return '(' . join(', ', map { $r{ $_->[0] } } @fields) . ')';
}

sub event
{
	my ($op, $before, $after, $with_schema) = @_;
	my $payload = { before => $before, after => $after, op => $op, ts_ms => 1709210096000 };
	return $json->encode($with_schema ? { schema => $schema, payload => $payload } : $payload);
}

sub key { return $json->encode({ id => $_[0] }) }

# key|value lines; an empty value is a tombstone (kcat -Z).
my $r1 = row(1);
my $r2 = row(2);
my @phase1 = (
	key(1) . '|' . event('r', undef, $r1, 0),    # 1: a snapshot read, schemaless
	key(2) . '|' . event('c', undef, $r2, 1),    # 2: created, with the schema
	# 1: updated leaving big, doc, tags and blob out: each kept
	key(1) . '|'
	  . event('u', undef,
		row(1, name => 'renamed', big => $placeholder, doc => $placeholder, tags => [$placeholder],
			blob => encode_base64($placeholder, '')), 0),
	key(3) . '|' . event('c', undef, row(3), 1),
	key(3) . '|' . event('d', { id => 3 }, undef, 1),    # 3: created then deleted
	key(3) . '|',
	key(2) . '|' . event('d', $r2, undef, 1),    # 2 becomes 20: its key changed
	key(2) . '|',
	key(20) . '|' . event('c', undef, { %$r2, id => 20 }, 1),
	# 4: an update of a row never seen: inserted, the left-out column empty
	key(4) . '|' . event('u', undef, row(4, big => $placeholder), 0),
	key(5) . '|' . event('c', undef, row(5, note => undef, doc => undef), 0),    # note: NULL, not its default
	key(6) . '|' . event('c', undef, { id => 6, name => 'no note' }, 0),    # note absent: its default
	'{"id":7}|{"hello":"world"}',    # not a change event: a dead letter
	key(8) . '|' . event('c', undef, row(8, born => 'not a date'), 0),    # a dead letter
	key(9) . '|' . event('c', undef, row(9), 1),
	key(9) . '|' . event('u', undef, row(9, name => 'nine', big => $placeholder), 1),    # 9: big from its create
);
my $want1 = join(', ',
	expect(1, name => q{'renamed'}),
	expect(4, big => 'NULL'),
	expect(5, note => 'NULL', doc => 'NULL'),
	"(6, 'no note', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, 'fresh')",
	expect(9, name => q{'nine'}),
	expect(20, price => 12.36, seen => q{'2024-02-29 12:34:56.123458'}, tags => q{'{1,2,2}'},
		ref => q{'0e9a3b8e-6a52-4a0e-9c1f-3f0d8d8f1a02'}, name => q{'n2'}, big => q{repeat('x', 3000) || '2'}));

my $topic = "dbz_$run";
kafka_create_topic($topic, 1);

sub produce
{
	my ($name, @lines) = @_;
	open my $fh, '>', "$dir/$name" or die;
	print $fh map { "$_\n" } @lines;
	close $fh;
	system('kcat', '-P', '-b', $bootstrap, '-t', $topic, '-K', '|', '-Z', '-l', "$dir/$name") == 0 or die 'kcat';
}

sub ini
{
	my ($name, $batch, $route) = @_;
	return bridge_ini("$dir/$name.ini", $connstr, "${name}_$run", "[route r_$name]\ntopics = $topic\n$route\n", $batch, 2000);
}

# Run the bridge until the topic's n messages are written or dead letters.
sub run_all
{
	my ($name, $batch, $n, $route) = @_;
	my $file = ini($name, $batch, $route // "table = $name\nformat = debezium");
	my $h = bridge_spawn($file, "$file.log");
	my $ok = wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT coalesce(max(next_offset), 0) FROM infra.bridge_offsets WHERE consumer_group = '${name}_$run'")
			  >= $n;
		},
		120);
	$h->signal('TERM');
	$h->finish;
	ok($ok, "$name: $n messages read") or diag(slurp_file("$file.log"));
	return slurp_file("$file.log");
}

# Each column of table equals the expected rows' (EXCEPT both ways, and per column).
sub same_rows
{
	my ($table, $what) = @_;
	my $diff = $node->safe_psql('postgres', qq{
		SELECT count(*) FROM ((TABLE $table EXCEPT ALL TABLE expected) UNION ALL (TABLE expected EXCEPT ALL TABLE $table)) d});
	is($diff, '0', "$table: $what") or diag($node->safe_psql('postgres',
		"SELECT 'got', t.* FROM $table t UNION ALL SELECT 'want', e.* FROM expected e ORDER BY 2, 1"));
	for my $f (@fields)
	{
		my $c = $f->[0];
		is( $node->safe_psql('postgres',
				"SELECT count(*) FROM $table t FULL JOIN expected e USING (id) WHERE t.$c IS DISTINCT FROM e.$c"),
			'0', "$table: column $c as it left");
	}
}

produce('phase1', @phase1);
$node->safe_psql('postgres', "INSERT INTO expected VALUES $want1");
run_all('one_by_one', 1, scalar @phase1);
my $log = run_all('all_at_once', 1000, scalar @phase1);
like($log, qr/batch of ${\ scalar @phase1} messages: 14 written, 2 dead letters/, 'all the events came in one batch');
like($log, qr/TRUNCATE public\.all_at_once|DELETE FROM public\.all_at_once t USING/, 'the route deletes by key');
# As a role with only the documented grants, its own schema first on its
# search_path with a decode() of its own (the bridge's statements must not
# call it).
$node->safe_psql('postgres', q{
CREATE TABLE as_role (LIKE one_by_one INCLUDING ALL);
CREATE ROLE bridge_dbz LOGIN;
GRANT USAGE ON SCHEMA infra TO bridge_dbz;
GRANT SELECT, INSERT, UPDATE ON infra.bridge_offsets TO bridge_dbz;
GRANT INSERT ON infra.bridge_dead_letters TO bridge_dbz;
GRANT USAGE ON SEQUENCE infra.bridge_dead_letters_id_seq TO bridge_dbz;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON as_role TO bridge_dbz;
CREATE SCHEMA bridge_dbz AUTHORIZATION bridge_dbz;
CREATE FUNCTION bridge_dbz.decode(text, text) RETURNS bytea LANGUAGE sql AS $$ SELECT '\xdeadbeef'::bytea $$;
ALTER FUNCTION bridge_dbz.decode(text, text) OWNER TO bridge_dbz;
ALTER ROLE bridge_dbz SET search_path = bridge_dbz, public});
{
	my $file = ini('as_role', 1000, "table = as_role\nformat = debezium");
	my $text = slurp_file($file);
	$text =~ s/^(conninfo = .*)$/$1 user=bridge_dbz/m;
	open my $fh, '>', $file or die;
	print $fh $text;
	close $fh;
	my $h = bridge_spawn($file, "$file.log");
	my $ok = wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT coalesce(max(next_offset), 0) FROM infra.bridge_offsets WHERE consumer_group = 'as_role_$run'")
			  >= scalar @phase1;
		},
		120);
	$h->signal('TERM');
	$h->finish;
	ok($ok, 'as_role: read as a role with the documented grants') or diag(slurp_file("$file.log"));
}
for my $table ('one_by_one', 'all_at_once', 'as_role')
{
	same_rows($table, 'the rows offset order gives');
	my $dead = $node->safe_psql('postgres',
		"SELECT string_agg(\"offset\" || ' ' || error, E'\\n' ORDER BY \"offset\") FROM infra.bridge_dead_letters"
		  . " WHERE route = 'r_$table'");
	like($dead, qr/^12 22023: not a Debezium change event \(op missing\)$/m, "$table: a value that is no event: a dead letter");
	like($dead, qr/^13 22007: invalid input syntax for type date: "not a date"$/m, "$table: a bad date: a dead letter");
}

# deletes = off keeps every row: deletes and tombstones are skipped.
$node->safe_psql('postgres', 'CREATE TABLE keep_all (LIKE one_by_one INCLUDING ALL)');
run_all('keep_all', 1000, scalar @phase1, "table = keep_all\nformat = debezium\ndeletes = off");
$node->safe_psql('postgres', 'INSERT INTO expected VALUES ' . expect(2) . ', ' . expect(3));
same_rows('keep_all', 'deletes = off: the deleted rows kept');
$node->safe_psql('postgres', 'DELETE FROM expected WHERE id IN (2, 3)');

# Phase 2: a truncate in the middle; what follows it is applied, an update
# of a row created after it takes its left-out value from that create.
my @phase2 = (
	key(30) . '|' . event('c', undef, row(30), 1),
	'|' . event('t', undef, undef, 1),
	key(31) . '|' . event('c', undef, row(31), 0),
	key(31) . '|' . event('u', undef, row(31, name => 'after', big => $placeholder), 0),
	key(32) . '|' . event('r', undef, row(32), 1),
);
produce('phase2', @phase2);
$node->safe_psql('postgres', 'TRUNCATE expected; INSERT INTO expected VALUES ' . expect(31, name => q{'after'}) . ', ' . expect(32));
my $n = @phase1 + @phase2;
run_all('one_by_one', 1, $n);
$log = run_all('all_at_once', 1000, $n);
like($log, qr/TRUNCATE public\.all_at_once/, 'a truncate event truncates');
same_rows($_, 'a truncate empties the table, what follows it is applied') for ('one_by_one', 'all_at_once');

# Schemaless, the connector's modes said by the route: decimal as strings,
# time in milliseconds (connect), bytes as hex.
$node->safe_psql('postgres', q{
	CREATE TABLE modes (id integer PRIMARY KEY, price numeric(10,2), seen timestamp, t time, blob bytea);
	TRUNCATE expected});
my $mt = "dbz_modes_$run";
kafka_create_topic($mt, 1);
{
	open my $fh, '>', "$dir/modes" or die;
	print $fh key(1) . '|' . $json->encode({ op => 'c', after => { id => 1, price => '12.30', seen => 1709210096123,
		t => 45296123, blob => '0001ff' } }) . "\n";
	close $fh;
	system('kcat', '-P', '-b', $bootstrap, '-t', $mt, '-K', '|', '-l', "$dir/modes") == 0 or die 'kcat';
	my $file = "$dir/modes.ini";
	open my $ini, '>', $file or die;
	print $ini <<"INI";
[bridge]
conninfo = $connstr
brokers = $bootstrap
group = modes_$run
batch_delay_ms = 200

[route modes]
topics = $mt
table = modes
format = debezium
decimal_handling_mode = string
time_precision_mode = connect
binary_handling_mode = hex
INI
	close $ini;
	my $h = bridge_spawn($file, "$file.log");
	my $ok = wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM modes') eq '1' }, 120);
	$h->signal('TERM');
	$h->finish;
	ok($ok, 'modes: the event written') or diag(slurp_file("$file.log"));
	is($node->safe_psql('postgres', 'SELECT price, seen, t, blob FROM modes'),
		'12.30|2024-02-29 12:34:56.123|12:34:56.123|\x0001ff', 'string decimals, milliseconds, hex bytes');
}

# Refused configurations.
$node->safe_psql('postgres', q{
	CREATE TABLE no_key (id integer, name text);
	CREATE ROLE bridge_plain LOGIN;
	GRANT USAGE ON SCHEMA infra TO bridge_plain;
	GRANT SELECT, INSERT, UPDATE ON infra.bridge_offsets TO bridge_plain;
	GRANT SELECT, INSERT, UPDATE, DELETE ON one_by_one TO bridge_plain});
{
	my ($out, $err);
	my $file = ini('refused', 10, "table = one_by_one\nformat = debezium\nmode = insert");
	IPC::Run::run([ 'infra-bridge', '--check-config', '--config', $file ], '>', \$out, '2>', \$err);
	isnt($?, 0, 'debezium with mode = insert: refused');
	like($err, qr/is format = debezium: mode = insert .* does not apply/, 'it says why');

	$file = ini('refused2', 10, "table = one_by_one\nformat = debezium\ntime_precision_mode = nanos");
	IPC::Run::run([ 'infra-bridge', '--check-config', '--config', $file ], '>', \$out, '2>', \$err);
	like($err, qr/time_precision_mode \\"nanos\\" in section \[route r_refused2\] is not one of adaptive/,
		'time_precision_mode is one of the connector\'s');

	$file = ini('refused2b', 10, "table = one_by_one\nformat = json_columns\ndecimal_handling_mode = string");
	IPC::Run::run([ 'infra-bridge', '--check-config', '--config', $file ], '>', \$out, '2>', \$err);
	isnt($?, 0, 'a Debezium mode on another format: refused');
	like($err, qr/route \\"r_refused2b\\": decimal_handling_mode, .* apply to format = debezium only/, 'it says why');

	$file = ini('refused3', 10, "table = no_key\nformat = debezium");
	IPC::Run::run([ 'infra-bridge', '--config', $file ], '>', \$out, '2>', \$err, IPC::Run::timeout(60));
	is($? >> 8, 1, 'a table without a primary key nor key_columns: exit 1');
	like($err, qr/public\.no_key has no primary key among the columns the route writes: give key_columns/, 'it says why');

	(my $plain = $connstr) =~ s/user=\S+/user=bridge_plain/;
	$plain .= ' user=bridge_plain' unless $plain =~ /user=/;
	$file = ini('refused4', 10, "table = one_by_one\nformat = debezium");
	my $text = slurp_file($file);
	$text =~ s/^conninfo = .*$/conninfo = $plain/m;
	open my $fh, '>', $file or die;
	print $fh $text;
	close $fh;
	IPC::Run::run([ 'infra-bridge', '--config', $file ], '>', \$out, '2>', \$err, IPC::Run::timeout(60));
	is($? >> 8, 1, 'a role that may not TRUNCATE the table: exit 1');
	like($err, qr/may not TRUNCATE public\.one_by_one, which a truncate event \(op t\) does/, 'it says why');
}

done_testing();
