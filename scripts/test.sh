#!/usr/bin/env bash
# Runs every sluice test on this machine: installs what is missing (Debian packages), builds the
# release and the ASan+UBSan builds, runs unit and integration tests (real PostgreSQL primary +
# replica + Redis, started and stopped by ctest) on both, then a short libFuzzer pass.
#   SLUICE_PGBENCH_SECONDS  length of each of the nine pgbench runs in the release pass (default 15)
#   SLUICE_MANY_CLIENTS_SECONDS  length of the 2000-client run in the release pass (default 60)
#   SLUICE_WAL_TRIALS       direct-write trials of test_wal_follower in the release pass (150)
#   SLUICE_FUZZ_SECONDS     seconds per fuzz target (default 30; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

jobs=$(nproc)
echo "== release build"
cmake --preset release -G Ninja -DSLUICE_WERROR=ON >/dev/null
cmake --build --preset release -j "$jobs"
echo "== release tests (unit + integration)"
SLUICE_PGBENCH_SECONDS=${SLUICE_PGBENCH_SECONDS:-15} SLUICE_WAL_TRIALS=${SLUICE_WAL_TRIALS:-150} \
  ctest --preset release -j "$jobs"

echo "== ASan+UBSan build"
cmake --preset debug -G Ninja -DSLUICE_WERROR=ON >/dev/null
cmake --build --preset debug -j "$jobs"
# One test at a time: ASan's slower timing already stretches the latency-bound suites.
echo "== ASan+UBSan tests (unit + integration, shorter pgbench)"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  SLUICE_PGBENCH_SECONDS=5 SLUICE_MANY_CLIENTS_SECONDS=10 SLUICE_CONSISTENCY_ITERATIONS=200 \
  SLUICE_CONSISTENCY_CHECKER_OPS=4000 SLUICE_WAL_TRIALS=100 ctest --preset debug

fuzz_seconds=${SLUICE_FUZZ_SECONDS:-30}
if [ "$fuzz_seconds" != 0 ]; then
  echo "== libFuzzer (${fuzz_seconds}s per target, from the checked-in corpus)"
  cmake --preset fuzz -G Ninja >/dev/null
  cmake --build --preset fuzz -j "$jobs"
  declare -A fuzz_dict=([fuzz_pg_frontend]=pg [fuzz_pg_backend]=pg [fuzz_pg_pooling]=pg
    [fuzz_insights]=pg [fuzz_sql_classifier]=sql [fuzz_cache]=cache [fuzz_mongo_wire]=mongo
    [fuzz_pgoutput]=pg)
  # One target per core at a time; each fails the run on a crash or a timeout.
  fuzz_one() {
    local target=$1 corpus log
    # A scratch copy of the seeds: new inputs found here are not written into the source tree.
    corpus=$(mktemp -d)
    cp tests/fuzz/corpus/$target/* "$corpus"/
    log=$(mktemp)
    if ! build/fuzz/tests/fuzz/$target -max_total_time="$fuzz_seconds" -timeout=10 -max_len=4096 \
        -dict=tests/fuzz/${fuzz_dict[$target]}.dict -artifact_prefix=build/fuzz/$target- \
        "$corpus" >"$log" 2>&1; then
      tail -n 60 "$log"
      echo "$target: FAILED (input saved as build/fuzz/$target-crash-* or -timeout-*)"
      touch "$fuzz_failed/$target"
      rm -rf "$corpus" "$log"
      return 1
    fi
    echo "$target: $(grep -E '^#[0-9]+' "$log" | grep 'cov:' | tail -n 1)"
    rm -rf "$corpus" "$log"
  }
  fuzz_failed=$(mktemp -d)
  for target in fuzz_pg_frontend fuzz_pg_backend fuzz_sql_classifier fuzz_pg_pooling fuzz_insights \
      fuzz_cache fuzz_mongo_wire fuzz_pgoutput; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    fuzz_one "$target" &
  done
  wait || true
  if [ -n "$(ls "$fuzz_failed")" ]; then exit 1; fi
  rm -rf "$fuzz_failed"
fi
echo "== all tests passed"
