#!/usr/bin/env bash
# The outbox with a backlog (issue 26, item 4), one run, one broker, one
# PostgreSQL (fsync, synchronous_commit), each outbox in turn (table, then
# wal, switched by reload):
#  1. steady: 100,000 messages of 100 bytes in transactions of 1,000 sent
#     and delivered with the broker up: the send-and-deliver rate;
#  2. the broker paused (SIGSTOP): BENCH_BACKLOG (default 500,000) messages
#     committed in chunks of 100,000; kafka_send's speed on the last chunk
#     (the backlog below it) over the first (an empty outbox);
#  3. the broker resumed: the time until everything is delivered, the drain
#     rate over the steady rate;
#  4. after a VACUUM: the table outbox's size over its size when empty (as
#     after the steady run, vacuumed), and for wal the WAL the slot holds.
# Targets: send speed >= 0.9, drain >= 0.9 x steady, size <= 2 x empty.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

backlog=${BENCH_BACKLOG:-500000}
chunk=100000
per_txn=1000
bench_start_broker
bench_start_pg "infra.kafka_brokers=$bootstrap" "${bench_logical_settings[@]}"
psql -X -q -c 'CREATE EXTENSION infra'
payload="repeat('x', 92) || lpad(g::text, 8, '0')"   # 100 bytes, unique

# statements FILE TOPIC FIRST COUNT: COUNT messages from number FIRST on.
statements() {
	local b
	: >"$1"
	for b in $(seq 0 $(($4 / per_txn - 1))); do
		echo "SELECT count(infra.kafka_send('$2', $payload, 'k' || (g % 100))) FROM generate_series($(($3 + b * per_txn)), $(($3 + (b + 1) * per_txn - 1))) g;" >>"$1"
	done
}
timed_file() {
	local start
	start=$(now_ms)
	psql -X -q -o /dev/null -f "$1"
	echo $(($(now_ms) - start))
}
flush() { psql -X -qAt -c "SELECT infra.kafka_flush('900 s')" | grep -q t; }
outbox_size() {
	psql -X -q -c 'VACUUM infra.kafka_outbox_batches' >/dev/null
	psql -X -qAt -c "SELECT pg_total_relation_size('infra.kafka_outbox_batches')"
}
fmt() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == "ge") ? v >= t : v <= t; print ok ? "meets" : "MISSES" }'; }

for mode in table wal; do
	topic="bench_backlog_$mode"
	printf 'warmup\n' | kcat -P -b "$bootstrap" -t "$topic" -X acks=all 2>/dev/null
	bench_set_outbox "$mode"

	statements "$work/steady.sql" "$topic" 1 $chunk
	start=$(now_ms)
	psql -X -q -o /dev/null -f "$work/steady.sql"
	flush
	steady_ms=$(($(now_ms) - start))
	# Empty, as it is in steady use: after the steady run, vacuumed.
	empty_size=$(outbox_size)

	as_test_user "$here/../kafka/broker.sh" pause "$work/kafka"
	first_ms=
	n=0
	for c in $(seq 1 $((backlog / chunk))); do
		statements "$work/chunk.sql" "$topic" $((chunk * c + 1)) $chunk
		ms=$(timed_file "$work/chunk.sql")
		[ -n "$first_ms" ] || first_ms=$ms
		last_ms=$ms
		n=$((n + chunk))
	done
	held_wal=$(psql -X -qAt -c "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::bigint FROM pg_replication_slots")
	table_rows=$(psql -X -qAt -c 'SELECT count(*) FROM infra.kafka_outbox')

	start=$(now_ms)
	as_test_user "$here/../kafka/broker.sh" resume "$work/kafka"
	flush
	drain_ms=$(($(now_ms) - start))
	got=$(kcat -C -b "$bootstrap" -t "$topic" -o beginning -e -q -f '%s\n' | sort -u | grep -vc warmup || true)
	after_size=$(outbox_size)
	# A checkpoint logs the running transactions; once the worker has read
	# past them (a flush makes it read) the slot may let go of older WAL.
	psql -X -q -c 'CHECKPOINT' >/dev/null
	flush
	left_wal=$(psql -X -qAt -c "SELECT coalesce(max(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), 0)::bigint FROM pg_replication_slots")

	steady_rate=$(awk -v n=$chunk -v ms="$steady_ms" 'BEGIN { printf "%.0f", n / ms * 1000 }')
	drain_rate=$(awk -v n="$n" -v ms="$drain_ms" 'BEGIN { printf "%.0f", n / ms * 1000 }')
	echo "-- $mode outbox: $n messages piled up while the broker was paused ($((n + chunk)) distinct delivered: $got)"
	printf '%-46s %8d msg/s\n' "steady send and deliver" "$steady_rate"
	printf '%-46s %8s x (first 100k %d ms, last %d ms; target >= 0.9: %s)\n' "kafka_send speed, backlog over empty" \
		"$(fmt "$first_ms" "$last_ms")" "$first_ms" "$last_ms" "$(verdict "$(fmt "$first_ms" "$last_ms")" 0.9 ge)"
	printf '%-46s %8d msg/s = %s x steady (target >= 0.9: %s)\n' "drain after resume" "$drain_rate" \
		"$(fmt "$drain_rate" "$steady_rate")" "$(verdict "$(fmt "$drain_rate" "$steady_rate")" 0.9 ge)"
	printf '%-46s %8s x (%d -> %d bytes; target <= 2: %s)\n' "table outbox after VACUUM, over empty" \
		"$(fmt "$after_size" "$empty_size")" "$empty_size" "$after_size" "$(verdict "$(fmt "$after_size" "$empty_size")" 2 le)"
	printf '%-46s %8d (WAL held by the slot at the peak: %d MB, after: %d kB)\n' "rows in the table outbox at the peak" \
		"$table_rows" $((held_wal / 1048576)) $((left_wal / 1024))
	[ "$got" = $((n + chunk)) ] || die "$mode: $got distinct messages delivered, not $((n + chunk))"
done
