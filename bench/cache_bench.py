#!/usr/bin/python3
"""Cached reads: sluice's Redis cache vs Pgpool-II's query cache vs direct PostgreSQL, one run.

    bench/cache_bench.py [--seconds 10] [--repeat 3] [--clients 32] [--workers 2]
                         [--modes simple,prepared] [--out FILE]

Starts its own PostgreSQL 15 + Redis (tests/integration/cluster.py), Pgpool-II (Debian's 4.3,
raw mode, memory_cache_enabled with shared memory) and sluice (transaction mode, cache on), then
runs a heavy aggregate (GROUP BY over 400 000 rows) with 20 distinct parameter values at
--clients clients through each target, --repeat times interleaved, for each pgbench -M of
--modes (simple, then prepared). The table
shows the median TPS and average latency, the ratios, and sluice's cache-hit latency p99 from
its own histogram (sluice_cache_hit_duration_seconds) over the sluice runs. Everything listens on
127.0.0.1 and stops by itself."""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cluster  # noqa: E402
from bench import (PASSWORD, Report, Target, wait_port, pgbench, pgbench_result, fmt,  # noqa: E402
                   start_sluice, stop_all, write_out)

QUERY = ("SELECT customer, count(*), sum(amount), avg(amount), sum(id) FROM bench_orders "
         "WHERE region = :r GROUP BY customer ORDER BY customer;")


def setup_data(pg_port):
    sql = ("DROP TABLE IF EXISTS bench_orders; CREATE TABLE bench_orders (id bigserial PRIMARY "
           "KEY, region int, customer int, amount numeric); INSERT INTO bench_orders (region, "
           "customer, amount) SELECT g % 20 + 1, g % 500, (g % 997) * 1.5 FROM "
           "generate_series(1, 400000) g; ANALYZE bench_orders")
    env = dict(os.environ, PGPASSWORD=PASSWORD)
    subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(pg_port), "-U", "app", "-d", "appdb",
                    "-v", "ON_ERROR_STOP=1", "-qc", sql], check=True, env=env)


def start_pgpool(work, pg_port, clients):
    port, pcp = cluster.free_port(), cluster.free_port()
    d = os.path.join(work, "pgpool")
    os.makedirs(f"{d}/oiddir", exist_ok=True)
    with open(f"{d}/pgpool.conf", "w") as f:
        f.write(f"""backend_clustering_mode = 'raw'
listen_addresses = '127.0.0.1'
port = {port}
socket_dir = '{d}'
pcp_listen_addresses = '127.0.0.1'
pcp_port = {pcp}
pcp_socket_dir = '{d}'
backend_hostname0 = '127.0.0.1'
backend_port0 = {pg_port}
backend_weight0 = 1
backend_flag0 = 'DISALLOW_TO_FAILOVER'
enable_pool_hba = on
pool_passwd = '{d}/pool_passwd'
num_init_children = {clients + 4}
max_pool = 1
child_life_time = 0
connection_life_time = 0
load_balance_mode = off
health_check_period = 0
sr_check_period = 0
logdir = '{d}'
pid_file_name = '{d}/pgpool.pid'
log_min_messages = warning
memory_cache_enabled = on
memqcache_method = 'shmem'
memqcache_total_size = 64MB
memqcache_max_num_cache = 100000
memqcache_expire = 60
memqcache_auto_cache_invalidation = on
memqcache_maxcache = 409600
memqcache_cache_block_size = 1MB
memqcache_oiddir = '{d}/oiddir'
""")
    with open(f"{d}/pool_hba.conf", "w") as f:
        f.write("host all all 127.0.0.1/32 scram-sha-256\n")
    with open(f"{d}/pool_passwd", "w") as f:
        f.write(f"app:TEXT{PASSWORD}\n")
    open(f"{d}/pcp.conf", "w").close()
    cluster.chown_tree(d)
    cmd = ["/usr/sbin/pgpool", "-n", "-f", f"{d}/pgpool.conf", "-F", f"{d}/pcp.conf",
           "-a", f"{d}/pool_hba.conf"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", cluster.OS_USER, "--"] + cmd
    log = open(f"{d}/pgpool.out", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, proc, "pgpool")
    except RuntimeError:
        log.close()
        print(open(f"{d}/pgpool.out").read()[-3000:], file=sys.stderr)
        raise
    return Target("pgpool", port, proc)


def run(target, script, clients, seconds, mode="simple"):
    r = pgbench(target.port, ["-n", "-f", script, "-M", mode, "-c", str(clients), "-j", "2",
                              "-T", str(seconds)], timeout=seconds + 120)
    result = pgbench_result(r)
    if result["tps"] is None:
        raise RuntimeError(f"pgbench through {target.name} failed:\n{result['out'][-2000:]}")
    return result


def histogram(target):
    with urllib.request.urlopen(f"http://127.0.0.1:{target.http}/metrics", timeout=10) as r:
        text = r.read().decode()
    buckets = []
    for line in text.splitlines():
        m = re.match(r'sluice_cache_hit_duration_seconds_bucket\{le="([^"]+)"\} (\S+)', line)
        if m:
            buckets.append((float(m.group(1)), float(m.group(2))))
    return buckets


def quantile(before, after, q):
    """The bucket bound under which a fraction q of the hits between two scrapes fell."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before)]
    total = counts[-1][1]
    for le, n in counts:
        if total and n >= q * total:
            return le, total
    return float("inf"), total


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2, help="sluice's event loops")
    ap.add_argument("--modes", default="simple,prepared", help="pgbench -M, each in turn")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "release", "sluice"))
    ap.add_argument("--out")
    args = ap.parse_args()
    modes = args.modes.split(",")
    report = Report("sluice-cache-bench-")
    work, emit = report.work, report.emit
    targets = []
    try:
        st = report.cluster_up()
        setup_data(st["primary_port"])
        script = os.path.join(work, "aggregate.sql")
        with open(script, "w") as f:
            f.write("\\set r random(1, 20)\n" + QUERY + "\n")
        targets = [Target("direct", st["primary_port"]),
                   start_pgpool(work, st["primary_port"], args.clients),
                   start_sluice(work, args.binary, st["primary_port"], 20, 1000,
                                {"cache": {"redis": f"redis://127.0.0.1:{st['redis_port']}"},
                                 "workers": args.workers})]
        time.sleep(2)  # sluice loads the catalog
        for t in targets[1:]:  # warm both caches with the 20 results
            for mode in modes:
                run(t, script, 4, 2, mode)
        runs = {(t.name, mode): [] for t in targets for mode in modes}
        hit_lat = []
        for _ in range(args.repeat):
            for mode in modes:
                for t in targets:
                    before = histogram(t) if t.name == "sluice" else None
                    runs[(t.name, mode)].append(run(t, script, args.clients, args.seconds, mode))
                    if before is not None:
                        hit_lat.append(quantile(before, histogram(t), 0.99))
        med = {k: {"tps": statistics.median(r["tps"] for r in v),
                   "lat": statistics.median(r["lat"] for r in v),
                   "failed": sum(r["failed"] for r in v)} for k, v in runs.items()}
        emit(f"# sluice cache bench — {time.strftime('%Y-%m-%d %H:%M')} — {os.cpu_count()} CPUs, "
             f"pgbench -M {'/'.join(modes)} -c {args.clients} -T {args.seconds} x {args.repeat} "
             f"(median), sluice workers: {args.workers}")
        emit()
        emit("Heavy aggregate over 400 000 rows, 20 distinct parameter values:")
        emit(f"`{QUERY}`")
        emit()
        emit("| target | -M | tps | latency ms | failed |")
        emit("|---|---|---:|---:|---:|")
        for mode in modes:
            for name, label in (("direct", "direct PostgreSQL"),
                                ("pgpool", "Pgpool-II 4.3 query cache"), ("sluice", "sluice cache")):
                m = med[(name, mode)]
                emit(f"| {label} | {mode} | {fmt(m['tps'])} | {fmt(m['lat'], 2)} | "
                     f"{m['failed']} |")
        emit()
        for mode in modes:
            d, p, s = (med[(n, mode)] for n in ("direct", "pgpool", "sluice"))
            emit(f"-M {mode}: sluice/direct: **{s['tps'] / d['tps']:.1f}x**, sluice/Pgpool-II: "
                 f"**{s['tps'] / p['tps']:.2f}x**")
        p99s = [le for le, n in hit_lat if n > 0]
        emit(f"sluice cache-hit p99 (histogram bucket bound) per run: "
             f"{', '.join(f'{v * 1e3:.2f} ms' for v in p99s)} "
             f"({', '.join(str(int(n)) for _, n in hit_lat)} hits)")
    finally:
        stop_all(targets, work)
    write_out(args.out, report.lines)


if __name__ == "__main__":
    main()
