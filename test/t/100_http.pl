# Transactional HTTP: http_send delivers after commit and never after a
# rollback; a local receiver (test/http/receiver.py) checks every signature
# with the Standard Webhooks reference library; statuses are judged (2xx
# delivered, 5xx retried with the same webhook-id, 410 disables the
# endpoint, 429 with Retry-After pauses it); SSRF: every spelling of a
# loopback or metadata address is refused before a byte is sent, redirects
# are not followed; a hanging endpoint does not hold back another; the
# worker SIGKILLed and PostgreSQL stopped -m immediate with requests queued
# lose none.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use InfraTest;

my $python = $ENV{INFRA_PYTHON} // die "INFRA_PYTHON is not set: run through test/run.sh\n";
my $rport = PostgreSQL::Test::Cluster::get_free_port();
my $rlog = "${PostgreSQL::Test::Utils::tmp_check}/http_requests.jsonl";
my $secret = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';
my $secret2 = 'whsec_dGhlIG5leHQga2V5IGluIHRoZSByb3RhdGlvbg==';
my $receiver = IPC::Run::start(
	[ $python, src_path('test/http/receiver.py'), '--port', $rport, '--log', $rlog,
	  '--secret', $secret, '--secret', $secret2 ],
	'>', \my $rout, '2>', \my $rerr);
wait_until(sub { $receiver->pump_nb; $rout =~ /listening/ }, 30) or die "receiver: $rerr";
my $base = "http://127.0.0.1:$rport";

my $node = infra_node('http', conf => "restart_after_crash = on\nmax_prepared_transactions = 5\ninfra.http_allow = '127.0.0.1'\n");
# A proxy in the server's environment (nothing listens there): the worker
# must ignore it, or no request below would arrive.
{
	local @ENV{qw(http_proxy HTTP_PROXY https_proxy HTTPS_PROXY ALL_PROXY all_proxy)} = ('http://127.0.0.1:9') x 6;
	$node->start;
}
$node->safe_psql('postgres', 'CREATE EXTENSION infra');

# Everything the receiver logged, requests only (or connections with 1).
sub received
{
	my ($connections) = @_;
	return () unless -f $rlog;
	my @all = map { decode_json($_) } grep { length } split /\n/, slurp_file($rlog);
	return grep { $connections ? $_->{accepted} : !$_->{accepted} } @all;
}
sub received_at { my ($path) = @_; return grep { $_->{path} eq $path } received(); }
sub sql { return $node->safe_psql('postgres', $_[0]); }

ok(wait_until(sub { sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'infra http worker'") == 1 }),
	'the http worker runs, one per database');

# --- sent after commit, never after rollback ----------------------------------
sql("BEGIN; SELECT infra.http_send('$base/ok/rolled-back', 'x'); ROLLBACK;");
sql("BEGIN; SELECT infra.http_send('$base/ok/a', '{\"n\": 1}'::jsonb, headers => '{\"X-Trace\": \"t1\"}');
   SAVEPOINT s; SELECT infra.http_send('$base/ok/savepoint-dropped', 'x'); ROLLBACK TO s;
   SAVEPOINT t; SELECT infra.http_send('$base/ok/savepoint-kept', 'x'); RELEASE t; COMMIT;");
sql("DO \$\$ BEGIN PERFORM infra.http_send('$base/ok/exception', 'x');
   BEGIN PERFORM infra.http_send('$base/ok/exception-dropped', 'x'); RAISE EXCEPTION 'boom';
   EXCEPTION WHEN OTHERS THEN NULL; END; END \$\$;");
sql("CREATE PROCEDURE p() LANGUAGE plpgsql AS \$\$ BEGIN PERFORM infra.http_send('$base/ok/proc-1', 'x'); COMMIT;
   PERFORM infra.http_send('$base/ok/proc-rolled-back', 'x'); ROLLBACK; END \$\$; CALL p();");
ok(wait_until(sub { received_at('/ok/proc-1') && received_at('/ok/exception') && received_at('/ok/a')
	  && received_at('/ok/savepoint-kept') }, 30), 'committed requests arrive');
sleep 1;
is(scalar(map { received_at("/ok/$_") } qw(rolled-back savepoint-dropped exception-dropped proc-rolled-back)), 0,
	'nothing rolled back (transaction, savepoint, exception block, procedure) is sent');
my ($first) = received_at('/ok/a');
is($first->{method}, 'POST', 'POST by default');
is($first->{headers}{host}, "127.0.0.1:$rport", 'sent straight to the receiver, not through the environment\'s proxy');
is($first->{body}, '{"n": 1}', 'the jsonb body as JSON text');
is($first->{headers}{'content-type'}, 'application/json', 'a jsonb body is application/json');
is($first->{headers}{'x-trace'}, 't1', "the caller's header is sent");
like($first->{headers}{'webhook-id'}, qr/^msg_\d+_\d+_1_\d+$/, 'webhook-id: system id, database, timeline, id');
like($first->{headers}{'webhook-timestamp'}, qr/^\d{10}$/, 'webhook-timestamp: Unix seconds');
is($first->{verified}, undef, 'no signature without an endpoint secret');
is(sql("SELECT count(*) FROM infra.http_requests WHERE state <> 'delivered'"), 0, 'nothing waits');
is(sql("SELECT state || ' ' || attempts || ' ' || last_status || ' ' || (last_attempt_ms >= 0) || ' ' || (finished_at >= created_at)
        FROM infra.http_requests WHERE url LIKE '%/ok/a'"), 'delivered 1 200 true true',
	'infra.http_requests shows the delivery, its status and duration');

# --- two-phase commit ----------------------------------------------------------
if (sql("SHOW max_prepared_transactions") > 0)
{
	sql("BEGIN; SELECT infra.http_send('$base/ok/prepared', 'x'); PREPARE TRANSACTION 'h1';");
	sql("BEGIN; SELECT infra.http_send('$base/ok/prepared-rolled-back', 'x'); PREPARE TRANSACTION 'h2';");
	sleep 1;
	is(scalar(received_at('/ok/prepared')), 0, 'a prepared transaction sends nothing yet');
	sql("COMMIT PREPARED 'h1'");
	sql("ROLLBACK PREPARED 'h2'");
	ok(wait_until(sub { received_at('/ok/prepared') }, 30), 'COMMIT PREPARED sends');
	sleep 1;
	is(scalar(received_at('/ok/prepared-rolled-back')), 0, 'ROLLBACK PREPARED does not');
}

# --- endpoints, methods, signatures --------------------------------------------
sql("INSERT INTO infra.http_endpoints (name, url, secrets, headers, retry_schedule)
   VALUES ('hooks', '$base/ok/hooks', ARRAY['$secret', '$secret2'], '{\"X-Env\": \"test\"}', '{1 second, 1 second}'),
          ('flaky', '$base/fail/2', ARRAY['$secret'], '{}', '{1 second, 1 second, 1 second}'),
          ('gone', '$base/status/410', NULL, '{}', '{1 second}'),
          ('spent', '$base/status/500', NULL, '{}', '{1 second}')");
sql("SELECT infra.http_send(NULL, 'hello', endpoint => 'hooks');
   SELECT infra.http_send('/orders/7?x=1', '\\x0001ff'::bytea, 'PUT', endpoint => 'hooks');
   SELECT infra.http_send('/orders/7', NULL, 'DELETE', endpoint => 'hooks')");
ok(wait_until(sub { scalar(grep { $_->{path} =~ m{^/ok/hooks} } received()) == 3 }, 30), 'endpoint requests arrive');
my @hooks = grep { $_->{path} =~ m{^/ok/hooks} } received();
is(join(',', sort map { "$_->{method} $_->{path}" } @hooks),
	'DELETE /ok/hooks/orders/7,POST /ok/hooks,PUT /ok/hooks/orders/7?x=1', "the endpoint's URL with the path appended, any method");
is(scalar(grep { join(',', @{ $_->{verified} // [] }) eq '0,1' } @hooks), 3,
	'every request verifies with the standardwebhooks library, under both secrets');
like($hooks[0]{headers}{'webhook-signature'}, qr/^v1,\S+ v1,\S+$/, 'one v1 signature per secret (key rotation)');
is($hooks[0]{headers}{'x-env'}, 'test', "the endpoint's headers are sent");
is((grep { $_->{method} eq 'PUT' } @hooks)[0]{headers}{'content-type'}, 'application/octet-stream', 'bytea: octet-stream');

sql("SELECT infra.http_send(NULL, 'retry me', endpoint => 'flaky')");
ok(wait_until(sub { scalar(received_at('/fail/2')) == 3 }, 30), '500 twice, then 200: three attempts');
my @flaky = received_at('/fail/2');
is(scalar(keys %{ { map { $_->{headers}{'webhook-id'} => 1 } @flaky } }), 1, 'the same webhook-id on every attempt');
is(scalar(grep { join(',', @{ $_->{verified} // [] }) eq '0' } @flaky), 3,
	'each attempt signed anew, valid under its one secret and not under another');
ok(wait_until(sub { sql("SELECT count(*) FROM infra.http_requests WHERE state <> 'delivered'") == 0 }, 10), 'then nothing waits');

sql("SELECT infra.http_send(NULL, 'x', endpoint => 'gone')");
ok(wait_until(sub { sql("SELECT enabled FROM infra.http_endpoints WHERE name = 'gone'") eq 'f' }, 30),
	'410 Gone disables the endpoint');
is(sql("SELECT disabled_reason FROM infra.http_endpoints WHERE name = 'gone'"), '410 Gone', 'and says why');
is(sql("SELECT state || ' ' || attempts || ' ' || last_status FROM infra.http_requests WHERE endpoint = 'gone'"),
	'dead 1 410', 'the request is a dead letter with its status');
sql("SELECT infra.http_send(NULL, 'y', endpoint => 'gone')");
ok(wait_until(sub { sql("SELECT count(*) FROM infra.http_dead_letters WHERE endpoint = 'gone'") == 2 }, 30),
	'a request to a disabled endpoint becomes a dead letter');
is(scalar(received_at('/status/410')), 1, 'without being sent');

sql("SELECT infra.http_send(NULL, 'x', endpoint => 'spent')");
ok(wait_until(sub { sql("SELECT count(*) FROM infra.http_dead_letters WHERE endpoint = 'spent'") == 1 }, 30),
	'a spent retry schedule makes a dead letter');
is(sql("SELECT attempts || ' ' || jsonb_array_length(outcomes) || ' ' || (outcomes->1->>'status')
      FROM infra.http_dead_letters WHERE endpoint = 'spent'"), '2 2 500', 'with every attempt\'s outcome');
sql("UPDATE infra.http_endpoints SET url = '$base/ok/spent-fixed' WHERE name = 'spent'");
is(sql("SELECT infra.http_retry_dead_letters('spent')"), 1, 'http_retry_dead_letters moves it back');
ok(wait_until(sub { received_at('/ok/spent-fixed') }, 30), 'and it is delivered');
my @fixed = received_at('/ok/spent-fixed');
is(scalar(@fixed), 1, 'once');

# An endpoint failing for longer than its disable_after is disabled: a log
# line and a metric.
my $log_at = -s $node->logfile;
sql("INSERT INTO infra.http_endpoints (name, url, disable_after, retry_schedule)
     VALUES ('weary', '$base/status/500?weary', '1 second', '{1 second, 1 second, 1 second, 1 second}')");
sql("SELECT infra.http_send(NULL, 'x', endpoint => 'weary')");
ok(wait_until(sub { sql("SELECT enabled FROM infra.http_endpoints WHERE name = 'weary'") eq 'f' }, 30),
	'an endpoint failing for longer than its disable_after is disabled');
is(sql("SELECT disabled_reason FROM infra.http_endpoints WHERE name = 'weary'"), 'failing for longer than disable_after',
	'with the reason');
like(slurp_log_since($node, $log_at), qr/infra http worker disabled endpoint "weary": failing since/, 'an event in the log');
like(sql("SELECT infra.metrics_prometheus()"),
	qr/^infra_http_endpoint_disabled_total\{database="postgres",endpoint="weary"\} 1$/m, 'and a metric');
sql("DELETE FROM infra.http_retries WHERE endpoint = 'weary'");
sql("DELETE FROM infra.http_endpoints WHERE name = 'weary'");

# --- each endpoint's own breaker and limiter (the existing ones) -------------------
is(sql("SELECT string_agg(name, ',' ORDER BY name) FROM infra.circuit_breakers WHERE name LIKE 'http:%'"),
	'http:flaky,http:gone,http:hooks,http:spent', 'each endpoint has its breaker, a row of infra.circuit_breakers');
sql("INSERT INTO infra.http_endpoints (name, url, rate_per_second) VALUES ('limited', '$base/ok/limited', 5)");
is(sql("SELECT rate || ' per ' || per || ', burst ' || burst FROM infra.rate_limiters WHERE name = 'http:limited'"),
	'5 per 00:00:01, burst 5', 'and with a rate, its limiter, a row of infra.rate_limiters');
sql("SELECT infra.http_send(NULL, i::text, endpoint => 'limited') FROM generate_series(1, 20) i");
ok(wait_until(sub { scalar(received_at('/ok/limited')) == 20 }, 30), '20 requests to an endpoint limited to 5/s arrive');
my @lim = sort { $a <=> $b } map { $_->{time} } received_at('/ok/limited');
cmp_ok($lim[-1] - $lim[0], '>=', 2.5, sprintf('over %.1f s: the burst of 5, then 5 a second', $lim[-1] - $lim[0]));
is(sql("SELECT allowed_total FROM infra.rate_limits WHERE kind = 'limiter' AND key = 'http:limited'"), 20,
	'infra.rate_limits counts them');
sql("INSERT INTO infra.http_endpoints (name, url, concurrency, retry_schedule) VALUES ('failing', '$base/status/500?failing', 1, '{1 hour}')");
sql("SELECT infra.http_send(NULL, i::text, endpoint => 'failing') FROM generate_series(1, 30) i");
ok(wait_until(sub { sql("SELECT state FROM infra.circuit_breaker_state WHERE name = 'http:failing'") eq 'open' }, 30),
	'failures open the endpoint\'s breaker');
sleep 2;
my $tried = scalar(received_at('/status/500?failing'));
cmp_ok($tried, '<=', 12, "the open breaker stops the attempts ($tried of 30 made)");
is(sql("SELECT count(*) FROM infra.http_requests WHERE endpoint = 'failing' AND state = 'retrying'"), $tried,
	'the failed ones wait for their retry');
sql("UPDATE infra.http_endpoints SET url = '$base/ok/recovered' WHERE name = 'failing'");
sql("SELECT infra.breaker_reset('http:failing')");
ok(wait_until(sub { scalar(received_at('/ok/recovered')) == 30 - $tried }, 30),
	'closed again, the requests the breaker held go out');
sql("DELETE FROM infra.http_retries WHERE endpoint = 'failing'");
sql("DELETE FROM infra.http_endpoints WHERE name IN ('failing', 'limited')");
is(sql("SELECT count(*) FROM infra.circuit_breakers WHERE name IN ('http:failing', 'http:limited')")
	  + sql("SELECT count(*) FROM infra.rate_limiters WHERE name = 'http:limited'"), 0,
	'a deleted endpoint takes its breaker and limiter with it');

# --- SSRF: refused before a byte is sent ----------------------------------------
my $conns = scalar(received(1));
sql("ALTER SYSTEM SET infra.http_allow = ''"); sql("SELECT pg_reload_conf()");
sleep 1;
my @spellings = ("http://127.0.0.1:$rport/ssrf", "http://127.1:$rport/ssrf", "http://2130706433:$rport/ssrf",
	"http://0x7f.1:$rport/ssrf", "http://[::1]:$rport/ssrf", "http://[::ffff:127.0.0.1]:$rport/ssrf",
	"http://localhost:$rport/ssrf", 'http://169.254.169.254/latest/meta-data/', 'http://0.0.0.0:1/ssrf',
	'http://10.1.2.3:1/ssrf');
sql("SELECT infra.http_send('$_', 'x')") for @spellings;
ok(wait_until(sub { sql("SELECT count(*) FROM infra.http_dead_letters WHERE url LIKE '%ssrf%' OR url LIKE '%meta-data%'")
	  == scalar(@spellings) }, 30), 'every loopback, private and metadata spelling is a dead letter');
is(sql("SELECT count(*) FROM infra.http_dead_letters WHERE (url LIKE '%ssrf%' OR url LIKE '%meta-data%')
      AND error LIKE '%refused%' AND attempts = 1"), scalar(@spellings), 'refused, at once');
is(scalar(received(1)), $conns, 'the receiver saw no connection at all');
like(sql("SELECT error FROM infra.http_dead_letters WHERE url LIKE 'http://2130706433%'"),
	qr/127\.0\.0\.1 refused: loopback/, 'the error names the address and the range');
sql("INSERT INTO infra.http_endpoints (name, url, allow, breaker_failure_rate) VALUES ('private', '$base/ok/private', '{127.0.0.1/32}', 25)");
sql("SELECT infra.http_send(NULL, 'x', endpoint => 'private')");
ok(wait_until(sub { received_at('/ok/private') }, 30), "an endpoint's own allow list (a superuser's) opens its address");
is(sql("SELECT failure_rate_threshold FROM infra.circuit_breakers WHERE name = 'http:private'"), 25,
	"its breaker_failure_rate is its breaker's threshold");
sql("DELETE FROM infra.http_endpoints WHERE name = 'private'");
sql("ALTER SYSTEM SET infra.http_allow = '127.0.0.1, 169.254.0.0/16'"); sql("SELECT pg_reload_conf()");
sleep 1;
sql("SELECT infra.http_send('http://169.254.169.254/again', 'x')");
ok(wait_until(sub { sql("SELECT count(*) FROM infra.http_dead_letters WHERE url LIKE '%169.254.169.254/again'") == 1 }, 30),
	'the metadata address stays refused when its range is allowed');
like(sql("SELECT error FROM infra.http_dead_letters WHERE url LIKE '%169.254.169.254/again'"), qr/metadata/, 'as metadata');
sql("SELECT infra.http_send('$base/redirect?to=http://169.254.169.254/', 'x')");
ok(wait_until(sub { sql("SELECT last_status FROM infra.http_requests WHERE url LIKE '%redirect%'") eq '302' }, 30),
	'a redirect is a failure, not followed');
is(scalar(grep { $_->{path} =~ m{^/redirect} } received()), 1, 'the receiver was asked once');
sql("DELETE FROM infra.http_retries WHERE url LIKE '%redirect%'");

# --- a hanging endpoint does not hold back another ----------------------------
sql("INSERT INTO infra.http_endpoints (name, url, timeout_ms, concurrency) VALUES
   ('hang', '$base/hang', 600000, 2), ('steady', '$base/ok/steady', 30000, 4)");
sql("SELECT infra.http_send(NULL, 'h', endpoint => 'hang') FROM generate_series(1, 3000)");
my $t0 = time();
sql("SELECT infra.http_send(NULL, 's', endpoint => 'steady') FROM generate_series(1, 500)");
ok(wait_until(sub { scalar(grep { $_->{path} eq '/ok/steady' } received()) == 500 }, 60),
	'500 requests to a steady endpoint arrive while another hangs');
my $took = time() - $t0;
cmp_ok($took, '<', 20, sprintf('in %.1f s', $took));
is(scalar(received_at('/hang')), 2, 'the hanging endpoint has its concurrency (2) in flight, no more');
sql("UPDATE infra.http_endpoints SET enabled = false, disabled_reason = 'test' WHERE name = 'hang'");

# --- receivers that drip, reset, send 100 MB; the caller's trace context -------
sql("INSERT INTO infra.http_endpoints (name, url, timeout_ms, low_speed_seconds, retry_schedule) VALUES
   ('drip', '$base/drip', 2500, 2, '{1 second}'), ('reset', '$base/reset', 30000, 10, '{1 second}'),
   ('big', '$base/big', 30000, 10, '{1 second}')");
my $t_big = time();
sql("SELECT infra.http_send(NULL, 'x', endpoint => e) FROM unnest(ARRAY['drip', 'reset', 'big']) e");
ok(wait_until(sub { sql("SELECT count(*) FROM infra.http_dead_letters WHERE endpoint IN ('drip', 'reset')") == 2 }, 60),
	'a receiver dripping a byte a second and one resetting the connection: failures, then dead letters');
like(sql("SELECT error FROM infra.http_dead_letters WHERE endpoint = 'drip'"), qr/timed out/i, 'the drip by its timeout');
cmp_ok(sql("SELECT max((o->>'ms')::int) FROM infra.http_dead_letters, jsonb_array_elements(outcomes) o WHERE endpoint = 'drip'"),
	'<', 6000, 'each drip attempt ended near its 2.5 s timeout');
like(sql("SELECT error FROM infra.http_dead_letters WHERE endpoint = 'reset'"), qr/reset|empty reply|recv failure/i,
	'the reset as a network error');
ok(wait_until(sub { sql("SELECT count(*) FROM infra.http_requests WHERE endpoint = 'big' AND state = 'delivered'") == 1 }, 30),
	'a 200 with a 100 MB body is delivered');
cmp_ok(time() - $t_big, '<', 15, 'without reading the 100 MB (the response is cut at max_response_bytes)');
$node->safe_psql('postgres', "SET infra.traceparent = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';
	SELECT infra.http_send('$base/ok/traced', 'x')");
ok(wait_until(sub { received_at('/ok/traced') }, 30), 'a request sent in a trace arrives');
like((received_at('/ok/traced'))[0]{headers}{traceparent}, qr/^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01$/,
	"in the caller's trace (traceparent: its trace id, the sending statement's span)");

# --- crashes lose nothing ---------------------------------------------------------
# Counting a path's requests from the raw log: thousands of lines, read often.
sub count_path { my ($p) = @_; return 0 unless -f $rlog; my $n = () = slurp_file($rlog) =~ /"path": "\Q$p\E"/g; return $n; }
my $nreq = $ENV{INFRA_HTTP_CRASH_REQUESTS} // 4000;
sql("INSERT INTO infra.http_endpoints (name, url, concurrency) VALUES ('crash', '$base/slow/5', 16)");
sql("SELECT infra.http_send(NULL, i::text, endpoint => 'crash') FROM generate_series(1, $nreq) i");
ok(wait_until(sub { count_path('/slow/5') >= $nreq / 20 }, 60), 'delivery under way');
my $wpid = sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'infra http worker'");
kill 'KILL', $wpid;
ok(wait_until(sub { count_path('/slow/5') >= $nreq * 3 / 10 }, 120), 'delivery goes on after a SIGKILL of the worker');
$node->stop('immediate');
$node->start;
ok(wait_until(sub { sql("SELECT count(*) FROM infra.http_requests WHERE endpoint = 'crash' AND state <> 'delivered'") == 0 }, 300),
	'after -m immediate, the queue drains');
my %bodies = map { $_->{body} => 1 } received_at('/slow/5');
is(scalar(keys %bodies), $nreq, "all $nreq requests arrived");
my %ids;
$ids{ $_->{body} }{ $_->{headers}{'webhook-id'} } = 1 for received_at('/slow/5');
is(scalar(grep { keys %{ $ids{$_} } > 1 } keys %ids), 0, 'repeats only with the same webhook-id');
note('repeats after the two crashes: ' . (count_path('/slow/5') - $nreq));

# --- secrets: in no log line --------------------------------------------------------
# The endpoints' secrets were written by statements logged in full
# (log_statement = all), and one in a row a constraint refused.
sql("DO \$\$ BEGIN INSERT INTO infra.http_endpoints (name, url, secrets) VALUES ('bad name!', '$base/', ARRAY['$secret']);
     EXCEPTION WHEN check_violation THEN NULL; END \$\$");
my $server_log = slurp_file($node->logfile);
like($server_log, qr/whsec_\(hidden\)/, 'the statements that set secrets are logged with them masked');
(my $key2 = $secret2) =~ s/^whsec_//;
(my $key1 = $secret) =~ s/^whsec_//;
unlike($server_log, qr/\Q$key1\E|\Q$key2\E/, 'and no secret appears in the server log');

$receiver->kill_kill;
$node->stop;
done_testing();
