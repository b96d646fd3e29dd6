#!/usr/bin/env bash
# Exactly once against at least once (issue 27, item 5), one broker, one
# PostgreSQL, the WAL outbox, infra.kafka_delivery switched by reload
# between runs (paired and interleaved: at_least_once, exactly_once, ...):
#  1. 100,000 messages of 100 bytes committed in transactions of 1,000:
#     time from the first commit to kafka_flush returning (with
#     exactly_once: the last Kafka transaction committed), BENCH_PAIRS
#     pairs (default 9: one pair takes a quarter of a second, and this
#     machine is noisy); the ratio of the pair's throughputs, median.
#  2. Single-row commits at a steady 1,000 msg/s (pgbench -R) for
#     BENCH_LATENCY_SECONDS (default 10): latency from the commit (the
#     value is clock_timestamp() at the send) to a read_committed consumer
#     (kcat, librdkafka's default) receiving the message, p50 and p99, each
#     mode; with exactly_once a message is visible once its transaction's
#     commit marker is written.
#  3. Kafka alone, no PostgreSQL (test/bench/kafka/eos_probe.c, the same
#     librdkafka): an idempotent producer against transactions, each with a
#     progress record, on three transactional producers in turn, committed
#     one after the other; (a) 100,000 messages of 100 bytes in as many
#     transactions as exactly_once used in part 1, BENCH_PAIRS pairs; (b)
#     1,000 msg/s for BENCH_LATENCY_SECONDS, due to visible by the same
#     read_committed consumer.  What the protocol itself costs on this
#     machine, beside what infra's modes cost.
# PostgreSQL runs with production durability (fsync, synchronous_commit).
# Knobs: BENCH_PG_SETTINGS (more name=value settings for the server, e.g.
# infra.kafka_batch_size=1000); BENCH_LIBRDKAFKA_DIR, a directory holding
# another build's librdkafka.so.1 for the server to load instead of
# Debian's (the README says why and where one comes from);
# INFRA_KAFKA_JVM_OPTS, the broker's JVM options (test/kafka/broker.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

messages=${BENCH_MESSAGES:-100000}
pairs=${BENCH_PAIRS:-9}
seconds=${BENCH_LATENCY_SECONDS:-10}
per_txn=1000
bench_start_broker
if [ -n "${BENCH_LIBRDKAFKA_DIR:-}" ]; then
	[ -r "$BENCH_LIBRDKAFKA_DIR/librdkafka.so.1" ] || die "no librdkafka.so.1 in $BENCH_LIBRDKAFKA_DIR"
	export LD_LIBRARY_PATH="$BENCH_LIBRDKAFKA_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# shellcheck disable=SC2086 # BENCH_PG_SETTINGS is a list of words
bench_start_pg "infra.kafka_brokers=$bootstrap" "${bench_logical_settings[@]}" ${BENCH_PG_SETTINGS:-}
psql -X -q -c 'CREATE EXTENSION infra'
bench_set_outbox wal

# set_delivery MODE: reload, then wait until the worker's producer is the
# mode's (exactly_once: it has read its progress back).
set_delivery() {
	psql -X -q -c "ALTER SYSTEM SET infra.kafka_delivery = '$1'" -c 'SELECT pg_reload_conf()' >/dev/null
	# One message through the new producer.
	psql -X -qAt -c "SELECT infra.kafka_send('bench_eos_warmup', '$1')" -c "SELECT infra.kafka_flush('60 s')" | grep -q t ||
		die "no delivery after switching to $1"
}

payload="repeat('x', 92) || lpad(g::text, 8, '0')"
statements() {
	local topic=$1 b
	for b in $(seq 0 $((messages / per_txn - 1))); do
		echo "SELECT count(infra.kafka_send('$topic', $payload, 'k' || (g % 100))) FROM generate_series($((b * per_txn + 1)), $(((b + 1) * per_txn))) g;"
	done
	echo '\o'
	echo "SELECT infra.kafka_flush('600 s');"
}

# --- 1. throughput, paired ---------------------------------------------------
# CPU time in ms: cpu_ms PID (a process, user + system) or cpu_ms (the
# whole machine, busy).
hz=$(getconf CLK_TCK)
cpu_ms() {
	if [ $# = 1 ]; then
		awk -v hz="$hz" '{ print int(($14 + $15) * 1000 / hz) }' "/proc/$1/stat"
	else
		awk -v hz="$hz" '/^cpu / { print int(($2 + $3 + $4 + $7 + $8) * 1000 / hz) }' /proc/stat
	fi
}
declare -a ratios
declare -A cpu_broker cpu_worker cpu_machine txns
echo "$messages messages of 100 bytes, transactions of $per_txn: first commit to kafka_flush returning"
for p in $(seq 1 "$pairs"); do
	declare -A ms
	for mode in at_least_once exactly_once; do
		set_delivery "$mode"
		topic="bench_eos_${mode}_$p"
		printf 'warmup\n' | kcat -P -b "$bootstrap" -t "$topic" 2>/dev/null
		statements "$topic" >"$work/send.sql"
		broker_pid=$(cat "$work/kafka/broker.pid")
		worker_pid=$(psql -X -qAt -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'infra worker' AND datname = current_database() LIMIT 1")
		read -r b0 w0 m0 < <(echo "$(cpu_ms "$broker_pid") $(cpu_ms "$worker_pid") $(cpu_ms)")
		t0=$(psql -X -qAt -c 'SELECT transactions_committed_total FROM infra.kafka_stats()')
		start=$(now_ms)
		flushed=$(psql -X -qAt -o /dev/null -f "$work/send.sql")
		ms[$mode]=$(($(now_ms) - start))
		cpu_broker[$mode]=$((${cpu_broker[$mode]:-0} + $(cpu_ms "$broker_pid") - b0))
		cpu_worker[$mode]=$((${cpu_worker[$mode]:-0} + $(cpu_ms "$worker_pid") - w0))
		cpu_machine[$mode]=$((${cpu_machine[$mode]:-0} + $(cpu_ms) - m0))
		txns[$mode]=$((${txns[$mode]:-0} + $(psql -X -qAt -c 'SELECT transactions_committed_total FROM infra.kafka_stats()') - t0))
		[ "$flushed" = t ] || die "kafka_flush timed out ($mode)"
		got=$(kcat -C -b "$bootstrap" -t "$topic" -o beginning -e -q -f '%s\n' | grep -vc warmup || true)
		[ "$got" = "$messages" ] || die "$mode: a read_committed consumer got $got of $messages"
	done
	ratio=$(awk -v a="${ms[at_least_once]}" -v e="${ms[exactly_once]}" 'BEGIN { printf "%.2f", a / e }')
	ratios+=("$ratio")
	printf 'pair %d: at_least_once %5d ms  exactly_once %5d ms  throughput ratio %s\n' "$p" \
		"${ms[at_least_once]}" "${ms[exactly_once]}" "$ratio"
	unset ms
done
# Which librdkafka the worker ran with (its producers' start line says).
echo "the infra worker ran $(grep -o 'librdkafka [0-9][0-9.]*' "$work/pg/postgres.log" | tail -1)"
# What the machine spent: on these 2 cores both modes keep it busy, so the
# throughput ratio follows the CPU each mode costs.
for mode in at_least_once exactly_once; do
	printf 'CPU per %d messages, %-14s broker %4d ms  infra worker %4d ms  machine %4d ms  Kafka transactions %d\n' \
		"$messages" "$mode:" $((cpu_broker[$mode] / pairs)) $((cpu_worker[$mode] / pairs)) $((cpu_machine[$mode] / pairs)) \
		$((txns[$mode] / pairs))
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
printf '%-44s %s x, range %s-%s (target >= 0.9: %s)\n' "exactly_once / at_least_once throughput, median" "$median" \
	"$(printf '%s\n' "${ratios[@]}" | sort -n | head -1)" "$(printf '%s\n' "${ratios[@]}" | sort -n | tail -1)" \
	"$(awk -v r="$median" 'BEGIN { print (r >= 0.9 ? "meets" : "BELOW") }')"

# --- 2. commit to visible at 1,000 msg/s ---------------------------------------
# consumer_start TOPIC: a read_committed consumer (kcat, librdkafka's
# default) stamping each value (microseconds since the epoch) on arrival.
consumer_start() {
	consumer_topic=$1
	kcat -C -b "$bootstrap" -t "$consumer_topic" -o end -u -q -f '%s\n' |
		perl -MTime::HiRes=time -ne '$| = 1; chomp; printf "%.6f %s\n", time, $_ if /^\d{10,}$/' >"$work/received" &
	consumer=$!
	sleep 2
}
# consumer_stop: stop it; print p50 p99 n of its latencies in ms.
consumer_stop() {
	sleep 1
	kill "$consumer" 2>/dev/null || true
	pkill -f "kcat -C -b $bootstrap -t $consumer_topic" 2>/dev/null || true
	wait "$consumer" 2>/dev/null || true
	bench_receipt_ms "$work/received" >"$work/latency"
	awk '{ v[NR] = $1 } END { printf "%s %s %d\n", v[int(NR * 0.50) + 1], v[int(NR * 0.99) + 1], NR }' "$work/latency"
}
# latency MODE: p50 p99 n of commit-to-receipt by a read_committed consumer.
latency() {
	local mode=$1 topic="bench_eos_latency_$1"
	set_delivery "$mode"
	printf 'warmup\n' | kcat -P -b "$bootstrap" -t "$topic" 2>/dev/null
	psql -X -qAt -c "SELECT infra.kafka_send('$topic', '0')" -c "SELECT infra.kafka_flush('60 s')" >/dev/null
	consumer_start "$topic"
	echo "SELECT infra.kafka_send('$topic', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text);" >"$work/latency.sql"
	pgbench -n -R 1000 -c 4 -j 2 -T "$seconds" -f "$work/latency.sql" >/dev/null 2>&1
	psql -X -qAt -c "SELECT infra.kafka_flush('120 s')" | grep -q t
	consumer_stop
}
# p99_of FUNCTION BASELINE MODE: FUNCTION (printing p50 p99 n) run for the
# baseline, then the mode, each printed; p99_ratio is the mode's p99 over
# the baseline's.
p99_of() {
	local f=$1 m p50 p99v count
	local -A got
	for m in "$2" "$3"; do
		read -r p50 p99v count < <("$f" "$m")
		got[$m]=$p99v
		printf '%-16s p50 %6.1f ms  p99 %6.1f ms  (%d messages)\n' "$m" "$p50" "$p99v" "$count"
	done
	p99_ratio=$(awk -v e="${got[$3]}" -v a="${got[$2]}" 'BEGIN { printf "%.2f", e / a }')
}
echo
echo "single-row commits at 1,000 msg/s for ${seconds}s: commit to receipt by a read_committed consumer"
p99_of latency at_least_once exactly_once
ratio=$p99_ratio
printf '%-44s %s x (target <= 1.5: %s)\n' "p99 exactly_once / at_least_once" "$ratio" \
	"$(awk -v r="$ratio" 'BEGIN { print (r <= 1.5 ? "meets" : "ABOVE") }')"
eos_p99_ratio=$ratio

# --- 3. Kafka alone -------------------------------------------------------------
# The same broker and librdkafka, no PostgreSQL: what Kafka's transactions
# cost by themselves, with as many transactions per 100,000 as part 1's
# exactly_once rounds made.  The worker goes back to one idle producer
# (its three transactional ones would share the machine with the probe).
psql -X -q -c "ALTER SYSTEM SET infra.kafka_delivery = 'at_least_once'" -c 'SELECT pg_reload_conf()' >/dev/null
cc -O2 -o "$work/eos_probe" "$here/kafka/eos_probe.c" -lrdkafka
as_test_user "$here/../kafka/broker.sh" create-topic "$work/kafka" bench_probe_progress 1 cleanup.policy=compact >/dev/null
per_probe_txn=$((messages / (txns[exactly_once] / pairs > 0 ? txns[exactly_once] / pairs : 1)))
echo
echo "Kafka alone (no PostgreSQL): $messages messages of 100 bytes, transactions of $per_probe_txn (three producers in turn)"
declare -a probe_ratios
for p in $(seq 1 "$pairs"); do
	declare -A pms
	for mode in idem txn; do
		topic="bench_probe_${mode}_$p"
		printf 'warmup\n' | kcat -P -b "$bootstrap" -t "$topic" 2>/dev/null
		pms[$mode]=$("$work/eos_probe" throughput "$bootstrap" "$topic" "$messages" "$per_probe_txn" "$mode" bench_probe_progress)
		got=$(kcat -C -b "$bootstrap" -t "$topic" -o beginning -e -q -f '%s\n' | grep -vc warmup || true)
		[ "$got" = "$messages" ] || die "probe $mode: a read_committed consumer got $got of $messages"
	done
	ratio=$(awk -v a="${pms[idem]}" -v e="${pms[txn]}" 'BEGIN { printf "%.2f", a / e }')
	probe_ratios+=("$ratio")
	printf 'pair %d: idempotent %5d ms  transactional %5d ms  throughput ratio %s\n' "$p" "${pms[idem]}" "${pms[txn]}" "$ratio"
	unset pms
done
median=$(printf '%s\n' "${probe_ratios[@]}" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
printf '%-44s %s x, range %s-%s\n' "Kafka alone, transactional / idempotent" "$median" \
	"$(printf '%s\n' "${probe_ratios[@]}" | sort -n | head -1)" "$(printf '%s\n' "${probe_ratios[@]}" | sort -n | tail -1)"
echo
echo "Kafka alone: 1,000 msg/s for ${seconds}s, due to receipt by a read_committed consumer"
# probe_latency MODE: p50 p99 n of due-to-receipt, the probe producing.
probe_latency() {
	local topic="bench_probe_latency_$1"
	printf 'warmup\n' | kcat -P -b "$bootstrap" -t "$topic" 2>/dev/null
	consumer_start "$topic"
	"$work/eos_probe" latency "$bootstrap" "$topic" 1000 "$seconds" "$1" bench_probe_progress
	consumer_stop
}
p99_of probe_latency idem txn
printf '%-44s %s x (infra: %s x)\n' "Kafka alone, p99 transactional / idempotent" "$p99_ratio" "$eos_p99_ratio"
