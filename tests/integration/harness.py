"""Shared pieces of sluice's integration tests: the running cluster (cluster.py), a sluice process
per test with its own config and port, and psql/pgbench helpers. Tests use unittest and real
clients only (psql, pgbench, psycopg/libpq, and pgwire.py for raw protocol cases)."""
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ENV_DIR = os.environ.get("SLUICE_TEST_ENV", "/tmp/sluice-it-manual")
SLUICE = os.environ.get("SLUICE_BIN", os.path.join(ROOT, "build", "release", "sluice"))
APP_PASSWORD = "secret"
OPS_PASSWORD = "opspass"  # admin console user of the default config (not a server role)


def state():
    with open(os.path.join(ENV_DIR, "state.json")) as f:
        return json.load(f)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def direct_dsn(user="app", password=APP_PASSWORD, db="appdb", **params):
    st = state()
    return make_dsn(st["primary_port"], user, password, db, **params)


def make_dsn(port, user="app", password=APP_PASSWORD, db="appdb", **params):
    params.setdefault("sslmode", "disable")
    extra = " ".join(f"{k}={v}" for k, v in params.items())
    return f"host=127.0.0.1 port={port} user={user} password={password} dbname={db} {extra}"


def default_config(port):
    st = state()
    return {
        "listen": {"postgres": f"127.0.0.1:{port}", "http": f"127.0.0.1:{free_port()}"},
        "databases": {"appdb": {"primary": {"host": "127.0.0.1", "port": st["primary_port"]},
                                "replicas": [{"host": "127.0.0.1", "port": st["replica_port"]}]}},
        "users": [{"name": "app", "password": APP_PASSWORD},
                  {"name": "other", "password": "otherpass"},
                  {"name": "md5user", "password": "md5pass"},
                  {"name": "ops", "password": OPS_PASSWORD}],
        "admin": {"users": ["ops"], "stats_users": ["app"]},
        "pool": {"mode": "session", "size": 40},
        # Read routing has its own tests (test_routing.py); elsewhere every statement runs on
        # the primary, so a test never reads from a replica that has not caught up yet.
        "routing": {"enabled": False},
        "tls": {"cert": f"{st['certs']}/server.crt", "key": f"{st['certs']}/server.key"},
        "log": {"level": "info"},
    }


class Sluice:
    """One sluice process. JSON is valid YAML, so configs are written as JSON."""

    def __init__(self, config=None, tweak=None):
        self.port = free_port()
        self.config = config or default_config(self.port)
        if tweak:
            tweak(self.config)
        self.dir = tempfile.mkdtemp(prefix="sluice-test-")
        self.config_path = os.path.join(self.dir, "sluice.yaml")
        self.log_path = os.path.join(self.dir, "sluice.log")
        self.proc = None

    def write_config(self):
        # Tests that replace `users` keep the admin lists valid (sluice refuses admin users
        # that are not under users:).
        admin, names = self.config.get("admin"), {u["name"] for u in self.config.get("users", [])}
        if admin:
            for key in ("users", "stats_users"):
                admin[key] = [n for n in admin.get(key, []) if n in names]
        with open(self.config_path, "w") as f:
            json.dump(self.config, f, indent=2)

    def start(self):
        """Starts sluice and returns once THIS process listens on its ports: the log says so
        (anything else answering on the port does not count). A port another process took
        between free_port() and the bind is replaced and sluice started again."""
        for attempt in range(5):
            self.write_config()
            self.log_file = open(self.log_path, "w")
            self.proc = subprocess.Popen([SLUICE, "--config", self.config_path],
                                         stdout=self.log_file, stderr=subprocess.STDOUT)
            if self._wait_listening():
                return self
            log = self.log()
            self.log_file.close()
            if "already in use" not in log.lower() or attempt == 4:
                raise RuntimeError(f"sluice exited early:\n{log}")
            self._move_ports()
        raise AssertionError("unreachable")

    def _wait_listening(self, timeout=30):
        """True once the log says sluice listens on self.port; False if it exited first."""
        host = self.config.get("listen", {}).get("postgres", "127.0.0.1:0").rsplit(":", 1)[0]
        mark = f"listening on {host.strip('[]')}:{self.port} (postgres)"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return False
            if mark in self.log():
                return True
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"sluice did not start listening within {timeout} s:\n{self.log()}")

    def _move_ports(self):
        """Gives every loopback listener of the config a fresh port (another process took one)."""
        listen = self.config.get("listen", {})
        for key, value in listen.items():
            if isinstance(value, str) and value.startswith("127.0.0.1:"):
                listen[key] = f"127.0.0.1:{free_port()}"
        pg = listen.get("postgres", "")
        if pg.startswith("127.0.0.1:"):
            self.port = int(pg.rsplit(":", 1)[1])

    def dsn(self, user="app", password=APP_PASSWORD, db="appdb", **params):
        return make_dsn(self.port, user, password, db, **params)

    def url(self, user="app", password=APP_PASSWORD, db="appdb"):
        return f"postgres://{user}:{password}@127.0.0.1:{self.port}/{db}"

    def admin_dsn(self, user="ops", password=OPS_PASSWORD):
        return make_dsn(self.port, user, password, "sluice")

    def http_port(self):
        return int(self.config["listen"]["http"].rsplit(":", 1)[1])

    def http(self, path, method="GET", attempts=20):
        """(status, body text) of a request to sluice's HTTP endpoint. A refused connection is
        retried for a few seconds (the listener may come up a moment after the Postgres one)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port()}{path}", method=method)
        for attempt in range(attempts):
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
            except urllib.error.URLError as e:
                refused = isinstance(e.reason, ConnectionRefusedError)
                if not refused or attempt == attempts - 1:
                    raise
                time.sleep(0.25)
        raise AssertionError("unreachable")

    def metrics(self):
        """Samples of /metrics: {'name{labels}': value} (labels as written by sluice)."""
        status, body = self.http("/metrics")
        assert status == 200, body
        out = {}
        for line in body.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=40):
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("sluice did not stop within the timeout")
        self.log_file.close()
        log = self.log()
        for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                       "ThreadSanitizer"):
            if marker in log:
                raise AssertionError(f"sanitizer report in the sluice log:\n{log[-4000:]}")
        # A session changed state outside the table in server/pg/phase.hpp (debug builds abort).
        if "is not a known transition" in log:
            line = next(l for l in log.splitlines() if "is not a known transition" in l)
            raise AssertionError(f"session state bug in the sluice log: {line}")
        return self.proc.returncode

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class SharedSluice(unittest.TestCase):
    """A test class whose cases share one sluice with the default config; it must exit 0."""

    @classmethod
    def setUpClass(cls):
        cls.sluice = Sluice().start()

    @classmethod
    def tearDownClass(cls):
        code = cls.sluice.stop()
        assert code == 0, f"sluice exited with {code}"


IN_CI = os.environ.get("SLUICE_CI") == "1"


def skip_or_fail(why):
    """Skips a test whose tool is missing on a developer's machine; under SLUICE_CI=1 (.ci/run
    sets it, and installs every tool) a missing tool is a failure, never a silent skip."""
    if IN_CI:
        raise AssertionError(f"SLUICE_CI=1 and a test would be skipped: {why}")
    raise unittest.SkipTest(why)


def wait_for(condition, timeout=15, interval=0.05, what="condition"):
    """Polls condition() until it returns a true value (returned), or fails after timeout."""
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def psql(dsn, sql=None, file=None, stdin=None, timeout=120, check=True, extra=()):
    cmd = ["psql", "-X", "-v", "ON_ERROR_STOP=0", "-d", dsn, *extra]
    if sql is not None:
        cmd += ["-c", sql]
    if file is not None:
        cmd += ["-f", file]
    r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"psql failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r


def superuser_sql(sql, db="appdb", port=None):
    """Runs SQL on the primary as the cluster superuser over its unix socket."""
    st = state()
    cmd = ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", st["sock_dir"], "-p",
           str(port or st["primary_port"]), "-d", db, "-c", sql]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", st["os_user"], "--"] + cmd
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()
