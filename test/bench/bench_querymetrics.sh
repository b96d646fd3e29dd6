#!/usr/bin/env bash
# Query metrics benchmark (issue 6), one run, one cluster restarted between
# configurations: pgbench -S -M prepared, 4 clients, rounds interleaved
# across configurations (median of BENCH_ROUNDS rounds of BENCH_SECONDS):
#   none       no preloaded library (no hooks at all)
#   infra      infra preloaded, infra.query_metrics = on
#   infra_off  infra preloaded, infra.query_metrics = off
#   pgss       contrib pg_stat_statements preloaded (its defaults)
# Prints TPS and each configuration's cost against "none".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

seconds=${BENCH_SECONDS:-5}
rounds=${BENCH_ROUNDS:-3}
work=$(new_workdir infra-bench)

cleanup() {
	as_test_user "$here/../pgcluster.sh" stop "$work/pg" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

as_test_user "$here/../pgcluster.sh" start "$work/pg" "infra.database=postgres" \
	"max_connections=50" "shared_buffers=128MB"
port=$(as_test_user "$here/../pgcluster.sh" port "$work/pg")
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
createdb bench
pgbench -q -i -s 10 bench >/dev/null 2>&1

configure() {
	case "$1" in
	none) libs="" qm=on ;;
	infra) libs=infra qm=on ;;
	infra_off) libs=infra qm=off ;;
	pgss) libs=pg_stat_statements qm=on ;;
	esac
	# Later lines of postgresql.conf win.
	printf "shared_preload_libraries = '%s'\ninfra.query_metrics = %s\n" "$libs" "$qm" |
		as_test_user tee -a "$work/pg/data/postgresql.conf" >/dev/null
	as_test_user "$PG_BINDIR/pg_ctl" -D "$work/pg/data" -l "$work/pg/postgres.log" -w -m fast restart >/dev/null ||
		{ tail -n 20 "$work/pg/postgres.log" >&2; exit 1; }
}

configs="none infra infra_off pgss"
for r in $(seq 1 "$rounds"); do
	for c in $configs; do
		configure "$c"
		tps=$(pgbench -n -S -M prepared -c 4 -j 2 -T "$seconds" bench 2>/dev/null |
			sed -n 's/^tps = \([0-9.]*\).*/\1/p')
		echo "$c $tps" >>"$work/results"
	done
done

median() { awk -v c="$1" '$1 == c { print $2 }' "$work/results" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo "pgbench -S -M prepared, 4 clients, median of $rounds rounds of ${seconds}s"
for c in $configs; do
	printf '%-12s %10.0f tps\n' "$c" "$(median "$c")"
done
none=$(median none)
cost() { awk -v a="$(median "$1")" -v b="$none" 'BEGIN { printf "%.1f", (1 - a / b) * 100 }'; }
echo
printf '%-44s %6s %%  (target <= 3: %s)\n' "infra query metrics on: TPS cost" "$(cost infra)" \
	"$(awk -v c="$(cost infra)" 'BEGIN { print (c <= 3 ? "meets" : "ABOVE") }')"
printf '%-44s %6s %%  (target: no more than pg_stat_statements: %s)\n' "pg_stat_statements: TPS cost" "$(cost pgss)" \
	"$(awk -v a="$(cost infra)" -v b="$(cost pgss)" 'BEGIN { print (a <= b ? "meets" : "ABOVE") }')"
printf '%-44s %6s %%\n' "infra loaded, query metrics off: TPS cost" "$(cost infra_off)"
echo "(tracing and counter_inc: not built yet)"
