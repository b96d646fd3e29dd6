#!/usr/bin/env bash
# Kafka Connect with Debezium's connectors, for the Debezium comparison
# benchmark (test/bench/bench_debezium.sh) only.
#
#   connect.sh fetch                 resolve Connect and the two Debezium
#                                    connectors into the cache (Maven)
#   connect.sh start DIR WORKER CONNECTOR...
#                                    run Connect standalone with those
#                                    properties files (DIR holds its log,
#                                    pid and offsets)
#   connect.sh start-distributed DIR WORKER
#                                    run a distributed worker (its state in
#                                    Kafka topics; connectors through its
#                                    REST API): what exactly-once source
#                                    support needs
#   connect.sh stop DIR              SIGTERM, wait
#   connect.sh kill DIR              SIGKILL (a crash)
#
# Versions: Connect as the test broker's; debezium-connector-postgres
# 3.6.1.Final and debezium-connector-jdbc 3.6.0.Final (the newest served).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

CONNECT_LIB=$INFRA_CACHE/connect-$KAFKA_VERSION/lib
DEBEZIUM_PLUGINS=$INFRA_CACHE/debezium-3.6/plugins

cmd=${1:-}
dir=${2:-}

fetch() {
	local p
	if [ -n "$(ls "$CONNECT_LIB"/connect-runtime-*.jar 2>/dev/null)" ] &&
		[ -n "$(ls "$DEBEZIUM_PLUGINS"/postgres/debezium-connector-postgres-*.jar 2>/dev/null)" ] &&
		[ -n "$(ls "$DEBEZIUM_PLUGINS"/jdbc/debezium-connector-jdbc-*.jar 2>/dev/null)" ]; then
		return 0
	fi
	say "fetching Kafka Connect $KAFKA_VERSION and Debezium 3.6 into $INFRA_CACHE"
	mkdir -p "$CONNECT_LIB" "$DEBEZIUM_PLUGINS/postgres" "$DEBEZIUM_PLUGINS/jdbc"
	(cd "$here" && mvn -B -q -Dstyle.color=never -Dkafka.version="$KAFKA_VERSION" -f connect.pom.xml \
		dependency:copy-dependencies -DoutputDirectory="$CONNECT_LIB")
	for p in postgres jdbc; do
		(cd "$here" && mvn -B -q -Dstyle.color=never -f "$p.pom.xml" \
			dependency:copy-dependencies -DoutputDirectory="$DEBEZIUM_PLUGINS/$p")
	done
	# The sink's Jackson clashes with Connect's ("BlackbirdModule not a subtype").
	rm -f "$DEBEZIUM_PLUGINS"/jdbc/jackson-*.jar
	chmod -R a+rX "$INFRA_CACHE"
}

pid_of() { cat "$dir/connect.pid" 2>/dev/null || true; }

# start CLASS start DIR WORKER [CONNECTOR...]
start() {
	local class=$1 worker=$4 i
	shift 4
	mkdir -p "$dir"
	# "Kafka Connect started" is how start() knows it is up.
	java_log_config "$dir/log4j2.properties" "$dir/connect.log" \
		"logger.connect.name = org.apache.kafka.connect.runtime.Connect" "logger.connect.level = info"
	nohup java -Xms256m -Xmx1g -Dlog4j2.configurationFile="$dir/log4j2.properties" \
		-cp "$CONNECT_LIB/*" "org.apache.kafka.connect.cli.$class" "$worker" "$@" \
		>>"$dir/connect.out" 2>&1 </dev/null &
	echo $! >"$dir/connect.pid"
	for i in $(seq 1 240); do
		kill -0 "$(pid_of)" 2>/dev/null || { tail -n 40 "$dir/connect.out" "$dir/connect.log" >&2; die "Kafka Connect exited"; }
		grep -q 'Kafka Connect started' "$dir/connect.log" 2>/dev/null && return 0
		sleep 0.5
	done
	die "Kafka Connect not started after 120 s"
}

case "$cmd" in
fetch) fetch ;;
start) start ConnectStandalone "$@" ;;
start-distributed) start ConnectDistributed "$@" ;;
stop | kill)
	pid=$(pid_of)
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		if [ "$cmd" = kill ]; then kill -KILL "$pid"; else kill -TERM "$pid"; fi
		for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
	fi
	rm -f "$dir/connect.pid"
	;;
*)
	sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
