#!/usr/bin/env bash
# Resilience benchmark (issue 4): throughput of infra.rate_limit and
# infra.breaker_allow against SELECT 1, a PL/pgSQL table-based token bucket
# and a Redis Lua token bucket, all in one run on one machine.
#
# pgbench -M prepared, 4 clients; BENCH_ROUNDS (default 3) rounds of
# BENCH_SECONDS (default 5) per workload, the workloads interleaved, the
# median kept: pgbench shares the machine's cores with the server, and one
# run of each is noisy.  redis-benchmark with 4 clients for the Redis
# bucket.  Prints TPS and the ratios the targets are stated in.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

seconds=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
clients=4
work=$(new_workdir infra-bench)

cleanup() {
	as_test_user "$here/../pgcluster.sh" stop "$work/pg" >/dev/null 2>&1 || true
	[ -f "$work/redis.pid" ] && kill "$(cat "$work/redis.pid")" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# Production durability (the test clusters run with fsync off): a table-based
# bucket writes WAL and waits for its flush at each commit; infra writes none.
as_test_user "$here/../pgcluster.sh" start "$work/pg" "infra.database=postgres" \
	"max_connections=50" "shared_buffers=128MB" "fsync=on" "synchronous_commit=on" \
	"infra.rate_limit_max_keys=20000"
port=$(as_test_user "$here/../pgcluster.sh" port "$work/pg")
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres

psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE EXTENSION infra;

-- What users write without infra: a token bucket in a table, refilled in
-- floating point from now(), one row per key.
CREATE TABLE plpgsql_buckets (
    key text PRIMARY KEY,
    tokens double precision NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE FUNCTION plpgsql_take(p_key text, p_rate double precision, p_burst double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    b plpgsql_buckets%ROWTYPE;
    t timestamptz := clock_timestamp();
    available double precision;
BEGIN
    INSERT INTO plpgsql_buckets VALUES (p_key, p_burst, t) ON CONFLICT (key) DO NOTHING;
    SELECT * INTO b FROM plpgsql_buckets WHERE key = p_key FOR UPDATE;
    available := least(p_burst, b.tokens + extract(epoch FROM t - b.updated_at) * p_rate);
    IF available >= 1 THEN
        UPDATE plpgsql_buckets SET tokens = available - 1, updated_at = t WHERE key = p_key;
        RETURN true;
    END IF;
    UPDATE plpgsql_buckets SET tokens = available, updated_at = t WHERE key = p_key;
    RETURN false;
END $$;
SQL

declare -A script
script[select_1]='SELECT 1;'
script[rate_limit_hot]="SELECT infra.rate_limit('hot', 100000, '1 second', 1000);"
script[rate_limit_10k]=$'\\set k random(1, 10000)\nSELECT infra.rate_limit(:k, 1000, \'1 second\');'
script[breaker_allow]="SELECT infra.breaker_allow('database');"
script[plpgsql_hot]="SELECT plpgsql_take('hot', 100000, 1000);"
script[plpgsql_10k]=$'\\set k random(1, 10000)\nSELECT plpgsql_take(:k, 1000, 1000);'

declare -A tps
declare -A samples
workloads="select_1 rate_limit_hot rate_limit_10k breaker_allow plpgsql_hot plpgsql_10k"

for w in $workloads; do
	printf '%s\n' "${script[$w]}" >"$work/$w.sql"
	# Warm up: caches, and the 10,000 keys or rows created.
	pgbench -n -M prepared -c "$clients" -j 2 -T 2 -f "$work/$w.sql" >/dev/null 2>&1
done

median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "pgbench -M prepared, $clients clients, median of $rounds rounds of ${seconds}s"
echo "(key table sized for the working set: infra.rate_limit_max_keys = 20000)"
for r in $(seq 1 "$rounds"); do
	for w in $workloads; do
		t=$(pgbench -n -M prepared -c "$clients" -j 2 -T "$seconds" -f "$work/$w.sql" 2>&1 |
			sed -n 's/^tps = \([0-9.]*\) .*/\1/p')
		samples[$w]="${samples[$w]:-} $t"
	done
done
for w in $workloads; do
	tps[$w]=$(echo "${samples[$w]}" | median)
	printf '%-16s %12.0f tps   (rounds:%s)\n' "$w" "${tps[$w]}" "${samples[$w]}"
done

# Redis: the same token bucket in Lua, called with EVALSHA.
rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
	--daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
for _ in $(seq 1 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
sha=$(redis-cli -p "$rport" SCRIPT LOAD "$(cat "$here/token_bucket.lua")")
requests=$(awk -v t="${tps[select_1]}" -v s="$((seconds * rounds))" 'BEGIN { n = int(t * s); print (n < 100000 ? 100000 : n) }')
redis_line=$(redis-benchmark -p "$rport" -c "$clients" -n "$requests" -q \
	EVALSHA "$sha" 1 bucket:hot 100000 1000 1 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -n 1)
tps[redis_lua_hot]=$(echo "$redis_line" | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p')
printf '%-16s %12.0f req/s (redis-benchmark, %d requests)\n' redis_lua_hot "${tps[redis_lua_hot]}" "$requests"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# check LABEL OURS BASELINE TARGET: our ratio, the target, and the ceiling:
# no SQL function can beat SELECT 1's round trip, so SELECT 1 / BASELINE is
# the most any function could reach against that baseline on this machine.
check() {
	local label=$1 ours=$2 base=$3 target=$4
	local value ceiling verdict
	value=$(ratio "$ours" "$base")
	ceiling=$(ratio "${tps[select_1]}" "$base")
	verdict=$(awk -v v="$value" -v t="$target" 'BEGIN { print (v >= t ? "meets" : "BELOW") }')
	printf '%-44s %7s x  target >= %-5s %-5s (SELECT 1 itself: %s x)\n' \
		"$label" "$value" "$target" "$verdict" "$ceiling"
}

echo
echo "ratios"
check "rate_limit (hot key) / SELECT 1" "${tps[rate_limit_hot]}" "${tps[select_1]}" 0.85
check "rate_limit (10,000 keys) / SELECT 1" "${tps[rate_limit_10k]}" "${tps[select_1]}" 0.85
check "breaker_allow / SELECT 1" "${tps[breaker_allow]}" "${tps[select_1]}" 0.85
check "rate_limit / PL/pgSQL bucket (hot key)" "${tps[rate_limit_hot]}" "${tps[plpgsql_hot]}" 20
check "rate_limit / PL/pgSQL bucket (10,000 keys)" "${tps[rate_limit_10k]}" "${tps[plpgsql_10k]}" 20
check "rate_limit / Redis Lua bucket (hot key)" "${tps[rate_limit_hot]}" "${tps[redis_lua_hot]}" 1.3
