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

from harness import SharedSluice
from pgwire import Wire


class Cancel(SharedSluice):
    def test_libpq_cancel_ends_the_query_with_57014(self):
        with psycopg.connect(self.sluice.dsn(), autocommit=True) as conn:
            timer = threading.Timer(0.5, conn.cancel)
            timer.start()
            started = time.time()
            with self.assertRaises(psycopg.errors.QueryCanceled) as ctx:
                conn.execute("SELECT pg_sleep(30)")
            elapsed = time.time() - started - 0.5
            self.assertEqual(ctx.exception.sqlstate, "57014")
            self.assertLess(elapsed, 1.0, f"cancel took {elapsed:.3f}s")
            # The session is still usable after the cancel.
            self.assertEqual(conn.execute("SELECT 7").fetchone()[0], 7)
            print(f"cancel latency via sluice: {elapsed * 1000:.0f} ms")

    def test_psql_ctrl_c_ends_the_query(self):
        proc = subprocess.Popen(["psql", "-X", "-d", self.sluice.dsn(), "-c", "SELECT pg_sleep(30)"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(1.0)  # let psql log in and send the query
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
        timer = threading.Timer(0.2, wrong_cancel)
        timer.start()
        rows, err = w.query("SELECT pg_sleep(0.8), 1")
        timer.join()
        self.assertIsNone(err)
        self.assertEqual(rows, [["", "1"]])
        w.close()

if __name__ == "__main__":
    unittest.main(verbosity=2)
