"""README command 1 works: deploy/demo.sh starts primary + replica + Redis + sluice and prints a
connection string that psql can use (over TLS too); `deploy/demo.sh stop` stops it all."""
import os
import re
import subprocess
import unittest
import urllib.request

from harness import ROOT, free_port


class Demo(unittest.TestCase):
    def test_demo_starts_serves_and_stops(self):
        port = free_port()
        env = dict(os.environ, SLUICE_DEMO_PORT=str(port), SLUICE_DEMO_HTTP_PORT=str(free_port()),
                   SLUICE_DEMO_DIR=f"/tmp/sluice-demo-test-{port}")
        demo = os.path.join(ROOT, "deploy", "demo.sh")
        try:
            r = subprocess.run([demo], capture_output=True, text=True, env=env, timeout=600)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn("sluice is up: PostgreSQL 15", r.stdout)
            url = re.search(r'connect:\s+psql "([^"]+)"', r.stdout).group(1)
            tls_url = re.search(r'TLS:\s+psql "([^"]+)"', r.stdout).group(1)
            for u in (url, tls_url):
                q = subprocess.run(["psql", "-X", "-At", u, "-c", "SELECT current_user"],
                                   capture_output=True, text=True, timeout=30)
                self.assertEqual(q.stdout.strip(), "app", q.stderr)
            admin = re.search(r'admin:\s+psql "([^"]+)"', r.stdout).group(1)
            q = subprocess.run(["psql", "-X", "-At", admin, "-c", "SHOW VERSION"],
                               capture_output=True, text=True, timeout=30)
            self.assertIn("sluice", q.stdout, q.stderr)
            metrics = re.search(r"metrics:\s+curl (\S+)", r.stdout).group(1)
            with urllib.request.urlopen(metrics, timeout=10) as m:
                self.assertIn("sluice_queries_total", m.read().decode())
        finally:
            subprocess.run([demo, "stop"], env=env, capture_output=True, timeout=120)
        q = subprocess.run(["psql", "-X", "-At", f"postgres://app:secret@127.0.0.1:{port}/appdb",
                            "-c", "SELECT 1"], capture_output=True, text=True, timeout=30)
        self.assertNotEqual(q.returncode, 0, "sluice still answers after demo.sh stop")


if __name__ == "__main__":
    unittest.main(verbosity=2)
