#!/usr/bin/env bash
# Install every system package and test tool infra needs.  Idempotent, and
# quick when everything is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

# Build: PGXS and the libraries the extension and the bridge link against.
# Test: kcat, promtool (prometheus), Perl's IPC::Run for TAP, redis (the
# rate-limit benchmark's baseline), Java + Maven for
# the Kafka broker, Python for test-only tools.
packages=(
	build-essential
	postgresql-15 postgresql-client-15 postgresql-server-dev-15 postgresql-contrib
	libpq-dev librdkafka-dev libcurl4-openssl-dev libmicrohttpd-dev libinih-dev
	kcat prometheus libipc-run-perl perl redis-server redis-tools
	openjdk-17-jre-headless maven
	python3
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
