#!/usr/bin/env bash
# Hot paths against SELECT 1, paired and interleaved (issue 24): the cost
# of ownership checks on infra.rate_limit (a hot key: 4 clients on one key;
# a named limiter) and infra.breaker_allow.
#
# pgbench -M prepared, 4 clients, BENCH_ROUNDS (default 12) rounds; each
# round runs every workload for BENCH_SECONDS (default 2), in an order that
# rotates from round to round, so that drift of the machine falls on every
# workload alike.  Each round's ratio is the workload's TPS over the same
# round's SELECT 1; the median of the rounds is printed with its range.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

seconds=${BENCH_SECONDS:-2}
rounds=${BENCH_ROUNDS:-12}
clients=4
work=$(new_workdir infra-bench-hot)

cleanup() {
	as_test_user "$here/../pgcluster.sh" stop "$work/pg" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

as_test_user "$here/../pgcluster.sh" start "$work/pg" "infra.database=postgres" \
	"max_connections=50" "shared_buffers=128MB" >/dev/null
port=$(as_test_user "$here/../pgcluster.sh" port "$work/pg")
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres

# The callers are an application role, as in production: the checks run.
psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE EXTENSION infra;
CREATE ROLE bench_app LOGIN;
INSERT INTO infra.rate_limiters (name, rate, per, burst) VALUES ('bench', 100000, '1 second', 1000);
-- (1.1, run for the figures before owners, has no grants to give.)
DO $$ BEGIN
    IF to_regproc('infra.grant_use') IS NOT NULL THEN
        PERFORM infra.grant_use('rate_limiter', 'bench', 'bench_app');
    END IF;
END $$;
SQL

declare -A script
script[select_1]='SELECT 1;'
script[rate_limit_hot]="SELECT infra.rate_limit('hot', 100000, '1 second', 1000);"
script[rate_limit_named]="SELECT infra.rate_limit('bench');"
script[breaker_allow]="SELECT infra.breaker_allow('database');"
workloads=(select_1 rate_limit_hot rate_limit_named breaker_allow)

for w in "${workloads[@]}"; do
	printf '%s\n' "${script[$w]}" >"$work/$w.sql"
	pgbench -n -M prepared -U bench_app -c "$clients" -j 2 -T 1 -f "$work/$w.sql" >/dev/null 2>&1
done

declare -A tps
n=${#workloads[@]}
for r in $(seq 1 "$rounds"); do
	for i in $(seq 0 $((n - 1))); do
		w=${workloads[$(((i + r) % n))]}
		tps[$w,$r]=$(pgbench -n -M prepared -U bench_app -c "$clients" -j 2 -T "$seconds" -f "$work/$w.sql" 2>&1 |
			sed -n 's/^tps = \([0-9.]*\) .*/\1/p')
	done
done

echo "pgbench -M prepared, $clients clients as an application role, $rounds rounds of ${seconds}s, order rotated per round"
printf '%-18s %12s\n' workload "median tps"
for w in "${workloads[@]}"; do
	med=$(for r in $(seq 1 "$rounds"); do echo "${tps[$w,$r]}"; done | sort -n |
		awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
	printf '%-18s %12.0f\n' "$w" "$med"
done
echo
echo "paired ratios (each round's TPS / the same round's SELECT 1)"
for w in rate_limit_hot rate_limit_named breaker_allow; do
	for r in $(seq 1 "$rounds"); do
		awk -v a="${tps[$w,$r]}" -v b="${tps[select_1,$r]}" 'BEGIN { printf "%.4f\n", a / b }'
	done | sort -n | awk -v w="$w" '{ v[NR] = $1 } END {
		m = v[int((NR + 1) / 2)];
		printf "%-18s median %.3f x  (rounds %.3f .. %.3f)  target >= 0.95 %s\n", w, m, v[1], v[NR], (m >= 0.95 ? "meets" : "BELOW") }'
done
