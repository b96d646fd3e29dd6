# Sourced by bench_debezium.sh: each tool SIGKILLed mid-stream, restarted,
# lost and duplicated messages / rows counted.
#
#  Outbox: a client commits BENCH_FAULT_BATCHES (300) transactions of 100
#  messages, retrying a transaction that failed (a marker row in the same
#  transaction says whether it committed), while
#   - infra's worker is SIGKILLed at 40% (PostgreSQL then restarts every
#     session: 4 idle sessions show what that costs the others, and how long
#     the server takes to accept connections again),
#   - infra's worker is stopped the safe way, pg_terminate_backend() (SIGTERM),
#   - Kafka Connect running Debezium's outbox connector (tuned) is SIGKILLed
#     and started again.
#  Sink: 200,000 messages into a jsonb table; infra-bridge SIGKILLed at 40%
#  and started again; Kafka Connect running the JDBC sink (tuned) likewise.
# Counted against what committed (outbox) or was produced (sink): lost,
# duplicated (for kafka_send: with the same infra-msg-id, which a consumer
# dedupes on), and phantom (on the broker but never committed).

fault_batches=${BENCH_FAULT_BATCHES:-300}
fault_rows=${BENCH_FAULT_ROWS:-200000}
. "$here/debezium/outbox_faults.sh"

infra_fault kill kill
infra_fault term term

# Debezium's outbox connector, tuned, Kafka Connect SIGKILLed at 40%.
dbz_outbox_fault() {
	local run=dbz_kill t=fault_dbz_kill client
	new_topic "$t"
	as_test_user mkdir -p "$work/connect"
	rm -f "$work/connect/offsets"
	connector fault tuned >"$work/connector_fault.properties"
	as_test_user "$connect" start "$work/connect" "$work/worker.properties" "$work/connector_fault.properties"
	until [ "$(psql -X -qAt -c "SELECT active FROM pg_replication_slots WHERE slot_name = 'dbz_fault'")" = t ]; do sleep 0.1; done
	fault_client "$run" dbz "$t" &
	client=$!
	until [ "$(committed_batches "$run")" -ge $((fault_batches * 4 / 10)) ]; do sleep 0.05; done
	as_test_user "$connect" kill "$work/connect"
	as_test_user "$connect" start "$work/connect" "$work/worker.properties" "$work/connector_fault.properties"
	wait "$client"
	settle "$t" $((fault_batches * 100 * 3))
	as_test_user "$connect" stop "$work/connect"
	psql -X -q -c "SELECT pg_drop_replication_slot('dbz_fault')" >/dev/null 2>&1 || true
	outbox_count "$run" "$t" debezium_outbox "offsets flushed every 60 s (Connect's default): replayed since the last flush"
}
dbz_outbox_fault

# --- sink -------------------------------------------------------------------------------------
sink_messages "$fault_rows"
for t in fault_plain fault_dbz; do
	as_test_user "$here/../kafka/broker.sh" create-topic "$work/kafka" "$t" 4
done
head -n "$fault_rows" "$work/sink_plain.txt" | kcat -P -b "$bootstrap" -t fault_plain -K : -X linger.ms=50
head -n "$fault_rows" "$work/sink_dbz_json.txt" | kcat -P -b "$bootstrap" -t fault_dbz -K : -X linger.ms=50
psql -X -q -c 'CREATE TABLE fault_bridge (payload jsonb)' -c 'CREATE TABLE fault_jdbc (payload jsonb)'

# sink_count TABLE LABEL: rows against the messages produced.
sink_count() {
	psql -X -qAt -F ' ' -c "SELECT 'fault $2', $fault_rows, count(*),
		$fault_rows - count(DISTINCT payload->>'id'), count(*) - count(DISTINCT payload->>'id'), 0, 0 FROM $1" >>"$work/results"
}
# rows_reach TABLE N
rows_reach() { until [ "$(psql -X -qAt -c "SELECT count(*) FROM $1")" -ge "$2" ]; do sleep 0.2; done; }
# rows_settle TABLE: until the table stops growing for 10 s.
rows_settle() {
	local last=-1 now still=0
	while [ "$still" -lt 20 ]; do
		now=$(psql -X -qAt -c "SELECT count(*) FROM $1")
		if [ "$now" = "$last" ]; then still=$((still + 1)); else still=0; fi
		last=$now
		sleep 0.5
	done
}

{
	echo "[bridge]"
	echo "conninfo = host=127.0.0.1 port=$port user=postgres dbname=postgres"
	echo "brokers = $bootstrap"
	echo "group = fault_bridge"
	echo "[route r]"
	echo "topics = fault_plain"
	echo "table = fault_bridge"
	echo "format = json"
	echo "column = payload"
} >"$work/fault_bridge.ini"
"$PG_BINDIR/infra-bridge" --config "$work/fault_bridge.ini" 2>>"$work/fault_bridge.log" &
bridge=$!
rows_reach fault_bridge $((fault_rows * 4 / 10))
kill -KILL "$bridge"
wait "$bridge" 2>/dev/null || true
"$PG_BINDIR/infra-bridge" --config "$work/fault_bridge.ini" 2>>"$work/fault_bridge.log" &
bridge=$!
rows_reach fault_bridge "$fault_rows"
rows_settle fault_bridge
kill "$bridge"
wait "$bridge" 2>/dev/null || true
sink_count fault_bridge infra_bridge

sink_connector fault_jdbc fault_dbz fault_jdbc tuned |
	python3 -c 'import json, sys; c = json.load(sys.stdin)["config"]; print("\n".join(k + "=" + v for k, v in c.items()))' \
		>"$work/fault_jdbc.properties"
rm -f "$work/connect/offsets"
as_test_user "$connect" start "$work/connect" "$work/worker.properties" "$work/fault_jdbc.properties"
rows_reach fault_jdbc $((fault_rows * 4 / 10))
as_test_user "$connect" kill "$work/connect"
as_test_user "$connect" start "$work/connect" "$work/worker.properties" "$work/fault_jdbc.properties"
rows_reach fault_jdbc "$fault_rows"
rows_settle fault_jdbc
as_test_user "$connect" stop "$work/connect"
sink_count fault_jdbc debezium_jdbc_sink

# --- report ---------------------------------------------------------------------------------
echo
echo "faults: SIGKILL mid-stream (at 40%), restart; outbox: $fault_batches transactions of 100 messages; sink: $fault_rows messages"
printf '%-26s %9s %9s %6s %11s %8s %14s\n' "" expected delivered lost duplicates phantom "same msg-id"
awk '$1 == "fault" {
	printf "%-26s %9d %9d %6d %11d %8d %14s\n", $2, $3, $4, $5, $6, $7, ($2 ~ /^infra_worker/ ? $8 : "-")
	if (NF > 8) { note = ""; for (i = 9; i <= NF; i++) note = note " " $i; print "    " note }
}' "$work/results"
