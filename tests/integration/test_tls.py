"""TLS: clients can require SSL with the test certificate (and verify it), plaintext still works,
and sluice can use TLS to the server (require and verify-full)."""
import os
import re
import time
import unittest

import psycopg

from harness import Sluice, SharedSluice, state, superuser_sql, wait_for


def ssl_in_use(conn):
    return conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0]


class ClientTls(SharedSluice):
    def test_sslmode_require(self):
        with psycopg.connect(self.sluice.dsn(sslmode="require")) as conn:
            self.assertEqual(conn.pgconn.ssl_in_use, True)
            self.assertEqual(conn.execute("SELECT 1").fetchone()[0], 1)

    def test_sslmode_verify_full_against_the_ca(self):
        ca = f"{state()['certs']}/ca.crt"
        dsn = self.sluice.dsn(sslmode="verify-full", sslrootcert=ca).replace("127.0.0.1", "localhost")
        with psycopg.connect(dsn) as conn:
            self.assertTrue(conn.pgconn.ssl_in_use)
            big = conn.execute("SELECT repeat('t', 5000000)").fetchone()[0]
            self.assertEqual(len(big), 5000000)

    def test_sslmode_disable(self):
        with psycopg.connect(self.sluice.dsn(sslmode="disable")) as conn:
            self.assertFalse(conn.pgconn.ssl_in_use)
            self.assertEqual(conn.execute("SELECT 2").fetchone()[0], 2)

    def test_no_certificate_means_N(self):
        def tweak(c):
            del c["tls"]
        with Sluice(tweak=tweak) as sl:
            with self.assertRaises(psycopg.OperationalError) as ctx:
                psycopg.connect(sl.dsn(sslmode="require"))
            self.assertIn("does not support SSL", str(ctx.exception))
            with psycopg.connect(sl.dsn(sslmode="prefer")) as conn:
                self.assertFalse(conn.pgconn.ssl_in_use)


class ServerTls(unittest.TestCase):
    def check(self, mode, **extra):
        def tweak(c):
            c["tls"].update(server_tls=mode, **extra)
        with Sluice(tweak=tweak) as sl:
            with psycopg.connect(sl.dsn()) as conn:
                self.assertTrue(ssl_in_use(conn), f"server_tls={mode} did not use TLS")

    def test_require(self):
        self.check("require")

    def test_verify_full(self):
        self.check("verify-full", server_ca=f"{state()['certs']}/ca.crt")

    def test_verify_full_rejects_a_wrong_ca(self):
        # The server certificate does not chain to this CA (the client cert acts as one).
        def tweak(c):
            c["tls"].update(server_tls="verify-full", server_ca=f"{state()['certs']}/server.crt")
        with Sluice(tweak=tweak) as sl:
            with self.assertRaises(psycopg.OperationalError) as ctx:
                psycopg.connect(sl.dsn())
            self.assertIn("TLS handshake failed", str(ctx.exception))

    def side_connections(self, **tls):
        """application_name -> {SSL in use} of every login sluice made as app, from the
        primary's log (log_connections for app), with read routing on (the health monitor logs
        in and fetches the catalog) and a slow statement explained."""
        def tweak(c):
            c["tls"].update(**tls)
            c["routing"] = {"enabled": True}
            c["pool"] = {"mode": "transaction", "size": 4}
            c["insights"] = {"slow_query_threshold": "100ms", "explain": True}
        log = os.path.join(state()["dir"], "primary.log")
        seen = {}
        try:
            superuser_sql("ALTER SYSTEM SET log_connections = on")
            superuser_sql("SELECT pg_reload_conf()")
            # Applied once a new backend sees it (the postmaster reloads asynchronously).
            wait_for(lambda: superuser_sql("SHOW log_connections") == "on", timeout=10,
                     what="log_connections on")
            start = os.path.getsize(log)
            with Sluice(tweak=tweak) as sl:
                try:
                    with psycopg.connect(sl.dsn(), autocommit=True) as conn:
                        conn.execute("SELECT count(*) FROM generate_series(1, 3000000)")
                except psycopg.OperationalError:
                    pass  # the data path refuses a wrong CA itself
                deadline = time.time() + 5
                while time.time() < deadline and "sluice_explain" not in seen:
                    with open(log, errors="replace") as f:
                        f.seek(start)
                        for line in f:
                            m = re.search(r"connection authorized: user=app .*"
                                          r"application_name=(sluice\w*)", line)
                            if m:
                                seen.setdefault(m.group(1), set()).add("SSL enabled" in line)
                    time.sleep(0.1)
        finally:
            superuser_sql("ALTER SYSTEM RESET log_connections")
            superuser_sql("SELECT pg_reload_conf()")
        return seen

    def test_verify_full_covers_every_side_connection(self):
        seen = self.side_connections(server_tls="verify-full",
                                     server_ca=f"{state()['certs']}/ca.crt")
        print("connections sluice opened:", seen)
        self.assertIn("sluice_health", seen)
        self.assertIn("sluice_explain", seen)
        for name, ssl in seen.items():
            self.assertEqual(ssl, {True}, f"{name} is not encrypted")

    def test_side_connections_verify_the_ca_too(self):
        # A CA that did not sign the server: no side connection may log in (libpq's default
        # sslmode=prefer would have, unverified).
        seen = self.side_connections(server_tls="verify-full",
                                     server_ca=f"{state()['certs']}/server.crt")
        print("connections sluice opened with a wrong CA:", seen)
        self.assertEqual(seen, {})

    def test_disable_uses_plaintext(self):
        with Sluice() as sl:
            with psycopg.connect(sl.dsn()) as conn:
                self.assertFalse(ssl_in_use(conn))


if __name__ == "__main__":
    unittest.main(verbosity=2)
