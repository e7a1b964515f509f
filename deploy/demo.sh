#!/usr/bin/env bash
# Native demo: installs dependencies, builds sluice, starts a PostgreSQL 15 primary + streaming
# replica + Redis on free local ports, and sluice in front of them on 127.0.0.1:6432.
#   deploy/demo.sh          start (or restart) the demo and print the connection string
#   deploy/demo.sh stop     stop sluice and the servers
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${SLUICE_DEMO_DIR:-/tmp/sluice-demo}
RUN_DIR="$DEMO_DIR-run"
PORT=${SLUICE_DEMO_PORT:-6432}
export HTTP_PORT=${SLUICE_DEMO_HTTP_PORT:-9930}

stop() {
  if [ -f "$RUN_DIR/sluice.pid" ]; then
    kill "$(cat "$RUN_DIR/sluice.pid")" 2>/dev/null || true
    rm -f "$RUN_DIR/sluice.pid"
  fi
  /usr/bin/python3 tests/integration/cluster.py down "$DEMO_DIR" >/dev/null 2>&1 || true
}

if [ "${1:-start}" = "stop" ]; then
  stop
  echo "demo stopped"
  exit 0
fi

bash scripts/setup.sh
cmake --preset release -G Ninja >/dev/null
cmake --build --preset release -j "$(nproc)"
stop
mkdir -p "$RUN_DIR"
/usr/bin/python3 tests/integration/cluster.py up "$DEMO_DIR"
state="$DEMO_DIR/state.json"
field() { /usr/bin/python3 -c "import json,sys; print(json.load(open('$state'))['$1'])"; }

export APP_PASSWORD=secret OPS_PASSWORD=opssecret
export PRIMARY_PORT=$(field primary_port) REPLICA_PORT=$(field replica_port) REDIS_PORT=$(field redis_port)
export SLUICE_CERT_DIR=$(field certs)
sed "s/127.0.0.1:6432/127.0.0.1:$PORT/" deploy/sluice.example.yaml > "$RUN_DIR/sluice.yaml"
build/release/sluice --check-config "$RUN_DIR/sluice.yaml"
nohup build/release/sluice --config "$RUN_DIR/sluice.yaml" > "$RUN_DIR/sluice.log" 2>&1 &
echo $! > "$RUN_DIR/sluice.pid"
for _ in $(seq 50); do
  if psql -X -Atq "postgres://app:secret@127.0.0.1:$PORT/appdb?sslmode=disable" -c "SELECT 1" >/dev/null 2>&1; then
    break
  fi
  sleep 0.1
done
psql -X -Atq "postgres://app:secret@127.0.0.1:$PORT/appdb?sslmode=require" \
  -c "SELECT 'sluice is up: ' || version()"
cat <<MSG

  connect:   psql "postgres://app:secret@127.0.0.1:$PORT/appdb"
  TLS:       psql "postgres://app:secret@127.0.0.1:$PORT/appdb?sslmode=verify-full&sslrootcert=$SLUICE_CERT_DIR/ca.crt"
  admin:     psql "postgres://ops:opssecret@127.0.0.1:$PORT/sluice" -c 'SHOW POOLS'   (SHOW QUERIES, PAUSE, RESUME...)
  metrics:   curl http://127.0.0.1:$HTTP_PORT/metrics   (/healthz /readyz /status)
  servers:   primary 127.0.0.1:$PRIMARY_PORT, replica 127.0.0.1:$REPLICA_PORT, redis 127.0.0.1:$REDIS_PORT
  config:    $RUN_DIR/sluice.yaml (kill -HUP $(cat "$RUN_DIR/sluice.pid") reloads it)
  log:       $RUN_DIR/sluice.log
  stop:      deploy/demo.sh stop
MSG
