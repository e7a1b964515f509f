"""pool.query_timeout, idle_transaction_timeout and client_idle_timeout close the client with the
SQLSTATE postgres uses for the same situation, and leave nothing running on the server."""
import select
import socket
import time
import unittest

import psycopg

from harness import Sluice, superuser_sql, wait_for


def backends_running(query_prefix):
    return int(superuser_sql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                             f"'{query_prefix}%' AND state = 'active'", db="postgres"))


class Timeouts(unittest.TestCase):
    def test_query_timeout_cancels_on_the_server_and_closes(self):
        def tweak(c):
            c["pool"]["query_timeout"] = "1s"
        with Sluice(tweak=tweak) as sl:
            conn = psycopg.connect(sl.dsn(), autocommit=True)
            self.assertEqual(conn.execute("SELECT pg_sleep(0.2), 1").fetchone()[1], 1)  # under the limit
            started = time.time()
            with self.assertRaises(psycopg.OperationalError) as ctx:
                conn.execute("SELECT pg_sleep(20) /* timeout-test */")
            elapsed = time.time() - started
            self.assertIn("query_timeout", str(ctx.exception))
            self.assertLess(elapsed, 3.0)
            wait_for(lambda: backends_running("SELECT pg_sleep(20) /* timeout-test */") == 0,
                     timeout=5, what="the timed-out query to end on the server")
            self.assertIn("query timeout", sl.log())
            with psycopg.connect(sl.dsn()) as again:  # others are served
                self.assertEqual(again.execute("SELECT 2").fetchone()[0], 2)

    def test_idle_in_transaction_is_ended_and_rolled_back(self):
        def tweak(c):
            c["pool"]["idle_transaction_timeout"] = "500ms"
        superuser_sql("DROP TABLE IF EXISTS idle_tx_t; CREATE TABLE idle_tx_t (x int); "
                      "GRANT ALL ON idle_tx_t TO app")
        with Sluice(tweak=tweak) as sl:
            conn = psycopg.connect(sl.dsn())
            conn.execute("INSERT INTO idle_tx_t VALUES (1)")  # transaction left open
            idle_since = time.time()
            # sluice ends the session (an error, then it closes): the client's socket turns
            # readable. Not sooner than the timeout.
            wait_for(lambda: select.select([conn.fileno()], [], [], 0)[0], timeout=5,
                     what="sluice to end the idle transaction")
            self.assertGreaterEqual(time.time() - idle_since, 0.45)
            with self.assertRaises(psycopg.OperationalError) as ctx:
                conn.execute("SELECT 1")
            self.assertIn("idle-in-transaction timeout", str(ctx.exception))
            self.assertEqual(superuser_sql("SELECT count(*) FROM idle_tx_t"), "0")
            # Outside a transaction the same idleness is fine.
            with psycopg.connect(sl.dsn(), autocommit=True) as ok:
                time.sleep(1.0)  # the point: idle twice the timeout, outside a transaction
                self.assertEqual(ok.execute("SELECT 3").fetchone()[0], 3)
        superuser_sql("DROP TABLE idle_tx_t")

    def test_client_idle_timeout(self):
        def tweak(c):
            c["pool"]["client_idle_timeout"] = "500ms"
        with Sluice(tweak=tweak) as sl:
            conn = psycopg.connect(sl.dsn(), autocommit=True)
            for _ in range(4):  # activity keeps it alive: 0.8 s in all, gaps under the 500 ms
                time.sleep(0.2)
                conn.execute("SELECT 1")
            idle_since = time.time()
            wait_for(lambda: select.select([conn.fileno()], [], [], 0)[0], timeout=5,
                     what="sluice to close the idle client")
            self.assertGreaterEqual(time.time() - idle_since, 0.45)
            with self.assertRaises(psycopg.OperationalError) as ctx:
                conn.execute("SELECT 1")
            self.assertIn("idle-session timeout", str(ctx.exception))
            self.assertIn("client idle timeout", sl.log())

    def test_client_login_timeout(self):
        def tweak(c):
            c["pool"]["client_login_timeout"] = "500ms"
        with Sluice(tweak=tweak) as sl:
            silent = socket.create_connection(("127.0.0.1", sl.port))  # never sends a startup packet
            started = time.time()
            silent.settimeout(5)
            data = silent.recv(4096)
            self.assertIn(b"08P01", data)
            self.assertIn(b"timeout during startup and authentication", data)
            self.assertLess(time.time() - started, 2.0)
            with psycopg.connect(sl.dsn()) as conn:  # a real client logs in well within it
                self.assertEqual(conn.execute("SELECT 5").fetchone()[0], 5)

    def test_timeouts_off_by_default(self):
        with Sluice() as sl:
            with psycopg.connect(sl.dsn()) as conn:
                conn.execute("SELECT 1")
                time.sleep(1.2)  # the point: idle longer than the timeouts above, none is on
                self.assertEqual(conn.execute("SELECT pg_sleep(1.2), 4").fetchone()[1], 4)


if __name__ == "__main__":
    unittest.main(verbosity=2)
