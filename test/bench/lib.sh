# Shared by the benchmarks that run a Kafka broker and a PostgreSQL cluster
# with production durability (fsync, synchronous_commit), sourced after
# test/lib.sh.  bench_start_broker and bench_start_pg set work, bootstrap,
# port and the PG* environment; everything is stopped and removed at exit,
# after bench_on_exit (a benchmark may redefine it to stop its own
# processes).

work=$(new_workdir infra-bench)

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
