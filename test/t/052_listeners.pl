# The /metrics listeners of the extension and of infra-bridge hold: with
# hundreds of idle connections and a hundred slow ones (a byte every half
# second, never finishing their request), real scrapes are still answered
# within a second; one host flooding with more connections than the whole
# limit (600 > 512) keeps at most its per-client share; a request dripping
# a byte a second is cut at its deadline; a real Prometheus scraping both
# every second through all of it misses no scrape; oversized request lines
# and headers are refused; methods other than GET and HEAD get 405; the
# endpoint answers afterwards.  The attackers connect from 127.0.0.2 and
# 127.0.0.3 (loopback, other hosts to the listener); scrapes come from
# 127.0.0.1.
use strict;
use warnings;

use HTTP::Tiny;
use JSON::PP;
use IO::Socket::INET;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $node = infra_node('listeners', conf => <<"CONF");
infra.database = 'postgres'
infra.metrics_listen = '127.0.0.1:$port'
CONF
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra; CREATE TABLE public.sink (payload jsonb)');

my $bport = PostgreSQL::Test::Cluster::get_free_port();
my $ini = "$dir/bridge.ini";
open my $fh, '>', $ini or die;
print $fh <<"INI";
[bridge]
conninfo = @{[ $node->connstr('postgres') ]}
brokers = $bootstrap
group = listeners_$$
metrics_listen = 127.0.0.1:$bport

[route r]
topics = listeners_$$
table = sink
format = json
column = payload
INI
close $fh;
my $blog = "$dir/bridge.log";
my $bridge = bridge_spawn($ini, $blog);

# A real Prometheus scraping both listeners every second, from 127.0.0.1.
my $pport = PostgreSQL::Test::Cluster::get_free_port();
open $fh, '>', "$dir/prometheus.yml" or die;
print $fh <<"YML";
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: infra
    static_configs:
      - targets: ['127.0.0.1:$port']
  - job_name: infra-bridge
    static_configs:
      - targets: ['127.0.0.1:$bport']
YML
close $fh;
my $prom = IPC::Run::start(
	[
		'prometheus', "--config.file=$dir/prometheus.yml",
		"--storage.tsdb.path=$dir/prometheus", "--web.listen-address=127.0.0.1:$pport"
	],
	'>', "$dir/prometheus.log", '2>&1');
END { $prom->kill_kill if $prom; }

# One value of a PromQL query (undef when none).
sub prom_value
{
	my ($q) = @_;
	my $r = HTTP::Tiny->new(timeout => 5)->get("http://127.0.0.1:$pport/api/v1/query?query=" . $q);
	return undef unless $r->{success};
	my $data = eval { decode_json($r->{content}) } or return undef;
	my $result = $data->{data}{result};
	return @$result ? $result->[0]{value}[1] : undef;
}

# A connection from another loopback address (another host to the listener).
sub connect_from
{
	my ($from, $p) = @_;
	return IO::Socket::INET->new(LocalAddr => $from, PeerAddr => '127.0.0.1', PeerPort => $p, Proto => 'tcp');
}

# How many of these sockets the server has closed (EOF or reset).
sub closed_by_server
{
	my $n = 0;
	for my $s (@_)
	{
		$s->blocking(0);
		my $got = sysread($s, my $buf, 4096);
		$n++ if (defined $got && $got == 0) || (!defined $got && !$!{EAGAIN});
	}
	return $n;
}

# One scrape on a new connection: (status, seconds it took).
sub scrape
{
	my ($p) = @_;
	my $t0 = time();
	my $r = HTTP::Tiny->new(timeout => 5, keep_alive => 0)->get("http://127.0.0.1:$p/metrics");
	return ($r->{status}, time() - $t0);
}

# Send raw bytes, return whatever comes back before the server closes or
# two seconds pass.
sub raw
{
	my ($p, $bytes) = @_;
	my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $p, Proto => 'tcp')
	  or return '';
	local $SIG{PIPE} = 'IGNORE';
	syswrite($s, $bytes);
	my $got = '';
	my $deadline = time() + 2;
	$s->blocking(0);
	while (time() < $deadline)
	{
		my $n = sysread($s, my $chunk, 65536);
		last if defined $n && $n == 0;
		$got .= $chunk if $n;
		usleep(20_000);
	}
	close $s;
	return $got;
}

sub attack
{
	my ($p, $label) = @_;

	ok(wait_until(sub { (scrape($p))[0] == 200 }, 30), "$label: /metrics answers");

	my @idle = grep { defined } map { connect_from("127.0.0.$_", $p) } map { 10 + $_ % 20 } 1 .. 300;
	is(scalar @idle, 300, "$label: 300 idle connections are open, from 20 hosts");
	my @slow = grep { defined } map { connect_from("127.0.0.$_", $p) } map { 40 + $_ % 10 } 1 .. 100;
	is(scalar @slow, 100, "$label: 100 slow connections are open, from 10 hosts");
	local $SIG{PIPE} = 'IGNORE';
	syswrite($_, "GET /metrics HTTP/1.1\r\nX-Slow: ") for @slow;

	my ($worst, $failures) = (0, 0);
	for my $round (1 .. 8)
	{
		syswrite($_, 'a') for @slow;
		my ($status, $took) = scrape($p);
		$failures++ if $status != 200;
		$worst = $took if $took > $worst;
		usleep(500_000);
	}
	is($failures, 0, "$label: every scrape during the slow trickle got 200");
	cmp_ok($worst, '<', 1.0, "$label: every scrape answered within a second (worst ${worst}s)");

	like(raw($p, 'GET /' . ('a' x 100_000) . " HTTP/1.1\r\nHost: x\r\n\r\n"),
		qr{^(HTTP/1\.[01] 4\d\d|)$|^HTTP/1\.[01] 4\d\d}s, "$label: a 100 kB request line is refused");
	like(raw($p, "GET /metrics HTTP/1.1\r\nHost: x\r\n" . join('', map { "X-H$_: " . ('b' x 1000) . "\r\n" } 1 .. 100) . "\r\n"),
		qr{^(HTTP/1\.[01] 4\d\d|)$|^HTTP/1\.[01] 4\d\d}s, "$label: 100 kB of headers are refused");
	for my $method (qw(POST PUT DELETE PATCH OPTIONS))
	{
		my $r = HTTP::Tiny->new(timeout => 5)->request($method, "http://127.0.0.1:$p/metrics",
			{ content => 'x' x 10 });
		is($r->{status}, 405, "$label: $method gets 405");
	}

	my ($status, $took) = scrape($p);
	is($status, 200, "$label: /metrics still answers with the attackers connected");
	close $_ for @idle, @slow;
	($status, $took) = scrape($p);
	is($status, 200, "$label: and after they left");

	# One host floods past the whole limit: it keeps its share, no more.
	my @flood = grep { defined } map { connect_from('127.0.0.2', $p) } 1 .. 600;
	is(scalar @flood, 600, "$label: 600 connections from one host");
	sleep 1;
	($status, $took) = scrape($p);
	is($status, 200, "$label: a scrape from another host is answered meanwhile");
	cmp_ok($took, '<', 1.0, "$label: within a second (${took}s)");
	cmp_ok(600 - closed_by_server(@flood), '<=', 32, "$label: the flooding host keeps at most 32 of them");
	close $_ for @flood;

	# Slowloris: a request that drips a byte a second is never silent, but
	# it is cut once it is 5 s old.
	my @drip = grep { defined } map { connect_from('127.0.0.3', $p) } 1 .. 20;
	syswrite($_, "GET /metrics HTTP/1.1\r\nX-Drip: ") for @drip;
	my $cut_after;
	my $t0 = time();
	for my $second (1 .. 12)
	{
		syswrite($_, 'a') for @drip;
		sleep 1;
		if (closed_by_server(@drip) == 20) { $cut_after = time() - $t0; last; }
	}
	ok(defined $cut_after, "$label: every dripping request is cut" . (defined $cut_after ? sprintf(' (after %.1f s)', $cut_after) : ''));
	close $_ for @drip;
}

ok(wait_until(sub { (prom_value('min(up)') // '') eq '1' }, 60), 'Prometheus scrapes both listeners')
  or diag(slurp_file("$dir/prometheus.log"));
my $attack_start = time();
attack($port, 'extension');
attack($bport, 'bridge');
my $window = int(time() - $attack_start) + 1;
sleep 2;
# Every scrape during the attacks succeeded, on time (interval 1 s, timeout 1 s).
is(prom_value("min(min_over_time(up[${window}s]))"), '1', "no scrape failed during the attacks (${window} s)");
cmp_ok(prom_value("min(count_over_time(up[${window}s]))"), '>=', int($window * 0.8),
	'and Prometheus kept its schedule (a sample nearly every second for each)');
cmp_ok(prom_value("max(max_over_time(scrape_duration_seconds[${window}s]))"), '<', 1.0,
	'no scrape took a second');
my @started = slurp_file($node->logfile) =~ /infra metrics server listening/g;
is(scalar @started, 1, 'the metrics server never had to be restarted');
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process of the server crashed');
$bridge->signal('TERM');
$bridge->finish;
is($bridge->result(0), 0, 'the bridge exits cleanly after the attack');

done_testing();
