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
