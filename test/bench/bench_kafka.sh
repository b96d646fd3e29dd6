#!/usr/bin/env bash
# Kafka benchmark (issues 5 and 26), one run, one broker, one PostgreSQL,
# both outboxes (infra.kafka_outbox = table, then wal, switched by reload):
#  1. 100,000 messages of 100 bytes committed in transactions of 1,000:
#     time from the first commit to the last delivery, for infra.kafka_send
#     with each outbox, for kcat producing the same messages directly, and
#     for the relay users write by hand (rows in a plain table, then COPY
#     ... TO STDOUT | kcat -P, which has no at-least-once and no ordering by
#     commit).
#  2. Single-row commits at a steady 1,000 msg/s (pgbench -R): latency from
#     commit to the broker appending the message (the topic is registered
#     with LogAppendTime, so the broker stamps it), p50 and p99, each outbox.
#  3. A steady 20,000 msg/s (2,000 transactions/s of 10 messages): the same
#     latency, each outbox (target p99 < 20 ms).
# PostgreSQL runs with production durability (fsync, synchronous_commit).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

messages=${BENCH_MESSAGES:-100000}
per_txn=1000
bench_start_broker
bench_start_pg "infra.kafka_brokers=$bootstrap" "${bench_logical_settings[@]}"
psql -X -q -c 'CREATE EXTENSION infra' -c 'CREATE TABLE relay (id bigserial PRIMARY KEY, payload text)'

payload="repeat('x', 92) || lpad(g::text, 8, '0')"   # 100 bytes, unique

# Topics exist before timing starts (auto-creation is not what we measure).
for t in bench_infra_table bench_infra_wal bench_kcat bench_relay; do
	printf 'warmup\n' | kcat -P -b "$bootstrap" -t "$t" -X acks=all 2>/dev/null
done

# --- 1. throughput ----------------------------------------------------------
batches=$((messages / per_txn))
declare -A infra_ms committed_ms delivered
for mode in table wal; do
	bench_set_outbox "$mode"
	statements="$work/infra_$mode.sql"
	: >"$statements"
	for b in $(seq 0 $((batches - 1))); do
		echo "SELECT count(infra.kafka_send('bench_infra_$mode', $payload, 'k' || (g % 100))) FROM generate_series($((b * per_txn + 1)), $(((b + 1) * per_txn))) g;" >>"$statements"
	done
	# The session that commits them then waits for their delivery (one
	# client start in the timing, as kcat's): it prints when its last
	# commit was done (server clock, same machine) and kafka_flush's answer.
	cat >>"$statements" <<-'SQL'
		\o
		SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint, infra.kafka_flush('600 s');
	SQL
	start=$(now_ms)
	read -r committed_at flushed < <(psql -X -qAt -F ' ' -o /dev/null -f "$statements")
	infra_ms[$mode]=$(($(now_ms) - start))
	[ "$flushed" = t ] || die "kafka_flush timed out ($mode outbox)"
	committed_ms[$mode]=$((committed_at - start))
	delivered[$mode]=$(kcat -C -b "$bootstrap" -t "bench_infra_$mode" -o beginning -e -q -f '%s\n' | grep -vc warmup || true)
done

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
for mode in table wal; do
	printf '%-34s %8d ms %10s msg/s  (all committed after %d ms)\n' "kafka_send, $mode outbox (got ${delivered[$mode]})" \
		"${infra_ms[$mode]}" "$(rate "${infra_ms[$mode]}")" "${committed_ms[$mode]}"
done
printf '%-34s %8d ms %10s msg/s\n' "kcat -P directly" "$kcat_ms" "$(rate "$kcat_ms")"
printf '%-34s %8d ms %10s msg/s\n' "table + COPY | kcat -P relay" "$relay_ms" "$(rate "$relay_ms")"
echo
for mode in table wal; do
	printf '%-44s %8s   (target >= 50000: %s)\n' "infra ($mode) end to end, msg/s" "$(rate "${infra_ms[$mode]}")" \
		"$(awk -v r="$(rate "${infra_ms[$mode]}")" 'BEGIN { print (r >= 50000 ? "meets" : "BELOW") }')"
	printf '%-44s %8s x (target >= 1.0: %s)\n' "infra ($mode) / hand-written relay" "$(ratio "$relay_ms" "${infra_ms[$mode]}")" \
		"$(awk -v r="$(ratio "$relay_ms" "${infra_ms[$mode]}")" 'BEGIN { print (r >= 1.0 ? "meets" : "BELOW") }')"
	printf '%-44s %8s x (target >= 0.5: %s)\n' "infra ($mode) / kcat directly" "$(ratio "$kcat_ms" "${infra_ms[$mode]}")" \
		"$(awk -v r="$(ratio "$kcat_ms" "${infra_ms[$mode]}")" 'BEGIN { print (r >= 0.5 ? "meets" : "BELOW") }')"
done

# --- 2. and 3. latency at a steady rate --------------------------------------
# latency MODE RATE PER_TXN SECONDS: commit to broker append of every
# message sent at RATE transactions/s of PER_TXN messages; prints p50 p99 n.
latency() {
	local mode=$1 rate=$2 n=$3 seconds=$4 topic
	bench_set_outbox "$mode"
	topic="dev.bench.latency$n$mode.v1"
	psql -X -qAt -c "SELECT infra.topic_register('bench', 'latency$n$mode', config => '{\"message.timestamp.type\": \"LogAppendTime\"}')" >/dev/null
	for _ in $(seq 1 100); do
		state=$(psql -X -qAt -c "SELECT broker_state FROM infra.topics WHERE name = '$topic'")
		[ "$state" != pending ] && break
		sleep 0.1
	done
	# Warm up: the new topic's metadata and leader are not what we measure.
	psql -X -qAt -c "SELECT infra.kafka_send('$topic', '0')" -c "SELECT infra.kafka_flush('60 s')" >/dev/null
	echo "SELECT count(infra.kafka_send('$topic', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text)) FROM generate_series(1, $n);" >"$work/latency.sql"
	pgbench -n -R "$rate" -c 4 -j 2 -T "$seconds" -f "$work/latency.sql" >/dev/null 2>&1
	psql -X -qAt -c "SELECT infra.kafka_flush('120 s')" | grep -q t
	kcat -C -b "$bootstrap" -t "$topic" -o beginning -e -q -f '%T %s\n' |
		awk '$2 > 0 { d = $1 - $2 / 1000; if (d < 0) d = 0; print d }' | sort -n >"$work/latency"
	awk '{ v[NR] = $1 } END { printf "%s %s %d\n", v[int(NR * 0.50) + 1], v[int(NR * 0.99) + 1], NR }' "$work/latency"
}
seconds=${BENCH_LATENCY_SECONDS:-10}
echo
echo "single-row commits at 1,000 msg/s for ${seconds}s: commit to broker append"
for mode in table wal; do
	read -r p50 p99 count < <(latency "$mode" 1000 1 "$seconds")
	printf '%-44s p50 %5.1f ms (target <= 5: %s)  p99 %5.1f ms (target <= 50: %s)  (%d messages)\n' "$mode outbox" \
		"$p50" "$(awk -v v="$p50" 'BEGIN { print (v <= 5 ? "meets" : "ABOVE") }')" \
		"$p99" "$(awk -v v="$p99" 'BEGIN { print (v <= 50 ? "meets" : "ABOVE") }')" "$count"
done
echo "20,000 msg/s (2,000 commits/s of 10) for ${seconds}s: commit to broker append"
for mode in table wal; do
	read -r p50 p99 count < <(latency "$mode" 2000 10 "$seconds")
	printf '%-44s p50 %5.1f ms  p99 %5.1f ms (target < 20: %s)  (%d messages, %d/s)\n' "$mode outbox" \
		"$p50" "$p99" "$(awk -v v="$p99" 'BEGIN { print (v < 20 ? "meets" : "ABOVE") }')" "$count" $((count / seconds))
done
echo "(broker timestamps have millisecond resolution)"
