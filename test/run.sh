#!/usr/bin/env bash
# Run every test of infra: pg_regress (sql/ + expected/), isolation specs
# (test/specs/ + test/expected/) and TAP (test/t/), against a throwaway
# PostgreSQL cluster with infra preloaded and a real Kafka broker, both
# started here and stopped at the end.  Exits non-zero on any failure and
# ends with each runner's summary.
#
# As root (CI), the tests run as the unprivileged user $INFRA_TEST_USER in a
# copy of the test files under /tmp.  INFRA_KEEP=1 keeps the work directory.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

if [ "${1:-}" != --inner ]; then
	top=$(cd "$here/.." && pwd)
	work=$(new_workdir infra-test)
	mkdir -p "$work/src"
	cp -r "$top/src" "$top/sql" "$top/expected" "$top/test" "$top/bridge" "$top/README.md" "$work/src/"
	# The doc test runs the docs' examples; TAP 055 checks monitoring/.
	[ ! -d "$top/docs" ] || cp -r "$top/docs" "$work/src/"
	[ ! -d "$top/monitoring" ] || cp -r "$top/monitoring" "$work/src/"
	# TAP 071 builds the previous release's library from its sources.
	if ! git -C "$top" rev-parse --git-dir >/dev/null 2>&1; then
		echo "not a git checkout: the previous release's sources are not at hand" >"$work/src/infra-previous.why"
	elif ! git -C "$top" cat-file -e "$INFRA_PREVIOUS_RELEASE^{commit}" 2>/dev/null &&
		[ "$(git -C "$top" rev-parse --is-shallow-repository)" = true ]; then
		echo "a shallow clone: the previous release's commit is not in it" >"$work/src/infra-previous.why"
	elif ! git -C "$top" archive --format=tar --prefix=infra-previous/ "$INFRA_PREVIOUS_RELEASE" \
		Makefile infra.control src sql test/pg-config.sh test/lib.sh >"$work/src/infra-previous.tar"; then
		rm -f "$work/src/infra-previous.tar"
		echo "git archive of $INFRA_PREVIOUS_RELEASE failed" >"$work/src/infra-previous.why"
	fi
	if [ "$(id -u)" = 0 ]; then
		chown -R "$INFRA_TEST_USER" "$work"
	fi
	as_test_user \
		bash "$work/src/test/run.sh" --inner "$work"
	rc=$?
	if [ $rc = 0 ] && [ -z "${INFRA_KEEP:-}" ]; then
		rm -rf "$work"
	else
		echo "work directory kept: $work"
	fi
	exit $rc
fi

work=$2
src=$work/src
summary=$work/summary
: >"$summary"
passed=0
failed=0

teardown() {
	"$src/test/pgcluster.sh" stop "$work/pg" >/dev/null 2>&1
	"$src/test/kafka/broker.sh" stop "$work/kafka" >/dev/null 2>&1
}
trap teardown EXIT

# count_results FILE PASS_REGEX FAIL_REGEX: add a runner's per-test results.
count_results() {
	local p f
	p=$(grep -cE "$2" "$1")
	f=$(grep -cE "$3" "$1")
	passed=$((passed + p))
	failed=$((failed + f))
}

say "starting a Kafka $KAFKA_VERSION broker"
"$src/test/kafka/broker.sh" start "$work/kafka" || exit 1
export INFRA_KAFKA_DIR=$work/kafka
INFRA_KAFKA_BOOTSTRAP=$("$src/test/kafka/broker.sh" bootstrap "$work/kafka")
export INFRA_KAFKA_BOOTSTRAP
say "Kafka broker at $INFRA_KAFKA_BOOTSTRAP"

say "starting PostgreSQL with infra preloaded"
"$src/test/pgcluster.sh" start "$work/pg" \
	"infra.database=postgres,infra_isolation" || exit 1
port=$("$src/test/pgcluster.sh" port "$work/pg")
export PGHOST=$work/pg/sock PGPORT=$port PGUSER=postgres
"$PG_BINDIR/createdb" contrib_regression || exit 1
"$PG_BINDIR/createdb" infra_isolation || exit 1

# run_regress LABEL PROGRAM INPUTDIR DBNAME TEST...: one pg_regress-style
# runner against the harness cluster; its diffs are shown on failure.
run_regress() {
	local label=$1 program=$2 inputdir=$3 dbname=$4 rc
	shift 4
	say "$label"
	"$program" --inputdir="$inputdir" --outputdir="$work/$label" \
		--bindir="$PG_BINDIR" --use-existing --dbname="$dbname" "$@" 2>&1 |
		tee "$work/$label.out"
	rc=${PIPESTATUS[0]}
	[ -f "$work/$label/regression.diffs" ] && cat "$work/$label/regression.diffs"
	# "test ... ok" up to PostgreSQL 15, TAP-style "ok 1 - test" from 16.
	count_results "$work/$label.out" '\.\.\. ok|^ok [0-9]' '\.\.\. (FAILED|failed)|^not ok [0-9]'
	grep -E 'tests? (passed|failed)|failed \(ignored\)' "$work/$label.out" |
		sed "s/^ *//; s/^/$label: /" >>"$summary"
	return "$rc"
}

# shellcheck disable=SC2046
run_regress pg_regress "$PG_PGXS_DIR/test/regress/pg_regress" "$src" \
	contrib_regression $(cd "$src/sql" && ls *.sql | grep -v -- -- | sed 's/\.sql$//' | sort)
regress_rc=$?

# shellcheck disable=SC2046
run_regress isolation "$PG_PGXS_DIR/test/isolation/pg_isolation_regress" \
	"$src/test" infra_isolation $(cd "$src/test/specs" && ls *.spec | sed 's/\.spec$//' | sort)
iso_rc=$?

say "TAP"
mkdir -p "$work/tap"
(
	cd "$src" &&
		TESTDIR=$work/tap PATH="$PG_BINDIR:$PATH" \
			PG_REGRESS="$PG_PGXS_DIR/test/regress/pg_regress" \
			INFRA_SRC=$src INFRA_PYTHON=$INFRA_PYTHON PGHOST= PGPORT= PGUSER= \
			prove -I "$PG_TAP_PERL" -I "$src/test/perl" \
			--timer ${PROVE_FLAGS:-} ${INFRA_TAP:-test/t/*.pl}
) 2>&1 | tee "$work/tap.out"
tap_rc=${PIPESTATUS[0]}
# TAP counts assertions: prove's total, less failed ones; a script that died
# without a plan counts as one more failure.
tap_total=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' "$work/tap.out")
tap_failed=$(grep -oE 'Tests: [0-9]+ Failed: [0-9]+' "$work/tap.out" |
	awk '{ n += $4 } END { print n + 0 }')
tap_failed=$((tap_failed + $(grep -c 'No plan found in TAP output' "$work/tap.out")))
passed=$((passed + ${tap_total:-0} - tap_failed))
failed=$((failed + tap_failed))
grep -E '^(All tests successful|Files=|Result:|Failed )' "$work/tap.out" |
	sed 's/^/prove: /' >>"$summary"
# Name what failed in the summary too: CI shows only the end of the output.
grep -E '^test/t/.*Wstat|^ +(Failed tests?|Parse errors):|^# +(Failed test|at |  +got:|  +expected:|Looks like)' \
	"$work/tap.out" | sed 's/^/prove: /' >>"$summary"
if [ "$tap_rc" != 0 ]; then
	for f in "$work"/tap/tmp_check/log/*.log; do
		[ -f "$f" ] || continue
		echo "---- $f (last 40 lines)"
		tail -n 40 "$f"
	done
fi

teardown
trap - EXIT

echo
say "summary"
cat "$summary"
echo "tests: $passed passed, $failed failed"
[ "$regress_rc" = 0 ] && [ "$iso_rc" = 0 ] && [ "$tap_rc" = 0 ] && [ "$failed" = 0 ]
