# Executable documentation: the sandbox "make run" starts (test/sandbox.sh,
# here on the test broker), then every ```sql block of README.md and of
# docs/*.md, in order, through psql as a user would paste it.  A block runs
# as the superuser postgres unless the line before it says
# <!-- doctest: as ROLE -->.  A statement whose last line carries
# "-- error SQLSTATE" must fail with that SQLSTATE; every other statement
# must succeed.  So the docs cannot drift from the code.
use strict;
use warnings;

use File::Basename qw(basename);
use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use InfraTest;

my $box = PostgreSQL::Test::Utils::tempdir . '/sandbox';
my $sandbox = src_path('test/sandbox.sh');
local $ENV{INFRA_SANDBOX} = $box;
local $ENV{INFRA_SANDBOX_KAFKA} = $ENV{INFRA_KAFKA_DIR};

my ($out, $err) = ('', '');
my $started = IPC::Run::run([ $sandbox, 'start' ], '<', \undef, '>', \$out, '2>', \$err,
	IPC::Run::timeout(180));
ok($started, 'the sandbox starts') or BAIL_OUT("sandbox: $out$err");
like($out, qr/infra sandbox is running/, 'and says how to connect');
my ($port) = $out =~ /psql -h 127\.0\.0\.1 -p (\d+) -U postgres postgres/;
ok($port, "it prints the psql command (port $port)");
END { IPC::Run::run([ $sandbox, 'stop' ], '<', \undef, '>', \my $o, '2>', \my $e) if $sandbox; }

# The blocks of one Markdown file: [first line, role, text].
sub sql_blocks
{
	my ($file) = @_;
	my @lines = split /\n/, slurp_file($file), -1;
	my @blocks;
	for (my $i = 0; $i < @lines; $i++)
	{
		next unless $lines[$i] =~ /^```sql\s*$/;
		my $role = 'postgres';
		my $j = $i - 1;
		$j-- while $j >= 0 && $lines[$j] =~ /^\s*$/;
		$role = $1 if $j >= 0 && $lines[$j] =~ /<!--\s*doctest:\s*as\s+(\w+)\s*-->/;
		my @body;
		my $k = $i + 1;
		while ($k < @lines && $lines[$k] !~ /^```\s*$/)
		{
			push @body, $lines[$k];
			$k++;
		}
		push @blocks, [ $i + 2, $role, join("\n", @body) . "\n" ];
		$i = $k;
	}
	return @blocks;
}

my @files = (src_path('README.md'), sort glob(src_path('docs') . '/*.md'));
my $nblocks = 0;
my $tmp = PostgreSQL::Test::Utils::tempdir;
for my $file (@files)
{
	my $name = basename($file);
	for my $block (sql_blocks($file))
	{
		my ($first, $role, $sql) = @$block;
		$nblocks++;
		my $path = "$tmp/block$nblocks.sql";
		open my $fh, '>', $path or die;
		print $fh $sql;
		close $fh;

		# Line (within the block) => SQLSTATE the statement ending there must raise.
		my %expected;
		my @sqllines = split /\n/, $sql;
		for my $n (1 .. @sqllines)
		{
			$expected{$n} = $1 // 'any' if $sqllines[ $n - 1 ] =~ /--\s*error\b\s*([0-9A-Z]{5})?/;
		}
		my ($o, $e) = ('', '');
		IPC::Run::run(
			[ 'psql', '-X', '-q', '-v', 'VERBOSITY=verbose', '-h', '127.0.0.1', '-p', $port,
			  '-U', $role, '-d', 'postgres', '-f', $path ],
			'<', \undef, '>', \$o, '2>', \$e, IPC::Run::timeout(120));
		my @problems;
		my %got;
		for my $line (split /\n/, $e)
		{
			if ($line =~ /^psql:\Q$path\E:(\d+): ERROR:\s+([0-9A-Z]{5}):/)
			{
				$got{$1} = $2;
			}
			elsif ($line =~ /FATAL|PANIC|connection to server was lost|could not connect/)
			{
				push @problems, $line;
			}
		}
		for my $n (sort { $a <=> $b } keys %got)
		{
			my $doc_line = $first + $n - 1;
			if (!exists $expected{$n})
			{
				my ($msg) = $e =~ /^psql:\Q$path\E:$n: (ERROR:[^\n]*)/m;
				push @problems, "line $doc_line fails: $msg";
			}
			elsif ($expected{$n} ne 'any' && $expected{$n} ne $got{$n})
			{
				push @problems, "line $doc_line fails with $got{$n}, the docs say $expected{$n}";
			}
		}
		for my $n (sort { $a <=> $b } keys %expected)
		{
			push @problems, 'line ' . ($first + $n - 1) . " should fail ($expected{$n}) but did not"
			  unless exists $got{$n};
		}
		is_deeply(\@problems, [], "$name block at line $first runs as documented (as $role)")
		  or diag($e);
	}
}
cmp_ok($nblocks, '>=', 10, "$nblocks sql blocks found in the docs");

done_testing();
