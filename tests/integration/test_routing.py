"""Read/write routing against the real primary + streaming replica: reads land on the replica and
everything that may write on the primary (counted by pg_stat_statements on each server), volatility
decided from pg_proc, read-your-writes with a delayed replica, a replica killed under a 64-client
read-only pgbench, lag bans, and reads with every replica banned (routing.all_replicas_banned).
Every fault a test makes (a stopped replica, a replay delay) is undone in `finally`, and the test
waits until the replica streams and has caught up again, so a failure does not break the next test.
Waits are on conditions (the first health check done, a read running on the replica, a ban seen),
not fixed sleeps."""
import os
import struct
import subprocess
import threading
import time
import unittest

import psycopg

from harness import Sluice, APP_PASSWORD, free_port, state, superuser_sql, psql, wait_for
from pgwire import Wire
from test_pgbench import pgbench, check_run

PG_BIN = "/usr/lib/postgresql/15/bin"


def routed_config(tweak_routing=None, concurrent=False):
    def tweak(c):
        c["pool"] = {"mode": "transaction", "size": 20}
        if concurrent:  # a timeout on: the relay reads both directions at once
            c["pool"]["query_timeout"] = "60s"
        c["health_check_interval"] = "200ms"
        c["routing"] = {"enabled": True, "ban_time": "2s", "health_user": "app"}
        if tweak_routing:
            tweak_routing(c["routing"])
    return tweak


def replica_sql(sql):
    st = state()
    return superuser_sql(sql, port=st["replica_port"])


def replica_conninfo():
    st = state()
    return (f"host={st['sock_dir']} port={st['replica_port']} dbname=appdb "
            f"user={st['superuser']}")


def set_apply_delay(delay):
    """Sets the replica's recovery_min_apply_delay and waits until the reload is applied (a new
    session sees the value)."""
    replica_sql(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
    replica_sql("SELECT pg_reload_conf()")
    want = replica_sql(f"SELECT extract(epoch FROM interval '{delay}') * 1000")
    wait_for(lambda: float(replica_sql("SELECT setting FROM pg_settings "
                                       "WHERE name = 'recovery_min_apply_delay'")) == float(want),
             what=f"recovery_min_apply_delay {delay} to be applied")


def pg_ctl(*args):
    st = state()
    as_user = ["runuser", "-u", st["os_user"], "--"] if os.geteuid() == 0 else []
    return subprocess.run(as_user + [f"{PG_BIN}/pg_ctl", "-D", st["replica_dir"], *args],
                          capture_output=True, text=True)


def stop_replica():
    r = pg_ctl("-m", "immediate", "-w", "stop")
    assert r.returncode == 0, r.stderr


def start_replica():
    r = pg_ctl("-l", f"{state()['dir']}/replica.log", "-w", "start")
    assert r.returncode == 0, r.stderr


def replica_accepting():
    try:
        return replica_sql("SELECT 1") == "1"
    except subprocess.CalledProcessError:
        return False


def replica_streaming():
    """True once the replica accepts connections and its WAL receiver streams from the primary."""
    try:
        return replica_sql("SELECT status FROM pg_stat_wal_receiver") == "streaming"
    except subprocess.CalledProcessError:
        return False


def restore_replica():
    """Undoes a stopped replica: starts it if it is down, then waits until it streams from the
    primary again and has replayed everything the primary wrote."""
    if pg_ctl("status").returncode != 0:
        start_replica()
    wait_for(replica_streaming, timeout=60, what="the replica to stream from the primary")
    wait_replayed()


def replica_restartpoint():
    """A restartpoint on the replica, so a restart does not replay all WAL since the base backup
    (several seconds after the earlier tests)."""
    superuser_sql("CHECKPOINT")
    wait_replayed()
    replica_sql("CHECKPOINT")


def wait_running_on_replica(marker, timeout=15):
    """Until a statement containing `marker` runs on the replica (pg_stat_activity)."""
    with psycopg.connect(replica_conninfo(), autocommit=True) as c:
        wait_for(lambda: c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND pid <> pg_backend_pid() AND position(%s in query) > 0",
            (marker,)).fetchone()[0], timeout=timeout, interval=0.01,
            what=f"{marker!r} to run on the replica")


def wait_replayed():
    """Until the replica has replayed everything the primary wrote so far."""
    lsn = superuser_sql("SELECT pg_current_wal_insert_lsn()")
    wait_for(lambda: replica_sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t",
             timeout=30, what=f"the replica to replay up to {lsn}")


def calls(port_sql, pattern):
    """Calls of statements matching `pattern` (SQL LIKE) on one server, from pg_stat_statements."""
    return int(port_sql("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                        f"WHERE query LIKE '{pattern}'"))


REPLICA_COLUMNS = ("database", "address", "weight", "banned", "reason", "banned_for_s", "bans",
                   "in_recovery", "replay_lsn", "lag_bytes", "lag_s", "outstanding", "reads")


def replica_status(sluice):
    """SHOW REPLICAS' first row as {column: text}."""
    r = psql(sluice.admin_dsn(), "SHOW REPLICAS", extra=("-At", "-F", "|"))
    rows = [l.split("|") for l in r.stdout.decode().splitlines() if l]
    assert rows, "SHOW REPLICAS lists no replica"
    return dict(zip(REPLICA_COLUMNS, rows[0]))


def wait_checked(sluice):
    """Until sluice's first health check has passed the replica: an unchecked replica counts as
    banned, so reads go to the primary until then."""
    wait_for(lambda: replica_status(sluice)["banned"] == "no", timeout=20,
             what="the first health check to pass the replica")


def wait_seen_past(sluice, lsn):
    """Until sluice's last health check saw the replica replay past `lsn`."""
    def past():
        seen = replica_status(sluice)["replay_lsn"]
        return seen and superuser_sql(f"SELECT '{seen}'::pg_lsn >= '{lsn}'::pg_lsn") == "t"
    wait_for(past, timeout=30, what=f"sluice to see the replica replay past {lsn}")


def primary_queries(sluice):
    return sum(v for k, v in sluice.metrics().items()
               if k.startswith("sluice_queries_total") and 'route="primary"' in k)


def wait_until(pred, timeout, step=0.02):
    """Seconds until pred() held (None after timeout): for waits whose length is measured."""
    start = time.time()
    while time.time() - start < timeout:
        if pred():
            return time.time() - start
        time.sleep(step)
    return None


def setUpModule():
    restore_replica()  # in case an interrupted run left it down
    set_apply_delay("0")
    superuser_sql("DROP TABLE IF EXISTS rt_items; "
                  "CREATE TABLE rt_items (id int PRIMARY KEY, v text); "
                  "INSERT INTO rt_items SELECT g, 'v' || g FROM generate_series(1, 1000) g; "
                  "DROP SEQUENCE IF EXISTS rt_seq; CREATE SEQUENCE rt_seq; "
                  "GRANT ALL ON rt_items, rt_seq TO app")
    wait_replayed()


class Routing(unittest.TestCase):

    def test_reads_on_replica_writes_on_primary(self):
        st = state()
        with Sluice(tweak=routed_config()) as sluice:
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                # Functions made through sluice: the DDL makes it fetch pg_proc again.
                conn.execute("CREATE OR REPLACE FUNCTION rt_vol() RETURNS int VOLATILE "
                             "LANGUAGE sql AS 'SELECT 1'")
                conn.execute("CREATE OR REPLACE FUNCTION rt_imm(int) RETURNS int IMMUTABLE "
                             "LANGUAGE sql AS 'SELECT $1 + 1'")
            wait_replayed()
            # The DDL made sluice fetch pg_proc again; until it has, calls count as volatile.
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                fetched = wait_until(lambda: conn.execute(
                    "SELECT inet_server_port() + rt_imm(0) - 1").fetchone()[0] ==
                    st["replica_port"], 20, step=0.1)
            self.assertIsNotNone(fetched, "IMMUTABLE rt_imm() never went to the replica")
            superuser_sql("SELECT pg_stat_statements_reset()")
            replica_sql("SELECT pg_stat_statements_reset()")

            reads = 0
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                for i in range(2000):  # extended protocol, unnamed statements
                    conn.execute("SELECT v FROM rt_items WHERE id = %s", (i % 1000 + 1,)).fetchone()
                for i in range(2000):  # named prepared statements, re-prepared per server
                    conn.execute("SELECT id, v FROM rt_items WHERE id = %s AND v IS NOT NULL",
                                 (i % 1000 + 1,), prepare=True).fetchone()
                reads += 4000
                cur = psycopg.ClientCursor(conn)  # simple query protocol
                for i in range(1000):
                    cur.execute("WITH x AS (SELECT id FROM rt_items WHERE id <= %s) "
                                "SELECT count(*) FROM x JOIN rt_items USING (id)", (i % 50 + 1,))
                    cur.fetchone()
                for i in range(500):
                    cur.execute("SELECT rt_imm(id) FROM rt_items WHERE id = %s", (i + 1,))
                    cur.fetchone()
                for i in range(500):
                    cur.execute("VALUES (1), (2) UNION ALL SELECT count(*) FROM rt_items "
                                "WHERE id < %s", (i,))
                    cur.fetchall()
                reads += 2000
            script = os.path.join(sluice.dir, "reads.sql")
            with open(script, "w") as f:
                f.write("\\set id random(1, 1000)\n"
                        "SELECT v FROM rt_items WHERE id = :id;\n")
            for mode in ("simple", "prepared"):
                r = pgbench(sluice.port, "-n", "-M", mode, "-c", "4", "-t", "500", "-f", script)
                check_run(self, r, f"pgbench -M {mode} reads")
                reads += 2000

            # Each statement carries a marker that pg_stat_statements keeps (an alias, not a
            # constant, which it would replace with $n). Aliases do not count in its query id,
            # so each statement also has a shape of its own.
            writes = {
                "INSERT INTO rt_items AS w5001 VALUES (5001, 'w') ON CONFLICT (id) DO NOTHING":
                    "%w5001%",
                "UPDATE rt_items AS w5002 SET v = v WHERE id = 5002": "%w5002%",
                "DELETE FROM rt_items AS w5003 WHERE id = 5003": "%w5003%",
                "SELECT v AS w5004 FROM rt_items WHERE id = 5004 FOR UPDATE": "%w5004%",
                "SELECT v AS w5005 FROM rt_items WHERE id = 5005 FOR SHARE": "%w5005%",
                "WITH w5006 AS (DELETE FROM rt_items WHERE id = 5006 RETURNING *) "
                "SELECT * FROM w5006": "%w5006%",
                "SELECT nextval('rt_seq') AS w5007": "%w5007%",
                "SELECT rt_vol() AS w5008": "%w5008%",
                "SELECT pg_advisory_xact_lock(5009) AS w5009": "%w5009%",
                "EXPLAIN ANALYZE SELECT 1 AS w5010": "%w5010%",
                "SELECT 1 AS w5011; INSERT INTO rt_items AS w5011 VALUES (5011, 'w') "
                "ON CONFLICT DO NOTHING": "%w5011%",
            }
            immutable_read = "SELECT rt_imm(5012) AS r5012"
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                cur = psycopg.ClientCursor(conn)
                for sql in writes:
                    for _ in range(3):
                        cur.execute(sql)
                cur.execute("SELECT 1")
            # Read-your-writes: the next reads go to the replica once sluice saw it past the writes.
            wait_seen_past(sluice, superuser_sql("SELECT pg_current_wal_insert_lsn()"))
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                conn.execute(immutable_read).fetchone()
                conn.execute("BEGIN READ ONLY")
                conn.execute("SELECT 5013 + 1 AS r5013").fetchone()
                conn.execute("COMMIT")
                conn.execute("BEGIN")
                conn.execute("SELECT 5014 * 2 AS r5014").fetchone()
                conn.execute("COMMIT")

            on_replica = calls(replica_sql, "%rt_items%")
            on_primary = int(superuser_sql(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
                "WHERE query LIKE '%rt_items%' AND query NOT LIKE '%w50%'"))
            print(f"{reads} autocommit reads: {on_replica} statements on rt_items ran on the "
                  f"replica, {on_primary} of the read shapes on the primary")
            self.assertGreaterEqual(on_replica, reads)
            self.assertEqual(on_primary, 0)
            for sql, pattern in writes.items():
                p = calls(superuser_sql, pattern)
                r = calls(replica_sql, pattern)
                print(f"  {sql[:60]!r}: primary {p}, replica {r}")
                self.assertEqual(r, 0, sql)
                self.assertGreaterEqual(p, 3, sql)
            self.assertEqual(calls(replica_sql, "%r5012%"), 1, "an IMMUTABLE function: replica")
            self.assertEqual(calls(superuser_sql, "%r5012%"), 0)
            self.assertEqual(calls(replica_sql, "%r5013%"), 1, "BEGIN READ ONLY goes to a replica")
            self.assertEqual(calls(superuser_sql, "%r5014%"), 1, "BEGIN goes to the primary")

            m = sluice.metrics()
            replica_q = sum(v for k, v in m.items()
                            if k.startswith("sluice_queries_total") and 'route="replica"' in k)
            self.assertGreaterEqual(replica_q, reads)

    def test_hints_and_session_route(self):
        st = state()
        with Sluice(tweak=routed_config()) as sluice:
            wait_checked(sluice)
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                port = lambda sql: conn.execute(sql).fetchone()[0]
                self.assertEqual(port("SELECT inet_server_port()"), st["replica_port"])
                self.assertEqual(port("/* sluice:primary */ SELECT inet_server_port()"),
                                 st["primary_port"])
                conn.execute("SET sluice.route = primary")
                self.assertEqual(port("SELECT inet_server_port()"), st["primary_port"])
                self.assertEqual(port("/* sluice:replica */ SELECT inet_server_port()"),
                                 st["replica_port"])
                conn.execute("SET sluice.route = auto")
                self.assertEqual(port("SELECT inet_server_port()"), st["replica_port"])
                conn.execute("SET default_transaction_read_only = on")
                with conn.transaction():
                    self.assertEqual(port("SELECT inet_server_port()"), st["replica_port"])

    def test_weighted_balancing_with_primary_reads_include(self):
        st = state()

        def include(r):
            r["primary_reads"] = "include"
            r["primary_weight"] = 1
        def weights(c):
            routed_config(include)(c)
            c["databases"]["appdb"]["replicas"][0]["weight"] = 3
        with Sluice(tweak=weights) as sluice:
            wait_checked(sluice)
            ports = {}
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                for _ in range(400):
                    p = conn.execute("SELECT inet_server_port()").fetchone()[0]
                    ports[p] = ports.get(p, 0) + 1
            print(f"primary_reads include, weights primary 1 / replica 3: 400 reads -> "
                  f"primary {ports.get(st['primary_port'], 0)}, "
                  f"replica {ports.get(st['replica_port'], 0)}")
            self.assertAlmostEqual(ports.get(st["primary_port"], 0), 100, delta=5)
            self.assertAlmostEqual(ports.get(st["replica_port"], 0), 300, delta=5)

    def test_read_your_writes(self):
        set_apply_delay("500ms")
        try:
            results = {}
            for mode, n in (("lsn", 1000), ("window", 200), ("off", 200)):
                def rw(r, mode=mode):
                    r["read_consistency"] = "session"  # the per-client modes (global: issue 20)
                    r["read_your_writes"] = mode
                    r["read_your_writes_window"] = "1s"
                with Sluice(tweak=routed_config(rw)) as sluice:
                    wait_checked(sluice)
                    base = int(superuser_sql("SELECT coalesce(max(id), 0) FROM rt_items")) + 10000
                    misses = 0
                    with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                        for i in range(n):
                            conn.execute("INSERT INTO rt_items VALUES (%s, 'ryw')", (base + i,))
                            row = conn.execute("SELECT v FROM rt_items WHERE id = %s",
                                               (base + i,)).fetchone()
                            misses += row is None
                    results[mode] = (n, misses)
                    print(f"read-your-writes {mode}: {n} INSERT+SELECT with the replica 500 ms "
                          f"behind: {misses} misses")
                    if mode == "lsn":
                        # A causal token across connections.
                        with psycopg.connect(sluice.dsn(), autocommit=True) as a, \
                                psycopg.connect(sluice.dsn(), autocommit=True) as b:
                            a.execute("INSERT INTO rt_items VALUES (%s, 'token')", (base + n,))
                            token = a.execute("SHOW sluice.last_write_lsn").fetchone()[0]
                            self.assertRegex(token, r"^[0-9A-F]+/[0-9A-F]+$")
                            b.execute(f"SET sluice.min_lsn = '{token}'")
                            row = b.execute("SELECT v FROM rt_items WHERE id = %s",
                                            (base + n,)).fetchone()
                            self.assertEqual(row, ("token",))
            self.assertEqual(results["lsn"][1], 0)
            self.assertEqual(results["window"][1], 0)
            self.assertGreater(results["off"][1], 0, "mode off must show misses (else the test "
                               "could not fail)")
        finally:
            set_apply_delay("0")
            wait_replayed()

    def test_read_in_flight_when_the_replica_dies_is_retried(self):
        st = state()
        replica_restartpoint()
        with Sluice(tweak=routed_config()) as sluice:
            wait_checked(sluice)
            result = {}

            def slow_read():
                with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                    # 20M rows of a join: a second or two of CPU, no temporary file.
                    result["row"] = conn.execute(
                        "SELECT inet_server_port(), count(*) FROM generate_series(1, 5000) a, "
                        "generate_series(1, 4000) b").fetchone()
            t = threading.Thread(target=slow_read)
            t.start()
            try:
                wait_running_on_replica("generate_series(1, 5000) a")
                stop_replica()
                t.join(60)
                print(f"a 20M-row count on the replica, replica stopped -m immediate under it: "
                      f"{result.get('row')}")
                self.assertEqual(result.get("row"), (st["primary_port"], 20000000))
                self.assertIn("retrying the read on another node", sluice.log())
            finally:
                t.join(60)
                restore_replica()

    def test_write_pipelined_behind_a_read_moves_to_the_primary(self):
        st = state()
        with Sluice(tweak=routed_config(concurrent=True)) as sluice:
            wait_checked(sluice)
            w = Wire(sluice.port)
            w.login("app", APP_PASSWORD, "appdb")
            slow_read = ("SELECT inet_server_port(), count(*) FROM generate_series(1, 10000000)")
            write = ("INSERT INTO rt_items VALUES (7001, 'pipelined') ON CONFLICT (id) "
                     "DO UPDATE SET v = 'again' RETURNING inet_server_port()")
            w.send_msg(b"Q", slow_read.encode() + b"\0")
            wait_running_on_replica("generate_series(1, 10000000)")  # the write comes behind it
            w.send_msg(b"Q", write.encode() + b"\0")
            w.send_msg(b"Q", b"SELECT inet_server_port()\0")
            results = []
            for _ in range(3):
                rows, err = [], None
                while True:
                    typ, body = w.read()
                    if typ == b"D":
                        (ln,) = __import__("struct").unpack("!i", body[2:6])
                        rows.append(body[6:6 + ln].decode())
                    elif typ == b"E":
                        err = Wire.fields(body)
                    elif typ == b"Z":
                        break
                results.append((rows, err))
            w.close()
            print(f"pipelined read, write, read: {results}")
            self.assertEqual(results[0], ([str(st["replica_port"])], None))
            self.assertEqual(results[1], ([str(st["primary_port"])], None))
            # Read-your-writes: the replica has not been seen past the write yet.
            self.assertEqual(results[2], ([str(st["primary_port"])], None))

    def test_replica_killed_under_pgbench_concurrent_relay(self):
        self.replica_killed_under_pgbench(clients=32, seconds=16, concurrent=True)

    def test_replica_killed_under_pgbench(self):
        self.replica_killed_under_pgbench(clients=64, seconds=20, concurrent=False)

    def replica_killed_under_pgbench(self, clients, seconds, concurrent):
        st = state()
        r = pgbench(st["primary_port"], "-i", "-s", "2", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        replica_restartpoint()
        with Sluice(tweak=routed_config(concurrent=concurrent)) as sluice:
            wait_checked(sluice)
            result = {}
            bench = threading.Thread(target=lambda: result.update(r=pgbench(
                sluice.port, "-n", "-S", "-c", str(clients), "-j", "4", "-T", str(seconds))))
            bench.start()
            try:
                # Under load: the clients are connected and reads flow to the replica.
                wait_for(lambda: int(replica_status(sluice)["reads"]) >= 1000, timeout=20,
                         what="pgbench reads on the replica")
                stop_at = time.time()
                stop_replica()
                # Timed from the replica's death (pg_ctl -m immediate returns once the postmaster
                # is gone): sluice's part alone, not pg_ctl's own run on a loaded machine.
                died_at = time.time()
                banned_after = wait_until(lambda: replica_status(sluice)["banned"] == "yes", 10)
                self.assertIsNotNone(banned_after, "replica never banned")
                banned_after = time.time() - died_at
                stopping = died_at - stop_at
                # The replica stays down while the primary serves a good many of the reads.
                on_primary = primary_queries(sluice)
                wait_for(lambda: primary_queries(sluice) >= on_primary + 1000, timeout=15,
                         what="reads on the primary with the replica down")
                reads_before = int(replica_status(sluice)["reads"])
                start_replica()
                ready_after = wait_until(replica_accepting, 20, step=0.05)
                self.assertIsNotNone(ready_after, "the replica did not come back")
                back_after = wait_until(
                    lambda: int(replica_status(sluice)["reads"]) > reads_before + 100, 15)
            finally:
                bench.join()
                restore_replica()
            check_run(self, result["r"], f"pgbench -S -c {clients} with the replica killed "
                      f"({'concurrent' if concurrent else 'sequential'} relay)")
            self.assertIsNotNone(back_after, "reads did not come back to the replica")
            print(f"replica stopped -m immediate (pg_ctl took {stopping:.2f} s): banned "
                  f"{banned_after:.2f} s after; restarted: "
                  f"accepting connections after {ready_after:.2f} s, reads back on it "
                  f"{back_after:.2f} s later (ban_time 2 s)")
            self.assertLess(banned_after, 2.0)
            self.assertLess(back_after, 2.0 + 1.0)  # ban_time + a check round
            retried = sluice.log().count("retrying the read on another node")
            print(f"  reads in flight on the replica when it died, run again elsewhere: {retried}")
            # Transparent: not even the replica's shutdown notice reached a client.
            self.assertNotIn("terminating connection", result["r"].stderr)

    def test_lag_ban(self):
        st = state()

        def lag(r):
            r["max_replica_lag_seconds"] = "1s"
        stop = threading.Event()

        def writer():
            with psycopg.connect(f"host={st['sock_dir']} port={st['primary_port']} "
                                 f"dbname=appdb user={st['superuser']}", autocommit=True) as c:
                while not stop.is_set():
                    c.execute("UPDATE rt_items SET v = v WHERE id = 1")
                    stop.wait(0.05)  # a write every 50 ms: the primary's WAL keeps moving
        with Sluice(tweak=routed_config(lag)) as sluice:
            wait_checked(sluice)
            port = lambda: psql(sluice.dsn(), "SELECT inet_server_port()",
                                extra=("-At",)).stdout.decode().strip()
            self.assertEqual(port(), str(st["replica_port"]))
            t = threading.Thread(target=writer)
            t.start()
            try:
                set_apply_delay("5s")
                banned = wait_until(lambda: replica_status(sluice)["banned"] == "yes", 15)
                self.assertIsNotNone(banned)
                status = replica_status(sluice)
                print(f"recovery_min_apply_delay 5s: banned after {banned:.1f} s: "
                      f"{status['reason']}")
                self.assertIn("max_replica_lag_seconds", status["reason"])
                self.assertEqual(port(), str(st["primary_port"]))
                set_apply_delay("0")
                unbanned = wait_until(lambda: replica_status(sluice)["banned"] == "no", 20)
                self.assertIsNotNone(unbanned)
                print(f"delay lifted: unbanned after {unbanned:.1f} s")
                self.assertEqual(port(), str(st["replica_port"]))
            finally:
                stop.set()
                t.join()
                set_apply_delay("0")
                wait_replayed()


class AllReplicasBanned(unittest.TestCase):
    """routing.all_replicas_banned with the only replica down (its address refuses connections):
    `error` refuses a read with 57P03 and a hint that says what to do; the default, `primary`,
    runs the same read on the primary."""

    def banned_sluice(self, policy):
        def tweak(c):
            routed_config(lambda r: r.update(all_replicas_banned=policy))(c)
            # Nothing listens there: every health check fails, the replica stays banned.
            c["databases"]["appdb"]["replicas"] = [{"host": "127.0.0.1", "port": free_port()}]
        sluice = Sluice(tweak=tweak).start()
        self.addCleanup(sluice.stop)
        # A health check ran and failed (an unchecked replica is banned too, but untested).
        wait_for(lambda: int(replica_status(sluice)["bans"]) >= 1, what="the replica's ban")
        status = replica_status(sluice)
        self.assertEqual(status["banned"], "yes")
        return sluice, status

    def test_error_refuses_the_read_with_57P03(self):
        st = state()
        sluice, status = self.banned_sluice("error")
        print(f"\nreplica down, all_replicas_banned: error; SHOW REPLICAS: {status['reason']}")
        with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
            # Writes never needed a replica.
            self.assertEqual(conn.execute("INSERT INTO rt_items VALUES (6001, 'w') ON CONFLICT "
                                          "(id) DO UPDATE SET v = 'w' RETURNING "
                                          "inet_server_port()").fetchone()[0], st["primary_port"])
            # The refused read is an ERROR of that statement, not the end of the session.
            with self.assertRaises(psycopg.errors.CannotConnectNow):
                conn.execute("SELECT v FROM rt_items WHERE id = 1")
            self.assertEqual(conn.execute("INSERT INTO rt_items VALUES (6001, 'w') ON CONFLICT "
                                          "(id) DO UPDATE SET v = 'w2' RETURNING v").fetchone()[0],
                             "w2")
        # On the wire, in the extended protocol too: ErrorResponse, then ReadyForQuery.
        w = Wire(sluice.port)
        self.assertEqual(w.login("app", APP_PASSWORD, "appdb")[0], "ok")
        sql = b"SELECT v FROM rt_items WHERE id = 1\0"
        w.send(b"P" + struct.pack("!I", 4 + len(sql) + 3) + b"\0" + sql + b"\0\0" +
               b"B" + struct.pack("!I", 12) + b"\0\0" + b"\0\0\0\0\0\0" +
               b"E" + struct.pack("!I", 9) + b"\0\0\0\0\0" + b"S" + struct.pack("!I", 4))
        replies = []
        while not replies or replies[-1][0] != b"Z":
            replies.append(w.read())
        print(f"read: {[(t, Wire.fields(b) if t == b'E' else b) for t, b in replies]}")
        self.assertEqual([t for t, _ in replies], [b"E", b"Z"])
        rows, err = w.query("UPDATE rt_items SET v = 'w3' WHERE id = 6001 RETURNING v")
        self.assertEqual((rows, err), ([["w3"]], None))  # the session goes on
        w.close()
        e = Wire.fields(replies[0][1])
        self.assertEqual((e["S"], e["C"]), ("ERROR", "57P03"))
        self.assertEqual(e["M"], 'no replica of database "appdb" can serve reads now')
        # What to do: where to look, and which settings let the primary take the reads.
        self.assertIn("SHOW REPLICAS", e.get("H", ""))
        self.assertIn("routing.all_replicas_banned", e.get("H", ""))

    def test_primary_default_serves_the_read_on_the_primary(self):
        st = state()
        sluice, _ = self.banned_sluice("primary")
        with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
            row = conn.execute("SELECT v, inet_server_port() FROM rt_items WHERE id = 1")
            self.assertEqual(row.fetchone(), ("v1", st["primary_port"]))


class SessionIdentity(unittest.TestCase):
    """Functions whose answer names the server itself (pg_backend_pid() and its kin) run on the
    primary even though they only read: a client that cancels its own query with
    pg_cancel_backend(pid) from another connection, as node-postgres users do, must get a pid of
    the server its statements run on. Transaction pooling, routing on, the replica checked; with
    an otherwise idle pool (LIFO idle list) A's next transaction lands on the same primary
    connection that answered pg_backend_pid(). (pool.size 1 would not do: B's cancel, which runs on
    the primary too, would wait behind A's pg_sleep.)"""

    def on_primary(self, pid):
        return superuser_sql("SELECT count(*) FROM pg_stat_activity WHERE pid = "
                             f"{int(pid)} AND datname = 'appdb' AND usename = 'app'") == "1"

    def test_backend_pid_names_the_primary_and_pg_cancel_backend_cancels(self):
        st = state()
        with Sluice(tweak=routed_config()) as sluice:
            wait_checked(sluice)
            with psycopg.connect(sluice.dsn(), autocommit=True) as a:
                pid = a.execute("SELECT pg_backend_pid()").fetchone()[0]
                pid_on_primary = self.on_primary(pid)
                print(f"\nA's pg_backend_pid(): {pid} (a primary backend: {pid_on_primary})")

                outcome = {}

                def sleep():
                    try:
                        a.execute("SELECT pg_sleep(10)")
                        outcome["error"] = None
                    except psycopg.Error as e:
                        outcome["error"] = e
                    outcome["at"] = time.time()

                t = threading.Thread(target=sleep)
                t.start()
                try:
                    # pg_sleep is volatile: it runs on the primary whatever the fix.
                    wait_for(lambda: superuser_sql(
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                        "AND query = 'SELECT pg_sleep(10)'") == "1",
                        what="A's pg_sleep(10) to run on the primary")
                    time.sleep(0.3)
                    with psycopg.connect(sluice.dsn(), autocommit=True) as b:
                        cancelled = b.execute("SELECT pg_cancel_backend(%s)", (pid,)).fetchone()[0]
                        cancel_at = time.time()
                    print(f"B: pg_cancel_backend({pid}) = {cancelled}")
                finally:
                    t.join(15)
                self.assertTrue(pid_on_primary, f"pid {pid} is not a primary backend")
                self.assertTrue(cancelled, f"pg_cancel_backend({pid}) found no such backend")
                err = outcome.get("error")
                self.assertIsNotNone(err, "A's pg_sleep(10) was not cancelled")
                self.assertEqual(err.sqlstate, "57014", str(err))
                waited = outcome["at"] - cancel_at
                print(f"A: {err.sqlstate} {waited:.3f} s after the cancel")
                self.assertLess(waited, 1.0)
                # The session goes on (on whichever primary connection is idle now: B's came
                # back after A's, so it is first in the LIFO list).
                self.assertTrue(self.on_primary(a.execute("SELECT pg_backend_pid()").fetchone()[0]))
                # A stable read that names no server still goes to the replica. B's
                # pg_cancel_backend() counted as a write (a volatile function), and under
                # read_consistency: global a read that names no relation waits for the database's
                # latest mark: on a loaded machine the replica may take longer than
                # max_consistency_wait to replay it, and that read goes to the primary. A read
                # misrouted as server identity would never reach the replica.
                on_replica = wait_until(lambda: a.execute(
                    "SELECT inet_server_port(), now() IS NOT NULL").fetchone()[0] ==
                    st["replica_port"], 10, step=0.05)
                self.assertIsNotNone(on_replica, "a stable read never went to the replica")
                # Extended protocol (psycopg's default), simple protocol, schema-qualified, and
                # inside an expression: each answered by the primary.
                simple = psycopg.ClientCursor(a)
                for sql, cur in (("SELECT pg_backend_pid(), inet_server_port()", a),
                                 ("SELECT pg_catalog.pg_backend_pid(), inet_server_port()", a),
                                 ("SELECT 1, pg_backend_pid(), inet_server_port()", a),
                                 ("SELECT pg_backend_pid(), inet_server_port()", simple),
                                 ("SELECT 1 + 0 * pg_backend_pid(), inet_server_port()", simple),
                                 ("SELECT inet_server_port() FROM pg_stat_get_backend_idset() "
                                  "LIMIT 1", simple)):
                    row = cur.execute(sql).fetchone()
                    print(f"{sql!r} ({'simple' if cur is simple else 'extended'}): {row}")
                    self.assertEqual(row[-1], st["primary_port"], sql)


if __name__ == "__main__":
    unittest.main(verbosity=2)
