#!/usr/bin/env bash
# A throwaway PostgreSQL cluster with infra preloaded.
#
#   pgcluster.sh start DIR [SETTING=VALUE ...]   initdb on first use, start
#   pgcluster.sh stop DIR                        fast shutdown
#   pgcluster.sh port DIR                        print the port
#
# Must run as a non-root user (PostgreSQL refuses root).  The superuser is
# "postgres"; connections go through the socket in DIR/sock or 127.0.0.1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

cmd=${1:-}
dir=${2:-}
shift 2 || true

[ "$(id -u)" != 0 ] || die "PostgreSQL cannot run as root; use test/run.sh or sandbox.sh"

case "$cmd" in
start)
	if [ ! -f "$dir/data/PG_VERSION" ]; then
		mkdir -p "$dir/sock"
		"$PG_BINDIR/initdb" -D "$dir/data" -U postgres -A trust \
			--no-sync -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
			{ cat "$dir/initdb.log" >&2; die "initdb failed"; }
		port=$(free_port)
		{
			echo "# infra test cluster"
			echo "port = $port"
			echo "listen_addresses = '127.0.0.1'"
			echo "unix_socket_directories = '$dir/sock'"
			echo "shared_preload_libraries = 'infra'"
			echo "fsync = off"
			echo "log_line_prefix = '%m [%p] %b '"
			echo "max_worker_processes = 24"
			for setting in "$@"; do
				echo "${setting%%=*} = '${setting#*=}'"
			done
		} >>"$dir/data/postgresql.conf"
	fi
	"$PG_BINDIR/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null ||
		{ tail -n 30 "$dir/postgres.log" >&2; die "PostgreSQL failed to start"; }
	;;
stop)
	if [ -f "$dir/data/postmaster.pid" ]; then
		"$PG_BINDIR/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
	fi
	;;
port)
	sed -n 's/^port = //p' "$dir/data/postgresql.conf" | tail -n 1
	;;
*)
	sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
	exit 2
	;;
esac
