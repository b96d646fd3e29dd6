# InfraTest: helpers shared by infra's TAP tests.
#
# Nodes are PostgreSQL::Test::Cluster instances with infra preloaded; the
# Kafka helpers drive the broker that test/run.sh started (INFRA_KAFKA_DIR),
# so that fault tests can stop, kill, pause and resume a real broker.
package InfraTest;

use strict;
use warnings;

use IPC::Run;

use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT = qw(infra_node worker_pid worker_status wait_until kafka_bootstrap kafka_ctl
  kafka_create_topic kafka_consume bridge_spawn slurp_log_since src_path plugins_conf kafka_cluster
  kafka_cluster_leaders kafka_cluster_kill_leader bridge_ini);

# Path of a file in the test copy of the source tree.
sub src_path
{
	my ($rel) = @_;
	my $src = $ENV{INFRA_SRC} // die "INFRA_SRC is not set: run through test/run.sh\n";
	return "$src/$rel";
}

# infra_node(NAME, preload => 1, conf => "extra lines", init => {...},
# install_path => DIR): an initialised, not yet started node (init:
# PostgreSQL::Test::Cluster's init options, e.g. allows_streaming => 1;
# install_path: the PostgreSQL installation to run, else the one on PATH).
sub infra_node
{
	my ($name, %opts) = @_;
	my $preload = $opts{preload} // 1;
	my $node = PostgreSQL::Test::Cluster->new($name,
		$opts{install_path} ? (install_path => $opts{install_path}) : ());
	$node->init(%{ $opts{init} // {} });
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'infra'\n") if $preload;
	$node->append_conf('postgresql.conf', "max_worker_processes = 24\n");
	$node->append_conf('postgresql.conf', $opts{conf}) if $opts{conf};
	return $node;
}

# Pid of the infra worker serving DATABASE, from pg_stat_activity
# (empty string when none runs).  Queries go to the "postgres" database.
sub worker_pid
{
	my ($node, $database) = @_;
	return $node->safe_psql('postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'infra worker' "
		  . "AND datname = '$database'");
}

# COLUMN of infra.worker_status for DATABASE's worker, read from "postgres"
# (where the test must have created the extension); '' for NULL.
sub worker_status
{
	my ($node, $database, $column) = @_;
	return $node->safe_psql('postgres',
		"SELECT $column FROM infra.worker_status WHERE database = '$database'");
}

# wait_until(CODE, TIMEOUT_SECONDS): poll CODE every 100 ms until it returns
# true; returns whether it did within the timeout.
sub wait_until
{
	my ($code, $timeout) = @_;
	my $deadline = time() + ($timeout // 60);
	while (time() < $deadline)
	{
		return 1 if $code->();
		usleep(100_000);
	}
	return 0;
}

# The log of NODE from byte OFFSET on.
sub slurp_log_since
{
	my ($node, $offset) = @_;
	return substr(slurp_file($node->logfile), $offset // 0);
}

# host:port of the test broker.
sub kafka_bootstrap
{
	my $b = $ENV{INFRA_KAFKA_BOOTSTRAP}
	  // die "INFRA_KAFKA_BOOTSTRAP is not set: run through test/run.sh\n";
	return $b;
}

# kafka_ctl(start|stop|kill|pause|resume|status): drive the test broker;
# returns true when the command succeeded.
sub kafka_ctl
{
	my ($cmd) = @_;
	my $dir = $ENV{INFRA_KAFKA_DIR} // die "INFRA_KAFKA_DIR is not set\n";
	return system(src_path('test/kafka/broker.sh'), $cmd, $dir) == 0;
}

# kafka_consume(TOPIC, FORMAT): every message of TOPIC on the test broker,
# from the beginning, each as the list of its fields: kcat's -f FORMAT,
# fields separated by tabs, a line a message.
sub kafka_consume
{
	my ($topic, $format) = @_;
	my ($out, $err);
	IPC::Run::run(
		[ 'kcat', '-b', kafka_bootstrap(), '-C', '-t', $topic, '-o', 'beginning', '-e', '-q',
		  '-f', $format ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(120));
	return map { [ split /\t/, $_, -1 ] } split /\n/, $out;
}

# kafka_create_topic(TOPIC, PARTITIONS): create a topic on the test broker.
sub kafka_create_topic
{
	my ($topic, $partitions) = @_;
	my $dir = $ENV{INFRA_KAFKA_DIR} // die "INFRA_KAFKA_DIR is not set\n";
	system(src_path('test/kafka/broker.sh'), 'create-topic', $dir, $topic, $partitions) == 0
	  or die "cannot create topic $topic";
}

# bridge_spawn(INI, LOG): start infra-bridge on a configuration file, its
# output appended to LOG; returns the IPC::Run harness.
sub bridge_spawn
{
	my ($ini, $log) = @_;
	return IPC::Run::start([ 'infra-bridge', '--config', $ini ], '<', \undef, '>>', $log, '2>>', $log);
}

# bridge_ini(FILE, CONNINFO, GROUP, ROUTES, BATCH_SIZE, BATCH_DELAY_MS[, MORE]):
# write an infra-bridge configuration for a test and return FILE: [bridge]
# on the test broker with that group, batch limits and log_level debug
# (MORE: further [bridge] lines), [kafka] with session.timeout.ms = 6000
# (a SIGKILLed member's partitions move on within seconds), then ROUTES,
# the text of the route sections.
sub bridge_ini
{
	my ($file, $conninfo, $group, $routes, $batch, $delay, $more) = @_;
	my $bootstrap = kafka_bootstrap();
	open my $fh, '>', $file or die "cannot write $file: $!";
	print $fh "[bridge]\nconninfo = $conninfo\nbrokers = $bootstrap\ngroup = $group\nbatch_size = $batch\n"
	  . "batch_delay_ms = $delay\nlog_level = debug\n"
	  . ($more // '')
	  . "\n[kafka]\nsession.timeout.ms = 6000\n\n$routes";
	close $fh;
	return $file;
}

# plugins_conf([POSTGRES]): the postgresql.conf line the WAL outbox needs
# where the server lists trusted output plugins (output_plugin_libraries,
# in the 15.20 and 18 builds here), else ''.  POSTGRES: the server binary
# (default: postgres on PATH).
sub plugins_conf
{
	my ($postgres) = @_;
	$postgres //= 'postgres';
	my $describe = `$postgres --describe-config 2>/dev/null`;
	return $describe =~ /^output_plugin_libraries\t/m
	  ? "output_plugin_libraries = 'pgoutput, test_decoding, infra'\n" : '';
}

# kafka_cluster(CMD, DIR, ARGS...): test/kafka/cluster.sh's output (chomped);
# dies when it fails.
sub kafka_cluster
{
	my ($out, $err);
	IPC::Run::run([ src_path('test/kafka/cluster.sh'), @_ ], '>', \$out, '2>', \$err, IPC::Run::timeout(180))
	  or die "cluster.sh @_: $err";
	chomp $out;
	return $out;
}

# kafka_cluster_leaders(DIR, TOPIC): partition => leader node id ('-1': none).
sub kafka_cluster_leaders
{
	my ($dir, $topic) = @_;
	return map { split / / } split /\n/, kafka_cluster('leaders', $dir, $topic);
}

# kafka_cluster_kill_leader(DIR, TOPIC, PARTITION): SIGKILL the broker leading
# PARTITION of TOPIC and wait (60 s at most) until every partition of TOPIC
# has another leader.  Returns the victim's node id, whether they did, and
# how many seconds that took.
sub kafka_cluster_kill_leader
{
	my ($dir, $topic, $partition) = @_;
	my %leader_of = kafka_cluster_leaders($dir, $topic);
	my $victim = $leader_of{$partition};
	my $t0 = time;
	system(src_path('test/kafka/broker.sh'), 'kill', kafka_cluster('node', $dir, $victim)) == 0
	  or die "cannot kill broker $victim";
	my $moved = wait_until(
		sub {
			my %l = kafka_cluster_leaders($dir, $topic);
			!grep { $_ eq $victim || $_ eq '-1' } values %l;
		},
		60);
	return ($victim, $moved, time - $t0);
}

1;
