#!/usr/bin/env bash
# make run / make stop: a sandbox with PostgreSQL (infra preloaded, extension
# created in database postgres) and a real Kafka broker, left running for you
# to try things; "stop" shuts both down.  State lives in $INFRA_SANDBOX
# (default /tmp/infra-sandbox) and survives a stop/start.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

box=${INFRA_SANDBOX:-/tmp/infra-sandbox}

case "${1:-}" in
start)
	ensure_test_user
	mkdir -p "$box"
	[ "$(id -u)" = 0 ] && chown "$INFRA_TEST_USER" "$box"
	if ! as_test_user "$here/kafka/broker.sh" status "$box/kafka" 2>/dev/null; then
		say "starting Kafka $KAFKA_VERSION"
		as_test_user env INFRA_CACHE="$INFRA_CACHE" "$here/kafka/broker.sh" start "$box/kafka"
	fi
	if [ ! -f "$box/pg/data/postmaster.pid" ]; then
		say "starting PostgreSQL with infra preloaded"
		as_test_user "$here/pgcluster.sh" start "$box/pg" "infra.database=postgres"
	fi
	port=$(as_test_user "$here/pgcluster.sh" port "$box/pg")
	bootstrap=$(cat "$box/kafka/bootstrap")
	"$PG_BINDIR/psql" -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres \
		-c 'CREATE EXTENSION IF NOT EXISTS infra' 2>&1 | grep -v 'already exists' || true
	cat <<MSG

infra sandbox is running.

  PostgreSQL:  psql -h 127.0.0.1 -p $port -U postgres postgres
               then: SELECT infra.version(); SELECT * FROM infra.worker_status;
  Kafka:       kcat -b $bootstrap -L
  Logs:        $box/pg/postgres.log, $box/kafka/server.log
  Stop:        make stop
MSG
	;;
stop)
	if [ -d "$box" ]; then
		as_test_user "$here/pgcluster.sh" stop "$box/pg" || true
		as_test_user "$here/kafka/broker.sh" stop "$box/kafka" || true
		say "sandbox stopped (state kept in $box)"
	fi
	;;
*)
	echo "usage: $0 start|stop" >&2
	exit 2
	;;
esac
