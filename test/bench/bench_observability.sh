#!/usr/bin/env bash
# Observability benchmark (issue 6), one run, one cluster restarted between
# configurations: pgbench -S -M prepared, 4 clients, rounds interleaved
# across configurations (median of BENCH_ROUNDS rounds of BENCH_SECONDS):
#   none         no preloaded library (no hooks at all)
#   pgss         contrib pg_stat_statements preloaded (its defaults)
#   infra        infra preloaded: query metrics on, tracing sampling 0
#   trace0       infra preloaded, query metrics off, tracing sampling 0:
#                every infra hook in place, none with work to do
#   trace1       as trace0 with infra.trace_sample_rate = 0.01, spans
#                exported to a local OTLP receiver (test/otlp/receiver.py)
# and, in the infra configuration, infra.counter_inc() against SELECT 1.
# Prints TPS, each configuration's cost against "none" and the ratios.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

seconds=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
work=$(new_workdir infra-bench)
receiver_pid=

cleanup() {
	as_test_user "$here/../pgcluster.sh" stop "$work/pg" >/dev/null 2>&1 || true
	[ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

rport=$(free_port)
"$INFRA_PYTHON" "$here/../otlp/receiver.py" --port "$rport" --log "$work/otlp.jsonl" >/dev/null 2>&1 &
receiver_pid=$!

as_test_user "$here/../pgcluster.sh" start "$work/pg" "infra.database=postgres" \
	"max_connections=50" "shared_buffers=128MB" \
	"infra.otlp_endpoint=http://127.0.0.1:$rport/v1/traces"
port=$(as_test_user "$here/../pgcluster.sh" port "$work/pg")
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
createdb bench
pgbench -q -i -s 10 bench >/dev/null 2>&1
psql -X -q -d bench -c 'CREATE EXTENSION infra'
printf 'SELECT 1;\n' >"$work/select1.sql"
printf "SELECT infra.counter_inc('bench_ops');\n" >"$work/counter.sql"

configure() {
	local libs=infra qm=off rate=0
	case "$1" in
	none) libs="" ;;
	pgss) libs=pg_stat_statements ;;
	infra) qm=on ;;
	trace0) ;;
	trace1) rate=0.01 ;;
	esac
	# Later lines of postgresql.conf win.
	printf "shared_preload_libraries = '%s'\ninfra.query_metrics = %s\ninfra.trace_sample_rate = %s\n" \
		"$libs" "$qm" "$rate" | as_test_user tee -a "$work/pg/data/postgresql.conf" >/dev/null
	as_test_user "$PG_BINDIR/pg_ctl" -D "$work/pg/data" -l "$work/pg/postgres.log" -w -m fast restart >/dev/null ||
		{ tail -n 20 "$work/pg/postgres.log" >&2; exit 1; }
}

tps_of() {
	pgbench -n -M prepared -c 4 -j 2 -T "$seconds" "$@" bench 2>/dev/null |
		sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

configs="none pgss infra trace0 trace1"
for r in $(seq 1 "$rounds"); do
	for c in $configs; do
		configure "$c"
		echo "$c $(tps_of -S)" >>"$work/results"
		if [ "$c" = infra ]; then
			echo "select1 $(tps_of -f "$work/select1.sql")" >>"$work/results"
			echo "counter_inc $(tps_of -f "$work/counter.sql")" >>"$work/results"
		fi
	done
done

median() { awk -v c="$1" '$1 == c { print $2 }' "$work/results" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "pgbench -M prepared, 4 clients, median of $rounds rounds of ${seconds}s"
for c in $configs select1 counter_inc; do
	printf '%-12s %10.0f tps\n' "$c" "$(median "$c")"
done
none=$(median none)
cost() { awk -v a="$(median "$1")" -v b="$none" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }'; }
verdict() { awk -v v="$1" -v t="$2" -v op="$3" 'BEGIN { ok = (op == "le" ? v <= t : v >= t); print (ok ? "meets" : "MISSES") }'; }
echo
printf '%-46s %6s %%  (target <= 3: %s)\n' "infra query metrics on: TPS cost" "$(cost infra)" "$(verdict "$(cost infra)" 3 le)"
printf '%-46s %6s %%  (infra must not exceed it: %s)\n' "pg_stat_statements: TPS cost" "$(cost pgss)" "$(verdict "$(cost pgss)" "$(cost infra)" ge)"
printf '%-46s %6s %%  (target <= 1: %s)\n' "tracing, sampling 0 (all hooks idle): TPS cost" "$(cost trace0)" "$(verdict "$(cost trace0)" 1 le)"
printf '%-46s %6s %%  (target <= 3: %s)\n' "tracing, sampling 1%, exported: TPS cost" "$(cost trace1)" "$(verdict "$(cost trace1)" 3 le)"
ratio=$(awk -v a="$(median counter_inc)" -v b="$(median select1)" 'BEGIN { printf "%.2f", a / b }')
printf '%-46s %6s x  (target >= 0.85: %s)\n' "infra.counter_inc() / SELECT 1" "$ratio" "$(verdict "$ratio" 0.85 ge)"
spans=$(grep -o '"spanId"' "$work/otlp.jsonl" 2>/dev/null | wc -l)
echo "spans received by the OTLP receiver during the trace1 rounds: $spans"
