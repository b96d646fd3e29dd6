#!/usr/bin/env bash
# pg-config.sh MAJOR: print the pg_config of a tested PostgreSQL version
# (make PG=18 uses it; test/deps.sh installs the versions).
here=$(cd "$(dirname "$0")" && pwd)
PG='' PG_CONFIG=true . "$here/lib.sh"
pg_config_of "${1:?usage: pg-config.sh MAJOR}"
