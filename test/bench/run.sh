#!/usr/bin/env bash
# make bench: run every benchmark in test/bench/ (files named bench_*.sh).
# Each benchmark runs its baseline and infra side by side in one run and
# prints ratios; absolute times on shared machines mean little.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
status=0
found=0
for bench in "$here"/bench_*.sh; do
	[ -e "$bench" ] || continue
	found=1
	echo "== $(basename "$bench")"
	"$bench" || status=1
done
[ $found = 1 ] || echo "no benchmarks yet: they arrive with the features they measure"
exit $status
