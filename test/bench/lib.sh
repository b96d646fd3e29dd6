# Shared by the benchmarks that run a Kafka broker and a PostgreSQL cluster
# with production durability (fsync, synchronous_commit), sourced after
# test/lib.sh.  bench_start_broker and bench_start_pg set work, bootstrap,
# port and the PG* environment; everything is stopped and removed at exit,
# after bench_on_exit (a benchmark may redefine it to stop its own
# processes).

work=$(new_workdir infra-bench)

# The clients are the version's own: Debian's /usr/bin/psql is a Perl
# wrapper that takes about 15 ms to start, which a timed psql would count
# against the database (kcat, beside it, starts in a millisecond).
if [ -x "$PG_BINDIR/psql" ]; then
	PATH=$PG_BINDIR:$PATH
fi

bench_on_exit() { :; }

bench_cleanup() {
	bench_on_exit
	as_test_user "$here/../pgcluster.sh" stop "$work/pg" >/dev/null 2>&1 || true
	as_test_user "$here/../kafka/broker.sh" stop "$work/kafka" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap bench_cleanup EXIT

bench_start_broker() {
	as_test_user "$here/../kafka/broker.sh" start "$work/kafka"
	bootstrap=$(cat "$work/kafka/bootstrap")
}

# bench_start_pg [SETTING=VALUE...]: a cluster with infra preloaded.
bench_start_pg() {
	as_test_user "$here/../pgcluster.sh" start "$work/pg" "infra.database=postgres" \
		"fsync=on" "synchronous_commit=on" "$@"
	port=$(as_test_user "$here/../pgcluster.sh" port "$work/pg")
	export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
}

now_ms() { date +%s%3N; }

# bench_logical_settings: what bench_start_pg needs for the WAL outbox.
bench_logical_settings=("wal_level=logical" "max_replication_slots=4"
	"output_plugin_libraries=pgoutput, test_decoding, infra")

# bench_set_outbox table|wal: switch infra.kafka_outbox (a reload) and wait
# until new sessions see it and, for wal, the worker's slot is ready.
bench_set_outbox() {
	psql -X -q -c "ALTER SYSTEM SET infra.kafka_outbox = '$1'" -c 'SELECT pg_reload_conf()' >/dev/null
	for _ in $(seq 1 100); do
		if [ "$(psql -X -qAt -c 'SHOW infra.kafka_outbox')" = "$1" ] &&
			{ [ "$1" = table ] || [ "$(psql -X -qAt -c "SELECT count(*) FROM pg_replication_slots
				WHERE slot_name = 'infra_kafka_' || (SELECT oid FROM pg_database WHERE datname = current_database())
				AND confirmed_flush_lsn IS NOT NULL")" = 1 ]; }; then
			return
		fi
		sleep 0.1
	done
	die "infra.kafka_outbox = $1 did not take effect"
}

# bench_receipt_ms FILE: lines "arrival_seconds sent_microseconds" (a consumer
# stamping each value, a commit time in microseconds, on arrival) as
# latencies in ms, sorted.
bench_receipt_ms() {
	awk '{ d = ($1 - $2 / 1000000) * 1000; if (d < 0) d = 0; print d }' "$1" | sort -n
}

# bench_produce_orders TOPIC N: N JSON messages of about 100 bytes
# ({"id", "kind", "amount", "note"}), keyed k1..kN so that they spread over
# the topic's partitions, produced with kcat.
bench_produce_orders() {
	awk -v n="$2" 'BEGIN { for (i = 1; i <= n; i++)
		printf "k%d:{\"id\":%d,\"kind\":\"order.created\",\"amount\":%d.%02d,\"note\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n",
			i, i, i % 1000, i % 100 }' >"$work/orders_$1.txt"
	kcat -P -b "$bootstrap" -t "$1" -K : -l "$work/orders_$1.txt" -X linger.ms=50 -X batch.num.messages=10000
}

# bench_bridge_wait GROUP N PID LOG: until infra-bridge (process PID, its
# stderr in LOG) has stored offsets adding up to N for consumer group GROUP,
# watched from one psql session (a psql started every poll would cost the
# machine more CPU than the thing measured); exits, showing LOG, if the
# bridge dies first.
bench_bridge_wait() {
	local line
	while read -r line; do
		[ "$line" = "$2" ] && return
		kill -0 "$3" 2>/dev/null || { cat "$4"; exit 1; }
	done < <(printf "SELECT coalesce(sum(next_offset), 0) FROM infra.bridge_offsets WHERE consumer_group = '%s'\n\\\\watch 0.05\n" "$1" |
		psql -X -A -t -q 2>/dev/null)
}
