#!/usr/bin/env bash
# A real three-node Apache Kafka cluster (KRaft; each node broker and
# controller, static quorum) as production runs it: topics replicated three
# times with min.insync.replicas = 2.  Each node is a broker.sh directory.
#
#   cluster.sh start DIR             configure DIR/1..3 on first use, start
#                                    all three, wait until each answers
#   cluster.sh stop DIR              stop them
#   cluster.sh kill DIR              SIGKILL them (a test's teardown)
#   cluster.sh bootstrap DIR         print the three host:port, comma-separated
#   cluster.sh node DIR ID           print node ID's broker.sh directory
#   cluster.sh create-topic DIR NAME PARTITIONS
#                                    replication factor 3, min.insync.replicas 2
#   cluster.sh leaders DIR TOPIC     print "partition leader-id" lines
#   cluster.sh controller DIR        print the active controller's node id
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

cmd=${1:-}
dir=${2:-}
nodes="1 2 3"

java_cmd() {
	java -Xms64m -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -cp "$KAFKA_LIB/*" "$@"
}

configure() {
	local id cluster_id voters="" p
	declare -A bport cport
	for id in $nodes; do
		bport[$id]=$(free_port)
		cport[$id]=$(free_port)
		voters="${voters:+$voters,}$id@127.0.0.1:${cport[$id]}"
	done
	cluster_id=$(java_cmd kafka.tools.StorageTool random-uuid)
	for id in $nodes; do
		p=$dir/$id
		mkdir -p "$p/data"
		echo "127.0.0.1:${bport[$id]}" >"$p/bootstrap"
		cat >"$p/server.properties" <<PROPS
process.roles=broker,controller
node.id=$id
controller.quorum.voters=$voters
listeners=PLAINTEXT://127.0.0.1:${bport[$id]},CONTROLLER://127.0.0.1:${cport[$id]}
advertised.listeners=PLAINTEXT://127.0.0.1:${bport[$id]}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$p/data
num.partitions=3
default.replication.factor=3
min.insync.replicas=2
auto.create.topics.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
unclean.leader.election.enable=false
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
PROPS
		"$here/broker.sh" common-config "$p"
		java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$p/server.properties" \
			>"$p/format.log" 2>&1 ||
			{ cat "$p/format.log" >&2; die "formatting Kafka node $id failed"; }
	done
}

bootstrap() {
	local id out=""
	for id in $nodes; do
		out="${out:+$out,}$(cat "$dir/$id/bootstrap")"
	done
	echo "$out"
}

case "$cmd" in
start)
	[ -f "$dir/1/server.properties" ] || configure
	for id in $nodes; do
		"$here/broker.sh" launch "$dir/$id"
	done
	for id in $nodes; do
		"$here/broker.sh" wait "$dir/$id"
	done
	;;
stop | kill)
	for id in $nodes; do
		"$here/broker.sh" "$cmd" "$dir/$id"
	done
	;;
bootstrap) bootstrap ;;
node) echo "$dir/$3" ;;
create-topic)
	java_cmd org.apache.kafka.tools.TopicCommand --bootstrap-server "$(bootstrap)" \
		--create --if-not-exists --topic "$3" --partitions "$4" --replication-factor 3 \
		--config min.insync.replicas=2 >/dev/null
	;;
leaders)
	# kcat -L: "  partition 0, leader 2, replicas: ..."
	kcat -L -b "$(bootstrap)" -t "$3" -q 2>/dev/null |
		sed -n 's/^ *partition \([0-9]*\), leader \([0-9-]*\),.*/\1 \2/p'
	;;
controller)
	java_cmd org.apache.kafka.tools.MetadataQuorumCommand --bootstrap-server "$(bootstrap)" \
		describe --status 2>/dev/null | sed -n 's/^LeaderId: *\([0-9]*\).*/\1/p'
	;;
*)
	sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
