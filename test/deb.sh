#!/usr/bin/env bash
# The Debian packages of infra.
#
#   deb.sh build OUTDIR   build postgresql-15-infra and infra-bridge with
#                         debhelper and pg_buildext (make deb), from a copy
#                         of the sources; lintian must report no error
#   deb.sh check OUTDIR   install the built packages into a throwaway root
#                         (next to a copy of Debian's PostgreSQL 15, which
#                         finds its files relative to itself) and use them:
#                         CREATE EXTENSION infra with the packaged library,
#                         infra-bridge --version; prints TAP-style ok lines
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
. "$here/lib.sh"

cmd=${1:-}
out=${2:-}
[ -n "$out" ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd)

version=$(sed -n '1s/^infra (\([^)]*\)).*/\1/p' "$top/debian/changelog")

build() {
	local tmp src
	tmp=$(mktemp -d)
	src=$tmp/infra-$version
	mkdir -p "$src"
	cp -r "$top/Makefile" "$top/infra.control" "$top/src" "$top/sql" "$top/bridge" \
		"$top/debian" "$top/README.md" "$top/CHANGELOG.md" "$src/"
	(cd "$src" && make -s clean >/dev/null 2>&1; rm -f bridge/infra-bridge)
	say "building the Debian packages of infra $version"
	if ! (cd "$src" && dpkg-buildpackage -us -uc -b) >"$out/build.log" 2>&1; then
		tail -n 40 "$out/build.log"
		die "dpkg-buildpackage failed (log: $out/build.log)"
	fi
	cp "$tmp"/*.deb "$tmp"/*.changes "$tmp"/*.buildinfo "$out/"
	say "lintian"
	# As root lintian says so on stderr; the tags go to stdout.
	lintian --fail-on error --tag-display-limit 0 "$out"/*.changes >"$out/lintian.log" 2>/dev/null
	local rc=$?
	cat "$out/lintian.log"
	rm -rf "$tmp"
	[ $rc = 0 ] || die "lintian reports errors"
	ls "$out"/*.deb
}

n=0
failed=0
check_ok() {
	n=$((n + 1))
	if [ "$1" = 0 ]; then
		echo "ok $n - $2"
	else
		echo "not ok $n - $2"
		failed=$((failed + 1))
	fi
}

# check: as the test user (PostgreSQL refuses root), in a throwaway root.
check() {
	local root pg=/usr/lib/postgresql/15 ext bridge_deb ext_deb port pid psql
	ext_deb=$(ls "$out"/postgresql-15-infra_*.deb 2>/dev/null | head -n 1)
	bridge_deb=$(ls "$out"/infra-bridge_*.deb 2>/dev/null | head -n 1)
	[ -n "$ext_deb" ] && [ -n "$bridge_deb" ] || die "no packages in $out: run deb.sh build first"

	root=$(new_workdir infra-deb-root)
	# Debian's PostgreSQL 15, without whatever make install added to it.
	mkdir -p "$root/usr/lib/postgresql" "$root/usr/share/postgresql"
	cp -a "$pg" "$root/usr/lib/postgresql/"
	cp -a /usr/share/postgresql/15 "$root/usr/share/postgresql/"
	rm -f "$root$pg/lib/infra.so" "$root$pg/bin/infra-bridge" \
		"$root/usr/share/postgresql/15/extension/infra"*
	rm -rf "$root$pg/lib/bitcode/infra"*
	dpkg-deb -x "$ext_deb" "$root"
	dpkg-deb -x "$bridge_deb" "$root"
	[ "$(id -u)" = 0 ] && chown -R "$INFRA_TEST_USER" "$root"

	ext=$root/usr/share/postgresql/15/extension
	test -f "$root$pg/lib/infra.so" && test -f "$ext/infra.control" &&
		test -f "$ext/infra--1.2.sql" && test -f "$ext/infra--1.1--1.2.sql" && test -f "$ext/infra--1.1.sql" && test -f "$ext/infra--1.0--1.1.sql" && test -f "$ext/infra--1.0.sql"
	check_ok $? "postgresql-15-infra installs infra.so and the 1.0, 1.1, 1.2, 1.0--1.1 and 1.1--1.2 scripts"
	! test -e "$root$pg/bin/infra-bridge" && ! test -e "$root/usr/local/bin/infra-bridge"
	check_ok $? "postgresql-15-infra carries no bridge"
	test -x "$root/usr/bin/infra-bridge" && test -f "$root/etc/infra/bridge.ini.example" &&
		grep -q '^ExecStart=/usr/bin/infra-bridge ' "$root/lib/systemd/system/infra-bridge.service" &&
		test -f "$root/usr/share/man/man1/infra-bridge.1.gz"
	check_ok $? "infra-bridge installs /usr/bin/infra-bridge, /etc/infra/bridge.ini.example, its systemd unit and man page"
	dpkg-deb -f "$ext_deb" Depends | grep -q 'postgresql-15' &&
		dpkg-deb -f "$ext_deb" Depends | grep -q 'librdkafka'
	check_ok $? "postgresql-15-infra depends on postgresql-15 and librdkafka"

	"$root/usr/bin/infra-bridge" --version >"$root/version.out" 2>&1 &&
		grep -q "^infra-bridge ${version%%-*} " "$root/version.out"
	check_ok $? "infra-bridge --version from the package: $(head -n 1 "$root/version.out")"
	"$root/usr/bin/infra-bridge" --check-config --config "$root/etc/infra/bridge.ini.example" \
		>"$root/check.out" 2>&1
	check_ok $? "the packaged example configuration passes infra-bridge --check-config"

	port=$(free_port)
	as_test_user "$root$pg/bin/initdb" -D "$root/data" -U postgres -A trust --no-sync \
		>"$root/initdb.log" 2>&1
	check_ok $? "initdb of the copied PostgreSQL 15"
	cat >>"$root/data/postgresql.conf" <<-EOF
		port = $port
		listen_addresses = ''
		unix_socket_directories = '$root'
		shared_preload_libraries = 'infra'
		infra.database = 'postgres'
	EOF
	as_test_user "$root$pg/bin/pg_ctl" -D "$root/data" -l "$root/postgres.log" -w start >/dev/null
	check_ok $? "PostgreSQL starts with the packaged infra preloaded"
	psql=("$root$pg/bin/psql" -X -q -At -h "$root" -p "$port" -U postgres -d postgres)
	as_test_user "${psql[@]}" -c 'CREATE EXTENSION infra' >"$root/create.out" 2>&1
	check_ok $? "CREATE EXTENSION infra"
	[ "$(as_test_user "${psql[@]}" -c "SELECT extversion FROM pg_extension WHERE extname = 'infra'")" = "$version" ] &&
		[ "$(as_test_user "${psql[@]}" -c 'SELECT infra.version()')" = "$version" ]
	check_ok $? "the packaged SQL and library are version $version"
	# The postmaster preloaded infra.so: the package's, under the throwaway root.
	pid=$(head -n 1 "$root/data/postmaster.pid")
	grep -q "$root$pg/lib/infra.so" "/proc/$pid/maps"
	check_ok $? "the server runs the packaged infra.so ($root$pg/lib/infra.so)"
	wait_worker() {
		local i
		for i in $(seq 1 100); do
			[ "$(as_test_user "${psql[@]}" -c "SELECT state FROM infra.worker_status")" = running ] && return 0
			sleep 0.1
		done
		return 1
	}
	wait_worker
	check_ok $? "the packaged worker serves the database"
	as_test_user "$root$pg/bin/pg_ctl" -D "$root/data" -m fast -w stop >/dev/null
	echo "1..$n"
	if [ "$failed" = 0 ]; then
		rm -rf "$root"
		echo "# All $n package checks passed."
	else
		echo "# $failed of $n package checks failed; root kept: $root"
		tail -n 20 "$root/postgres.log" 2>/dev/null
		return 1
	fi
}

case "$cmd" in
build) build ;;
check) check ;;
*)
	sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
