#!/usr/bin/env bash
# Native demo (no Docker needed): installs what is missing (Debian packages), builds sluice, starts
# a PostgreSQL 15 primary + streaming replica + Redis on free local ports, sluice in front of them
# (127.0.0.1:6432, or a free port when 6432 is taken) and Prometheus scraping sluice; runs a short
# pgbench through sluice and prints where to look. Ctrl-C stops everything it started.
#   deploy/demo.sh            run in the foreground until Ctrl-C
#   deploy/demo.sh --detach   start, print, return (then: deploy/demo.sh stop)
#   deploy/demo.sh stop       stop a detached demo
# Environment: SLUICE_DEMO_PORT, SLUICE_DEMO_HTTP_PORT, SLUICE_DEMO_PROMETHEUS_PORT,
# SLUICE_DEMO_MONGO_PORT (default: the usual port when free, else a free one), SLUICE_DEMO_DIR
# (default /tmp/sluice-demo),
# SLUICE_DEMO_PGBENCH_SECONDS (default 5).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${SLUICE_DEMO_DIR:-/tmp/sluice-demo}
RUN_DIR="$DEMO_DIR-run"
PY=/usr/bin/python3
mode=${1:-foreground}
case "$mode" in
  foreground | --detach | stop) ;;
  *) echo "usage: deploy/demo.sh [--detach | stop]" >&2; exit 2 ;;
esac

# The port asked for, or the usual one when it is free, or any free one.
pick_port() {
  $PY - "$1" "$2" <<'PY'
import socket, sys
asked, usual = sys.argv[1], int(sys.argv[2])
def free(p):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", p))
            return s.getsockname()[1]
        except OSError:
            return None
print(asked if asked else (free(usual) or free(0)))
PY
}

stop_pidfile() {  # SIGTERM, then wait for it to exit (SIGKILL after 30 s)
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop() {
  stop_pidfile "$RUN_DIR/pgbench.pid"
  stop_pidfile "$RUN_DIR/sluice.pid"  # drains: clients get 57P01, then it exits
  stop_pidfile "$RUN_DIR/prometheus.pid"
  stop_pidfile "$RUN_DIR/jongodb.pid"
  $PY tests/integration/cluster.py down "$DEMO_DIR" >/dev/null 2>&1 || true
}

if [ "$mode" = stop ]; then
  stop
  echo "demo stopped"
  exit 0
fi

started=$(date +%s)
bash scripts/setup.sh
cmake --preset release -G Ninja >/dev/null
cmake --build --preset release -j "$(nproc)"
stop  # a previous demo in the same directory
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"
if [ "$mode" = foreground ]; then
  # From here on, Ctrl-C (or the end of this script) stops everything started below. The servers
  # run in sessions of their own, so the terminal's SIGINT reaches only this script, which stops
  # them in order: clients first, then sluice (draining), Prometheus, the databases.
  trap 'echo; echo "stopping the demo..."; stop; echo "demo stopped"' EXIT
  trap 'exit 130' INT TERM
fi

setsid $PY tests/integration/cluster.py up "$DEMO_DIR" </dev/null
state="$DEMO_DIR/state.json"
field() { $PY -c "import json,sys; print(json.load(open('$state'))['$1'])"; }

PORT=$(pick_port "${SLUICE_DEMO_PORT:-}" 6432)
export HTTP_PORT=$(pick_port "${SLUICE_DEMO_HTTP_PORT:-}" 9930)
PROM_PORT=$(pick_port "${SLUICE_DEMO_PROMETHEUS_PORT:-}" 9090)
export APP_PASSWORD=secret OPS_PASSWORD=opssecret
export PRIMARY_PORT=$(field primary_port) REPLICA_PORT=$(field replica_port) REDIS_PORT=$(field redis_port)
export SLUICE_CERT_DIR=$(field certs)
sed "s/127.0.0.1:6432/127.0.0.1:$PORT/" deploy/sluice.example.yaml > "$RUN_DIR/sluice.yaml"
# The MongoDB side: an in-memory MongoDB-wire server (npm, installed by scripts/setup.sh) behind
# sluice's Mongo listener, with finds of demo.products cached.
JONGODB=tests/integration/node/node_modules/@jongodb/memory-server-bin-linux-x64-gnu/bin/jongodb
MONGO_URL=""
if [ -x "$JONGODB" ]; then
  MONGO_SERVER_PORT=$(pick_port "" 0)
  MONGO_PORT=$(pick_port "${SLUICE_DEMO_MONGO_PORT:-}" 27018)
  setsid "$JONGODB" --host=127.0.0.1 --port="$MONGO_SERVER_PORT" </dev/null >"$RUN_DIR/jongodb.log" 2>&1 &
  echo $! > "$RUN_DIR/jongodb.pid"
  sed -i "/^listen:/a\\  mongo: 127.0.0.1:$MONGO_PORT" "$RUN_DIR/sluice.yaml"
  cat >> "$RUN_DIR/sluice.yaml" <<EOF
mongo:
  servers: [{host: 127.0.0.1, port: $MONGO_SERVER_PORT, role: primary}]
  cache: [{collections: [demo.products], ttl: 60s}]
EOF
  MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/"
fi
build/release/sluice --check-config "$RUN_DIR/sluice.yaml"
setsid build/release/sluice --config "$RUN_DIR/sluice.yaml" </dev/null >"$RUN_DIR/sluice.log" 2>&1 &
echo $! > "$RUN_DIR/sluice.pid"
ready=""
for _ in $(seq 100); do
  if build/release/sluice --probe "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "sluice did not become ready; its log:" >&2
  tail -n 20 "$RUN_DIR/sluice.log" >&2
  exit 1
fi

# Prometheus with sluice's alert rules, scraping this sluice every 5 s.
mkdir -p "$RUN_DIR/prometheus"
cp deploy/prometheus/alerts.yml "$RUN_DIR/prometheus/alerts.yml"
sed -e 's/scrape_interval: 15s/scrape_interval: 5s/' -e "s/\"sluice:9930\"/\"127.0.0.1:$HTTP_PORT\"/" \
  deploy/prometheus/prometheus.yml > "$RUN_DIR/prometheus/prometheus.yml"
setsid prometheus --config.file="$RUN_DIR/prometheus/prometheus.yml" \
  --storage.tsdb.path="$RUN_DIR/prometheus/data" --web.listen-address="127.0.0.1:$PROM_PORT" \
  </dev/null >"$RUN_DIR/prometheus.log" 2>&1 &
echo $! > "$RUN_DIR/prometheus.pid"

URL="postgres://app:secret@127.0.0.1:$PORT/appdb"
psql -X -Atq "$URL?sslmode=require" -c "SELECT 'sluice is up: ' || version()"
seconds=${SLUICE_DEMO_PGBENCH_SECONDS:-5}
echo "pgbench through sluice: initialize (scale 1), then ${seconds}s of TPC-B with 8 clients"
pgbench -q -i -s 1 "$URL?sslmode=disable" >"$RUN_DIR/pgbench-init.log" 2>&1
pgbench -n -c 8 -j 2 -T "$seconds" "$URL?sslmode=disable" 2>&1 | grep -E "^(tps|latency average|number of failed)"
MONGO_LINE="mongo:       (not started: npm modules missing; run scripts/setup.sh)"
if [ -n "$MONGO_URL" ]; then
  NODE_PATH=tests/integration/node/node_modules node -e '
const { MongoClient } = require("mongodb");
(async () => {
  const c = new MongoClient(process.argv[1]);
  const products = c.db("demo").collection("products");
  await products.deleteMany({});
  await products.insertMany([{ _id: 1, name: "tea", price: 3 }, { _id: 2, name: "coffee", price: 4 }]);
  for (let i = 0; i < 3; i++) await products.find({}).sort({ _id: 1 }).toArray();
  const n = await products.countDocuments({});
  console.log(`mongo through sluice: ${n} products in demo.products (finds cached)`);
  await c.close();
})().catch((e) => { console.error(e); process.exit(1); });' "$MONGO_URL"
  MONGO_LINE="mongo:       $MONGO_URL   (any MongoDB driver; server 127.0.0.1:$MONGO_SERVER_PORT)"
fi
for _ in $(seq 50); do
  build/release/sluice --probe "http://127.0.0.1:$PROM_PORT/-/ready" >/dev/null 2>&1 && break
  sleep 0.2
done

cat <<MSG

  sluice demo is up ($(( $(date +%s) - started )) s). Where to look:
  connect:     psql "$URL"
  TLS:         psql "$URL?sslmode=verify-full&sslrootcert=$SLUICE_CERT_DIR/ca.crt"
  admin:       psql "postgres://ops:opssecret@127.0.0.1:$PORT/sluice" -c 'SHOW POOLS'   (SHOW STATS, SHOW QUERIES, SHOW REPLICAS, SHOW CACHE, PAUSE, RESUME...)
  metrics:     curl http://127.0.0.1:$HTTP_PORT/metrics   (/healthz /readyz /status)
  prometheus:  http://127.0.0.1:$PROM_PORT/graph?g0.expr=rate(sluice_queries_total%5B1m%5D)   (alerts: /alerts)
  load:        pgbench -c 8 -T 60 "$URL"
  $MONGO_LINE
  servers:     primary 127.0.0.1:$PRIMARY_PORT, replica 127.0.0.1:$REPLICA_PORT, redis 127.0.0.1:$REDIS_PORT
  config:      $RUN_DIR/sluice.yaml (kill -HUP $(cat "$RUN_DIR/sluice.pid") reloads it)
  logs:        $RUN_DIR/sluice.log, $RUN_DIR/prometheus.log, $DEMO_DIR/*.log
MSG
if [ "$mode" = --detach ]; then
  echo "  stop:        deploy/demo.sh stop"
  exit 0
fi
echo "  stop:        Ctrl-C"
# Wait for Ctrl-C; end early if sluice dies.
while kill -0 "$(cat "$RUN_DIR/sluice.pid")" 2>/dev/null; do
  sleep 1 &
  wait $! || true
done
echo "sluice exited; its log: $RUN_DIR/sluice.log" >&2
exit 1
