#!/usr/bin/python3
"""The MongoDB proxy's cost: direct vs through sluice vs sluice's cache, one run.

    bench/mongo_bench.py [--seconds 10] [--repeat 3] [--clients 1,16] [--out FILE]

Starts a MongoDB-wire server (npm @jongodb/memory-server, in-memory), redis-server and sluice
(static primary, a mongo.cache rule for bench.cached only), then runs findOne by random _id with
the Node driver (bench/mongo_bench.js) against: the server direct, sluice on an uncached
collection (pooling and forwarding only), and sluice on a cached one (hits from L1), --repeat
times interleaved. Reports median ops/s and latencies and the ratios to direct. jongodb is a test
server, slower than mongod under concurrency: the direct column is its speed, and the ratios are
what travels. Everything listens on 127.0.0.1 and stops by itself."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NODE_DIR = os.path.join(ROOT, "tests", "integration", "node")
JONGODB = os.path.join(NODE_DIR, "node_modules", "@jongodb", "memory-server-bin-linux-x64-gnu",
                       "bin", "jongodb")
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import cluster  # noqa: E402

SLUICE = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "release", "sluice"))


def run_node(uri, collection, seconds, clients, setup=False):
    args = ["node", os.path.join(ROOT, "bench", "mongo_bench.js"), uri, collection, str(seconds),
            str(clients)] + (["--setup"] if setup else [])
    r = subprocess.run(args, capture_output=True, text=True, check=True,
                       env=dict(os.environ, NODE_PATH=os.path.join(NODE_DIR, "node_modules")))
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--out")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="sluice-mongo-bench-")
    procs = []
    try:
        mongo_port, redis_port = cluster.free_port(), cluster.free_port()
        with open(f"{work}/jongodb.log", "w") as log:
            procs.append(subprocess.Popen([JONGODB, "--host=127.0.0.1", f"--port={mongo_port}"],
                                          stdout=log, stderr=subprocess.STDOUT))
        cluster.wait_port(mongo_port, procs[-1], "jongodb")
        procs.append(subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port",
                                       str(redis_port), "--save", "", "--appendonly", "no"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cluster.wait_port(redis_port, procs[-1], "redis")
        pg, http, mport = cluster.free_port(), cluster.free_port(), cluster.free_port()
        config = {
            "listen": {"postgres": f"127.0.0.1:{pg}", "http": f"127.0.0.1:{http}",
                       "mongo": f"127.0.0.1:{mport}"},
            "auth_type": "trust",
            "databases": {"unused": {"primary": {"host": "127.0.0.1", "port": 1}}},
            "cache": {"redis": f"redis://127.0.0.1:{redis_port}"},
            "mongo": {"servers": [{"host": "127.0.0.1", "port": mongo_port, "role": "primary"}],
                      "cache": [{"collections": ["bench.cached"], "ttl": "10m"}]},
            "log": {"level": "warn"},
        }
        with open(f"{work}/sluice.yaml", "w") as f:
            json.dump(config, f)
        with open(f"{work}/sluice.log", "w") as log:
            procs.append(subprocess.Popen([SLUICE, "--config", f"{work}/sluice.yaml"], stdout=log,
                                          stderr=subprocess.STDOUT))
        cluster.wait_port(mport, procs[-1], "sluice")
        direct = f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true"
        proxied = f"mongodb://127.0.0.1:{mport}/"
        run_node(direct, "items", 1, 1, setup=True)
        targets = [("direct", direct, "items"), ("sluice", proxied, "items"),
                   ("sluice cache", proxied, "cached")]
        results = {}
        for clients in [int(c) for c in a.clients.split(",")]:
            for _ in range(a.repeat):
                for name, uri, coll in targets:
                    results.setdefault((clients, name), []).append(
                        run_node(uri, coll, a.seconds, clients))
        lines = [f"# sluice Mongo bench — {time.strftime('%Y-%m-%d %H:%M')} — {os.cpu_count()} CPUs, "
                 f"findOne by _id, {a.seconds} s x {a.repeat} (median), jongodb "
                 "(@jongodb/memory-server 0.1.6)", "",
                 "| clients | target | ops/s | p50 ms | p99 ms | ops/s vs direct |",
                 "|---:|---|---:|---:|---:|---:|"]
        for clients in [int(c) for c in a.clients.split(",")]:
            base = statistics.median(r["ops_per_s"] for r in results[(clients, "direct")])
            for name, _, _ in targets:
                rs = results[(clients, name)]
                ops = statistics.median(r["ops_per_s"] for r in rs)
                lines.append(f"| {clients} | {name} | {ops:,.0f} | "
                             f"{statistics.median(r['p50_ms'] for r in rs):.3f} | "
                             f"{statistics.median(r['p99_ms'] for r in rs):.3f} | {ops / base:.2f} |")
        text = "\n".join(lines) + "\n"
        print(text)
        if a.out:
            with open(a.out, "w") as f:
                f.write(text)
    finally:
        for p in reversed(procs):
            cluster.stop_process(p)


if __name__ == "__main__":
    main()
