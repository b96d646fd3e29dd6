# The harness's real Kafka broker: a produce/consume round trip with kcat,
# and the fault commands later tests rely on (pause, resume, SIGKILL, start).
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $topic = "infra_t_roundtrip_$$";

sub kcat
{
	my ($input, @args) = @_;
	my ($stdout, $stderr);
	my $ok = IPC::Run::run([ 'kcat', '-b', $bootstrap, @args ],
		'<', \$input, '>', \$stdout, '2>', \$stderr, IPC::Run::timeout(60));
	return ($ok, $stdout, $stderr);
}

sub metadata_ok
{
	my ($ok) = kcat('', '-L', '-m', '3');
	return $ok;
}

ok(metadata_ok(), 'broker answers metadata requests');

my $messages = "k1:hello\nk2:from\nk1:infra\n";
my ($ok, $out, $err) = kcat($messages, '-P', '-t', $topic, '-K', ':');
ok($ok, 'kcat produces three keyed messages') or diag $err;

($ok, $out, $err) = kcat('', '-C', '-t', $topic, '-o', 'beginning', '-e',
	'-f', '%k:%s\n');
ok($ok, 'kcat consumes the topic') or diag $err;
is($out, $messages, 'messages come back in order, with keys');

# A paused (SIGSTOP) broker does not answer; resumed, it does.
ok(kafka_ctl('pause'), 'broker paused');
ok(!metadata_ok(), 'a paused broker does not answer');
ok(kafka_ctl('resume'), 'broker resumed');
ok(wait_until(\&metadata_ok, 60), 'a resumed broker answers again');

# A killed (SIGKILL) broker is gone; started again on the same data and
# address, it still has what it acknowledged.
ok(kafka_ctl('kill'), 'broker killed');
ok(!metadata_ok(), 'a killed broker does not answer');
ok(kafka_ctl('start'), 'broker started again after the kill');
($ok, $out, $err) = kcat('', '-C', '-t', $topic, '-o', 'beginning', '-e',
	'-f', '%k:%s\n');
is($out, $messages, 'acknowledged messages survive the crash');
ok(kafka_ctl('status'), 'status reports the broker as up');

done_testing();
