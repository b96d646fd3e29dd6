# The topic registry against the real broker: the worker creates registered
# topics with the Admin API (partitions and config as registered) and
# records the outcome; with infra.kafka_require_registered_topics, sends to
# unregistered topics are refused.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $node = infra_node('kafkatopics', conf => "infra.kafka_brokers = '$bootstrap'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');

my $domain = "t$$";
my $topic = $node->safe_psql('postgres',
	"SELECT infra.topic_register('$domain', 'invoice', partitions => 3, "
	  . "config => '{\"retention.ms\": \"3600000\"}')");
is($topic, "dev.$domain.invoice.v1", 'registered under the naming convention');
ok( wait_until(
		sub {
			$node->safe_psql('postgres', "SELECT broker_state FROM infra.topics WHERE name = '$topic'")
			  ne 'pending';
		},
		60),
	'the worker acts on the registration');
is($node->safe_psql('postgres', "SELECT broker_state FROM infra.topics WHERE name = '$topic'"),
	'created', 'and records that it created the topic');

my ($out, $err);
IPC::Run::run([ 'kcat', '-b', $bootstrap, '-L', '-t', $topic ],
	'>', \$out, '2>', \$err, IPC::Run::timeout(30));
like($out, qr/topic "\Q$topic\E" with 3 partitions/, 'the broker has it, with 3 partitions');

# Registering a topic the broker already has.
IPC::Run::run([ 'kcat', '-b', $bootstrap, '-P', '-t', "dev.$domain.existing.v1" ],
	'<', \"x\n", '>', \$out, '2>', \$err, IPC::Run::timeout(30));
$node->safe_psql('postgres', "SELECT infra.topic_register('$domain', 'existing')");
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT broker_state FROM infra.topics WHERE name = 'dev.$domain.existing.v1'") eq 'exists';
		},
		60),
	'an existing topic is recorded as such');

# A replication factor the single broker cannot give: the error is recorded.
$node->safe_psql('postgres', "SELECT infra.topic_register('$domain', 'replicated', replication_factor => 3)");
ok( wait_until(
		sub {
			$node->safe_psql('postgres',
				"SELECT broker_state FROM infra.topics WHERE name = 'dev.$domain.replicated.v1'") =~ /^error: /;
		},
		60),
	'a topic the broker refuses records the error');
note $node->safe_psql('postgres', "SELECT broker_state FROM infra.topics WHERE name = 'dev.$domain.replicated.v1'");

# Only registered topics, when required.
$node->append_conf('postgresql.conf', "infra.kafka_require_registered_topics = on\n");
$node->reload;
my ($rc, $o, $e) = $node->psql('postgres', "SELECT infra.kafka_send('dev.$domain.unknown.v1', 'x')");
like($e, qr/topic "dev\.\Q$domain\E\.unknown\.v1" is not registered/, 'an unregistered topic is refused');
like($e, qr/HINT:  Register it with infra\.topic_register/, 'with a hint');
$node->safe_psql('postgres', "SELECT infra.kafka_send('$topic', 'registered')");
is($node->safe_psql('postgres', "SELECT infra.kafka_flush('60 s')"), 't', 'a registered topic works');

$node->stop;
done_testing();
