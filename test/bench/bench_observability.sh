#!/usr/bin/env bash
# Observability overhead (issues 6 and 17), measured two ways that other
# load on the machine cannot fake:
#
# 1. Paired TPS.  One cluster with pg_stat_statements and infra both
#    preloaded; each configuration is a set of per-session settings
#    (PGOPTIONS: pg_stat_statements.track, infra.query_metrics,
#    infra.trace_sample_rate), so nothing restarts between them.  A pair
#    is two pgbench runs (one client each) at the same time, the
#    configuration's and the base's, for BENCH_SECONDS (default 2), each
#    pgbench and its backend pinned to a CPU of its own (swapped every
#    other round): the two sides run on like machines at the same moment,
#    so their TPS ratio keeps what the configuration costs and little
#    else.  Each round runs every pair; a configuration's cost is the median over
#    BENCH_ROUNDS rounds (default 30) of 1 - its TPS / base's, with the 95%
#    confidence interval of that median (order statistics: no assumption
#    on the noise's shape), and a base-against-base pair (A/A) shows what the
#    method resolves.
#      base      both libraries loaded, everything off (tracing at sampling 0)
#      pgss      pg_stat_statements.track = top (its default)
#      qm        infra.query_metrics = on
#      trace1    infra.trace_sample_rate = 0.01, spans exported over OTLP
#    and SELECT infra.counter_inc() against SELECT 1, paired the same way.
# 2. Instructions per statement (valgrind's callgrind, which counts
#    instructions, not time): one single-user backend runs N and then 2N
#    primary-key SELECTs; (I(2N) - I(N)) / N is one statement's cost,
#    start-up excluded.  This one also has "noinfra" (pg_stat_statements
#    alone, track = none), so it shows what infra's hooks cost while they
#    have nothing to do.  (perf stat's counters are not available on every
#    machine here; callgrind's counts are the same on any.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

seconds=${BENCH_SECONDS:-2}
rounds=${BENCH_ROUNDS:-30}
statements=${BENCH_STATEMENTS:-1000}
work=$(new_workdir infra-bench)
receiver_pid=

cleanup() {
	as_test_user "$here/../pgcluster.sh" stop "$work/pg" >/dev/null 2>&1 || true
	[ -n "$receiver_pid" ] && kill "$receiver_pid" 2>/dev/null
	[ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

rport=$(free_port)
"$INFRA_PYTHON" "$here/../otlp/receiver.py" --port "$rport" --log "$work/otlp.jsonl" >/dev/null 2>&1 &
receiver_pid=$!

libs=pg_stat_statements,infra
as_test_user "$here/../pgcluster.sh" start "$work/pg" "infra.database=postgres" \
	"max_connections=50" "shared_buffers=128MB" "shared_preload_libraries=$libs" \
	"infra.otlp_endpoint=http://127.0.0.1:$rport/v1/traces"
port=$(as_test_user "$here/../pgcluster.sh" port "$work/pg")
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
createdb bench
pgbench -q -i -s 10 bench >/dev/null 2>&1
psql -X -q -d bench -c 'CREATE EXTENSION infra' -c 'CREATE EXTENSION pg_stat_statements'
printf 'SELECT 1;\n' >"$work/select1.sql"
printf "SELECT infra.counter_inc('bench_ops');\n" >"$work/counter.sql"

# settings CONFIG: the per-session settings of a configuration.
settings() {
	local track=none qm=off rate=0
	case "$1" in
	pgss) track=top ;;
	qm) qm=on ;;
	trace1) rate=0.01 ;;
	noinfra) ;;
	esac
	echo "-c pg_stat_statements.track=$track -c infra.query_metrics=$qm -c infra.trace_sample_rate=$rate"
}

# pair X XSCRIPT B BSCRIPT CPU: configurations X and B, each running its
# pgbench script (-S for the built-in select-only) with one client, at the
# same time, each pgbench and its backend pinned to a CPU of its own: X's to
# CPU (0 or 1), B's to the other.  Prints "tps_x tps_b".
pair_n=0
pair() {
	local i conf script cpu pid
	# Names of this pair's own (a backend of the last pair may still be going).
	pair_n=$((pair_n + 1))
	for i in x b; do
		if [ "$i" = x ]; then conf=$1 script=$2 cpu=$5; else conf=$3 script=$4 cpu=$((1 - $5)); fi
		# shellcheck disable=SC2046
		PGAPPNAME=pair_${i}_$pair_n PGOPTIONS=$(settings "$conf") taskset -c "$cpu" \
			pgbench -n -M prepared -c 1 -j 1 -T "$seconds" \
			$([ "$script" = -S ] && echo -S || echo -f "$script") bench >"$work/pair_$i" 2>/dev/null &
	done
	# pgbench's first connection (it reads the scale) ends at once: pin
	# whatever backend of the pair's names is there, a few times over.
	for _ in 1 2 3 4; do
		sleep 0.1
		for i in x b; do
			cpu=$([ "$i" = x ] && echo "$5" || echo $((1 - $5)))
			for pid in $(psql -X -qAt -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pair_${i}_$pair_n'"); do
				taskset -p -c "$cpu" "$pid" >/dev/null 2>&1 || true
			done
		done
	done
	wait
	echo "$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pair_x") $(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pair_b")"
}

# --- 1. paired TPS -------------------------------------------------------------
configs="aa pgss qm trace1"
for r in $(seq 1 "$rounds"); do
	first=$((r % 2))   # X's CPU: 1 in odd rounds, 0 in even ones
	for c in $configs; do
		echo "$r $c $(pair "$([ "$c" = aa ] && echo base || echo "$c")" -S base -S "$first")" >>"$work/tps"
	done
	echo "$r counter $(pair base "$work/counter.sql" base "$work/select1.sql" "$first")" >>"$work/tps"
done

# median_ci: "lo median hi" of the numbers on stdin, lo..hi the 95%
# confidence interval of the median: order statistics n/2 -+ 0.98 sqrt(n)
# (the binomial's normal approximation).
median_ci() {
	sort -g | awk '{ v[NR] = $1 } END {
		k = int(NR / 2 - 0.98 * sqrt(NR)); if (k < 1) k = 1
		printf "%.1f %.1f %.1f", v[k], (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[NR - k + 1] }'
}
# paired C: per round, (1 - C/base) * 100, the cost of C in % against the
# base run beside it; median and its interval over the rounds.
paired() {
	awk -v c="$1" '$2 == c { print (1 - $3 / $4) * 100 }' "$work/tps" | median_ci
}
median_tps() { awk -v c="$1" -v f="$2" '$2 == c { print $f }' "$work/tps" | median_ci | awk '{ print $2 }'; }
verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v <= t ? "meets" : "MISSES") }'; }

echo "paired TPS: pgbench -S -M prepared, scale 10, $rounds rounds; each configuration (1 client) for ${seconds}s at the same time as base (1 client), each on a CPU of its own"
printf '%-34s %10s %10s   %s\n' configuration "median tps" "its base" "cost against base, %: median (95% interval)"
for c in $configs counter; do
	read -r q1 q2 q3 <<<"$(paired "$c")"
	label=$c
	[ "$c" = aa ] && label="base against base (A/A)"
	[ "$c" = counter ] && label="counter_inc() against SELECT 1"
	printf '%-34s %10.0f %10.0f   %6s  (%s .. %s)\n' "$label" "$(median_tps "$c" 3)" "$(median_tps "$c" 4)" "$q2" "$q1" "$q3"
done
spans=$(grep -o '"spanId"' "$work/otlp.jsonl" 2>/dev/null | wc -l)
echo "spans received by the OTLP receiver (trace1 rounds): $spans"
read -r _ qm_cost _ <<<"$(paired qm)"
read -r _ pgss_cost _ <<<"$(paired pgss)"
read -r _ t1_cost _ <<<"$(paired trace1)"

# --- 2. instructions per statement ---------------------------------------------
as_test_user "$here/../pgcluster.sh" stop "$work/pg" >/dev/null
for n in "$statements" $((statements * 2)); do
	awk -v n="$n" 'BEGIN { srand(17); for (i = 0; i < n; i++) printf "SELECT abalance FROM pgbench_accounts WHERE aid = %d;\n", int(rand() * 1000000) + 1 }' \
		>"$work/select_$n.sql"
done
instructions() {
	local conf=$1 n=$2 preload=$libs
	[ "$conf" = noinfra ] && preload=pg_stat_statements
	# shellcheck disable=SC2046
	as_test_user valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
		"$PG_BINDIR/postgres" --single -D "$work/pg/data" -c "shared_preload_libraries=$preload" \
		-c infra.database= -c log_min_messages=warning $(settings "$conf") bench \
		<"$work/select_$n.sql" >/dev/null 2>"$work/cg.log"
	sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/cg.log"
}
echo
echo "instructions per primary-key SELECT (callgrind, single-user backend, $statements vs $((statements * 2)) statements)"
declare -A per
for c in noinfra base pgss qm trace1; do
	a=$(instructions "$c" "$statements")
	b=$(instructions "$c" $((statements * 2)))
	per[$c]=$(((b - a) / statements))
done
pct() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f", (a / b - 1) * 100 }'; }
printf '%-34s %10d\n' "noinfra (pg_stat_statements idle)" "${per[noinfra]}"
printf '%-34s %10d   %s %% against noinfra: what idle infra hooks cost\n' "base (infra idle, tracing at 0)" "${per[base]}" "$(pct "${per[base]}" "${per[noinfra]}")"
for c in pgss qm trace1; do
	printf '%-34s %10d   %s %% against base\n' "$c" "${per[$c]}" "$(pct "${per[$c]}" "${per[base]}")"
done
i_qm=$(pct "${per[qm]}" "${per[base]}")
i_pgss=$(pct "${per[pgss]}" "${per[base]}")
i_idle=$(pct "${per[base]}" "${per[noinfra]}")

echo
printf '%-52s %s\n' "infra query metrics <= 3%, in TPS ($qm_cost) and instructions ($i_qm):" \
	"$(verdict "$qm_cost" 3) / $(verdict "${i_qm#+}" 3)"
printf '%-52s %s\n' "infra query metrics <= pg_stat_statements ($pgss_cost; $i_pgss):" \
	"$(verdict "$qm_cost" "$pgss_cost") / $(verdict "${i_qm#+}" "${i_pgss#+}")"
printf '%-52s %s\n' "tracing at sampling 0 <= 1%, in instructions ($i_idle):" "$(verdict "${i_idle#+}" 1)"
printf '%-52s %s\n' "tracing at 1%, exported, in TPS ($t1_cost):" "(reported)"
