# Transactional HTTP across a failover: what the old primary committed and
# did not deliver (requests never tried, requests waiting for a retry)
# replicates with its tables, and the promoted standby's http worker
# delivers it, under the same webhook-ids.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $python = $ENV{INFRA_PYTHON} // die "INFRA_PYTHON is not set: run through test/run.sh\n";
my $rport = PostgreSQL::Test::Cluster::get_free_port();
my $closed = PostgreSQL::Test::Cluster::get_free_port();
my $rlog = "${PostgreSQL::Test::Utils::tmp_check}/http_standby.jsonl";
my $receiver = IPC::Run::start(
	[ $python, src_path('test/http/receiver.py'), '--port', $rport, '--log', $rlog ],
	'>', \my $rout, '2>', \my $rerr);
wait_until(sub { $receiver->pump_nb; $rout =~ /listening/ }, 30) or die "receiver: $rerr";

sub received
{
	return () unless -f $rlog;
	return grep { !$_->{accepted} } map { decode_json($_) } grep { length } split /\n/, slurp_file($rlog);
}

my $conf = "infra.http_allow = '127.0.0.1'\n";
my $primary = infra_node('hprimary', init => { allows_streaming => 1 }, conf => $conf);
$primary->start;
$primary->safe_psql('postgres', "CREATE EXTENSION infra;
	INSERT INTO infra.http_endpoints (name, url, retry_schedule) VALUES
	  ('up', 'http://127.0.0.1:$rport/ok/up', '{1 second}'),
	  ('down', 'http://127.0.0.1:$closed/ok/down', '{2 seconds, 2 seconds, 2 seconds, 2 seconds, 2 seconds, 2 seconds, 2 seconds, 2 seconds, 2 seconds, 2 seconds}')");
$primary->backup('base');
my $standby = PostgreSQL::Test::Cluster->new('hstandby');
$standby->init_from_backup($primary, 'base', has_streaming => 1);
$standby->start;

# Requests to an endpoint that refuses connections wait in http_retries.
$primary->safe_psql('postgres', "SELECT infra.http_send(NULL, 'down ' || i, endpoint => 'down') FROM generate_series(1, 50) i");
ok(wait_until(sub { $primary->safe_psql('postgres', "SELECT state FROM infra.circuit_breaker_state WHERE name = 'http:down'") eq 'open' }, 60),
	'requests to it fail on the primary until its breaker opens');
my $failed = $primary->safe_psql('postgres', "SELECT count(*) FROM infra.http_retries WHERE attempts >= 1");
cmp_ok($failed, '>=', 10, "$failed of them wait for their retry, the rest for the breaker");

# The primary's http worker stopped: what commits now is never tried there.
my $wpid = $primary->safe_psql('postgres', "SELECT pid FROM pg_stat_activity WHERE backend_type = 'infra http worker'");
kill 'STOP', $wpid;
$primary->safe_psql('postgres', "SELECT infra.http_send(NULL, 'up ' || i, endpoint => 'up') FROM generate_series(1, 500) i");
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', "SELECT count(*) || ' ' || count(*) FILTER (WHERE state = 'retrying') FROM infra.http_requests"),
	'550 ' . $failed, 'the standby has every request not delivered, the retries among them');
is($standby->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'infra http worker'"),
	0, 'and no http worker: it waits for promotion');
my @none = received();
is(scalar(@none), 0, 'nothing was sent yet');

$primary->stop('immediate');
$standby->promote;
ok(wait_until(sub { scalar(grep { $_->{path} eq '/ok/up' } received()) >= 500 }, 60),
	'the promoted standby delivers the 500 the old primary never tried');
$standby->safe_psql('postgres', "UPDATE infra.http_endpoints SET url = 'http://127.0.0.1:$rport/ok/down' WHERE name = 'down'");
ok(wait_until(sub { scalar(grep { $_->{path} eq '/ok/down' } received()) >= 50 }, 60),
	'and the 50 that waited for a retry, once their endpoint answers');
my %bodies = map { $_->{body} => 1 } received();
is(scalar(keys %bodies), 550, 'each of the 550 arrived');
my %ids = map { $_->{headers}{'webhook-id'} => 1 } received();
is(scalar(keys %ids), 550, 'under 550 distinct webhook-ids');
ok(wait_until(sub { $standby->safe_psql('postgres', "SELECT count(*) FROM infra.http_requests WHERE state <> 'delivered'") == 0 }, 30),
	'nothing is left');

$receiver->kill_kill;
$standby->stop;
done_testing();
