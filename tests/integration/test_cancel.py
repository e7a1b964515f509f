"""A CancelRequest from a client reaches the server backend running its query: libpq's PQcancel
(psycopg's cancel) and psql's Ctrl-C both end pg_sleep(30) with 57014 in well under a second."""
import signal
import socket
import struct
import subprocess
import threading
import time
import unittest

import psycopg

from harness import SharedSluice, superuser_sql, wait_for
from pgwire import Wire


def running(text):
    """True once a backend of the primary is running exactly `text`."""
    sql = ("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '" +
           text.replace("'", "''") + "'")
    return superuser_sql(sql, db="postgres") != "0"


def when_running(text, action):
    """A started thread that runs action() once `text` runs on the primary; its time is
    appended to the returned list."""
    at = []

    def run():
        wait_for(lambda: running(text), timeout=10, interval=0.02, what=f"'{text}' to run")
        at.append(time.time())
        action()
    t = threading.Thread(target=run)
    t.start()
    return t, at


class Cancel(SharedSluice):
    def test_libpq_cancel_ends_the_query_with_57014(self):
        with psycopg.connect(self.sluice.dsn(), autocommit=True) as conn:
            query = "SELECT pg_sleep(30) /* libpq cancel */"
            thread, at = when_running(query, conn.cancel)
            with self.assertRaises(psycopg.errors.QueryCanceled) as ctx:
                conn.execute(query)
            elapsed = time.time() - at[0]
            thread.join()
            self.assertEqual(ctx.exception.sqlstate, "57014")
            self.assertLess(elapsed, 1.0, f"cancel took {elapsed:.3f}s")
            # The session is still usable after the cancel.
            self.assertEqual(conn.execute("SELECT 7").fetchone()[0], 7)
            print(f"cancel latency via sluice: {elapsed * 1000:.0f} ms")

    def test_psql_ctrl_c_ends_the_query(self):
        query = "SELECT pg_sleep(30) /* psql ctrl-c */"
        proc = subprocess.Popen(["psql", "-X", "-d", self.sluice.dsn(), "-c", query],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        wait_for(lambda: running(query), what="psql's query to run on the primary")
        started = time.time()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        elapsed = time.time() - started
        self.assertIn(b"canceling statement due to user request", err)
        self.assertLess(elapsed, 1.0, f"psql cancel took {elapsed:.3f}s")

    def test_a_wrong_cancel_key_cancels_nothing(self):
        w = Wire(self.sluice.port)
        self.assertEqual(w.login("app", "secret", "appdb")[0], "ok")
        pid, secret = w.key  # the key sluice handed out; flip one bit of the secret

        def wrong_cancel():
            s = socket.create_connection(("127.0.0.1", self.sluice.port))
            s.sendall(struct.pack("!IIII", 16, 80877102, pid, secret ^ 1))
            s.close()
        thread, at = when_running("SELECT pg_sleep(0.8), 1", wrong_cancel)
        rows, err = w.query("SELECT pg_sleep(0.8), 1")
        thread.join()
        self.assertEqual(len(at), 1, "the wrong cancel was never sent while the query ran")
        self.assertIsNone(err)
        self.assertEqual(rows, [["", "1"]])
        w.close()

if __name__ == "__main__":
    unittest.main(verbosity=2)
