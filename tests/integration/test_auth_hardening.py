"""Issue 17, items 7 and 8: a prober cannot tell unknown users from known ones (SCRAM parameters,
md5 method), setting values replayed on pooled server connections cannot break out of their
quoting under a client encoding whose multibyte characters end in a backslash, client-supplied
names cannot forge text log lines, trust on a non-loopback listener is warned about, and a reload
that changes a user's server identity cannot file a cache fill under the old one."""
import base64
import json
import os
import struct
import threading
import unittest

import psycopg

from harness import (Sluice, APP_PASSWORD, psql, state, superuser_sql,
                     wait_for)
from pgwire import Wire


# ---- raw protocol helpers ------------------------------------------------------------------

def auth_request(w):
    """The first Authentication message after the startup packet: (code, payload)."""
    typ, body = w.read()
    assert typ == b"R", (typ, body)
    return struct.unpack("!I", body[:4])[0], body[4:]


def scram_first(port, user):
    """Starts a SCRAM exchange as `user`: (wire, mechanisms, server-first attributes)."""
    w = Wire(port)
    w.startup(user, "appdb")
    code, payload = auth_request(w)
    assert code == 10, f"expected AuthenticationSASL for {user!r}, got code {code}"
    mechanisms = [m for m in payload.split(b"\0") if m]
    nonce = base64.b64encode(os.urandom(18)).decode()
    first = f"n,,n=,r={nonce}".encode()
    w.send_msg(b"p", b"SCRAM-SHA-256\0" + struct.pack("!I", len(first)) + first)
    code, payload = auth_request(w)
    assert code == 11, code
    attrs = dict(kv.split("=", 1) for kv in payload.decode().split(","))
    return w, mechanisms, attrs


def scram_wrong_proof(w, attrs):
    """Ends the exchange with a proof no password makes: the error fields."""
    proof = base64.b64encode(bytes(32)).decode()
    w.send_msg(b"p", f"c=biws,r={attrs['r']},p={proof}".encode())
    typ, body = w.read()
    assert typ == b"E", typ
    return Wire.fields(body)


def one(w, sql):
    """The first row of a statement that must succeed (None when it returns no rows)."""
    rows, err = w.query_bytes(sql)
    assert err is None, err
    return rows[0] if rows else None


def admin(sl, sql):
    return psql(sl.admin_dsn(), sql).stdout.decode()


def metric(sl, name):
    return sum(v for k, v in sl.metrics().items() if k == name or k.startswith(name + "{"))


# ---- item 7: no user enumeration -------------------------------------------------------------

class UserEnumeration(unittest.TestCase):
    def test_scram_unknown_user_looks_like_a_known_one(self):
        with Sluice() as sl:
            shapes, salts, errors = {}, {}, {}
            for user in ("app", "no_such_user_17", "app", "no_such_user_17"):
                w, mechanisms, attrs = scram_first(sl.port, user)
                salt = base64.b64decode(attrs["s"])
                shapes.setdefault(user, set()).add((tuple(mechanisms), len(salt), attrs["i"]))
                salts.setdefault(user, set()).add(salt)
                err = scram_wrong_proof(w, attrs)
                errors.setdefault(user, set()).add(
                    (err["S"], err["C"], err["M"].replace(f'"{user}"', '"<user>"')))
                w.close()
            print(f"known: {shapes['app']} unknown: {shapes['no_such_user_17']}")
            self.assertEqual(len(shapes["app"]), 1)
            self.assertEqual(shapes["app"], shapes["no_such_user_17"])  # mechanisms, salt size, i
            self.assertEqual(shapes["app"].pop()[2], "4096")
            self.assertEqual(len(salts["app"]), 1)
            self.assertEqual(len(salts["no_such_user_17"]), 1, "the unknown user's salt changes")
            self.assertNotEqual(salts["app"], salts["no_such_user_17"])
            self.assertEqual(errors["app"], errors["no_such_user_17"])
            self.assertEqual(errors["app"].pop()[1], "28P01")
            # A second unknown name gets a salt of its own (derived from the name).
            w, _, attrs = scram_first(sl.port, "no_such_user_18")
            w.close()
            self.assertNotIn(base64.b64decode(attrs["s"]), salts["no_such_user_17"])

    def test_md5_mode_asks_unknown_users_for_md5_too(self):
        def tweak(c):
            c["auth_type"] = "md5"
        with Sluice(tweak=tweak) as sl:
            seen = {}
            for user in ("md5user", "no_such_user_17"):
                for _ in range(2):
                    w = Wire(sl.port)
                    w.startup(user, "appdb")
                    code, salt = auth_request(w)
                    w.send_msg(b"p", b"md5" + b"0" * 32 + b"\0")
                    typ, body = w.read()
                    self.assertEqual(typ, b"E")
                    err = Wire.fields(body)
                    w.close()
                    seen.setdefault(user, []).append(
                        (code, len(salt), salt, err["C"], err["M"].replace(f'"{user}"', "<u>")))
            print(f"md5 mode: known user code {seen['md5user'][0][0]}, "
                  f"unknown user code {seen['no_such_user_17'][0][0]}")
            for user, attempts in seen.items():
                for code, size, _, sqlstate, message in attempts:
                    self.assertEqual((code, size, sqlstate), (5, 4, "28P01"), user)
                    self.assertEqual(message, "password authentication failed for user <u>")
            self.assertNotEqual(seen["no_such_user_17"][0][2], seen["no_such_user_17"][1][2],
                                "md5 salts are random per attempt, as for known users")


# ---- item 8: settings replay, log escaping, trust warning, cache identity ------------------

def login_raw(port, user, password, params):
    """Logs in with startup parameters given as bytes (Wire encodes text as UTF-8)."""
    w = Wire(port)
    body = struct.pack("!I", 196608)
    for k, v in {b"user": user.encode(), b"database": b"appdb", **params}.items():
        body += k + b"\0" + v + b"\0"
    body += b"\0"
    w.startup = lambda *a, **kw: w.send(struct.pack("!I", len(body) + 4) + body)
    status, info = w.login(user, password, "appdb")
    return w, status, info


class SettingsReplay(unittest.TestCase):
    # U+8868 is 0x95 0x5C in Shift JIS: its second byte is a backslash. Quoted byte by byte into
    # E'...', the doubled backslash escapes the closing quote once the server has decoded the
    # character whole, and what follows runs as SQL.
    VALUE = "表".encode("shift_jis") + b"'" + b", false); CREATE TABLE hb_injected (); --"

    def replay(self, extra):
        """An SJIS client with setting hb.v = VALUE (and `extra`) in its startup packet, after
        another SJIS client left a pooled server connection with the same settings but hb.v:
        (value on the first server connection, value on the next, injected table exists)."""
        superuser_sql("DROP TABLE IF EXISTS hb_injected")
        self.assertEqual(self.VALUE[:2], b"\x95\x5c")

        def tweak(c):
            c["pool"] = {"mode": "transaction", "size": 4}
        first = replayed = pid_first = pid_next = None
        with Sluice(tweak=tweak) as sl:
            base = {b"client_encoding": b"SJIS", **extra}
            c, status, info = login_raw(sl.port, "app", APP_PASSWORD, base)
            self.assertEqual(status, "ok", info)
            c.close()
            # Applied where only hb.v differs (the connection above), then replayed on another.
            a, status, info = login_raw(sl.port, "app", APP_PASSWORD, {**base, b"hb.v": self.VALUE})
            if status != "ok":
                first = f"login failed: {info['C']} {info['M']}"
            else:
                pid_first, first = one(a, b"SELECT pg_backend_pid(), current_setting('hb.v')")
                b = Wire(sl.port)
                self.assertEqual(b.login("app", APP_PASSWORD, "appdb")[0], "ok")
                one(b, b"BEGIN")
                one(b, b"SELECT 1")  # b now holds a server connection
                try:
                    pid_next, replayed = one(a, b"SELECT pg_backend_pid(), "
                                                b"current_setting('hb.v')")
                except EOFError:
                    replayed = "connection closed"
                one(b, b"COMMIT")
                b.close()
            a.close()
        injected = superuser_sql("SELECT to_regclass('public.hb_injected') IS NOT NULL") == "t"
        print(f"first server connection: {first!r}; next (same one: {pid_first == pid_next}): "
              f"{replayed!r}; injected table: {injected}")
        return first, replayed, injected

    def test_setting_value_cannot_break_out_of_quoting(self):
        # backslash_quote = on (any client may set it) lifts the server's own refusal of \'
        # in client-only encodings.
        first, replayed, injected = self.replay({b"backslash_quote": b"on"})
        self.assertFalse(injected, "replaying the setting ran an injected statement")
        self.assertEqual((first, replayed), (self.VALUE, self.VALUE))

    def test_setting_value_with_a_backslash_trail_byte_is_applied(self):
        # With the default backslash_quote the server refuses the misquoted literal (22P06).
        first, replayed, injected = self.replay({})
        self.assertFalse(injected)
        self.assertEqual((first, replayed), (self.VALUE, self.VALUE))


class LogEscaping(unittest.TestCase):
    FORGED = "2099-01-01 00:00:00.000 error forged by a client"

    def test_names_cannot_forge_text_log_lines(self):
        with Sluice() as sl:
            for user, db, sqlstate in (("evil\n" + self.FORGED, "appdb", "28P01"),
                                       ("app", "nodb\r\n" + self.FORGED, "3D000")):
                w = Wire(sl.port)
                self.assertEqual(w.login(user, APP_PASSWORD, db)[1]["C"], sqlstate)
                w.close()
        log = sl.log()
        forged = [line for line in log.splitlines() if line.startswith("2099-")]
        print(f"lines starting like the forged one: {forged}")
        self.assertEqual(forged, [])
        self.assertIn("user=evil\\n2099-01-01", log)
        self.assertIn("nodb\\r\\n2099-01-01", log)

    def test_json_log_lines_stay_whole(self):
        def tweak(c):
            c["log"] = {"level": "info", "format": "json"}
        with Sluice(tweak=tweak) as sl:
            w = Wire(sl.port)
            w.login("evil\n" + self.FORGED, "x", "appdb")
            w.close()
        lines = [json.loads(line) for line in sl.log().splitlines() if line.strip()]
        self.assertTrue(any("evil\n2099" in line["msg"] for line in lines))


class AnyHostSluice(Sluice):
    """harness.Sluice.start() waits for 'listening on 127.0.0.1:PORT'; this one waits for the
    host its config names (0.0.0.0 here)."""

    def _wait_listening(self, timeout=30):
        host = self.config["listen"]["postgres"].rsplit(":", 1)[0]
        mark = f"listening on {host}:{self.port} (postgres)"
        try:
            wait_for(lambda: mark in self.log() or self.proc.poll() is not None,
                     timeout=timeout, what=f"'{mark}' in sluice's log")
        except AssertionError:
            self.proc.kill()
            self.proc.wait()
            raise
        return self.proc.poll() is None


class TrustWarning(unittest.TestCase):
    def start_trust(self, host):
        def tweak(c):
            c["auth_type"] = "trust"
            c["listen"]["postgres"] = c["listen"]["postgres"].replace("127.0.0.1", host)
        with AnyHostSluice(tweak=tweak) as sl:
            with psycopg.connect(sl.dsn(password="anything")) as conn:  # via 127.0.0.1
                self.assertEqual(conn.execute("SELECT current_user").fetchone()[0], "app")
        return [line for line in sl.log().splitlines() if "trust" in line and " warn" in line]

    def test_trust_on_any_address_warns_at_start(self):
        warned = self.start_trust("0.0.0.0")
        print(f"trust on 0.0.0.0: {warned}")
        self.assertEqual(len(warned), 1)
        self.assertIn("0.0.0.0", warned[0])
        self.assertEqual(self.start_trust("127.0.0.1"), [])


class CacheIdentity(unittest.TestCase):
    def setUp(self):
        roles = "".join(
            f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{r}') THEN "
            f"CREATE ROLE {r} LOGIN PASSWORD 'hbpass'; END IF; " for r in ("hb_a", "hb_b"))
        sql = f"DO $$BEGIN {roles}END$$; "
        for r, s, v in (("hb_a", "hb_sa", "A"), ("hb_b", "hb_sb", "B")):
            sql += (f"DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}; "
                    f"CREATE TABLE {s}.hb_t (v text); INSERT INTO {s}.hb_t VALUES ('{v}'); "
                    f"GRANT USAGE ON SCHEMA {s} TO {r}; GRANT SELECT ON {s}.hb_t TO {r}; "
                    f"ALTER ROLE {r} SET search_path = {s}; ")
        superuser_sql(sql)

    def test_reload_changing_server_user_does_not_misfile_a_fill(self):
        st = state()

        def tweak(c):
            c["pool"] = {"mode": "transaction", "size": 4}
            c["health_check_interval"] = "200ms"
            c["routing"] = {"enabled": False, "health_user": "app"}
            c["cache"] = {"redis": f"redis://127.0.0.1:{st['redis_port']}",
                          "admission": "always"}
            hb = {"password": "hbclient", "server_user": "hb_a", "server_password": "hbpass"}
            c["users"] += [{"name": "hbuser", **hb}, {"name": "hbwitness", **hb}]
        with Sluice(tweak=tweak) as sl:
            witness = psycopg.connect(sl.dsn(user="hbwitness", password="hbclient"),
                                      autocommit=True)
            # The catalog (with the roles' search_path) is loaded once another text hits.
            self.assertTrue(wait_for(lambda: witness.execute("SELECT v, 1 FROM hb_t").fetchall()
                                     and metric(sl, "sluice_cache_hits_total") > 0))
            client = psycopg.connect(sl.dsn(user="hbuser", password="hbclient"), autocommit=True)
            admin(sl, "PAUSE appdb")
            misses = metric(sl, "sluice_cache_misses_total")
            got = {}
            t = threading.Thread(
                target=lambda: got.update(rows=client.execute("SELECT v FROM hb_t").fetchall()))
            t.start()
            # Looked up (a miss under hb_a) and now waiting for the pause to end.
            self.assertTrue(wait_for(lambda: metric(sl, "sluice_cache_misses_total") > misses))
            done = (metric(sl, "sluice_cache_fills_total") +
                    metric(sl, "sluice_cache_fills_skipped_total"))
            next(u for u in sl.config["users"] if u["name"] == "hbuser")["server_user"] = "hb_b"
            sl.write_config()
            admin(sl, "RELOAD")
            admin(sl, "RESUME appdb")
            t.join(15)
            self.assertEqual(got.get("rows"), [("B",)])  # the new identity's answer
            self.assertTrue(wait_for(lambda: metric(sl, "sluice_cache_fills_total") +
                                     metric(sl, "sluice_cache_fills_skipped_total") > done))
            seen = [witness.execute("SELECT v FROM hb_t").fetchall() for _ in range(3)]
            print(f"hb_a's witness after the reload: {seen}")
            self.assertEqual(seen, [[("A",)]] * 3, "hb_b's reply was filed under hb_a's key")
            client.close()
            witness.close()


if __name__ == "__main__":
    unittest.main()
