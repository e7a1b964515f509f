#!/bin/sh
# One command for the benchmark table: builds sluice (release) if needed, then runs bench/bench.py
# (its own PostgreSQL, PgBouncer and sluice on 127.0.0.1; everything stops by itself).
# Needs what scripts/setup.sh installs (postgresql-15, pgbouncer, python3-psycopg).
set -eu
cd "$(dirname "$0")/.."
if [ ! -x build/release/sluice ]; then
  cmake --preset release >/dev/null
  cmake --build --preset release
fi
exec /usr/bin/python3 bench/bench.py "$@"
