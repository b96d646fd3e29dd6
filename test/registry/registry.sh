#!/usr/bin/env bash
# Apicurio Registry, a schema registry serving the Confluent API, for
# infra-bridge's Avro test (TAP 049) only.
#
#   registry.sh fetch             build it (Maven, Quarkus) into the cache
#   registry.sh start DIR PORT    run it on 127.0.0.1:PORT, in-memory
#                                 storage (DIR holds its log and pid); the
#                                 Confluent API is at /apis/ccompat/v6
#   registry.sh stop DIR          SIGTERM, wait
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"

REGISTRY_HOME=$INFRA_CACHE/apicurio-registry-2.4.2
REGISTRY_JAR=$REGISTRY_HOME/target/registry-1.0-runner.jar

cmd=${1:-}
dir=${2:-}

fetch() {
	local app
	[ -f "$REGISTRY_JAR" ] && [ -f "$REGISTRY_HOME/pom.xml" ] && cmp -s "$here/pom.xml" "$REGISTRY_HOME/pom.xml" &&
		return 0
	say "building Apicurio Registry 2.4.2 into $REGISTRY_HOME"
	rm -rf "$REGISTRY_HOME"
	mkdir -p "$REGISTRY_HOME/src/main/resources"
	cp -r "$here/src" "$REGISTRY_HOME/"
	# The registry's own settings, as its release has them, and its classes
	# indexed for Quarkus (it is a dependency here, not the project).
	app=$(find ~/.m2/repository/io/apicurio/apicurio-registry-app/2.4.2.Final -name '*.jar' | head -n 1)
	unzip -p "$app" application.properties >"$REGISTRY_HOME/src/main/resources/application.properties"
	cat >>"$REGISTRY_HOME/src/main/resources/application.properties" <<PROPS
quarkus.index-dependency.registry.group-id=io.apicurio
quarkus.index-dependency.registry.artifact-id=apicurio-registry-app
PROPS
	cp "$here/pom.xml" "$REGISTRY_HOME/pom.xml.new"
	(cd "$REGISTRY_HOME" && mvn -B -q -Dstyle.color=never -f pom.xml.new package -DskipTests >build.log 2>&1) ||
		{ tail -n 40 "$REGISTRY_HOME/build.log" >&2; die "cannot build Apicurio Registry"; }
	mv "$REGISTRY_HOME/pom.xml.new" "$REGISTRY_HOME/pom.xml"
	chmod -R a+rX "$REGISTRY_HOME"
}

pid_of() { cat "$dir/registry.pid" 2>/dev/null || true; }

start() {
	local port=$1 i
	mkdir -p "$dir"
	nohup java -Xms64m -Xmx512m -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$port" \
		-jar "$REGISTRY_JAR" >>"$dir/registry.log" 2>&1 </dev/null &
	echo $! >"$dir/registry.pid"
	for i in $(seq 1 240); do
		kill -0 "$(pid_of)" 2>/dev/null || { tail -n 40 "$dir/registry.log" >&2; die "the registry exited"; }
		curl -sf "http://127.0.0.1:$port/apis/ccompat/v6/subjects" >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	die "the registry not started after 120 s"
}

case "$cmd" in
fetch) fetch ;;
start) start "$3" ;;
stop)
	pid=$(pid_of)
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid"
		for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
	fi
	rm -f "$dir/registry.pid"
	;;
*)
	sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
