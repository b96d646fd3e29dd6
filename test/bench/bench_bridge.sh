#!/usr/bin/env bash
# infra-bridge benchmark (issue 7), one run, one broker, one PostgreSQL:
# 1,000,000 JSON messages of about 100 bytes on a 4-partition topic into a
# table with a jsonb column, by
#   pipeline  kcat -C -e ... | psql -c "COPY ... FROM STDIN" (what people
#             write by hand; no exactly-once, no offsets, no dead letters)
#   bridge    infra-bridge (exactly once: batch and offsets in one
#             transaction), timed from its start to the last offset stored
# Prints rows/s of each and the ratio.  PostgreSQL runs with production
# durability (fsync, synchronous_commit).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

messages=${BENCH_MESSAGES:-1000000}
bridge_pid=
bench_on_exit() { [ -z "$bridge_pid" ] || kill "$bridge_pid" 2>/dev/null || true; }
bench_start_broker
bench_start_pg
psql -X -q -c 'CREATE EXTENSION infra' \
	-c 'CREATE TABLE via_pipeline (payload jsonb)' \
	-c 'CREATE TABLE via_bridge (payload jsonb)'


as_test_user "$here/../kafka/broker.sh" create-topic "$work/kafka" bench_bridge 4
bench_produce_orders bench_bridge "$messages"
echo "produced $messages messages ($(($(wc -c <"$work/orders_bench_bridge.txt") / messages)) bytes a line, key included)"

# The broker creates its group-offsets topic at the first use of any consumer
# group: do that before timing (a one-time broker setup, not the bridge's).
timeout 60 kcat -b "$bootstrap" -G bench_warmup -X auto.offset.reset=earliest -c 1 -q -o beginning bench_bridge >/dev/null 2>&1 || true

# The hand-written pipeline.
t0=$(now_ms)
kcat -C -b "$bootstrap" -t bench_bridge -e -q -f '%s\n' |
	psql -X -q -c 'COPY via_pipeline (payload) FROM STDIN'
t1=$(now_ms)
pipeline_ms=$((t1 - t0))
pipeline_rows=$(psql -X -At -c 'SELECT count(*) FROM via_pipeline')

# infra-bridge.
cat >"$work/bridge.ini" <<INI
[bridge]
conninfo = host=127.0.0.1 port=$port user=postgres dbname=postgres
brokers = $bootstrap
group = bench
${BENCH_BATCH:+batch_size = $BENCH_BATCH}
${BENCH_WRITERS:+writers = $BENCH_WRITERS}
log_level = ${BENCH_BRIDGE_LOG:-info}
${BENCH_BRIDGE_KAFKA:+[kafka]}
${BENCH_BRIDGE_KAFKA:-}

[route bench]
topics = bench_bridge
table = via_bridge
format = json
column = payload
INI
t0=$(now_ms)
"$PG_BINDIR/infra-bridge" --config "$work/bridge.ini" 2>"$work/bridge.log" &
bridge_pid=$!
bench_bridge_wait bench "$messages" "$bridge_pid" "$work/bridge.log"
t1=$(now_ms)
bridge_ms=$((t1 - t0))
# Seconds from the bridge's start to its partitions' assignment (group join).
ts_of() { grep -m1 "$1" "$work/bridge.log" | sed 's/.*"ts":"[^T]*T\([0-9:.]*\)Z".*/\1/' | awk -F: '{ print $1 * 3600 + $2 * 60 + $3 }'; }
join_s=$(awk -v a="$(ts_of starting)" -v b="$(ts_of 'assigned')" 'BEGIN { printf "%.2f", b - a }')
kill "$bridge_pid"
wait "$bridge_pid" || true
bridge_cpu=$(grep -o 'CPU: [^)]*' "$work/bridge.log" || true)
bridge_pid=
bridge_rows=$(psql -X -At -c 'SELECT count(*) FROM via_bridge')

echo "$messages JSON messages, 4 partitions, into a jsonb column (fsync on)"
awk -v r="$pipeline_rows" -v ms="$pipeline_ms" 'BEGIN { printf "pipeline (kcat | psql COPY)   %8d rows in %6.2f s: %8.0f rows/s\n", r, ms / 1000, r / (ms / 1000) }'
awk -v r="$bridge_rows" -v ms="$bridge_ms" 'BEGIN { printf "infra-bridge (exactly once)   %8d rows in %6.2f s: %8.0f rows/s (from process start, group join included)\n", r, ms / 1000, r / (ms / 1000) }'
echo "  of which joining the consumer group: ${join_s} s; the bridge's own ${bridge_cpu:-CPU: ?}"
ratio=$(awk -v b="$bridge_ms" -v p="$pipeline_ms" -v br="$bridge_rows" -v pr="$pipeline_rows" 'BEGIN { printf "%.2f", (br / b) / (pr / p) }')
rate=$(awk -v r="$bridge_rows" -v ms="$bridge_ms" 'BEGIN { printf "%.0f", r / (ms / 1000) }')
echo "bridge / pipeline: ${ratio}x (target >= 1.0: $(awk -v x="$ratio" 'BEGIN { print (x >= 1.0 ? "meets" : "MISSES") }'))"
echo "bridge rows/s: $rate (target >= 100000: $(awk -v x="$rate" 'BEGIN { print (x >= 100000 ? "meets" : "MISSES") }'))"
[ "$bridge_rows" = "$messages" ] || { echo "bridge wrote $bridge_rows rows, not $messages"; exit 1; }
