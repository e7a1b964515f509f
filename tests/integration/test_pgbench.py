"""pgbench through sluice: -i, then runs with -M simple, extended and prepared at -c 32 -j 2 in
session pooling, and at -c 64 over a pool of 20 in transaction pooling (prepared at -j 1 and -j 2,
TPC-B and select-only, with and without a replica), each with 0 failed transactions and none
hanging. Run length: SLUICE_PGBENCH_SECONDS (default 30)."""
import os
import re
import subprocess
import unittest

from harness import SharedSluice, Sluice, APP_PASSWORD

SECONDS = int(os.environ.get("SLUICE_PGBENCH_SECONDS", "30"))


def pgbench(port, *args):
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGSSLMODE="disable")
    return subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "app", *args, "appdb"],
                          capture_output=True, text=True, env=env, timeout=SECONDS * 4 + 120)


def check_run(test, r, what):
    test.assertEqual(r.returncode, 0, r.stdout + r.stderr)
    failed = re.search(r"number of failed transactions: (\d+)", r.stdout)
    processed = re.search(r"number of transactions actually processed: (\d+)", r.stdout)
    tps = re.search(r"tps = ([\d.]+)", r.stdout)
    test.assertIsNotNone(processed, r.stdout)
    test.assertGreater(int(processed.group(1)), 0)
    test.assertEqual(int(failed.group(1)) if failed else 0, 0, r.stdout)
    print(f"{what} through sluice: {processed.group(1)} transactions, 0 failed, "
          f"tps {tps.group(1)}")


class Pgbench(SharedSluice):
    """The default test config pools in session mode with 40 server connections > 32 clients."""

    def test_init_and_runs_have_no_failures(self):
        r = pgbench(self.sluice.port, "-i", "-s", "2", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        for mode in ("simple", "extended", "prepared"):
            with self.subTest(mode=mode):
                r = pgbench(self.sluice.port, "-M", mode, "-c", "32", "-j", "2", "-T", str(SECONDS))
                check_run(self, r, f"pgbench -M {mode} -c 32 -j 2 -T {SECONDS}")


class PgbenchTransactionPooling(unittest.TestCase):
    """64 clients over 20 server connections, named prepared statements included. pgbench
    prepares synchronously (PQprepare): a thread blocked in a prepare stalls its other clients,
    which may hold every server connection inside their transactions. With -j 1 (pgbench's
    default) or -j 2 that hung until sluice answered a known statement's Parse without a server;
    each run must end on time with 0 failures, also with a replica configured."""

    RUNS = (("prepared", "1", "tpcb-like"), ("prepared", "2", "select-only"),
            ("extended", "1", "tpcb-like"), ("simple", "2", "tpcb-like"))
    ROUTED_RUNS = (("prepared", "1", "select-only"), ("prepared", "2", "tpcb-like"))

    def run_matrix(self, runs, routing):
        def tweak(c):
            c.update(pool={"mode": "transaction", "size": 20})
            c["routing"] = {"enabled": routing}
        with Sluice(tweak=tweak) as sluice:
            r = pgbench(sluice.port, "-i", "-s", "2", "-q")
            self.assertEqual(r.returncode, 0, r.stderr)
            for mode, threads, script in runs:
                with self.subTest(mode=mode, threads=threads, script=script, routing=routing):
                    try:
                        r = pgbench(sluice.port, "-M", mode, "-c", "64", "-j", threads, "-b",
                                    script, "-T", str(SECONDS))
                    except subprocess.TimeoutExpired:
                        self.fail(f"pgbench -M {mode} -c 64 -j {threads} -b {script} -T {SECONDS}"
                                  " did not end: hung")
                    check_run(self, r, f"transaction pooling{', replica' if routing else ''}, "
                                       f"pgbench -M {mode} -c 64 -j {threads} -b {script} "
                                       f"-T {SECONDS}, pool 20")

    def test_prepared_and_simple_over_a_pool_of_20(self):
        self.run_matrix(self.RUNS, routing=False)

    def test_prepared_with_a_replica_configured(self):
        self.run_matrix(self.ROUTED_RUNS, routing=True)


if __name__ == "__main__":
    unittest.main(verbosity=2)
