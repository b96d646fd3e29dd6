# infra on a streaming standby and through a promotion (PostgreSQL's own
# streaming replication; 090_patroni.pl does it with a failover manager):
# - on a hot standby, the worker waits for promotion, the functions that
#   only touch shared memory work, and what writes tables fails with
#   SQLSTATE 25006 and a hint; /metrics and /healthz say the node's role;
# - infra.kafka_wait_for_standbys holds messages until the named standby
#   has flushed their commits, and kafka_stats says why it waits;
# - a failover that lost WAL makes the new primary reuse outbox ids the old
#   one delivered, yet no two messages share an infra-msg-id (the timeline
#   is part of it), and with exactly once the reused ids go (the progress
#   names ids with their timeline).
use strict;
use warnings;

use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $http = HTTP::Tiny->new(timeout => 10);
my ($pport, $sport) = (PostgreSQL::Test::Cluster::get_free_port(), PostgreSQL::Test::Cluster::get_free_port());

my $primary = infra_node('primary', init => { allows_streaming => 1 },
	conf => "infra.kafka_brokers = '$bootstrap'\ninfra.metrics_listen = '127.0.0.1:$pport'\n");
$primary->start;
$primary->safe_psql('postgres', 'CREATE EXTENSION infra');
$primary->safe_psql('postgres', q{
INSERT INTO infra.rate_limiters (name, rate, burst) VALUES ('standby_api', 5, 5);
INSERT INTO infra.circuit_breakers (name) VALUES ('standby_svc');
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA infra TO app;
GRANT EXECUTE ON FUNCTION infra.kafka_send(text, text, text, jsonb, integer) TO app;
});
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
# Its walreceiver's application_name, as pg_stat_replication shows it.
$standby->append_conf('postgresql.conf', "infra.metrics_listen = '127.0.0.1:$sport'\ncluster_name = 'standby'\n");
$standby->start;
$primary->wait_for_catchup($standby);

# --- a hot standby ------------------------------------------------------------
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');
is($standby->safe_psql('postgres', "SELECT state FROM infra.worker_status WHERE database = 'postgres'"),
	'waiting_for_promotion', 'worker_status: the worker waits for promotion');
is($standby->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'infra worker'"),
	'0', 'no worker runs on the standby');

is($standby->safe_psql('postgres',
		"SELECT infra.rate_limit('standby_api', cost => 5)::text || ' ' || infra.rate_limit('standby_api')::text"),
	'true false', 'rate limits work on the standby (named limiter from the replicated table)');
is($standby->safe_psql('postgres', "SELECT infra.breaker_allow('standby_svc')"), 't', 'breakers work');
$standby->safe_psql('postgres', "SELECT infra.counter_inc('standby_hits', 2)");
like($http->get("http://127.0.0.1:$sport/metrics")->{content}, qr/^standby_hits_total 2$/m,
	'the metrics registry works and /metrics serves it');
is($standby->safe_psql('postgres', "SELECT count(*) > 0 FROM infra.query_metrics"), 't', 'query metrics work');
$standby->safe_psql('postgres', "SELECT infra.log('info', 'from the standby')");
like(slurp_file($standby->logfile), qr/from the standby/, 'infra.log works');
$standby->safe_psql('postgres', q{
SET infra.trace_sample_rate = 1;
SELECT infra.span_end(infra.span_start('on the standby'))});
is($standby->safe_psql('postgres', 'SELECT queued > 0 FROM infra.trace_stats'), 't',
	'spans work (queued in shared memory)');

foreach my $case (
	[ "SELECT infra.kafka_send('t', 'v')", 'send Kafka messages' ],
	[ "SELECT infra.kafka_flush('1 s')", 'wait for Kafka deliveries' ],
	[ "SELECT infra.kafka_retry_dead_letters()", 'requeue dead letters' ],
	[ "SELECT infra.topic_register('sales', 'orders')", 'change the topic registry' ],
	[ "SELECT infra.topic_drop('prod.sales.orders.v1')", 'change the topic registry' ])
{
	my ($sql, $what) = @$case;
	my ($rc, $out, $err) = $standby->psql('postgres', "\\set VERBOSITY verbose\n$sql");
	like($err, qr/ERROR:  25006: cannot \Q$what\E on a standby/, "$sql: 25006 on the standby");
	like($err, qr/HINT:  Connect to the primary, e\.g\. with target_session_attrs=read-write/,
		"$sql: the hint says where to go");
}

my $m = $http->get("http://127.0.0.1:$sport/metrics")->{content};
like($m, qr/^infra_node_role\{role="standby"\} 1$/m, '/metrics: infra_node_role standby 1 on the standby');
like($m, qr/^infra_node_role\{role="primary"\} 0$/m, '/metrics: infra_node_role primary 0 on the standby');
like($http->get("http://127.0.0.1:$pport/metrics")->{content}, qr/^infra_node_role\{role="primary"\} 1$/m,
	'/metrics: infra_node_role primary 1 on the primary');
my $h = $http->get("http://127.0.0.1:$sport/healthz");
is($h->{status}, 200, '/healthz on the standby: 200 (waiting for promotion is its normal state)');
is($http->get("http://127.0.0.1:$sport/healthz/primary")->{status}, 503, '/healthz/primary: 503 on the standby');
is($http->get("http://127.0.0.1:$sport/healthz/standby")->{status}, 200, '/healthz/standby: 200 on the standby');
is($http->get("http://127.0.0.1:$pport/healthz/primary")->{status}, 200, '/healthz/primary: 200 on the primary');
is($http->get("http://127.0.0.1:$pport/healthz/standby")->{status}, 503, '/healthz/standby: 503 on the primary');

# --- kafka_wait_for_standbys --------------------------------------------------
my ($rc, $out, $err) = $primary->psql('postgres', "ALTER SYSTEM SET infra.kafka_wait_for_standbys = 'ANY 1 (standby'");
like($err, qr/invalid value for parameter "infra\.kafka_wait_for_standbys"/, 'a malformed list is refused');

sub consume
{
	my ($topic) = @_;
	my ($kout, $kerr);
	IPC::Run::run([ 'kcat', '-b', $bootstrap, '-C', '-t', $topic, '-o', 'beginning', '-e', '-q',
			'-f', '%s\t%h\n' ], '>', \$kout, '2>', \$kerr, IPC::Run::timeout(120));
	return map { [ split /\t/, $_, 2 ] } split /\n/, $kout;
}
sub flushed { return $_[0]->safe_psql('postgres', "SELECT infra.kafka_flush('$_[1] s')") eq 't' }

my $topic = "infra_t_standby_$$";
kafka_create_topic($topic, 1);
$primary->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_wait_for_standbys = 'ANY 1 (standby)'; SELECT pg_reload_conf()");
$primary->safe_psql('postgres', "SELECT infra.kafka_send('$topic', 'while streaming')");
ok(flushed($primary, 60), 'with the standby streaming, messages go');

$standby->stop;
$primary->safe_psql('postgres', "SELECT infra.kafka_send('$topic', 'standby away')");
ok(!flushed($primary, 2), 'with the standby away, the message waits');
ok( wait_until(
		sub {
			$primary->safe_psql('postgres', 'SELECT waiting_for FROM infra.kafka_stats')
			  =~ /^standbys: waiting for ANY 1 \(standby\) to flush .*none of them/;
		}, 10),
	'kafka_stats.waiting_for says which standbys it waits for');
note $primary->safe_psql('postgres', 'SELECT waiting_for FROM infra.kafka_stats');
is(scalar(grep { $_->[0] eq 'standby away' } consume($topic)), 0, 'Kafka does not have it yet');
# Turned off while waiting: the message goes, and no stale reason stays.
$primary->safe_psql('postgres', "ALTER SYSTEM RESET infra.kafka_wait_for_standbys; SELECT pg_reload_conf()");
ok(flushed($primary, 60), 'the setting turned off: the message goes');
is($primary->safe_psql('postgres', 'SELECT waiting_for IS NULL FROM infra.kafka_stats'), 't',
	'and kafka_stats no longer says it waits');
$primary->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_wait_for_standbys = 'ANY 1 (standby)'; SELECT pg_reload_conf()");
$primary->safe_psql('postgres', "SELECT infra.kafka_send('$topic', 'standby away again')");
ok(!flushed($primary, 2), 'on again, with the standby away: the next message waits');
$standby->start;
ok(flushed($primary, 60), 'the standby back: the message goes');
is($primary->safe_psql('postgres', 'SELECT waiting_for IS NULL FROM infra.kafka_stats'), 't',
	'and kafka_stats no longer says it waits');

$primary->safe_psql('postgres',
	"ALTER SYSTEM SET infra.kafka_wait_for_standbys = 'synchronous_standby_names'; SELECT pg_reload_conf()");
$primary->safe_psql('postgres', "SELECT infra.kafka_send('$topic', 'no synchronous standby')");
ok(flushed($primary, 60), "'synchronous_standby_names' with none defined: no wait, as commits do not wait");
$primary->safe_psql('postgres',
	"ALTER SYSTEM SET synchronous_standby_names = 'standby'; SELECT pg_reload_conf()");
$primary->safe_psql('postgres', "SELECT infra.kafka_send('$topic', 'synchronous standby')");
ok(flushed($primary, 60), "'synchronous_standby_names' with the standby synchronous: it goes once flushed there");
$primary->safe_psql('postgres', q{
ALTER SYSTEM RESET synchronous_standby_names;
ALTER SYSTEM RESET infra.kafka_wait_for_standbys;
SELECT pg_reload_conf()});

# --- a failover that lost WAL ------------------------------------------------
# The standby misses what follows: more than 32 ids (the sequence's WAL
# look-ahead), delivered by the old primary.  Both deliver exactly once:
# the old primary's last progress record names the ids it delivered (on
# timeline 1), which the new primary hands out again on timeline 2, and
# those new messages must go all the same.
$primary->safe_psql('postgres', "ALTER SYSTEM SET infra.kafka_delivery = 'exactly_once'; SELECT pg_reload_conf()");
$primary->wait_for_catchup($standby);
$standby->stop;
$standby->append_conf('postgresql.conf', "infra.kafka_delivery = exactly_once\n");
$primary->safe_psql('postgres',
	"SELECT infra.kafka_send('$topic', 'old ' || g) FROM generate_series(1, 100) g");
ok(flushed($primary, 60), 'the old primary delivered 100 messages the standby never received');
my $old_ids = $primary->safe_psql('postgres', "SELECT pg_catalog.pg_sequence_last_value('infra.kafka_outbox_id_seq')");
$primary->stop('immediate');
my $standby_log_at = -s $standby->logfile;
$standby->start;
$standby->promote;
$standby->poll_query_until('postgres', "SELECT state = 'running' FROM infra.worker_status WHERE database = 'postgres'")
  or die 'the promoted standby does not serve';
pass('after promotion the worker serves the new primary');
like($http->get("http://127.0.0.1:$sport/metrics")->{content}, qr/^infra_node_role\{role="primary"\} 1$/m,
	'/metrics: the promoted node says primary');
my $first_new = $standby->safe_psql('postgres',
	"SELECT min(id) FROM (SELECT infra.kafka_send('$topic', 'new ' || g) AS id FROM generate_series(1, 50) g) s");
cmp_ok($first_new, '<', $old_ids, "the new primary reuses outbox ids the old one delivered ($first_new < $old_ids)");
ok(flushed($standby, 60), 'the new primary delivers its messages');
like(slurp_log_since($standby, $standby_log_at), qr/and (\d{3,}) messages of the table outbox's last rounds/,
	"the new primary's worker read the old one's delivered ids back from the Kafka progress");

my @got = consume($topic);
my %ids;
my ($old_tl, $new_tl) = (0, 0);
foreach my $msg (@got)
{
	my ($id) = ($msg->[1] // '') =~ /infra-msg-id=([^,\s]+)/;
	$ids{$id}++ if defined $id;
	$old_tl++ if $msg->[0] =~ /^old / && $id =~ m{^\d+/\d+/1/\d+$};
	$new_tl++ if $msg->[0] =~ /^new / && $id =~ m{^\d+/\d+/2/\d+$};
}
is($old_tl, 100, "the old primary's messages carry timeline 1 in their infra-msg-id");
is($new_tl, 50, "the new primary's carry timeline 2");
is(scalar(grep { $ids{$_} > 1 } keys %ids), 0,
	'no two messages share an infra-msg-id, though their outbox ids collide');

$standby->stop;
done_testing();
