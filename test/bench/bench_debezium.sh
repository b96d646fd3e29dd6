#!/usr/bin/env bash
# infra against Debezium (issue 17), same broker, same PostgreSQL
# (wal_level = logical, production durability), one run:
#
#  Outbox: kafka_send against Debezium's outbox pattern (an outbox table,
#  the PostgreSQL connector on pgoutput, the outbox event router, on Kafka
#  Connect standalone), with Debezium at its defaults and tuned per its
#  documentation (poll.interval.ms, max.batch.size / max.queue.size, an
#  idempotent producer with a short linger), each warmed up first; raw
#  `kcat -P` as the physical limit.
#   1. throughput: BENCH_MESSAGES (100,000) messages of 100 bytes committed
#      in transactions of 1,000, first commit to the broker appending the
#      last message (topics with LogAppendTime: the broker stamps them);
#   2. latency: single-row commits at a steady BENCH_RATE (1,000) msg/s for
#      BENCH_LATENCY_SECONDS (10), commit to broker append, p50 and p99;
#   and the Connect JVM's idle CPU at each setting.
#  Sink: infra-bridge against Debezium's JDBC sink connector and COPY FROM a
#  file, 1,000,000 JSON messages, into jsonb and onto typed columns, with
#  PostgreSQL's CPU per row (debezium/sink.sh).
#  Changes (issue 29): 1,000,000 Debezium change events (70% updates, 10%
#  deletes) applied to a keyed table by infra-bridge's format = debezium
#  and by the JDBC sink tuned for throughput, PostgreSQL's CPU per event,
#  each table checked against the rows the events leave (debezium/changes.sh).
#  Faults: each tool SIGKILLed mid-stream and restarted (and infra's worker
#  stopped with pg_terminate_backend); lost and duplicated messages / rows
#  counted; what killing the worker costs the other sessions
#  (debezium/faults.sh).
#  Exactly once (issue 27): infra with infra.kafka_delivery = exactly_once
#  against Debezium's outbox on a distributed Connect worker with
#  exactly-once source support; throughput, p99 and a SIGKILL's duplicates
#  as a read_committed consumer sees them (debezium/eos.sh).
# Prints the ratios against the targets.  BENCH_PARTS picks parts (default
# "outbox sink changes faults eos").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

messages=${BENCH_MESSAGES:-100000}
per_txn=1000
rate=${BENCH_RATE:-1000}
lat_seconds=${BENCH_LATENCY_SECONDS:-10}
connect=$here/../debezium/connect.sh

"$connect" fetch
bench_start_broker
bench_start_pg "infra.kafka_brokers=$bootstrap" "${bench_logical_settings[@]}" "max_wal_senders=4" \
	"track_commit_timestamp=on"
bench_on_exit() { as_test_user "$connect" kill "$work/connect" >/dev/null 2>&1 || true; }

psql -X -q -c 'CREATE EXTENSION infra'
: >"$work/results"
connect_port=$(free_port)

# --- Debezium's worker and connector settings -----------------------------------
cat >"$work/worker.properties" <<EOF
bootstrap.servers=$bootstrap
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=org.apache.kafka.connect.storage.StringConverter
offset.storage.file.filename=$work/connect/offsets
plugin.path=$INFRA_CACHE/debezium-3.6/plugins
connector.client.config.override.policy=All
listeners=http://127.0.0.1:$connect_port
EOF
psql -X -q -c "
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,
    payload text)"

new_topic() {
	as_test_user "$here/../kafka/broker.sh" create-topic "$work/kafka" "$1" 1 \
		message.timestamp.type=LogAppendTime
}
# end_offset TOPIC: messages on partition 0.
end_offset() { kcat -Q -b "$bootstrap" -t "$1:0:-1" 2>/dev/null | awk '{ print $NF }'; }
wait_count() {
	local t=$1 n=$2 i
	for i in $(seq 1 6000); do
		[ "$(end_offset "$t")" -ge "$n" ] 2>/dev/null && return 0
		sleep 0.1
	done
	die "topic $t has $(end_offset "$t") of $n messages after 600 s"
}
# last_append TOPIC: the broker's timestamp of its last message, in ms.
last_append() {
	local end
	end=$(end_offset "$1")
	kcat -C -b "$bootstrap" -t "$1" -p 0 -o $((end - 1)) -c 1 -q -f '%T\n'
}

connector() {  # connector NAME TUNED: the outbox connector's properties
	cat <<EOF
name=$1
connector.class=io.debezium.connector.postgresql.PostgresConnector
plugin.name=pgoutput
database.hostname=127.0.0.1
database.port=$port
database.user=postgres
database.password=unused
database.dbname=postgres
topic.prefix=dbz_$1
table.include.list=public.outbox
publication.name=dbz_$1
publication.autocreate.mode=filtered
slot.name=dbz_$1
snapshot.mode=no_data
tombstones.on.delete=false
transforms=outbox
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
transforms.outbox.route.topic.replacement=\${routedByValue}
EOF
	if [ "$2" = tuned ]; then
		cat <<EOF
poll.interval.ms=1
max.batch.size=20480
max.queue.size=81920
producer.override.enable.idempotence=true
producer.override.acks=all
producer.override.linger.ms=5
producer.override.batch.size=262144
EOF
	fi
}

payload="repeat('x', 92) || lpad(g::text, 8, '0')"   # 100 bytes, unique
statements() {  # statements KIND FILE: the throughput run's transactions
	: >"$2"
	local b
	for b in $(seq 0 $((messages / per_txn - 1))); do
		if [ "$1" = infra ]; then
			echo "SELECT count(infra.kafka_send('$3', $payload, 'k' || (g % 100))) FROM generate_series($((b * per_txn + 1)), $(((b + 1) * per_txn))) g;"
		else
			echo "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT '$3', 'k' || (g % 100), 'e', $payload FROM generate_series($((b * per_txn + 1)), $(((b + 1) * per_txn))) g;"
		fi
	done >>"$2"
}

# sink_connector NAME TOPIC TABLE SETTING: its configuration as JSON for the
# REST API; "tuned" per the connector's documentation.
sink_connector() {
	local url="jdbc:postgresql://127.0.0.1:$port/postgres" tuned=
	if [ "$4" = tuned ]; then
		url="$url?reWriteBatchedInserts=true"
		tuned=$(printf ', "%s": "%s"' \
			tasks.max "${BENCH_DBZ_TASKS:-4}" \
			batch.size "${BENCH_DBZ_BATCH:-10000}" \
			consumer.override.max.poll.records "${BENCH_DBZ_BATCH:-10000}")
	fi
	printf '{ "name": "%s", "config": { "name": "%s"' "$1" "$1"
	printf ', "%s": "%s"' \
		connector.class io.debezium.connector.jdbc.JdbcSinkConnector \
		topics "$2" \
		connection.url "$url" \
		connection.username postgres \
		connection.password unused \
		insert.mode insert \
		primary.key.mode none \
		schema.evolution none \
		collection.name.format "$3" \
		key.converter org.apache.kafka.connect.storage.StringConverter \
		value.converter org.apache.kafka.connect.json.JsonConverter \
		value.converter.schemas.enable true \
		consumer.override.auto.offset.reset earliest
	printf '%s } }\n' "$tuned"
}
# sink_messages N: N JSON messages (at least) in $work/sink_*.txt, the same
# rows four ways: plain JSON (the bridge), JSON with an inline schema (the
# JDBC sink; jsonb path: the value as one io.debezium.data.Json string;
# typed path: a struct), and files for COPY.
sink_messages() {
	[ -f "$work/sink_plain.txt" ] && [ "$(wc -l <"$work/sink_plain.txt")" -ge "$1" ] && return 0
	awk -v n="$1" -v dir="$work" 'BEGIN {
	js = "{\"schema\":{\"type\":\"struct\",\"optional\":false,\"fields\":[{\"field\":\"payload\",\"type\":\"string\",\"optional\":false,\"name\":\"io.debezium.data.Json\"}]},\"payload\":{\"payload\":\""
	ts = "{\"schema\":{\"type\":\"struct\",\"optional\":false,\"fields\":[{\"field\":\"id\",\"type\":\"int64\",\"optional\":false},{\"field\":\"kind\",\"type\":\"string\",\"optional\":false},{\"field\":\"amount\",\"type\":\"double\",\"optional\":false},{\"field\":\"note\",\"type\":\"string\",\"optional\":false}]},\"payload\":"
	for (i = 1; i <= n; i++) {
		v = sprintf("{\"id\":%d,\"kind\":\"order.created\",\"amount\":%d.%02d,\"note\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}", i, i % 1000, i % 100)
		e = v; gsub(/"/, "\\\"", e)
		print "k" i ":" v > (dir "/sink_plain.txt")
		print "k" i ":" js e "\"}}" > (dir "/sink_dbz_json.txt")
		print "k" i ":" ts v "}" > (dir "/sink_dbz_typed.txt")
		print v > (dir "/sink_copy_json.txt")
		printf "%d\torder.created\t%d.%02d\txxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n", i, i % 1000, i % 100 > (dir "/sink_copy_typed.txt")
	}
}'
}

# The sink parts' measures (debezium/sink.sh, debezium/changes.sh).
# pg_cpu [PID]: clock ticks used by the server's processes so far, PID's
# backend left out (exited children count through the postmaster).
pg_cpu() {
	local pm p
	pm=$(head -n 1 "$work/pg/data/postmaster.pid")
	{
		cat "/proc/$pm/stat"
		for p in $(pgrep -P "$pm"); do
			[ "$p" = "${1:-}" ] || cat "/proc/$p/stat" 2>/dev/null || true
		done
	} | awk -v pm="$pm" '{ t += $14 + $15; if ($1 == pm) t += $16 + $17 } END { print t }'
}

# sink_start: a checkpoint first, so that each run pays for its own; then
# cpu0 and t0.
sink_start() {
	psql -X -q -c CHECKPOINT
	cpu0=$(pg_cpu)
	t0=$(now_ms)
}

# sink_done LABEL TABLE T0_MS CPU0: records rows, time and server CPU.
sink_done() {
	local end cpu rows
	cpu=$(($(pg_cpu "$poll_pid") - $4))
	end=$(psql -X -qAt -c "SELECT (extract(epoch FROM max(pg_xact_commit_timestamp(xmin))) * 1000)::bigint FROM $2")
	rows=$(psql -X -qAt -c "SELECT count(*) FROM $2")
	echo "sink $1 $rows $((end - $3)) $cpu" >>"$work/results"
}

# rest METHOD [PATH [FILE]]: Kafka Connect's REST API.
rest() {
	curl -fsS -X "$1" -H 'Content-Type: application/json' \
		"http://127.0.0.1:$connect_port/connectors${2:-}" ${3:+--data-binary "@$3"}
}

# get KIND LABEL FIELD: a field of a result line; ratio A B: A / B.
get() { awk -v k="$1" -v l="$2" -v f="$3" '$1 == k && $2 == l { print $f }' "$work/results"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

for part in ${BENCH_PARTS:-outbox sink changes faults eos}; do
	. "$here/debezium/$part.sh"
	echo
done
