# Structured logs: infra.log() lines, and infra.log_json rendering every
# server log line as JSON with the session's ids, with and without the
# logging collector; csvlog keeps receiving every message.
use strict;
use warnings;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
my $node = infra_node('logging');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION infra');

# infra.log with log_json off: PostgreSQL's prefix, then our JSON object.
my $offset = -s $node->logfile;
$node->safe_psql('postgres', qq{
SET application_name = 'shop';
SET infra.correlation_id = 'order-7';
SET infra.traceparent = '$traceparent';
SELECT infra.log('log', 'order placed', '{"order_id": 42, "items": [1, 2], "pid": "mine"}');
});
my ($json) = slurp_log_since($node, $offset) =~ /LOG:  (\{.*"order placed".*\})$/m;
ok($json, 'infra.log wrote a line') or diag(slurp_log_since($node, $offset));
my $line = eval { decode_json($json) } // {};
is($line->{message}, 'order placed', 'message');
is($line->{level}, 'log', 'level');
is($line->{correlation_id}, 'order-7', 'correlation id');
is($line->{trace_id}, '0af7651916cd43dd8448eb211c80319c', 'trace id from the traceparent');
# The trace is sampled: the statement has a span of its own, one hop below.
like($line->{span_id}, qr/^[0-9a-f]{16}$/, 'span id');
isnt($line->{span_id}, 'b7ad6b7169203331', 'the statement\'s span, not the caller\'s');
is($line->{database}, 'postgres', 'database');
is($line->{application}, 'shop', 'application');
like($line->{pid}, qr/^\d+$/, 'pid is a number');
isnt($line->{pid}, 'mine', 'a context field never replaces a standard one');
is($line->{'context.pid'}, 'mine', '... it is kept under context.');
is($line->{order_id}, 42, 'context fields at the top level, typed');
is_deeply($line->{items}, [ 1, 2 ], 'nested context values');
ok($line->{ts}, 'timestamp');

# The timestamp is the time of the call: in a fresh backend that has logged
# nothing (no statement logging), long after the server's last line, it
# used to be that line's time, inherited at fork.
sleep 3;
{
	local $ENV{PGOPTIONS} = '-c log_statement=none';
	$offset = -s $node->logfile;
	$node->safe_psql('postgres', q{SELECT infra.log('log', 'fresh backend')});
}
my ($fresh) = slurp_log_since($node, $offset) =~ /LOG:  (\{.*"fresh backend".*\})$/m;
my $fresh_ts = (eval { decode_json($fresh // '') } // {})->{ts} // '';
like($fresh_ts, qr/^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+$/, 'ts in the server log\'s format');
cmp_ok($node->safe_psql('postgres',
		"SELECT abs(extract(epoch FROM clock_timestamp() - '$fresh_ts'::timestamptz))"),
	'<', 1.5, 'ts is the time of the call, not of the last line logged before it');

# log_json on: every line the server writes from now on is one JSON object.
$node->append_conf('postgresql.conf', "infra.log_json = on\n");
$node->reload;
$node->poll_query_until('postgres', q{SELECT current_setting('infra.log_json') = 'on'});
$offset = -s $node->logfile;
$node->psql('postgres', qq{
SET infra.correlation_id = 'req-9';
SELECT 1/0;
});
$node->safe_psql('postgres', q{SELECT infra.log('warning', 'low stock', '{"sku": "A-1"}')});
$node->restart;    # the postmaster's and other processes' lines too
my @lines = grep { length } split /\n/, slurp_log_since($node, $offset);
my @bad = grep { !eval { decode_json($_); 1 } } @lines;
ok(@lines > 5, scalar(@lines) . ' lines written');
is_deeply(\@bad, [], 'every line is a JSON object');
my @objs = map { decode_json($_) } @lines;
my ($err) = grep { ($_->{sqlstate} // '') eq '22012' } @objs;
ok($err, 'the error is there, with its SQLSTATE');
is($err->{level}, 'error', 'at level error');
is($err->{message}, 'division by zero', 'its message');
is($err->{statement}, 'SELECT 1/0;', 'its statement');
is($err->{correlation_id}, 'req-9', 'and the session correlation id');
my ($warn) = grep { ($_->{message} // '') eq 'low stock' } @objs;
ok($warn, 'an infra.log line is the object itself, not a message inside one');
is($warn->{sku}, 'A-1', 'with its context');
ok((grep { ($_->{backend_type} // '') eq 'postmaster' } @objs), 'the postmaster writes JSON too');
# A fresh backend's first line, seconds after the server's last one.
sleep 3;
$offset = -s $node->logfile;
{
	local $ENV{PGOPTIONS} = '-c log_statement=none';
	$node->psql('postgres', q{SET infra.correlation_id = 'late'; SELECT 1/0;});
}
my ($late) = grep { ($_->{correlation_id} // '') eq 'late' }
  map { eval { decode_json($_) } // {} } grep { length } split /\n/, slurp_log_since($node, $offset);
cmp_ok($node->safe_psql('postgres',
		"SELECT abs(extract(epoch FROM clock_timestamp() - '" . ($late->{ts} // 'epoch') . "'::timestamptz))"),
	'<', 1.5, 'a JSON line carries the time it was written, not the time of the line before');
$node->stop;

# With the logging collector: long lines arrive whole; csvlog still gets
# every message.
my $coll = infra_node('logging_collector', conf => <<'CONF');
logging_collector = on
log_destination = 'stderr,csvlog'
log_directory = 'log'
log_filename = 'server.log'
infra.log_json = on
CONF
$coll->start;
$coll->safe_psql('postgres', 'CREATE EXTENSION infra');
my $long = 'x' x 20000;
$coll->safe_psql('postgres', qq{SELECT infra.log('log', 'long line', '{"blob": "$long"}')});
my $dir = $coll->data_dir . '/log';
my $found;
ok( wait_until(
		sub {
			return 0 unless -f "$dir/server.log";
			($found) = grep { /"message":"long line"/ } split /\n/, slurp_file("$dir/server.log");
			return defined $found;
		},
		20),
	'collector file has the long line');
my $obj = eval { decode_json($found // '') } // {};
is(length($obj->{blob} // ''), 20000, 'in one piece (20,000 characters)');
ok( wait_until(sub { -f "$dir/server.csv" && slurp_file("$dir/server.csv") =~ /long line/ }, 20),
	'csvlog still receives it');
$coll->stop;

done_testing();
