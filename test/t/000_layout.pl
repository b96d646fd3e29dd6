# The source tree keeps the shape docs/architecture.md draws: src/ by domain
# with the arrows pointing one way (core <- resilience <- kafka,
# observability, http; src/infra.c above all), no circle of files in src/ or
# bridge/, no function over 100 lines, no C file over 1,250 lines, each
# third-party header included by one file, each domain folder saying what
# it owns.  No server needed: it reads the sources.
use strict;
use warnings;

use File::Basename;
use Test::More;

my $top = $ENV{INFRA_SRC} // dirname(dirname(dirname(__FILE__)));
my $src = "$top/src";
plan skip_all => "no sources at $src" unless -d "$src/core";

# Which folders a domain's files may include from.
my %may = (
	core          => [qw(core)],
	resilience    => [qw(core resilience)],
	kafka         => [qw(core resilience kafka)],
	observability => [qw(core resilience observability)],
	http          => [qw(core resilience http)],
);

sub slurp { my ($f) = @_; open my $fh, '<', $f or die "$f: $!"; local $/; my $t = <$fh>; close $fh; return $t }

# The text of a C file without comments and string or character literals.
sub code_of
{
	my ($text) = @_;
	$text =~ s{/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'}{
		my $m = $&; $m =~ /^["']/ ? '""' : "\n" x ($m =~ tr/\n//) }gse;
	return $text;
}

my @files = sort grep { -f } (glob("$src/*.c"), glob("$src/*/*.[ch]"));
my @domains = sort map { basename($_) } grep { -d } glob("$src/*");

# --- folders and arrows -------------------------------------------------------
for my $d (@domains)
{
	ok(exists $may{$d}, "src/$d is a known domain folder");
	my $readme = -f "$src/$d/README.md" ? slurp("$src/$d/README.md") : '';
	like($readme, qr/owns/i, "src/$d/README.md says what the folder owns");
	like($readme, qr/may include/i, "src/$d/README.md says what it may include");
	like($readme, qr/lock/i, "src/$d/README.md states its lock rules");
}
my @wrong;
for my $f (@files)
{
	(my $rel = $f) =~ s{^\Q$src\E/}{};
	my ($dir) = $rel =~ m{^([^/]+)/};
	for my $inc (slurp($f) =~ /^#include "([^"]+)"/mg)
	{
		next if $inc !~ m{/};    # PostgreSQL's own headers have a folder too
		my ($to) = $inc =~ m{^([^/]+)/};
		next unless exists $may{$to};
		next if !defined $dir;    # src/infra.c knows every module
		push @wrong, "$rel includes $inc" unless grep { $_ eq $to } @{ $may{$dir} // [] };
	}
}
is(join("\n", @wrong), '', 'every include points down the layers (core <- resilience <- domains)');

# --- third-party headers: one includer each --------------------------------------
for my $h ('librdkafka/rdkafka.h', 'curl/curl.h', 'microhttpd.h')
{
	my @by = grep { slurp($_) =~ /^#include <\Q$h\E>/m } @files;
	is(scalar(@by), 1, "<$h> is included by one file of src/ (" . join(', ', map { s{^\Q$src\E/}{}r } @by) . ')');
}

# --- no circle of files --------------------------------------------------------------
# a -> b when a calls (or names) a function defined, not static, in b.
sub circles
{
	my ($label, @cfiles) = @_;
	my (%defined_in, %code, %edges);
	for my $f (@cfiles)
	{
		$code{$f} = code_of(slurp($f));
		my @lines = split /\n/, $code{$f};
		for my $i (1 .. $#lines)
		{
			# A definition: its name at column 0, not a macro's statement.
			next unless $lines[$i] =~ /^([A-Za-z_]\w*)\(/ && $lines[$i] !~ /;\s*$/;
			next if $lines[ $i - 1 ] =~ /\bstatic\b/;
			$defined_in{$1} = $f;
		}
	}
	for my $f (@cfiles)
	{
		for my $word ($code{$f} =~ /\b([A-Za-z_]\w*)\b/g)
		{
			my $to = $defined_in{$word};
			$edges{$f}{$to} = 1 if defined $to && $to ne $f;
		}
	}
	my (%state, @stack, @found);
	my $visit;
	$visit = sub {
		my ($n) = @_;
		$state{$n} = 1;
		push @stack, $n;
		for my $m (sort keys %{ $edges{$n} // {} })
		{
			if (($state{$m} // 0) == 1)
			{
				my @cycle = (@stack[ (grep { $stack[$_] eq $m } 0 .. $#stack)[0] .. $#stack ], $m);
				push @found, join(' -> ', map { basename($_) } @cycle);
			}
			elsif (!$state{$m}) { $visit->($m) }
		}
		pop @stack;
		$state{$n} = 2;
	};
	$visit->($_) for grep { !$state{$_} } sort @cfiles;
	is(join("\n", @found), '', "no circle of files in $label");
}
circles('src/', grep { /\.c$/ } @files);
circles('bridge/', sort glob("$top/bridge/*.c"));

# --- short functions, files of a size to read -----------------------------------
my (@long, @big);
for my $f (grep { /\.c$/ } @files, sort glob("$top/bridge/*.c"))
{
	my @lines = split /\n/, slurp($f);
	(my $rel = $f) =~ s{^\Q$top\E/}{};
	push @big, "$rel (" . scalar(@lines) . ' lines)' if @lines > 1250;
	my $name;
	my $from;
	for my $i (0 .. $#lines)
	{
		if ($lines[$i] =~ /^([A-Za-z_]\w*)\(/ && $lines[$i] !~ /;\s*$/)
		{
			($name, $from) = ($1, $i);
		}
		elsif (defined $name && $lines[$i] eq '}')
		{
			my $n = $i - $from + 1;
			push @long, "$rel: $name ($n lines)" if $n > 100;
			undef $name;
		}
	}
}
is(join("\n", @long), '', 'no function is over 100 lines');
is(join("\n", @big), '', 'no C file is over 1,250 lines');

done_testing();
