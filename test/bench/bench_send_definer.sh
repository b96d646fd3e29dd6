#!/usr/bin/env bash
# Why kafka_send is not SECURITY DEFINER with a pinned search_path (issue
# 12): a SET clause makes every call save, set and restore search_path (and
# recompute the namespace path).  kafka_send runs as its caller instead and
# takes the outbox owner's rights only for its own schema-qualified
# statements.  Paired and interleaved on one server: rounds with kafka_send
# as installed alternate with rounds where it is redefined SECURITY DEFINER
# SET search_path = pg_catalog, pg_temp; pgbench -M prepared, 2 clients,
# each transaction 100 kafka_send calls then ROLLBACK (the outbox does not
# grow; only the call is measured).  Prints the median ratio of the pairs
# and its spread.  BENCH_ROUNDS pairs (default 10) of BENCH_SECONDS
# (default 3).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

rounds=${BENCH_ROUNDS:-10}
seconds=${BENCH_SECONDS:-3}
bench_start_pg
psql -X -q -c 'CREATE EXTENSION infra'
script="$work/send.sql"
cat >"$script" <<'SQL'
BEGIN;
SELECT count(infra.kafka_send('bench_pinned', 'value of a message', 'k' || g)) FROM generate_series(1, 100) g;
ROLLBACK;
SQL
chmod a+r "$script"

pin() {
	local clause=$1
	for form in text bytea jsonb; do
		psql -X -q -c "ALTER FUNCTION infra.kafka_send(text, $form, text, jsonb, integer) $clause"
	done
}

tps() {
	pgbench -n -M prepared -c 2 -j 2 -T "$seconds" -f "$script" 2>/dev/null |
		sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

ratios=()
for i in $(seq 1 "$rounds"); do
	pin 'SECURITY DEFINER SET search_path = pg_catalog, pg_temp'
	pinned=$(tps)
	pin 'SECURITY INVOKER RESET search_path'
	installed=$(tps)
	ratio=$(awk -v a="$pinned" -v b="$installed" 'BEGIN { printf "%.3f", a / b }')
	ratios+=("$ratio")
	printf 'round %2d: definer+SET %8.1f tps, as installed %8.1f tps, ratio %s\n' "$i" "$pinned" "$installed" "$ratio"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '
	{ r[NR] = $1 }
	END {
		m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
		printf "kafka_send SECURITY DEFINER + SET search_path / as installed (100 calls per transaction): median %.3f x, range %.3f-%.3f x over %d pairs\n", m, r[1], r[NR], NR
		printf "what the SET clause would cost per call: %.1f %%\n", (1 - m) * 100
	}'
