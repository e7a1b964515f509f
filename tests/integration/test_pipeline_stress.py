"""Randomized pipelines through sluice compared with the same script run straight on the primary.

Each client runs a seeded script of pipelines over the raw protocol: simple queries, named and
unnamed Parse/Bind/Execute, Describe, Close, Sync and Flush in random places, errors in the middle
of a pipeline, COPY in and out, portals that suspend, cursors inside transactions. The bytes go out
in random pieces with small pauses, so sluice sees pipelines cut anywhere and server replies that
overtake the rest of a request. Every reply (ParameterStatus and notices aside; errors by SQLSTATE)
must equal what PostgreSQL sent the same script directly, in transaction and in statement pooling,
with the replica and the Redis cache on. SLUICE_PIPELINES sets the pipelines per pooling mode."""
import os
import random
import re
import struct
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import APP_PASSWORD, Sluice, state, superuser_sql  # noqa: E402
from pgwire import Wire  # noqa: E402

PIPELINES = int(os.environ.get("SLUICE_PIPELINES", "3000"))
CLIENTS = 8
ROUTING = os.environ.get("SLUICE_PIPELINE_ROUTING", "1") == "1"
SEED = int(os.environ.get("SLUICE_PIPELINE_SEED", str(int(time.time()))))

# (sql, number of int parameters); {t} is the client's own table.
STATEMENTS = [
    ("SELECT $1::int + 1 AS x", 1),
    ("SELECT g FROM generate_series(1, $1::int) g", 1),
    ("INSERT INTO {t} VALUES ($1::int)", 1),
    ("SELECT count(*), coalesce(sum(v), 0) FROM {t} WHERE v > $1::int", 1),
    ("SELECT v FROM {t} ORDER BY v DESC LIMIT 3", 0),
    ("SELECT 1 / ($1::int - $1::int)", 1),  # division_by_zero when executed
    ("SELEC $1", 1),  # a syntax error at Parse
    ("UPDATE {t} SET v = v + 1 WHERE v = $1::int", 1),
    ("COPY (SELECT v FROM {t} ORDER BY v LIMIT 5) TO STDOUT", 0),
    ("SELECT pg_catalog.repeat('x', $1::int)", 1),
]
NAMES = ["s0", "s1", "s2", "_pg3_0", "_pg3_1"]


def msg(typ, body=b""):
    return typ + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return s.encode() + b"\0"


class Step:
    """Bytes to send and the number of ReadyForQuery replies they end with; `copy_in` rows go
    out once the server asks for them (CopyInResponse)."""

    def __init__(self, data, syncs, copy_in=None, fail_copy=False):
        self.data, self.syncs, self.copy_in, self.fail_copy = data, syncs, copy_in, fail_copy


class ScriptWriter:
    def __init__(self, rng, table, transactions):
        self.rng, self.t, self.transactions = rng, table, transactions
        self.named = {}  # statement name -> params, as far as the script can tell
        self.closes = {}  # base name -> how many times it was closed
        self.parsed = set()  # names a Parse was sent for
        # Where each name was parsed: a pipeline segment (up to a Sync) of this step, or an
        # earlier step. Like drivers, the script uses a name in the segment of its Parse or once
        # the Parse was answered, never in a later segment of the same pipeline: an error
        # before the Parse makes the server skip it, which sluice learns only from the reply,
        # after it has already passed the later use on.
        self.parsed_in = {}
        self.segment = self.step_start = self.tx_start = 0
        self.in_tx = False
        self.cursors = 0

    def sql(self, index):
        text, params = STATEMENTS[index]
        return text.format(t=self.t), params

    def step(self):
        r = self.rng.random()
        if r < 0.18:
            return self.simple()
        if r < 0.24:
            return self.copy_in()
        return self.extended()

    def simple(self):
        r = self.rng.random()
        if self.transactions and not self.in_tx and r < 0.25:
            self.in_tx = True
            self.tx_start = self.segment
            return Step(msg(b"Q", cstr("BEGIN")), 1)
        if self.in_tx and r < 0.45:
            self.in_tx = False
            return Step(msg(b"Q", cstr(self.rng.choice(["COMMIT", "ROLLBACK", "COMMIT"]))), 1)
        if self.in_tx and r < 0.6:
            self.cursors += 1
            c = f"c{self.cursors}"
            return Step(msg(b"Q", cstr(f"DECLARE {c} CURSOR FOR SELECT g FROM generate_series(1, 9) g;"
                                       f" FETCH 3 FROM {c}; FETCH 2 FROM {c}")), 1)
        choices = [f"SELECT count(*) FROM {self.t}", f"INSERT INTO {self.t} VALUES (7), (8)",
                   f"SELECT v FROM {self.t} WHERE v < 5 ORDER BY v", "SELECT 1/0",
                   f"COPY (SELECT v FROM {self.t} ORDER BY v LIMIT 4) TO STDOUT",
                   f"SELECT 1; SELECT count(*) FROM {self.t}; SELECT 2"]
        return Step(msg(b"Q", cstr(self.rng.choice(choices))), 1)

    def copy_in(self):
        rows = [f"{self.rng.randint(0, 50)}\n".encode() for _ in range(self.rng.randint(0, 5))]
        fail = self.rng.random() < 0.2
        return Step(msg(b"Q", cstr(f"COPY {self.t} FROM STDIN")), 1, rows, fail)

    def extended(self):
        rng, out, syncs = self.rng, b"", 0
        self.segment += 1
        self.step_start = self.segment
        for _ in range(rng.randint(1, 8)):
            r = rng.random()
            if r < 0.3:
                out += self.parse_bind_execute()
            elif r < 0.45:
                out += self.named_parse()
            elif r < 0.65:
                out += self.bind_named()
            elif r < 0.72:
                out += msg(b"D", b"S" + cstr(self.usable_name()))
            elif r < 0.78:
                base = rng.choice(NAMES)
                self.named.pop(self.name(base), None)
                out += msg(b"C", b"S" + cstr(self.name(base)))
                self.closes[base] = self.closes.get(base, 0) + 1
            elif r < 0.84:
                out += msg(b"H")  # Flush
            elif r < 0.9:
                out += msg(b"S")
                syncs += 1
                self.segment += 1
            else:
                out += msg(b"C", b"P" + cstr(rng.choice(["", "p1"])))
        out += msg(b"S")
        return Step(out, syncs + 1)

    def bind(self, statement, params, portal=""):
        values = b"".join(struct.pack("!i", len(v)) + v
                          for v in (str(self.rng.randint(0, 20)).encode() for _ in range(params)))
        return msg(b"B", cstr(portal) + cstr(statement) + struct.pack("!H", 0) +
                   struct.pack("!H", params) + values + struct.pack("!H", 0))

    def execute(self, portal):
        rows = self.rng.choice([0, 0, 0, 1, 2])
        out = msg(b"E", cstr(portal) + struct.pack("!I", rows))
        if rows and self.rng.random() < 0.5:
            out += msg(b"E", cstr(portal) + struct.pack("!I", 0))  # the rest of the portal
        return out

    def parse_bind_execute(self):
        sql, params = self.sql(self.rng.randrange(len(STATEMENTS)))
        out = msg(b"P", b"\0" + cstr(sql) + struct.pack("!H", 0))
        portal = self.rng.choice(["", "", "p1"])
        out += self.bind("", params, portal)
        if self.rng.random() < 0.5:
            out += msg(b"D", b"P" + cstr(portal))
        return out + self.execute(portal)

    def name(self, base):
        """Like drivers, the script never parses a name again once it closed it: sluice cannot
        know, when it rewrites the later Parse, whether the server skipped the Close (an error
        earlier in the same pipeline)."""
        n = self.closes.get(base, 0)
        return f"{base}_{n}" if n else base

    def named_parse(self):
        name = self.name(self.rng.choice(NAMES))
        if name in self.parsed:
            # Like drivers, a name is parsed once. A redefinition right after an uncertain
            # Parse (one an earlier error in the pipeline may have skipped) cannot be judged
            # before the server answers; the unit tests cover redefinition itself.
            return self.bind_named()
        self.parsed.add(name)
        # Not the syntax error: a redefinition inside a failed transaction, on a server
        # connection that lacks the first definition, reports 25P02 where PostgreSQL reports
        # the syntax error (sluice must prepare the first definition there first).
        sql, params = self.sql(self.rng.choice([i for i in range(len(STATEMENTS)) if i != 6]))
        self.named.setdefault(name, params)  # a redefinition fails (42P05) and keeps the old
        self.parsed_in[name] = self.segment
        out = msg(b"P", cstr(name) + cstr(sql) + struct.pack("!H", 0))
        if self.rng.random() < 0.4:
            out += msg(b"D", b"S" + cstr(name))  # right after its Parse, on the same server
        return out

    def usable_name(self):
        # Inside BEGIN only names parsed in this transaction: once an error aborted it, sluice
        # cannot prepare a statement on this server connection (25P02) where PostgreSQL, which
        # has it, would still say 25P02 for a Bind but describe it, and 26000 comes first.
        first = self.tx_start if self.in_tx else -1
        usable = [n for n in self.named if self.parsed_in[n] > first and (
            self.parsed_in[n] < self.step_start or self.parsed_in[n] == self.segment)]
        return self.rng.choice(usable or [self.name(b) + "_never" for b in NAMES])

    def bind_named(self):
        name = self.usable_name()
        portal = self.rng.choice(["", "p1"])
        out = self.bind(name, self.named.get(name, 1), portal)
        if self.rng.random() < 0.3:
            out += msg(b"D", b"P" + cstr(portal))
        return out + self.execute(portal)

    def script(self, n):
        steps = [self.step() for _ in range(n)]
        if self.in_tx:
            steps.append(Step(msg(b"Q", cstr("COMMIT")), 1))
        return steps


def normalized(typ, body):
    if typ in (b"S", b"N", b"K"):
        return None
    if typ == b"E":
        return ("E", Wire.fields(body).get("C"))
    return (typ.decode(), body)


class Runner:
    """One client connection running a script; returns every step's normalized replies."""

    def __init__(self, port, rng):
        self.w = Wire(port, timeout=30)
        status, info = self.w.login("app", APP_PASSWORD, "appdb")
        assert status == "ok", info
        self.rng = rng

    def send_in_pieces(self, data):
        pos = 0
        while pos < len(data):
            n = self.rng.choice([len(data), 5, 17, 64, self.rng.randint(1, max(1, len(data)))])
            self.w.send(data[pos:pos + n])
            pos += n
            if pos < len(data) and self.rng.random() < 0.3:
                time.sleep(self.rng.choice([0, 0.0005, 0.002]))

    def run(self, steps):
        out = []
        for step in steps:
            self.send_in_pieces(step.data)
            replies, seen = [], 0
            while seen < step.syncs:
                typ, body = self.w.read()
                if typ == b"G" and step.copy_in is not None:
                    rows = b"".join(msg(b"d", row) for row in step.copy_in)
                    end = msg(b"f", cstr("stopped by the test")) if step.fail_copy else msg(b"c")
                    self.send_in_pieces(rows + end)
                if typ == b"Z":
                    seen += 1
                item = normalized(typ, body)
                if item:
                    replies.append(item)
            out.append(replies)
        self.w.send(msg(b"X"))
        self.w.close()
        return out


def run_clients(port, scripts, seeds):
    results, errors = [None] * len(scripts), []

    def body(i):
        try:
            results[i] = Runner(port, random.Random(seeds[i] + 1)).run(scripts[i])
        except Exception as e:  # reported with the client's number
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=body, args=(i,)) for i in range(len(scripts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return results, errors


def history(script, direct, proxied, n, steps=4):
    """The earlier steps that named a statement the failing step names (for the report)."""
    names = set(re.findall(rb"\x00?((?:s\d|_pg3_\d)(?:_\d+)?)\x00", script[n].data))
    out = []
    for k in range(n - 1, -1, -1):
        if any(name + b"\x00" in script[k].data for name in names):
            out.append(f"  step {k}: {script[k].data!r}\n    direct {direct[k]}\n"
                       f"    sluice {proxied[k]}\n")
            if len(out) == steps:
                break
    return "".join(reversed(out))


class PipelineStress(unittest.TestCase):
    def tables(self, mode):
        names = [f"pst_{mode}_{i}" for i in range(CLIENTS)]
        superuser_sql("; ".join(f"DROP TABLE IF EXISTS {n}; CREATE TABLE {n} (v int);"
                                f" GRANT ALL ON {n} TO app" for n in names))
        return names

    def reset(self, names):
        superuser_sql("; ".join(f"TRUNCATE {n}" for n in names))

    def compare(self, mode):
        names = self.tables(mode)
        seeds = [SEED * 100 + i for i in range(CLIENTS)]
        per_client = PIPELINES // CLIENTS
        scripts = [ScriptWriter(random.Random(s), names[i], mode == "transaction").script(per_client)
                   for i, s in enumerate(seeds)]
        direct, errors = run_clients(state()["primary_port"], scripts, seeds)
        self.assertEqual(errors, [], "the script failed against PostgreSQL itself")
        self.reset(names)
        st = state()

        def tweak(c):
            # Every idle client parks (no coroutine between requests), as among many clients.
            c["pool"] = {"mode": mode, "size": 3, "park_idle_above": 0}
            c["routing"] = {"enabled": ROUTING}
            c["cache"] = {"redis": f"redis://127.0.0.1:{st['redis_port']}",
                          "admission": "always"}

        with Sluice(tweak=tweak) as sl:
            proxied, errors = run_clients(sl.port, scripts, seeds)
            log = sl.log()
        self.assertEqual(errors, [], f"seed {SEED}; sluice log tail:\n{log[-3000:]}")
        for i in range(CLIENTS):
            for n, (want, got) in enumerate(zip(direct[i], proxied[i])):
                if want != got:
                    self.fail(f"seed {SEED} client {i} step {n}: sent {scripts[i][n].data!r}\n"
                              f"direct: {want}\nsluice: {got}\n"
                              f"{history(scripts[i], direct[i], proxied[i], n)}"
                              f"sluice log tail:\n{log[-2000:]}")
        self.assertNotIn("does not match the requests sent", log)
        return sum(len(s) for s in scripts)

    def test_transaction_pooling(self):
        n = self.compare("transaction")
        print(f"transaction pooling: {n} pipelines, seed {SEED}, identical", file=sys.stderr)

    def test_statement_pooling(self):
        n = self.compare("statement")
        print(f"statement pooling: {n} pipelines, seed {SEED}, identical", file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
