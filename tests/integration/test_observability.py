"""Observability and operations against real servers: /metrics counters that move by exactly the
statements run, promtool on a scrape under load, a real Prometheus scraping sluice, /readyz
following the primary, the admin console (PgBouncer 1.18's SHOW columns, permissions, PAUSE,
KILL, DISABLE), query insights with the slow-query log, SIGHUP and PAUSE/RESUME under a 64-client
pgbench with 0 failed transactions, and a rolling restart with SO_REUSEPORT."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request

import psycopg
from psycopg import errors

from harness import (APP_PASSWORD, ROOT, OPS_PASSWORD, Sluice, free_port, psql, skip_or_fail,
                     state, superuser_sql, wait_for)

PG_BIN = "/usr/lib/postgresql/15/bin"
SECONDS = int(os.environ.get("SLUICE_PGBENCH_SECONDS", "30"))
COLUMNS = os.path.join(ROOT, "tests", "integration", "pgbouncer_1_18_columns.json")


def transaction_pool(size=10, **extra):
    def tweak(c):
        # Idle clients park (no coroutine between requests), so KILL, PAUSE and reloads reach
        # parked clients too.
        c["pool"] = {"mode": "transaction", "size": size, "park_idle_above": 0}
        c.update(extra)
    return tweak


def admin(sluice, sql, user="ops", password=OPS_PASSWORD):
    """Rows of an admin command as dicts (simple protocol, like psql)."""
    with psycopg.connect(sluice.admin_dsn(user, password), autocommit=True,
                         prepare_threshold=None) as conn:
        cur = conn.cursor()
        cur.execute(sql, prepare=False)
        if cur.description is None:
            return []
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


# A stable function that takes time: slow statements whose EXPLAIN sluice may take (pg_sleep itself
# is volatile, and statements calling volatile functions are never explained).
SLOW_STABLE = ("CREATE OR REPLACE FUNCTION exp_slow(float8) RETURNS int STABLE LANGUAGE sql AS "
               "$$ SELECT 1 FROM pg_sleep($1) $$")


def wait_plans(sluice, word, count, timeout=10):
    """{normalized query: plan} of SHOW QUERIES rows naming `word` that have a plan, once there
    are `count` of them (or the timeout passed)."""
    plans, deadline = {}, time.time() + timeout
    while len(plans) < count and time.time() < deadline:
        plans = {r["query"]: r["plan"] for r in admin(sluice, "SHOW QUERIES")
                 if word in r["query"] and r["plan"]}
        time.sleep(0.1)
    return plans


def connected_clients(sluice):
    """Clients logged in to sluice's databases (admin consoles not counted)."""
    m = sluice.metrics()
    return sum(m[f'sluice_client_connections{{state="{s}"}}'] for s in ("active", "waiting"))


def pgbench(port, *args, timeout=300):
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGSSLMODE="disable")
    return subprocess.Popen(["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "app", *args,
                             "appdb"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def pgbench_result(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    failed = re.search(r"number of failed transactions: (\d+)", out)
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+)", out)
    return proc.returncode, out + err, (int(processed.group(1)) if processed else 0), \
        (int(failed.group(1)) if failed else 0), (tps.group(1) if tps else "?")


def as_server_user(cmd):
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", state()["os_user"], "--"] + cmd
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def ensure_pgbench_tables(sluice):
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGSSLMODE="disable")
    subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(sluice.port), "-U", "app", "-i", "-s",
                    "1", "-q", "appdb"], check=True, capture_output=True, env=env, timeout=300)


class Metrics(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sluice = Sluice(tweak=transaction_pool(10)).start()

    @classmethod
    def tearDownClass(cls):
        code = cls.sluice.stop()
        assert code == 0, f"sluice exited with {code}"

    def key(self, name, **labels):
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return f"{name}{{{inner}}}" if labels else name

    def test_counters_move_by_exactly_the_statements_run(self):
        q = self.key("sluice_queries_total", database="appdb", user="app", route="primary")
        x = self.key("sluice_transactions_total", database="appdb", user="app")
        e = self.key("sluice_errors_total", **{"class": "22"})
        with psycopg.connect(self.sluice.dsn(), autocommit=True, prepare_threshold=None) as conn:
            conn.execute("SELECT 1")  # the pool and the counters exist from here on
            before = self.sluice.metrics()
            for i in range(37):
                conn.execute("SELECT %s::int", (i,))
            conn.execute("SELECT 1; SELECT 2; SELECT 3")  # three statements, one transaction
            with self.assertRaises(errors.DivisionByZero):
                conn.execute("SELECT 1/0")
            after = self.sluice.metrics()
        print(f"sluice_queries_total {before[q]:.0f} -> {after[q]:.0f}, "
              f"transactions {before[x]:.0f} -> {after[x]:.0f}")
        self.assertEqual(after[q] - before[q], 37 + 3 + 1)
        self.assertEqual(after[x] - before[x], 37 + 1 + 1)
        self.assertEqual(after[e] - before.get(e, 0), 1)
        hist = self.key("sluice_query_duration_seconds_count", database="appdb", user="app")
        self.assertEqual(after[hist] - before[hist], 39)

    def test_prepared_statements_and_pins_are_counted(self):
        key = self.key("sluice_server_prepared_statements", database="appdb", user="app")
        pin = self.key("sluice_pins_total", reason="listen")
        before = self.sluice.metrics().get(pin, 0)
        with psycopg.connect(self.sluice.dsn(), autocommit=True) as conn:
            for i in range(3):
                conn.execute(f"SELECT {i} + %s::int AS n", (1,), prepare=True)
        self.assertGreaterEqual(self.sluice.metrics()[key], 3)
        with psycopg.connect(self.sluice.dsn(), autocommit=True) as conn:
            conn.execute("LISTEN obs_channel")
        self.assertEqual(self.sluice.metrics()[pin] - before, 1)

    def test_promtool_accepts_a_scrape_taken_under_load(self):
        ensure_pgbench_tables(self.sluice)
        bench = pgbench(self.sluice.port, "-c", "16", "-j", "2", "-T", "6", "-S")
        # Scraped while the 16 clients are connected and running (-T 6 starts once they are).
        wait_for(lambda: connected_clients(self.sluice) >= 16 or bench.poll() is not None,
                 timeout=15, what="pgbench's 16 clients")
        self.assertIsNone(bench.poll(), "pgbench ended before the scrape")
        status, body = self.sluice.http("/metrics")
        active = self.sluice.metrics()
        code, out, processed, failed, tps = pgbench_result(bench)
        self.assertEqual(code, 0, out)
        self.assertEqual(status, 200)
        r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                           text=True)
        series = sum(1 for line in body.splitlines() if line and not line.startswith("#"))
        print(f"promtool check metrics on a scrape under pgbench -c 16: exit {r.returncode}, "
              f"{series} series, {len(body)} bytes; pgbench {processed} tx, {failed} failed")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        for family in ("sluice_client_connections", "sluice_server_connections",
                       "sluice_clients_waiting", "sluice_client_max_wait_seconds",
                       "sluice_query_duration_seconds", "sluice_errors_total",
                       "sluice_client_received_bytes_total", "sluice_pins_total",
                       "sluice_backend_up", "sluice_top_query_calls_total",
                       "process_resident_memory_bytes", "process_open_fds",
                       "process_cpu_seconds_total"):
            self.assertIn(f"# TYPE {family} ", body)
        clients = active[self.key("sluice_client_connections", state="active")] + \
            active[self.key("sluice_client_connections", state="waiting")]
        self.assertEqual(clients, 16)
        servers = sum(v for k, v in active.items() if k.startswith("sluice_server_connections{"))
        self.assertGreater(servers, 0)
        self.assertLessEqual(servers, 10)

    def test_a_real_prometheus_scrapes_sluice(self):
        work = tempfile.mkdtemp(prefix="sluice-prom-")
        port = free_port()
        with open(os.path.join(work, "prometheus.yml"), "w") as f:
            f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sluice\n"
                    f"    static_configs:\n      - targets: ['127.0.0.1:{self.sluice.http_port()}']\n")
        log = open(os.path.join(work, "prometheus.log"), "w")
        prom = subprocess.Popen(["prometheus", f"--config.file={work}/prometheus.yml",
                                 f"--storage.tsdb.path={work}/data",
                                 f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            with psycopg.connect(self.sluice.dsn(), autocommit=True) as conn:
                conn.execute("SELECT 1")
            query = urllib.parse.quote('sum(sluice_queries_total{job="sluice"})')
            result, started = None, time.time()
            while time.time() - started < 60:
                try:
                    with urllib.request.urlopen(
                            f"http://127.0.0.1:{port}/api/v1/query?query={query}", timeout=5) as r:
                        doc = json.load(r)
                    if doc["status"] == "success" and doc["data"]["result"]:
                        result = doc["data"]["result"]
                        break
                except OSError:
                    pass
                time.sleep(0.5)
            self.assertIsNotNone(result, "Prometheus never returned sluice_queries_total")
            value = float(result[0]["value"][1])
            print(f"Prometheus: sum(sluice_queries_total) = {value:.0f} after "
                  f"{time.time() - started:.1f}s")
            self.assertGreaterEqual(value, 1)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query=" +
                                        urllib.parse.quote('up{job="sluice"}'), timeout=5) as r:
                up = json.load(r)["data"]["result"]
            self.assertEqual(up[0]["value"][1], "1")
        finally:
            prom.terminate()
            prom.wait(30)
            log.close()
            shutil.rmtree(work, ignore_errors=True)

    def test_probes_and_status(self):
        self.assertEqual(self.sluice.http("/healthz")[0], 200)
        status, body = self.sluice.http("/readyz")
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["ready"], True)
        status, body = self.sluice.http("/status")
        self.assertEqual(status, 200)
        doc = json.loads(body)
        roles = sorted(b["role"] for b in doc["backends"])
        self.assertEqual(roles, ["primary", "replica"])
        self.assertTrue(all(b["up"] for b in doc["backends"]), body)
        self.assertIn("pools", doc)
        self.assertEqual(self.sluice.http("/nothing")[0], 404)
        self.assertEqual(self.sluice.http("/metrics", method="POST")[0], 405)


class ThreadStall:
    """Stops ONE thread of a running process from outside, as a debugger does (ptrace SEIZE +
    INTERRUPT of that thread id; gdb in non-stop mode does the same): the rest of the process
    runs on. Used as a context manager; leaving it (or this test process dying) detaches, and the
    thread resumes. No hook in sluice: its event loop really does not run meanwhile."""

    PTRACE_DETACH, PTRACE_SEIZE, PTRACE_INTERRUPT, WALL = 17, 0x4206, 0x4207, 0x40000000

    def __init__(self, tid):
        import ctypes
        self.tid = tid
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.ptrace.restype = ctypes.c_long
        self.libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p,
                                     ctypes.c_void_p]
        self.attached = False

    def _ptrace(self, request):
        import ctypes
        if self.libc.ptrace(request, self.tid, None, None) == -1:
            err = ctypes.get_errno()
            raise OSError(err, f"ptrace({request:#x}, {self.tid}): {os.strerror(err)}")

    def __enter__(self):
        try:
            self._ptrace(self.PTRACE_SEIZE)
        except OSError as e:
            skip_or_fail(f"cannot ptrace sluice to stall one of its threads: {e}")
        self.attached = True
        self._ptrace(self.PTRACE_INTERRUPT)
        _, status = os.waitpid(self.tid, self.WALL)  # returns once the thread has stopped
        assert os.WIFSTOPPED(status), f"thread {self.tid} did not stop: status {status:#x}"
        return self

    def __exit__(self, *exc):
        if self.attached:
            self._ptrace(self.PTRACE_DETACH)
            self.attached = False


class Liveness(unittest.TestCase):
    def test_healthz_fails_while_one_event_loop_stalls_and_recovers(self):
        # Two loops: loop 0 runs on the main thread (its id is sluice's pid), loop 1 on a thread
        # of its own; the HTTP endpoint has its own thread too, so it answers throughout.
        with Sluice(tweak=lambda c: c.update(workers=2)) as sluice:
            pid = sluice.proc.pid
            self.assertEqual(sluice.http("/healthz"), (200, '{"alive":true,"reason":"alive"}'))
            with ThreadStall(pid):
                stalled = time.time()
                with open(f"/proc/{pid}/task/{pid}/stat") as f:
                    self.assertEqual(f.read().split(") ")[1][0], "t", "loop 0 is not stopped")

                def failing():
                    status, body = sluice.http("/healthz")
                    return (status, body) if status != 200 else None
                # The 5 s without a heartbeat are what /healthz waits for: polled, not slept.
                status, body = wait_for(failing, timeout=12, interval=0.1,
                                        what="/healthz to fail while loop 0 is stopped")
                took = time.time() - stalled
            self.assertEqual(status, 503, body)
            self.assertEqual(json.loads(body), {
                "alive": False, "reason": "event loop 0 has not run for over 5 s"})
            # Not sooner than the 5 s (minus the up to 250 ms since the last heartbeat).
            self.assertGreaterEqual(took, 4.5)
            wait_for(lambda: sluice.http("/healthz")[0] == 200, timeout=5, interval=0.05,
                     what="/healthz to answer 200 once loop 0 runs again")
            self.assertEqual(json.loads(sluice.http("/healthz")[1])["alive"], True)
            r = psql(sluice.dsn(), "SELECT 42")  # and the stalled loop serves clients again
            self.assertIn(b"42", r.stdout)
            print(f"/healthz: 503 {took:.2f}s after loop 0 stopped, 200 again after it resumed")


class Readiness(unittest.TestCase):
    def test_readyz_follows_the_primary(self):
        st = state()
        with Sluice(tweak=transaction_pool(4)) as sluice:
            deadline = time.time() + 10
            while sluice.http("/readyz")[0] != 200 and time.time() < deadline:
                time.sleep(0.05)
            self.assertEqual(sluice.http("/readyz")[0], 200)
            ctl = [f"{PG_BIN}/pg_ctl", "-D", st["primary_dir"], "-w"]
            as_server_user(ctl + ["-m", "fast", "stop"])
            stopped = time.time()
            try:
                while sluice.http("/readyz")[0] != 503 and time.time() - stopped < 10:
                    time.sleep(0.05)
                went_down = time.time() - stopped
                status, body = sluice.http("/readyz")
                self.assertEqual(status, 503, body)
                self.assertIn("primary of database appdb", json.loads(body)["reason"])
            finally:
                as_server_user(ctl + ["-l", os.path.join(st["dir"], "primary.log"), "start"])
            started = time.time()
            while sluice.http("/readyz")[0] != 200 and time.time() - started < 10:
                time.sleep(0.05)
            came_back = time.time() - started
            print(f"/readyz: 503 {went_down:.2f}s after the primary stopped, 200 again "
                  f"{came_back:.2f}s after it started")
            self.assertLess(went_down, 2.0)
            self.assertEqual(sluice.http("/readyz")[0], 200)
            self.assertLess(came_back, 2.0)
            r = psql(sluice.dsn(), "SELECT 42")
            self.assertIn(b"42", r.stdout)


class AdminConsole(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.sluice = Sluice(tweak=transaction_pool(4)).start()

    @classmethod
    def tearDownClass(cls):
        code = cls.sluice.stop()
        assert code == 0, f"sluice exited with {code}"

    def test_show_columns_match_pgbouncer_1_18(self):
        with open(COLUMNS) as f:
            expected = json.load(f)
        with psycopg.connect(self.sluice.dsn(), autocommit=True) as conn:
            conn.execute("SELECT 1")  # a pool exists
        for command, columns in expected.items():
            with self.subTest(command=command), psycopg.connect(
                    self.sluice.admin_dsn(), autocommit=True) as conn:
                cur = conn.cursor()
                cur.execute(f"SHOW {command}", prepare=False)
                got = [[d.name, d.type_code] for d in cur.description]
                self.assertEqual([c[0] for c in got], [c[0] for c in columns])
                if command == "POOLS":
                    self.assertEqual(got, columns)
        # The acceptance check as an operator runs it: psql's header line.
        r = psql(self.sluice.admin_dsn(), "SHOW POOLS", extra=("-A",))
        header = r.stdout.decode().splitlines()[0].split("|")
        self.assertEqual(header, [c[0] for c in expected["POOLS"]])
        rows = r.stdout.decode().splitlines()[1:-1]
        self.assertTrue(any(row.startswith("appdb|app|") for row in rows), rows)
        print("SHOW POOLS header through psql:", "|".join(header))

    def test_stats_users_show_only_and_others_are_refused(self):
        self.assertTrue(admin(self.sluice, "SHOW VERSION", "app", APP_PASSWORD))
        with self.assertRaises(errors.InsufficientPrivilege) as cm:
            admin(self.sluice, "PAUSE", "app", APP_PASSWORD)
        self.assertIn("may only run SHOW", str(cm.exception))
        with self.assertRaises(psycopg.OperationalError) as cm:
            admin(self.sluice, "SHOW POOLS", "other", "otherpass")
        self.assertIn("not allowed on the sluice admin console", str(cm.exception))
        with self.assertRaises(errors.SyntaxError):
            admin(self.sluice, "SHOW NONSENSE")

    def test_clients_servers_and_lists(self):
        conns = [psycopg.connect(self.sluice.dsn(application_name=f"obs{i}"), autocommit=True)
                 for i in range(3)]
        try:
            for c in conns:
                c.execute("SELECT 1")
            clients = admin(self.sluice, "SHOW CLIENTS")
            names = sorted(c["application_name"] for c in clients if c["database"] == "appdb")
            self.assertEqual(names, ["obs0", "obs1", "obs2"])
            servers = admin(self.sluice, "SHOW SERVERS")
            self.assertGreaterEqual(len(servers), 1)
            self.assertTrue(all(s["remote_pid"] > 0 for s in servers))
            lists = {r["list"]: r["items"] for r in admin(self.sluice, "SHOW LISTS")}
            self.assertGreaterEqual(lists["used_clients"], 3)
            dbs = admin(self.sluice, "SHOW DATABASES")
            self.assertEqual(dbs[0]["name"], "appdb")
            self.assertEqual(dbs[0]["pool_size"], 4)  # pool.size, no per-database override
        finally:
            for c in conns:
                c.close()

    def test_disable_enable_kill_and_reconnect(self):
        admin(self.sluice, "DISABLE appdb")
        try:
            with self.assertRaises(psycopg.OperationalError) as cm:
                psycopg.connect(self.sluice.dsn()).close()
            self.assertIn("is disabled on sluice", str(cm.exception))
        finally:
            admin(self.sluice, "ENABLE appdb")
        psycopg.connect(self.sluice.dsn()).close()

        victim = psycopg.connect(self.sluice.dsn(), autocommit=True)
        victim.execute("SELECT 1")
        admin(self.sluice, "KILL appdb")
        # KILL pauses the database: resumed whatever happens (the sluice is shared).
        resumed = []
        self.addCleanup(lambda: resumed or admin(self.sluice, "RESUME appdb"))
        with self.assertRaises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        victim.close()
        # KILL leaves the database paused: a new client waits until RESUME.
        done = []
        t = threading.Thread(target=lambda: done.append(
            psql(self.sluice.dsn(), "SELECT 'after resume'").stdout))
        t.start()
        wait_for(lambda: self.sluice.metrics()['sluice_client_connections{state="waiting"}'] >= 1,
                 what="the new client to wait for the paused database")
        self.assertEqual(done, [])
        admin(self.sluice, "RESUME appdb")
        resumed.append(True)
        t.join(10)
        self.assertIn(b"after resume", done[0])

        with psycopg.connect(self.sluice.dsn(), autocommit=True) as conn:
            pid_before = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            admin(self.sluice, "RECONNECT appdb")
            pid_after = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        self.assertNotEqual(pid_before, pid_after)
        with self.assertRaises(errors.InvalidCatalogName):
            admin(self.sluice, "PAUSE nosuchdb")


class Insights(unittest.TestCase):
    def test_slow_query_log_and_show_queries(self):
        tweak = transaction_pool(4, insights={"slow_query_threshold": "300ms"})
        with Sluice(tweak=tweak) as sluice:
            with psycopg.connect(sluice.dsn(), autocommit=True, prepare_threshold=None) as conn:
                for _ in range(3):
                    conn.execute("SELECT pg_sleep(0.5)")
                conn.execute("SELECT pg_sleep(0.01)")  # same fingerprint, fast
            rows = [r for r in admin(sluice, "SHOW QUERIES") if "pg_sleep" in r["query"]]
            self.assertEqual(len(rows), 1, rows)
            row = rows[0]
            print(f"SHOW QUERIES: {row['query']} calls={row['calls']} total_ms={row['total_ms']} "
                  f"mean_ms={row['mean_ms']} p99_ms={row['p99_ms']} max_ms={row['max_ms']} "
                  f"slow_calls={row['slow_calls']}")
            self.assertEqual(row["query"], "SELECT pg_sleep($1)")
            self.assertEqual(row["calls"], 4)
            self.assertEqual(row["slow_calls"], 3)
            self.assertGreaterEqual(float(row["total_ms"]), 1500)
            self.assertLess(float(row["total_ms"]), 1500 + 400)
            self.assertGreaterEqual(float(row["max_ms"]), 500)
            self.assertGreaterEqual(float(row["p99_ms"]), 500)
            lines = [line for line in sluice.log().splitlines() if "slow query" in line]
            # One line per fingerprint per insights.slow_log_interval (60 s).
            self.assertEqual(len(lines), 1, lines)
            self.assertIn("SELECT pg_sleep($1)", lines[0])
            self.assertIn(row["fingerprint"], lines[0])
            m = sluice.metrics()
            self.assertEqual(m['sluice_slow_queries_total{database="appdb"}'], 3)


    def test_explain_reports_sequential_scans_and_indexes(self):
        superuser_sql("DROP TABLE IF EXISTS obs_big; CREATE TABLE obs_big (id int PRIMARY KEY, "
                      "v int); INSERT INTO obs_big SELECT g, g % 100 FROM "
                      "generate_series(1, 50000) g; ANALYZE obs_big; GRANT SELECT ON obs_big TO app;"
                      + SLOW_STABLE)
        tweak = transaction_pool(4, insights={"slow_query_threshold": "200ms", "explain": True})
        try:
            with Sluice(tweak=tweak) as sluice:
                with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                    conn.execute("SELECT exp_slow(0.3), count(*) FROM obs_big WHERE v = 7")
                    conn.execute("SELECT exp_slow(0.3), v FROM obs_big WHERE id = 5")
                plans = wait_plans(sluice, "obs_big", 2)
                print("EXPLAIN summaries:", plans)
                scan = plans["SELECT exp_slow($1), count(*) FROM obs_big WHERE v = $2"]
                self.assertIn("seq scan on public.obs_big (50000 rows)", scan)
                indexed = plans["SELECT exp_slow($1), v FROM obs_big WHERE id = $2"]
                self.assertIn("no sequential scan", indexed)
                self.assertIn("indexes: obs_big_pkey", indexed)
                self.assertIn("slow query plan: fingerprint=", sluice.log())
        finally:
            superuser_sql("DROP TABLE IF EXISTS obs_big")

    def test_texts_shown_never_carry_values(self):
        # A statement the parser refuses keeps its literals out of SHOW QUERIES and the slow log
        # (it used to be shown as sent, values and all).
        tweak = transaction_pool(4, insights={"slow_query_threshold": "100ms"})
        with Sluice(tweak=tweak) as sluice:
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                conn.execute("SELECT pg_sleep(0.2), 'parsed-secret'")
                with self.assertRaises(psycopg.errors.SyntaxError):
                    conn.execute("SELEC 'unparsed-secret', 4242 -- note-secret", prepare=False)
            queries = [r["query"] for r in admin(sluice, "SHOW QUERIES")]
            print("SHOW QUERIES:", queries)
            self.assertIn("SELECT pg_sleep($1), $2", queries)
            self.assertIn("SELEC ?, ? -- ?", queries)
            shown = " ".join(queries) + sluice.log()
            for secret in ("parsed-secret", "unparsed-secret", "4242", "note-secret"):
                self.assertNotIn(secret, shown)

    def test_explain_never_runs_what_may_write(self):
        # A multi-statement text, a data-modifying CTE and a volatile function are slow but never
        # explained; the multi-statement write runs exactly once (EXPLAIN through PQexec used to
        # run the INSERT a second time, in autocommit, outside the client's transaction).
        superuser_sql(
            "DROP TABLE IF EXISTS exp_t; CREATE TABLE exp_t (v text); GRANT SELECT, INSERT ON exp_t "
            "TO app; CREATE OR REPLACE FUNCTION exp_volatile(float8) RETURNS int VOLATILE "
            "LANGUAGE sql AS $$ SELECT 1 FROM pg_sleep($1) $$;" + SLOW_STABLE)
        tweak = transaction_pool(4, insights={"slow_query_threshold": "300ms", "explain": True,
                                              "slow_log_interval": "100ms"})
        try:
            with Sluice(tweak=tweak) as sluice:
                psql(sluice.dsn(), "SELECT pg_sleep(0.5); INSERT INTO exp_t(v) VALUES ('once')")
                psql(sluice.dsn(), "WITH w AS (INSERT INTO exp_t(v) VALUES ('cte') RETURNING v) "
                                   "SELECT exp_slow(0.5), v FROM w")
                psql(sluice.dsn(), "SELECT exp_volatile(0.5), count(*) FROM exp_t")
                psql(sluice.dsn(), "BEGIN; SELECT pg_sleep(0.5); INSERT INTO exp_t(v) "
                                   "VALUES ('rolled back'); ROLLBACK")
                # A plain read after them: jobs run in order, so once its plan is there every
                # sample before it was either explained or refused.
                psql(sluice.dsn(), "SELECT exp_slow(0.5), count(*) FROM exp_t WHERE v = 'x'")
                plans = wait_plans(sluice, "exp_t", 1)
                self.assertEqual(list(plans), ["SELECT exp_slow($1), count(*) FROM exp_t WHERE v = $2"],
                                 plans)
                queries = {r["query"]: r for r in admin(sluice, "SHOW QUERIES")}
                for text in ("SELECT pg_sleep($1); INSERT INTO exp_t(v) VALUES ($2)",
                             "WITH w AS (INSERT INTO exp_t(v) VALUES ($2) RETURNING v) "
                             "SELECT exp_slow($1), v FROM w",
                             "SELECT exp_volatile($1), count(*) FROM exp_t"):
                    self.assertIn(text, queries)
                    self.assertGreaterEqual(queries[text]["slow_calls"], 1, text)
                    self.assertIsNone(queries[text]["plan"], text)
            self.assertEqual(superuser_sql("SELECT v FROM exp_t ORDER BY v"), "cte\nonce")
        finally:
            superuser_sql("DROP TABLE IF EXISTS exp_t; DROP FUNCTION IF EXISTS exp_volatile(float8)")

    def test_explain_samples_never_cross_identities(self):
        # `other` runs a slow statement first; `app` runs the same statement kind with another
        # value. app's EXPLAIN must run app's own text: the primary's log (log_statement = all
        # for app alone) never shows other's value in a statement of app's.
        log = os.path.join(state()["dir"], "primary.log")
        tweak = transaction_pool(4, insights={"slow_query_threshold": "300ms", "explain": True,
                                              "slow_log_interval": "100ms"})
        start = os.path.getsize(log)
        try:
            superuser_sql("DROP TABLE IF EXISTS exp_id; CREATE TABLE exp_id (v text); "
                          "GRANT SELECT ON exp_id TO app, other; ALTER ROLE app SET "
                          "log_statement = 'all';" + SLOW_STABLE)
            with Sluice(tweak=tweak) as sluice:
                psql(sluice.dsn("other", "otherpass"),
                     "SELECT exp_slow(0.5), count(*) FROM exp_id WHERE v = 'secret-of-other'")
                wait_plans(sluice, "exp_id", 1)
                time.sleep(0.2)  # past slow_log_interval: the next slow call is explained again
                psql(sluice.dsn(), "SELECT exp_slow(0.5), count(*) FROM exp_id WHERE v = 'app-value'")
                deadline = time.time() + 10
                explained = []
                while not explained and time.time() < deadline:
                    with open(log, errors="replace") as f:
                        f.seek(start)
                        explained = [l for l in f if "EXPLAIN" in l and "exp_id" in l]
                    time.sleep(0.1)
            print("app's EXPLAIN in the primary's log:", explained)
            self.assertTrue(explained, "app's slow statement was not explained")
            self.assertTrue(any("app-value" in l for l in explained), explained)
            self.assertFalse(any("secret-of-other" in l for l in explained), explained)
        finally:
            superuser_sql("ALTER ROLE app RESET log_statement; DROP TABLE IF EXISTS exp_id")


class ZeroDowntime(unittest.TestCase):
    def test_sighup_and_pause_resume_under_64_clients(self):
        def tweak(c):
            c["pool"] = {"mode": "transaction", "size": 10}
            c["users"] = [u for u in c["users"] if u["name"] != "other"]
        seconds = max(12, min(SECONDS, 20))
        with Sluice(tweak=tweak) as sluice:
            ensure_pgbench_tables(sluice)
            bench = pgbench(sluice.port, "-c", "64", "-j", "4", "-T", str(seconds))
            wait_for(lambda: connected_clients(sluice) >= 64 or bench.poll() is not None,
                     timeout=15, what="pgbench's 64 clients")
            self.assertIsNone(bench.poll(), "pgbench ended early")
            with self.assertRaises(psycopg.OperationalError):
                psycopg.connect(sluice.dsn("other", "otherpass")).close()
            peak_before = max(admin(sluice, "SHOW POOLS")[0]["sv_active"] for _ in range(3))
            # SIGHUP: pool size 10 -> 20 and a new user.
            sluice.config["pool"]["size"] = 20
            sluice.config["users"].append({"name": "other", "password": "otherpass"})
            sluice.write_config()
            sluice.signal(signal.SIGHUP)
            wait_for(lambda: "reloaded" in sluice.log(), what="the reload")
            with psycopg.connect(sluice.dsn("other", "otherpass"), autocommit=True) as conn:
                self.assertEqual(conn.execute("SELECT current_user").fetchone()[0], "other")
            peak_after = 0
            for _ in range(20):
                peak_after = max(peak_after, admin(sluice, "SHOW POOLS")[0]["sv_active"] +
                                 admin(sluice, "SHOW POOLS")[0]["sv_idle"])
                time.sleep(0.05)
            # PAUSE: waits for the transactions in flight, holds the next ones; RESUME.
            t0 = time.time()
            admin(sluice, "PAUSE")
            paused_in = time.time() - t0
            pools = admin(sluice, "SHOW POOLS")
            self.assertEqual(sum(p["sv_active"] for p in pools), 0, pools)
            held = sum(p["cl_waiting"] for p in pools)
            time.sleep(1)  # the point: 64 clients held for 1 s by PAUSE, none of them failing
            admin(sluice, "RESUME")
            code, out, processed, failed, tps = pgbench_result(bench)
            print(f"pgbench -c 64 -T {seconds} over pool 10->20 (SIGHUP once all connected, "
                  "+user other), "
                  f"PAUSE took {paused_in * 1000:.0f} ms holding {held} clients, 1 s paused: "
                  f"{processed} transactions, {failed} failed, tps {tps}; server connections "
                  f"peak {peak_before} before / {peak_after} after the reload")
            self.assertEqual(code, 0, out)
            self.assertGreater(processed, 0)
            self.assertEqual(failed, 0, out)
            self.assertLessEqual(peak_before, 10)
            self.assertGreater(peak_after, 10)
            self.assertLessEqual(peak_after, 20)
            self.assertGreater(held, 0)

    def test_rolling_restart_with_so_reuseport(self):
        port = free_port()

        def tweak(c):
            c["listen"]["postgres"] = f"127.0.0.1:{port}"
            c["listen"]["so_reuseport"] = True
            c["pool"] = {"mode": "transaction", "size": 4}
        old = Sluice(tweak=tweak)
        old.port = port
        old.start()
        new = None
        console = None
        try:
            console = psycopg.connect(old.admin_dsn(), autocommit=True)
            client = psycopg.connect(old.dsn(), autocommit=True)
            client.execute("SELECT 1")
            new = Sluice(tweak=tweak)
            new.port = port
            new.start()
            deadline = time.time() + 10  # start() saw the old one's port: wait for the new one
            while time.time() < deadline:
                try:
                    if new.http("/healthz")[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.05)
            # Both listen on the port now.
            console.cursor().execute("SHUTDOWN WAIT_FOR_CLIENTS", prepare=False)
            for i in range(20):  # the old one stopped listening: every new client gets the new one
                r = psql(new.dsn(), "SELECT 1")
                self.assertEqual(r.returncode, 0)
            self.assertEqual(client.execute("SELECT 'still here'").fetchone()[0], "still here")
            self.assertTrue(old.alive(), "the old sluice left before its client")
            client.close()
            old.proc.wait(10)
            self.assertEqual(old.stop(), 0)
            print("rolling restart: 20 new clients served by the new sluice while the old one "
                  "drained its client, then exited 0")
        finally:
            try:
                if console:
                    console.close()
            except Exception:  # noqa: BLE001 - the old sluice closed it at exit
                pass
            if old.alive():
                old.stop()
            if new:
                self.assertEqual(new.stop(), 0)


class DeployPrometheus(unittest.TestCase):
    """deploy/prometheus: promtool accepts the config and the rules, the rules fire on sluice's
    series (promtool test rules), and every metric the rules and the dashboard use is one sluice
    exports (with the cache configured)."""
    DIR = os.path.join(ROOT, "deploy", "prometheus")
    LATER = {"sluice_cache_wal_listener_lag_bytes"}  # for a WAL-fed invalidation to come

    def promtool(self, *args):
        r = subprocess.run(["promtool", *args], cwd=self.DIR, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return r.stdout

    def test_promtool_checks_config_rules_and_rule_tests(self):
        out = self.promtool("check", "rules", "alerts.yml")
        print(out.strip().splitlines()[-1].strip())
        self.promtool("check", "config", "prometheus.yml")
        self.promtool("test", "rules", "alerts_test.yml")

    def test_rules_and_dashboard_use_exported_metrics(self):
        with open(os.path.join(self.DIR, "grafana-dashboard.json")) as f:
            dash = json.load(f)
        exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
        self.assertGreaterEqual(len(exprs), 10)
        with open(os.path.join(self.DIR, "alerts.yml")) as f:
            exprs.append(f.read())
        used = set(re.findall(r"\b((?:sluice|process)_[a-z_]+)", " ".join(exprs)))
        def with_cache(c):
            transaction_pool(2)(c)
            c["cache"] = {"redis": f"redis://127.0.0.1:{state()['redis_port']}",
                          "admission": "always"}
        with Sluice(tweak=with_cache) as sluice:
            status, body = sluice.http("/metrics")
        exported = set(re.findall(r"^# TYPE (\S+) ", body, re.M))
        for name in list(exported):
            if name.endswith("_seconds") or name.endswith("_bytes"):
                exported |= {name + "_bucket", name + "_sum", name + "_count"}
        missing = sorted(used - exported - self.LATER)
        self.assertEqual(missing, [], f"used but not exported: {missing}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
