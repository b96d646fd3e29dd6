# infra-bridge SQL handlers: a route names a function or procedure taking
# infra.bridge_message[]; it runs in the batch's transaction, so its
# effects and the offsets commit together.  A message it refuses (RAISE,
# a data error) is a dead letter and the rest of the batch is handed over
# again without it: every other message's effect happens exactly once,
# also through SIGKILLs of the bridge.  The bridge runs as a role with only
# the documented grants, its own objects first on its search_path: the
# handler is found under that path, then runs with the pinned one.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $run = $$;
my $node = infra_node('bridge_handler', conf => "infra.database = 'postgres'\n");
$node->start;
$node->safe_psql('postgres', q{
CREATE EXTENSION infra;
CREATE SCHEMA app;
CREATE TABLE app.handled (topic text, part integer, off bigint, k text, body jsonb, shout text,
                          ts timestamptz, source text, PRIMARY KEY (part, off));
CREATE TABLE app.totals (name text PRIMARY KEY, n bigint NOT NULL);
INSERT INTO app.totals VALUES ('messages', 0), ('procedure', 0);
CREATE TABLE app.hijacked (what text);

-- Qualified names throughout: the bridge's sessions run with
-- search_path = pg_catalog, pg_temp.
CREATE FUNCTION app.on_events(messages infra.bridge_message[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    m infra.bridge_message;
    body jsonb;
BEGIN
    FOREACH m IN ARRAY messages LOOP
        body := convert_from(m.value, 'UTF8')::jsonb;      -- not JSON: 22P02, a dead letter
        IF body ? 'poison' THEN
            RAISE EXCEPTION 'poison message at offset %', m."offset";
        END IF;
        INSERT INTO app.handled VALUES (m.topic, m.partition, m."offset", convert_from(m.key, 'UTF8'), body,
                                        upper(body->>'word'), m."timestamp", m.headers->>'source');
    END LOOP;
    UPDATE app.totals SET n = n + cardinality(messages) WHERE name = 'messages';
END
$$;

CREATE PROCEDURE app.on_audit(messages infra.bridge_message[])
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.handled
    SELECT m.topic, m.partition, m."offset" + 1000000, convert_from(m.key, 'UTF8'),
           convert_from(m.value, 'UTF8')::jsonb, 'proc', m."timestamp", NULL
    FROM unnest(messages) m;
    UPDATE app.totals SET n = n + cardinality(messages) WHERE name = 'procedure';
END
$$;

-- The bridge's role: the documented grants and nothing more.
CREATE ROLE bridge_app LOGIN;
GRANT USAGE ON SCHEMA infra TO bridge_app;
GRANT SELECT, INSERT, UPDATE ON infra.bridge_offsets TO bridge_app;
GRANT INSERT ON infra.bridge_dead_letters TO bridge_app;
GRANT USAGE ON SEQUENCE infra.bridge_dead_letters_id_seq TO bridge_app;
GRANT USAGE ON SCHEMA app TO bridge_app;
GRANT EXECUTE ON FUNCTION app.on_events(infra.bridge_message[]) TO bridge_app;
GRANT EXECUTE ON PROCEDURE app.on_audit(infra.bridge_message[]) TO bridge_app;
GRANT INSERT ON app.handled TO bridge_app;
GRANT SELECT, UPDATE ON app.totals TO bridge_app;

-- Its own objects first on its path: an upper() and an unnest() that
-- would give themselves away, and a handler of the same name.
CREATE SCHEMA bridge_app AUTHORIZATION bridge_app;
CREATE FUNCTION bridge_app.upper(text) RETURNS text LANGUAGE sql
    AS $$ INSERT INTO app.hijacked VALUES ('upper') RETURNING 'HIJACKED' $$;
ALTER FUNCTION bridge_app.upper(text) OWNER TO bridge_app;
ALTER ROLE bridge_app SET search_path = bridge_app, app, public});
my $connstr = $node->connstr('postgres') . ' user=bridge_app';
$node->safe_psql('postgres', q{GRANT INSERT ON app.hijacked TO bridge_app});

my $events = "handler_events_$run";
my $audit = "handler_audit_$run";
kafka_create_topic($events, 2);
kafka_create_topic($audit, 1);

sub produce
{
	my ($topic, @lines) = @_;
	my $file = "$dir/produce_" . rand();
	open my $fh, '>', $file or die;
	print $fh map { "$_\n" } @lines;
	close $fh;
	my ($out, $err);
	IPC::Run::run([ 'kcat', '-P', '-b', $bootstrap, '-t', $topic, '-K', '|', '-H', 'source=test', '-l', $file ],
		'>', \$out, '2>', \$err)
	  or die "kcat: $err";
}

sub ini
{
	my ($name, $routes, %opt) = @_;
	my $file = "$dir/$name.ini";
	open my $fh, '>', $file or die;
	print $fh <<"INI";
[bridge]
conninfo = $connstr
brokers = $bootstrap
group = ${name}_$run
batch_size = @{[ $opt{batch} // 5000 ]}
batch_delay_ms = 50
log_level = debug

[kafka]
session.timeout.ms = 6000
heartbeat.interval.ms = 500

$routes
INI
	close $fh;
	return $file;
}

my $routes = <<"R";
[route events]
topics = $events
handler = on_events

[route audit]
topics = $audit
handler = app.on_audit
R

# 1. Good and bad messages, one batch.
produce($events,
	'k1|{"word":"one"}',
	'k2|{"word":"two"}',
	'k3|{"poison":true}',
	'k4|not json',
	'k5|{"word":"five"}');
produce($audit, 'a1|{"n":1}', 'a2|{"n":2}');
my $file = ini('handler', $routes);
my $h = bridge_spawn($file, "$file.log");
ok( wait_until(sub {
		$node->safe_psql('postgres', 'SELECT count(*) FROM app.handled')
		  + $node->safe_psql('postgres', 'SELECT count(*) FROM infra.bridge_dead_letters') >= 7 }, 120),
	'the handlers ran') or diag(slurp_file("$file.log"));
is($node->safe_psql('postgres', q{SELECT string_agg(k || ':' || coalesce(shout, '-') || ':' || coalesce(source, '-'), ',' ORDER BY k) FROM app.handled}),
	'a1:proc:-,a2:proc:-,k1:ONE:test,k2:TWO:test,k5:FIVE:test',
	'each good message handled once, with its key, value and headers; pg_catalog.upper, not the role\'s');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(route || ' ' || convert_from(key, 'UTF8') || ' ' || split_part(error, ':', 1), ', ' ORDER BY key) FROM infra.bridge_dead_letters}),
	'events k3 P0001, events k4 22P02',
	'the message the handler refused (RAISE) and the one it could not read are dead letters');
like($node->safe_psql('postgres', q{SELECT error FROM infra.bridge_dead_letters WHERE convert_from(key, 'UTF8') = 'k3'}),
	qr/poison message at offset \d+/, 'with the handler\'s message');
is($node->safe_psql('postgres', q{SELECT string_agg(name || '=' || n, ',' ORDER BY name) FROM app.totals}),
	'messages=3,procedure=2',
	'the handlers\' other effects counted each good message once (the failed calls rolled back)');
is($node->safe_psql('postgres', 'SELECT count(*) FROM app.hijacked'), 0, 'none of the role\'s own functions ran');
my $log = slurp_file("$file.log");
like($log, qr/SELECT app\.on_events\(infra\.bridge_batch\(/, 'the function is called by its qualified name');
like($log, qr/CALL app\.on_audit\(infra\.bridge_batch\(/, 'the procedure is CALLed');

# 2. Through SIGKILLs: 20,000 messages, the bridge killed twice mid-stream.
$node->safe_psql('postgres', q{TRUNCATE app.handled; UPDATE app.totals SET n = 0});
$h->signal('TERM');
$h->finish;
my $n = 20000;
produce($events, map { "m$_|{\"word\":\"w$_\"}" } 1 .. $n);
for my $kill (1 .. 2)
{
	$h = bridge_spawn(ini('handler', $routes, batch => 500), "$file.log");
	my $target = $kill * 6000;
	wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM app.handled') >= $target }, 120);
	$h->signal('KILL');
	$h->finish;
}
$h = bridge_spawn(ini('handler', $routes, batch => 500), "$file.log");
ok(wait_until(sub { $node->safe_psql('postgres', 'SELECT count(*) FROM app.handled') >= $n }, 180),
	'after two SIGKILLs every message was handled') or diag(slurp_file("$file.log"));
sleep 1;
is( $node->safe_psql('postgres',
		q{SELECT count(*), count(DISTINCT k) FROM app.handled WHERE k LIKE 'm%'}),
	"$n|$n", 'each exactly once');
is($node->safe_psql('postgres', q{SELECT n FROM app.totals WHERE name = 'messages'}), $n,
	'and the handler\'s counter moved by exactly the messages handled');
$h->signal('TERM');
$h->finish;

# 3. With dedupe: a message whose infra-msg-id was handled before (in
# the batch or in an earlier one) is not handed over again, also after a
# replay from offset 0.
$node->safe_psql('postgres', q{
TRUNCATE app.handled;
UPDATE app.totals SET n = 0;
GRANT SELECT, INSERT ON infra.bridge_message_ids TO bridge_app});
my $dd = "handler_dedupe_$run";
kafka_create_topic($dd, 1);
for my $m ([ 'd1', 'x1', 'one' ], [ 'd2', 'x1', 'again' ], [ 'd3', 'x2', 'three' ])
{
	my ($out, $err);
	IPC::Run::run([ 'kcat', '-P', '-b', $bootstrap, '-t', $dd, '-K', '|', '-H', "infra-msg-id=$m->[1]" ],
		'<', \"$m->[0]|{\"word\":\"$m->[2]\"}\n", '>', \$out, '2>', \$err) or die "kcat: $err";
}
my $dedupe_routes = "[route dd]\ntopics = $dd\nhandler = app.on_events\ndedupe = on\n";
$h = bridge_spawn(ini('dedupe', $dedupe_routes), "$dir/dedupe.log");
ok(wait_until(sub { $node->safe_psql('postgres',
	"SELECT coalesce(sum(next_offset), 0) FROM infra.bridge_offsets WHERE consumer_group = 'dedupe_$run'") == 3 }, 120),
	'dedupe: the three messages read') or diag(slurp_file("$dir/dedupe.log"));
is($node->safe_psql('postgres', q{SELECT string_agg(k || ':' || shout, ',' ORDER BY k) FROM app.handled}),
	'd1:ONE,d3:THREE', 'the repeated infra-msg-id was not handed to the handler');
$node->safe_psql('postgres', "SELECT infra.bridge_seek('dedupe_$run', '$dd', NULL, 0)");
ok(wait_until(sub { slurp_file("$dir/dedupe.log") =~ /a stored offset was moved/ }, 60), 'a replay from 0');
ok(wait_until(sub { $node->safe_psql('postgres',
	"SELECT next_offset FROM infra.bridge_offsets WHERE consumer_group = 'dedupe_$run'") == 3 }, 60),
	'read through again');
is($node->safe_psql('postgres', q{SELECT n FROM app.totals WHERE name = 'messages'}), 2,
	'and nothing handed over twice: the ids are remembered');
$h->signal('TERM');
$h->finish;

# 4. Configurations that cannot work.
my ($out, $err);
$file = ini('bad1', "[route x]\ntopics = $events\nhandler = app.nosuch");
IPC::Run::run([ 'infra-bridge', '--config', $file ], '>', \$out, '2>', \$err, IPC::Run::timeout(60));
is($? >> 8, 1, 'a handler that does not exist: exit 1');
like($err, qr/no function or procedure app\.nosuch\(infra\.bridge_message\[\]\)/, 'it says what it looked for');
$file = ini('bad2', "[route x]\ntopics = $events\nhandler = app.on_events\ntable = app.handled");
IPC::Run::run([ 'infra-bridge', '--check-config', '--config', $file ], '>', \$out, '2>', \$err);
like($err, qr/needs topics, and a table or a handler \(not both\)/, 'a table and a handler: refused');
$file = ini('bad3', "[route x]\ntopics = $events\nhandler = app.on_events\nformat = json");
IPC::Run::run([ 'infra-bridge', '--check-config', '--config', $file ], '>', \$out, '2>', \$err);
like($err, qr/has a handler: format, column and columns do not apply/, 'a handler with a format: refused');
$file = ini('bad4', "[route x]\ntopics = $events\nhandler = app.on_events; DROP TABLE x");
IPC::Run::run([ 'infra-bridge', '--check-config', '--config', $file ], '>', \$out, '2>', \$err);
like($err, qr/invalid handler/, 'a handler name that is not a name: refused');

done_testing();
