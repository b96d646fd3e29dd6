#!/usr/bin/env bash
# matrix.sh MAJOR...: the whole suite (test/run.sh) once per PostgreSQL
# version, then (when 15 is among them) the Debian packages (test/deb.sh).  Each version's extension and bridge are built and installed
# from a copy of the sources in a directory of their own, so the work tree
# keeps its own build.  Prints every version's summary, then one line
# counting them all; exits non-zero when any version failed.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
. "$here/lib.sh"

[ $# -gt 0 ] || set -- $PG_VERSIONS
make -s -C "$top" test/mock/mock_cluster || exit 1

results=$(mktemp -d)
status=0
passed=0
failed=0
counts=""
for v in "$@"; do
	pgc=$(pg_config_of "$v") || exit 2
	[ -x "$pgc" ] || die "PostgreSQL $v is not installed ($pgc); run 'make deps'"
	build=$results/build-$v
	mkdir -p "$build"
	cp -r "$top/Makefile" "$top/infra.control" "$top/src" "$top/sql" "$top/bridge" "$build/"
	mkdir -p "$build/test" && cp "$top/test/pg-config.sh" "$top/test/lib.sh" "$build/test/"
	say "PostgreSQL $v: building and installing infra ($pgc)"
	started=$(date +%s)
	if ! { make -s -C "$build" clean >/dev/null &&
		make -s -C "$build" PG_CONFIG="$pgc" all &&
		make -s -C "$build" PG_CONFIG="$pgc" install >/dev/null; }; then
		echo "PostgreSQL $v: build failed" >>"$results/summary"
		status=1
		failed=$((failed + 1))
		counts="$counts; PostgreSQL $v: build failed"
		continue
	fi
	PG_CONFIG=$pgc "$here/run.sh" 2>&1 | tee "$results/run-$v.out"
	rc=${PIPESTATUS[0]}
	[ "$rc" = 0 ] || status=1
	secs=$(($(date +%s) - started))
	line=$(grep -E '^tests: [0-9]+ passed, [0-9]+ failed' "$results/run-$v.out" | tail -n 1)
	p=$(echo "$line" | sed -n 's/^tests: \([0-9]*\) passed.*/\1/p')
	f=$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
	if [ -z "$p" ]; then
		p=0 f=1
		status=1
	fi
	passed=$((passed + p))
	failed=$((failed + f))
	counts="$counts; PostgreSQL $v: $p passed, $f failed in ${secs}s"
	{
		echo "-- PostgreSQL $v ($("$pgc" --version), ${secs}s)"
		sed -n '/^== summary$/,$p' "$results/run-$v.out" | sed '1d; /^tests: /d'
	} >>"$results/summary"
done

# The Debian packages (for Debian's PostgreSQL 15): built, lintian-clean,
# installed into a throwaway root and used.
case " $* " in
*" 15 "*)
	say "Debian packages"
	started=$(date +%s)
	{ "$here/deb.sh" build "$results/deb" && "$here/deb.sh" check "$results/deb"; } 2>&1 |
		tee "$results/deb.out"
	rc=${PIPESTATUS[0]}
	p=$(grep -c '^ok [0-9]' "$results/deb.out")
	f=$(grep -c '^not ok [0-9]' "$results/deb.out")
	if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
		f=1
	fi
	[ "$rc" = 0 ] || status=1
	secs=$(($(date +%s) - started))
	passed=$((passed + p))
	failed=$((failed + f))
	counts="$counts; Debian packages: $p passed, $f failed in ${secs}s"
	{
		echo "-- Debian packages (${secs}s)"
		grep -E '^(W|E): |^# ' "$results/deb.out" | sed 's/^/deb: /'
	} >>"$results/summary"
	;;
esac

echo
say "summary, every PostgreSQL version"
cat "$results/summary"
echo "tests: $passed passed, $failed failed (${counts#; })"
rm -rf "$results"
exit $status
