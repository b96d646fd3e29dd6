# infra-bridge routes: json_columns with upsert and every metadata column,
# text and bytea, dedupe on infra-msg-id; and end to end, kafka_send in
# committed and rolled-back transactions -> a broker killed once -> the
# bridge with dedupe -> exactly the committed messages, once.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $run = $$;
my $node = infra_node('bridge_formats', conf => <<"CONF");
infra.database = 'postgres'
infra.kafka_brokers = '$bootstrap'
infra.kafka_linger_ms = 5
CONF
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
my $connstr = $node->connstr('postgres');

sub kcat_produce
{
	my ($topic, $lines, @opts) = @_;
	my ($out, $err);
	IPC::Run::run([ 'kcat', '-P', '-b', $bootstrap, '-t', $topic, @opts ], '<', \$lines, '>', \$out, '2>', \$err)
	  or die "kcat: $err";
}

sub ini
{
	my ($name, $routes, %opt) = @_;
	my $batch_size = $opt{batch_size} // 500;
	my $log_level = $opt{log_level} // 'info';
	my $bridge_extra = $opt{bridge_extra} // '';
	my $conninfo = $opt{conninfo} // $connstr;
	my $file = "$dir/$name.ini";
	open my $fh, '>', $file or die;
	print $fh <<"INI";
[bridge]
conninfo = $conninfo
brokers = $bootstrap
group = ${name}_$run
batch_size = $batch_size
batch_delay_ms = 50
log_level = $log_level
$bridge_extra

[kafka]
session.timeout.ms = 6000
$routes
INI
	close $fh;
	return $file;
}

sub run_until
{
	my ($file, $cond, $what) = @_;
	my $log = "$file.log";
	my $h = bridge_spawn($file, $log);
	my $ok = wait_until($cond, 120);
	sleep 1;    # anything more would arrive now
	$h->signal('TERM');
	$h->finish;
	ok($ok, $what) or diag(slurp_file($log));
	return $log;
}

# --- json_columns, upsert, metadata -------------------------------------------
my $t_orders = "orders_$run";
$node->safe_psql('postgres', q{
CREATE TABLE orders (
    id integer PRIMARY KEY,
    status text NOT NULL,
    amount numeric,
    kafka_key text,
    kafka_ts timestamptz,
    kafka_headers jsonb,
    kafka_topic text,
    created_at timestamptz NOT NULL DEFAULT now())});
kcat_produce($t_orders, qq(o1:{"id": 1, "status": "new", "amount": 10.5}\no2:{"id": 2, "status": "new", "amount": 3}\n),
	'-K', ':', '-H', 'source=shop');
kcat_produce($t_orders, qq(o1:{"id": 1, "status": "paid", "amount": 10.5, "unknown_key": true}\n), '-K', ':');
my $file = ini('orders', <<"INI");
[route orders]
topics = $t_orders
table = orders
format = json_columns
mode = upsert
key_columns = id
key_column = kafka_key
timestamp_column = kafka_ts
headers_column = kafka_headers
topic_column = kafka_topic
INI
run_until($file, sub { $node->safe_psql('postgres', q{SELECT status FROM orders WHERE id = 1}) eq 'paid' },
	'json_columns with upsert: the later message updates the row');
is($node->safe_psql('postgres', q{SELECT count(*) FROM orders}), 2, 'two orders, one row each');
is($node->safe_psql('postgres', q{SELECT amount FROM orders WHERE id = 2}), '3', 'JSON keys onto typed columns');
is($node->safe_psql('postgres', q{SELECT kafka_key FROM orders WHERE id = 2}), 'o2', 'key column');
is($node->safe_psql('postgres', q{SELECT kafka_headers->>'source' FROM orders WHERE id = 2}), 'shop', 'headers column');
is($node->safe_psql('postgres', q{SELECT kafka_topic FROM orders WHERE id = 2}), $t_orders, 'topic column');
is($node->safe_psql('postgres', q{SELECT kafka_ts > now() - interval '10 minutes' FROM orders WHERE id = 2}), 't',
	'timestamp column from the message');
is($node->safe_psql('postgres', q{SELECT created_at IS NOT NULL FROM orders WHERE id = 1}), 't',
	'a column the JSON lacks keeps its default');

# --- text and bytea ------------------------------------------------------------------
my ($t_text, $t_bytes) = ("notes_$run", "blobs_$run");
$node->safe_psql('postgres', q{
CREATE TABLE notes (body text, off bigint);
CREATE TABLE blobs (data bytea, k bytea)});
kcat_produce($t_text, "first line\nsecond\twith a tab\n");
kcat_produce($t_bytes, "k1:abc\n", '-K', ':');
$file = ini('plain', <<"INI");
[route notes]
topics = $t_text
table = notes
format = text
column = body
offset_column = off

[route blobs]
topics = ^blobs_$run\$
table = blobs
format = bytea
column = data
key_column = k
INI
run_until($file, sub { $node->safe_psql('postgres', q{SELECT (SELECT count(*) FROM notes) + (SELECT count(*) FROM blobs)}) >= 3 },
	'text and bytea routes (one by name, one by pattern)');
is($node->safe_psql('postgres', q{SELECT string_agg(body, '|' ORDER BY off) FROM notes}), "first line|second\twith a tab",
	'text as sent, tabs included');
is($node->safe_psql('postgres', q{SELECT data, k FROM blobs}), '\x616263|\x6b31', 'bytea value and key');

# --- direct COPY with every metadata column -------------------------------------------
# Binary COPY when every column type has a binary form the bridge writes
# (jsonb, text, integer, bigint, timestamptz), text COPY otherwise: both must
# give the values Kafka has; and a bad message in a batch sent in several
# pieces must still go to the dead letters alone.
my ($t_bin, $t_txt) = ("meta_bin_$run", "meta_txt_$run");
$node->safe_psql('postgres', q{
CREATE TABLE meta_bin (payload jsonb, topic text, part integer, off bigint, k text, ts timestamptz, hdrs jsonb);
CREATE TABLE meta_txt (payload json, topic varchar(200), part smallint, off numeric, k varchar(10), ts timestamp, hdrs json)});
my $meta_route = sub {
	my ($name, $topic) = @_;
	return <<"INI";
[route $name]
topics = $topic
table = $name
format = json
column = payload
topic_column = topic
partition_column = part
offset_column = off
key_column = k
timestamp_column = ts
headers_column = hdrs
batch_size = 50000
batch_delay_ms = 2000
INI
};
$file = ini('meta', $meta_route->('meta_bin', $t_bin) . $meta_route->('meta_txt', $t_txt),
	batch_size => 50000, log_level => 'debug');
my $both_count = sub {
	$node->safe_psql('postgres', q{SELECT (SELECT count(*) FROM meta_bin) + (SELECT count(*) FROM meta_txt)});
};

# Good messages only: no fallback to the staging table.
for my $t ($t_bin, $t_txt)
{
	kcat_produce($t, qq(k1:{"a":1}\nk2:{"s":"tab\\tand \\"quote\\" and \\\\ backslash"}\n),
		'-K', ':', '-H', 'h1=v1', '-H', 'h2=ü');
	kcat_produce($t, qq("no key"\n));
}
my $meta_log = run_until($file, sub { $both_count->() >= 6 }, 'direct COPY routes, binary and text');
like(slurp_file($meta_log), qr/route \\"meta_bin\\": COPY public.meta_bin \([^)]*\) FROM STDIN \(FORMAT binary\)"/,
	'meta_bin is written with binary COPY');
like(slurp_file($meta_log), qr/route \\"meta_txt\\": COPY public.meta_txt \([^)]*\) FROM STDIN"/,
	'meta_txt with text COPY (smallint, numeric, varchar, timestamp, json have no binary form the bridge writes)');
unlike(slurp_file($meta_log), qr/COPY met a bad message/, 'no message went through the staging table');
for my $t ([ 'meta_bin', $t_bin ], [ 'meta_txt', $t_txt ])
{
	my ($table, $topic) = @$t;
	my ($out, $err);
	IPC::Run::run([ 'kcat', '-C', '-b', $bootstrap, '-t', $topic, '-e', '-q', '-f', '%o %T\n' ], '>', \$out, '2>', \$err)
	  or die "kcat: $err";
	is($node->safe_psql('postgres', qq{SELECT string_agg(off || ' ' || (extract(epoch FROM ts) * 1000)::bigint, E'\n' ORDER BY off) FROM $table}),
		$out =~ s/\n$//r, "$table: offsets and message timestamps as Kafka has them, to the millisecond");
	is($node->safe_psql('postgres', qq{SELECT string_agg(concat_ws('|', payload::text, topic = '$topic', part, k, hdrs->>'h1', hdrs->>'h2', hdrs IS NULL), E'\n' ORDER BY off) FROM $table}),
		($table eq 'meta_bin'
		? qq({"a": 1}|t|0|k1|v1|ü|f\n{"s": "tab\\tand \\"quote\\" and \\\\ backslash"}|t|0|k2|v1|ü|f\n"no key"|t|0|t)
		: qq({"a":1}|t|0|k1|v1|ü|f\n{"s":"tab\\tand \\"quote\\" and \\\\ backslash"}|t|0|k2|v1|ü|f\n"no key"|t|0|t)),
		"$table: payload, topic, partition, key and headers (NULL without any)");
}

# 20,000 messages of about 60 bytes (more than one piece of COPY data), a
# bad one in the middle.
my $bulk = '';
for my $i (1 .. 20000)
{
	$bulk .= $i == 10000 ? "bulk:not json\n" : qq(bulk:{"i":$i,"pad":"@{['x' x 40]}"}\n);
}
kcat_produce($_, $bulk, '-K', ':') for ($t_bin, $t_txt);
run_until($file, sub { $both_count->() >= 2 * (3 + 19999) }, 'a batch with a bad message');
for my $table ('meta_bin', 'meta_txt')
{
	is($node->safe_psql('postgres', qq{SELECT count(*), count(DISTINCT payload::text), min((payload->>'i')::int), max((payload->>'i')::int) FROM $table WHERE k = 'bulk'}),
		'19999|19999|1|20000', "$table: the bulk messages, all but the bad one");
	is($node->safe_psql('postgres', qq{SELECT "offset", convert_from(payload, 'UTF8'), error LIKE '22P02:%' FROM infra.bridge_dead_letters WHERE route = '$table'}),
		'10002|not json|t', "$table: the bad message in the dead letters");
}

# --- batch_bytes bounds a batch of large messages ------------------------------------------
my $t_big = "big_$run";
$node->safe_psql('postgres', q{CREATE TABLE big (payload jsonb)});
kcat_produce($t_big, join('', map { qq({"n": $_, "pad": "@{['y' x 1000]}"}\n) } 1 .. 500));
$file = ini('big', <<"INI", batch_size => 50000, log_level => 'debug', bridge_extra => 'batch_bytes = 65536');
[route big]
topics = $t_big
table = big
format = json
INI
my $big_log = run_until($file, sub { $node->safe_psql('postgres', q{SELECT count(*) FROM big}) >= 500 },
	'large messages with batch_bytes = 65536');
my @sizes = slurp_file($big_log) =~ /"batch of (\d+) messages/g;
my $largest = (sort { $b <=> $a } @sizes)[0] // 0;
ok($largest >= 60 && $largest <= 65, "batches cut at 64 kB of values: 1 kB messages, the largest batch $largest")
  or diag("batch sizes: @sizes");
is($node->safe_psql('postgres', q{SELECT count(DISTINCT payload->>'n') FROM big}), 500, 'all 500 written once');

# --- a stored offset the log does not have ----------------------------------------------
# (the topic was deleted and created again, or retention went past it): the
# partition resumes at the oldest message kept, not at the end.
my $t_gone = "gone_$run";
$node->safe_psql('postgres', q{CREATE TABLE gone (payload jsonb)});
kcat_produce($t_gone, qq({"g": 1}\n{"g": 2}\n{"g": 3}\n));
$node->safe_psql('postgres',
	qq{INSERT INTO infra.bridge_offsets (consumer_group, topic, partition, next_offset) VALUES ('gone_$run', '$t_gone', 0, 1000)});
$file = ini('gone', <<"INI");
[route gone]
topics = $t_gone
table = gone
format = json
INI
run_until($file, sub { $node->safe_psql('postgres', q{SELECT count(*) FROM gone}) >= 3 },
	'a stored offset past the end of the log: read again from the oldest message');
is($node->safe_psql('postgres', qq{SELECT next_offset FROM infra.bridge_offsets WHERE consumer_group = 'gone_$run'}), 3,
	'and the stored offset follows');

# --- a database that is not UTF-8 ----------------------------------------------------------
# Messages are UTF-8 whatever the database's encoding: converted to it, and
# a character it cannot hold is a bad message.
my $t_latin = "latin_$run";
$node->safe_psql('postgres', q{CREATE DATABASE latin ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
$node->safe_psql('latin', q{CREATE EXTENSION infra; CREATE TABLE notes (body text, doc jsonb)});
kcat_produce($t_latin, qq({"w": "f\x{c3}\x{bc}r"}\n{"w": "\x{e6}\x{97}\x{a5}"}\n));
$file = ini('latin', <<"INI", conninfo => $node->connstr('latin'));
[route notes]
topics = $t_latin
table = notes
format = json
column = doc
INI
run_until($file,
	sub { $node->safe_psql('latin', q{SELECT (SELECT count(*) FROM notes) + (SELECT count(*) FROM infra.bridge_dead_letters)}) >= 2 },
	'a LATIN1 database');
is($node->safe_psql('latin', q{SELECT convert_to(doc->>'w', 'UTF8') FROM notes}), '\x66c3bc72',
	'UTF-8 text converted to the database encoding (ü is one LATIN1 character, back to UTF-8 here)');
like($node->safe_psql('latin', q{SELECT error FROM infra.bridge_dead_letters}), qr/^22P05:/,
	'a character LATIN1 does not have: a dead letter');

# --- dedupe on infra-msg-id -------------------------------------------------------------
my $t_dd = "dedupe_$run";
$node->safe_psql('postgres', q{CREATE TABLE dd (payload jsonb)});
for my $m (qw(a b a c b))
{
	kcat_produce($t_dd, qq({"m": "$m"}\n), '-H', "infra-msg-id=id-$m");
}
kcat_produce($t_dd, qq({"m": "no id"}\n{"m": "no id"}\n));
$file = ini('dedupe', <<"INI");
[route dd]
topics = $t_dd
table = dd
format = json
dedupe = on
INI
run_until($file, sub { $node->safe_psql('postgres', q{SELECT count(*) FROM dd}) >= 5 }, 'dedupe route consumed');
is($node->safe_psql('postgres', q{SELECT string_agg(payload->>'m', ',' ORDER BY payload->>'m') FROM dd}),
	'a,b,c,no id,no id', 'a message id seen before is skipped; messages without one are all written');
is($node->safe_psql('postgres', q{SELECT count(*) FROM infra.bridge_message_ids WHERE route = 'dd'}), 3,
	'the ids are remembered');

# --- end to end: kafka_send -> Kafka (killed once) -> bridge with dedupe --------------------------
my $t_e2e = "e2e_$run";
$node->safe_psql('postgres', q{CREATE TABLE received (payload jsonb)});
for my $i (1 .. 20)
{
	my $end = $i % 4 == 0 ? 'ROLLBACK' : 'COMMIT';
	$node->safe_psql('postgres', qq{BEGIN;
SELECT infra.kafka_send('$t_e2e', jsonb_build_object('batch', $i, 'n', g)) FROM generate_series(1, 50) g;
$end;});
	if ($i == 10)
	{
		kafka_ctl('kill') or die;
		kafka_ctl('start') or die;
	}
}
ok( wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM infra.kafka_outbox') == 0 }, 120),
	'every committed message left the outbox');
$file = ini('e2e', <<"INI");
[route received]
topics = $t_e2e
table = received
format = json
dedupe = on
INI
run_until($file, sub { $node->safe_psql('postgres', q{SELECT count(*) FROM received}) >= 750 }, 'the bridge consumed the topic');
is($node->safe_psql('postgres', q{SELECT count(*) FROM received}), 750, 'exactly the 15 committed transactions x 50');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT payload) FROM received}), 750, 'each once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM received WHERE (payload->>'batch')::int % 4 = 0}), 0,
	'nothing of the rolled-back ones');

# --- the broker goes away under a running bridge ----------------------------------------
my $t_down = "down_$run";
$node->safe_psql('postgres', q{CREATE TABLE down (payload jsonb)});
kcat_produce($t_down, qq({"phase": 1}\n));
$file = ini('down', <<"INI");
[route down]
topics = $t_down
table = down
format = json
INI
my $log = "$file.log";
my $h = bridge_spawn($file, $log);
ok(wait_until(sub { $node->safe_psql('postgres', q{SELECT count(*) FROM down}) == 1 }, 60), 'before: consuming');
kafka_ctl('stop') or die;
ok(wait_until(sub { slurp_file($log) =~ /"level":"warning","msg":"Kafka: .*retrying/ }, 60),
	'broker down: the bridge reports it and keeps retrying');
kafka_ctl('start') or die;
kcat_produce($t_down, qq({"phase": 2}\n));
ok(wait_until(sub { $node->safe_psql('postgres', q{SELECT count(*) FROM down}) == 2 }, 90),
	'broker back: consuming again');
$h->signal('TERM');
$h->finish;
is($h->full_result(0), 0, 'the bridge never stopped');

$node->stop;
done_testing();
