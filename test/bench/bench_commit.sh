#!/usr/bin/env bash
# The commit side of kafka_send against the physical floor (issue 26, item
# 1), paired and interleaved on one server with production durability
# (fsync, synchronous_commit) and wal_level = logical; no broker, so only
# the sending transactions are measured.  100,000 messages of 100 bytes in
# 100 transactions of 1,000 (one psql session each), four ways:
#   send_table  kafka_send with infra.kafka_outbox = table (rows of arrays)
#   send_wal    kafka_send with infra.kafka_outbox = wal (logical messages)
#   insert      INSERT of the same (topic, key, value) rows into an
#               unindexed logged table
#   emit        pg_logical_emit_message(true, ...) of the same bytes, one
#               per message: the WAL record alone
# Each round runs the four in an order rotated per round; between runs
# (untimed) the outbox and the table are emptied, the slot advanced, and a
# checkpoint taken.  Per variant: wall time of the session and its
# backend's CPU time (utime + stime from /proc, in clock ticks), medians
# over BENCH_ROUNDS (default 7); ratios pair the runs of one round.  This
# machine's VM exposes no hardware counters: where perf can count
# instructions the backend's count per message is printed too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

rounds=${BENCH_ROUNDS:-7}
messages=${BENCH_MESSAGES:-100000}
per_txn=1000
bench_start_pg "autovacuum=off" "wal_level=logical" "max_replication_slots=4" \
	"output_plugin_libraries=pgoutput, test_decoding, infra" "infra.kafka_outbox=wal"
psql -X -q -c 'CREATE EXTENSION infra' -c 'CREATE TABLE plain (topic text, key text, value text)'
slot=$(psql -X -qAt -c "SELECT 'infra_kafka_' || oid FROM pg_database WHERE datname = current_database()")
for _ in $(seq 1 100); do
	[ "$(psql -X -qAt -c "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$slot' AND confirmed_flush_lsn IS NOT NULL")" = 1 ] && break
	sleep 0.1
done

payload="repeat('x', 92) || lpad(g::text, 8, '0')"   # 100 bytes, unique
declare -A body=(
	[send_table]="SELECT count(infra.kafka_send('bench_commit', $payload, 'k' || (g % 100))) FROM generate_series(LO, HI) g;"
	[send_wal]="SELECT count(infra.kafka_send('bench_commit', $payload, 'k' || (g % 100))) FROM generate_series(LO, HI) g;"
	[insert]="INSERT INTO plain SELECT 'bench_commit', 'k' || (g % 100), $payload FROM generate_series(LO, HI) g;"
	[emit]="SELECT count(pg_logical_emit_message(true, 'bench', 'bench_commit' || 'k' || (g % 100) || $payload)) FROM generate_series(LO, HI) g;"
)
variants=(send_table send_wal insert emit)
cpu="SELECT 'cpu', a[12]::bigint + a[13]::bigint FROM (SELECT string_to_array(split_part(pg_catalog.pg_read_file('/proc/self/stat'), ') ', 2), ' ') a) s;"
tick_ms=$(awk -v t="$(getconf CLK_TCK)" 'BEGIN { print 1000 / t }')
for v in "${variants[@]}"; do
	{
		echo "SELECT 'mode', current_setting('infra.kafka_outbox');"
		echo "$cpu"
		for b in $(seq 0 $((messages / per_txn - 1))); do
			echo "${body[$v]}" | sed "s/LO/$((b * per_txn + 1))/; s/HI/$(((b + 1) * per_txn))/"
		done
		echo "$cpu"
	} >"$work/$v.sql"
done

set_mode() {
	psql -X -q -c "ALTER SYSTEM SET infra.kafka_outbox = '$1'" -c 'SELECT pg_reload_conf()' >/dev/null
	for _ in $(seq 1 50); do
		[ "$(psql -X -qAt -c 'SHOW infra.kafka_outbox')" = "$1" ] && return
		sleep 0.05
	done
}

reset_state() {
	psql -X -q -c 'TRUNCATE infra.kafka_outbox_batches, plain' \
		-c "SELECT FROM pg_replication_slot_advance('$slot', pg_current_wal_lsn())" \
		-c 'VACUUM plain, infra.kafka_outbox_batches' -c 'CHECKPOINT' >/dev/null
}

instructions_supported=no
perf stat -e instructions -x, true 2>&1 | grep -q '^[0-9]' && instructions_supported=yes

declare -A wall cpu_ms
for r in $(seq 1 "$rounds"); do
	n=${#variants[@]}
	for k in $(seq 0 $((n - 1))); do
		v=${variants[$(((k + r) % n))]}
		case $v in send_table) set_mode table ;; *) set_mode wal ;; esac
		reset_state
		start=$(now_ms)
		out=$(psql -X -qAt -F ' ' -f "$work/$v.sql")
		elapsed=$(($(now_ms) - start))
		mode=$(echo "$out" | awk '$1 == "mode" { print $2 }')
		[ "$v" != send_table ] || [ "$mode" = table ] || die "send_table ran with infra.kafka_outbox = $mode"
		[ "$v" != send_wal ] || [ "$mode" = wal ] || die "send_wal ran with infra.kafka_outbox = $mode"
		if [ "$v" = send_wal ]; then
			# What send_wal sent is in the WAL outbox: the plugin decodes one logical message a transaction.
			decoded=$(psql -X -qAt -c "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('$slot', NULL, NULL)")
			[ "$decoded" = $((messages / per_txn)) ] || die "the slot decodes $decoded logical messages, not $((messages / per_txn))"
		fi
		ticks=$(echo "$out" | awk '$1 == "cpu" { c[++n] = $2 } END { print c[2] - c[1] }')
		wall[$v]="${wall[$v]:-} $elapsed"
		cpu_ms[$v]="${cpu_ms[$v]:-} $(awk -v t="$ticks" -v m="$tick_ms" 'BEGIN { print t * m }')"
	done
	printf 'round %d:' "$r"
	for v in "${variants[@]}"; do printf ' %s %s ms;' "$v" "$(echo "${wall[$v]}" | awk '{ print $NF }')"; done
	echo
done

med() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{ t[NR] = $1 } END { print (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2 }'; }
# median / range of A over B, pairing rounds, from array $3 (wall or cpu_ms).
ratio() {
	local -n arr=$3
	paste <(echo "${arr[$1]}" | tr ' ' '\n' | sed '/^$/d') <(echo "${arr[$2]}" | tr ' ' '\n' | sed '/^$/d') |
		awk '$2 > 0 { print $1 / $2 }' | sort -n | awk '
		{ r[NR] = $1 }
		END {
			m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
			printf "%.2f %.2f %.2f\n", m, r[1], r[NR]
		}'
}
echo "-- $messages messages of 100 bytes in transactions of $per_txn, medians over $rounds rounds"
for v in "${variants[@]}"; do
	w=$(echo "${wall[$v]}" | med)
	c=$(echo "${cpu_ms[$v]}" | med)
	printf '%-11s wall %6.0f ms (%5.2f us/msg)   backend CPU %6.0f ms (%5.2f us/msg)\n' "$v" "$w" \
		"$(awk -v w="$w" -v n="$messages" 'BEGIN { print w * 1000 / n }')" "$c" \
		"$(awk -v c="$c" -v n="$messages" 'BEGIN { print c * 1000 / n }')"
done
[ $instructions_supported = yes ] || echo "(instructions: this machine exposes no hardware counters to perf)"
check() {
	local a=$1 b=$2 limit=$3 kind=$4 m lo hi
	read -r m lo hi < <(ratio "$a" "$b" "$kind")
	printf '%-28s %-4s median %.2f x, range %.2f-%.2f x (target <= %s: %s)\n' "$a / $b" "$kind" "$m" "$lo" "$hi" \
		"$limit" "$(awk -v m="$m" -v l="$limit" 'BEGIN { print (m <= l ? "meets" : "ABOVE") }')"
}
check send_wal insert 0.8 wall
check send_wal emit 1.3 wall
check send_table insert 0.8 wall
check send_table emit 1.3 wall
# CPU in clock ticks is coarse (10 ms against runs of ~100 ms): shown, not judged.
for pair in "send_wal insert" "send_wal emit" "send_table insert"; do
	read -r m lo hi < <(ratio ${pair% *} ${pair#* } cpu_ms)
	printf '%-28s cpu  median %.2f x, range %.2f-%.2f x\n' "${pair% *} / ${pair#* }" "$m" "$lo" "$hi"
done
echo "(each send_wal run checked: the slot decodes $((messages / per_txn)) logical messages of $per_txn)"
