# Named shared state has owners, tried as an attacker would: mallory has
# EXECUTE on the PUBLIC functions, the operations role's documented grants
# (INSERT, UPDATE, DELETE on the configuration tables, EXECUTE on the reset
# and force functions) and her own schema first on her search_path, in
# this database and in another where she may configure everything.  She
# cannot drain another role's rate-limit key, reset it, use or trip another
# role's breaker or limiter, change or delete their rows, nor touch infra's
# own kafka breaker (delivery goes on while she tries).  Grants open what
# their owner shares; a decision cached in a session follows GRANT, REVOKE
# and DROP ROLE at once.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $bootstrap = kafka_bootstrap();
my $node = infra_node('owners', conf => "infra.database = 'postgres'\ninfra.kafka_brokers = '$bootstrap'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION infra');
for my $db ('postgres', 'other')
{
	$node->safe_psql($db, q{
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mallory') THEN
    CREATE ROLE mallory LOGIN; CREATE ROLE app LOGIN;
  END IF;
END $$;
GRANT INSERT, UPDATE, DELETE ON infra.circuit_breakers, infra.rate_limiters, infra.retry_policies TO mallory, app;
GRANT EXECUTE ON FUNCTION infra.breaker_force(text, text), infra.breaker_reset(text),
                          infra.rate_limit_reset(text) TO mallory;
CREATE SCHEMA IF NOT EXISTS mallory AUTHORIZATION mallory;
});
}
$node->safe_psql('postgres', 'ALTER ROLE mallory SET search_path = mallory, public, pg_catalog');
# What mallory plants first on her path: a function named like infra's.
$node->safe_psql('postgres', q{CREATE FUNCTION mallory.has_privs_of_role(name, name) RETURNS boolean LANGUAGE sql AS 'SELECT true'},
	extra_params => [ '-U', 'mallory' ]);

sub as
{
	my ($role, $sql, $db) = @_;
	my ($rc, $out, $err) = $node->psql($db // 'postgres', $sql, extra_params => [ '-U', $role ]);
	return ($rc, $out, $err);
}

# The victim's state: a breaker, a limiter and a key of its own.
as('app', q{
INSERT INTO infra.circuit_breakers (name, window_size, minimum_calls, failure_rate_threshold, open_duration)
VALUES ('payments', 4, 4, 50, '1 hour');
INSERT INTO infra.rate_limiters (name, rate, per, burst) VALUES ('checkout', 10, '1 hour', 10);
SELECT infra.rate_limit('user:42', 5, '1 hour', 5, 3);
});
is($node->safe_psql('postgres', q{SELECT owner FROM infra.circuit_breakers WHERE name = 'payments'}), 'app',
	'a row belongs to the role that wrote it');

# --- keys ----------------------------------------------------------------------------------
my ($rc, $out, $err) = as('mallory', q{SELECT count(*) FILTER (WHERE infra.rate_limit('user:42', 5, '1 hour', 5)) FROM generate_series(1, 10)});
is($out, '5', 'mallory\'s calls of user:42 use a key of her own (her 5, not the 2 left of app\'s)');
($rc, $out, $err) = as('mallory', q{SELECT infra.rate_limit_reset(NULL)});
is($out, '1', 'rate_limit_reset(NULL) forgets only what she owns');
($rc, $out, $err) = as('app', q{SELECT remaining FROM infra.throttle('user:42', 5, '1 hour', 5, 0)});
is($out, '2', 'app\'s key is untouched: 2 of 5 left');
($rc, $out, $err) = as('mallory', q{SELECT infra.revoke_use('rate_limit_key', 'user:42', 'public')});
like($err, qr/you have no public rate-limit key "user:42"/, 'she cannot take over or unshare it');

# --- breakers ------------------------------------------------------------------------------
for my $call ("SELECT infra.breaker_failure('payments')", "SELECT infra.breaker_allow('payments')",
	"SELECT infra.breaker_call('payments', 'SELECT 1')", "SELECT infra.breaker_force('payments', 'forced_open')",
	"SELECT infra.breaker_reset('payments')", "SELECT infra.rate_limit('checkout')")
{
	($rc, $out, $err) = as('mallory', $call);
	like($err, qr/ERROR:  permission denied for (circuit breaker "payments"|rate limiter "checkout")/, "refused: $call");
}
for my $dml ("UPDATE infra.circuit_breakers SET open_duration = '1 s' WHERE name = 'payments'",
	"DELETE FROM infra.circuit_breakers WHERE name = 'payments'",
	"UPDATE infra.rate_limiters SET acl = NULL, owner = 'mallory' WHERE name = 'checkout'",
	"UPDATE infra.circuit_breakers SET acl = NULL WHERE name = 'kafka'",
	"DELETE FROM infra.circuit_breakers WHERE name = 'kafka'",
	"SELECT infra.grant_use('circuit_breaker', 'payments', 'mallory')")
{
	($rc, $out, $err) = as('mallory', $dml);
	like($err, qr/ERROR:  permission denied to change "(payments|checkout|kafka)"/, "refused: $dml");
}
($rc, $out, $err) = as('mallory', q{INSERT INTO infra.circuit_breakers (name, owner) VALUES ('framed', 'app')});
like($err, qr/can be owned only by a role its writer may SET ROLE to/, 'she cannot write a row in another role\'s name');
is($node->safe_psql('postgres', q{SELECT owner || ' ' || open_duration FROM infra.circuit_breakers WHERE name = 'payments'}),
	'app 01:00:00', 'the row is as app wrote it');

# Her own breaker of the same name, in a database where she configures it:
# tripped, it is hers alone.
as('mallory', q{INSERT INTO infra.circuit_breakers (name, window_size, minimum_calls, open_duration) VALUES ('payments', 2, 2, '1 hour')},
	'other');
as('mallory', q{SELECT infra.breaker_failure('payments'), infra.breaker_failure('payments'), infra.breaker_failure('payments')}, 'other');
is($node->safe_psql('other', q{SELECT state FROM infra.circuit_breaker_state WHERE name = 'payments'}), 'open',
	'her payments breaker (another database) is open');
is($node->safe_psql('postgres', q{SELECT state FROM infra.circuit_breaker_state WHERE name = 'payments'}), 'closed',
	'app\'s payments breaker stays closed: state is per (name, owner)');

# infra's own: the worker's kafka breaker.
($rc, $out, $err) = as('mallory', q{SELECT infra.breaker_failure('kafka') FROM generate_series(1, 50)});
like($err, qr/permission denied for circuit breaker "kafka"/, 'the worker\'s kafka breaker is refused to her');
($rc, $out, $err) = as('mallory', q{SELECT infra.breaker_force('kafka', 'forced_open')});
like($err, qr/permission denied for circuit breaker "kafka"/, 'also with EXECUTE on breaker_force');
my $t = "infra_t_owners_$$";
$node->safe_psql('postgres', "SELECT infra.kafka_send('$t', 'still delivered')");
is($node->safe_psql('postgres', q{SELECT infra.kafka_flush('30 s')}), 't', 'delivery goes on');
is($node->safe_psql('postgres', q{SELECT state FROM infra.circuit_breaker_state WHERE name = 'kafka'}), 'closed',
	'and its breaker is closed');

# --- grants, and a session's cached decision ----------------------------------------------
my $s = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'mallory' ]);
sub session
{
	my ($sql) = @_;
	$s->{stderr} = '';
	my $r = $s->query($sql);
	return $s->{stderr} ne '' ? $s->{stderr} : $r;
}
like(session(q{SELECT infra.breaker_allow('payments')}), qr/permission denied/, 'a session is refused (and caches it)');
as('app', q{SELECT infra.grant_use('circuit_breaker', 'payments', 'mallory')});
is(session(q{SELECT infra.breaker_allow('payments')}), 't', 'granted by its owner: the same session may use it');
as('app', q{SELECT infra.revoke_use('circuit_breaker', 'payments', 'mallory')});
like(session(q{SELECT infra.breaker_allow('payments')}), qr/permission denied/, 'revoked: refused again at once');
$node->safe_psql('postgres', 'CREATE ROLE payments_users; GRANT payments_users TO mallory');
as('app', q{SELECT infra.grant_use('circuit_breaker', 'payments', 'payments_users')});
is(session(q{SELECT infra.breaker_allow('payments')}), 't', 'granted to a role she is a member of');
$node->safe_psql('postgres', 'REVOKE payments_users FROM mallory');
like(session(q{SELECT infra.breaker_allow('payments')}), qr/permission denied/,
	'REVOKE of the membership: refused at once (the cached decision follows role changes)');
$node->safe_psql('postgres', 'GRANT payments_users TO mallory');
is(session(q{SELECT infra.breaker_allow('payments')}), 't', 'GRANT again: allowed');
$node->safe_psql('postgres', q{UPDATE infra.circuit_breakers SET acl = NULL WHERE name = 'payments'; DROP ROLE payments_users});
like(session(q{SELECT infra.breaker_allow('payments')}), qr/permission denied/, 'DROP ROLE of the grantee: refused');
$s->quit;

# Presets stay everyone's, as before.
($rc, $out, $err) = as('mallory', q{SELECT infra.breaker_allow('network'), infra.rate_limit('api')});
is($out, 't|t', 'the public presets (network, api) are for everyone');

done_testing();
