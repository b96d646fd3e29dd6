# The /metrics listeners of the extension and of infra-bridge hold: with
# hundreds of idle connections and a hundred slow ones (a byte every half
# second, never finishing their request), real scrapes are still answered
# within a second; oversized request lines and headers are refused; methods
# other than GET and HEAD get 405; the endpoint answers afterwards.
use strict;
use warnings;

use HTTP::Tiny;
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

	my @idle = grep { defined }
	  map { IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $p, Proto => 'tcp') } 1 .. 300;
	is(scalar @idle, 300, "$label: 300 idle connections are open");
	my @slow = grep { defined }
	  map { IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $p, Proto => 'tcp') } 1 .. 100;
	is(scalar @slow, 100, "$label: 100 slow connections are open");
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
}

attack($port, 'extension');
attack($bport, 'bridge');
my @started = slurp_file($node->logfile) =~ /infra metrics server listening/g;
is(scalar @started, 1, 'the metrics server never had to be restarted');
unlike(slurp_file($node->logfile), qr/terminated by signal/, 'no process of the server crashed');
$bridge->signal('TERM');
$bridge->finish;
is($bridge->result(0), 0, 'the bridge exits cleanly after the attack');

done_testing();
