# Shared settings of infra's test harness, sourced by the scripts in test/.

# PostgreSQL server binaries (pg_ctl, initdb, pg_regress) of the build target.
PG_CONFIG=${PG_CONFIG:-pg_config}
PG_BINDIR=$("$PG_CONFIG" --bindir)
PG_PGXS_DIR=$(dirname "$("$PG_CONFIG" --pgxs)")/..

# Kafka release used by the tests; its jars are cached outside git.
KAFKA_VERSION=${KAFKA_VERSION:-4.3.1}
if [ -z "${INFRA_CACHE:-}" ]; then
	if [ "$(id -u)" = 0 ]; then
		INFRA_CACHE=/var/cache/infra
	else
		INFRA_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/infra
	fi
fi
KAFKA_LIB=$INFRA_CACHE/kafka-$KAFKA_VERSION/lib

# Python of the test-only tools (test/deps.sh installs them).
OTEL_PROTO_VERSION=1.45.2
INFRA_PYTHON=$INFRA_CACHE/python/bin/python3

# PostgreSQL refuses to run as root: the harness runs as this user instead.
INFRA_TEST_USER=${INFRA_TEST_USER:-infratest}

say() { printf '== %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# A TCP port nobody listens on at the moment, on 127.0.0.1.
free_port() {
	perl -MIO::Socket::INET -e \
		'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, ReuseAddr => 1)->sockport, "\n"'
}

# Run "$@" as the unprivileged test user when we are root, else as ourselves.
as_test_user() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u "$INFRA_TEST_USER" -- "$@"
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
