#!/usr/bin/env bash
# Kafka benchmark (issue 5), one run, one broker, one PostgreSQL:
#  1. 100,000 messages of 100 bytes committed in transactions of 1,000:
#     time from the first commit to the last delivery, for infra.kafka_send,
#     for kcat producing the same messages directly, and for the relay users
#     write by hand (rows in a plain table, then COPY ... TO STDOUT | kcat -P,
#     which has no at-least-once and no ordering by commit).
#  2. Single-row commits at a steady 1,000 msg/s (pgbench -R): latency from
#     commit to the broker appending the message (the topic is registered
#     with LogAppendTime, so the broker stamps it), p50 and p99.
# PostgreSQL runs with production durability (fsync, synchronous_commit).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

messages=${BENCH_MESSAGES:-100000}
per_txn=1000
bench_start_broker
bench_start_pg "infra.kafka_brokers=$bootstrap"
psql -X -q -c 'CREATE EXTENSION infra' -c 'CREATE TABLE relay (id bigserial PRIMARY KEY, payload text)'

payload="repeat('x', 92) || lpad(g::text, 8, '0')"   # 100 bytes, unique

# Topics exist before timing starts (auto-creation is not what we measure).
for t in bench_infra bench_kcat bench_relay; do
	printf 'warmup\n' | kcat -P -b "$bootstrap" -t "$t" -X acks=all 2>/dev/null
done

# --- 1. throughput ----------------------------------------------------------
batches=$((messages / per_txn))
statements="$work/infra.sql"
: >"$statements"
for b in $(seq 0 $((batches - 1))); do
	echo "SELECT count(infra.kafka_send('bench_infra', $payload, 'k' || (g % 100))) FROM generate_series($((b * per_txn + 1)), $(((b + 1) * per_txn))) g;" >>"$statements"
done
start=$(now_ms)
psql -X -q -o /dev/null -f "$statements"
committed_ms=$(($(now_ms) - start))
psql -X -qAt -c "SELECT infra.kafka_flush('600 s')" | grep -q t
infra_ms=$(($(now_ms) - start))
delivered=$(kcat -C -b "$bootstrap" -t bench_infra -o beginning -e -q -f '%s\n' | grep -vc warmup || true)

psql -X -qAt -c "COPY (SELECT $payload FROM generate_series(1, $messages) g) TO STDOUT" >"$work/payloads"
start=$(now_ms)
kcat -P -b "$bootstrap" -t bench_kcat -X acks=all -X enable.idempotence=true -l "$work/payloads"
kcat_ms=$(($(now_ms) - start))

relay_sql="$work/relay.sql"
: >"$relay_sql"
for b in $(seq 0 $((batches - 1))); do
	echo "INSERT INTO relay (payload) SELECT $payload FROM generate_series($((b * per_txn + 1)), $(((b + 1) * per_txn))) g;" >>"$relay_sql"
done
start=$(now_ms)
psql -X -q -f "$relay_sql"
psql -X -qAt -c 'COPY (SELECT payload FROM relay ORDER BY id) TO STDOUT' |
	kcat -P -b "$bootstrap" -t bench_relay -X acks=all -X enable.idempotence=true
relay_ms=$(($(now_ms) - start))

rate() { awk -v n="$messages" -v ms="$1" 'BEGIN { printf "%.0f", n / (ms / 1000) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo "$messages messages of 100 bytes, transactions of $per_txn (first commit to last delivery)"
printf '%-34s %8d ms %10s msg/s  (all committed after %d ms)\n' "infra.kafka_send (delivered $delivered)" "$infra_ms" "$(rate "$infra_ms")" "$committed_ms"
printf '%-34s %8d ms %10s msg/s\n' "kcat -P directly" "$kcat_ms" "$(rate "$kcat_ms")"
printf '%-34s %8d ms %10s msg/s\n' "table + COPY | kcat -P relay" "$relay_ms" "$(rate "$relay_ms")"
echo
printf '%-44s %8s   (target >= 50000: %s)\n' "infra end to end, msg/s" "$(rate "$infra_ms")" \
	"$(awk -v r="$(rate "$infra_ms")" 'BEGIN { print (r >= 50000 ? "meets" : "BELOW") }')"
printf '%-44s %8s x (target >= 1.0: %s)\n' "infra / hand-written relay" "$(ratio "$relay_ms" "$infra_ms")" \
	"$(awk -v r="$(ratio "$relay_ms" "$infra_ms")" 'BEGIN { print (r >= 1.0 ? "meets" : "BELOW") }')"
printf '%-44s %8s x\n' "infra / kcat directly" "$(ratio "$kcat_ms" "$infra_ms")"

# --- 2. latency at a steady 1,000 msg/s --------------------------------------
psql -X -qAt -c "SELECT infra.topic_register('bench', 'latency', config => '{\"message.timestamp.type\": \"LogAppendTime\"}')" >/dev/null
for _ in $(seq 1 100); do
	state=$(psql -X -qAt -c "SELECT broker_state FROM infra.topics WHERE name = 'dev.bench.latency.v1'")
	[ "$state" != pending ] && break
	sleep 0.1
done
# Warm up: the new topic's metadata and leader are not what we measure.
psql -X -qAt -c "SELECT infra.kafka_send('dev.bench.latency.v1', '0')" -c "SELECT infra.kafka_flush('60 s')" >/dev/null
echo "SELECT infra.kafka_send('dev.bench.latency.v1', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text);" >"$work/latency.sql"
seconds=${BENCH_LATENCY_SECONDS:-10}
pgbench -n -R 1000 -c 4 -j 2 -T "$seconds" -f "$work/latency.sql" >/dev/null 2>&1
psql -X -qAt -c "SELECT infra.kafka_flush('120 s')" | grep -q t
kcat -C -b "$bootstrap" -t dev.bench.latency.v1 -o beginning -e -q -f '%T %s\n' |
	awk '$2 > 0 { d = $1 - $2 / 1000; if (d < 0) d = 0; print d }' | sort -n >"$work/latency"
count=$(wc -l <"$work/latency")
p50=$(awk -v n="$count" 'NR == int(n * 0.50) + 1 { print; exit }' "$work/latency")
p99=$(awk -v n="$count" 'NR == int(n * 0.99) + 1 { print; exit }' "$work/latency")
echo
echo "single-row commits at 1,000 msg/s for ${seconds}s ($count messages): commit to broker append"
printf '%-44s %8.1f ms (target <= 5: %s)\n' "p50" "$p50" "$(awk -v v="$p50" 'BEGIN { print (v <= 5 ? "meets" : "ABOVE") }')"
printf '%-44s %8.1f ms (target <= 50: %s)\n' "p99" "$p99" "$(awk -v v="$p99" 'BEGIN { print (v <= 50 ? "meets" : "ABOVE") }')"
echo "(broker timestamps have millisecond resolution)"
