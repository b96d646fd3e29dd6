#!/usr/bin/env bash
# A real Apache Kafka broker (KRaft, combined broker+controller) for tests.
#
#   broker.sh fetch              resolve the jars into the cache (Maven)
#   broker.sh start DIR          format DIR on first use, start, wait until ready
#   broker.sh launch DIR         start without waiting (a cluster's nodes need
#                                each other); broker.sh wait DIR waits
#   broker.sh common-config DIR  append the settings every node shares to
#                                DIR/server.properties, write its log config
#   broker.sh stop DIR           SIGTERM and wait for a clean exit
#   broker.sh kill DIR           SIGKILL (a crash); "start DIR" brings it back
#   broker.sh pause DIR          SIGSTOP (a hang)
#   broker.sh resume DIR         SIGCONT
#   broker.sh bootstrap DIR      print host:port of the broker
#   broker.sh status DIR         exit 0 when the broker answers metadata
#   broker.sh create-topic DIR NAME PARTITIONS [KEY=VALUE...]
#                                create a topic (Kafka's own TopicCommand),
#                                with topic settings
#
# DIR holds server.properties, the data, logs and pid; ports are chosen free
# at the first start and kept, so a restarted broker has the same address.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

cmd=${1:-}
dir=${2:-}

java_cmd() {
	java -Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
		-Dlog4j2.configurationFile="$dir/log4j2.properties" \
		-cp "$KAFKA_LIB/*" "$@"
}

pid_of() { cat "$dir/broker.pid" 2>/dev/null || true; }

alive() {
	local pid
	pid=$(pid_of)
	[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

answers() {
	kcat -L -b "$(cat "$dir/bootstrap")" -m 5 -q >/dev/null 2>&1
}

fetch() {
	if [ -n "$(ls "$KAFKA_LIB"/kafka_2.13-*.jar 2>/dev/null)" ]; then
		return 0
	fi
	say "fetching Kafka $KAFKA_VERSION jars into $KAFKA_LIB"
	mkdir -p "$KAFKA_LIB"
	(cd "$here" && mvn -B -q -Dstyle.color=never -Dkafka.version="$KAFKA_VERSION" \
		dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIB")
	chmod -R a+rX "$INFRA_CACHE"
}

# What every node of ours shares: few threads (a test machine has two
# cores) and a log file, appended to DIR/server.properties.
common_config() {
	cat >>"$dir/server.properties" <<PROPS
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
log.cleaner.threads=1
PROPS
	java_log_config "$dir/log4j2.properties" "$dir/server.log" \
		"logger.state.name = state.change.logger" "logger.state.level = warn"
}

configure() {
	local bport cport
	mkdir -p "$dir/data"
	bport=$(free_port)
	cport=$(free_port)
	while [ "$cport" = "$bport" ]; do cport=$(free_port); done
	echo "127.0.0.1:$bport" >"$dir/bootstrap"
	cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$bport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
	common_config
	java_cmd kafka.tools.StorageTool format --standalone \
		-t "$(java_cmd kafka.tools.StorageTool random-uuid)" \
		-c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
		{ cat "$dir/format.log" >&2; die "formatting Kafka storage failed"; }
}

launch() {
	[ -n "$(ls "$KAFKA_LIB"/kafka_2.13-*.jar 2>/dev/null)" ] ||
		die "Kafka jars missing in $KAFKA_LIB: run 'make deps'"
	if alive; then
		die "broker in $dir already runs (pid $(pid_of))"
	fi
	[ -f "$dir/server.properties" ] || configure
	: >>"$dir/server.log"
	wc -l <"$dir/server.log" >"$dir/log.mark"
	nohup java ${INFRA_KAFKA_JVM_OPTS:--Xms128m -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1} \
		-Dlog4j2.configurationFile="$dir/log4j2.properties" \
		-cp "$KAFKA_LIB/*" kafka.Kafka "$dir/server.properties" \
		>>"$dir/broker.out" 2>&1 </dev/null &
	echo $! >"$dir/broker.pid"
}

wait_ready() {
	local i mark
	mark=$(cat "$dir/log.mark")
	for i in $(seq 1 240); do
		if ! alive; then
			tail -n 30 "$dir/broker.out" "$dir/server.log" >&2
			die "Kafka broker exited during startup"
		fi
		if tail -n +"$((mark + 1))" "$dir/server.log" |
			grep -q 'Kafka Server started' && answers; then
			return 0
		fi
		sleep 0.5
	done
	die "Kafka broker in $dir not ready after 120 s"
}

wait_gone() {
	local pid=$1 i
	for i in $(seq 1 120); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.5
	done
	return 1
}

start() {
	launch
	wait_ready
}

case "$cmd" in
fetch) fetch ;;
start) start ;;
launch) launch ;;
common-config) common_config ;;
wait) wait_ready ;;
stop)
	pid=$(pid_of)
	if alive; then
		kill -CONT "$pid" 2>/dev/null || true
		kill -TERM "$pid"
		wait_gone "$pid" || { kill -KILL "$pid"; wait_gone "$pid"; }
	fi
	;;
kill)
	pid=$(pid_of)
	if alive; then
		kill -KILL "$pid"
		wait_gone "$pid"
	fi
	;;
pause) kill -STOP "$(pid_of)" ;;
resume) kill -CONT "$(pid_of)" ;;
bootstrap) cat "$dir/bootstrap" ;;
status) alive && answers ;;
create-topic)
	topic=$3 partitions=$4
	shift 4
	configs=()
	for c in "$@"; do configs+=(--config "$c"); done
	java_cmd org.apache.kafka.tools.TopicCommand --bootstrap-server "$(cat "$dir/bootstrap")" \
		--create --if-not-exists --topic "$topic" --partitions "$partitions" --replication-factor 1 \
		"${configs[@]}" >/dev/null
	;;
*)
	sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
