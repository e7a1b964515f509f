#!/usr/bin/env bash
# Installs every build and test dependency of sluice from Debian 12 packages (idempotent).
#   scripts/setup.sh               build + test + benchmark dependencies, the test user, npm modules
#   scripts/setup.sh --build-only  what building sluice needs (the Dockerfile's build stage)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

BUILD_PKGS=(
  build-essential cmake ninja-build pkg-config
  libboost1.81-dev libpq-dev libpg-query-dev libmongoc-dev libbson-dev libhiredis-dev
  libyaml-cpp-dev libspdlog-dev libfmt-dev catch2 libssl-dev
)
TEST_PKGS=(
  clang clang-format libclang-rt-14-dev
  postgresql-15 postgresql-client-15 redis-server prometheus pgbouncer pgpool2
  python3-psycopg python3-yaml docker-compose openssl procps iproute2 ca-certificates
  systemd  # systemd-analyze verifies the packaged unit (test_deploy)
)
build_only=""
if [ "${1:-}" = "--build-only" ]; then build_only=1; fi
PKGS=("${BUILD_PKGS[@]}")
if [ -z "$build_only" ]; then PKGS+=("${TEST_PKGS[@]}"); fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  # policy-rc.d keeps the packaged postgres/redis/pgbouncer/pgpool services from starting: tests
  # and benchmarks run their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ -n "$build_only" ]; then
  echo "setup: build dependencies ok"
  exit 0
fi

# postgres refuses to run as root: tests run the servers as this unprivileged user.
if ! id sluicetest >/dev/null 2>&1; then
  $SUDO useradd -m -s /bin/bash sluicetest
fi
# node-postgres for the driver tests (npm registry; Node itself comes with the machine — Debian's
# nodejs/npm packages conflict with it). Without npm those tests are skipped, loudly.
# Only when package-lock.json changed since the last install: `npm ci` deletes node_modules first,
# and deploy/demo.sh runs this script while tests may be running those modules' programs.
if command -v npm >/dev/null 2>&1; then
  node_dir="$(dirname "$0")/../tests/integration/node"
  lock_sum=$(sha256sum "$node_dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$node_dir/node_modules/.sluice-installed" 2>/dev/null)" != "$lock_sum" ]; then
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$lock_sum" >"$node_dir/node_modules/.sluice-installed"
  fi
else
  echo "setup: WARNING: npm not found; the node-postgres tests will be skipped"
fi
echo "setup: ok"
