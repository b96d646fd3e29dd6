#!/usr/bin/env bash
# What infra.kafka_wait_for_standbys costs (issue 16): single-row commits at
# a steady rate on a primary with one streaming standby (on this machine),
# latency from commit to the broker appending the message, with the setting
# off and with 'ANY 1 (bench_standby)'.  The two configurations alternate in
# rounds of BENCH_ROUND_SECONDS (default 5), BENCH_ROUNDS each (default 3),
# in one run against the same servers, so drift hits both alike; each
# message carries its configuration, and the percentiles are over all of a
# configuration's messages.  Production durability (fsync,
# synchronous_commit on the primary; the standby flushes what it receives).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

rounds=${BENCH_ROUNDS:-3}
seconds=${BENCH_ROUND_SECONDS:-5}
rate=${BENCH_RATE:-500}

bench_start_broker
bench_start_pg "infra.kafka_brokers=$bootstrap"
bench_on_exit() {
	as_test_user "$PG_BINDIR/pg_ctl" -D "$work/standby" -m immediate -w stop >/dev/null 2>&1 || true
}

# The standby: a base backup streaming from the primary.
sport=$(free_port)
as_test_user mkdir -p "$work/standby.sock"
as_test_user "$PG_BINDIR/pg_basebackup" -h 127.0.0.1 -p "$port" -U postgres -D "$work/standby" -R -X stream -c fast
as_test_user tee -a "$work/standby/postgresql.conf" >/dev/null <<EOF
port = $sport
unix_socket_directories = '$work/standby.sock'
cluster_name = 'bench_standby'
EOF
as_test_user "$PG_BINDIR/pg_ctl" -D "$work/standby" -l "$work/standby.log" -w start >/dev/null
for _ in $(seq 1 100); do
	[ "$(psql -X -qAt -c "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'bench_standby' AND state = 'streaming'")" = 1 ] && break
	sleep 0.1
done

psql -X -q -c 'CREATE EXTENSION infra'
psql -X -qAt -c "SELECT infra.topic_register('bench', 'standby', config => '{\"message.timestamp.type\": \"LogAppendTime\"}')" >/dev/null
for _ in $(seq 1 100); do
	[ "$(psql -X -qAt -c "SELECT broker_state FROM infra.topics WHERE name = 'dev.bench.standby.v1'")" != pending ] && break
	sleep 0.1
done
psql -X -qAt -c "SELECT infra.kafka_send('dev.bench.standby.v1', 'warmup')" -c "SELECT infra.kafka_flush('60 s')" >/dev/null

setting() {
	psql -X -qAt -c "ALTER SYSTEM SET infra.kafka_wait_for_standbys = '$1'" -c 'SELECT pg_reload_conf()' >/dev/null
	sleep 0.5
}

for r in $(seq 1 "$rounds"); do
	for conf in off wait; do
		if [ "$conf" = wait ]; then setting 'ANY 1 (bench_standby)'; else setting ''; fi
		echo "SELECT infra.kafka_send('dev.bench.standby.v1', '$conf ' || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);" >"$work/send.sql"
		# -l: each transaction's own latency (to its commit), for comparison.
		(cd "$work" && pgbench -n -R "$rate" -c 4 -j 2 -T "$seconds" -l --log-prefix="commit_$conf" \
			-f "$work/send.sql" >/dev/null 2>&1)
		psql -X -qAt -c "SELECT infra.kafka_flush('120 s')" | grep -q t
	done
done

kcat -C -b "$bootstrap" -t dev.bench.standby.v1 -o beginning -e -q -f '%T %s\n' |
	awk '$2 == "off" || $2 == "wait" { d = $1 - $3 / 1000; if (d < 0) d = 0; print $2, d }' >"$work/latency"
pct() {
	grep "^$1 " "$work/latency" | awk '{ print $2 }' | sort -n |
		awk -v q="$2" '{ v[NR] = $1 } END { printf "%.1f", v[int(NR * q) + 1] }'
}
# pgbench's log: the third field is the transaction's latency in us.
commit_pct() {
	cat "$work"/commit_"$1"* | awk '{ print $3 / 1000 }' | sort -n |
		awk -v q="$2" '{ v[NR] = $1 } END { printf "%.1f", v[int(NR * q) + 1] }'
}
echo "single-row commits at $rate msg/s, $rounds interleaved rounds of ${seconds}s per configuration;"
echo "commit to broker append (broker timestamps: millisecond resolution)"
printf '%-40s %8s %8s %8s   %s\n' "" messages p50_ms p99_ms "(the transaction itself, to its commit: p50, p99)"
for conf in off wait; do
	label="kafka_wait_for_standbys off"
	[ "$conf" = wait ] && label="'ANY 1 (bench_standby)'"
	printf '%-40s %8d %8s %8s   %s, %s\n' "$label" "$(grep -c "^$conf " "$work/latency")" \
		"$(pct "$conf" 0.50)" "$(pct "$conf" 0.99)" "$(commit_pct "$conf" 0.50)" "$(commit_pct "$conf" 0.99)"
done
awk -v a="$(pct wait 0.50)" -v b="$(pct off 0.50)" -v c="$(pct wait 0.99)" -v d="$(pct off 0.99)" \
	'BEGIN { printf "%-40s p50 %+.1f ms, p99 %+.1f ms\n", "added by waiting for the standby", a - b, c - d }'
