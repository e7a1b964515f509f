"""pgbench through sluice: -i, then runs with -M simple, extended and prepared at -c 32 -j 2,
each with 0 failed transactions. Run length: SLUICE_PGBENCH_SECONDS (default 30)."""
import os
import re
import subprocess
import unittest

from harness import SharedSluice, APP_PASSWORD

SECONDS = int(os.environ.get("SLUICE_PGBENCH_SECONDS", "30"))


def pgbench(port, *args):
    env = dict(os.environ, PGPASSWORD=APP_PASSWORD, PGSSLMODE="disable")
    return subprocess.run(["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "app", *args, "appdb"],
                          capture_output=True, text=True, env=env, timeout=SECONDS * 4 + 120)


class Pgbench(SharedSluice):
    """The default test config pools in session mode with 40 server connections > 32 clients."""

    def test_init_and_runs_have_no_failures(self):
        r = pgbench(self.sluice.port, "-i", "-s", "2", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        for mode in ("simple", "extended", "prepared"):
            with self.subTest(mode=mode):
                r = pgbench(self.sluice.port, "-M", mode, "-c", "32", "-j", "2", "-T", str(SECONDS))
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                failed = re.search(r"number of failed transactions: (\d+)", r.stdout)
                processed = re.search(r"number of transactions actually processed: (\d+)", r.stdout)
                tps = re.search(r"tps = ([\d.]+)", r.stdout)
                self.assertIsNotNone(processed, r.stdout)
                self.assertGreater(int(processed.group(1)), 0)
                self.assertEqual(int(failed.group(1)) if failed else 0, 0, r.stdout)
                print(f"pgbench -M {mode} -c 32 -j 2 -T {SECONDS} through sluice: "
                      f"{processed.group(1)} transactions, 0 failed, tps {tps.group(1)}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
