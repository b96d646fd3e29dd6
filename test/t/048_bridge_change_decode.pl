# infra-bridge, format = debezium: change events decoded in the bridge
# (change.c, convert.c) write exactly the rows the server's own decoding
# (the staging path, debezium.c's SQL) writes.  Random change events of
# every kind (create, read, update, delete, tombstone, a truncate; with and
# without the JSON converter's schema part) over a table of every type the
# route converts, with edge values (negative decimals, dates and times
# before 1970, nanoseconds, times past midnight, negative intervals,
# strings with tabs, backslashes and quotes, arrays with NULL and "NULL",
# empty bytes), are applied by the bridge in batches of 1, 7 and 1,000
# and by the server path (INFRA_BRIDGE_CHANGE_DECODE=server): the tables
# are equal row by row as text (so 1.5 and 1.50 differ).  The logs show
# the bridge path applied the events; then events it leaves to the server
# (a number with an exponent, the placeholder, a left-out column with a
# default, a year before 1, bad base64) send their range through the
# staging path, with the same outcome and dead letters.  INFRA_DECODE_EVENTS
# sets the number of random events (default 600).
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
my $nevents = $ENV{INFRA_DECODE_EVENTS} // 600;
my $node = infra_node('bridge_change_decode', conf => "infra.database = 'postgres'\n");
$node->start;
my $columns = q{id bigint PRIMARY KEY, name text, code varchar(20), flag boolean, score double precision,
    price numeric(12,3), ratio numeric, amount numeric, born date, seen timestamp, seen_ms timestamp(3),
    seen_ns timestamp, at_tz timestamptz, t_us time, t_ms time(3), t_ns time, ref uuid, doc jsonb, doc2 jsonb,
    dj json, tags text[], nums integer[], blob bytea, span interval, note text DEFAULT 'fresh'};
my @tables = qw(bridge_1 bridge_7 bridge_1000 server);
$node->safe_psql('postgres', "CREATE EXTENSION infra;\n" . join('', map { "CREATE TABLE $_ ($columns);\n" } @tables));
my $connstr = $node->connstr('postgres');
my $json = JSON::PP->new->canonical;
srand($ENV{INFRA_DECODE_SEED} // 48);

my @fields = (
	[ 'id', 'int64' ], [ 'name', 'string' ], [ 'code', 'string' ], [ 'flag', 'boolean' ], [ 'score', 'float64' ],
	[ 'price', 'bytes', 'org.apache.kafka.connect.data.Decimal', { scale => '3' } ],
	[ 'ratio', 'struct', 'io.debezium.data.VariableScaleDecimal' ],
	[ 'amount', 'bytes', 'org.apache.kafka.connect.data.Decimal', { scale => '2' } ],
	[ 'born', 'int32', 'io.debezium.time.Date' ],
	[ 'seen', 'int64', 'io.debezium.time.MicroTimestamp' ],
	[ 'seen_ms', 'int64', 'io.debezium.time.Timestamp' ],
	[ 'seen_ns', 'int64', 'io.debezium.time.NanoTimestamp' ],
	[ 'at_tz', 'string', 'io.debezium.time.ZonedTimestamp' ],
	[ 't_us', 'int64', 'io.debezium.time.MicroTime' ],
	[ 't_ms', 'int32', 'io.debezium.time.Time' ],
	[ 't_ns', 'int64', 'io.debezium.time.NanoTime' ],
	[ 'ref', 'string', 'io.debezium.data.Uuid' ],
	[ 'doc', 'string', 'io.debezium.data.Json' ], [ 'doc2', 'string', 'io.debezium.data.Json' ],
	[ 'dj', 'string', 'io.debezium.data.Json' ],
	[ 'tags', 'array' ], [ 'nums', 'array' ], [ 'blob', 'bytes' ],
	[ 'span', 'int64', 'io.debezium.time.MicroDuration' ], [ 'note', 'string' ]);
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

# Minimal big-endian two's complement bytes of n, base64.
sub unscaled
{
	my ($n) = @_;
	my $bytes = pack('q>', $n);
	$bytes =~ s/^\x00+(?=[\x00-\x7f])//;
	$bytes =~ s/^\xff+(?=[\x80-\xff])//;
	return encode_base64($bytes, '');
}

sub pick { return $_[ int(rand(@_)) ] }
sub maybe_null { my ($v) = @_; return rand() < 0.08 ? undef : $v }
sub signed { my $m = int($_[0]); return int(rand(2 * $m + 1)) - $m }    # an integer, never 1e+17

my @strings = ('', 'plain', "tab\there", "new\nline", 'back\\slash', 'quote"d', "it's", "\x{e9}t\x{e9} \x{20ac}",
	"\x{1f600}", 'NULL', '{a,b}', ' padded ');

# A row with edge values; with_schema: the events that carry the schema
# part (schemaless ones take the route's modes: no scale for amount).
sub row
{
	my ($id, $with_schema) = @_;
	return {
		id => $id, name => maybe_null(pick(@strings) . " $id"), code => maybe_null(pick('a', 'bb', 'code ' . $id)),
		flag => maybe_null(pick(JSON::PP::true, JSON::PP::false)),
		score => maybe_null(pick(1.5, -0.25, 0, 1234567.125, -3)),
		price => maybe_null(unscaled(pick(0, 1, -1, signed(10**11), signed(1000)))),
		ratio => maybe_null({ scale => int(rand(6)), value => unscaled(signed(10**9)) }),
		amount => $with_schema ? maybe_null(unscaled(signed(10**7))) : undef,
		born => maybe_null(pick(0, -1, 19782, signed(700000), 2900000, -719162)),
		seen => maybe_null(pick(0, -1, 1709210096123456, signed(6 * 10**16))),
		seen_ms => maybe_null(pick(0, -1, 1709210096123, signed(6 * 10**13))),
		# schemaless: in microseconds, by the column's precision
		seen_ns => maybe_null($with_schema ? pick(0, -1, 1709210096123456789, signed(10**18)) : signed(6 * 10**16)),
		at_tz => maybe_null('2024-02-29T12:34:56.' . sprintf('%06d', int(rand(10**6))) . 'Z'),
		t_us => maybe_null(pick(0, 45296123456, 86399999999, int(rand(86400 * 10**6)))),
		t_ms => maybe_null(pick(0, 45296123, 86399999, int(rand(86400000)))),
		t_ns => maybe_null(pick(0, 45296123456789, int(rand(86400 * 10**9)))),
		ref => maybe_null(sprintf('%08x-%04x-4%03x-8%03x-%012x', int(rand(2**32)), int(rand(65536)), int(rand(4096)),
				int(rand(4096)), int(rand(2**40)))),
		doc => maybe_null(pick('{"a": [1, 2]}', '{"b":{"c":null}}', '[]', '"s"', '1.50')),
		doc2 => maybe_null(pick('{"z": 1, "a": [true, 1.50]}', '{}')),
		dj => maybe_null(pick('{ "a" : 1,  "a": 2 }', '[1, 2]', 'null')),
		tags => maybe_null([ map { pick(@strings, undef) } 1 .. int(rand(4)) ]),
		nums => maybe_null([ map { pick(signed(1000), undef) } 1 .. int(rand(4)) ]),
		blob => maybe_null(encode_base64(join('', map { chr(int(rand(256))) } 1 .. int(rand(6))), '')),
		span => maybe_null(pick(0, -1, 93784500000, signed(10**13))),
		note => maybe_null('note ' . $id) };
}

sub event
{
	my ($op, $before, $after, $with_schema) = @_;
	my $payload = { before => $before, after => $after, op => $op, ts_ms => 1709210096000 };
	# As the JSON converter writes it: the schema part first.
	return $with_schema ? '{"schema":' . $json->encode($schema) . ',"payload":' . $json->encode($payload) . '}'
	  : $json->encode($payload);
}

sub key { return $json->encode({ id => $_[0] }) }

# key|value lines; an empty value is a tombstone (kcat -Z).
sub random_events
{
	my ($n, $truncate_at) = @_;
	my @lines;
	for my $i (1 .. $n)
	{
		my $id = 1 + int(rand(60));
		my $s = rand() < 0.5 ? 1 : 0;
		my $r = rand();
		if (defined $truncate_at && $i == $truncate_at) { push @lines, '|' . event('t', undef, undef, $s) }
		elsif ($r < 0.55) { push @lines, key($id) . '|' . event(pick('c', 'u', 'r'), undef, row($id, $s), $s) }
		elsif ($r < 0.8) { push @lines, key($id) . '|' . event('d', { id => $id }, undef, $s) }
		else { push @lines, key($id) . '|' }
	}
	return @lines;
}

my %topics = (main => "decode_$run", modes => "decode_modes_$run");
kafka_create_topic($_, 1) for values %topics;

sub produce
{
	my ($topic, $name, @lines) = @_;
	open my $fh, '>:encoding(UTF-8)', "$dir/$name" or die;
	print $fh map { "$_\n" } @lines;
	close $fh;
	system('kcat', '-P', '-b', $bootstrap, '-t', $topic, '-K', '|', '-Z', '-l', "$dir/$name") == 0 or die 'kcat';
}

# One bridge process: the main topic into table, the schemaless modes topic into table_modes.
sub ini
{
	my ($table, $batch) = @_;
	return bridge_ini("$dir/$table.ini", $connstr, "${table}_$run", <<"INI", $batch, 1000);
[route main_$table]
topics = $topics{main}
table = $table
format = debezium

[route modes_$table]
topics = $topics{modes}
table = ${table}_modes
format = debezium
decimal_handling_mode = string
time_precision_mode = connect
binary_handling_mode = base64-url-safe
INI
}

# Run table's bridge until it has read n messages of each topic.
sub run_bridge
{
	my ($table, $batch, $n, $nmodes) = @_;
	my $file = ini($table, $batch);
	my $log = "$file.log";
	my $pos = -s $log // 0;
	delete local $ENV{INFRA_BRIDGE_CHANGE_DECODE};
	$ENV{INFRA_BRIDGE_CHANGE_DECODE} = 'server' if $table eq 'server';
	my $h = bridge_spawn($file, $log);
	my $ok = wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT coalesce(sum(next_offset) FILTER (WHERE topic = '$topics{main}'), 0) >= $n"
				  . " AND coalesce(sum(next_offset) FILTER (WHERE topic = '$topics{modes}'), 0) >= $nmodes"
				  . " FROM infra.bridge_offsets WHERE consumer_group = '${table}_$run'") eq 't';
		},
		180);
	$h->signal('TERM');
	$h->finish;
	ok($ok, "$table: every message read") or diag(slurp_file($log));
	return substr(slurp_file($log), $pos);
}

# Change events applied in the bridge, per the log.
sub applied_in_bridge
{
	my ($log) = @_;
	my $n = 0;
	$n += $1 while $log =~ /(\d+) change events applied in the bridge/g;
	return $n;
}

# table equals the server path's, row by row as text, and its dead letters too.
sub same_as_server
{
	my ($table, $what) = @_;
	for my $t ($table, "${table}_modes")
	{
		(my $s = $t) =~ s/^\Q$table\E/server/;
		my $diff = $node->safe_psql('postgres', qq{
			SELECT count(*) FROM ((SELECT x::text FROM $t x EXCEPT ALL SELECT y::text FROM $s y)
			  UNION ALL (SELECT y::text FROM $s y EXCEPT ALL SELECT x::text FROM $t x)) d});
		is($diff, '0', "$t: $what") or diag($node->safe_psql('postgres', qq{
			(SELECT 'bridge', x::text FROM $t x EXCEPT SELECT 'bridge', y::text FROM $s y)
			UNION ALL (SELECT 'server', y::text FROM $s y EXCEPT SELECT 'server', x::text FROM $t x) ORDER BY 2, 1}));
	}
	# Messages before a truncate are never read in a batch holding both:
	# dead letters are compared at the server's batch size only.
	return unless $table eq 'bridge_1000';
	is( $node->safe_psql('postgres', qq{
			SELECT string_agg(topic || ' ' || "offset" || ' ' || error, E'\\n' ORDER BY topic, "offset")
			FROM infra.bridge_dead_letters WHERE route LIKE '%\\_$table'}),
		$node->safe_psql('postgres', q{
			SELECT string_agg(topic || ' ' || "offset" || ' ' || error, E'\n' ORDER BY topic, "offset")
			FROM infra.bridge_dead_letters WHERE route LIKE '%\_server'}),
		"$table: the same dead letters");
}

$node->safe_psql('postgres', join('', map { "CREATE TABLE ${_}_modes ($columns);\n" } @tables));

# Schemaless events in the modes the route names: decimals as strings,
# milliseconds, url-safe base64.
sub modes_events
{
	my ($n) = @_;
	my @lines;
	for my $i (1 .. $n)
	{
		my $id = 1 + int(rand(20));
		my $r = row($id, 0);
		$r->{price} = maybe_null(pick('12.345', '-0.5', '0', '99999999.999'));
		$r->{ratio} = maybe_null(pick('3.14159', '-2', '0.000001'));
		$r->{amount} = maybe_null('1.50');
		$r->{blob} = maybe_null(pick('AAH_-w==', '', '-_-_'));
		$r->{$_} = maybe_null(pick(0, -1, 1709210096123, signed(10**13))) for qw(seen seen_ms seen_ns);
		$r->{$_} = maybe_null(pick(0, 45296123, 86399999, int(rand(86400000)))) for qw(t_us t_ms t_ns);
		push @lines, key($id) . '|' . (rand() < 0.8 ? event(pick('c', 'u'), undef, $r, 0) : event('d', { id => $id }, undef, 0));
	}
	return @lines;
}

# Phase 1: random events the bridge decodes itself.
my @main1 = random_events($nevents, int($nevents / 2));
my @modes1 = modes_events(int($nevents / 4));
produce($topics{main}, 'main1', @main1);
produce($topics{modes}, 'modes1', @modes1);
my %logs;
for my $t (@tables)
{
	(my $batch = $t) =~ s/^bridge_//;
	$logs{$t} = run_bridge($t, $t eq 'server' ? 1000 : $batch, scalar @main1, scalar @modes1);
}
is(applied_in_bridge($logs{server}), 0, 'server: nothing applied in the bridge');
for my $t (grep { $_ ne 'server' } @tables)
{
	is(applied_in_bridge($logs{$t}), @main1 + @modes1, "$t: every event applied in the bridge");
	same_as_server($t, 'the rows the server path writes');
}
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM server'), '>', 10, 'rows remain after the truncate');
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM server_modes'), '>', 5, 'the modes table has rows');
like($logs{bridge_1000}, qr/a truncate, \d+ keys deleted, \d+ rows upserted/, 'bridge_1000: a truncate in its batch');

# Phase 2: events the bridge leaves to the server, among others: each
# sends its range through the staging path (a batch of 1: only itself).
my $ph = '__debezium_unavailable_value';
my @main2 = (
	random_events(5),
	key(61) . '|' . event('c', undef, { %{ row(61, 1) }, score => 1e-07 }, 1),
	key(62) . '|' . event('c', undef, { %{ row(62, 1) }, name => $ph }, 1),
	key(63) . '|' . event('c', undef, { map { $_ => row(63, 1)->{$_} } grep { $_ ne 'note' } map { $_->[0] } @fields }, 1),
	key(64) . '|' . event('c', undef, { %{ row(64, 1) }, born => -800000 }, 1),
	key(65) . '|' . event('c', undef, { %{ row(65, 1) }, blob => 'not base64!' }, 1),
	key(66) . '|' . event('c', undef, { %{ row(66, 1) }, code => 'x' x 30 }, 1),
	key(67) . '|' . event('c', undef, { %{ row(67, 1) }, flag => 'maybe' }, 1),
	'{"id":68}|{"hello":"world"}',
	# the wrapping written otherwise: payload first, spaces, another key
	key(69) . '|{"payload":' . $json->encode({ after => row(69, 1), op => 'c' }) . ',"schema":' . $json->encode($schema) . '}',
	key(70) . '| { "schema" : ' . $json->encode($schema) . ' , "payload" : ' . $json->encode({ after => row(70, 1), op => 'c' }) . ' } ',
	# a jsonb column given a JSON object nested 200 deep, as it is
	key(72) . '|' . event('c', undef, { %{ row(72, 1) }, doc2 => (sub { my $v = 1; $v = { a => $v } for 1 .. 200; $v })->() }, 1),
	key(71) . '|{"schema":' . $json->encode($schema) . ',"payload":' . $json->encode({ after => row(71, 1), op => 'c' }) . ',"x":1}',
	random_events(5));
produce($topics{main}, 'main2', @main2);
for my $t (@tables)
{
	(my $batch = $t) =~ s/^bridge_//;
	$logs{$t} = run_bridge($t, $t eq 'server' ? 1000 : $batch, @main1 + @main2, scalar @modes1);
}
like($logs{bridge_1000}, qr/is for the staging path \(.+\): its range goes there/, 'bridge_1000: the range left to the server');
like($logs{bridge_1}, qr/change events applied in the bridge/, 'bridge_1: the plain events still applied in the bridge');
like($logs{bridge_1}, qr/a change event the server refused .*: the range goes through the staging table/,
	'bridge_1: a value the server refuses rolls back to the staging path');
same_as_server($_, 'after events left to the server') for grep { $_ ne 'server' } @tables;
is( $node->safe_psql('postgres', q{SELECT string_agg(DISTINCT split_part(error, ':', 1), ',' ORDER BY split_part(error, ':', 1))
	FROM infra.bridge_dead_letters WHERE route LIKE '%\_server'}),
	'22023,22P02', 'server: the bad base64, boolean and non-event are dead letters');
is($node->safe_psql('postgres', q{SELECT note FROM bridge_1000 WHERE id = 63}), 'fresh', 'a left-out column takes its default');
is($node->safe_psql('postgres', q{SELECT string_agg(id::text, ',' ORDER BY id) FROM bridge_1 WHERE id BETWEEN 69 AND 71}),
	'69,70,71', 'the wrapping in another order, with spaces, with another key: applied');
is($node->safe_psql('postgres', q{SELECT doc2 #>> '{a,a,a}' IS NOT NULL AND length(doc2::text) > 1000 FROM bridge_1 WHERE id = 72}),
	't', 'a value nested 200 deep: written whole');
{
	my %off = map { my $id = $_; ($id => @main1 + (grep { $main2[$_] =~ /^\{"id":$id\}\|/ } 0 .. $#main2)[0]) } 69 .. 72;
	my ($o69, $o70, $o71, $o72) = @off{ 69 .. 72 };
	unlike($logs{bridge_1}, qr/offset (?:$o69|$o70|$o72) is for the staging path/,
		'bridge_1: the wrapping payload first, or with spaces, and deep nesting, decoded in the bridge');
	like($logs{bridge_1}, qr/offset $o71 is for the staging path \(its payload's JSON\)/,
		'bridge_1: the wrapping with another key left to the server');
}

done_testing();
