"""psql through sluice (session and transaction pooling) behaves exactly as psql direct: simple and multi-statement queries, errors
followed by good queries, transactions and ROLLBACK, NOTICEs, COPY and \\copy in and out,
LISTEN/NOTIFY, unicode, bytea, NULLs, and a 50 MB result."""
import hashlib
import os
import re
import subprocess
import unittest

from harness import SharedSluice, Sluice, direct_dsn, superuser_sql

HERE = os.path.dirname(os.path.abspath(__file__))


def normalize(text):
    # The backend PID differs between the two runs; nothing else may.
    return re.sub(rb"server process with PID \d+", b"server process with PID N", text)


def run_psql(dsn, *args, stdin=None):
    env = dict(os.environ, PGCLIENTENCODING="UTF8")
    return subprocess.run(["psql", "-X", "-d", dsn, *args], input=stdin, capture_output=True,
                          timeout=300, env=env)


class PsqlParity(SharedSluice):
    def setUp(self):
        superuser_sql("DROP TABLE IF EXISTS parity_t, parity_copy")

    def test_script_output_matches_direct(self):
        script = os.path.join(HERE, "parity.sql")
        direct = run_psql(direct_dsn(), "-a", "-f", script)
        superuser_sql("DROP TABLE IF EXISTS parity_t, parity_copy")
        proxied = run_psql(self.sluice.dsn(), "-a", "-f", script)
        self.assertIn(b"division by zero", direct.stderr)
        self.assertIn(b"notice from plpgsql: 42", direct.stderr)
        self.assertIn(b'Asynchronous notification "parity_chan" with payload "payload one"', direct.stdout)
        self.assertIn("héllo wörld ✓ 日本語 🚀".encode(), direct.stdout)
        self.assertEqual(direct.returncode, proxied.returncode)
        self.assertEqual(normalize(direct.stdout).decode(), normalize(proxied.stdout).decode())
        self.assertEqual(direct.stderr.decode(), proxied.stderr.decode())

    def test_multi_statement_string_with_error_in_the_middle(self):
        sql = "SELECT 1 AS a; SELECT 1/0; SELECT 3 AS c"
        direct = run_psql(direct_dsn(), "-c", sql)
        proxied = run_psql(self.sluice.dsn(), "-c", sql)
        self.assertEqual((direct.stdout, direct.stderr), (proxied.stdout, proxied.stderr))
        self.assertIn(b"division by zero", proxied.stderr)

    def test_50_mb_result_is_identical(self):
        sql = "SELECT g, repeat(md5(g::text), 32) AS payload FROM generate_series(1, 50000) g"
        direct = run_psql(direct_dsn(), "-At", "-c", sql)
        proxied = run_psql(self.sluice.dsn(), "-At", "-c", sql)
        self.assertEqual(proxied.returncode, 0, proxied.stderr)
        self.assertGreater(len(direct.stdout), 50 * 1000 * 1000)
        self.assertEqual(hashlib.sha256(direct.stdout).hexdigest(),
                         hashlib.sha256(proxied.stdout).hexdigest())

    def test_large_single_row_and_large_query_text(self):
        # One 20 MB DataRow and a 5 MB query string stream through without being buffered whole.
        big_literal = "x" * (5 * 1024 * 1024)
        sql = f"SELECT length('{big_literal}'), md5(repeat('ab', 10 * 1024 * 1024));".encode()
        proxied = run_psql(self.sluice.dsn(), "-At", "-f", "-", stdin=sql)
        direct = run_psql(direct_dsn(), "-At", "-f", "-", stdin=sql)
        self.assertEqual(proxied.stdout, direct.stdout)
        self.assertTrue(proxied.stdout.startswith(b"5242880|"), proxied.stdout[:100])
        row = run_psql(self.sluice.dsn(), "-At", "-c", "SELECT repeat('z', 20 * 1024 * 1024)")
        self.assertEqual(len(row.stdout.strip()), 20 * 1024 * 1024)


class PsqlParityTransactionPooling(PsqlParity):
    """The same script, in transaction pooling over 2 server connections: LISTEN pins the session,
    everything else moves between server connections, and psql cannot tell."""

    @classmethod
    def setUpClass(cls):
        cls.sluice = Sluice(tweak=lambda c: c.update(pool={"mode": "transaction", "size": 2}))
        cls.sluice.start()


if __name__ == "__main__":
    unittest.main(verbosity=2)
