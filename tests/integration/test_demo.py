"""README command 1 works: deploy/demo.sh (foreground) starts primary + replica + Redis + sluice +
Prometheus, runs pgbench through sluice and prints where to look; what it prints works (psql plain
and TLS, the admin console, /metrics, Prometheus scraping sluice); Ctrl-C (SIGINT to the whole
foreground process group, as a terminal sends it) stops everything and leaves no process behind.
The detached mode and `deploy/demo.sh stop` work too."""
import json
import os
import re
import select
import signal
import socket
import subprocess
import time
import unittest
import urllib.request

from cluster import process_alive
from harness import ROOT, SLUICE, free_port

DEMO = os.path.join(ROOT, "deploy", "demo.sh")


def processes_mentioning(text):
    """PIDs of live processes whose command line contains text."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        if text in cmd and process_alive(int(pid)):
            found.append((int(pid), cmd.strip()))
    return found


def port_open(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Demo(unittest.TestCase):
    def demo_env(self):
        port = free_port()
        demo_dir = f"/tmp/sluice-demo-test-{port}"
        env = dict(os.environ, SLUICE_DEMO_PORT=str(port), SLUICE_DEMO_HTTP_PORT=str(free_port()),
                   SLUICE_DEMO_PROMETHEUS_PORT=str(free_port()), SLUICE_DEMO_DIR=demo_dir,
                   SLUICE_DEMO_PGBENCH_SECONDS="2")
        return port, demo_dir, env

    def check_printed(self, out):
        self.assertIn("sluice is up: PostgreSQL 15", out)
        self.assertRegex(out, r"tps = \d+")
        self.assertIn("number of failed transactions: 0 ", out)
        url = re.search(r'connect:\s+psql "([^"]+)"', out).group(1)
        tls_url = re.search(r'TLS:\s+psql "([^"]+)"', out).group(1)
        for u in (url, tls_url):
            q = subprocess.run(["psql", "-X", "-At", u, "-c", "SELECT current_user"],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(q.stdout.strip(), "app", q.stderr)
        # pgbench's tables went through sluice into the primary.
        q = subprocess.run(["psql", "-X", "-At", url, "-c", "SELECT count(*) FROM pgbench_accounts"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(q.stdout.strip(), "100000", q.stderr)
        admin = re.search(r'admin:\s+psql "([^"]+)"', out).group(1)
        q = subprocess.run(["psql", "-X", "-At", admin, "-c", "SHOW VERSION"],
                           capture_output=True, text=True, timeout=30)
        version = subprocess.run([SLUICE, "--version"], capture_output=True, text=True).stdout
        self.assertEqual(q.stdout.strip(), version.strip(), q.stderr)
        metrics = re.search(r"metrics:\s+curl (\S+)", out).group(1)
        with urllib.request.urlopen(metrics, timeout=10) as m:
            text = m.read().decode()
        self.assertRegex(text, r'sluice_transactions_total\{[^}]*\} [1-9]')
        # The Mongo side: the demo's finds went through sluice, the repeated ones from the cache.
        self.assertIn("mongo through sluice: 2 products in demo.products", out)
        self.assertRegex(out, r"mongo:\s+mongodb://127\.0\.0\.1:\d+/")
        self.assertRegex(text, r'sluice_mongo_cache_requests_total\{result="hit"\} [1-9]')
        self.assertRegex(text, r'sluice_mongo_server_up\{[^}]*role="primary"\} 1')
        prometheus = re.search(r"prometheus:\s+(http://[^/]+)", out).group(1)
        deadline = time.time() + 30  # the first scrape comes within one 5 s interval
        health = None
        while time.time() < deadline:
            with urllib.request.urlopen(prometheus + "/api/v1/targets", timeout=10) as r:
                targets = json.load(r)["data"]["activeTargets"]
            health = [t["health"] for t in targets]
            if health == ["up"]:
                break
            time.sleep(1)
        self.assertEqual(health, ["up"], "Prometheus does not scrape sluice")
        with urllib.request.urlopen(prometheus + "/api/v1/rules", timeout=10) as r:
            rules = [rule["name"] for g in json.load(r)["data"]["groups"] for rule in g["rules"]]
        self.assertIn("SluiceDown", rules)
        return url

    def demo_pids(self, demo_dir):
        run = demo_dir + "-run"
        pids = {}
        for name, path in (("sluice", f"{run}/sluice.pid"), ("prometheus", f"{run}/prometheus.pid"),
                           ("jongodb", f"{run}/jongodb.pid"),
                           ("redis", f"{demo_dir}/redis.pid"),
                           ("primary", f"{demo_dir}/primary/postmaster.pid"),
                           ("replica", f"{demo_dir}/replica/postmaster.pid")):
            with open(path) as f:
                pids[name] = int(f.readline().strip())
        return pids

    def test_foreground_demo_and_ctrl_c(self):
        port, demo_dir, env = self.demo_env()
        started = time.time()
        proc = subprocess.Popen([DEMO], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        out = ""
        try:
            deadline = time.time() + 600
            # Raw reads of the pipe: a buffered readline() after select() can hold lines the
            # next select() never reports (the demo prints its summary in one burst).
            while "stop:        Ctrl-C" not in out:
                self.assertLess(time.time(), deadline, out)
                ready, _, _ = select.select([proc.stdout], [], [], 5)
                if ready:
                    chunk = os.read(proc.stdout.fileno(), 65536)
                    self.assertTrue(chunk, "demo.sh exited:\n" + out)
                    out += chunk.decode(errors="replace")
            up_seconds = time.time() - started
            url = self.check_printed(out)
            pids = self.demo_pids(demo_dir)
            self.assertEqual(proc.poll(), None, "the demo must stay in the foreground")
        finally:
            # Ctrl-C: the terminal sends SIGINT to the foreground process group.
            stop_started = time.time()
            os.killpg(proc.pid, signal.SIGINT)
            rest, _ = proc.communicate(timeout=120)
            out += rest.decode(errors="replace")
        stop_seconds = time.time() - stop_started
        self.assertEqual(proc.returncode, 130, out)
        self.assertIn("demo stopped", out)
        left = processes_mentioning(demo_dir)
        self.assertEqual(left, [], "processes left behind after Ctrl-C")
        for name, pid in pids.items():
            self.assertFalse(process_alive(pid), f"{name} (pid {pid}) still runs after Ctrl-C")
        self.assertFalse(port_open(port), "sluice still listens after Ctrl-C")
        q = subprocess.run(["psql", "-X", "-At", url, "-c", "SELECT 1"], capture_output=True,
                           text=True, timeout=30)
        self.assertNotEqual(q.returncode, 0, "sluice still answers after Ctrl-C")
        print(f"demo up in {up_seconds:.1f} s (setup check, build check, servers, pgbench), "
              f"stopped by Ctrl-C in {stop_seconds:.1f} s; pids {pids} all gone")

    def test_detached_demo_and_stop(self):
        port, demo_dir, env = self.demo_env()
        try:
            r = subprocess.run([DEMO, "--detach"], capture_output=True, text=True, env=env,
                               timeout=600)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("stop:        deploy/demo.sh stop", r.stdout)
            url = re.search(r'connect:\s+psql "([^"]+)"', r.stdout).group(1)
            q = subprocess.run(["psql", "-X", "-At", url, "-c", "SELECT 1"], capture_output=True,
                               text=True, timeout=30)
            self.assertEqual(q.stdout.strip(), "1", q.stderr)
        finally:
            s = subprocess.run([DEMO, "stop"], env=env, capture_output=True, text=True,
                               timeout=120)
        self.assertIn("demo stopped", s.stdout)
        self.assertEqual(processes_mentioning(demo_dir), [])
        self.assertFalse(port_open(port), "sluice still listens after demo.sh stop")


if __name__ == "__main__":
    unittest.main(verbosity=2)
