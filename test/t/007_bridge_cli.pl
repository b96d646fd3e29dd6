# infra-bridge skeleton: command line and configuration file handling.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bridge = 'infra-bridge';
my $dir = PostgreSQL::Test::Utils::tempdir;

sub bridge
{
	my @args = @_;
	my ($out, $err);
	IPC::Run::run([ $bridge, @args ], '>', \$out, '2>', \$err, IPC::Run::timeout(30));
	return ($? >> 8, $out, $err);
}

my ($rc, $out, $err) = bridge('--version');
is($rc, 0, '--version exits 0');
like($out, qr/^infra-bridge 1\.0 \(librdkafka \d+\.\d+\.\d+, libpq \d+\)$/,
	'--version names the bridge and its libraries');

($rc, $out, $err) = bridge('--help');
is($rc, 0, '--help exits 0');
like($out, qr/--config FILE/, '--help documents --config');

($rc, $out, $err) = bridge();
is($rc, 2, 'no --config is a usage error');
like($err, qr/no configuration file given/, 'and says so');

($rc, $out, $err) = bridge('--bogus');
is($rc, 2, 'an unknown option is a usage error');

($rc, $out, $err) = bridge('--config', "$dir/missing.ini");
is($rc, 1, 'a missing file fails');
like($err, qr/cannot open configuration file ".*missing\.ini"/, 'and names the file');

append_to_file("$dir/good.ini",
	"; example\n[bridge]\nconninfo = dbname=app password=s3cret\nbrokers = 127.0.0.1:1\ngroup = g1\n");
($rc, $out, $err) = bridge('--config', "$dir/good.ini");
is($rc, 0, 'a valid file is accepted and the skeleton exits cleanly');
like($err, qr/brokers 127\.0\.0\.1:1, group g1/, 'settings from the file are used');
unlike($err, qr/s3cret/, 'the conninfo (it may hold a password) is not logged');

append_to_file("$dir/unknown.ini", "[bridge]\nbrokers = x:1\nbrokres = y:2\n");
($rc, $out, $err) = bridge('--config', "$dir/unknown.ini");
is($rc, 1, 'an unknown key fails');
like($err, qr/unknown\.ini:3: unknown key "brokres" in section \[bridge\]/,
	'with file, line and key');

append_to_file("$dir/level.ini", "[bridge]\nlog_level = loud\n");
($rc, $out, $err) = bridge('--config', "$dir/level.ini");
is($rc, 1, 'a bad log_level fails');
like($err, qr/log_level "loud" is not one of/, 'and lists the valid levels');

append_to_file("$dir/syntax.ini", "[bridge\nbrokers = x:1\n");
($rc, $out, $err) = bridge('--config', "$dir/syntax.ini");
is($rc, 1, 'a syntax error fails');
like($err, qr/syntax\.ini:1: /, 'at the right line');

done_testing();
