#!/usr/bin/env bash
# Set-based publishing (issue 26, item 3), paired and interleaved on one
# server with production durability (fsync, synchronous_commit); no broker,
# so only the commit side is measured (delivery is another process's work):
#  1. a 100,000-row UPDATE, one transaction, of a table without publishing,
#     of one with the row trigger kafka_publish(), and of one with the
#     statement trigger kafka_publish_statement() over transition tables;
#  2. 100,000 messages of 100 bytes committed in one statement: as
#     100,000 kafka_send calls, as one kafka_send_many call, and as an
#     INSERT of the same (topic, key, value) rows into an unindexed table.
# The publishing variants run with each outbox: the table outbox (rows,
# per-key locks) and, suffixed _wal, the WAL outbox (infra.kafka_outbox =
# wal, switched by reload before the statement).
# Each round runs every variant once in an order rotated per round; between
# statements (untimed) the outbox is emptied, the slot advanced and the
# tables vacuumed.
# Prints each variant's median time over BENCH_ROUNDS (default 5) rounds
# and its ratio to the baseline of the same round (median and range).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
. "$here/lib.sh"

rounds=${BENCH_ROUNDS:-5}
rows=${BENCH_ROWS:-100000}
# Each distinct (topic, key) of a transaction holds an advisory lock until
# commit (per-key order): 100,000 keys need a lock table that large.
bench_start_pg "autovacuum=off" "max_locks_per_transaction=2048" "${bench_logical_settings[@]}"
psql -X -q <<SQL
CREATE EXTENSION infra;
CREATE TABLE plain_t (id int PRIMARY KEY, name text NOT NULL, amount numeric NOT NULL);
CREATE TABLE row_t (LIKE plain_t INCLUDING ALL);
CREATE TABLE stmt_t (LIKE plain_t INCLUDING ALL);
INSERT INTO plain_t SELECT g, 'customer ' || g, g FROM generate_series(1, $rows) g;
INSERT INTO row_t SELECT * FROM plain_t;
INSERT INTO stmt_t SELECT * FROM plain_t;
CREATE TRIGGER row_t_publish AFTER UPDATE ON row_t
    FOR EACH ROW EXECUTE FUNCTION infra.kafka_publish('bench.rows');
CREATE TRIGGER stmt_t_publish AFTER UPDATE ON stmt_t
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION infra.kafka_publish_statement('bench.rows');
CREATE TABLE relay (topic text, key text, value text);
VACUUM ANALYZE;
SQL

payload="repeat('x', 92) || lpad(g::text, 8, '0')"   # 100 bytes
declare -A sql=(
	[update_plain]="UPDATE plain_t SET amount = amount + 1"
	[update_row_trigger]="UPDATE row_t SET amount = amount + 1"
	[update_statement_trigger]="UPDATE stmt_t SET amount = amount + 1"
	[send_calls]="SELECT count(infra.kafka_send('bench.send', $payload, 'k' || g)) FROM generate_series(1, $rows) g"
	[send_many]="SELECT infra.kafka_send_many('bench.send', array_agg($payload), array_agg('k' || g)) FROM generate_series(1, $rows) g"
	[insert_rows]="INSERT INTO relay SELECT 'bench.send', 'k' || g, $payload FROM generate_series(1, $rows) g"
)
for v in update_row_trigger update_statement_trigger send_calls send_many; do
	sql[${v}_wal]=${sql[$v]}
done
variants=(update_plain update_row_trigger update_statement_trigger send_calls send_many insert_rows
	update_row_trigger_wal update_statement_trigger_wal send_calls_wal send_many_wal)

# ms of one statement, committed (psql's \timing around an autocommit).
timed() {
	psql -X -q -At -c '\timing on' -c "$1" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}

reset_state() {
	psql -X -q -c 'TRUNCATE infra.kafka_outbox_batches, relay' \
		-c "SELECT count(pg_replication_slot_advance(slot_name, pg_current_wal_lsn())) FROM pg_replication_slots" \
		-c 'VACUUM plain_t, row_t, stmt_t, relay, infra.kafka_outbox_batches' -c 'CHECKPOINT' >/dev/null
}

declare -A times
for r in $(seq 1 "$rounds"); do
	n=${#variants[@]}
	for k in $(seq 0 $((n - 1))); do
		v=${variants[$(((k + r) % n))]}
		case $v in *_wal) bench_set_outbox wal ;; *) bench_set_outbox table ;; esac
		reset_state
		t=$(timed "${sql[$v]}")
		times[$v]="${times[$v]:-} $t"
	done
	printf 'round %d:' "$r"
	for v in "${variants[@]}"; do printf ' %s %s ms;' "$v" "$(echo "${times[$v]}" | awk '{ print $NF }')"; done
	echo
done

# median / range of variant A's time over baseline B's, pairing rounds.
ratio() {
	paste <(echo "${times[$1]}" | tr ' ' '\n' | sed '/^$/d') <(echo "${times[$2]}" | tr ' ' '\n' | sed '/^$/d') |
		awk '{ print $1 / $2 }' | sort -n | awk -v a="$1" -v b="$2" '
		{ r[NR] = $1 }
		END {
			m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
			printf "%s / %s: median %.2f x, range %.2f-%.2f x over %d rounds\n", a, b, m, r[1], r[NR], NR
		}'
}
median() {
	echo "${times[$1]}" | tr ' ' '\n' | sed '/^$/d' | sort -n | awk -v v="$1" '
		{ t[NR] = $1 } END { m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2; printf "%s: median %.0f ms\n", v, m }'
}
echo "-- $rows rows or messages, medians over $rounds rounds"
for v in "${variants[@]}"; do median "$v"; done
ratio update_row_trigger update_plain
ratio update_statement_trigger update_plain
ratio update_statement_trigger update_row_trigger
ratio send_many send_calls
ratio send_calls insert_rows
ratio send_many insert_rows
ratio update_row_trigger_wal update_plain
ratio update_statement_trigger_wal update_plain
ratio send_many_wal send_calls_wal
ratio send_calls_wal insert_rows
ratio send_many_wal insert_rows
