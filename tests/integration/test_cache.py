"""The Redis query cache against the real primary + delayed streaming replica + redis-server:
a randomized consistency checker over two sluice instances sharing one Redis (and the same checker
catching stale reads when invalidation is off), cross-instance invalidation over pub/sub without a
causal token (and the same check catching the stale read when the second instance has its own
Redis), role and row-level-security isolation, Redis killed under a 32-client cacheable load, the
extended protocol, hints, what is never cached, no lookups inside transactions, invalidation at
COMMIT, DDL and single-flighted misses."""
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import unittest

import psycopg

from harness import Sluice, state, superuser_sql, psql, free_port, wait_for
from test_pgbench import pgbench, check_run
from test_routing import set_apply_delay, wait_replayed, calls

TABLES = ["cc_a", "cc_b", "cc_c"]
ROWS = 20
XTABLE = "cc_x"  # read only by the cross-instance tests: no other read fetches its versions
# Seconds after a write by which another instance must serve the new value. Under the second that
# an instance keeps the versions it read (cache/cache.cpp Cache::versions): only the invalidation
# message, not that expiry, can make it in time.
CROSS_BOUND = 0.5


def cache_config(redis_port=None, routing=True, tweak_cache=None):
    def tweak(c):
        st = state()
        c["pool"] = {"mode": "transaction", "size": 20}
        c["health_check_interval"] = "200ms"
        c["routing"] = {"enabled": routing, "health_user": "app", "ban_time": "2s"}
        # Every miss stored (these tests check keys and invalidation; admission has its own).
        c["cache"] = {"redis": f"redis://127.0.0.1:{redis_port or st['redis_port']}",
                      "admission": "always"}
        if tweak_cache:
            tweak_cache(c["cache"])
    return tweak


def wait_catalog(sluice):
    """Until sluice has loaded the catalog and serves hits."""
    def ready():
        with psycopg.connect(sluice.dsn(), autocommit=True) as c:
            c.execute("SELECT count(*) FROM cc_a WHERE id = -1").fetchall()
        return metric(sluice, "sluice_cache_hits_total") > 0
    wait_for(ready, timeout=20, interval=0.2, what="the cache to serve a hit")


def metric(sluice, name, **labels):
    total = 0.0
    for k, v in sluice.metrics().items():
        if k == name or k.startswith(name + "{"):
            if all(f'{lk}="{lv}"' in k for lk, lv in labels.items()):
                total += v
    return total


def cache_counts(sluice):
    """(hits, misses, {bypass reason: count}) of one sluice."""
    hits = misses = 0.0
    bypass = {}
    for k, v in sluice.metrics().items():
        if k.startswith("sluice_cache_hits_total"):
            hits += v
        elif k.startswith("sluice_cache_misses_total"):
            misses += v
        elif k.startswith('sluice_cache_bypass_total{reason="'):
            bypass[k.split('"')[1]] = v
    return hits, misses, bypass


def redis_pid():
    st = state()
    with open(st["redis_pidfile"]) as f:
        return int(f.read().strip())


def redis_cli(*args):
    r = subprocess.run(["redis-cli", "-p", str(state()["redis_port"]), *args],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and not r.stdout.startswith("(error)"), r.stdout + r.stderr
    return r.stdout.strip()


def redis_answers(port):
    try:
        return subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                              text=True, timeout=5).stdout.strip() == "PONG"
    except subprocess.TimeoutExpired:
        return False


def start_redis():
    """The cluster's redis-server again, started as tests/integration/cluster.py starts it."""
    st = state()
    base = st["dir"]
    subprocess.run(["redis-server", "--bind", "127.0.0.1", "--port", str(st["redis_port"]),
                    "--save", "", "--appendonly", "no", "--daemonize", "yes",
                    "--pidfile", st["redis_pidfile"], "--logfile", f"{base}/redis.log"],
                   check=True, timeout=30)
    wait_for(lambda: redis_answers(st["redis_port"]), timeout=10, what="redis-server to answer")


def ensure_redis():
    """Restarts the cluster's redis-server if a test left it dead (later tests need it)."""
    if not redis_answers(state()["redis_port"]):
        start_redis()


def cross_instance_stale(a, b, rounds):
    """Writes through `a`, reads through `b` with no causal token. Each round: two new connections
    to `b` read row k (the second must be a hit on `b`: the row is cached there), one connection
    to `a` (kept, never told anything about `b`) increments it, then new connections to `b` read
    it until they show the new value. Returns the rounds where `b` still served the old value
    CROSS_BOUND seconds after the write returned (a read that started later still showed the
    old value), and the delays of the others."""
    stale, delays = [], []
    with psycopg.connect(a.dsn(), autocommit=True) as writer:
        for k in range(1, rounds + 1):
            sql = f"SELECT v FROM {XTABLE} WHERE id = {k}"
            # B reads the row until a read is a hit (the row is cached on B). A WAL follower
            # bumps each write once more when it reads the commit; the wait at the end of the
            # round keeps that second bump from dropping the copy B stores here.
            for _ in range(10):
                hits0, _, _ = cache_counts(b)
                with psycopg.connect(b.dsn(), autocommit=True) as r:
                    old = r.execute(sql).fetchone()[0]
                hits1, _, _ = cache_counts(b)
                if hits1 == hits0 + 1:
                    break
            assert hits1 == hits0 + 1, f"round {k}: no read on B was a hit"
            followed = follower_commits(a, b)
            new = writer.execute(f"UPDATE {XTABLE} SET v = v + 1 WHERE id = %s RETURNING v",
                                 (k,)).fetchone()[0]
            assert new == old + 1
            written = time.monotonic()
            while True:
                began = time.monotonic() - written
                with psycopg.connect(b.dsn(), autocommit=True, connect_timeout=5) as r:
                    got = r.execute(sql).fetchone()[0]
                if got == new:
                    delays.append(time.monotonic() - written)
                    break
                if began > CROSS_BOUND:
                    stale.append(f"round {k}: B served {got} in a read begun {began:.2f} s "
                                 f"after A wrote {new}")
                    break
            if followers(a, b):
                wait_for(lambda: follower_commits(a, b) > followed, timeout=10,
                         what=f"the WAL follower to read round {k}'s commit")
    return stale, delays


def followers(*instances):
    """How many of `instances` follow the WAL (hold the follower lease)."""
    return sum(metric(s, "sluice_wal_follower_leader") for s in instances)


def follower_commits(*instances):
    return sum(metric(s, "sluice_wal_follower_commits_total") for s in instances)


def wait_followed(instances, before):
    """Until the WAL follower (if one of `instances` follows) has bumped a commit since it had
    bumped `before`: a write through sluice is bumped again when the follower reads it."""
    if followers(*instances):
        wait_for(lambda: follower_commits(*instances) > before, timeout=10,
                 what="the WAL follower to read the commit")


def run_checker(instances, clients, operations, seed, tokens=True):
    """Random writes and cacheable reads by `clients` threads, each with a connection to every
    instance. Writes (v = v + 1 ... RETURNING) go to the client's home instance; reads go to any,
    carrying the client's last write LSN (SET sluice.min_lsn) to the others. Half the clients
    write 30% of the time, the others 0.5% (so their reads, long after their own last write, go
    to the delayed replica while the writers keep moving the versions). A read must show at
    least what this client last wrote (values only grow). Returns (violations, reads, writes)."""
    violations = []
    counts = {"reads": 0, "writes": 0}
    lock = threading.Lock()
    per_client = operations // clients

    def client(n):
        rnd = random.Random(seed * 1000 + n)
        conns = [psycopg.connect(s.dsn(), autocommit=True) for s in instances]
        home = (n // 2) % len(instances)
        own = {}  # (table, id) -> the value this client wrote last
        token = None  # SHOW sluice.last_write_lsn of the home instance after the last write
        told = [None] * len(instances)  # the token each instance's connection was given
        reads = writes = 0
        try:
            for _ in range(per_client):
                table = rnd.choice(TABLES)
                key = rnd.randint(1, ROWS)
                writer = n % 2 == 0
                # Writers leave the last table alone: its version stays old enough for the
                # replica to fill it.
                if rnd.random() < (0.3 if writer else 0.005) and (table != TABLES[-1] or
                                                                    not writer):
                    v = conns[home].execute(f"UPDATE {table} SET v = v + 1 WHERE id = %s "
                                            "RETURNING v", (key,)).fetchone()[0]
                    own[(table, key)] = v
                    if tokens:  # read routing on: the causal token for the other instance
                        # (simple protocol: sluice answers this SHOW itself only there)
                        token = conns[home].execute("SHOW sluice.last_write_lsn",
                                                    prepare=False).fetchone()[0]
                    writes += 1
                    continue
                i = rnd.randrange(len(instances))
                if i != home and token and told[i] != token:
                    conns[i].execute(f"SET sluice.min_lsn = '{token}'")
                    told[i] = token
                reads += 1
                if rnd.random() < 0.5:
                    row = conns[i].execute(f"SELECT v FROM {table} WHERE id = %s",
                                           (key,)).fetchone()
                    want = own.get((table, key), 0)
                    if row[0] < want:
                        violations.append(f"{table}.{key}: read {row[0]} after writing {want}")
                else:
                    total = conns[i].execute(f"SELECT sum(v) FROM {table}").fetchone()[0]
                    want = sum(v for (t, _), v in own.items() if t == table)
                    if total < want:
                        violations.append(f"sum({table}): read {total}, own writes alone {want}")
        finally:
            for c in conns:
                c.close()
            with lock:
                counts["reads"] += reads
                counts["writes"] += writes

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return violations, counts["reads"], counts["writes"]


class Cache(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        set_apply_delay("0")
        for t in TABLES:
            superuser_sql(f"DROP TABLE IF EXISTS {t}; CREATE TABLE {t} (id int PRIMARY KEY, "
                          f"v int NOT NULL); INSERT INTO {t} SELECT g, 0 FROM "
                          f"generate_series(1, {ROWS}) g; GRANT ALL ON {t} TO app")
        superuser_sql("GRANT SELECT ON cc_a TO other; ALTER TABLE cc_c OWNER TO app")
        superuser_sql(f"DROP TABLE IF EXISTS {XTABLE}; CREATE TABLE {XTABLE} (id int PRIMARY "
                      f"KEY, v int NOT NULL); INSERT INTO {XTABLE} SELECT g, 0 FROM "
                      f"generate_series(1, {ROWS}) g; GRANT ALL ON {XTABLE} TO app")
        wait_replayed()

    def reset_tables(self):
        for t in TABLES:
            superuser_sql(f"UPDATE {t} SET v = 0")
        wait_replayed()

    def test_consistency_checker_two_instances(self):
        self.reset_tables()
        set_apply_delay("200ms")
        try:
            a = Sluice(tweak=cache_config()).start()
            b = Sluice(tweak=cache_config()).start()
            try:
                wait_catalog(a)
                wait_catalog(b)
                start = time.time()
                violations, reads, writes = run_checker([a, b], clients=8, operations=20000,
                                                        seed=1)
                took = time.time() - start
                hits = metric(a, "sluice_cache_hits_total") + metric(b, "sluice_cache_hits_total")
                misses = metric(a, "sluice_cache_misses_total") + \
                    metric(b, "sluice_cache_misses_total")
                replica_reads = metric(a, "sluice_queries_total", route="replica") + \
                    metric(b, "sluice_queries_total", route="replica")
                bumps = metric(a, "sluice_cache_bumps_total", result="ok") + \
                    metric(b, "sluice_cache_bumps_total", result="ok")
                print(f"consistency checker: 2 sluice instances, 8 clients, {reads + writes} "
                      f"operations ({reads} reads, {writes} writes) in {took:.1f} s, replica "
                      f"recovery_min_apply_delay 200ms: {len(violations)} violations; cache "
                      f"hits {hits:.0f}, misses {misses:.0f}, reads on the replica "
                      f"{replica_reads:.0f}, bumps {bumps:.0f}")
                self.assertEqual(reads + writes, 20000)
                self.assertEqual(violations, [], violations[:5])
                self.assertGreater(hits, 1000)  # the cache was really in play
                # And so was the replica: misses whose versions it had replayed ran there (the
                # others, and every read of a client soon after its own write, on the primary).
                self.assertGreater(replica_reads, 0)
            finally:
                a.stop()
                b.stop()
        finally:
            set_apply_delay("0")

    def test_checker_catches_stale_reads_without_invalidation(self):
        self.reset_tables()

        def off(c):
            c["invalidation"] = False
        a = Sluice(tweak=cache_config(routing=False, tweak_cache=off)).start()
        b = Sluice(tweak=cache_config(routing=False, tweak_cache=off)).start()
        try:
            wait_catalog(a)
            wait_catalog(b)
            violations, reads, writes = run_checker([a, b], clients=4, operations=2000, seed=2,
                                                    tokens=False)
            print(f"the same checker with cache.invalidation: false: {len(violations)} violations "
                  f"in {reads + writes} operations (e.g. {violations[:1]})")
            self.assertGreater(len(violations), 10)
        finally:
            a.stop()
            b.stop()

    def test_cross_instance_invalidation_without_token(self):
        """A write through A reaches B's cached copy over the invalidation channel: no token."""
        a = Sluice(tweak=cache_config(routing=False)).start()
        b = Sluice(tweak=cache_config(routing=False)).start()
        try:
            wait_catalog(a)
            wait_catalog(b)
            heard0 = metric(b, "sluice_cache_invalidations_received_total")
            stale, delays = cross_instance_stale(a, b, rounds=4)
            heard = metric(b, "sluice_cache_invalidations_received_total") - heard0
            print(f"cross-instance, no token: B served A's writes after "
                  f"{', '.join(f'{d * 1000:.0f} ms' for d in delays)}; stale past "
                  f"{CROSS_BOUND} s: {stale}; invalidations B heard: {heard:.0f}")
            self.assertEqual(stale, [])
            self.assertGreaterEqual(heard, 4)  # one per write, at least
        finally:
            a.stop()
            b.stop()

    def test_cross_instance_check_catches_an_instance_that_hears_nothing(self):
        """The control: B on a Redis of its own (its versions never move, it hears no message)
        serves the stale row, and the same check says so."""
        port = free_port()
        d = tempfile.mkdtemp(prefix="sluice-redis-")
        own = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                                "--save", "", "--appendonly", "no", "--dir", d],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        a = b = None
        try:
            wait_for(lambda: redis_answers(port), timeout=10, what="the second redis-server")
            a = Sluice(tweak=cache_config(routing=False)).start()
            # No WAL follower for B either (A's holds the slot): nothing tells it of a write.
            b = Sluice(tweak=cache_config(redis_port=port, routing=False,
                                          tweak_cache=lambda c: c.update(follow_wal=False))).start()
            wait_catalog(a)
            wait_catalog(b)
            stale, delays = cross_instance_stale(a, b, rounds=3)
            print(f"cross-instance, B on its own Redis: {len(stale)} of 3 rounds stale past "
                  f"{CROSS_BOUND} s (e.g. {stale[:1]})")
            self.assertEqual(len(stale), 3, delays)
        finally:
            for s in (a, b):
                if s:
                    s.stop()
            own.terminate()
            own.wait(timeout=20)

    def test_role_and_row_level_security_isolation(self):
        superuser_sql("DROP TABLE IF EXISTS cc_secret; CREATE TABLE cc_secret (s text); "
                      "INSERT INTO cc_secret VALUES ('only app may read this'); "
                      "GRANT SELECT ON cc_secret TO app; "
                      "DROP TABLE IF EXISTS cc_rls; CREATE TABLE cc_rls (owner name, s text); "
                      "INSERT INTO cc_rls VALUES ('app', 'row of app'), ('other', 'row of other'); "
                      "ALTER TABLE cc_rls ENABLE ROW LEVEL SECURITY; "
                      "CREATE POLICY mine ON cc_rls USING (owner = current_user); "
                      "GRANT SELECT ON cc_rls TO app, other")
        for rls in ("skip", "by_role"):
            def tweak_cache(c, rls=rls):
                c["rls"] = rls
            with Sluice(tweak=cache_config(routing=False, tweak_cache=tweak_cache)) as s:
                wait_catalog(s)
                app = psycopg.connect(s.dsn(), autocommit=True)
                other = psycopg.connect(s.dsn(user="other", password="otherpass"),
                                        autocommit=True)
                for _ in range(3):  # miss, then hits for app
                    self.assertEqual(app.execute("SELECT s FROM cc_secret").fetchall(),
                                     [("only app may read this",)])
                    self.assertEqual(app.execute("SELECT s FROM cc_rls").fetchall(),
                                     [("row of app",)])
                for _ in range(3):
                    with self.assertRaises(psycopg.errors.InsufficientPrivilege):
                        other.execute("SELECT s FROM cc_secret")
                    self.assertEqual(other.execute("SELECT s FROM cc_rls").fetchall(),
                                     [("row of other",)])
                hits = metric(s, "sluice_cache_hits_total")
                rls_bypass = metric(s, "sluice_cache_bypass_total", reason="rls")
                print(f"cache.rls: {rls}: role other got only its own rows and a permission "
                      f"error; hits {hits:.0f}, bypassed for RLS {rls_bypass:.0f}")
                self.assertGreaterEqual(hits, 2)
                if rls == "skip":
                    self.assertGreaterEqual(rls_bypass, 6)
                else:
                    self.assertEqual(rls_bypass, 0)
                    self.assertGreaterEqual(hits, 6)  # both roles' RLS reads were cached apart
                app.close()
                other.close()

    def test_redis_killed_under_load(self):
        st = state()
        script = os.path.join(st["dir"], "cache_read.sql")
        with open(script, "w") as f:
            f.write("\\set k random(1, 20)\nSELECT v FROM cc_a WHERE id = :k;\n"
                    "SELECT sum(v) FROM cc_b;\n")

        def short_timeout(c):
            c["command_timeout"] = "100ms"
        bench = None
        try:
            with Sluice(tweak=cache_config(routing=False, tweak_cache=short_timeout)) as s:
                wait_catalog(s)
                result = {}
                # Long enough for every phase below (each bounded by its own wait); checked
                # still running at the end, so every phase ran under the load.
                bench = threading.Thread(target=lambda: result.update(r=pgbench(
                    s.port, "-n", "-f", script, "-c", "32", "-j", "4", "-T", "12")))
                bench.start()
                began = time.monotonic()
                hits = lambda: metric(s, "sluice_cache_hits_total")
                down = lambda: metric(s, "sluice_cache_bypass_total", reason="redis_down")
                wait_for(lambda: hits() > 2000, timeout=10, what="hits under the load")
                hits_before = hits()
                os.kill(redis_pid(), signal.SIGKILL)
                wait_for(lambda: metric(s, "sluice_redis_up") == 0, timeout=5,
                         what="sluice_redis_up 0 after redis-server was killed")
                # While Redis is away nothing is served from the cache (invalidations may be
                # missed meanwhile): requests bypass, and the hit count stands still.
                b0 = down()
                wait_for(lambda: down() > b0 + 200, timeout=10, what="redis_down bypasses")
                down_hits = hits()
                b1 = down()
                wait_for(lambda: down() > b1 + 2000, timeout=10, what="more redis_down bypasses")
                bypass_down = down()
                self.assertEqual(hits(), down_hits, "hits served while redis was down")
                self.assertEqual(metric(s, "sluice_redis_up"), 0)
                restart_at = time.monotonic()
                start_redis()
                wait_for(lambda: metric(s, "sluice_redis_up") == 1, timeout=10,
                         what="sluice to reconnect to the restarted redis")
                back = time.monotonic() - restart_at
                h0, m0 = hits(), metric(s, "sluice_cache_misses_total")
                wait_for(lambda: hits() + metric(s, "sluice_cache_misses_total") > h0 + m0 + 3000,
                         timeout=10, what="3000 lookups after the restart")
                h1, m1 = hits(), metric(s, "sluice_cache_misses_total")
                phases = time.monotonic() - began
                self.assertTrue(bench.is_alive(), "pgbench ended before the last phase")
                bench.join(timeout=120)
                self.assertFalse(bench.is_alive(), "pgbench did not end")
                check_run(self, result["r"], "pgbench -c 32 cacheable reads, redis-server killed")
                ratio = (h1 - h0) / max(1.0, (h1 - h0) + (m1 - m0))
                print(f"redis killed -9 under 32 clients: hits before {hits_before:.0f}, "
                      f"{bypass_down - b0:.0f} bypasses while down and hits {down_hits:.0f} "
                      f"before and after them; redis restarted: cache up again {back:.2f} s "
                      f"later, hit ratio over the next {(h1 - h0) + (m1 - m0):.0f} lookups "
                      f"{ratio:.3f}; every phase within {phases:.1f} s of pgbench's start")
                self.assertGreater(ratio, 0.9)
        finally:
            ensure_redis()  # an assertion above must not leave the later tests without Redis
            if bench is not None:
                bench.join(timeout=120)

    def test_extended_protocol_and_hints(self):
        with Sluice(tweak=cache_config(routing=False)) as s:
            wait_catalog(s)
            c = psycopg.connect(s.dsn(), autocommit=True)
            # Parameters (unnamed statement), then a named prepared statement.
            h0, _, _ = cache_counts(s)
            for k in (1, 2, 1, 2):
                self.assertEqual(c.execute("SELECT id, v FROM cc_c WHERE id = %s",
                                           (k,)).fetchone()[0], k)
            for k in (3, 3, 3):
                self.assertEqual(c.execute("SELECT id FROM cc_c WHERE id = %s", (k,),
                                           prepare=True).fetchone()[0], k)
            hits, _, _ = cache_counts(s)
            self.assertEqual(hits - h0, 4)
            # Binary results are another key: the same text with binary=True misses once.
            for want in (0, 1):
                self.assertEqual(c.execute("SELECT id FROM cc_c WHERE id = %s", (1,),
                                           binary=True).fetchone()[0], 1)
                self.assertEqual(cache_counts(s)[0] - hits, want)
            # Hints and the session switch.
            c.execute("/* sluice:nocache */ SELECT v FROM cc_c WHERE id = 4").fetchall()
            self.assertEqual(metric(s, "sluice_cache_bypass_total", reason="hint"), 1)
            c.execute("SET sluice.cache = off")
            before = metric(s, "sluice_cache_hits_total") + metric(s, "sluice_cache_misses_total")
            c.execute("SELECT v FROM cc_c WHERE id = 1").fetchall()
            after = metric(s, "sluice_cache_hits_total") + metric(s, "sluice_cache_misses_total")
            self.assertEqual(before, after)
            c.close()

    def test_volatile_locking_and_catalog_reads_are_not_cached(self):
        with Sluice(tweak=cache_config(routing=False)) as s:
            wait_catalog(s)
            c = psycopg.connect(s.dsn(), autocommit=True)

            def twice(sql):
                """Runs sql twice: (the two results, hits, misses, bypasses by reason)."""
                h0, m0, b0 = cache_counts(s)
                rows = [c.execute(sql).fetchall() for _ in range(2)]
                h1, m1, b1 = cache_counts(s)
                grown = {r: n - b0.get(r, 0) for r, n in b1.items() if n != b0.get(r, 0)}
                return rows, h1 - h0, m1 - m0, grown
            # The control: a cacheable read measured the same way is a miss, then a hit.
            _, hits, misses, bypass = twice("SELECT v FROM cc_c WHERE id = 9")
            self.assertEqual((hits, misses, bypass), (1, 1, {}))
            for sql, reason in (("SELECT now()", "function"),
                                ("SELECT random()", "function"),
                                ("SELECT v FROM cc_c WHERE id = 9 FOR UPDATE", "not_cacheable"),
                                ("SELECT count(*) FROM pg_class", "system_catalog"),
                                ("SELECT current_date, v FROM cc_c WHERE id = 9",
                                 "not_cacheable")):
                with self.subTest(sql=sql):
                    rows, hits, misses, bypass = twice(sql)
                    self.assertEqual((hits, misses, bypass), (0, 0, {reason: 2}))
                    if "random" in sql or "now" in sql:  # really ran twice: two answers
                        self.assertNotEqual(rows[0], rows[1])
            c.close()

    def test_no_lookup_inside_a_transaction(self):
        sql = "SELECT v FROM cc_c WHERE id = 7"
        with Sluice(tweak=cache_config(routing=False)) as s:
            wait_catalog(s)
            c = psycopg.connect(s.dsn(), autocommit=True)
            # The control: outside a transaction the second run is a hit.
            self.assertEqual(c.execute(sql).fetchone()[0], 0)
            h0, m0, _ = cache_counts(s)
            self.assertEqual(c.execute(sql).fetchone()[0], 0)
            h1, m1, _ = cache_counts(s)
            self.assertEqual((h1 - h0, m1 - m0), (1, 0))
            # Inside BEGIN..COMMIT the same statement, still cached under the same versions, is
            # not looked up: the hit and miss counts stand still.
            with c.transaction():
                self.assertEqual(c.execute(sql).fetchone()[0], 0)
                self.assertEqual(cache_counts(s)[:2], (h1, m1))
            # And it sees the transaction's own uncommitted write (the cached row says 0).
            with c.transaction() as tx:
                c.execute("UPDATE cc_c SET v = 4242 WHERE id = 7")
                self.assertEqual(c.execute(sql).fetchone()[0], 4242)
                self.assertEqual(cache_counts(s)[:2], (h1, m1))
                raise psycopg.Rollback(tx)
            self.assertEqual(c.execute(sql).fetchone()[0], 0)
            c.close()

    def test_commit_invalidates_what_was_cached(self):
        sql = "SELECT v FROM cc_c WHERE id = 6"
        with Sluice(tweak=cache_config(routing=False)) as s:
            wait_catalog(s)
            c = psycopg.connect(s.dsn(), autocommit=True)
            try:
                # Cached first: the second read is a hit.
                self.assertEqual(c.execute(sql).fetchone()[0], 0)
                h0, m0, _ = cache_counts(s)
                self.assertEqual(c.execute(sql).fetchone()[0], 0)
                self.assertEqual(cache_counts(s)[:2], (h0 + 1, m0))
                # A write in an explicit transaction: at COMMIT the entry goes, the next read
                # is a miss that shows the write, and the one after a hit again.
                followed = follower_commits(s)
                with c.transaction():
                    c.execute("UPDATE cc_c SET v = 99 WHERE id = 6")
                # The WAL follower bumps the commit again when it reads it (about 200 ms here,
                # longer under ASan): counted before the reads, it cannot drop what they store.
                wait_followed([s], followed)
                h1, m1, _ = cache_counts(s)
                self.assertEqual(c.execute(sql).fetchone()[0], 99)
                self.assertEqual(cache_counts(s)[:2], (h1, m1 + 1))
                self.assertEqual(c.execute(sql).fetchone()[0], 99)
                self.assertEqual(cache_counts(s)[:2], (h1 + 1, m1 + 1))
                # The same through another connection (no token: one instance).
                with psycopg.connect(s.dsn(), autocommit=True) as other:
                    with other.transaction():
                        other.execute("UPDATE cc_c SET v = 0 WHERE id = 6")
                self.assertEqual(c.execute(sql).fetchone()[0], 0)
            finally:
                c.close()
                superuser_sql("UPDATE cc_c SET v = 0 WHERE id = 6")

    def test_ddl_flushes_and_admin_view(self):
        with Sluice(tweak=cache_config(routing=False)) as s:
            wait_catalog(s)
            c = psycopg.connect(s.dsn(), autocommit=True)
            # DDL through sluice flushes what it can affect: the new column shows at once.
            self.assertEqual(len(c.execute("SELECT * FROM cc_c WHERE id = 5").fetchone()), 2)
            h0, _, _ = cache_counts(s)
            self.assertEqual(len(c.execute("SELECT * FROM cc_c WHERE id = 5").fetchone()), 2)
            self.assertEqual(cache_counts(s)[0], h0 + 1)  # cached before the DDL
            c.execute("ALTER TABLE cc_c ADD COLUMN extra int DEFAULT 7")
            try:
                row = c.execute("SELECT * FROM cc_c WHERE id = 5").fetchone()
                self.assertEqual((row[0], row[2]), (5, 7))
            finally:
                c.execute("ALTER TABLE cc_c DROP COLUMN extra")
            self.assertEqual(len(c.execute("SELECT * FROM cc_c WHERE id = 5").fetchone()), 2)
            # Hits resume once the catalog is fetched again (a health interval).
            wait_for(lambda: c.execute("SELECT * FROM cc_c WHERE id = 5").fetchone() and
                     cache_counts(s)[0] > h0 + 1, timeout=10, what="hits after the DDL")
            c.close()
            # The admin console's view of it.
            out = psql(s.admin_dsn(), "SHOW CACHE", extra=("-At", "-F", "|")).stdout.decode()
            rows = [line.split("|") for line in out.splitlines()]
            kinds = {row[0] for row in rows}
            self.assertEqual(kinds, {"total", "rule", "table", "statement"}, out)
            table = [row for row in rows if row[:2] == ["table", "appdb/public.cc_c"]]
            self.assertEqual(len(table), 1, out)
            self.assertGreater(int(table[0][2]), 0)  # hits
            self.assertIn("redis up", out)
            status = json.loads(s.http("/status")[1])
            self.assertTrue(status["cache"]["serving"])
            code, body = s.http("/metrics")
            r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True,
                               text=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_concurrent_hits_share_their_version_reads(self):
        """read_consistency global (the default) reads a cached statement's versions from Redis
        at every lookup: a write acknowledged by another instance counts at once. Identical
        reads made while one is in flight share the next round (RedisConnection::shared_read),
        so under 16 clients Redis runs fewer MGETs than sluice serves hits."""
        script = os.path.join(state()["dir"], "cache_hits.sql")
        with open(script, "w") as f:
            f.write("\\set k random(1, 5)\nSELECT v FROM cc_a WHERE id = :k;\n")

        def mgets():
            for line in redis_cli("INFO", "commandstats").splitlines():
                if line.startswith("cmdstat_mget:"):
                    return int(line.split("calls=")[1].split(",")[0])
            return 0
        with Sluice(tweak=cache_config(routing=False)) as s:
            wait_catalog(s)
            with psycopg.connect(s.dsn(), autocommit=True) as c:
                for k in range(1, 6):  # each key stored
                    c.execute("SELECT v FROM cc_a WHERE id = %s", (k,)).fetchall()
            m0, h0 = mgets(), metric(s, "sluice_cache_hits_total")
            r = pgbench(s.port, "-n", "-f", script, "-c", "16", "-j", "2", "-T", "4")
            m1, h1 = mgets(), metric(s, "sluice_cache_hits_total")
        check_run(self, r, "16 clients reading 5 cached rows")
        hits, reads = h1 - h0, m1 - m0
        print(f"16 clients, cached reads, read_consistency global: {hits:.0f} hits, Redis ran "
              f"{reads} MGETs ({reads / max(hits, 1):.2f} a hit)")
        self.assertGreater(hits, 1000)
        self.assertLess(reads, 0.8 * hits)

    def test_concurrent_misses_run_once(self):
        sql = "SELECT count(*) FROM generate_series(1, 3000000) g, cc_a WHERE cc_a.id = 1"
        superuser_sql("SELECT pg_stat_statements_reset()")
        with Sluice(tweak=cache_config(routing=False)) as s:
            wait_catalog(s)
            results = []

            def one():
                with psycopg.connect(s.dsn(), autocommit=True) as c:
                    results.append(c.execute(sql).fetchone()[0])
            threads = [threading.Thread(target=one) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            ran = calls(superuser_sql, "SELECT count(*) FROM generate_series(%")
            print(f"16 concurrent identical misses: the server ran the query {ran} time(s)")
            self.assertEqual(results, [3000000] * 16)
            self.assertEqual(ran, 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
