# The librdkafka mock cluster host (test/mock/mock_cluster): for faults a real
# broker cannot make on demand.  Proves it serves clients and injects errors.
use strict;
use warnings;

use IPC::Run qw(start pump finish timeout);
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $mock = src_path('test/mock/mock_cluster');
plan skip_all => "mock host not built ($mock)" unless -x $mock;

my ($in, $out, $err) = ('', '', '');
my $t = timeout(30);
my $h = start([ $mock, '3' ], '<', \$in, '>', \$out, '2>', \$err, $t);

sub command
{
	my ($line) = @_;
	$out = '';
	$in .= "$line\n";
	pump $h until $out =~ /^(ok|error)[^\n]*\n/m || $t->is_expired;
	return $out;
}

pump $h until $out =~ /^bootstrap (\S+)$/m || $t->is_expired;
my ($bootstrap) = $out =~ /^bootstrap (\S+)$/m;
ok($bootstrap, "mock cluster prints its bootstrap servers ($bootstrap)");

sub kcat
{
	my ($input, @args) = @_;
	my ($o, $e);
	my $ok = IPC::Run::run([ 'kcat', '-b', $bootstrap, @args ],
		'<', \$input, '>', \$o, '2>', \$e, timeout(30));
	return ($ok, $o, $e);
}

my ($ok, $o, $e) = kcat('', '-L', '-m', '5');
ok($ok, 'kcat reads metadata from the mock cluster');
like($o, qr/3 brokers:/, 'the mock cluster has the three brokers asked for');

($ok, $o, $e) = kcat("one\n", '-P', '-t', 'mocked', '-X', 'message.send.max.retries=0');
ok($ok, 'produce succeeds with no fault injected') or diag $e;

# Inject a permanent produce error on the next request.
like(command('produce-error 1 MSG_SIZE_TOO_LARGE'), qr/^ok/m, 'error injection accepted');
($ok, $o, $e) = kcat("two\n", '-P', '-t', 'mocked', '-X', 'message.send.max.retries=0');
like($e, qr/Message size too large|MSG_SIZE_TOO_LARGE/i,
	'the injected error reaches the producer');

like(command('produce-error 1 NO_SUCH_ERROR'), qr/^error/m, 'an unknown error name is refused');
like(command('bogus'), qr/^error/m, 'an unknown command is refused');
like(command('quit'), qr/^ok/m, 'quit is acknowledged');
ok(finish($h), 'mock host exits with status 0');

done_testing();
