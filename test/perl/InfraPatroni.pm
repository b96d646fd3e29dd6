# InfraPatroni: a real HA cluster for the failover TAP tests (090, 091):
# etcd and three Patroni-managed PostgreSQL 15 nodes (Debian's server
# binaries) with infra preloaded, synchronous mode, loop_wait 1.
#
#   my $ha = InfraPatroni->start($dir, parameters => {...}, dcs => "...");
#   $ha->leader, $ha->sync_standby, $ha->members, $ha->node_named($name),
#   $ha->psql_rw($sql), $ha->psql_at($node, $sql), $ha->kill_leader,
#   $ha->{rw} (a multi-host read-write conninfo), $ha->stop.
#
# parameters are added to the DCS's PostgreSQL parameters; dcs is YAML
# added to the DCS section as is (indented by four spaces), e.g. slots;
# conf is a postgresql.conf fragment every node includes (custom_conf), for
# settings Patroni does not know and would drop (output_plugin_libraries,
# which Debian's 15.20 has and Patroni 3.0.2 does not list).
package InfraPatroni;

use strict;
use warnings;

use HTTP::Tiny;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use InfraTest;

our $pg15 = '/usr/lib/postgresql/15/bin';

sub port { return PostgreSQL::Test::Cluster::get_free_port() }

# Skip the test unless Patroni can run here.
sub require_patroni
{
	plan skip_all => 'Patroni runs Debian\'s PostgreSQL 15; this run is another version'
	  unless `pg_config --version` =~ /^PostgreSQL 15\./;
	for my $tool ('patroni', 'patronictl', 'etcd')
	{
		plan skip_all => "$tool is not installed (make deps)" unless -x "/usr/bin/$tool";
	}
}

sub start
{
	my ($class, $dir, %opt) = @_;
	my $self = bless { dir => $dir, http => HTTP::Tiny->new(timeout => 5) }, $class;
	my ($etcd_client, $etcd_peer) = (port(), port());
	$self->{etcd} = IPC::Run::start(
		[ 'etcd', '--name', 'e0', '--data-dir', "$dir/etcd",
		  '--listen-client-urls', "http://127.0.0.1:$etcd_client",
		  '--advertise-client-urls', "http://127.0.0.1:$etcd_client",
		  '--listen-peer-urls', "http://127.0.0.1:$etcd_peer",
		  '--initial-advertise-peer-urls', "http://127.0.0.1:$etcd_peer",
		  '--initial-cluster', "e0=http://127.0.0.1:$etcd_peer" ],
		'>', "$dir/etcd.log", '2>&1');
	ok( wait_until(
			sub { ($self->{http}->get("http://127.0.0.1:$etcd_client/health")->{content} // '') =~ /true/ },
			30),
		'etcd is up');

	my $parameters = join '', map { "        $_: $opt{parameters}{$_}\n" } sort keys %{ $opt{parameters} // {} };
	my $dcs = join '', map { "    $_\n" } split /\n/, $opt{dcs} // '';
	$self->{nodes} = [ map { { name => "node$_", pg => port(), rest => port() } } 1 .. 3 ];
	my $ports = join ',', map { $_->{pg} } @{ $self->{nodes} };
	my $hosts = join ',', map { '127.0.0.1' } @{ $self->{nodes} };
	$self->{rw} = "host=$hosts port=$ports dbname=postgres user=postgres target_session_attrs=read-write connect_timeout=3";
	foreach my $n (@{ $self->{nodes} })
	{
		mkdir "$dir/$n->{name}.sock";
		my $custom = '';
		if (defined $opt{conf})
		{
			open my $cf, '>', "$dir/$n->{name}.custom.conf" or die;
			print $cf $opt{conf};
			close $cf;
			$custom = "  custom_conf: $dir/$n->{name}.custom.conf\n";
		}
		my $yml = "$dir/$n->{name}.yml";
		open my $fh, '>', $yml or die;
		print $fh <<"YAML";
scope: infra_ha
name: $n->{name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$n->{rest}
  connect_address: 127.0.0.1:$n->{rest}
etcd3:
  hosts: 127.0.0.1:$etcd_client
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 4
    primary_start_timeout: 0
    synchronous_mode: true
$dcs    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        shared_preload_libraries: infra
        infra.database: postgres
        max_worker_processes: 24
        wal_log_hints: 'on'
        fsync: 'off'
$parameters  initdb:
    - encoding: UTF8
    - locale: C
postgresql:
  listen: 127.0.0.1:$n->{pg}
  connect_address: 127.0.0.1:$n->{pg}
  data_dir: $dir/$n->{name}.data
  bin_dir: $pg15
  pgpass: $dir/$n->{name}.pgpass
$custom  authentication:
    superuser:
      username: postgres
      password: secret
    replication:
      username: replicator
      password: secret
    rewind:
      username: rewinder
      password: secret
  parameters:
    unix_socket_directories: '$dir/$n->{name}.sock'
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication replicator 127.0.0.1/32 trust
YAML
		close $fh;
		$n->{yml} = $yml;
		$n->{log} = "$dir/$n->{name}.log";
		$n->{h} = IPC::Run::start([ 'patroni', $yml ], '>', $n->{log}, '2>&1');
	}
	my $t0 = time;
	ok(wait_until(sub { $self->leader && $self->sync_standby && scalar(keys %{ $self->members }) == 3 }, 120),
		'Patroni: a leader, a synchronous standby and a replica');
	note sprintf('cluster up in %.1f s', time - $t0);
	return $self;
}

# Cluster members from any node's REST API: name -> {role, state, ...}.
sub members
{
	my ($self) = @_;
	foreach my $n (@{ $self->{nodes} })
	{
		my $r = $self->{http}->get("http://127.0.0.1:$n->{rest}/cluster");
		next unless $r->{success};
		my $c = eval { decode_json($r->{content}) } or next;
		return { map { $_->{name} => $_ } @{ $c->{members} } };
	}
	return {};
}

sub node_named
{
	my ($self, $name) = @_;
	return (grep { $_->{name} eq $name } @{ $self->{nodes} })[0];
}

sub leader
{
	my ($self) = @_;
	my $m = $self->members;
	my ($name) = grep { $m->{$_}{role} eq 'leader' && $m->{$_}{state} eq 'running' } keys %$m;
	return $name ? $self->node_named($name) : undef;
}

sub sync_standby
{
	my ($self) = @_;
	my $m = $self->members;
	my ($name) = grep { $m->{$_}{role} eq 'sync_standby' && $m->{$_}{state} =~ /running|streaming/ } keys %$m;
	return $name ? $self->node_named($name) : undef;
}

sub psql_rw
{
	my ($self, $sql) = @_;
	my ($out, $err);
	IPC::Run::run([ "$pg15/psql", '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $self->{rw}, '-c', $sql ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(60))
	  or die "psql: $err";
	chomp $out;
	return $out;
}

sub psql_at
{
	my ($self, $n, $sql) = @_;
	my ($out, $err);
	IPC::Run::run([ "$pg15/psql", '-XAtq', '-d', "host=127.0.0.1 port=$n->{pg} dbname=postgres user=postgres", '-c', $sql ],
		'>', \$out, '2>', \$err, IPC::Run::timeout(60));
	chomp $out;
	return $out;
}

# SIGKILL the leader's postmaster; returns the node and when.
sub kill_leader
{
	my ($self) = @_;
	my $l = $self->leader or die 'no leader';
	my ($pid) = split /\n/, slurp_file("$self->{dir}/$l->{name}.data/postmaster.pid");
	kill 'KILL', $pid;
	return ($l, time);
}

sub stop
{
	my ($self) = @_;
	$_->{h}->signal('TERM') foreach @{ $self->{nodes} };
	$_->{h}->finish foreach @{ $self->{nodes} };
	$self->{etcd}->signal('TERM');
	$self->{etcd}->finish;
}

1;
