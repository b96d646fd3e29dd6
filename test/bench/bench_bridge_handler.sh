#!/usr/bin/env bash
# infra-bridge handler path (issue 29, item 6), one run, one broker, one
# PostgreSQL with production durability: BENCH_MESSAGES (default 1,000,000)
# JSON messages of about 100 bytes on a 4-partition topic, read by the
# bridge three times, each from its start to the last offset stored:
#   table     a route writing the value into a jsonb column (the bridge's
#             direct COPY: the baseline)
#   handler   a route whose handler, a SQL function, inserts each message
#             (INSERT ... SELECT FROM unnest(messages)) into the same table
#   plpgsql   the same as a PL/pgSQL loop inserting one message at a time
# Prints messages/s, the ratio to the table route and PostgreSQL's CPU per
# message (every server process of the cluster, from /proc).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

messages=${BENCH_MESSAGES:-1000000}
bridge_pid=
bench_on_exit() { [ -z "$bridge_pid" ] || kill "$bridge_pid" 2>/dev/null || true; }
bench_start_broker
bench_start_pg
psql -X -q -c 'CREATE EXTENSION infra' -c 'CREATE SCHEMA app' \
	-c 'CREATE TABLE app.via_table (payload jsonb)' \
	-c 'CREATE TABLE app.via_handler (payload jsonb, part integer, off bigint)' \
	-c 'CREATE TABLE app.via_plpgsql (payload jsonb, part integer, off bigint)' \
	-c "CREATE FUNCTION app.insert_all(messages infra.bridge_message[]) RETURNS void LANGUAGE sql AS \$\$
	      INSERT INTO app.via_handler SELECT convert_from(m.value, 'UTF8')::jsonb, m.partition, m.\"offset\"
	      FROM unnest(messages) m \$\$" \
	-c "CREATE FUNCTION app.insert_each(messages infra.bridge_message[]) RETURNS void LANGUAGE plpgsql AS \$\$
	    DECLARE m infra.bridge_message;
	    BEGIN
	      FOREACH m IN ARRAY messages LOOP
	        INSERT INTO app.via_plpgsql VALUES (convert_from(m.value, 'UTF8')::jsonb, m.partition, m.\"offset\");
	      END LOOP;
	    END \$\$"

as_test_user "$here/../kafka/broker.sh" create-topic "$work/kafka" bench_handler 4
bench_produce_orders bench_handler "$messages"
echo "produced $messages messages"
timeout 60 kcat -b "$bootstrap" -G bench_warmup -X auto.offset.reset=earliest -c 1 -q -o beginning bench_handler >/dev/null 2>&1 || true

hz=$(getconf CLK_TCK)
# CPU (ms) of every process of the cluster: the postmaster and its children.
pg_cpu_ms() {
	local pm
	pm=$(head -1 "$work/pg/data/postmaster.pid")
	{ echo "$pm"; pgrep -P "$pm" || true; } | while read -r p; do
		[ -r "/proc/$p/stat" ] && awk '{ print $14 + $15 + $16 + $17 }' "/proc/$p/stat"
	done | awk -v hz="$hz" '{ s += $1 } END { print int(s * 1000 / hz) }'
}

# run NAME ROUTE-LINES: the bridge from its start to the last offset stored;
# sets ms and cpu.
run() {
	local name=$1 route=$2 c0 t0
	cat >"$work/$name.ini" <<INI
[bridge]
conninfo = host=127.0.0.1 port=$port user=postgres dbname=postgres
brokers = $bootstrap
group = bench_$name

[route $name]
topics = bench_handler
$route
INI
	c0=$(pg_cpu_ms)
	t0=$(now_ms)
	"$PG_BINDIR/infra-bridge" --config "$work/$name.ini" 2>"$work/$name.log" &
	bridge_pid=$!
	bench_bridge_wait "bench_$name" "$messages" "$bridge_pid" "$work/$name.log"
	ms=$(($(now_ms) - t0))
	# The bridge's sessions end with it: their CPU is counted before.
	cpu=$(($(pg_cpu_ms) - c0))
	kill "$bridge_pid"
	wait "$bridge_pid" || true
	bridge_pid=
}

declare -A rate cpu_per
for variant in table handler plpgsql; do
	case $variant in
	table) run table $'table = app.via_table\nformat = json\ncolumn = payload' ;;
	handler) run handler 'handler = app.insert_all' ;;
	plpgsql) run plpgsql 'handler = app.insert_each' ;;
	esac
	rows=$(psql -X -At -c "SELECT count(*) FROM app.via_$variant")
	[ "$rows" = "$messages" ] || { echo "$variant wrote $rows rows, not $messages"; exit 1; }
	rate[$variant]=$(awk -v r="$rows" -v ms="$ms" 'BEGIN { printf "%.0f", r / (ms / 1000) }')
	cpu_per[$variant]=$(awk -v c="$cpu" -v r="$rows" 'BEGIN { printf "%.2f", c * 1000 / r }')
	printf '%-8s %8d messages in %6.2f s: %7d msg/s, PostgreSQL CPU %5.2f us/message\n' "$variant" "$rows" \
		"$(awk -v ms="$ms" 'BEGIN { print ms / 1000 }')" "${rate[$variant]}" "${cpu_per[$variant]}"
done
for variant in handler plpgsql; do
	printf '%-8s / table: %.2fx throughput, %.2fx PostgreSQL CPU per message\n' "$variant" \
		"$(awk -v a="${rate[$variant]}" -v b="${rate[table]}" 'BEGIN { print a / b }')" \
		"$(awk -v a="${cpu_per[$variant]}" -v b="${cpu_per[table]}" 'BEGIN { print a / b }')"
done
echo "handler msg/s: ${rate[handler]} (target >= 100000: $(awk -v x="${rate[handler]}" 'BEGIN { print (x >= 100000 ? "meets" : "MISSES") }'))"
