# infra-bridge: command line and configuration file handling (no broker,
# no database: --check-config and the errors that come before them).
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
like($out, qr/^infra-bridge 1\.2 \(librdkafka \d+\.\d+\.\d+, libpq \d+\)$/,
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
like($err, qr/cannot open configuration file \\".*missing\.ini\\"/, 'and names the file');

append_to_file("$dir/good.ini",
	"; example\n[bridge]\nconninfo = dbname=app password=s3cret\nbrokers = 127.0.0.1:1\ngroup = g1\n"
	  . "log_level = debug\n[kafka]\nfetch.max.bytes = 1048576\n[route orders]\ntopics = shop.orders, ^shop\\..*\ntable = public.orders\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/good.ini");
is($rc, 0, '--check-config accepts a valid file and exits 0');
like($out, qr/configuration ".*good\.ini" is valid: 1 routes, group "g1", brokers 127\.0\.0\.1:1/,
	'settings from the file are used');
unlike("$out$err", qr/s3cret/, 'the conninfo (it may hold a password) is never shown');

append_to_file("$dir/noroute.ini", "[bridge]\ngroup = g1\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/noroute.ini");
is($rc, 1, 'a file without routes fails');
like($err, qr/no \[route NAME\] section/, 'and says what is missing');

append_to_file("$dir/badkafka.ini", "[kafka]\nfetch.max.bytes = lots\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/badkafka.ini");
is($rc, 1, 'a librdkafka property librdkafka refuses fails');
like($err, qr/badkafka\.ini:2: \[kafka\] fetch\.max\.bytes: /, 'with librdkafka\'s reason');

append_to_file("$dir/coop.ini", "[kafka]\npartition.assignment.strategy = cooperative-sticky\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/coop.ini");
is($rc, 1, 'cooperative assignment is refused (offsets live in PostgreSQL)');

append_to_file("$dir/badroute.ini", "[route r]\ntopics = t\ntable = x\nformat = xml\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/badroute.ini");
is($rc, 1, 'an unknown format fails');
like($err, qr/format \\"xml\\" in section \[route r\] is not one of json, json_columns, text, bytea/, 'listing the formats');

# Avro: a registry is needed; encoding is for format = debezium.
append_to_file("$dir/avro_noreg.ini", "[route r]\ntopics = t\ntable = x\nformat = avro\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/avro_noreg.ini");
is($rc, 1, 'format = avro without schema_registry fails');
like($err, qr/route \\"r\\" reads Avro: \[bridge\] needs schema_registry/, 'and says what is missing');
append_to_file("$dir/avro_file.ini", "[bridge]\nschema_registry = file:///etc\n[route r]\ntopics = t\ntable = x\nformat = avro\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/avro_file.ini");
is($rc, 1, 'a schema_registry that is not an http(s) URL fails');
like($err, qr/needs schema_registry, the registry's http:\/\/ or https:\/\/ URL/, 'and says which URLs');
append_to_file("$dir/avro_ok.ini",
	"[bridge]\nschema_registry = http://u:secret\@127.0.0.1:1/apis/ccompat/v6\n[route r]\ntopics = t\ntable = x\nformat = avro\n"
	  . "[route d]\ntopics = u\ntable = y\nformat = debezium\nencoding = avro\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/avro_ok.ini");
is($rc, 0, 'format = avro and debezium with encoding = avro, with a registry, pass') or diag($err);
unlike($out . $err, qr/secret/, 'the registry URL (it may hold a password) is not printed');
append_to_file("$dir/avro_enc.ini",
	"[bridge]\nschema_registry = http://127.0.0.1:1\n[route r]\ntopics = t\ntable = x\nformat = json_columns\nencoding = avro\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/avro_enc.ini");
is($rc, 1, 'encoding on a route that is not format = debezium fails');
like($err, qr/encoding apply to format = debezium only \(format = avro reads Avro records onto columns\)/,
	'and points at format = avro');
append_to_file("$dir/avro_bad.ini", "[route r]\ntopics = t\ntable = x\nformat = debezium\nencoding = protobuf\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/avro_bad.ini");
is($rc, 1, 'an unknown encoding fails');
like($err, qr/encoding \\"protobuf\\" in section \[route r\] is not one of json, avro/, 'listing the encodings');

append_to_file("$dir/upsert.ini", "[route r]\ntopics = t\ntable = x\nmode = upsert\n");
($rc, $out, $err) = bridge('--check-config', '--config', "$dir/upsert.ini");
is($rc, 1, 'upsert without key columns fails');
like($err, qr/mode = upsert without key_columns/, 'and says so');

append_to_file("$dir/unknown.ini", "[bridge]\nbrokers = x:1\nbrokres = y:2\n");
($rc, $out, $err) = bridge('--config', "$dir/unknown.ini");
is($rc, 1, 'an unknown key fails');
like($err, qr/unknown\.ini:3: unknown key \\"brokres\\" in section \[bridge\]/,
	'with file, line and key');

append_to_file("$dir/level.ini", "[bridge]\nlog_level = loud\n");
($rc, $out, $err) = bridge('--config', "$dir/level.ini");
is($rc, 1, 'a bad log_level fails');
like($err, qr/log_level \\"loud\\" is not one of/, 'and lists the valid levels');

append_to_file("$dir/syntax.ini", "[bridge\nbrokers = x:1\n");
($rc, $out, $err) = bridge('--config', "$dir/syntax.ini");
is($rc, 1, 'a syntax error fails');
like($err, qr/syntax\.ini:1: /, 'at the right line');

# Each ```ini block of docs/bridge.md is a valid configuration (a route
# alone gets the [bridge] defaults).
{
	my @blocks = slurp_file(src_path('docs/bridge.md')) =~ /^```ini\n(.*?)^```$/msg;
	cmp_ok(scalar @blocks, '>=', 3, 'docs/bridge.md has ini examples');
	for my $k (0 .. $#blocks)
	{
		append_to_file("$dir/doc$k.ini", $blocks[$k]);
		($rc, $out, $err) = bridge('--check-config', '--config', "$dir/doc$k.ini");
		is($rc, 0, "docs/bridge.md's ini example " . ($k + 1) . ' passes --check-config') or diag("$blocks[$k]$err");
	}
}

# The documented example configuration is valid as shipped.
($rc, $out, $err) = bridge('--check-config', '--config', src_path('bridge/infra-bridge.ini.example'));
is($rc, 0, 'bridge/infra-bridge.ini.example passes --check-config') or diag($err);
like($out, qr/3 routes/, 'with its three routes');

done_testing();
