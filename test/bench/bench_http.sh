#!/usr/bin/env bash
# http_send end to end, against the physical limit here (issue 28, item 8).
#
# A keep-alive HTTP server (test/bench/http/sink.c, libmicrohttpd) counts
# requests.  Side by side in one run:
#   baseline  a plain libcurl multi client (test/bench/http/blast.c) sending
#             BENCH_REQUESTS (default 100,000) POSTs of the same shape (a
#             100-byte JSON body, Content-Type, the three webhook headers)
#             with 16 in flight;
#   infra     the same number of http_send calls to an endpoint with
#             concurrency 16, committed in transactions of 1,000, timed from
#             the first commit's start to the server's last request.
# Then the enqueue cost: pgbench rounds of 100 http_send calls against 100
# kafka_send calls of the same 100-byte value, committed, interleaved in
# BENCH_ROUNDS pairs (default 6) of BENCH_SECONDS (default 3) in a database
# no worker serves (so only the enqueue is measured).  Prints the ratios.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

requests=${BENCH_REQUESTS:-100000}
rounds=${BENCH_ROUNDS:-6}
seconds=${BENCH_SECONDS:-3}

cc -O2 -o "$work/http_sink" "$here/http/sink.c" -lmicrohttpd
cc -O2 -o "$work/http_blast" "$here/http/blast.c" -lcurl
sink_port=$(free_port)
"$work/http_sink" "$sink_port" >"$work/sink.log" 2>&1 &
sink_pid=$!
bench_on_exit() { kill "$sink_pid" 2>/dev/null || true; }
for _ in $(seq 1 50); do grep -q listening "$work/sink.log" && break; sleep 0.1; done
sink_count() { curl -s "http://127.0.0.1:$sink_port/count" | cut -d' ' -f1; }

# kafka_send rounds of the enqueue comparison outgrow the default backlog limit.
bench_start_pg "infra.http_allow=127.0.0.1" "infra.kafka_max_pending=2000000000"
psql -X -q -c 'CREATE EXTENSION infra' \
	-c "INSERT INTO infra.http_endpoints (name, url, concurrency) VALUES ('sink', 'http://127.0.0.1:$sink_port/hook', 16)"
body=$(printf '{"n": "%094d"}' 0)

# --- baseline: libcurl multi straight at the server ---------------------------
read -r base_s base_rps base_failed < <("$work/http_blast" "http://127.0.0.1:$sink_port/hook" "$requests" 16)
printf 'baseline (libcurl multi, 16 in flight): %d requests in %.2f s = %.0f req/s (%d failed)\n' \
	"$requests" "$base_s" "$base_rps" "$base_failed"

# --- infra: http_send, end to end -------------------------------------------------
before=$(sink_count)
txns=$((requests / 1000))
sql="$work/send.sql"
for _ in $(seq 1 "$txns"); do
	echo "BEGIN; SELECT count(infra.http_send(NULL, '$body'::jsonb, endpoint => 'sink')) FROM generate_series(1, 1000); COMMIT;"
done >"$sql"
t0=$(date +%s.%N)
psql -X -q -o /dev/null -f "$sql"
t_enqueued=$(date +%s.%N)
target=$((before + txns * 1000))
while [ "$(sink_count)" -lt "$target" ]; do sleep 0.05; done
t1=$(date +%s.%N)
ours_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
enq_s=$(awk -v a="$t0" -v b="$t_enqueued" 'BEGIN { printf "%.3f", b - a }')
ours_rps=$(awk -v n="$((txns * 1000))" -v s="$ours_s" 'BEGIN { printf "%.0f", n / s }')
printf 'infra (http_send, endpoint concurrency 16): %d requests in %.2f s end to end = %.0f req/s (enqueue alone %.2f s)\n' \
	"$((txns * 1000))" "$ours_s" "$ours_rps" "$enq_s"
awk -v o="$ours_rps" -v b="$base_rps" 'BEGIN {
	printf "infra / libcurl multi: %.2f x (target >= 0.5)\n", o / b
	printf "infra end to end: %.0f req/s (target >= 5000)\n", o }'
left=$(psql -X -qAt -c "SELECT count(*) FROM infra.http_requests")
echo "requests left undelivered: $left"

# --- enqueue cost: http_send vs kafka_send ------------------------------------------
psql -X -q -c 'CREATE DATABASE enqueue'
PGDATABASE=enqueue psql -X -q -c 'CREATE EXTENSION infra'
value=$(printf '%0100d' 0)
echo "BEGIN; SELECT count(infra.http_send('http://127.0.0.1:1/hook', '$value')) FROM generate_series(1, 100); COMMIT;" >"$work/http.sql"
echo "BEGIN; SELECT count(infra.kafka_send('bench', '$value')) FROM generate_series(1, 100); COMMIT;" >"$work/kafka.sql"
chmod a+r "$work"/*.sql
# Each round starts from empty outboxes (kafka_send refuses past
# infra.kafka_max_pending; neither table should grow across rounds).
tps() {
	PGDATABASE=enqueue psql -X -q -c 'TRUNCATE infra.kafka_outbox_batches, infra.http_outbox_batches'
	PGDATABASE=enqueue pgbench -n -M prepared -c 2 -j 2 -T "$seconds" -f "$1" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
ratios=()
for i in $(seq 1 "$rounds"); do
	k=$(tps "$work/kafka.sql")
	h=$(tps "$work/http.sql")
	r=$(awk -v h="$h" -v k="$k" 'BEGIN { printf "%.3f", k / h }')
	ratios+=("$r")
	printf 'round %d: kafka_send %.1f tps, http_send %.1f tps (100 calls each): http/kafka cost %s\n' "$i" "$k" "$h" "$r"
done
printf '%s\n' "${ratios[@]}" | sort -n | awk '{ r[NR] = $1 } END {
	m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
	printf "enqueue cost http_send / kafka_send: median %.3f x, range %.3f-%.3f over %d pairs (target <= 1.2)\n", m, r[1], r[NR], NR }'
