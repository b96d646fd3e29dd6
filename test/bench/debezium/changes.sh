# Sourced by bench_debezium.sh: change events applied to a keyed table
# (issue 29).  BENCH_CHANGE_EVENTS (1,000,000) Debezium change events of a
# keyed table, as its PostgreSQL connector and the JSON converter write them
# (the envelope with its schema; numeric as Decimal bytes, a MicroTimestamp):
# about 20% creates, 70% updates of a live key, 10% deletes, no tombstones,
# keys spread over 4 partitions by key (each key's events in order), the
# last event of each partition the create of a sentinel key (< 0).
# Applied by infra-bridge (format = debezium) and by Debezium's JDBC sink
# tuned for throughput (upsert by the record key, deletes, its reduction
# buffer, tasks, batch size, max.poll.records, reWriteBatchedInserts) after
# a warm-up; time from the tool's start to the commit of the last row, and
# PostgreSQL's CPU per event.  Each table is then compared with the rows
# the events should leave.

changes_n=${BENCH_CHANGE_EVENTS:-1000000}

# The events, per partition, and the rows they leave (COPY text).
awk -v n="$changes_n" -v dir="$work" 'BEGIN {
	srand(29)
	row = "{\"type\":\"struct\",\"optional\":true,\"name\":\"bench.public.orders.Value\",\"fields\":[" \
		"{\"field\":\"id\",\"type\":\"int64\",\"optional\":false}," \
		"{\"field\":\"status\",\"type\":\"string\",\"optional\":true}," \
		"{\"field\":\"amount\",\"type\":\"bytes\",\"optional\":true,\"name\":\"org.apache.kafka.connect.data.Decimal\",\"version\":1,\"parameters\":{\"scale\":\"2\",\"connect.decimal.precision\":\"12\"}}," \
		"{\"field\":\"updated_at\",\"type\":\"int64\",\"optional\":true,\"name\":\"io.debezium.time.MicroTimestamp\",\"version\":1}," \
		"{\"field\":\"note\",\"type\":\"string\",\"optional\":true}]}"
	src = "{\"type\":\"struct\",\"optional\":false,\"name\":\"io.debezium.connector.postgresql.Source\",\"fields\":[" \
		"{\"field\":\"connector\",\"type\":\"string\",\"optional\":false},{\"field\":\"db\",\"type\":\"string\",\"optional\":false}," \
		"{\"field\":\"schema\",\"type\":\"string\",\"optional\":false},{\"field\":\"table\",\"type\":\"string\",\"optional\":false}," \
		"{\"field\":\"ts_ms\",\"type\":\"int64\",\"optional\":false}]}"
	vschema = "{\"type\":\"struct\",\"optional\":false,\"name\":\"bench.public.orders.Envelope\",\"version\":2,\"fields\":[" \
		substr(row, 1, length(row) - 1) ",\"field\":\"before\"}," substr(row, 1, length(row) - 1) ",\"field\":\"after\"}," \
		substr(src, 1, length(src) - 1) ",\"field\":\"source\"}," \
		"{\"field\":\"op\",\"type\":\"string\",\"optional\":false},{\"field\":\"ts_ms\",\"type\":\"int64\",\"optional\":true}]}"
	kschema = "{\"type\":\"struct\",\"optional\":false,\"name\":\"bench.public.orders.Key\",\"fields\":[{\"field\":\"id\",\"type\":\"int64\",\"optional\":false}]}"
	source = "{\"connector\":\"postgresql\",\"db\":\"bench\",\"schema\":\"public\",\"table\":\"orders\",\"ts_ms\":1709210096000}"
	split("new paid packed shipped delivered", statuses)
	live = 0; next_id = 0
	for (i = 1; i <= n - 4; i++) {
		r = rand()
		if (live < 1000 || r < 0.2) { op = "c"; id = ++next_id; pos[id] = ++live; keys[live] = id }
		else {
			k = int(rand() * live) + 1; id = keys[k]
			if (r < 0.9) op = "u"
			else { op = "d"; keys[k] = keys[live]; pos[keys[k]] = k; delete keys[live]; live--; delete pos[id] }
		}
		emit(op, id, i)
	}
	# the sentinels -1 .. -4: one last create in each partition
	for (s = 1; s <= 4; s++) { pos[-s] = 1; emit("c", -s, n - 4 + s) }
	for (id in pos) print rowtext(id, last[id]) > (dir "/changes_expected.txt")
}
function part(id) { return ((id % 4) + 4) % 4 }
function amount(id, v) { return (id * 37 + v * 11) % 100000 }
function b64(x,   bytes, s, i, c, v, digits, out, pad) {
	# the minimal big-endian two-s complement bytes of x (0 <= x < 2^23), base64
	digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	if (x < 128) { v = x * 65536; pad = 2 } else if (x < 32768) { v = x * 256; pad = 1 } else { v = x; pad = 0 }
	out = substr(digits, int(v / 262144) % 64 + 1, 1) substr(digits, int(v / 4096) % 64 + 1, 1)
	out = out (pad < 2 ? substr(digits, int(v / 64) % 64 + 1, 1) : "=") (pad < 1 ? substr(digits, v % 64 + 1, 1) : "=")
	return out
}
function after(id, v) {
	return sprintf("{\"id\":%d,\"status\":\"%s\",\"amount\":\"%s\",\"updated_at\":%d,\"note\":\"note %d of order %d xxxxxxxxxxxxxxxx\"}",
		id, statuses[v % 5 + 1], b64(amount(id, v)), 1709210096000000 + v, v, id)
}
function rowtext(id, v,   a) {
	a = amount(id, v)
	return sprintf("%d\t%s\t%d.%02d\t%d\tnote %d of order %d xxxxxxxxxxxxxxxx", id, statuses[v % 5 + 1], int(a / 100), a % 100,
		1709210096000000 + v, v, id)
}
function emit(op, id, v,   key, value, p) {
	p = part(id)
	key = "{\"schema\":" kschema ",\"payload\":{\"id\":" id "}}"
	if (op == "d") value = "{\"schema\":" vschema ",\"payload\":{\"before\":{\"id\":" id ",\"status\":null,\"amount\":null,\"updated_at\":null,\"note\":null},\"after\":null,\"source\":" source ",\"op\":\"d\",\"ts_ms\":1709210096000}}"
	else { value = "{\"schema\":" vschema ",\"payload\":{\"before\":null,\"after\":" after(id, v) ",\"source\":" source ",\"op\":\"" op "\",\"ts_ms\":1709210096000}}"; last[id] = v }
	print key "\t" value > (dir "/changes_p" p ".txt")
}'

psql -X -q -c "CREATE TABLE changes_expected (id bigint, status text, amount numeric(12,2), updated_us bigint, note text)" \
	-c "\\copy changes_expected FROM '$work/changes_expected.txt'"
for tool in bridge dbz warm; do
	psql -X -q -c "CREATE TABLE ${tool}_orders (id bigint PRIMARY KEY, status text, amount numeric(12,2),
		updated_at timestamp, note text) WITH (autovacuum_enabled = off)"
done
for t in changes changes_warm; do
	as_test_user "$here/../kafka/broker.sh" create-topic "$work/kafka" "$t" 4
done
for p in 0 1 2 3; do
	kcat -P -b "$bootstrap" -t changes -p "$p" -K '\t' -l "$work/changes_p$p.txt" -X linger.ms=50 -X batch.num.messages=10000
	{
		head -n 5000 "$work/changes_p$p.txt" | grep -v '"id":-'
		grep '"id":-' "$work/changes_p$p.txt"
	} | kcat -P -b "$bootstrap" -t changes_warm -p "$p" -K '\t'
done
echo "changes: produced $changes_n change events to changes (4 partitions), $(wc -l <"$work/changes_expected.txt") rows to end with"

# changes_check TABLE: rows that differ from what the events leave (0: right).
changes_check() {
	psql -X -qAt -c "SELECT count(*) FROM (SELECT id, status, amount, updated_at, note FROM $1
		EXCEPT ALL SELECT id, status, amount, TIMESTAMP '1970-01-01' + updated_us * interval '1 microsecond', note
		FROM changes_expected) a" \
		-c "SELECT count(*) FROM changes_expected" -c "SELECT count(*) FROM $1" |
		awk 'NR == 1 { d = $1 } NR == 2 { e = $1 } NR == 3 { t = $1 } END { print d + (e > t ? e - t : t - e) }'
}

# changes_wait TABLE WHO: returns when the four sentinel rows are in TABLE.
changes_wait() {
	local line
	poll_pid=
	while read -r line; do
		[ -n "$poll_pid" ] || poll_pid=${line%|*}
		[ "${line#*|}" -ge 4 ] && return 0
		[ -z "${sink_tool_pid:-}" ] || kill -0 "$sink_tool_pid" 2>/dev/null || die "$2 exited; see $work"
	done < <(printf 'SELECT pg_backend_pid(), count(*) FROM %s WHERE id < 0\n\\watch 0.5\n' "$1" | psql -X -A -t -q 2>/dev/null)
	die "polling $1 ended"
}

# --- infra-bridge ----------------------------------------------------------------------------
cat >"$work/bridge_changes.ini" <<INI
[bridge]
conninfo = host=127.0.0.1 port=$port user=postgres dbname=postgres
brokers = $bootstrap
group = bridge_changes
[route orders]
topics = changes
table = bridge_orders
format = debezium
INI
sink_start
"$PG_BINDIR/infra-bridge" --config "$work/bridge_changes.ini" 2>"$work/bridge_changes.log" &
sink_tool_pid=$!
changes_wait bridge_orders infra-bridge
sink_done changes_bridge bridge_orders "$t0" "$cpu0"
kill "$sink_tool_pid"
wait "$sink_tool_pid" || true
sink_tool_pid=
echo "wrong changes_bridge $(changes_check bridge_orders)" >>"$work/results"

# --- Debezium's JDBC sink, tuned ---------------------------------------------------------------
changes_connector() {  # changes_connector NAME TOPIC TABLE
	printf '{ "name": "%s", "config": { "name": "%s"' "$1" "$1"
	printf ', "%s": "%s"' \
		connector.class io.debezium.connector.jdbc.JdbcSinkConnector \
		topics "$2" \
		connection.url "jdbc:postgresql://127.0.0.1:$port/postgres?reWriteBatchedInserts=true" \
		connection.username postgres \
		connection.password unused \
		insert.mode upsert \
		primary.key.mode record_key \
		delete.enabled true \
		use.reduction.buffer true \
		schema.evolution none \
		collection.name.format "$3" \
		key.converter org.apache.kafka.connect.json.JsonConverter \
		key.converter.schemas.enable true \
		value.converter org.apache.kafka.connect.json.JsonConverter \
		value.converter.schemas.enable true \
		consumer.override.auto.offset.reset earliest \
		tasks.max "${BENCH_DBZ_TASKS:-4}" \
		batch.size "${BENCH_DBZ_BATCH:-10000}" \
		consumer.override.max.poll.records "${BENCH_DBZ_BATCH:-10000}"
	printf ' } }\n'
}
as_test_user mkdir -p "$work/connect"
rm -f "$work/connect/offsets"
as_test_user "$here/../debezium/connect.sh" start "$work/connect" "$work/worker.properties"
changes_connector warm changes_warm warm_orders >"$work/changes_warm.json"
rest POST "" "$work/changes_warm.json" >/dev/null
changes_wait warm_orders "Kafka Connect"
rest DELETE /warm >/dev/null
changes_connector dbz_changes changes dbz_orders >"$work/changes_dbz.json"
sink_start
rest POST "" "$work/changes_dbz.json" >/dev/null
changes_wait dbz_orders "Kafka Connect"
sink_done changes_dbz dbz_orders "$t0" "$cpu0"
rest DELETE /dbz_changes >/dev/null
as_test_user "$here/../debezium/connect.sh" stop "$work/connect"
echo "wrong changes_dbz $(changes_check dbz_orders)" >>"$work/results"

# --- report ---------------------------------------------------------------------------------
echo
echo "changes: $changes_n Debezium change events (20% creates, 70% updates, 10% deletes; 4 partitions) onto a keyed table"
printf '%-34s %9s %11s %16s %12s\n' "" seconds events/s "PG CPU us/event" "rows wrong"
hz=$(getconf CLK_TCK)
for l in changes_bridge changes_dbz; do
	awk -v l="$l" -v hz="$hz" -v n="$changes_n" -v w="$(get wrong "$l" 3)" '$1 == "sink" && $2 == l {
		printf "%-34s %9.2f %11.0f %16.2f %12s\n", l, $4 / 1000, n / ($4 / 1000), $5 / hz * 1e6 / n, w }' "$work/results"
done
cget() { awk -v l="$1" -v f="$2" '$1 == "sink" && $2 == l { print $f }' "$work/results"; }
r=$(ratio "$(cget changes_dbz 4)" "$(cget changes_bridge 4)")
cpu=$(ratio "$(cget changes_bridge 5)" "$(cget changes_dbz 5)")
printf '%-46s %6s x (target >= 3: %s)\n' "bridge / tuned JDBC sink, change events/s" "$r" \
	"$(awk -v r="$r" 'BEGIN { print (r >= 3 ? "meets" : "BELOW") }')"
printf '%-46s %6s x (target <= 1: %s)\n' "bridge / JDBC sink, PG CPU per event" "$cpu" \
	"$(awk -v r="$cpu" 'BEGIN { print (r <= 1 ? "meets" : "ABOVE") }')"
