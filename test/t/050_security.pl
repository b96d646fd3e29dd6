# infra as a privilege boundary, attacked by a role with only the documented
# grants.  It plants functions, aggregates, operators, a type and a cast in
# its own schema first on its search_path (and in public of a database where
# everyone may create there), then calls every SECURITY DEFINER function and
# makes the superuser workers, the trace exporter, a superuser's calls and
# infra-bridge run every statement class they have.  Every planted object
# records who ran it and tries to make the attacker superuser.  At the end
# the attacker is still what it was, owns nothing of infra's, nobody but the
# attacker ever ran its code, the workers kept delivering and the server
# never restarted.  Then every privileged action is refused to a role
# without its grant, with SQLSTATE 42501.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $run = $$;
my $dir = PostgreSQL::Test::Utils::tempdir;
my $node = infra_node('security', conf => "restart_after_crash = on\n");
$node->start;

# --- roles and databases ---------------------------------------------------------
# mallory: an application role with the documented application and
# monitoring grants; victimdb belongs to mallory; olddb lets everyone
# create in public, as databases made before PostgreSQL 15 do.
$node->safe_psql('postgres', q{
CREATE ROLE mallory LOGIN;
CREATE ROLE intruder LOGIN;
CREATE ROLE bridge_writer LOGIN;
GRANT pg_monitor TO mallory;
CREATE DATABASE victimdb OWNER mallory;
CREATE DATABASE olddb;
});
$node->safe_psql('olddb', 'GRANT CREATE ON SCHEMA public TO PUBLIC');
$node->append_conf('postgresql.conf', <<"CONF");
infra.database = 'victimdb, postgres, olddb'
infra.kafka_brokers = '$bootstrap'
infra.otlp_endpoint = 'http://127.0.0.1:9/v1/traces'
infra.otlp_flush_interval = 100
CONF
$node->restart;
my $log_start = -s $node->logfile;

# The documented grants (docs/security.md) and a sink every planted
# object writes to: (session user, current user, what ran).
for my $db (qw(postgres victimdb olddb))
{
	$node->safe_psql($db, qq{
CREATE EXTENSION infra;
GRANT EXECUTE ON FUNCTION infra.kafka_send(text, text, text, jsonb, integer),
                          infra.kafka_send(text, bytea, text, jsonb, integer),
                          infra.kafka_send(text, jsonb, text, jsonb, integer),
                          infra.kafka_flush(interval) TO mallory, intruder;
GRANT EXECUTE ON FUNCTION infra.kafka_publish() TO mallory;
CREATE TABLE public.sink (session_role text, current_role_ text, what text);
GRANT INSERT, SELECT ON public.sink TO PUBLIC;
CREATE SCHEMA mallory AUTHORIZATION mallory;
});
}

# Objects that shadow what infra's statements use: aggregates (min, max,
# sum, count, array_agg), functions (clock_timestamp, nextval, unnest,
# pg_column_size, to_regclass, quote_ident, format_type, convert_from,
# now), operators (= - + < <= > on the types infra compares, one returning
# the wrong type, as the crash did) and a type "text" with a cast to it.
sub plant
{
	my ($db, $schema) = @_;
	my $trap = qq{
CREATE FUNCTION $schema.trap(what pg_catalog.text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$
BEGIN
    INSERT INTO public.sink VALUES (session_user, current_user, what);
    IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) current_user) THEN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
    END IF;
END \$\$;
};
	my $sql = $trap;
	my %ops = (
		'='  => [ [ 'text', 'text', 'bool' ], [ 'int8', 'int8', 'bool' ],
				  [ 'int4', 'int4', 'bool' ], [ 'name', 'text', 'bool' ] ],
		'-'  => [ [ 'int8', 'int8', 'text' ], [ 'int8', 'int4', 'int8' ],
				  [ 'timestamptz', 'timestamptz', 'interval' ] ],
		'+'  => [ [ 'int4', 'int4', 'int4' ], [ 'int8', 'int4', 'int8' ] ],
		'<'  => [ [ 'int8', 'int4', 'bool' ], [ 'int8', 'int8', 'bool' ] ],
		'<=' => [ [ 'int8', 'int8', 'bool' ] ],
		'>'  => [ [ 'int8', 'int4', 'bool' ], [ 'int2', 'int4', 'bool' ] ],
	);
	my $n = 0;
	for my $op (sort keys %ops)
	{
		for my $sig (@{ $ops{$op} })
		{
			my ($l, $r, $res) = @$sig;
			$n++;
			my $value = $res eq 'text' ? q{'hijacked'} : $res eq 'bool' ? 'true'
			  : $res eq 'interval' ? q{'1 s'::pg_catalog.interval} : '1';
			$sql .= qq{
CREATE FUNCTION $schema.op$n(a pg_catalog.$l, b pg_catalog.$r) RETURNS pg_catalog.$res
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$
BEGIN PERFORM $schema.trap('operator $op($l, $r)'); RETURN $value; END \$\$;
CREATE OPERATOR $schema.$op (LEFTARG = pg_catalog.$l, RIGHTARG = pg_catalog.$r, FUNCTION = $schema.op$n);
};
		}
	}
	$sql .= qq{
CREATE FUNCTION $schema.step8(s pg_catalog.int8, v pg_catalog.int8) RETURNS pg_catalog.int8
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('aggregate(bigint)'); RETURN v; END \$\$;
CREATE FUNCTION $schema.step4(s pg_catalog.int8, v pg_catalog.int4) RETURNS pg_catalog.int8
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('aggregate(integer)'); RETURN v; END \$\$;
CREATE FUNCTION $schema.stepc(s pg_catalog.int8) RETURNS pg_catalog.int8
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('count(*)'); RETURN 1; END \$\$;
CREATE FUNCTION $schema.stepa(s pg_catalog.int8[], v pg_catalog.int8) RETURNS pg_catalog.int8[]
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('array_agg(bigint)'); RETURN '{}'; END \$\$;
CREATE AGGREGATE $schema.min(pg_catalog.int8) (SFUNC = $schema.step8, STYPE = pg_catalog.int8);
CREATE AGGREGATE $schema.max(pg_catalog.int8) (SFUNC = $schema.step8, STYPE = pg_catalog.int8);
CREATE AGGREGATE $schema.sum(pg_catalog.int4) (SFUNC = $schema.step4, STYPE = pg_catalog.int8);
CREATE AGGREGATE $schema.count(*) (SFUNC = $schema.stepc, STYPE = pg_catalog.int8);
CREATE AGGREGATE $schema.array_agg(pg_catalog.int8) (SFUNC = $schema.stepa, STYPE = pg_catalog.int8[]);
CREATE FUNCTION $schema.clock_timestamp() RETURNS pg_catalog.timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('clock_timestamp'); RETURN pg_catalog.now(); END \$\$;
CREATE FUNCTION $schema.now() RETURNS pg_catalog.timestamptz
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('now'); RETURN pg_catalog.now(); END \$\$;
CREATE FUNCTION $schema.nextval(pg_catalog.regclass) RETURNS pg_catalog.int8
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('nextval'); RETURN 1; END \$\$;
CREATE FUNCTION $schema.unnest(pg_catalog.int8[]) RETURNS SETOF pg_catalog.int8
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('unnest'); RETURN; END \$\$;
CREATE FUNCTION $schema.pg_column_size(pg_catalog.bytea[]) RETURNS pg_catalog.int4
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('pg_column_size'); RETURN 0; END \$\$;
CREATE FUNCTION $schema.to_regclass(pg_catalog.text) RETURNS pg_catalog.regclass
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('to_regclass'); RETURN 'pg_class'::pg_catalog.regclass; END \$\$;
CREATE FUNCTION $schema.quote_ident(pg_catalog.name) RETURNS pg_catalog.text
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('quote_ident'); RETURN 'x'; END \$\$;
CREATE FUNCTION $schema.convert_from(pg_catalog.bytea, pg_catalog.name) RETURNS pg_catalog.text
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('convert_from'); RETURN '{}'; END \$\$;
CREATE FUNCTION $schema.array_length(pg_catalog.text[], pg_catalog.int4) RETURNS pg_catalog.int4
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('array_length'); RETURN 4; END \$\$;
CREATE FUNCTION $schema.format(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.int4) RETURNS pg_catalog.text
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('format'); RETURN 'dev.x.y.v1'; END \$\$;
CREATE TYPE $schema.text AS (v pg_catalog.text);
CREATE FUNCTION $schema.to_text(pg_catalog.int8) RETURNS $schema.text
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM $schema.trap('cast to text'); RETURN ROW('x'); END \$\$;
CREATE CAST (pg_catalog.int8 AS $schema.text) WITH FUNCTION $schema.to_text(pg_catalog.int8);
};
	$node->safe_psql($db, "SET ROLE mallory; $sql");
}

plant($_, 'mallory') for qw(postgres victimdb);
plant('olddb', 'public');

# victimdb's owner makes its own schema come first for every session there,
# the superuser's and the workers' included (they connect after a restart).
$node->safe_psql('victimdb', 'SET ROLE mallory; '
	  . 'ALTER DATABASE victimdb SET search_path = mallory, pg_catalog, public');
$node->restart;

# Every hijack path: the attacker's schema first, pg_catalog after it.
my $hostile = 'SET search_path = mallory, pg_catalog, public;';
# The test's own checks in victimdb, whose default path is the attacker's.
my $safe = 'SET search_path = pg_catalog, public;';

# Run SQL as a role with its own search_path; returns (exit code, stderr).
sub as_role
{
	my ($db, $role, $sql) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql($db, $sql, stdout => \$out, stderr => \$err,
		on_error_stop => 0, extra_params => [ '-U', $role, '-v', 'VERBOSITY=verbose' ]);
	return ($rc, $err, $out);
}

# --- the attacker calls every SECURITY DEFINER function and the rest ----------
$node->safe_psql('postgres',
	'ALTER SYSTEM SET infra.kafka_require_registered_topics = on; SELECT pg_reload_conf()');
$node->safe_psql('postgres', "SELECT infra.topic_register('sec', 'events')");
my $topic = 'dev.sec.events.v1';
my ($rc, $err) = as_role('postgres', 'mallory', qq{
$hostile
SELECT infra.kafka_send('$topic', 'text value', 'k1');
SELECT infra.kafka_send('$topic', '\\x00ff'::pg_catalog.bytea, 'k2');
SELECT infra.kafka_send('$topic', '{"a": 1}'::pg_catalog.jsonb, 'k3');
BEGIN;
SELECT infra.kafka_send('$topic', 'one of a transaction', 'k4');
SELECT infra.kafka_send('$topic', 'two of a transaction', 'k4');
COMMIT;
SELECT infra.kafka_flush('60 s');
SELECT * FROM infra.kafka_stats;
SELECT * FROM infra.kafka_outbox;
SELECT * FROM infra.worker_status;
SELECT * FROM infra.rate_limits;
SELECT * FROM infra.circuit_breaker_state;
SELECT * FROM infra.circuit_breaker_events;
SELECT infra.rate_limit('api');
SELECT infra.rate_limit('user:1', rate => 10);
SELECT * FROM infra.throttle('user:1', 10, '1 second');
SELECT infra.breaker_allow('network');
SELECT infra.breaker_success('network');
SELECT infra.breaker_call('network', 'SELECT 1');
SELECT infra.retry('SELECT 1', 'database');
SELECT infra.backoff_delay(2, '10 ms', '1 s', 'decorrelated');
SELECT infra.topic_name('sec', 'events');
SELECT infra.topic_validate('$topic');
SELECT * FROM infra.topic_parse('$topic');
SELECT infra.topic_exists('$topic');
SELECT * FROM infra.query_metrics;
SELECT * FROM infra.query_metrics_info;
SELECT infra.counter_inc('sec_calls');
SELECT * FROM infra.metrics;
SELECT infra.metrics_prometheus();
SELECT infra.span_end(infra.span_start('sec'));
SELECT infra.log('info', 'hello');
});
like($err, qr/^$|^(?!.*(terminat|FATAL|PANIC))/s, 'the attacker\'s calls end without a crash');

# kafka_publish: the attacker's table with the publish trigger, written by
# the superuser whose path (in olddb) has public, where the attacker planted
# to_jsonb for that table's rows.
$node->safe_psql('olddb', qq{
SET ROLE mallory;
CREATE TABLE public.orders (id integer PRIMARY KEY, note text);
CREATE FUNCTION public.to_jsonb(public.orders) RETURNS pg_catalog.jsonb
LANGUAGE plpgsql SET search_path = pg_catalog AS \$\$ BEGIN PERFORM public.trap('to_jsonb'); RETURN '{}'; END \$\$;
CREATE TRIGGER orders_publish AFTER INSERT OR UPDATE OR DELETE ON public.orders
    FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish('dev.old.orders.v1');
RESET ROLE;
SELECT infra.topic_register('old', 'orders');
INSERT INTO public.orders VALUES (1, 'a'), (2, 'b');
UPDATE public.orders SET note = 'c' WHERE id = 1;
});
is($node->safe_psql('olddb', "SELECT infra.kafka_flush('60 s')"), 't',
	'olddb: the publish trigger\'s messages are delivered by its worker');

# victimdb: every session there starts with the attacker's schema.
$node->safe_psql('victimdb', qq{
SELECT infra.topic_register('victim', 'events');
});
($rc, $err) = as_role('victimdb', 'mallory', qq{
SELECT infra.kafka_send('dev.victim.events.v1', 'hello ' || g, 'k' || g % 3) FROM pg_catalog.generate_series(1, 50) g;
SELECT infra.kafka_send('dev.victim.events.v1', pg_catalog.repeat('x', 2000000), 'too large');
SELECT infra.span_end(infra.span_start('victim'));
});
is($rc, 0, 'victimdb: the owner sends through kafka_send') or diag $err;
ok( wait_until(
		sub {
			$node->safe_psql('victimdb', "$safe SELECT count(*) FROM infra.kafka_dead_letters") eq '1';
		},
		60),
	'victimdb: the worker delivers, dead-letters the message too large');
is($node->safe_psql('victimdb', "SELECT infra.kafka_flush('60 s')"), 't',
	'victimdb: every other message is delivered by the worker');
ok( wait_until(
		sub {
			$node->safe_psql('victimdb',
				"$safe SELECT broker_state FROM infra.topics WHERE name = 'dev.victim.events.v1'") =~ /created|exists/;
		},
		60),
	'victimdb: the worker created the registered topic');
# The superuser requeues the dead letter, in the owner's path.
is($node->safe_psql('victimdb', 'SELECT infra.kafka_retry_dead_letters()'), '1',
	'victimdb: a superuser requeues dead letters under the hostile path');
ok( wait_until(
		sub {
			$node->safe_psql('victimdb', "$safe SELECT count(*) FROM infra.kafka_dead_letters") eq '1';
		},
		60),
	'victimdb: the requeued message is tried again and dead-lettered again');
# The exporter (first database: victimdb) has tried to send the spans and
# recorded the outcomes on the network breaker.
ok( wait_until(
		sub {
			$node->safe_psql('postgres', 'SELECT failed_exports > 0 FROM infra.trace_stats') eq 't';
		},
		60),
	'the trace exporter ran its breaker statements in victimdb');

# --- infra-bridge with a role whose search_path is the attacker's -------------
my $btopic = "sec_bridge_$run";
for my $t ($btopic, "${btopic}_typed")
{
	kafka_create_topic($t, 1);
}
$node->safe_psql('postgres', qq{
CREATE TABLE public.bridged (payload jsonb, part integer, off bigint);
CREATE TABLE public.bridged_up (id integer PRIMARY KEY, note text);
GRANT INSERT, UPDATE, SELECT ON public.bridged, public.bridged_up TO bridge_writer;
GRANT SELECT, INSERT, UPDATE ON infra.bridge_offsets TO bridge_writer;
GRANT INSERT ON infra.bridge_dead_letters TO bridge_writer;
GRANT USAGE ON SEQUENCE infra.bridge_dead_letters_id_seq TO bridge_writer;
GRANT SELECT, INSERT ON infra.bridge_message_ids TO bridge_writer;
GRANT USAGE ON SCHEMA mallory TO bridge_writer;
ALTER ROLE bridge_writer SET search_path = mallory, pg_catalog, public;
});
{
	my $file = "$dir/bridge.txt";
	open my $fh, '>', $file or die;
	print $fh "k$_:{\"id\": $_, \"note\": \"n$_\"}\n" for 1 .. 200;
	print $fh "bad:{broken\n";
	close $fh;
	for my $t ($btopic, "${btopic}_typed")
	{
		my ($out, $perr);
		IPC::Run::run([ 'kcat', '-P', '-b', $bootstrap, '-t', $t, '-K', ':', '-l', $file ],
			'>', \$out, '2>', \$perr)
		  or die "kcat: $perr";
	}
}
my $ini = "$dir/bridge.ini";
{
	my $connstr = $node->connstr('postgres') . ' user=bridge_writer';
	open my $fh, '>', $ini or die;
	print $fh <<"INI";
[bridge]
conninfo = $connstr
brokers = $bootstrap
group = sec_$run
batch_size = 50
batch_delay_ms = 20

[route plain]
topics = $btopic
table = bridged
format = json
column = payload
partition_column = part
offset_column = off
dedupe = on

[route typed]
topics = ${btopic}_typed
table = bridged_up
format = json_columns
mode = upsert
key_columns = id
INI
	close $fh;
}
my $blog = "$dir/bridge.log";
my $bridge = bridge_spawn($ini, $blog);
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				'SELECT (SELECT count(*) FROM public.bridged) = 200 AND (SELECT count(*) FROM public.bridged_up) = 200'
				  . ' AND (SELECT count(*) FROM infra.bridge_dead_letters) = 2') eq 't';
		},
		90),
	'the bridge writes both routes under the hostile search_path')
  or diag slurp_file($blog);
$bridge->signal('TERM');
$bridge->finish;

# --- what must hold after all of it --------------------------------------------
for my $db (qw(postgres victimdb olddb))
{
	is( $node->safe_psql($db,
			qq{$safe SELECT coalesce(string_agg(DISTINCT current_role_ || ': ' || what, '; '), '')
			    FROM public.sink WHERE current_role_ <> 'mallory'}),
		'',
		"$db: no planted object ever ran as anyone but the attacker");
	is( $node->safe_psql($db, qq{$safe
SELECT (SELECT count(*) FROM pg_class WHERE relnamespace = 'infra'::regnamespace
          AND relowner = 'mallory'::regrole)
     + (SELECT count(*) FROM pg_proc WHERE pronamespace = 'infra'::regnamespace
          AND proowner = 'mallory'::regrole)
     + (SELECT count(*) FROM pg_namespace WHERE nspname = 'infra'
          AND nspowner = 'mallory'::regrole)}),
		'0',
		"$db: the attacker owns nothing of infra's");
}
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'"),
	'f', 'the attacker is not superuser');
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'bridge_writer'"),
	'f', 'the bridge\'s role is not superuser');

# --- privileged actions, as a role with only the application grants ------------
my @refused = (
	[ 'rate_limit_reset',        'SELECT infra.rate_limit_reset(NULL)' ],
	[ 'breaker_reset',           "SELECT infra.breaker_reset('network')" ],
	[ 'breaker_force',           "SELECT infra.breaker_force('network', 'open')" ],
	[ 'metrics_reset',           'SELECT infra.metrics_reset()' ],
	[ 'query_metrics_reset',     'SELECT infra.query_metrics_reset()' ],
	[ 'topic_register',          "SELECT infra.topic_register('x', 'y')" ],
	[ 'topic_drop',              "SELECT infra.topic_drop('$topic')" ],
	[ 'kafka_retry_dead_letters', 'SELECT infra.kafka_retry_dead_letters()' ],
	[ 'kafka_wake_worker',       'SELECT infra.kafka_wake_worker()' ],
	[ 'reading kafka_outbox',    'SELECT * FROM infra.kafka_outbox' ],
	[ 'reading kafka_outbox_batches', 'SELECT * FROM infra.kafka_outbox_batches' ],
	[ 'reading kafka_dead_letters', 'SELECT * FROM infra.kafka_dead_letters' ],
	[ 'writing the outbox directly',
	  q{INSERT INTO infra.kafka_outbox_batches (first_id, messages, ids, topics, partitions, keys, vals, headers)
	    VALUES (1, 1, '{1}', '{t}', '{NULL}', '{NULL}', '{NULL}', '{NULL}')} ],
	[ 'deleting from the outbox', 'DELETE FROM infra.kafka_outbox_batches' ],
	[ 'taking outbox ids',       "SELECT nextval('infra.kafka_outbox_id_seq')" ],
	[ 'sending with a forged infra-msg-id',
	  qq{SELECT infra.kafka_send('$topic', 'x', NULL, '{"infra-msg-id": "1/1/1"}')} ],
	[ 'sending with a forged INFRA-MSG-ID',
	  qq{SELECT infra.kafka_send('$topic', 'x', NULL, '{"INFRA-Msg-Id": "1/1/1"}')} ],
	[ 'changing rate_limiters',  "UPDATE infra.rate_limiters SET rate = 1" ],
	[ 'changing circuit_breakers', "DELETE FROM infra.circuit_breakers WHERE name = 'kafka'" ],
	[ 'changing retry_policies', "UPDATE infra.retry_policies SET max_attempts = 1" ],
	[ 'changing topics',         "UPDATE infra.topics SET broker_state = 'pending'" ],
	[ 'reading bridge_offsets',  'SELECT * FROM infra.bridge_offsets' ],
	[ 'moving bridge_offsets',   'UPDATE infra.bridge_offsets SET next_offset = 0' ],
	[ 'reading bridge_dead_letters', 'SELECT * FROM infra.bridge_dead_letters' ],
	[ 'reading worker_status',   'SELECT * FROM infra.worker_status' ],
	[ 'reading rate_limits',     'SELECT * FROM infra.rate_limits' ],
	[ 'reading kafka_stats',     'SELECT * FROM infra.kafka_stats' ],
	[ 'reading circuit_breaker_state', 'SELECT * FROM infra.circuit_breaker_state' ],
	[ 'reading kafka_config',    'SHOW infra.kafka_config' ],
	[ 'setting kafka_config',    "ALTER SYSTEM SET infra.kafka_config = 'acks=1'" ],
	[ 'a publish trigger',       'CREATE TABLE public.t (i int); '
	  . "CREATE TRIGGER p AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish('t')" ],
);
$node->safe_psql('postgres', 'GRANT CREATE ON SCHEMA public TO intruder');
for my $case (@refused)
{
	my ($what, $sql) = @$case;
	my $wrapped = $sql =~ /^ALTER SYSTEM/ ? "$sql;" : "BEGIN; $sql; ROLLBACK;";
	my ($code, $stderr) = as_role('postgres', 'intruder', $wrapped);
	like($stderr, qr/ERROR:\s+42501:/, "refused with 42501: $what");
}

# Other users' query texts stay hidden, through the view and the function.
$node->safe_psql('postgres', 'SELECT current_user AS secret_text_of_the_superuser');
my (undef, undef, $texts) = as_role('postgres', 'intruder',
	q{SELECT count(*) FILTER (WHERE query LIKE '%secret_text%') FROM infra.query_metrics();
	  SELECT count(*) FILTER (WHERE query LIKE '%secret_text%') FROM infra.query_metrics;
	  SELECT count(*) FILTER (WHERE query = '<insufficient privilege>') > 0 FROM infra.query_metrics();});
is($texts, "0\n0\nt", 'another user\'s query text is hidden from infra.query_metrics() and the view');
is($node->safe_psql('postgres',
		q{SELECT count(*) > 0 FROM infra.query_metrics() WHERE query LIKE '%secret_text%'}),
	't', 'the superuser sees its own query text');

# The documented grants do what they say: the application role sends and
# flushes, a pg_monitor member reads every monitoring view.
($rc, $err) = as_role('postgres', 'intruder',
	"SELECT infra.kafka_send('$topic', 'from the app role'); SELECT infra.kafka_flush('60 s');");
is($rc, 0, 'the application grants are enough for kafka_send and kafka_flush') or diag $err;
$node->safe_psql('postgres', 'CREATE ROLE watcher LOGIN IN ROLE pg_monitor');
for my $view (qw(worker_status rate_limits kafka_stats kafka_outbox circuit_breaker_state
	circuit_breaker_events shmem_segments query_metrics trace_stats metrics))
{
	($rc, $err) = as_role('postgres', 'watcher', "SELECT * FROM infra.$view");
	is($rc, 0, "pg_monitor reads infra.$view") or diag $err;
}

# --- the server never went down -------------------------------------------------
my $log = slurp_log_since($node, $log_start);
unlike($log, qr/terminated by signal|server process .* was terminated|PANIC/,
	'no backend or worker crashed: the server never restarted');
is($node->safe_psql('postgres', "SELECT count(*) FROM infra.worker_status WHERE state = 'running'"),
	'3', 'the three workers are still running');

done_testing();
