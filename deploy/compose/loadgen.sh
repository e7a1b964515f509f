#!/bin/bash
# Load through sluice for the demo dashboard: pgbench's tables once, then rounds of TPC-B (writes on
# the primary) and select-only (reads on the replica, and the query cache) forever.
set -uo pipefail
until pg_isready -q; do sleep 1; done
until pgbench -i -s 5 -q; do sleep 2; done
while true; do
  pgbench -n -c 4 -j 2 -T 60 -P 30
  pgbench -n -S -c 8 -j 2 -T 60 -P 30
done
