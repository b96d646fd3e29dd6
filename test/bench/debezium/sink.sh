# Sourced by bench_debezium.sh: the sink side.  BENCH_SINK_MESSAGES (1,000,000)
# JSON messages on a 4-partition topic into a table, by infra-bridge, by
# Debezium's JDBC sink connector (tuned per its documentation: tasks, batch
# size, max.poll.records, the driver's reWriteBatchedInserts; and at its
# defaults), and by PostgreSQL's own COPY FROM of the same rows in a file
# (the physical limit), on both of the bridge's paths:
#   json   one JSON value into a jsonb column;
#   typed  json_columns: the JSON's fields onto typed columns.
# The JDBC sink needs records with a schema: JsonConverter with an inline
# schema (the value as an io.debezium.data.Json string for the jsonb path).
# Time: the tool's start (the bridge's process, the connector's creation;
# group join included) to the commit of the last row (track_commit_timestamp).
# PostgreSQL's CPU: user + system time of every server process (the
# row-count poller's backend left out) over the run, per row.

sink_n=${BENCH_SINK_MESSAGES:-1000000}


# sink_wait TABLE N WHO: returns when TABLE has N rows; sets poll_pid to the
# poller's backend.  Fails if sink_tool_pid (when set) exits meanwhile.
sink_wait() {
	local line
	poll_pid=
	while read -r line; do
		[ -n "$poll_pid" ] || poll_pid=${line%|*}
		[ "${line#*|}" -ge "$2" ] && return 0
		[ -z "${sink_tool_pid:-}" ] || kill -0 "$sink_tool_pid" 2>/dev/null || die "$3 exited; see $work"
	done < <(printf 'SELECT pg_backend_pid(), count(*) FROM %s\n\\watch 0.5\n' "$1" | psql -X -A -t -q 2>/dev/null)
	die "polling $1 ended"
}



# --- the messages ------------------------------------------------------------------
sink_messages "$sink_n"
chmod a+r "$work"/sink_copy_*.txt
for t in sink_plain sink_dbz_json sink_dbz_typed; do
	as_test_user "$here/../kafka/broker.sh" create-topic "$work/kafka" "$t" 4
	kcat -P -b "$bootstrap" -t "$t" -K : -l "$work/$t.txt" -X linger.ms=50 -X batch.num.messages=10000
done
for tool in bridge dbz dbzdef copy; do
	# Autovacuum off: its pass over a freshly loaded table would land in
	# whichever tool's run comes next.
	psql -X -q -c "CREATE TABLE ${tool}_json (payload jsonb) WITH (autovacuum_enabled = off)" \
		-c "CREATE TABLE ${tool}_typed (id bigint NOT NULL, kind text NOT NULL, amount numeric NOT NULL, note text NOT NULL)
			WITH (autovacuum_enabled = off)"
done
# The broker creates its group-offsets topic at a group's first use: not timed.
timeout 60 kcat -b "$bootstrap" -G sink_warmup -X auto.offset.reset=earliest -c 1 -q -o beginning sink_plain >/dev/null 2>&1 || true
echo "sink: produced $sink_n messages to each of sink_plain, sink_dbz_json, sink_dbz_typed (4 partitions)"

# --- infra-bridge ------------------------------------------------------------------------
for path in json typed; do
	{
		echo "[bridge]"
		echo "conninfo = host=127.0.0.1 port=$port user=postgres dbname=postgres"
		echo "brokers = $bootstrap"
		echo "group = bridge_$path"
		echo "[route r]"
		echo "topics = sink_plain"
		echo "table = bridge_$path"
		if [ $path = json ]; then
			echo "format = json"
			echo "column = payload"
		else
			echo "format = json_columns"
		fi
	} >"$work/bridge_$path.ini"
	sink_start
	"$PG_BINDIR/infra-bridge" --config "$work/bridge_$path.ini" 2>"$work/bridge_$path.log" &
	sink_tool_pid=$!
	sink_wait "bridge_$path" "$sink_n" infra-bridge
	sink_done "bridge_$path" "bridge_$path" "$t0" "$cpu0"
	kill "$sink_tool_pid"
	wait "$sink_tool_pid" || true
	sink_tool_pid=
done

# --- Debezium's JDBC sink ---------------------------------------------------------------

# Connect with a warm-up sink: 20,000 typed rows through the whole path.
as_test_user mkdir -p "$work/connect"
rm -f "$work/connect/offsets"
as_test_user "$here/../kafka/broker.sh" create-topic "$work/kafka" sink_warm 4
head -n 20000 "$work/sink_dbz_typed.txt" | kcat -P -b "$bootstrap" -t sink_warm -K :
psql -X -q -c "CREATE TABLE warm_typed (LIKE dbz_typed)"
sink_connector warm sink_warm warm_typed tuned |
	python3 -c 'import json, sys; c = json.load(sys.stdin)["config"]; print("\n".join(k + "=" + v for k, v in c.items()))' \
		>"$work/warm.properties"
as_test_user "$here/../debezium/connect.sh" start "$work/connect" "$work/worker.properties" "$work/warm.properties"
sink_wait warm_typed 20000 "Kafka Connect"
rest DELETE /warm >/dev/null
for setting in tuned defaults; do
	for path in json typed; do
		[ $setting = tuned ] || [ $path = json ] || continue   # defaults: the jsonb path only
		table=$([ $setting = tuned ] && echo dbz || echo dbzdef)_$path
		sink_connector "$table" "sink_dbz_$path" "$table" "$setting" >"$work/$table.json"
		sink_start
		rest POST "" "$work/$table.json" >/dev/null
		sink_wait "$table" "$sink_n" "Kafka Connect"
		sink_done "$table" "$table" "$t0" "$cpu0"
		rest DELETE "/$table" >/dev/null
	done
done
as_test_user "$here/../debezium/connect.sh" stop "$work/connect"

# --- COPY FROM a file ----------------------------------------------------------------------
for path in json typed; do
	sink_start
	pid=$(psql -X -qAt -c 'SELECT pg_backend_pid()' -c "COPY copy_$path FROM '$work/sink_copy_$path.txt'")
	# Its CPU counts once the postmaster has reaped the backend.
	while [ -e "/proc/$pid" ]; do sleep 0.05; done
	poll_pid=
	sink_done "copy_$path" "copy_$path" "$t0" "$cpu0"
done

# --- report ---------------------------------------------------------------------------------
echo
echo "sink: $sink_n JSON messages (4 partitions) into a table, tool start to the last row's commit"
printf '%-34s %9s %9s %11s %16s\n' "" rows seconds rows/s "PG CPU us/row"
hz=$(getconf CLK_TCK)
for l in bridge_json dbz_json dbzdef_json copy_json bridge_typed dbz_typed copy_typed; do
	awk -v l="$l" -v hz="$hz" '$1 == "sink" && $2 == l {
		printf "%-34s %9d %9.2f %11.0f %16.2f\n", l, $3, $4 / 1000, $3 / ($4 / 1000), $5 / hz * 1e6 / $3 }' "$work/results"
done
sget() { awk -v l="$1" -v f="$2" '$1 == "sink" && $2 == l { print $f }' "$work/results"; }
for path in json typed; do
	r=$(awk -v b="$(sget "bridge_$path" 4)" -v d="$(sget "dbz_$path" 4)" 'BEGIN { printf "%.2f", d / b }')
	c=$(awk -v b="$(sget "bridge_$path" 4)" -v c="$(sget "copy_$path" 4)" 'BEGIN { printf "%.2f", c / b }')
	cpu=$(awk -v b="$(sget "bridge_$path" 5)" -v d="$(sget "dbz_$path" 5)" 'BEGIN { printf "%.2f", b / d }')
	printf '%-46s %6s x (target >= 2.5: %s)\n' "bridge / tuned JDBC sink, $path, rows/s" "$r" \
		"$(awk -v r="$r" 'BEGIN { print (r >= 2.5 ? "meets" : "BELOW") }')"
	printf '%-46s %6s x (target <= 1: %s)\n' "bridge / JDBC sink, $path, PG CPU per row" "$cpu" \
		"$(awk -v r="$cpu" 'BEGIN { print (r <= 1 ? "meets" : "ABOVE") }')"
	printf '%-46s %6s x (moonshot >= 0.8)\n' "bridge / COPY, $path, rows/s" "$c"
done
