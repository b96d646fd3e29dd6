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
#  Faults: each tool SIGKILLed mid-stream and restarted; lost and duplicated
#  messages / rows counted (debezium/faults.sh).
# Prints the ratios against the targets.  BENCH_PARTS picks parts (default
# "outbox sink faults").
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
bench_start_pg "infra.kafka_brokers=$bootstrap" "wal_level=logical" "max_replication_slots=4" "max_wal_senders=4" \
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
for part in ${BENCH_PARTS:-outbox sink}; do
	. "$here/debezium/$part.sh"
	echo
done
