"""The command line: --check-config names key and line for a typo, --version, --help, bad args,
the default config path."""
import os
import subprocess
import tempfile
import unittest

from harness import SLUICE, ROOT


def run(*args, env=None):
    return subprocess.run([SLUICE, *args], capture_output=True, text=True, timeout=30, env=env)


class Cli(unittest.TestCase):
    def write(self, text):
        fd, path = tempfile.mkstemp(suffix=".yaml")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.addCleanup(os.remove, path)
        return path

    def test_typo_in_a_key_names_key_and_line(self):
        path = self.write("listen:\n  postgres: 127.0.0.1:6432\ndatabases:\n  appdb:\n"
                          "    primary: { host: 127.0.0.1, port: 5432 }\nusers:\n"
                          "  - name: app\n    pasword: secret\n")
        r = run("--check-config", path)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(f"{path}:8", r.stderr)
        self.assertIn("users[0].pasword", r.stderr)
        self.assertIn("did you mean 'password'", r.stderr)

    def test_the_demo_config_checks_clean(self):
        certs = tempfile.mkdtemp()
        for name in ("server.crt", "server.key"):
            open(os.path.join(certs, name), "w").close()
        env = dict(os.environ, APP_PASSWORD="secret", OPS_PASSWORD="x", PRIMARY_PORT="5432", REPLICA_PORT="5433",
                   REDIS_PORT="6379", SLUICE_CERT_DIR=certs)
        demo = os.path.join(ROOT, "deploy", "sluice.example.yaml")
        r = subprocess.run([SLUICE, "--check-config", demo], capture_output=True, text=True, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("configuration OK", r.stdout)

    def test_version_and_help(self):
        r = run("--version")
        self.assertEqual(r.returncode, 0)
        self.assertRegex(r.stdout, r"^sluice \d+\.\d+\.\d+")
        r = run("--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("--check-config", r.stdout)

    def test_bad_arguments(self):
        self.assertEqual(run("--bogus").returncode, 2)
        self.assertEqual(run("--probe").returncode, 2)
        # Without --config: $SLUICE_CONFIG, else /etc/sluice/sluice.yaml.
        no_env = {k: v for k, v in os.environ.items() if k != "SLUICE_CONFIG"}
        if not os.path.exists("/etc/sluice/sluice.yaml"):
            r = run(env=no_env)
            self.assertEqual(r.returncode, 1)
            self.assertIn("/etc/sluice/sluice.yaml: cannot open", r.stderr)
        path = self.write("databases:\n  d:\n    primary: {host: h}\nauth_type: trust\n")
        r = run("--check-config", env=dict(no_env, SLUICE_CONFIG=path))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"configuration OK: {path}", r.stdout)
        r = run("--config", "/nonexistent.yaml")
        self.assertEqual(r.returncode, 1)
        self.assertIn("cannot open", r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
