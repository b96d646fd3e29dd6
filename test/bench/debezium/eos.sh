# Sourced by bench_debezium.sh: exactly once into Kafka (issue 27, item 5).
#
#  infra with infra.kafka_delivery = exactly_once (the WAL outbox) against
#  Debezium's outbox connector and event router on a distributed Kafka
#  Connect worker with exactly.once.source.support = enabled (the connector
#  with exactly.once.support = required, transaction.boundary = poll: each
#  poll's records and source offsets in one Kafka transaction), at its
#  defaults and tuned as in outbox.sh; same broker, same PostgreSQL.  What
#  counts is what a read_committed consumer sees:
#   1. throughput: BENCH_MESSAGES (100,000) messages of 100 bytes committed
#      in transactions of 1,000, first commit to a read_committed consumer
#      (kcat, started before) having received the last one;
#   2. latency: single-row commits at BENCH_RATE (1,000) msg/s for
#      BENCH_LATENCY_SECONDS (10), commit to receipt by a read_committed
#      consumer, p50 and p99;
#   3. the relay SIGKILLed at 40% of fault_batches (300) transactions of
#      100 messages and started again (infra: its worker; Debezium: the
#      Connect worker): lost and duplicated messages a read_committed
#      consumer sees.

fault_batches=${BENCH_FAULT_BATCHES:-300}
. "$here/debezium/outbox_faults.sh"
eos_port=$(free_port)
eos_dir=$work/connect-eos

cat >"$work/worker-eos.properties" <<EOF
bootstrap.servers=$bootstrap
group.id=infra-bench-eos
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
config.storage.topic=bench-eos-configs
offset.storage.topic=bench-eos-offsets
status.storage.topic=bench-eos-status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
exactly.once.source.support=enabled
plugin.path=$INFRA_CACHE/debezium-3.6/plugins
connector.client.config.override.policy=All
listeners=http://127.0.0.1:$eos_port
EOF

eos_start_connect() {
	as_test_user mkdir -p "$eos_dir"
	as_test_user "$connect" start-distributed "$eos_dir" "$work/worker-eos.properties"
}
bench_on_exit() {
	as_test_user "$connect" kill "$work/connect" >/dev/null 2>&1 || true
	as_test_user "$connect" kill "$eos_dir" >/dev/null 2>&1 || true
}

# eos_connector NAME SETTING: the outbox connector, exactly once, through
# the REST API; returns once its slot streams.
eos_connector() {
	{
		connector "$1" "$2"
		echo "exactly.once.support=required"
		echo "transaction.boundary=poll"
	} | python3 -c 'import json, sys
c = dict(l.rstrip("\n").split("=", 1) for l in sys.stdin if "=" in l)
print(json.dumps(c))' >"$work/eos_$1.json"
	curl -sf -X PUT -H 'Content-Type: application/json' --data @"$work/eos_$1.json" \
		"http://127.0.0.1:$eos_port/connectors/$1/config" >/dev/null ||
		die "Kafka Connect refused the connector $1: $(curl -s -X PUT -H 'Content-Type: application/json' \
			--data @"$work/eos_$1.json" "http://127.0.0.1:$eos_port/connectors/$1/config")"
	for _ in $(seq 1 1200); do
		[ "$(psql -X -qAt -c "SELECT active FROM pg_replication_slots WHERE slot_name = 'dbz_$1'")" = t ] && return 0
		sleep 0.1
	done
	die "the connector $1 did not start streaming: $(curl -s "http://127.0.0.1:$eos_port/connectors/$1/status")"
}
eos_drop_connector() {
	curl -sf -X DELETE "http://127.0.0.1:$eos_port/connectors/$1" >/dev/null || true
	for _ in $(seq 1 300); do
		[ "$(psql -X -qAt -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'dbz_$1' AND active")" = 0 ] && break
		sleep 0.1
	done
	psql -X -q -c "SELECT pg_drop_replication_slot('dbz_$1')" >/dev/null 2>&1 || true
}

# eos_throughput KIND LABEL: 1. above.
eos_throughput() {
	local t="eos_tp_$2" start consumer
	new_topic "$t"
	statements "$1" "$work/eos.sql" "$t"
	kcat -C -b "$bootstrap" -t "$t" -X isolation.level=read_committed -o beginning -c "$messages" -q -f '\n' >/dev/null &
	consumer=$!
	start=$(now_ms)
	psql -X -q -o /dev/null -f "$work/eos.sql"
	wait "$consumer"
	echo "throughput $2 $(($(now_ms) - start))" >>"$work/results"
}

# eos_latency KIND LABEL: 2. above.
eos_latency() {
	local t="eos_lat_$2" consumer
	new_topic "$t"
	kcat -C -b "$bootstrap" -t "$t" -X isolation.level=read_committed -o beginning -u -q -f '%s\n' |
		perl -MTime::HiRes=time -ne '$| = 1; chomp; printf "%.6f %s\n", time, $_ if /^\d{10,}$/' >"$work/received_$2" &
	consumer=$!
	if [ "$1" = infra ]; then
		echo "SELECT infra.kafka_send('$t', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text);"
	else
		echo "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$t', 'k', 'e', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text);"
	fi >"$work/eos_lat.sql"
	sleep 1
	pgbench -n -R "$rate" -c 4 -j 2 -T "$lat_seconds" -f "$work/eos_lat.sql" >/dev/null 2>&1
	sleep 3
	kill "$consumer" 2>/dev/null || true
	pkill -f "kcat -C -b $bootstrap -t $t " 2>/dev/null || true
	wait "$consumer" 2>/dev/null || true
	bench_receipt_ms "$work/received_$2" >"$work/eos_lat_$2"
	awk -v l="$2" '{ v[NR] = $1 } END { printf "latency %s %d %.1f %.1f\n", l, NR, v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1] }' \
		"$work/eos_lat_$2" >>"$work/results"
}

# --- infra, exactly once ---------------------------------------------------------
bench_set_outbox wal
psql -X -q -c "ALTER SYSTEM SET infra.kafka_delivery = 'exactly_once'" -c 'SELECT pg_reload_conf()' >/dev/null
psql -X -qAt -c "SELECT infra.kafka_send('eos_warm', 'w')" -c "SELECT infra.kafka_flush('60 s')" | grep -q t ||
	die "no delivery with exactly_once"
messages_saved=$messages
messages=10000
statements infra "$work/eos.sql" eos_warm
psql -X -q -o /dev/null -f "$work/eos.sql"
psql -X -qAt -c "SELECT infra.kafka_flush('120 s')" | grep -q t
messages=$messages_saved
eos_throughput infra infra_eos
eos_latency infra infra_eos
infra_fault eos_kill kill infra_eos_worker_kill

# --- Debezium, exactly-once source support -----------------------------------------
eos_start_connect
for setting in defaults tuned; do
	name=eos_$setting
	eos_connector "$name" "$setting"
	# Warm-up: 10,000 messages through the whole path.
	new_topic "eos_warm_$setting"
	messages=10000
	statements dbz "$work/eos.sql" "eos_warm_$setting"
	psql -X -q -o /dev/null -f "$work/eos.sql"
	wait_count "eos_warm_$setting" 10000
	messages=$messages_saved
	eos_throughput dbz "dbz_eos_$setting"
	eos_latency dbz "dbz_eos_$setting"
	eos_drop_connector "$name"
done

# The Connect worker SIGKILLed at 40% and started again: the task fences its
# predecessor's transactional producer and resumes from the offsets
# committed with the last transaction.
eos_connector eos_fault tuned
new_topic fault_dbz_eos
fault_client dbz_eos dbz fault_dbz_eos &
client=$!
until [ "$(committed_batches dbz_eos)" -ge $((fault_batches * 4 / 10)) ]; do sleep 0.05; done
as_test_user "$connect" kill "$eos_dir"
eos_start_connect
wait "$client"
# Transaction markers and aborted copies count in the end offset: wait
# until it stops moving.
settle fault_dbz_eos 999999999
outbox_count dbz_eos fault_dbz_eos debezium_eos_kill
eos_drop_connector eos_fault
as_test_user "$connect" stop "$eos_dir"
psql -X -q -c "ALTER SYSTEM RESET infra.kafka_delivery" -c 'SELECT pg_reload_conf()' >/dev/null
bench_set_outbox table

# --- report ------------------------------------------------------------------------
echo "exactly once: what a read_committed consumer receives"
echo "$messages messages of 100 bytes in transactions of $per_txn, first commit to the consumer's receipt of the last"
for l in infra_eos dbz_eos_defaults dbz_eos_tuned; do
	ms=$(get throughput "$l" 3)
	printf '%-28s %8d ms %10s msg/s\n' "$l" "$ms" "$(awk -v n="$messages" -v ms="$ms" 'BEGIN { printf "%.0f", n / (ms / 1000) }')"
done
echo "latency at $rate msg/s single-row commits for ${lat_seconds}s, commit to read_committed receipt"
printf '%-28s %8s %8s %8s\n' "" messages p50_ms p99_ms
for l in infra_eos dbz_eos_defaults dbz_eos_tuned; do
	printf '%-28s %8s %8s %8s\n' "$l" "$(get latency "$l" 3)" "$(get latency "$l" 4)" "$(get latency "$l" 5)"
done
echo "relay SIGKILLed at 40% of $fault_batches transactions of 100, restarted (read_committed)"
printf '%-26s %9s %9s %6s %11s\n' "" expected delivered lost duplicates
awk '$1 == "fault" && ($2 == "infra_eos_worker_kill" || $2 == "debezium_eos_kill") {
	printf "%-26s %9d %9d %6d %11d\n", $2, $3, $4, $5, $6 }' "$work/results"
eos_tp=$(ratio "$(get throughput dbz_eos_tuned 3)" "$(get throughput infra_eos 3)")
eos_best=$(awk '$1 == "latency" && $2 ~ /^dbz_eos/ { print $5 }' "$work/results" | sort -n | head -n 1)
printf '%-46s %6s x (target >= 3: %s)\n' "exactly once: infra / tuned Debezium, throughput" "$eos_tp" \
	"$(awk -v r="$eos_tp" 'BEGIN { print (r >= 3 ? "meets" : "BELOW") }')"
printf '%-46s %6s ms vs %s ms (target below: %s)\n' "exactly once: infra p99 vs Debezium's lowest" \
	"$(get latency infra_eos 5)" "$eos_best" \
	"$(awk -v a="$(get latency infra_eos 5)" -v b="$eos_best" 'BEGIN { print (a < b ? "meets" : "ABOVE") }')"
