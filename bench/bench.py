#!/usr/bin/python3
"""sluice vs PgBouncer vs direct PostgreSQL, in one run, on this machine.

    bench/run.sh [--seconds 10] [--repeat 3] [--clients 16,256] [--idle 10000] [--out FILE]

Starts its own PostgreSQL 15 (tests/integration/cluster.py), PgBouncer (Debian's 1.18, transaction
mode) and sluice (transaction mode), both with a server pool of --pool (20), clients
authenticating with SCRAM-SHA-256 and no TLS everywhere. For each workload (pgbench select-only
and TPC-B-like, -M simple and -M prepared) and client count, the three targets run back to back,
--repeat times, and the table shows medians of TPS and average latency, and the ratios
sluice/PgBouncer and sluice/direct. Then --idle idle clients are connected to PgBouncer and to
sluice and each one's RSS growth per client is reported. Everything listens on 127.0.0.1 only and
stops by itself.

pgbench -M prepared runs at -j 1 and -j 2: pgbench prepares synchronously (PQprepare), so a
thread whose client waits for a server stalls its other clients, which may hold every server
inside their transactions. sluice answers the Parse of a statement it knows to parse without a
server; a pooler that does not deadlocks (a run that does not end is shown as hung)."""
import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import cluster  # noqa: E402

PASSWORD = "secret"
# (name, pgbench flags, -M, -j): -j None = min(clients, 2). Prepared runs at -j 1 (pgbench's
# default) and -j 2: a thread blocked in PQprepare stalls its other clients (see above).
WORKLOADS = [("select-only", ["-S"], "simple", None), ("select-only", ["-S"], "prepared", 1),
             ("select-only", ["-S"], "prepared", 2), ("tpc-b", [], "simple", None),
             ("tpc-b", [], "prepared", 1), ("tpc-b", [], "prepared", 2)]


wait_port = cluster.wait_port  # cache_bench.py imports it from here


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Target:
    def __init__(self, name, port, proc=None):
        self.name, self.port, self.proc = name, port, proc

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_pgbouncer(work, pg_port, pool, max_clients):
    port = cluster.free_port()
    d = os.path.join(work, "pgbouncer")
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/userlist.txt", "w") as f:
        f.write(f'"app" "{PASSWORD}"\n')
    with open(f"{d}/pgbouncer.ini", "w") as f:
        f.write(f"""[databases]
appdb = host=127.0.0.1 port={pg_port} dbname=appdb
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d}/userlist.txt
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = {max_clients}
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
""")
    cluster.chown_tree(d)
    # Enough descriptors for the idle clients (runuser's PAM session resets the soft limit).
    cmd = ["sh", "-c", f"ulimit -n {max_clients + 1000} && exec /usr/sbin/pgbouncer "
           f"{d}/pgbouncer.ini"]
    if os.geteuid() == 0:  # pgbouncer refuses to run as root
        cmd = ["runuser", "-u", cluster.OS_USER, "--"] + cmd
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc, "pgbouncer")
    return Target("pgbouncer", port, proc)


def start_sluice(work, binary, pg_port, pool, max_clients, extra=None):
    """sluice in transaction mode; `extra` adds top-level config keys. The Target's `http` is the
    port of /metrics."""
    port, http = cluster.free_port(), cluster.free_port()
    d = os.path.join(work, "sluice")
    os.makedirs(d, exist_ok=True)
    cfg = {"listen": {"postgres": f"127.0.0.1:{port}", "http": f"127.0.0.1:{http}"},
           "databases": {"appdb": {"primary": {"host": "127.0.0.1", "port": pg_port}}},
           "users": [{"name": "app", "password": PASSWORD}],
           "pool": {"mode": "transaction", "size": pool, "max_client_conn": max_clients},
           "log": {"level": "warn"}, **(extra or {})}
    with open(f"{d}/sluice.yaml", "w") as f:
        json.dump(cfg, f)
    log = open(f"{d}/sluice.log", "w")
    proc = subprocess.Popen([binary, "--config", f"{d}/sluice.yaml"], stdout=log,
                            stderr=subprocess.STDOUT)
    wait_port(port, proc, "sluice")
    t = Target("sluice", port, proc)
    t.http = http
    return t


def pgbench(port, args, timeout):
    env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="disable")
    cmd = ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "app", *args, "appdb"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def run_cell(target, flags, mode, clients, seconds, threads):
    threads = min(clients, threads or 2)
    try:
        r = pgbench(target.port, ["-n", *flags, "-M", mode, "-c", str(clients), "-j",
                                  str(threads), "-T", str(seconds)], timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        return {"tps": None, "lat": None, "error": f"hung (no end {seconds + 60} s after start)",
                "out": ""}
    return pgbench_result(r)


def pgbench_result(r):
    """{tps, lat (ms), failed, error, out} of a finished pgbench run; tps None when it failed."""
    out = r.stdout + r.stderr
    tps = re.search(r"tps = ([\d.]+) \(without", out)
    lat = re.search(r"latency average = ([\d.]+) ms", out)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    if r.returncode != 0 or not tps:
        err = next((line for line in out.splitlines() if "error" in line.lower()), "failed")
        return {"tps": None, "lat": None, "error": err.strip()[:90], "out": out}
    return {"tps": float(tps.group(1)), "lat": float(lat.group(1)) if lat else None,
            "failed": int(failed.group(1)) if failed else 0, "error": None, "out": out}


def reinit(pg_port, scale):
    r = pgbench(pg_port, ["-i", "-q", "-s", str(scale)], timeout=600)
    if r.returncode != 0:
        raise RuntimeError("pgbench -i failed: " + r.stderr)


def open_idle(port, count):
    """Opens `count` authenticated idle connections (libpq via psycopg); returns them."""
    import psycopg
    conns = []
    dsn = (f"host=127.0.0.1 port={port} user=app password={PASSWORD} dbname=appdb "
           "sslmode=disable connect_timeout=10")  # a proxy out of descriptors fails, not hangs
    for _ in range(count):
        conns.append(psycopg.connect(dsn, autocommit=True))
    return conns


def idle_memory(target, count):
    first = open_idle(target.port, 1)
    first[0].execute("SELECT 1")
    time.sleep(0.5)
    before = rss_kb(target.proc.pid if target.name == "sluice" else pgbouncer_pid(target))
    conns = open_idle(target.port, count)
    time.sleep(1)
    pid = target.proc.pid if target.name == "sluice" else pgbouncer_pid(target)
    after = rss_kb(pid)
    for c in conns + first:
        c.close()
    return before, after


def pgbouncer_pid(target):
    # runuser forks pgbouncer as a child; find the real process.
    out = subprocess.run(["pgrep", "-P", str(target.proc.pid)], capture_output=True, text=True)
    pids = out.stdout.split()
    return int(pids[0]) if pids else target.proc.pid


def fmt(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10, help="per pgbench cell")
    ap.add_argument("--repeat", type=int, default=3, help="runs per cell; the median is shown")
    ap.add_argument("--clients", default="16,256")
    ap.add_argument("--pool", type=int, default=20, help="server pool of PgBouncer and sluice")
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale factor")
    ap.add_argument("--idle", type=int, default=10000, help="idle clients for the memory figure")
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "release", "sluice"))
    ap.add_argument("--out", help="also write the tables (markdown) here")
    ap.add_argument("--memory-only", action="store_true", help="skip the pgbench table")
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    # Descriptors for the idle clients, here and in sluice (a child inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.idle + 2000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))

    report = Report("sluice-bench-")
    work, emit = report.work, report.emit
    targets = []
    try:
        pg_port = report.cluster_up()["primary_port"]
        max_clients = args.idle + 500
        targets = [Target("direct", pg_port),
                   start_pgbouncer(work, pg_port, args.pool, max_clients),
                   start_sluice(work, args.binary, pg_port, args.pool, max_clients)]
        cpu = os.cpu_count()
        emit(f"# sluice bench — {time.strftime('%Y-%m-%d %H:%M')} — {cpu} CPUs, pgbench "
             f"-T {args.seconds} x {args.repeat} (median), scale {args.scale}, server pool "
             f"{args.pool}, PgBouncer 1.18 transaction mode, sluice transaction mode")
        emit()
        emit("| workload | -M | clients | direct tps | PgBouncer tps | sluice tps | "
             "sluice/PgBouncer | sluice/direct | latency ms direct / PgB / sluice |")
        emit("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for name, flags, mode, threads in ([] if args.memory_only else WORKLOADS):
            for c in clients:
                if name == "tpc-b":
                    reinit(pg_port, args.scale)
                else:
                    reinit(pg_port, args.scale) if c == clients[0] and mode == "simple" else None
                runs = {t.name: [] for t in targets}
                for _ in range(args.repeat):
                    for t in targets:  # interleaved, so drift hits all three alike
                        runs[t.name].append(run_cell(t, flags, mode, c, args.seconds, threads))
                med = {}
                for t in targets:
                    ok = [r for r in runs[t.name] if r["tps"] is not None]
                    if len(ok) < len(runs[t.name]):
                        err = next(r["error"] for r in runs[t.name] if r["tps"] is None)
                        med[t.name] = {"tps": None, "lat": None, "error": err}
                    else:
                        med[t.name] = {"tps": statistics.median(r["tps"] for r in ok),
                                       "lat": statistics.median(r["lat"] for r in ok),
                                       "failed": sum(r["failed"] for r in ok)}
                d, b, s = med["direct"], med["pgbouncer"], med["sluice"]
                ratio = lambda x, y: f"{x['tps'] / y['tps']:.2f}" if x["tps"] and y["tps"] else "—"
                label = f"{mode} -j {threads}" if threads else mode
                emit(f"| {name} | {label} | {c} | {fmt(d['tps'])} | "
                     f"{fmt(b['tps']) if b['tps'] else 'fails'} | {fmt(s['tps'])} | "
                     f"{ratio(s, b)} | {ratio(s, d)} | {fmt(d['lat'], 2)} / {fmt(b['lat'], 2)} / "
                     f"{fmt(s['lat'], 2)} |")
                for t in targets:
                    if med[t.name].get("error"):
                        emit(f"|  | | | {t.name}: {med[t.name]['error']} | | | | | |")
                    elif med[t.name].get("failed"):
                        emit(f"|  | | | {t.name}: {med[t.name]['failed']} failed transactions "
                             "| | | | | |")
        emit()
        emit(f"## RSS with {args.idle} idle clients (SCRAM, no TLS)")
        emit()
        emit("| proxy | RSS before (KB) | RSS with idle clients (KB) | per idle client (KB) |")
        emit("|---|---:|---:|---:|")
        mem = {}
        for t in targets[1:]:
            before, after = idle_memory(t, args.idle)
            mem[t.name] = (after - before) / args.idle
            emit(f"| {t.name} | {before:,} | {after:,} | {mem[t.name]:.2f} |")
        emit()
        emit(f"sluice/PgBouncer memory per idle client: {mem['sluice'] / mem['pgbouncer']:.2f}")
    finally:
        stop_all(targets, work)
    write_out(args.out, report.lines)


class Report:
    """A bench's work directory (its own cluster comes up there) and the lines of its report:
    emit() prints a line and keeps it for --out."""

    def __init__(self, prefix):
        self.work = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.work, 0o755)
        self.lines = []

    def emit(self, s=""):
        print(s, flush=True)
        self.lines.append(s)

    def cluster_up(self):
        """Starts the primary, replica and Redis (tests/integration/cluster.py): their state."""
        cluster.up(self.work)
        with open(f"{self.work}/state.json") as f:
            return json.load(f)


def stop_all(targets, work):
    """Stops the targets and the cluster, and removes the work directory."""
    for t in targets:
        t.stop()
    try:
        cluster.down(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_out(path, lines):
    if path:
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
