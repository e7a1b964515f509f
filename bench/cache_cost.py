#!/usr/bin/python3
"""What the query cache costs a workload that never repeats: sluice's CPU per transaction.

    bench/cache_cost.py [--seconds 10] [--repeat 3] [--clients 16] [--scale 10]

Starts its own PostgreSQL 15 primary + replica + Redis (tests/integration/cluster.py) and four
sluice processes in transaction mode with read routing to the replica (pool 20, 2 event loops):
the cache off (cache.enabled: false: Redis still holds the read-consistency marks, one MGET per
routed read), no Redis at all (marks kept per instance), the cache on with admission
(cache.admission: repeat, the default) and the cache on storing every miss (always). pgbench -S (random keys
over scale x 100 000 rows: almost no key repeats) runs against each in turn, --repeat times
interleaved; the table shows medians of TPS and of sluice's CPU time (user + system, from
/proc/<pid>/stat) per transaction, and each cache setting's ratio to the cache off. Everything
listens on 127.0.0.1 and stops by itself."""
import argparse
import os
import statistics
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.dirname(__file__))
import bench  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "release", "sluice"))
    ap.add_argument("--out")
    args = ap.parse_args()
    report = bench.Report("sluice-cost-")
    work, emit = report.work, report.emit
    targets = []
    try:
        st = report.cluster_up()
        bench.reinit(st["primary_port"], args.scale)
        time.sleep(2)  # the replica replays the load
        dbs = {"appdb": {"primary": {"host": "127.0.0.1", "port": st["primary_port"]},
                         "replicas": [{"host": "127.0.0.1", "port": st["replica_port"]}]}}
        common = {"databases": dbs, "workers": 2,
                  "routing": {"enabled": True, "health_user": "app"}}
        redis = f"redis://127.0.0.1:{st['redis_port']}"
        settings = [("cache off", {"cache": {"redis": redis, "enabled": False}}),
                    ("no Redis at all", {}),
                    ("cache, admission repeat", {"cache": {"redis": redis}}),
                    ("cache, admission always", {"cache": {"redis": redis,
                                                           "admission": "always"}})]
        for name, extra in settings:
            os.makedirs(f"{work}/{len(targets)}", exist_ok=True)
            t = bench.start_sluice(f"{work}/{len(targets)}", args.binary, st["primary_port"], 20,
                                   1000, {**common, **extra})
            t.label = name
            targets.append(t)
        time.sleep(3)  # catalogs loaded, the follower caught up
        runs = {t.label: [] for t in targets}
        for _ in range(args.repeat):
            for t in targets:  # interleaved: drift hits every setting alike
                before = cpu_seconds(t.proc.pid)
                r = bench.pgbench(t.port, ["-n", "-S", "-M", "simple", "-c", str(args.clients),
                                           "-j", "2", "-T", str(args.seconds)],
                                  timeout=args.seconds + 60)
                used = cpu_seconds(t.proc.pid) - before
                res = bench.pgbench_result(r)
                if res["tps"] is None:
                    raise RuntimeError(f"{t.label}: pgbench failed: {res['error']}")
                txns = res["tps"] * args.seconds
                runs[t.label].append((res["tps"], used / txns * 1e6, res["failed"]))
        emit(f"# sluice cache cost — {time.strftime('%Y-%m-%d %H:%M')} — {os.cpu_count()} CPUs, "
             f"pgbench -S -M simple -c {args.clients} -j 2 -T {args.seconds} x {args.repeat} "
             f"(median), scale {args.scale}, replica routing on, 2 event loops")
        emit()
        emit("| sluice | tps | CPU µs per transaction | CPU vs cache off | failed |")
        emit("|---|---:|---:|---:|---:|")
        base = statistics.median(c for _, c, _ in runs["cache off"])
        for t in targets:
            tps = statistics.median(x for x, _, _ in runs[t.label])
            cpu = statistics.median(c for _, c, _ in runs[t.label])
            failed = sum(f for _, _, f in runs[t.label])
            emit(f"| {t.label} | {tps:,.0f} | {cpu:.1f} | {cpu / base:.2f} | {failed} |")
        for t in targets[2:]:
            m = t.proc.pid and bench_metrics(t)
            emit(f"\n{t.label}: {m}")
    finally:
        bench.stop_all(targets, work)
    bench.write_out(args.out, report.lines)


def bench_metrics(t):
    """The cache's own account of the run: hits, misses, not stored, cold skips."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{t.http}/metrics", timeout=5) as r:
        text = r.read().decode()
    keep = ("sluice_cache_hits_total", "sluice_cache_misses_total", "sluice_cache_not_stored_total",
            'sluice_cache_bypass_total{reason="cold_statement"}')
    return "; ".join(l for l in text.splitlines() if l.startswith(keep))


if __name__ == "__main__":
    main()
