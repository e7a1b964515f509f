"""Failover with `hosts:` (servers listed without roles): sluice's health monitor learns every
host's role from pg_is_in_recovery() and the timeline each health_check_interval, and the pooler
follows it. Each scenario builds its own primary + streaming replica (cluster.up in a fresh
/tmp/sluice-failover-* directory, never the shared cluster of SLUICE_TEST_ENV) and breaks it:

1. unplanned failover under a TPC-B-like write load and a read-only client: the primary stopped
   -m fast, the replica promoted 1 s later;
2. planned switchover: PAUSE, stop, promote, RESUME: not one failed transaction;
3. split brain: the replica promoted while the old primary keeps running: the old one is fenced;
4. rejoin: the old primary rebuilt as a standby of the new one serves reads again, no reload;
5. an old primary restarted unchanged (writable, older timeline) stays fenced until it is rebuilt
   as a standby;
6. no primary at all: a write waits failover_timeout, then gets 57P03; reads go on, for logged-in
   clients and for a client that logs in meanwhile.

Times are taken on the client side (time.monotonic()) and printed as `figure:` lines; the bounds
asserted are the issue's (two health intervals plus an allowance for the client loop)."""
import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
from collections import Counter, namedtuple

import psycopg

import cluster
from harness import APP_PASSWORD, OPS_PASSWORD, Sluice, free_port, wait_for

PG_BIN = cluster.PG_BIN
INTERVAL = 0.25          # health_check_interval of every scenario
ALLOWANCE = 0.5          # the client loop: a transaction in flight, the poll step, a busy machine
BOUND = 2 * INTERVAL + ALLOWANCE
FAILOVER_TIMEOUT = 15    # failover_timeout (s) of scenarios 1-5: every wait stays bounded
CLIENTS = 32             # the TPC-B clients
READS_BACK = 5.0         # s from a rejoined host's replica role to the first read routed to it
ACCOUNTS = 1000
KEEP = os.environ.get("SLUICE_KEEP_FAILOVER_DIRS") == "1"

Txn = namedtuple("Txn", "client start end ok port sqlstate error")
LSN_SQL = "SELECT pg_current_wal_insert_lsn(), pg_current_wal_lsn()"
HOST_COLUMNS = ("database", "host", "port", "role", "timeline", "in_recovery", "error")


def now():
    return time.monotonic()


def timeline_number(value):
    """A timeline as sluice shows it (2, Decimal 2, "2", or the WAL file name's "00000002") as an
    int; None when unknown."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return int(value, 16) if len(value) == 8 else int(value)
    return int(value)


def first_line(e):
    return (str(e).strip().splitlines() or [""])[0]


# ---------------------------------------------------------------------------------------------
# The servers of one scenario.

class Servers:
    """A fresh primary + streaming replica (cluster.up) in its own /tmp/sluice-failover-* dir.
    `a` is the port of the server that starts as the primary, `b` the one that starts as the
    replica; the data dirs keep cluster.py's names (primary/, replica/) whatever their role."""

    def __init__(self, base):
        self.base = base
        cluster.up(self.base)
        with open(os.path.join(self.base, "state.json")) as f:
            self.st = json.load(f)
        self.a, self.b = self.st["primary_port"], self.st["replica_port"]
        self.dirs = {self.a: self.st["primary_dir"], self.b: self.st["replica_dir"]}
        self.logs = {self.a: f"{self.base}/primary.log", self.b: f"{self.base}/replica.log"}

    def pg_ctl(self, port, *args, timeout=60):
        cmd = [f"{PG_BIN}/pg_ctl", "-D", self.dirs[port], *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.st["os_user"], "--"] + cmd
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"pg_ctl {' '.join(args)} on :{port}: {r.stdout}{r.stderr}"
        return r

    def stop(self, port, mode="fast"):
        self.pg_ctl(port, "-m", mode, "-w", "stop")

    def start(self, port):
        self.pg_ctl(port, "-l", self.logs[port], "-w", "start")

    def promote(self, port):
        """pg_ctl promote -w: returns once the server accepts writes."""
        self.pg_ctl(port, "-w", "promote")

    def sql(self, port, sql, db="appdb"):
        """SQL as the cluster superuser over the unix socket, straight to one server."""
        return cluster.psql(port, sql, db=db, sockdir=self.st["sock_dir"]).stdout.strip()

    def in_recovery(self, port):
        try:
            return self.sql(port, "SELECT pg_is_in_recovery()", db="postgres") == "t"
        except subprocess.CalledProcessError:
            return None

    def rebuild_as_standby(self, port, upstream):
        """Replaces the stopped server on `port` by a fresh pg_basebackup -R of `upstream` (with a
        slot of its own) on the same port and data dir, and starts it as a standby. Returns how
        long the steps took."""
        shutil.rmtree(self.dirs[port])
        t0 = now()
        # A promotion leaves a spread checkpoint running, which the backup's would wait for.
        self.sql(upstream, "CHECKPOINT", db="postgres")
        passfile = f"{self.base}/pgpass-rejoin"
        with open(passfile, "w") as f:
            f.write(f"127.0.0.1:{upstream}:*:repl:replpass\n")
        cluster.chown_tree(self.base)
        os.chmod(passfile, 0o600)
        cluster.as_server_user(["env", f"PGPASSFILE={passfile}", f"{PG_BIN}/pg_basebackup",
                                "-h", "127.0.0.1", "-p", str(upstream), "-U", "repl",
                                "-D", self.dirs[port], "-R", "-X", "stream", "-C",
                                "-S", f"rejoin_{port}", "-c", "fast"],
                               capture_output=True, timeout=120)
        t_copied = now()
        # The copy carries the upstream's `port =` line: a later line wins.
        with open(f"{self.dirs[port]}/postgresql.conf", "a") as f:
            f.write(f"\nport = {port}\n")
        self.start(port)
        return (f"checkpoint + pg_basebackup {t_copied - t0:.2f} s, "
                f"pg_ctl start {now() - t_copied:.2f} s")

    def read_only_errors(self):
        """Server log lines of writes that reached a server in recovery."""
        out = []
        for path in self.logs.values():
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    out += [l.rstrip() for l in f
                            if re.search(r"cannot execute .* in a read-only transaction", l)]
        return out

    @staticmethod
    def down(base, remove):
        cluster.down(base)
        if remove:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"kept {base} (server logs)")


# ---------------------------------------------------------------------------------------------
# sluice, its admin console and its HTTP endpoint.

def failover_config(st, failover_timeout=FAILOVER_TIMEOUT):
    """`hosts:` lists the primary, then the replica; users and admin as in harness.default_config;
    transaction pooling with read routing (health_user app, as test_routing.py has it)."""
    return {
        "listen": {"postgres": "127.0.0.1:0", "http": f"127.0.0.1:{free_port()}"},
        "databases": {"appdb": {"hosts": [{"host": "127.0.0.1", "port": st["primary_port"]},
                                          {"host": "127.0.0.1", "port": st["replica_port"]}]}},
        "users": [{"name": "app", "password": APP_PASSWORD},
                  {"name": "other", "password": "otherpass"},
                  {"name": "md5user", "password": "md5pass"},
                  {"name": "ops", "password": OPS_PASSWORD}],
        "admin": {"users": ["ops"], "stats_users": ["app"]},
        "pool": {"mode": "transaction", "size": 40},
        # ban_time as in test_routing.py: a replica that failed a check is tried again soon.
        "routing": {"enabled": True, "health_user": "app", "ban_time": "2s"},
        "health_check_interval": f"{int(INTERVAL * 1000)}ms",
        "failover_timeout": f"{failover_timeout}s",
        "tls": {"cert": f"{st['certs']}/server.crt", "key": f"{st['certs']}/server.key"},
        "log": {"level": "info"},
    }


class Admin:
    """One admin console connection (simple protocol), reopened after an error."""

    def __init__(self, sluice):
        self.sluice, self.conn = sluice, None

    def rows(self, sql):
        for attempt in range(3):
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.sluice.admin_dsn(), autocommit=True,
                                                prepare_threshold=None, connect_timeout=10)
                cur = self.conn.cursor()
                cur.execute(sql, prepare=False)
                if cur.description is None:
                    return []
                names = [d.name for d in cur.description]
                return [dict(zip(names, row)) for row in cur.fetchall()]
            except psycopg.OperationalError:
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.1)

    def hosts(self):
        """SHOW HOSTS of appdb: {port: row}."""
        out = {}
        for r in self.rows("SHOW HOSTS"):
            if r.get("database") == "appdb":
                out[int(r["port"])] = r
        return out

    def roles(self):
        return {port: r["role"] for port, r in self.hosts().items()}

    def close(self):
        if self.conn is not None:
            self.conn.close()


def describe_hosts(hosts):
    return "; ".join(f":{p} {r['role']} tl={r['timeline']!r} in_recovery={r['in_recovery']!r}"
                     + (f" error={r['error']!r}" if r.get("error") else "")
                     for p, r in sorted(hosts.items()))


def wait_roles(admin, want, timeout=15, step=0.02):
    """Polls SHOW HOSTS until every port in `want` has its role; returns when (monotonic)."""
    deadline = now() + timeout
    while True:
        roles = admin.roles()
        if all(roles.get(p) == r for p, r in want.items()):
            return now()
        if now() > deadline:
            raise AssertionError(f"SHOW HOSTS never showed {want} within {timeout} s: "
                                 f"{describe_hosts(admin.hosts())}")
        time.sleep(step)


def status_hosts(sluice):
    """/status "hosts" of appdb: {address: object}."""
    code, body = sluice.http("/status")
    assert code == 200, body
    return {h["address"]: h for h in json.loads(body)["hosts"] if h.get("database") == "appdb"}


def metric(sluice, name, *needles):
    """Samples of metric `name` whose labels contain every needle: {key: value}."""
    return {k: v for k, v in sluice.metrics().items()
            if k.split("{", 1)[0] == name and all(n in k for n in needles)}


def role_gauge(sluice, port, role):
    """sluice_host_role{database="appdb",server=<addr>,role=<role>} (None when absent)."""
    found = metric(sluice, "sluice_host_role", 'database="appdb"', f'role="{role}"',
                   f'127.0.0.1:{port}"')
    return next(iter(found.values()), None)


def role_changes(sluice):
    return sum(metric(sluice, "sluice_role_changes_total", 'database="appdb"').values())


# ---------------------------------------------------------------------------------------------
# Load: TPC-B-like writers and one read-only client, each recording every transaction.

SETUP_SQL = (
    "CREATE TABLE fo_accounts (aid int PRIMARY KEY, abalance int NOT NULL DEFAULT 0); "
    f"INSERT INTO fo_accounts (aid) SELECT g FROM generate_series(1, {ACCOUNTS}) g; "
    "CREATE TABLE fo_history (id bigserial PRIMARY KEY, aid int, delta int, client int, "
    "mtime timestamptz DEFAULT now())")


def create_tables(sluice):
    """The workload's tables, made through sluice (they reach the primary, then the replica)."""
    with psycopg.connect(sluice.dsn(), autocommit=True, connect_timeout=10) as conn:
        for stmt in SETUP_SQL.split("; "):
            conn.execute(stmt)


class Load:
    """`clients` threads loop transactions (UPDATE an account, INSERT a history row, SELECT
    inet_server_port(), COMMIT; autocommit off) and, with `reader`, one thread loops autocommit
    reads; every attempt is recorded (a failure does not stop the loop; a broken connection is
    reopened). stop() ends them all."""

    def __init__(self, dsn, clients=CLIENTS, reader=True):
        self.dsn, self.clients, self.reader = dsn, clients, reader
        self.writes, self.reads = [], []
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = []

    def start(self):
        self.threads = [threading.Thread(target=self._writer, args=(i,), daemon=True)
                        for i in range(self.clients)]
        if self.reader:
            self.threads.append(threading.Thread(target=self._reader, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout=FAILOVER_TIMEOUT + 15):
        """Ends the threads; returns how many did not end within the timeout."""
        self.done.set()
        deadline = now() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - now()))
        return sum(t.is_alive() for t in self.threads)

    def _record(self, into, txn):
        with self.lock:
            into.append(txn)

    def _loop(self, client, into, body, autocommit):
        conn = None
        while not self.done.is_set():
            start = now()
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=autocommit, connect_timeout=10)
                port = body(conn)
                self._record(into, Txn(client, start, now(), True, port, None, None))
            except psycopg.Error as e:
                self._record(into, Txn(client, start, now(), False, None,
                                       getattr(e, "sqlstate", None), first_line(e)))
                if conn is not None:
                    try:
                        if conn.broken or conn.closed:
                            raise psycopg.OperationalError("broken")
                        conn.rollback()
                    except psycopg.Error:
                        conn.close()
                        conn = None
                time.sleep(0.02)
        if conn is not None:
            conn.close()

    def _writer(self, client):
        rnd = random.Random(client)

        def txn(conn):
            aid, delta = rnd.randint(1, ACCOUNTS), rnd.randint(-5000, 5000)
            with conn.cursor() as cur:
                cur.execute("UPDATE fo_accounts SET abalance = abalance + %s WHERE aid = %s",
                            (delta, aid))
                cur.execute("INSERT INTO fo_history (aid, delta, client) VALUES (%s, %s, %s)",
                            (aid, delta, client))
                port = cur.execute("SELECT inet_server_port()").fetchone()[0]
            conn.commit()
            return port
        self._loop(client, self.writes, txn, autocommit=False)

    def _reader(self):
        def read(conn):
            port = conn.execute("SELECT inet_server_port(), count(*) FROM fo_accounts "
                                "WHERE abalance > 0").fetchone()[0]
            time.sleep(0.01)
            return port
        self._loop("reader", self.reads, read, autocommit=True)

    def snapshot(self):
        with self.lock:
            return list(self.writes), list(self.reads)

    def ok_on(self, port):
        with self.lock:
            return sum(1 for t in self.writes if t.ok and t.port == port)

    def first_ok_on(self, port, after=0.0):
        """End of the first write committed on `port` that started after `after` (or None)."""
        with self.lock:
            ends = [t.end for t in self.writes if t.ok and t.port == port and t.start >= after]
        return min(ends) if ends else None


def describe_failures(txns, t0):
    """Failures grouped by SQLSTATE and message, with when they started (s after t0)."""
    groups = {}
    for t in txns:
        if not t.ok:
            groups.setdefault((t.sqlstate, t.error), []).append(t.start - t0)
    return "; ".join(f"{n}x {state} {msg!r} (started {min(ts):+.2f}..{max(ts):+.2f} s)"
                     for (state, msg), ts in sorted(groups.items(), key=lambda kv: -len(kv[1]))
                     for n in [len(ts)]) or "none"


def by_port(txns, pred=lambda t: True):
    """Successful transactions per server port, of those matching pred."""
    return dict(Counter(t.port for t in txns if t.ok and pred(t)))


def latency(txns):
    return max((t.end - t.start for t in txns), default=0.0)


# ---------------------------------------------------------------------------------------------

class Failover(unittest.TestCase):

    def setUp(self):
        self.passed = False

    def servers(self):
        base = tempfile.mkdtemp(prefix="sluice-failover-", dir="/tmp")
        # Registered before cluster.up: a failed start still stops what it started.
        self.addCleanup(lambda: Servers.down(base, remove=self.passed and not KEEP))
        return Servers(base)

    def sluice(self, servers, **kw):
        sluice = Sluice(config=failover_config(servers.st, **kw))
        sluice.config["listen"]["postgres"] = f"127.0.0.1:{sluice.port}"
        sluice.start()

        def stop():
            code = sluice.stop()
            if not self.passed or KEEP:
                print(f"sluice log: {sluice.log_path}")
            self.assertEqual(code, 0, f"sluice exited with {code}")
        self.addCleanup(stop)
        admin = Admin(sluice)
        self.addCleanup(admin.close)
        return sluice, admin

    def ready(self, servers, sluice, admin):
        """sluice's first checks done (a primary, a replica) and the workload's tables made."""
        wait_roles(admin, {servers.a: "primary", servers.b: "replica"})
        create_tables(sluice)
        # The replica has the tables before a read is routed to it.
        def replayed():
            try:
                return servers.sql(servers.b, "SELECT count(*) FROM fo_accounts") == str(ACCOUNTS)
            except subprocess.CalledProcessError:  # not replayed yet: no such table
                return False
        wait_for(replayed, timeout=15, what="the replica to replay the tables")

    def fenced_line(self, sluice):
        return next((l for l in sluice.log().splitlines() if "fenced" in l), None)

    # -----------------------------------------------------------------------------------------

    def test_1_unplanned_failover_under_load(self):
        servers = self.servers()
        old, new = servers.a, servers.b
        sluice, admin = self.sluice(servers)
        self.ready(servers, sluice, admin)
        changes_before = role_changes(sluice)

        load = Load(sluice.dsn()).start()
        try:
            wait_for(lambda: load.ok_on(old) >= 200, timeout=20, what="200 commits on the primary")
            time.sleep(2)
            t_stop = now()
            servers.stop(old, "fast")
            t_stopped = now()
            # Writers wait for a primary meanwhile: SHOW CLIENTS shows the wait.
            time.sleep(0.7)
            clients = [c for c in admin.rows("SHOW CLIENTS") if c.get("database") == "appdb"]
            waiting = [c for c in clients if c.get("state") == "waiting" or
                       (c.get("wait") or 0) * 1_000_000 + (c.get("wait_us") or 0) > 0]
            longest_wait = max(((c.get("wait") or 0) + (c.get("wait_us") or 0) / 1e6
                                for c in clients), default=0.0)
            hosts_in_gap = admin.hosts()
            time.sleep(max(0.0, t_stopped + 1.0 - now()))
            servers.promote(new)
            t_promote = now()
            first_new = wait_for(lambda: load.first_ok_on(new), timeout=FAILOVER_TIMEOUT + 5,
                                 interval=0.01, what="a commit on the new primary")
            time.sleep(3)
        finally:
            stuck = load.stop()
        writes, reads = load.snapshot()

        failed = [t for t in writes if not t.ok]
        per_client = Counter(t.client for t in failed)
        after_first = [t for t in writes if t.start > first_new]
        failed_after = [t for t in after_first if not t.ok]
        on_old_after = [t for t in writes if t.ok and t.port == old and t.start > t_stopped]
        read_failed = [t for t in reads if not t.ok]
        gap = [t for t in writes if t.ok and t.end > t_stop]
        print(f"\nfigure 1: {len(writes)} write transactions ({CLIENTS} clients), "
              f"{len(reads)} autocommit reads; pg_ctl stop -m fast took "
              f"{t_stopped - t_stop:.2f} s, promote returned {t_promote - t_stop:.2f} s after "
              f"the stop began")
        print(f"figure 1: first commit on the new primary {first_new - t_promote:+.3f} s after "
              f"promote returned (bound {BOUND:.2f} s)")
        print(f"figure 1: failed writes {len(failed)} (bound {CLIENTS}), most per client "
              f"{max(per_client.values(), default=0)}: {describe_failures(writes, t_stop)}")
        print(f"figure 1: writes started after the first commit on the new primary: "
              f"{len(after_first)}, failed {len(failed_after)}")
        print(f"figure 1: longest write transaction that ended after the stop: "
              f"{latency(gap):.2f} s; SHOW CLIENTS 0.7 s after the stop: {len(waiting)} of "
              f"{len(clients)} appdb clients waiting, longest wait {longest_wait:.2f} s")
        print(f"figure 1: SHOW HOSTS 0.7 s after the stop: {describe_hosts(hosts_in_gap)}")
        print(f"figure 1: read-only client: {len(reads)} reads, {len(read_failed)} failed "
              f"({describe_failures(reads, t_stop)}), longest {latency(reads):.2f} s, by port "
              f"before the stop {by_port(reads, lambda t: t.end < t_stop)}, after the promote "
              f"{by_port(reads, lambda t: t.start > t_promote)}")
        hosts = admin.hosts()
        print(f"figure 1: SHOW HOSTS after: {describe_hosts(hosts)}; role changes "
              f"{changes_before:.0f} -> {role_changes(sluice):.0f}")

        self.assertEqual(stuck, 0, "client threads did not stop")
        self.assertLessEqual(first_new - t_promote, BOUND)
        self.assertLessEqual(len(failed), CLIENTS, describe_failures(writes, t_stop))
        # The cut transaction gets the server's error once; the client's next one waits.
        self.assertLessEqual(max(per_client.values(), default=0), 1, per_client)
        self.assertEqual(failed_after, [], "a transaction failed after the new primary took writes")
        self.assertEqual(on_old_after, [])
        self.assertEqual(servers.read_only_errors(), [], "writes reached a server in recovery")
        # The issue wants no failed read-only transaction. Under this write load global read
        # consistency sends a read to the primary whenever the replica is more than
        # max_consistency_wait behind; one in flight there when it stops runs again once a
        # primary is elected (test 8 makes that case on purpose; before that retry, about 1 run
        # in 9 cut one read here).
        self.assertEqual(read_failed, [], describe_failures(reads, t_stop))
        self.assertGreater(len(waiting), 0, "SHOW CLIENTS showed no waiting writer")
        # Observability: the new primary, the old host unknown (down), a role change counted.
        self.assertLessEqual(set(HOST_COLUMNS), set(hosts[new]), "SHOW HOSTS columns")
        self.assertEqual(hosts[new]["role"], "primary", describe_hosts(hosts))
        self.assertEqual(timeline_number(hosts[new]["timeline"]), 2, describe_hosts(hosts))
        self.assertEqual(hosts[old]["role"], "unknown", describe_hosts(hosts))
        self.assertIn(hosts[old]["timeline"], ("", None), describe_hosts(hosts))
        self.assertTrue(hosts[old]["error"], describe_hosts(hosts))
        status = status_hosts(sluice)
        self.assertLessEqual({"database", "address", "role", "timeline", "error"},
                             set(status[f"127.0.0.1:{new}"]), status)
        self.assertEqual(status[f"127.0.0.1:{new}"]["role"], "primary", status)
        self.assertEqual(timeline_number(status[f"127.0.0.1:{new}"]["timeline"]), 2, status)
        self.assertEqual(status[f"127.0.0.1:{old}"]["role"], "unknown", status)
        self.assertTrue(status[f"127.0.0.1:{old}"]["error"], status)
        self.assertGreater(role_changes(sluice), changes_before)
        self.assertEqual(role_gauge(sluice, new, "primary"), 1)
        self.assertEqual(role_gauge(sluice, new, "replica"), 0)
        self.assertEqual(role_gauge(sluice, old, "unknown"), 1)
        self.passed = True

    def test_2_planned_switchover(self):
        servers = self.servers()
        old, new = servers.a, servers.b
        sluice, admin = self.sluice(servers)
        self.ready(servers, sluice, admin)

        load = Load(sluice.dsn()).start()
        try:
            wait_for(lambda: load.ok_on(old) >= 200, timeout=20, what="200 commits on the primary")
            time.sleep(1)
            t_pause = now()
            admin.rows("PAUSE appdb")
            t_paused = now()
            servers.stop(old, "fast")
            t_stopped = now()
            servers.promote(new)
            t_promoted = now()
            hosts_at_resume = admin.hosts()
            admin.rows("RESUME appdb")
            t_resume = now()
            first_new = wait_for(lambda: load.first_ok_on(new), timeout=FAILOVER_TIMEOUT + 5,
                                 interval=0.01, what="a commit on the new primary")
            time.sleep(2)
        finally:
            stuck = load.stop()
        writes, reads = load.snapshot()
        failed = [t for t in writes if not t.ok]
        read_failed = [t for t in reads if not t.ok]
        held = [t for t in writes if t.start < t_resume and t.end > t_paused]
        print(f"\nfigure 2: PAUSE took {t_paused - t_pause:.3f} s, stop "
              f"{t_stopped - t_paused:.2f} s, promote {t_promoted - t_stopped:.2f} s; RESUME "
              f"{t_resume - t_pause:.2f} s after PAUSE began; first commit on the new primary "
              f"{first_new - t_resume:+.3f} s after RESUME")
        print(f"figure 2: SHOW HOSTS at RESUME: {describe_hosts(hosts_at_resume)}")
        print(f"figure 2: {len(writes)} write transactions, {len(failed)} failed "
              f"({describe_failures(writes, t_pause)}); longest client-side write "
              f"{latency(writes):.3f} s ({len(held)} held across the pause, longest "
              f"{latency(held):.3f} s)")
        print(f"figure 2: read-only client: {len(reads)} reads, {len(read_failed)} failed "
              f"({describe_failures(reads, t_pause)}), longest {latency(reads):.3f} s")
        self.assertEqual(stuck, 0, "client threads did not stop")
        self.assertEqual(failed, [], describe_failures(writes, t_pause))
        self.assertEqual(read_failed, [], describe_failures(reads, t_pause))
        self.assertEqual([t for t in writes if t.ok and t.port == old and t.end > t_paused], [])
        self.assertEqual(servers.read_only_errors(), [], "writes reached a server in recovery")
        self.passed = True

    def test_3_split_brain_fences_the_older_timeline(self):
        servers = self.servers()
        old, new = servers.a, servers.b
        sluice, admin = self.sluice(servers)
        self.ready(servers, sluice, admin)
        self.assertIsNone(self.fenced_line(sluice))

        load = Load(sluice.dsn()).start()
        try:
            wait_for(lambda: load.ok_on(old) >= 200, timeout=20, what="200 commits on the primary")
            time.sleep(1)
            servers.promote(new)  # the old primary keeps running: two writable hosts
            t_promote = now()
            t_fenced = wait_roles(admin, {old: "fenced", new: "primary"}, timeout=10)
            first_new = wait_for(lambda: load.first_ok_on(new), timeout=10, interval=0.01,
                                 what="a commit on the new primary")
            time.sleep(0.5)  # transactions in flight on the old host at the fence are over
            rows_fenced = int(servers.sql(old, "SELECT count(*) FROM fo_history"))
            hosts = admin.hosts()
            readyz = sluice.http("/readyz")
            status = status_hosts(sluice)
            gauge = role_gauge(sluice, old, "fenced")
            time.sleep(2)
        finally:
            stuck = load.stop()
        rows_after = int(servers.sql(old, "SELECT count(*) FROM fo_history"))
        writes, reads = load.snapshot()
        lost = [t for t in writes if t.ok and t.port == old and t.end > t_promote]
        after = [t for t in writes if t.start > t_fenced]
        reads_after = [t for t in reads if t.start > t_fenced]
        line = self.fenced_line(sluice)
        print(f"\nfigure 3: SHOW HOSTS showed the fence {t_fenced - t_promote:+.3f} s after "
              f"promote returned, first commit on the new primary {first_new - t_promote:+.3f} s "
              f"(bound {BOUND:.2f} s)")
        print(f"figure 3: commits on the old primary after the promote (before the fence): "
              f"{len(lost)}; fo_history rows on the old primary {rows_fenced} at the fence "
              f"+ 0.5 s, {rows_after} at the end")
        print(f"figure 3: {len(writes)} writes, {sum(not t.ok for t in writes)} failed "
              f"({describe_failures(writes, t_promote)}); after the fence: {len(after)} started, "
              f"on ports {dict(Counter(t.port for t in after))}")
        print(f"figure 3: reads after the fence by port "
              f"{dict(Counter(t.port for t in reads_after))},"
              f" failed {sum(not t.ok for t in reads)} ({describe_failures(reads, t_promote)})")
        print(f"figure 3: SHOW HOSTS {describe_hosts(hosts)}")
        print(f"figure 3: /readyz {readyz[0]} {readyz[1].strip()!r}; sluice_host_role fenced "
              f"{gauge}; log: {line}")
        self.assertEqual(stuck, 0, "client threads did not stop")
        self.assertLessEqual(t_fenced - t_promote, BOUND)  # the bound: the fence
        # The first commit there also waits for the transactions in flight on the old host and
        # for a new pool's first connections (an ASan build took +0.75 s here).
        self.assertLessEqual(first_new - t_promote, BOUND + 1.5)
        self.assertEqual(timeline_number(hosts[new]["timeline"]), 2, describe_hosts(hosts))
        self.assertEqual(timeline_number(hosts[old]["timeline"]), 1, describe_hosts(hosts))
        self.assertEqual(rows_after, rows_fenced, "writes reached the fenced old primary")
        self.assertEqual([t for t in after if not t.ok or t.port != new], [],
                         "a transaction started after the fence failed or ran on the old host")
        self.assertEqual([t for t in reads_after if t.ok and t.port == old], [],
                         "a read went to the fenced host")
        self.assertIsNotNone(line, "no log line says fenced")
        self.assertIn("fenced", readyz[1])
        self.assertIn(f"127.0.0.1:{old}", readyz[1])
        self.assertEqual(status[f"127.0.0.1:{old}"]["role"], "fenced", status)
        self.assertEqual(gauge, 1)
        self.passed = True

    def test_4_rejoin_as_replica(self):
        servers = self.servers()
        old, new = servers.a, servers.b
        sluice, admin = self.sluice(servers)
        self.ready(servers, sluice, admin)
        servers.stop(old, "fast")
        servers.promote(new)
        t_promote = now()
        t_primary = wait_roles(admin, {new: "primary"})
        with psycopg.connect(sluice.dsn(), autocommit=True, connect_timeout=10) as conn:
            port = conn.execute("INSERT INTO fo_history (aid, delta) VALUES (1, 1) "
                                "RETURNING inet_server_port()").fetchone()[0]
        self.assertEqual(port, new)
        down_row = admin.hosts()[old]

        t_rebuild = now()
        rebuild = servers.rebuild_as_standby(old, upstream=new)
        t_started = now()
        self.assertTrue(servers.in_recovery(old))
        t_replica = wait_roles(admin, {old: "replica", new: "primary"}, timeout=30)
        first_row = admin.hosts()[old]
        # What read routing works from (global read consistency: a replica serves a read once
        # it replayed the primary's WAL position the monitor read after the read arrived).
        replica_row = lambda: next((r for r in admin.rows("SHOW REPLICAS")
                                    if r.get("address") == f"127.0.0.1:{old}"), {})
        lsns = lambda: (f"primary insert/write LSN {servers.sql(new, LSN_SQL)}"
                        f", SHOW REPLICAS replay_lsn {replica_row().get('replay_lsn')} lag_bytes "
                        f"{replica_row().get('lag_bytes')}, consistent reads "
                        f"{metric(sluice, 'sluice_consistent_reads_total', 'appdb')}")
        at_replica = lsns()

        # Reads come back to it: a fresh autocommit connection per poll, then 100 reads.
        def read_port():
            with psycopg.connect(sluice.dsn(), autocommit=True, connect_timeout=10) as conn:
                return conn.execute("SELECT inet_server_port()").fetchone()[0]
        t_read = None
        while now() < t_replica + 20:  # measured well past the bound, to report the figure
            if read_port() == old:
                t_read = now()
                break
            time.sleep(0.05)
        at_read = lsns()
        ports = Counter()
        with psycopg.connect(sluice.dsn(), autocommit=True, connect_timeout=10) as conn:
            for _ in range(100):
                ports[conn.execute("SELECT inet_server_port()").fetchone()[0]] += 1
        hosts = admin.hosts()
        print(f"\nfigure 4: new primary in SHOW HOSTS {t_primary - t_promote:+.3f} s after "
              f"promote; old primary while down: role {down_row['role']!r} error "
              f"{down_row['error']!r}")
        print(f"figure 4: rebuild + start took {t_started - t_rebuild:.2f} s ({rebuild}); "
              f"SHOW HOSTS said replica {t_replica - t_started:+.3f} s after the start (that "
              f"row: in_recovery "
              f"{first_row['in_recovery']!r}, error {first_row['error']!r}); a read landed on it "
              + (f"{t_read - t_replica:+.3f} s after that" if t_read else "never within 20 s")
              + f"; then 100 reads by port {dict(ports)}")
        print(f"figure 4: when it became a replica: {at_replica}")
        print(f"figure 4: when the read landed (or 20 s): {at_read}")
        print(f"figure 4: SHOW HOSTS {describe_hosts(hosts)}")
        self.assertEqual(hosts[old]["role"], "replica")
        self.assertEqual(str(hosts[old]["in_recovery"]).lower(), "yes", describe_hosts(hosts))
        self.assertEqual(timeline_number(hosts[new]["timeline"]), 2)
        self.assertEqual(status_hosts(sluice)[f"127.0.0.1:{old}"]["role"], "replica")
        self.assertNotIn("reloaded ", sluice.log(), "the config was reloaded")
        self.assertEqual(servers.read_only_errors(), [], "writes reached a server in recovery")
        # Reads return to the rejoined replica, promptly (the bound is generous: a few rounds).
        self.assertIsNotNone(t_read, f"no read went to the rejoined replica in 20 s: {at_read}")
        self.assertLessEqual(t_read - t_replica, READS_BACK, at_replica)
        self.assertGreaterEqual(ports[old], 90, dict(ports))
        self.passed = True

    def test_5_old_primary_restarted_unchanged_stays_fenced_until_rebuilt(self):
        servers = self.servers()
        old, new = servers.a, servers.b
        sluice, admin = self.sluice(servers)
        self.ready(servers, sluice, admin)
        servers.stop(old, "fast")
        servers.promote(new)
        wait_roles(admin, {new: "primary"})

        servers.start(old)  # writable again, on timeline 1: the classic stale primary
        t_started = now()
        t_fenced = wait_roles(admin, {old: "fenced", new: "primary"}, timeout=10)
        rows = int(servers.sql(old, "SELECT count(*) FROM fo_history"))
        with psycopg.connect(sluice.dsn(), autocommit=True, connect_timeout=10) as conn:
            ports = Counter(conn.execute("INSERT INTO fo_history (aid, delta) VALUES (2, 2) "
                                         "RETURNING inet_server_port()").fetchone()[0]
                            for _ in range(20))
            reads = Counter(conn.execute("SELECT inet_server_port()").fetchone()[0]
                            for _ in range(20))
        readyz = sluice.http("/readyz")
        rows_after = int(servers.sql(old, "SELECT count(*) FROM fo_history"))
        servers.stop(old, "fast")
        time.sleep(3 * INTERVAL)
        while_down = admin.hosts()[old]
        servers.rebuild_as_standby(old, upstream=new)
        t_rebuilt = now()
        t_replica = wait_roles(admin, {old: "replica"}, timeout=30)
        print(f"\nfigure 5: the old primary restarted writable was fenced "
              f"{t_fenced - t_started:+.3f} s after its start; 20 writes by port {dict(ports)}, "
              f"20 reads by port {dict(reads)}; "
              f"/readyz {readyz[0]} {readyz[1].strip()!r}")
        print(f"figure 5: stopped again: role {while_down['role']!r}; rebuilt as a standby: "
              f"replica {t_replica - t_rebuilt:+.3f} s after its start")
        self.assertEqual(dict(ports), {new: 20})
        self.assertNotIn(old, reads)
        self.assertEqual(rows_after, rows, "writes reached the fenced old primary")
        self.assertIn("fenced", readyz[1])
        self.assertEqual(while_down["role"], "fenced", "a fenced host stays fenced until seen in "
                         "recovery")
        self.passed = True

    def test_7_hosts_added_and_removed_on_reload(self):
        servers = self.servers()
        primary, replica = servers.a, servers.b
        sluice, admin = self.sluice(servers)
        wait_roles(admin, {primary: "primary", replica: "replica"})
        # Only the primary listed: RELOAD drops the replica (its reads go to the primary).
        sluice.config["databases"]["appdb"]["hosts"] = [{"host": "127.0.0.1", "port": primary}]
        sluice.write_config()
        admin.rows("RELOAD")
        wait_for(lambda: set(admin.hosts()) == {primary}, timeout=10,
                 what="SHOW HOSTS to list the primary alone after RELOAD")
        with psycopg.connect(sluice.dsn(), autocommit=True, connect_timeout=10) as conn:
            ports = Counter(conn.execute("SELECT inet_server_port()").fetchone()[0]
                            for _ in range(20))
        self.assertEqual(dict(ports), {primary: 20})
        self.assertEqual(admin.roles(), {primary: "primary"})  # kept across the reload
        # Listed again: found as a replica at the next round, no restart.
        sluice.config["databases"]["appdb"]["hosts"].append({"host": "127.0.0.1",
                                                             "port": replica})
        sluice.write_config()
        t0 = now()
        admin.rows("RELOAD")
        t_replica = wait_roles(admin, {primary: "primary", replica: "replica"})
        print(f"\nfigure 7: a host added on RELOAD was a replica +{t_replica - t0:.3f} s after it")
        self.assertLessEqual(t_replica - t0, BOUND)
        self.passed = True

    def test_8_read_in_flight_on_the_dying_primary_runs_again_on_the_new_one(self):
        servers = self.servers()
        old, new = servers.a, servers.b
        sluice = Sluice(config=failover_config(servers.st))
        # Reads go to the primary (smooth round robin, weights 1000:1): a read judged whole is
        # in flight there when it stops. Eventual consistency: under global a replica behind the
        # database's mark is picked to wait on (an ASan CI run sent the read there).
        sluice.config["routing"].update({"primary_reads": "include", "primary_weight": 1000,
                                         "load_balancing": "round_robin",
                                         "read_consistency": "eventual"})
        sluice.config["listen"]["postgres"] = f"127.0.0.1:{sluice.port}"
        sluice.start()
        self.addCleanup(sluice.stop)
        admin = Admin(sluice)
        self.addCleanup(admin.close)
        wait_roles(admin, {old: "primary", new: "replica"})
        conn = psycopg.connect(sluice.dsn(), autocommit=True, connect_timeout=10)
        self.addCleanup(conn.close)
        self.assertEqual(conn.execute("SELECT inet_server_port()").fetchone()[0], old)
        result = {}

        def slow_read():
            t0 = now()
            try:
                result["row"] = conn.execute(
                    "SELECT count(*), inet_server_port() FROM generate_series(1, 40000000)"
                ).fetchone()
            except psycopg.Error as e:
                result["error"] = f"{e.sqlstate} {first_line(e)}"
            result["took"] = now() - t0
        t = threading.Thread(target=slow_read, daemon=True)
        t.start()
        time.sleep(0.5)
        servers.stop(old, "fast")
        time.sleep(1.0)
        servers.promote(new)
        t.join(FAILOVER_TIMEOUT + 10)
        retried = [l for l in sluice.log().splitlines() if "failed during a read" in l]
        print(f"\nfigure 8: a read in flight on the primary at its stop: {result}; "
              f"sluice: {retried[:1]}")
        self.assertFalse(t.is_alive())
        self.assertNotIn("error", result)
        self.assertEqual(result["row"], (40000000, new))
        self.assertTrue(retried, "the read was not retried (did it run on the primary?)")
        self.passed = True

    def test_9_read_only_pgbench_through_a_failover(self):
        servers = self.servers()
        old, new = servers.a, servers.b
        sluice, admin = self.sluice(servers)
        wait_roles(admin, {old: "primary", new: "replica"})
        env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGSSLMODE="disable")

        def pgbench(*args, timeout=120):
            return subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(sluice.port), "-U",
                                   "app", *args, "appdb"], env=env, capture_output=True,
                                  text=True, timeout=timeout)
        init = pgbench("-i", "-s", "1", "-q")
        self.assertEqual(init.returncode, 0, init.stderr)
        wait_for(lambda: servers.sql(new, "SELECT count(*) FROM pgbench_accounts") == "100000",
                 timeout=15, what="the replica to replay pgbench -i")
        # pgbench -S (default -j 1, as a new user runs it) across the stop and the promotion:
        # pgbench aborts a client at its first error, so exit 0 with every transaction counted
        # means none failed.
        run = subprocess.Popen(["pgbench", "-h", "127.0.0.1", "-p", str(sluice.port), "-U", "app",
                                "-S", "-c", "8", "-T", "8", "appdb"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)
        servers.stop(old, "fast")
        time.sleep(1.0)
        servers.promote(new)
        out, err = run.communicate(timeout=60)
        processed = next((l for l in out.splitlines()
                          if "number of transactions actually processed" in l), "")
        failed = next((l for l in out.splitlines() if "number of failed transactions" in l), "")
        print(f"\nfigure 9: pgbench -S -c 8 -T 8 across the failover: exit {run.returncode}; "
              f"{processed.strip()}; {failed.strip() or 'no failed-transactions line'}")
        self.assertEqual(run.returncode, 0, out[-1500:] + err[-1500:])
        self.assertNotIn("aborted", out + err)
        if failed:
            self.assertIn("number of failed transactions: 0 ", failed)
        self.passed = True

    def test_6_no_primary_write_waits_failover_timeout_then_57P03(self):
        servers = self.servers()
        old, replica = servers.a, servers.b
        sluice, admin = self.sluice(servers, failover_timeout=2)
        self.ready(servers, sluice, admin)
        # Clients logged in while there is a primary.
        writer = psycopg.connect(sluice.dsn(), connect_timeout=10)
        self.addCleanup(writer.close)
        reader = psycopg.connect(sluice.dsn(), autocommit=True, connect_timeout=10)
        self.addCleanup(reader.close)
        reader.execute("SELECT 1").fetchone()
        servers.stop(old, "fast")
        wait_roles(admin, {old: "unknown"})
        result = {}

        def write():
            t0 = now()
            try:
                writer.execute("UPDATE fo_accounts SET abalance = abalance + 1 WHERE aid = 1")
                writer.commit()
                result["ok"] = True
            except psycopg.Error as e:
                result["error"] = e
            finally:
                result["waited"] = now() - t0
        t = threading.Thread(target=write, daemon=True)
        t.start()
        time.sleep(1.0)
        clients = [c for c in admin.rows("SHOW CLIENTS") if c.get("database") == "appdb"]
        # Reads go on meanwhile, on the replica.
        reads = Counter()
        for _ in range(20):
            try:
                reads[reader.execute("SELECT inet_server_port()").fetchone()[0]] += 1
            except psycopg.Error as e:
                reads[f"{e.sqlstate} {first_line(e)}"] += 1
                break
        t.join(15)
        err = result.get("error")
        waits = [((c.get("wait") or 0) + (c.get("wait_us") or 0) / 1e6, c.get("state"))
                 for c in clients]
        print(f"\nfigure 6: write with no primary: {result.get('waited', -1):.2f} s, then "
              f"{getattr(err, 'sqlstate', None)} {first_line(err) if err else result!r}; "
              f"SHOW CLIENTS at 1 s (wait s, state): {waits}; 20 reads meanwhile by port "
              f"{dict(reads)}")
        self.assertFalse(t.is_alive())
        self.assertIsNotNone(err, "the write did not fail")
        self.assertEqual(err.sqlstate, "57P03")
        self.assertIn('no primary for database "appdb" after 2s (failover_timeout)', str(err))
        self.assertGreaterEqual(result["waited"], 1.9)
        self.assertLess(result["waited"], 2 + BOUND)
        self.assertTrue(any(w >= 0.5 for w, _ in waits), waits)
        self.assertEqual(dict(reads), {replica: 20})
        # A client that logs in while no primary is known reads from the replica too.
        t0 = now()
        port = None
        try:
            with psycopg.connect(sluice.dsn(), autocommit=True, connect_timeout=10) as conn:
                login = now() - t0
                port = conn.execute("SELECT inet_server_port()").fetchone()[0]
                outcome = f"logged in after {login:.2f} s, read on :{port}"
        except psycopg.Error as e:
            outcome = f"failed after {now() - t0:.2f} s: {first_line(e)}"
        print(f"figure 6: a client logging in with no primary: {outcome}")
        self.assertEqual(port, replica, outcome)
        self.passed = True


if __name__ == "__main__":
    unittest.main(verbosity=2)
