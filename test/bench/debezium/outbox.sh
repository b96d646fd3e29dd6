# Sourced by bench_debezium.sh: the outbox side (see there).

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$(cat "$work/connect/connect.pid")/stat"; }

# dbz_run SETTING: start Connect, warm up, throughput, latency, idle CPU.
dbz_run() {
	local setting=$1 t start end ms before after
	as_test_user mkdir -p "$work/connect"
	connector "$setting" "$setting" >"$work/connector_$setting.properties"
	rm -f "$work/connect/offsets"
	as_test_user "$connect" start "$work/connect" "$work/worker.properties" "$work/connector_$setting.properties"
	# With snapshot.mode = no_data, what commits before its slot streams is
	# not captured: wait for the slot to be in use.
	for _ in $(seq 1 600); do
		[ "$(psql -X -qAt -c "SELECT active FROM pg_replication_slots WHERE slot_name = 'dbz_$setting'")" = t ] && break
		sleep 0.1
	done
	# Warm-up: 10,000 messages through the whole path.
	t="warm_$setting"
	new_topic "$t"
	messages_saved=$messages
	messages=10000
	statements dbz "$work/dbz.sql" "$t"
	psql -X -q -o /dev/null -f "$work/dbz.sql"
	wait_count "$t" 10000
	messages=$messages_saved

	t="dbz_tp_$setting"
	new_topic "$t"
	statements dbz "$work/dbz.sql" "$t"
	start=$(now_ms)
	psql -X -q -o /dev/null -f "$work/dbz.sql"
	wait_count "$t" "$messages"
	ms=$(($(last_append "$t") - start))
	echo "throughput dbz_$setting $ms" >>"$work/results"

	t="dbz_lat_$setting"
	new_topic "$t"
	psql -X -q -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$t', 'w', 'e', '0')"
	wait_count "$t" 1
	echo "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('$t', 'k', 'e', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text);" >"$work/lat.sql"
	pgbench -n -R "$rate" -c 4 -j 2 -T "$lat_seconds" -f "$work/lat.sql" >/dev/null 2>&1
	sleep 2
	latencies "$t" "dbz_$setting"

	before=$(cpu_ticks)
	sleep 10
	after=$(cpu_ticks)
	echo "idle dbz_$setting $(awk -v d=$((after - before)) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", d / hz / 10 * 100 }')" >>"$work/results"
	as_test_user "$connect" stop "$work/connect"
	psql -X -q -c "SELECT pg_drop_replication_slot('dbz_$setting')" >/dev/null 2>&1 || true
}

# latencies TOPIC LABEL: p50 and p99 of broker append minus the value's time.
latencies() {
	kcat -C -b "$bootstrap" -t "$1" -o beginning -e -q -f '%T %s\n' |
		awk '$2 > 1000 { d = $1 - $2 / 1000; if (d < 0) d = 0; print d }' | sort -n >"$work/lat_$2"
	awk -v l="$2" '{ v[NR] = $1 } END { printf "latency %s %d %.1f %.1f\n", l, NR, v[int(NR * 0.5) + 1], v[int(NR * 0.99) + 1] }' \
		"$work/lat_$2" >>"$work/results"
}

# --- infra -----------------------------------------------------------------------
t=infra_warm
new_topic "$t"
messages_saved=$messages
messages=10000
statements infra "$work/infra.sql" "$t"
psql -X -q -o /dev/null -f "$work/infra.sql"
psql -X -qAt -c "SELECT infra.kafka_flush('120 s')" | grep -q t
messages=$messages_saved
t=infra_tp
new_topic "$t"
statements infra "$work/infra.sql" "$t"
start=$(now_ms)
psql -X -q -o /dev/null -f "$work/infra.sql"
wait_count "$t" "$messages"
echo "throughput infra $(($(last_append "$t") - start))" >>"$work/results"
t=infra_lat
new_topic "$t"
psql -X -qAt -c "SELECT infra.kafka_send('$t', '0')" -c "SELECT infra.kafka_flush('60 s')" >/dev/null
echo "SELECT infra.kafka_send('$t', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint::text);" >"$work/lat.sql"
pgbench -n -R "$rate" -c 4 -j 2 -T "$lat_seconds" -f "$work/lat.sql" >/dev/null 2>&1
psql -X -qAt -c "SELECT infra.kafka_flush('120 s')" | grep -q t
latencies "$t" infra

# --- kcat, the physical limit ----------------------------------------------------
psql -X -qAt -c "COPY (SELECT $payload FROM generate_series(1, $messages) g) TO STDOUT" >"$work/payloads"
t=kcat_tp
new_topic "$t"
start=$(now_ms)
kcat -P -b "$bootstrap" -t "$t" -X acks=all -X enable.idempotence=true -l "$work/payloads"
wait_count "$t" "$messages"
echo "throughput kcat $(($(last_append "$t") - start))" >>"$work/results"

# --- Debezium --------------------------------------------------------------------
dbz_run defaults
dbz_run tuned

# --- report ------------------------------------------------------------------------
rate_of() { awk -v n="$messages" -v ms="$1" 'BEGIN { printf "%.0f", n / (ms / 1000) }'; }
echo "outbox: $messages messages of 100 bytes in transactions of $per_txn, first commit to the broker's append of the last"
for l in infra dbz_defaults dbz_tuned kcat; do
	ms=$(get throughput "$l" 3)
	printf '%-28s %8d ms %10s msg/s\n' "$l" "$ms" "$(rate_of "$ms")"
done
echo
echo "latency at $rate msg/s single-row commits for ${lat_seconds}s, commit to broker append"
printf '%-28s %8s %8s %8s %14s\n' "" messages p50_ms p99_ms "idle CPU, %"
for l in infra dbz_defaults dbz_tuned; do
	printf '%-28s %8s %8s %8s %14s\n' "$l" "$(get latency "$l" 3)" "$(get latency "$l" 4)" "$(get latency "$l" 5)" \
		"$( [ "$l" = infra ] && echo - || get idle "$l" 3)"
done
echo
tp_ratio=$(ratio "$(get throughput dbz_tuned 3)" "$(get throughput infra 3)")
kcat_ratio=$(ratio "$(get throughput kcat 3)" "$(get throughput infra 3)")
best_p99=$(awk '$1 == "latency" && $2 ~ /^dbz/ { print $5 }' "$work/results" | sort -n | head -n 1)
printf '%-46s %6s x (target >= 3: %s)\n' "kafka_send / tuned Debezium outbox, throughput" "$tp_ratio" \
	"$(awk -v r="$tp_ratio" 'BEGIN { print (r >= 3 ? "meets" : "BELOW") }')"
printf '%-46s %6s ms vs %s ms (target below: %s)\n' "kafka_send p99 vs Debezium's lowest p99" "$(get latency infra 5)" "$best_p99" \
	"$(awk -v a="$(get latency infra 5)" -v b="$best_p99" 'BEGIN { print (a < b ? "meets" : "ABOVE") }')"
printf '%-46s %6s x (moonshot >= 0.5)\n' "kafka_send / raw kcat -P, throughput" "$kcat_ratio"
