# Sourced by bench_debezium.sh's parts faults.sh and eos.sh: a client
# committing the outbox's transactions while the relay is killed, and the
# count of what a consumer (kcat: read_committed, librdkafka's default)
# sees against what committed.  Needs fault_batches.

psql -X -q -c 'CREATE TABLE IF NOT EXISTS fault_committed (run text, batch integer, PRIMARY KEY (run, batch))'

# fault_client RUN KIND TOPIC: the transactions, each retried until it is
# known to have committed.
fault_client() {
	local b sql
	for b in $(seq 1 "$fault_batches"); do
		if [ "$2" = infra ]; then
			sql="PERFORM infra.kafka_send('$3', ($b * 1000 + g)::text, 'k' || g % 10) FROM generate_series(1, 100) g;"
		else
			sql="INSERT INTO outbox (aggregatetype, aggregateid, type, payload) SELECT '$3', 'k' || g % 10, 'e', ($b * 1000 + g)::text FROM generate_series(1, 100) g;"
		fi
		until psql -X -q -c "DO \$\$ BEGIN
			IF NOT EXISTS (SELECT FROM fault_committed WHERE run = '$1' AND batch = $b) THEN
				INSERT INTO fault_committed VALUES ('$1', $b);
				$sql
			END IF;
		END \$\$" 2>/dev/null; do
			sleep 0.05
		done
	done
}

# committed_batches RUN
committed_batches() { psql -X -qAt -c "SELECT count(*) FROM fault_committed WHERE run = '$1'" 2>/dev/null || echo 0; }

# outbox_count RUN TOPIC LABEL [NOTE]: what reached the topic against what committed.
outbox_count() {
	local seen
	psql -X -qAt -c "SELECT batch * 1000 + g FROM fault_committed, generate_series(1, 100) g WHERE run = '$1'" |
		sort >"$work/expected_$1"
	kcat -C -b "$bootstrap" -t "$2" -o beginning -e -q -f '%h|%s\n' >"$work/seen_$1"
	cut -d'|' -f2 "$work/seen_$1" | sort >"$work/seen_ids_$1"
	seen=$(wc -l <"$work/seen_ids_$1")
	echo "fault $3 $(wc -l <"$work/expected_$1") $seen" \
		"$(comm -23 "$work/expected_$1" <(uniq "$work/seen_ids_$1") | wc -l)" \
		"$((seen - $(uniq "$work/seen_ids_$1" | wc -l)))" \
		"$(comm -13 "$work/expected_$1" <(uniq "$work/seen_ids_$1") | wc -l)" \
		"$(($(wc -l <"$work/seen_$1") - $(sort -u "$work/seen_$1" | wc -l)))" \
		"${4:-}" >>"$work/results"
}

# settle TOPIC N: waits until the topic holds N messages or stops growing for 10 s.
settle() {
	local last=-1 now still=0
	while [ "$still" -lt 100 ]; do
		now=$(end_offset "$1")
		[ "${now:-0}" -ge "$2" ] && return 0
		if [ "$now" = "$last" ]; then still=$((still + 1)); else still=0; fi
		last=$now
		sleep 0.1
	done
}

worker_pid() { psql -X -qAt -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'infra worker'"; }

# infra_fault RUN HOW [LABEL]: the outbox run with the worker killed (kill)
# or terminated (term) at 40%.
infra_fault() {
	local run=$1 t="fault_$1" i pid client killed_at back_ms others=() lost=0 note
	new_topic "$t"
	for i in 1 2 3 4; do
		psql -X -q -c 'SELECT pg_sleep(300)' >/dev/null 2>&1 &
		others+=($!)
	done
	fault_client "$run" infra "$t" &
	client=$!
	until [ "$(committed_batches "$run")" -ge $((fault_batches * 4 / 10)) ]; do sleep 0.05; done
	pid=$(worker_pid)
	killed_at=$(now_ms)
	if [ "$2" = kill ]; then
		kill -KILL "$pid"
	else
		psql -X -qAt -c "SELECT pg_terminate_backend($pid)" >/dev/null
	fi
	# Refused from when the postmaster notices until recovery ends (if at all).
	back_ms=0
	while [ $(($(now_ms) - killed_at)) -lt 3000 ]; do
		if ! psql -X -qAt -c 'SELECT 1' >/dev/null 2>&1; then
			until psql -X -qAt -c 'SELECT 1' >/dev/null 2>&1; do sleep 0.02; done
			back_ms=$(($(now_ms) - killed_at))
			break
		fi
		sleep 0.02
	done
	for i in "${others[@]}"; do
		kill -0 "$i" 2>/dev/null || lost=$((lost + 1))
	done
	wait "$client"
	until psql -X -qAt -c "SELECT infra.kafka_flush('120 s')" 2>/dev/null | grep -q t; do sleep 0.5; done
	for i in "${others[@]}"; do kill "$i" 2>/dev/null || true; done
	wait "${others[@]}" 2>/dev/null || true
	note="other sessions ended: $lost of 4; connections refused for $back_ms ms"
	outbox_count "$run" "$t" "${3:-infra_worker_$2}" "$note"
}
