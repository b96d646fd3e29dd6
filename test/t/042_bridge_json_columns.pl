# infra-bridge json_columns: the bridge picks the JSON keys out itself and
# COPYs typed columns straight into the table (PostgreSQL's own JSON parser,
# in the bridge).  That must give exactly what jsonb_populate_record gives,
# the staging path: tricky messages (escapes, duplicate keys, numbers
# jsonb rewrites, nested values, NULLs, COPY's own escapes, bad UTF-8,
# \u0000, deep nesting, values the column types refuse) go through the
# bridge one per batch, and the table and the dead letters are compared
# with jsonb_populate_record run in SQL on the same bytes.  The messages
# the bridge must leave to the server are the ones it does.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $run = $$;
my $node = infra_node('bridge_json_columns', conf => "infra.database = 'postgres'\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION infra;
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE typed (
    i integer,
    t text,
    n numeric,
    b boolean,
    j jsonb,
    big bigint,
    e mood,
    r int4range,
    x varchar(5),
    off bigint NOT NULL);
CREATE TABLE raw_messages (payload bytea, off bigint);
CREATE TABLE reference (LIKE typed);
CREATE TABLE reference_dead (off bigint, sqlstate text)});
my $connstr = $node->connstr('postgres');

# [message, the bridge must leave it to the server]
my $deep = '[' x 70 . ']' x 70;
my @messages = (
	[ '{"i":1,"t":"plain","n":1.50,"b":true,"j":{"a":[1,2,{"b":null}]},"big":9007199254740993,"e":"happy","r":"[1,5)","x":"abc"}', 0 ],
	[ '{"i":2,"t":"tab\\there\\nnew \\\\ back \\"q\\" \\u00e9 \\ud83d\\ude00 \\/ slash"}', 0 ],
	[ '{"i":3,"j":"a string in jsonb","n":-12.340,"t":12.50}', 0 ],
	[ '{"i":4,"t":null,"j":null}', 0 ],
	[ '{"i":5,"t":"first","t":"last"}', 0 ],
	[ '{"i":6,"unknown":{"deep":[1,2,3],"e":"sad"},"t":"unknown keys ignored"}', 0 ],
	[ '{"i":7,"j":[1,"two",{"3":4}],"b":false}', 0 ],
	[ '{"i":8,"t":true}', 0 ],
	[ '{"i":9,"x":"abcdef"}', 0 ],    # varchar(5) refuses: the COPY fails, a dead letter
	[ '{"i":10,"i":11}', 0 ],
	[ '{"i":"12"}', 0 ],
	[ '{"i":12.5}', 0 ],
	[ '{"i":13,"big":99999999999999999999}', 0 ],
	[ '{"i":14,"e":"nosuch"}', 0 ],
	[ '{"i":15,"t":"  spaces  ","n":"  7  "}', 0 ],
	[ '{"i":16,"t":"\\\\N"}', 0 ],    # the text \N, not a NULL
	[ '  {"i":17, "t" : "white space" }  ', 0 ],
	[ '{"i":18,"j":{"k":"\\u00e9\\n","k":"last"}}', 0 ],
	[ '{"i":19,"t":"a\\u0000b"}', 1 ],
	[ '{"i":20,"n":1e3}', 1 ],
	[ '{"i":21,"t":1E2}', 1 ],
	[ '{"i":22,"t":-0}', 1 ],
	[ '{"i":23,"t":{"nested":1}}', 1 ],
	[ '{"i":24,"t":[1,2]}', 1 ],
	[ '[1,2,3]', 1 ],
	[ '"just a string"', 1 ],
	[ '{"i":27', 1 ],
	[ qq({"i":28,"t":"\xff"}), 1 ],
	[ qq({"i":29,"j":$deep}), 1 ],
	[ '{"i":30,"j":1e40}', 1 ],
	[ '{"i":31,"unknown":1e1000000}', 1 ],
	[ qq({"i":32,"zzz":"\xc3\x28"}), 1 ],
	[ '{}', 0 ],
	[ '{"i":34,"t":"\\ud800"}', 1 ],
	[ '{"i":35,"n":-0.0}', 1 ],
	[ '{"i":36,"r":"[3,1)"}', 0 ],
	[ '{"i":37,"t":"\\u00e9\\t\\r"}', 0 ],
	[ '{"i":38,"j":"\\u0000"}', 1 ],
	[ '{"i":39,"j":-0}', 0 ],    # jsonb column: the JSON text, as jsonb reads it
	[ qq({"i":40,"t":"caf\xc3\xa9 \xe2\x82\xac"}), 0 ],
);
my $topic = "json_columns_$run";
kafka_create_topic($topic, 1);
open my $fh, '>:raw', "$dir/messages" or die;
print $fh map { "$_->[0]\n" } @messages;
close $fh;
system('kcat', '-P', '-b', $bootstrap, '-t', $topic, '-l', "$dir/messages") == 0 or die 'kcat';

sub ini
{
	my ($name, $route) = @_;
	return bridge_ini("$dir/$name.ini", $connstr, "${name}_$run", "[route r]\ntopics = $topic\noffset_column = off\n$route\n",
		1, 20);
}

sub run_until
{
	my ($file, $cond, $what) = @_;
	my $log = "$file.log";
	my $h = bridge_spawn($file, $log);
	my $ok = wait_until($cond, 120);
	$h->signal('TERM');
	$h->finish;
	ok($ok, $what) or diag(slurp_file($log));
	return slurp_file($log);
}

my $n = scalar @messages;
my $done = sub {
	my ($table) = @_;
	return sub {
		$node->safe_psql('postgres',
			"SELECT (SELECT count(*) FROM $table) + (SELECT count(*) FROM infra.bridge_dead_letters WHERE route = 'r')"
		) >= $n;
	};
};

# The bytes as Kafka has them, for the reference.
run_until(ini('raw', "table = raw_messages\nformat = bytea\ncolumn = payload"), $done->('raw_messages'),
	'the raw messages');
$node->safe_psql('postgres', q{
DO $$
DECLARE
    m record;
    state text;
BEGIN
    FOR m IN SELECT * FROM raw_messages ORDER BY off LOOP
        BEGIN
            INSERT INTO reference SELECT r.i, r.t, r.n, r.b, r.j, r.big, r.e, r.r, r.x, m.off
            FROM jsonb_populate_record(NULL::typed, convert_from(m.payload, 'UTF8')::jsonb) r;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE;
            INSERT INTO reference_dead VALUES (m.off, state);
        END;
    END LOOP;
END
$$});

my $log = run_until(ini('typed', "table = typed\nformat = json_columns"), $done->('typed'),
	'json_columns route, one message a batch');
like($log, qr/route \\"r\\": COPY \S+ \(off, i, t, n, b, j, big, e, r, x\) FROM STDIN/,
	'the route COPYs typed columns directly');

is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM ((TABLE typed EXCEPT ALL TABLE reference) UNION ALL (TABLE reference EXCEPT ALL TABLE typed)) d}),
	0,
	'every row is the one jsonb_populate_record gives')
  or diag($node->safe_psql('postgres',
	q{SELECT 'bridge', * FROM (TABLE typed EXCEPT ALL TABLE reference) a UNION ALL SELECT 'reference', * FROM (TABLE reference EXCEPT ALL TABLE typed) b}));
is( $node->safe_psql('postgres',
		q{SELECT string_agg("offset" || ' ' || split_part(error, ':', 1), ', ' ORDER BY "offset") FROM infra.bridge_dead_letters WHERE route = 'r'}),
	$node->safe_psql('postgres', q{SELECT string_agg(off || ' ' || sqlstate, ', ' ORDER BY off) FROM reference_dead}),
	'the same messages are dead letters, with the same SQLSTATE');
my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM typed');
cmp_ok($rows, '>=', 25, "$rows rows written");
is($node->safe_psql('postgres', q{SELECT t FROM typed WHERE i = 16}), '\\N', 'a text \\N stays text');
is($node->safe_psql('postgres', q{SELECT t FROM typed WHERE i = 5}), 'last', 'a duplicate key: the last wins');
is($node->safe_psql('postgres', q{SELECT t FROM typed WHERE i = 21}), '100', 'an exponent as jsonb prints it');

# Which messages the bridge left to the server: exactly those it cannot be
# sure to read as jsonb does (offsets are the messages' positions).
my %staged = map { $_ => 1 } ($log =~ /offset (\d+) goes through the staging table/g);
my @wrong = grep { ($messages[$_][1] ? 1 : 0) != ($staged{$_} ? 1 : 0) } 0 .. $#messages;
is(join(', ', map { "$_: $messages[$_][0]" } @wrong), '', 'the messages left to the server are the expected ones');

# A column jsonb_populate_record fills in its own way (an array, a json
# column, a domain) keeps the route on the staging path.
$node->safe_psql('postgres', q{
CREATE DOMAIN positive AS integer CHECK (VALUE > 0);
CREATE TABLE with_array (i positive, a integer[], js json, off bigint NOT NULL)});
$log = run_until(ini('array', "table = with_array\nformat = json_columns"),
	sub { $node->safe_psql('postgres', 'SELECT count(*) FROM with_array') >= 20 },
	'a route with array, json and domain columns');
like($log, qr/column i \(public.positive\) is filled by jsonb_populate_record on the server/, 'it says why');
unlike($log, qr/COPY \S+ \(off, i, a, js\)/, 'no direct COPY for it');

done_testing();
