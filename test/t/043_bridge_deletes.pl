# infra-bridge, mode = upsert with deletes = on: a tombstone (a message
# with a null value) deletes the row of its key, in the same transaction
# as the batch's offsets, and several messages for one key in a batch are
# applied as in offset order: the same messages written one per batch and
# all in one batch end in the same table, the one the sequence of
# operations gives.  Bad tombstones (a key that is not JSON) are dead
# letters; a bad upsert among good ones for its key too.  Configurations
# that cannot work are refused at start.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $run = $$;
my $node = infra_node('bridge_deletes', conf => "infra.database = 'postgres'\n");
$node->start;
my $seed = q{(1, 'one', 1, 'kept'), (2, 'two', 2, 'kept'), (3, 'three', 3, 'kept'),
    (6, 'six', 6, 'kept'), (8, 'eight', 8, 'kept'), (9, 'nine', 9, 'kept'), (12, 'twelve', 12, 'kept')};
$node->safe_psql('postgres', qq{
CREATE EXTENSION infra;
CREATE TABLE one_by_one (id integer PRIMARY KEY, name text, qty integer, note text DEFAULT 'fresh');
CREATE TABLE all_at_once (LIKE one_by_one INCLUDING ALL);
INSERT INTO one_by_one VALUES $seed;
INSERT INTO all_at_once VALUES $seed;
CREATE TABLE by_key (k text PRIMARY KEY, v jsonb);
INSERT INTO by_key VALUES ('a', '1'), ('b', '2')});
my $connstr = $node->connstr('postgres');

# key|value lines; an empty value is a tombstone (kcat -Z).
my @messages = (
	'{"id":1}|{"id":1,"name":"a","qty":10}',
	'{"id":1}|{"id":1,"name":"b","qty":11}',      # 1: updated twice, the last wins, note kept
	'{"id":2}|',                                  # 2: deleted
	'{"id":3}|',
	'{"id":3}|{"id":3,"name":"back","qty":30}',   # 3: deleted then inserted: a fresh row
	'{"id":4}|{"id":4,"name":"brief","qty":40}',
	'{"id":4}|',                                  # 4: inserted then deleted: absent
	'{"id":5}|',
	'{"id":5}|{"id":5,"name":"first","qty":50}',
	'{"id":5}|',
	'{"id":5}|{"id":5,"name":"final","qty":51}',  # 5: ends with its last value
	'{"id":6}|{"id":6,"name":"u","qty":60}',
	'{"id":6}|',
	'{"id":6}|{"id":6,"name":"v","qty":61}',      # 6: fresh again
	'{"id":7}|',                                  # 7: nothing to delete
	'8|',                                         # 8: a scalar JSON key
	'{"schema":{"type":"struct"},"payload":{"id":9}}|',    # 9: Debezium's wrapped key
	'abc|',                                       # not JSON: a dead letter
	'{"id":11}|{"id":11,"name":"bad","qty":"x"}', # a dead letter ...
	'{"id":11}|{"id":11,"name":"good","qty":110}',    # ... its key's next message is applied
	'{"id":12}|{"id":12,"name":"twelve","qty":"y"}',  # a dead letter: 12 keeps its row
	'{"id":13}|{"id":13,"name":"last","qty":130}',
);
my $topic = "deletes_$run";
kafka_create_topic($topic, 1);
open my $fh, '>', "$dir/messages" or die;
print $fh map { "$_\n" } @messages;
close $fh;
system('kcat', '-P', '-b', $bootstrap, '-t', $topic, '-K', '|', '-Z', '-l', "$dir/messages") == 0 or die 'kcat';
is( join(',', map { $_->[0] } kafka_consume($topic, '%S\t%o\n')),
	join(',', map { /\|$/ ? -1 : length((split /\|/, $_, 2)[1]) } @messages),
	'the tombstones are null values on the broker');

sub ini
{
	my ($name, $batch, $route) = @_;
	return bridge_ini("$dir/$name.ini", $connstr, "${name}_$run", "[route r_$name]\ntopics = $topic\n$route\n", $batch, 2000);
}

# Run the bridge until every message is written or a dead letter.
sub run_all
{
	my ($name, $batch, $route) = @_;
	my $file = ini($name, $batch, $route);
	my $h = bridge_spawn($file, "$file.log");
	my $n = scalar @messages;
	my $ok = wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT coalesce(max(next_offset), 0) FROM infra.bridge_offsets WHERE consumer_group = '${name}_$run'")
			  >= $n;
		},
		120);
	$h->signal('TERM');
	$h->finish;
	ok($ok, "$name: every message read") or diag(slurp_file("$file.log"));
	return slurp_file("$file.log");
}

my $route = "format = json_columns\ncolumns = id, name, qty\nmode = upsert\nkey_columns = id\ndeletes = on";
run_all('one_by_one', 1, "table = one_by_one\n$route");
my $log = run_all('all_at_once', 1000, "table = all_at_once\n$route");
like($log, qr/DELETE FROM public\.all_at_once t USING/, 'the route deletes by key');
like($log, qr/batch of 22 messages: 19 written, 3 dead letters/, 'all the messages came in one batch');

my $expected = q{1|b|11|kept
3|back|30|fresh
5|final|51|fresh
6|v|61|fresh
11|good|110|fresh
12|twelve|12|kept
13|last|130|fresh};
for my $table ('one_by_one', 'all_at_once')
{
	is($node->safe_psql('postgres', "SELECT id, name, qty, note FROM $table ORDER BY id"),
		$expected, "$table: the rows the operations give in offset order");
	is( $node->safe_psql('postgres',
			"SELECT string_agg(\"offset\" || ' ' || split_part(error, ':', 1), ', ' ORDER BY \"offset\")"
			  . " FROM infra.bridge_dead_letters WHERE route = 'r_$table'"),
		'17 22P02, 18 22P02, 20 22P02',
		"$table: the bad tombstone and the bad upserts are dead letters");
}

# Interleavings: the same key's messages in every order of two upserts and
# a tombstone, each sequence in one batch, against a row that exists.
my @ops = ([ 'u1', '{"id":100,"name":"u1","qty":1}' ], [ 'u2', '{"id":100,"name":"u2","qty":2}' ], [ 'd', '' ]);
my @perms = ([ 0, 1, 2 ], [ 0, 2, 1 ], [ 1, 0, 2 ], [ 1, 2, 0 ], [ 2, 0, 1 ], [ 2, 1, 0 ]);
my $i = 0;
for my $perm (@perms)
{
	$i++;
	my $t = "perm_$i";
	$node->safe_psql('postgres',
		"CREATE TABLE $t (LIKE one_by_one INCLUDING ALL); INSERT INTO $t VALUES (100, 'old', 0, 'kept')");
	my $pt = "${topic}_$t";
	kafka_create_topic($pt, 1);
	open my $pf, '>', "$dir/$t" or die;
	print $pf map { '{"id":100}|' . $ops[$_][1] . "\n" } @$perm;
	close $pf;
	system('kcat', '-P', '-b', $bootstrap, '-t', $pt, '-K', '|', '-Z', '-l', "$dir/$t") == 0 or die 'kcat';
	my $file = "$dir/$t.ini";
	open my $ini, '>', $file or die;
	print $ini <<"INI";
[bridge]
conninfo = $connstr
brokers = $bootstrap
group = ${t}_$run
batch_size = 1000
batch_delay_ms = 1000

[route $t]
topics = $pt
table = $t
$route
INI
	close $ini;
	my $h = bridge_spawn($file, "$file.log");
	my $ok = wait_until(sub {
		$node->safe_psql('postgres', "SELECT count(*) FROM infra.bridge_offsets WHERE consumer_group = '${t}_$run' AND next_offset = 3") == 1;
	}, 120);
	$h->signal('TERM');
	$h->finish;
	# What the three operations give when applied one by one.
	my $last = $ops[ $perm->[-1] ];
	my $deleted_before = grep { $_ eq '2' } @$perm[ 0 .. 1 ];
	my $want = $last->[0] eq 'd' ? '' : join('|', 100, $last->[0], $last->[0] eq 'u1' ? 1 : 2, $deleted_before ? 'fresh' : 'kept');
	ok($ok, join(' ', map { $ops[$_][0] } @$perm) . ': read');
	is($node->safe_psql('postgres', "SELECT id, name, qty, note FROM $t"), $want,
		join(' then ', map { $ops[$_][0] } @$perm) . ": gives '$want'");
}

# A route of a whole value keyed by the Kafka key: a tombstone deletes it.
my $kt = "${topic}_by_key";
kafka_create_topic($kt, 1);
open $fh, '>', "$dir/by_key" or die;
print $fh "a|\nc|{\"n\":3}\nb|{\"n\":20}\n";
close $fh;
system('kcat', '-P', '-b', $bootstrap, '-t', $kt, '-K', '|', '-Z', '-l', "$dir/by_key") == 0 or die 'kcat';
{
	my $file = "$dir/by_key.ini";
	open my $ini, '>', $file or die;
	print $ini <<"INI";
[bridge]
conninfo = $connstr
brokers = $bootstrap
group = by_key_$run
batch_delay_ms = 500

[route by_key]
topics = $kt
table = by_key
format = json
column = v
key_column = k
mode = upsert
key_columns = k
deletes = on
INI
	close $ini;
	my $h = bridge_spawn($file, "$file.log");
	my $ok = wait_until(sub { $node->safe_psql('postgres', 'SELECT string_agg(k, \',\' ORDER BY k) FROM by_key') eq 'b,c' }, 120);
	$h->signal('TERM');
	$h->finish;
	ok($ok, 'json route keyed by the Kafka key: the tombstone deleted a') or diag(slurp_file("$file.log"));
	is($node->safe_psql('postgres', q{SELECT v FROM by_key WHERE k = 'b'}), '{"n": 20}', 'and b was updated');
}

# Refused configurations.
{
	my $file = ini('refused', 10, "table = one_by_one\nformat = json_columns\ndeletes = on");
	my ($out, $err);
	IPC::Run::run([ 'infra-bridge', '--check-config', '--config', $file ], '>', \$out, '2>', \$err);
	isnt($?, 0, 'deletes without upsert: refused');
	like($err, qr/deletes = on without mode = upsert/, 'it says why');

	$file = ini('refused2', 10, "table = one_by_one\nformat = json_columns\ndeletes = maybe");
	IPC::Run::run([ 'infra-bridge', '--check-config', '--config', $file ], '>', \$out, '2>', \$err);
	like($err, qr/deletes \\"maybe\\" in section \[route r_refused2\] is not on or off/, 'deletes is on or off');

	$file = ini('refused3', 10, "table = by_key\nformat = json\ncolumn = v\nmode = upsert\nkey_columns = v\ndeletes = on");
	IPC::Run::run([ 'infra-bridge', '--config', $file ], '>', \$out, '2>', \$err, IPC::Run::timeout(60));
	is($? >> 8, 1, 'a key column filled by the value, with deletes: exit 1');
	like($err, qr/with deletes = on, key column v cannot be the message value's/, 'it says why');

	$file = ini('refused4', 10, "table = one_by_one\nformat = json_columns\ncolumns = name, qty\nmode = upsert\nkey_columns = id");
	IPC::Run::run([ 'infra-bridge', '--config', $file ], '>', \$out, '2>', \$err, IPC::Run::timeout(60));
	is($? >> 8, 1, 'an upsert key the route does not write: exit 1');
	like($err, qr/key column id of public\.one_by_one is not one the route writes/, 'it says why');
}

done_testing();
