# Secrets stay secret: infra.kafka_config, set inline, from a file, with
# ALTER SYSTEM and in postgresql.conf, valid and invalid, and the bridge's
# conninfo password, appear in no log line, error, settings view, /metrics,
# worker_status.last_error, query metrics or process title.
use strict;
use warnings;

use HTTP::Tiny;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $dir = PostgreSQL::Test::Utils::tempdir;
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $node = infra_node('secrets', conf => <<"CONF");
infra.database = 'postgres'
infra.kafka_brokers = '$bootstrap'
infra.metrics_listen = '127.0.0.1:$port'
CONF
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
$node->safe_psql('postgres', 'CREATE ROLE watcher LOGIN IN ROLE pg_monitor; CREATE ROLE app LOGIN');

my @secrets = qw(S3cretInline S3cretTypo S3cretAcks S3cretConf S3cretConfBad S3cretFile
  S3cretFileBad S3cretBridge S3cretBridgeTypo);

# Run SQL as ROLE (undef: the superuser); returns stdout and stderr together.
sub as_role
{
	my ($role, $sql) = @_;
	my ($out, $err) = ('', '');
	$node->psql('postgres', $sql, stdout => \$out, stderr => \$err, on_error_stop => 0,
		extra_params => [ ($role ? ('-U', $role) : ()), '-v', 'VERBOSITY=verbose' ]);
	return "$out\n$err";
}

sub reload_and_wait
{
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	sleep 1;
}

my $seen = '';

# --- valid settings: inline with ALTER SYSTEM, from a file, in postgresql.conf --
$seen .= as_role(undef,
	"ALTER SYSTEM SET infra.kafka_config = 'sasl.username=u; sasl.password=S3cretInline'");
reload_and_wait();
$node->safe_psql('postgres', "SELECT infra.kafka_send('secrets_t_$$', 'after inline')");
is($node->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')"), 't',
	'the producer works with the inline configuration');
is($node->safe_psql('postgres', 'SHOW infra.kafka_config'), '(hidden)',
	'SHOW gives (hidden) to a superuser');
is(as_role('watcher', 'SHOW infra.kafka_config') =~ /\(hidden\)/ ? 1 : 0, 1,
	'SHOW gives (hidden) to pg_read_all_settings');

my $file = "$dir/kafka.properties";
open my $fh, '>', $file or die;
print $fh "# producer secrets\nsasl.username = u\nsasl.password = S3cretFile\n";
close $fh;
chmod 0600, $file;
$seen .= as_role(undef, "ALTER SYSTEM SET infra.kafka_config = '\@$file'");
reload_and_wait();

$node->append_conf('postgresql.conf', "infra.kafka_config = 'sasl.password=S3cretConf'\n");
$seen .= as_role(undef, 'ALTER SYSTEM RESET infra.kafka_config');
reload_and_wait();

# --- invalid settings: the errors must not quote them ----------------------------
$seen .= as_role(undef, "ALTER SYSTEM SET infra.kafka_config = 'sasl.password S3cretTypo'");
like($seen, qr/42602|22023|invalid value for parameter "infra\.kafka_config"/,
	'a property without "=" is refused');
$seen .= as_role(undef, "ALTER SYSTEM SET infra.kafka_config = 'acks=S3cretAcks'");
like($seen, qr/librdkafka refused property "acks"/,
	'librdkafka\'s refusal names the property (its value is checked below)');
open $fh, '>', "$dir/bad.properties" or die;
print $fh "sasl.username = u\nS3cretFileBad\n";
close $fh;
$seen .= as_role(undef, "ALTER SYSTEM SET infra.kafka_config = '\@$dir/bad.properties'");
like($seen, qr/Property 2 has no "="/, 'a bad line of the file is named by its number');
$node->append_conf('postgresql.conf', "infra.kafka_config = 'acks=S3cretConfBad'\n");
reload_and_wait();
like(slurp_file($node->logfile), qr/invalid value for parameter "infra\.kafka_config"/,
	'a bad value in postgresql.conf is reported at reload');
$node->safe_psql('postgres', "SELECT infra.kafka_send('secrets_t_$$', 'after bad reload')");
is($node->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')"),
	't', 'the producer keeps working after a refused reload');

# --- every place a secret could show -------------------------------------------------
$seen .= as_role('watcher', q{
SELECT * FROM pg_settings WHERE name LIKE 'infra.%';
SELECT current_setting('infra.kafka_config');
SELECT * FROM pg_file_settings;
SELECT * FROM infra.worker_status;
SELECT * FROM infra.kafka_stats;
SELECT query FROM infra.query_metrics;
SELECT query FROM pg_stat_activity;
});
$seen .= as_role(undef, q{
SELECT * FROM pg_settings WHERE name LIKE 'infra.%';
SELECT * FROM infra.worker_status;
SELECT * FROM infra.kafka_stats;
SELECT infra.metrics_prometheus();
});
$seen .= as_role('app', q{
SELECT * FROM pg_settings WHERE name LIKE 'infra.%';
SELECT current_setting('infra.kafka_config');
SELECT query FROM infra.query_metrics;
});
my $http = HTTP::Tiny->new(timeout => 10);
$seen .= $http->get("http://127.0.0.1:$port/metrics")->{content} // '';

# --- the bridge's conninfo password ---------------------------------------------------
$node->safe_psql('postgres', 'CREATE TABLE public.sink_t (payload jsonb)');
my $btopic = "secrets_b_$$";
kafka_create_topic($btopic, 1);
my $bport = PostgreSQL::Test::Cluster::get_free_port();
my $connstr = $node->connstr('postgres') . ' password=S3cretBridge';
my $ini = "$dir/bridge.ini";
open $fh, '>', $ini or die;
print $fh <<"INI";
[bridge]
conninfo = $connstr
brokers = $bootstrap
group = secrets_$$
log_level = debug
metrics_listen = 127.0.0.1:$bport

[route r]
topics = $btopic
table = sink_t
format = json
column = payload
INI
close $fh;
my $blog = "$dir/bridge.log";
my $bridge = bridge_spawn($ini, $blog);
ok(wait_until(sub { -s $blog && slurp_file($blog) =~ /connected to PostgreSQL/ }, 30),
	'the bridge connects with a password in its conninfo');
$seen .= $http->get("http://127.0.0.1:$bport/metrics")->{content} // '';
{
	my ($ps, $perr);
	IPC::Run::run([ 'ps', '-eo', 'args' ], '>', \$ps, '2>', \$perr);
	$seen .= $ps;
	like($ps, qr/infra-bridge --config/, 'the process list shows the bridge');
	like($ps, qr/infra worker/, 'the process list shows the infra worker');
}
$bridge->signal('TERM');
$bridge->finish;
$seen .= slurp_file($blog);

# A conninfo that libpq cannot parse: its message quotes the bad piece.
open $fh, '>', "$dir/bad_bridge.ini" or die;
print $fh "[bridge]\nconninfo = host=127.0.0.1 password=x S3cretBridgeTypo\n[route r]\ntopics = t\ntable = sink_t\n";
close $fh;
{
	my ($out, $err);
	IPC::Run::run([ 'infra-bridge', '--check-config', '--config', "$dir/bad_bridge.ini" ],
		'>', \$out, '2>', \$err);
	like("$out$err", qr/invalid conninfo: missing \\?"=\\?" after \\?"\(hidden\)\\?"/,
		'a bad conninfo is reported with the quoted piece hidden');
	$seen .= "$out$err";
}

$seen .= slurp_file($node->logfile);
for my $secret (@secrets)
{
	unlike($seen, qr/\Q$secret\E/, "$secret appears nowhere");
}
like(slurp_file($node->logfile), qr/parameter "infra\.kafka_config" changed to "\(hidden\)"/,
	'a reload logs that infra.kafka_config changed, not to what');

done_testing();
