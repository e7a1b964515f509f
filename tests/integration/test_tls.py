"""TLS: clients can require SSL with the test certificate (and verify it), plaintext still works,
and sluice can use TLS to the server (require and verify-full)."""
import unittest

import psycopg

from harness import Sluice, SharedSluice, state


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

    def test_disable_uses_plaintext(self):
        with Sluice() as sl:
            with psycopg.connect(sl.dsn()) as conn:
                self.assertFalse(ssl_in_use(conn))


if __name__ == "__main__":
    unittest.main(verbosity=2)
