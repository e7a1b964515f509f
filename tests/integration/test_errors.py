"""Login errors carry the right SQLSTATE and close the connection; malformed input closes only
the offending connection while sluice keeps serving everyone else."""
import socket
import struct
import time
import unittest

import psycopg

from harness import Sluice, SharedSluice, wait_for
from pgwire import Wire


class LoginErrors(SharedSluice):
    def wire(self):
        return Wire(self.sluice.port)

    def assert_still_serving(self):
        with psycopg.connect(self.sluice.dsn()) as conn:
            self.assertEqual(conn.execute("SELECT 40 + 2").fetchone()[0], 42)

    def test_wrong_password_is_28P01_and_closes(self):
        w = self.wire()
        status, err = w.login("app", "wrong", "appdb")
        self.assertEqual(status, "error")
        self.assertEqual(err["C"], "28P01")
        self.assertEqual(err["S"], "FATAL")
        self.assertIn('password authentication failed for user "app"', err["M"])
        self.assertTrue(w.closed_by_peer())
        self.assertIn("password authentication failed", self.sluice.log())
        self.assertNotIn("wrong", self.sluice.log())  # the attempted password never reaches the log

    def test_unknown_user_looks_like_wrong_password(self):
        status, err = self.wire().login("nobody", "x", "appdb")
        self.assertEqual((status, err["C"]), ("error", "28P01"))

    def test_unknown_database_is_3D000(self):
        w = self.wire()
        status, err = w.login("app", "secret", "nosuchdb")
        self.assertEqual(status, "error")
        self.assertEqual(err["C"], "3D000")
        self.assertIn('database "nosuchdb" does not exist', err["M"])
        self.assertTrue(w.closed_by_peer())

    def test_good_login_reports_parameters_and_key(self):
        w = self.wire()
        status, params = w.login("app", "secret", "appdb", application_name="wire-test")
        self.assertEqual(status, "ok")
        self.assertEqual(params["application_name"], "wire-test")
        self.assertEqual(params["client_encoding"], "UTF8")
        self.assertIn("server_version", params)
        rows, err = w.query("SELECT current_user, current_database()")
        self.assertIsNone(err)
        self.assertEqual(rows, [["app", "appdb"]])
        w.send_msg(b"X")
        self.assertTrue(w.closed_by_peer())

    def test_garbage_first_packet(self):
        s = socket.create_connection(("127.0.0.1", self.sluice.port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(4096)
        self.assertTrue(data.startswith(b"E"), data)
        self.assertIn(b"08P01", data)
        self.assertEqual(s.recv(4096), b"")  # closed
        self.assert_still_serving()

    def test_startup_length_2_pow_31_minus_1(self):
        s = socket.create_connection(("127.0.0.1", self.sluice.port))
        s.sendall(struct.pack("!II", 2**31 - 1, 196608))
        data = s.recv(4096)
        self.assertIn(b"08P01", data)
        self.assertIn(b"invalid length of startup packet", data)
        self.assertEqual(s.recv(4096), b"")
        self.assert_still_serving()

    def test_message_length_2_pow_31_minus_1_after_login(self):
        w = self.wire()
        self.assertEqual(w.login("app", "secret", "appdb")[0], "ok")
        w.send(b"Q" + struct.pack("!I", 2**31 - 1) + b"SELECT")
        typ, body = w.read()
        self.assertEqual(typ, b"E")
        self.assertEqual(Wire.fields(body)["C"], "08P01")
        self.assertTrue(w.closed_by_peer())
        self.assert_still_serving()

    def test_connection_cut_mid_message(self):
        for cut_in_startup in (True, False):
            w = self.wire()
            if cut_in_startup:
                w.send(struct.pack("!II", 80, 196608) + b"user\0ap")
            else:
                self.assertEqual(w.login("app", "secret", "appdb")[0], "ok")
                w.send(b"Q" + struct.pack("!I", 1000) + b"SELECT pg_sleep(")
            w.close()
        # sluice has let go of both cut clients (their sockets closed mid-message).
        wait_for(lambda: sum(v for k, v in self.sluice.metrics().items()
                             if k.startswith("sluice_client_connections{") and "admin" not in k)
                 == 0, timeout=5, what="sluice to drop the cut clients")
        self.assertTrue(self.sluice.alive())
        self.assert_still_serving()

    def test_ssl_request_then_plaintext_is_refused(self):
        # CVE-2021-23214: bytes pipelined after SSLRequest must not be read as plaintext.
        s = socket.create_connection(("127.0.0.1", self.sluice.port))
        startup = struct.pack("!II", 8, 80877103)
        s.sendall(startup + struct.pack("!II", 8, 196608))
        data = s.recv(4096)
        self.assertIn(b"08P01", data)
        self.assert_still_serving()


class ClientLimit(unittest.TestCase):
    def test_more_clients_than_allowed_is_53300(self):
        def tweak(c):
            c["pool"]["max_client_conn"] = 2
        with Sluice(tweak=tweak) as sl:
            held = [psycopg.connect(sl.dsn()) for _ in range(2)]
            w = Wire(sl.port)
            status, err = w.login("app", "secret", "appdb")
            self.assertEqual(status, "error")
            self.assertEqual(err["C"], "53300")
            self.assertIn("too many clients", err["M"])
            self.assertIn("max_client_conn", err.get("H", ""))
            self.assertTrue(w.closed_by_peer())
            held.pop().close()
            wait_for(lambda: sl.metrics()['sluice_client_connections{state="active"}'] == 1,
                     timeout=5, what="sluice to see the client leave")
            with psycopg.connect(sl.dsn()) as conn:  # room again
                self.assertEqual(conn.execute("SELECT 1").fetchone()[0], 1)
            for c in held:
                c.close()


class PoolExhausted(unittest.TestCase):
    def test_waiting_for_a_server_connection_times_out_with_53300(self):
        def tweak(c):
            c["pool"].update(size=1, query_wait_timeout="300ms")
        with Sluice(tweak=tweak) as sl:
            holder = psycopg.connect(sl.dsn())
            started = time.time()
            status, err = Wire(sl.port).login("app", "secret", "appdb")
            waited = time.time() - started
            self.assertEqual((status, err["C"]), ("error", "53300"))
            self.assertIn("pool size 1", err["M"])
            self.assertGreater(waited, 0.25)
            self.assertLess(waited, 5)
            holder.close()
            with psycopg.connect(sl.dsn()) as conn:
                self.assertEqual(conn.execute("SELECT 1").fetchone()[0], 1)


if __name__ == "__main__":
    unittest.main(verbosity=2)
