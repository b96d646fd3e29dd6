# Tracing: spans and their context, sampling, SQLcommenter, and the OTLP
# exporter against a local receiver that parses every payload strictly with
# the official OpenTelemetry protobuf definitions; the exporter's behaviour
# on 500, 400, 429 with Retry-After, 503 and a dead endpoint; the "network"
# breaker; a full ring drops and counts, never blocks.
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
my $rlog = "${PostgreSQL::Test::Utils::tmp_check}/otlp_requests.jsonl";
my $receiver;

# (Re)start the receiver answering with PLAN (see test/otlp/receiver.py).
sub receiver_start
{
	my ($plan) = @_;
	receiver_stop();
	unlink $rlog;
	$receiver = IPC::Run::start(
		[ $python, src_path('test/otlp/receiver.py'), '--port', $rport, '--log', $rlog, '--respond', $plan ],
		'>', \my $out, '2>', \my $err);
	wait_until(sub { $receiver->pump_nb; $out =~ /listening/ }, 30) or die "receiver: $err";
}

sub receiver_stop
{
	$receiver->kill_kill if $receiver;
	$receiver = undef;
}

# The requests received so far.
sub requests
{
	return () unless -f $rlog;
	return map { decode_json($_) } grep { length } split /\n/, slurp_file($rlog);
}

# Every span of the requests, with the request's status.
sub spans_of
{
	my @spans;
	for my $r (@_)
	{
		for my $rs (@{ $r->{request}{resourceSpans} // [] })
		{
			for my $ss (@{ $rs->{scopeSpans} })
			{
				push @spans, map { { %$_, _status => $r->{status} } } @{ $ss->{spans} };
			}
		}
	}
	return @spans;
}

sub attr
{
	my ($span, $key) = @_;
	my ($a) = grep { $_->{key} eq $key } @{ $span->{attributes} };
	return $a ? $a->{value} : undef;
}

my $node = infra_node('tracing', conf => <<"CONF");
infra.database = 'postgres'
infra.otlp_endpoint = 'http://127.0.0.1:$rport/v1/traces'
infra.otlp_flush_interval = 100
infra.otlp_service_name = 'orders-db'
infra.trace_buffer_spans = 64
CONF
receiver_start('200');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');

# Explicit spans: a parent with typed attributes, a child that fails; the
# trace joins the caller's traceparent.
my $tp = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
my $ids = $node->safe_psql('postgres', qq{
SET infra.traceparent = '$tp';
SET infra.correlation_id = 'order-7';
SELECT infra.span_start('checkout', '{"order": 7, "ok": true, "total": 12.5, "tags": ["a", 2], "cart": {"items": 3}}') AS p \\gset
SELECT infra.span_start('charge card', '{}', 'client') AS c \\gset
SELECT :'p', :'c', infra.traceparent();
SELECT infra.span_end(:'c', 'error', '{"error.type": "declined"}');
SELECT infra.span_end(:'p');
});
my ($parent, $child, $inside) = $ids =~ /^([0-9a-f]{16})\|([0-9a-f]{16})\|(\S+)$/m;
like($parent, qr/^[0-9a-f]{16}$/, 'span_start returns a 16-hex span id');
like($inside, qr/^00-0af7651916cd43dd8448eb211c80319c-[0-9a-f]{16}-01$/,
	'infra.traceparent() inside a span: its trace, sampled');
ok(wait_until(sub { grep { $_->{name} eq 'checkout' } spans_of(requests()) }, 30),
	'the exporter delivered the spans');
my @reqs = requests();
is_deeply([ grep { !$_->{valid} } @reqs ], [], 'every payload parses strictly as an OTLP ExportTraceServiceRequest')
  or diag(explain([ map { $_->{error} } grep { !$_->{valid} } @reqs ]));
is($reqs[0]{path}, '/v1/traces', 'POSTed to the endpoint');
is($reqs[0]{content_type}, 'application/json', 'as JSON');
my $resource = $reqs[0]{request}{resourceSpans}[0]{resource};
my ($svc) = grep { $_->{key} eq 'service.name' } @{ $resource->{attributes} };
is($svc->{value}{stringValue}, 'orders-db', 'service.name from infra.otlp_service_name');
my @spans = spans_of(@reqs);
my ($p) = grep { $_->{name} eq 'checkout' } @spans;
my ($c) = grep { $_->{name} eq 'charge card' } @spans;
is($p->{traceId}, '0af7651916cd43dd8448eb211c80319c', 'trace id from infra.traceparent');
is($p->{parentSpanId}, 'b7ad6b7169203331', 'parent: the caller\'s span');
is($p->{spanId}, $parent, 'span id as returned');
is($c->{parentSpanId}, $parent, 'the child\'s parent is the open span');
is($p->{kind}, 1, 'kind internal = 1');
is($c->{kind}, 3, 'kind client = 3');
is($p->{status}{code}, 1, 'status ok = 1');
is($c->{status}{code}, 2, 'status error = 2');
like($p->{startTimeUnixNano}, qr/^\d{19}$/, 'start time: Unix nanoseconds as a string');
cmp_ok($p->{endTimeUnixNano}, '>=', $p->{startTimeUnixNano}, 'end after start');
cmp_ok($p->{startTimeUnixNano}, '<=', $c->{startTimeUnixNano}, 'child starts within its parent');
is(attr($p, 'order')->{intValue}, '7', 'integer attribute: intValue as a string');
is(attr($p, 'total')->{doubleValue}, 12.5, 'double attribute');
ok(attr($p, 'ok')->{boolValue}, 'bool attribute');
is(attr($p, 'tags')->{arrayValue}{values}[1]{intValue}, '2', 'array attribute');
is(attr($p, 'cart')->{kvlistValue}{values}[0]{key}, 'items', 'object attribute');
is(attr($p, 'correlation_id')->{stringValue}, 'order-7', 'correlation id attribute');
is(attr($c, 'error.type')->{stringValue}, 'declined', 'attributes given at the end');
my ($here) = grep { $_->{spanId} eq substr($inside, 36, 16) } @spans;
ok($here, 'the traceparent inside the statement is its server span');
is($here->{parentSpanId}, $child, '... a child of the open span');

# Statement spans: sampled by infra.trace_sample_rate, or by the incoming
# flag; the SQLcommenter traceparent sets the parent.
receiver_start('200');
# Statements told apart by the catalog they read (query ids ignore aliases).
$node->safe_psql('postgres', q{
SELECT count(*) FROM pg_class;
SET infra.trace_sample_rate = 1;
SELECT count(*) FROM pg_namespace WHERE nspname <> 'secret-constant';
SET infra.traceparent = '00-11111111111111111111111111111111-2222222222222222-00';
SELECT count(*) FROM pg_type;
RESET infra.traceparent;
SET infra.trace_sample_rate = 0;
/*traceparent='00-33333333333333333333333333333333-4444444444444444-01'*/ SELECT count(*) FROM pg_proc;
SELECT infra.span_start('outer') AS o \gset
SELECT count(*) FROM pg_am;
SELECT infra.span_end(:'o');
});
ok(wait_until(sub { grep { $_->{name} eq 'outer' } spans_of(requests()) }, 30), 'statement spans delivered');
@spans = spans_of(requests());
my %by_marker;
my %marker = (pg_class => 'marker_a', pg_namespace => 'marker_b', pg_type => 'marker_c',
	pg_proc => 'marker_d', pg_am => 'marker_e');
for my $s (@spans)
{
	my $q = attr($s, 'db.query.text');
	$by_marker{ $marker{$1} } = $s if $q && $q->{stringValue} =~ /FROM (pg_\w+)/;
}
ok(!$by_marker{marker_a}, 'sample rate 0: no span');
ok($by_marker{marker_b}, 'sample rate 1: a server span');
is($by_marker{marker_b}{kind}, 2, 'kind server = 2');
is($by_marker{marker_b}{name}, 'SELECT postgres', 'named operation and database');
is(attr($by_marker{marker_b}, 'db.query.text')->{stringValue},
	q{SELECT count(*) FROM pg_namespace WHERE nspname <> $1}, 'the statement\'s normalised text');
ok(!(grep { /secret-constant/ } split /\n/, slurp_file($rlog)), 'no constant of a statement leaves the database');
is(attr($by_marker{marker_b}, 'db.system')->{stringValue}, 'postgresql', 'db.system');
ok(!$by_marker{marker_c}, 'incoming sampled flag 00 wins over the rate');
is($by_marker{marker_d}{traceId}, '33333333333333333333333333333333', 'SQLcommenter trace id');
is($by_marker{marker_d}{parentSpanId}, '4444444444444444', 'SQLcommenter parent');
my ($outer) = grep { $_->{name} eq 'outer' } @spans;
is($by_marker{marker_e}{parentSpanId}, $outer->{spanId}, 'a statement inside a span is its child');

# Bad input never fails the statement it comes with, or is a clear error.
my ($rc, $out, $err) = $node->psql('postgres',
	q{/*traceparent='00-XYZ-0000000000000000-01'*/ SELECT 'still runs'});
is($out, 'still runs', 'a malformed SQLcommenter traceparent does not fail the statement');
like($err, qr/WARNING:  ignoring invalid SQLcommenter traceparent/, '... it is ignored with a warning');
($rc, $out, $err) = $node->psql('postgres', q{SELECT infra.span_end('0123456789abcdef')});
like($err, qr/span "0123456789abcdef" is not open in this session/, 'ending an unknown span');
($rc, $out, $err) = $node->psql('postgres', q{SELECT infra.span_start('x', '{}', 'sideways')});
like($err, qr/unknown span kind "sideways"/, 'unknown kind');

# Exporter: 500 and 400 are final (dropped, counted, never resent).
for my $code (500, 400)
{
	receiver_start("$code,200");
	my $before = $node->safe_psql('postgres', 'SELECT rejected FROM infra.trace_stats');
	$node->safe_psql('postgres', qq{SELECT infra.span_end(infra.span_start('refused $code'))});
	ok(wait_until(sub { scalar(requests()) >= 1 }, 30), "$code: one request");
	$node->safe_psql('postgres', qq{SELECT infra.span_end(infra.span_start('after $code'))});
	ok(wait_until(sub { grep { $_->{name} eq "after $code" } spans_of(requests()) }, 30),
		"$code: later spans still go");
	my @named = grep { $_->{name} eq "refused $code" } spans_of(requests());
	is(scalar(@named), 1, "$code: the refused span was sent once, not retried");
	is($node->safe_psql('postgres', 'SELECT rejected FROM infra.trace_stats'), $before + 1,
		"$code: counted as rejected");
	like($node->safe_psql('postgres', 'SELECT last_error FROM infra.trace_stats'), qr/HTTP $code/,
		"$code: the error is shown");
}

# 429 with Retry-After: 2 s later, the same span again, then accepted.
receiver_start('429:2,200');
$node->safe_psql('postgres', q{SELECT infra.span_end(infra.span_start('throttled'))});
ok(wait_until(sub { scalar(requests()) >= 2 }, 30), '429: retried');
my @tries = requests();
is($tries[0]{status}, 429, 'first answer 429');
is((spans_of($tries[1]))[0]{name}, 'throttled', 'the same span sent again');
cmp_ok($tries[1]{time} - $tries[0]{time}, '>=', 1.9, sprintf('after Retry-After (%.2f s)', $tries[1]{time} - $tries[0]{time}));

# 503 without Retry-After: retried after a backoff.
receiver_start('503,200');
$node->safe_psql('postgres', q{SELECT infra.span_end(infra.span_start('unavailable'))});
ok(wait_until(sub { scalar(requests()) >= 2 }, 30), '503: retried');
@tries = requests();
is((spans_of($tries[1]))[0]{name}, 'unavailable', 'the span went through on the retry');
cmp_ok($tries[1]{time} - $tries[0]{time}, '>=', 0.2, 'after a backoff');

# Dead endpoint: nothing lost, failures counted; back once it listens.
receiver_stop();
my $failed_before = $node->safe_psql('postgres', 'SELECT failed_exports FROM infra.trace_stats');
$node->safe_psql('postgres', q{SELECT infra.span_end(infra.span_start('while down'))});
ok( wait_until(
		sub { $node->safe_psql('postgres', 'SELECT failed_exports FROM infra.trace_stats') > $failed_before },
		30),
	'dead endpoint: the attempt fails and is counted');
like($node->safe_psql('postgres', 'SELECT last_error FROM infra.trace_stats'), qr/onnect|refused/i,
	'with the connection error');
cmp_ok($node->safe_psql('postgres', 'SELECT queued FROM infra.trace_stats'), '>=', 1, 'the span stays queued');
receiver_start('200');
ok(wait_until(sub { grep { $_->{name} eq 'while down' } spans_of(requests()) }, 60),
	'delivered once the collector is back');

# A full ring drops and counts; the statements never wait.
receiver_stop();
my $dropped_before = $node->safe_psql('postgres', 'SELECT dropped FROM infra.trace_stats');
my $t0 = time();
$node->safe_psql('postgres', q{SELECT infra.span_end(infra.span_start('flood ' || i)) FROM generate_series(1, 200) i});
my $elapsed = time() - $t0;
cmp_ok($node->safe_psql('postgres', 'SELECT dropped FROM infra.trace_stats') - $dropped_before, '>=', 200 - 64,
	'spans past the ring (64) are dropped and counted');
cmp_ok($elapsed, '<', 5, sprintf('200 spans with a dead collector took %.2f s', $elapsed));
like($node->safe_psql('postgres', 'SELECT infra.metrics_prometheus()'), qr/^infra_trace_spans_dropped_total [1-9]\d*$/m,
	'drops are in /metrics');

# The "otlp" breaker (infra's own, not everyone's "network") guards the
# exporter: it opens after failures.
$node->safe_psql('postgres', q{INSERT INTO infra.circuit_breakers (name, window_size, minimum_calls, open_duration)
  VALUES ('otlp', 2, 2, '1 hour')
  ON CONFLICT (name) DO UPDATE SET window_size = 2, minimum_calls = 2, open_duration = '1 hour'});
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				q{SELECT state FROM infra.circuit_breaker_state WHERE name = 'otlp'}) eq 'open';
		},
		90),
	'the otlp breaker opens on export failures');
my $attempts = $node->safe_psql('postgres', 'SELECT failed_exports FROM infra.trace_stats');
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				q{SELECT rejected_total FROM infra.circuit_breaker_state WHERE name = 'otlp'}) > 0;
		},
		90),
	'while it is open, the exporter asks and is refused');
is($node->safe_psql('postgres', 'SELECT failed_exports FROM infra.trace_stats'), $attempts,
	'no request was made meanwhile');

$node->stop;
receiver_stop();
done_testing();
