"""Session pooling and process lifecycle: server connections are reused and reset between
clients (nothing leaks), startup parameters are honoured, md5/trust auth, several workers,
SIGTERM drains in-flight transactions and exits 0, SIGHUP reloads users and pool sizes."""
import json
import select
import signal
import threading
import time
import unittest

import psycopg

from harness import Sluice, superuser_sql, wait_for
from pgwire import Wire


def sluice_backends():
    return int(superuser_sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                             "AND backend_type = 'client backend'", db="postgres"))


def idle_servers(sl):
    return sl.metrics()['sluice_server_connections{database="appdb",user="app",state="idle"}']


def wait_log(sl, text, timeout=10):
    wait_for(lambda: text in sl.log(), timeout=timeout, what=f"'{text}' in sluice's log")


class SessionPool(unittest.TestCase):
    def test_server_connection_is_reused_and_reset(self):
        with Sluice() as sl:
            with psycopg.connect(sl.dsn(), autocommit=True) as c1:
                pid1 = c1.execute("SELECT pg_backend_pid()").fetchone()[0]
                c1.execute("SET search_path = leaked_schema")
                c1.execute("PREPARE leaked AS SELECT 1")
                c1.execute("CREATE TEMP TABLE leaked_tmp (x int)")
            # The reset runs after the client leaves; then the connection is idle in the pool.
            wait_for(lambda: idle_servers(sl) == 1, what="the reset server connection back idle")
            with psycopg.connect(sl.dsn(), autocommit=True) as c2:
                pid2 = c2.execute("SELECT pg_backend_pid()").fetchone()[0]
                self.assertEqual(pid1, pid2, "the idle server connection was not reused")
                self.assertEqual(c2.execute("SHOW search_path").fetchone()[0], '"$user", public')
                self.assertEqual(c2.execute("SELECT count(*) FROM pg_prepared_statements").fetchone()[0], 0)
                self.assertIsNone(c2.execute("SELECT to_regclass('pg_temp.leaked_tmp')").fetchone()[0])

    def test_startup_parameters_are_applied(self):
        with Sluice() as sl:
            dsn = sl.dsn(application_name="lifecycle-app", options="'-c search_path=s1,public -c statement_timeout=1234'")
            with psycopg.connect(dsn) as conn:
                self.assertEqual(conn.execute("SHOW application_name").fetchone()[0], "lifecycle-app")
                self.assertEqual(conn.execute("SHOW search_path").fetchone()[0], "s1,public")  # as direct
                self.assertEqual(conn.execute("SHOW statement_timeout").fetchone()[0], "1234ms")
                self.assertEqual(conn.info.parameter_status("application_name"), "lifecycle-app")
            status, err = Wire(sl.port).login("app", "secret", "appdb", DateStyle="nonsense")
            self.assertEqual(status, "error")
            self.assertEqual(err["C"], "22023")

    def test_pool_size_is_a_hard_limit(self):
        def tweak(c):
            c["pool"]["size"] = 3
        with Sluice(tweak=tweak) as sl:
            results = []

            def client():
                with psycopg.connect(sl.dsn(), autocommit=True) as conn:
                    results.append(conn.execute("SELECT pg_sleep(0.3), pg_backend_pid()").fetchone()[1])
            threads = [threading.Thread(target=client) for _ in range(9)]
            for t in threads:
                t.start()
            peak = 0
            while any(t.is_alive() for t in threads):
                peak = max(peak, sluice_backends())
                time.sleep(0.05)
            for t in threads:
                t.join()
            self.assertEqual(len(results), 9)
            self.assertLessEqual(peak, 3)
            self.assertLessEqual(len(set(results)), 3)

    def test_reserve_pool_after_reserve_pool_timeout(self):
        def tweak(c):
            c["pool"].update(size=1, reserve_pool_size=1, reserve_pool_timeout="300ms",
                             query_wait_timeout="1500ms")
        with Sluice(tweak=tweak) as sl:
            first = psycopg.connect(sl.dsn())
            started = time.time()
            second = psycopg.connect(sl.dsn())  # waits reserve_pool_timeout, then gets the reserve
            waited = time.time() - started
            self.assertGreaterEqual(waited, 0.25)
            self.assertLess(waited, 1.4)
            pids = {c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in (first, second)}
            self.assertEqual(len(pids), 2)
            status, err = Wire(sl.port).login("app", "secret", "appdb")  # size + reserve in use
            self.assertEqual((status, err["C"]), ("error", "53300"))
            self.assertLessEqual(sluice_backends(), 2)
            self.assertIn("reserve connection", sl.log())
            first.close()
            second.close()

    def test_min_pool_size_prewarms(self):
        def tweak(c):
            c["pool"].update(size=5, min_pool_size=3)
            c["users"] = [{"name": "app", "password": "secret"}]
        before = sluice_backends()
        with Sluice(tweak=tweak) as sl:
            wait_for(lambda: sluice_backends() >= before + 3, timeout=5, what="3 prewarmed")
            self.assertEqual(sluice_backends(), before + 3)  # before any client connected
            with psycopg.connect(sl.dsn()) as conn:
                self.assertEqual(conn.execute("SELECT 1").fetchone()[0], 1)
            # Nothing to wait for: this checks that nothing happens (no connection opened above
            # the minimum) over a few of sluice's 1 s maintenance rounds.
            time.sleep(1.5)
            self.assertEqual(sluice_backends(), before + 3)  # still 3, never above min when idle

    def test_two_workers_share_one_pool(self):
        def tweak(c):
            c["workers"] = 2
            c["pool"]["size"] = 2
        with Sluice(tweak=tweak) as sl:
            pids = set()
            for _ in range(12):
                with psycopg.connect(sl.dsn()) as conn:
                    pids.add(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            self.assertLessEqual(len(pids), 2)
            conns = [psycopg.connect(sl.dsn()) for _ in range(2)]
            for c in conns:
                self.assertEqual(c.execute("SELECT 1").fetchone()[0], 1)
                c.close()


class Auth(unittest.TestCase):
    def test_md5_to_clients_and_to_the_server(self):
        def tweak(c):
            c["auth_type"] = "md5"
        with Sluice(tweak=tweak) as sl:
            # md5user's role on the server is md5-hashed and its pg_hba line says md5.
            status, _ = Wire(sl.port).login("md5user", "md5pass", "appdb")
            self.assertEqual(status, "ok")
            status, err = Wire(sl.port).login("md5user", "nope", "appdb")
            self.assertEqual((status, err["C"]), ("error", "28P01"))
            with psycopg.connect(sl.dsn()) as conn:
                self.assertEqual(conn.execute("SELECT current_user").fetchone()[0], "app")

    def test_scram_verifier_in_config(self):
        verifier = superuser_sql("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'", db="postgres")
        self.assertTrue(verifier.startswith("SCRAM-SHA-256$"))

        def tweak(c):
            c["users"] = [{"name": "app", "password": verifier, "server_password": "secret"}]
        with Sluice(tweak=tweak) as sl:
            with psycopg.connect(sl.dsn()) as conn:
                self.assertEqual(conn.execute("SELECT 5").fetchone()[0], 5)
            status, err = Wire(sl.port).login("app", "not-it", "appdb")
            self.assertEqual(err["C"], "28P01")

    def test_every_server_auth_method(self):
        # The server asks: scram-sha-256 (app), md5 (md5user), password (pwuser), trust (trustuser).
        def tweak(c):
            c["users"] = [{"name": "app", "password": "secret"},
                          {"name": "md5user", "password": "md5pass"},
                          {"name": "pwuser", "password": "pwpass"},
                          {"name": "trustuser", "password": "client-side-only"}]
        with Sluice(tweak=tweak) as sl:
            for user, password in (("app", "secret"), ("md5user", "md5pass"),
                                   ("pwuser", "pwpass"), ("trustuser", "client-side-only")):
                with self.subTest(user=user):
                    with psycopg.connect(sl.dsn(user=user, password=password)) as conn:
                        self.assertEqual(conn.execute("SELECT current_user").fetchone()[0], user)
            self.assertNotIn("pwpass", sl.log())

    def test_server_rejecting_the_login_reaches_the_client(self):
        def tweak(c):
            c["users"] = [{"name": "app", "password": "secret", "server_password": "not-the-password"}]
        with Sluice(tweak=tweak) as sl:
            status, err = Wire(sl.port).login("app", "secret", "appdb")
            self.assertEqual((status, err["C"]), ("error", "28P01"))
            self.assertIn("server login failed", err["M"])
            self.assertNotIn("not-the-password", sl.log())

    def test_trust(self):
        def tweak(c):
            c["auth_type"] = "trust"
            c["log"] = {"level": "info", "format": "json"}
        with Sluice(tweak=tweak) as sl:
            with psycopg.connect(sl.dsn(password="anything")) as conn:
                self.assertEqual(conn.execute("SELECT current_user").fetchone()[0], "app")
        lines = [json.loads(line) for line in sl.log().splitlines() if line.strip()]
        self.assertTrue(any("logged in" in l["msg"] for l in lines))
        self.assertTrue(all({"ts", "level", "msg"} <= l.keys() for l in lines))


class Signals(unittest.TestCase):
    MODE = "session"

    def make(self, tweak=None):
        def both(c):
            c["pool"]["mode"] = self.MODE
            if tweak:
                tweak(c)
        return Sluice(tweak=both)

    def test_sigterm_lets_the_transaction_finish_then_exits_0(self):
        sl = self.make().start()
        self.addCleanup(sl.stop)
        conn = psycopg.connect(sl.dsn())
        self.addCleanup(conn.close)
        idle = psycopg.connect(sl.dsn())
        self.addCleanup(idle.close)
        conn.execute("CREATE TABLE IF NOT EXISTS drain_t (x int)")
        conn.commit()
        conn.execute("INSERT INTO drain_t VALUES (1)")  # a transaction is now open
        sl.signal(signal.SIGTERM)
        wait_log(sl, "no new clients; waiting up to")
        # sluice tells the idle client (57P01) and closes it: its socket turns readable.
        wait_for(lambda: select.select([idle.fileno()], [], [], 0)[0], what="the idle client told")
        # New clients are refused; the idle client was closed with 57P01.
        with self.assertRaises(psycopg.OperationalError):
            psycopg.connect(sl.dsn(), connect_timeout=2)
        with self.assertRaises(psycopg.OperationalError) as ctx:
            idle.execute("SELECT 1")
        self.assertIn("shutting down", str(ctx.exception))
        self.assertTrue(sl.alive(), "sluice must wait for the open transaction")
        conn.execute("INSERT INTO drain_t VALUES (2)")
        conn.commit()
        self.assertEqual(sl.proc.wait(10), 0)
        self.assertEqual(superuser_sql("SELECT count(*) FROM drain_t WHERE x IN (1, 2)"), "2")
        superuser_sql("DROP TABLE drain_t")
        sl.stop()

    def test_shutdown_timeout_closes_stuck_transactions(self):
        def tweak(c):
            c["shutdown_timeout"] = "1s"
        sl = self.make(tweak).start()
        self.addCleanup(sl.stop)
        conn = psycopg.connect(sl.dsn())
        self.addCleanup(conn.close)
        conn.execute("SELECT 1")  # opens a transaction and leaves it open
        started = time.time()
        sl.signal(signal.SIGTERM)
        self.assertEqual(sl.proc.wait(15), 0)
        self.assertLess(time.time() - started, 8)
        sl.stop()

    def test_sighup_reloads_users_and_pool_size(self):
        def tweak(c):
            c["users"] = [{"name": "app", "password": "secret"}]
        sl = self.make(tweak).start()
        try:
            status, err = Wire(sl.port).login("other", "otherpass", "appdb")
            self.assertEqual(err["C"], "28P01")
            sl.config["users"].append({"name": "other", "password": "otherpass"})
            sl.config["pool"]["size"] = 1
            sl.write_config()
            sl.signal(signal.SIGHUP)
            wait_log(sl, "reloaded")
            with psycopg.connect(sl.dsn(user="other", password="otherpass")) as conn:
                self.assertEqual(conn.execute("SELECT current_user").fetchone()[0], "other")
            # A broken file keeps the running config.
            with open(sl.config_path, "w") as f:
                f.write("pool:\n  sise: 1\n")
            sl.signal(signal.SIGHUP)
            wait_log(sl, "reload failed")
            self.assertTrue(sl.alive())
            with psycopg.connect(sl.dsn()) as conn:
                self.assertEqual(conn.execute("SELECT 1").fetchone()[0], 1)
        finally:
            self.assertEqual(sl.stop(), 0)


class SignalsTransactionPooling(Signals):
    """The same drain rules when clients hold no server connection between transactions."""
    MODE = "transaction"


if __name__ == "__main__":
    unittest.main(verbosity=2)
