"""Transaction pooling with real drivers (psycopg 3 from Debian, node-postgres from npm) over a pool
far smaller than the number of clients: named prepared statements, SQL PREPARE, settings that
never leak between clients, COPY, cancel, pipelines with errors, binary formats, pins, and
statement mode. Each client records the server connection (pg_backend_pid()) of every transaction,
so the settings and prepared-statement tests prove the client moved between server connections
while its state followed it; the same check run against session pooling (which pins) reports no
move."""
import contextlib
import json
import os
import socket
import struct
import subprocess
import threading
import time
import unittest

import psycopg
from psycopg import errors

from harness import ROOT, Sluice, skip_or_fail, state, superuser_sql, wait_for
from pgwire import Wire

NODE_DIR = os.path.join(ROOT, "tests", "integration", "node")


def pooled(mode="transaction", size=2, **pool):
    def tweak(c):
        c["pool"] = {"mode": mode, "size": size, **pool}
    return tweak


def run_threads(n, fn):
    """Runs fn(i) in n threads; re-raises the first failure."""
    failures = []

    def body(i):
        try:
            fn(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            failures.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if failures:
        raise failures[0]


def moved_clients(pids_by_client):
    """The clients whose transactions ran on more than one server connection: none under a pooler
    that pins each client to one connection. pids_by_client: {client: [pg_backend_pid(), ...]}."""
    return sorted(c for c, pids in pids_by_client.items() if len(set(pids)) > 1)


def shared_backends(pids_by_client):
    """Server connections (pids) that served more than one client."""
    clients_of = {}
    for c, pids in pids_by_client.items():
        for pid in set(pids):
            clients_of.setdefault(pid, set()).add(c)
    return sorted(pid for pid, cs in clients_of.items() if len(cs) > 1)


def describe_moves(pids_by_client):
    return ", ".join(f"client {c}: {len(pids)} transactions on {len(set(pids))} server "
                     f"connection(s)" for c, pids in sorted(pids_by_client.items()))


def summarize_moves(pids_by_client):
    spread = sorted(len(set(pids)) for pids in pids_by_client.values())
    return (f"{len(moved_clients(pids_by_client))} of {len(pids_by_client)} clients moved "
            f"(server connections per client: {spread[0]}..{spread[-1]}), "
            f"{len(shared_backends(pids_by_client))} connection(s) served several clients")


def start_line(clients, together):
    """A barrier that connected clients wait at, once logged in and again before each round, so
    their transactions interleave: every round sends all of them at once to a pool smaller than
    their number, and which connection a client gets varies from round to round. (Without the
    per-round line, clients on a fast proxy took turns and each kept finding its last connection
    idle: an ASan CI run saw 0 of 6 clients move.) A no-op when not `together` (session mode
    cannot hold more clients than connections)."""
    barrier = threading.Barrier(clients, timeout=20) if together else None

    def wait():
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            raise AssertionError(f"{clients} clients could not all reach the line at once: one "
                                 "failed, or each holds a server connection (pinned?)") from None
    return wait if barrier else lambda: None


def settings_workload(dsn, clients=6, rounds=40, together=True):
    """Each client sets its own search_path and statement_timeout, then reads both back in
    `rounds` transactions. Returns {client: [backend pid of each read]}; raises on a wrong value."""
    out = {}
    started = start_line(clients, together)

    def client(i):
        with psycopg.connect(dsn, autocommit=True) as conn:
            started()
            conn.execute(f"SET search_path TO s{i}, public")
            conn.execute(f"SET statement_timeout = '{i + 1}s'")
            pids = out.setdefault(i, [])
            for n in range(rounds):
                started()
                row = conn.execute("SELECT current_setting('search_path'), "
                                   "current_setting('statement_timeout'), "
                                   "pg_backend_pid()").fetchone()
                assert row[:2] == (f"s{i}, public", f"{i + 1}s"), f"client {i} read {n}: {row}"
                pids.append(row[2])
            conn.execute("RESET statement_timeout")
            timeout = conn.execute("SHOW statement_timeout").fetchone()[0]
            assert timeout == "0", f"client {i}: statement_timeout {timeout} after RESET"
    run_threads(clients, client)
    return out


def named_statements_workload(dsn, clients=8, rounds=60, together=True):
    """psycopg prepares server-side (named "_pg3_N") from the first use with prepare=True; each
    client runs its named statements `rounds` times, some inside a transaction block. Returns
    {client: [backend pid of each execution]}; raises on a wrong result."""
    out = {}
    started = start_line(clients, together)

    def client(i):
        with psycopg.connect(dsn, autocommit=True) as conn:
            started()
            pids = out.setdefault(i, [])
            for n in range(rounds):
                started()
                row = conn.execute("SELECT %s::int + %s::int, pg_backend_pid()", (i, n),
                                   prepare=True).fetchone()
                assert row[0] == i + n, f"client {i} execution {n}: {row}"
                pids.append(row[1])
                if n % 15 == 0:
                    with conn.transaction():
                        tx = conn.execute("SELECT %s::text", (f"tx{i}",), prepare=True)
                        assert tx.fetchone() == (f"tx{i}",)
    run_threads(clients, client)
    return out


def sql_prepare_workload(dsn, clients=6, rounds=30, together=True):
    """SQL PREPARE / EXECUTE / DEALLOCATE [ALL] per client. Returns {client: [backend pid of each
    EXECUTE]}; raises on a wrong result or a statement that outlived its DEALLOCATE."""
    out = {}
    started = start_line(clients, together)

    def client(i):
        with psycopg.connect(dsn, autocommit=True) as conn:
            started()
            conn.execute(f"PREPARE mine(int) AS SELECT $1 + {i * 1000}, pg_backend_pid()")
            pids = out.setdefault(i, [])
            for n in range(rounds):
                started()
                row = conn.execute(f"EXECUTE mine({n})").fetchone()
                assert row[0] == i * 1000 + n, f"client {i} EXECUTE {n}: {row}"
                pids.append(row[1])
            conn.execute("DEALLOCATE mine")
            for name in ("mine(1)", "again"):
                if name == "again":
                    conn.execute("PREPARE again AS SELECT 7")
                    conn.execute("DEALLOCATE ALL")
                try:
                    conn.execute(f"EXECUTE {name}")
                except errors.InvalidSqlStatementName:
                    continue
                raise AssertionError(f"client {i}: EXECUTE {name} after its DEALLOCATE ran")
    run_threads(clients, client)
    return out


def sluice_backends():
    """Server connections sluice holds on the primary (application_name unset, user app)."""
    return int(superuser_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = "
        "'client backend' AND pid <> pg_backend_pid()"))


class TransactionPooling(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # A client kept waiting for a server connection fails in 20 s, not 120 s.
        cls.sluice = Sluice(tweak=pooled(query_wait_timeout="20s")).start()

    @classmethod
    def tearDownClass(cls):
        code = cls.sluice.stop()
        assert code == 0, f"sluice exited with {code}"

    def connect(self, **kw):
        return psycopg.connect(self.sluice.dsn(**kw), autocommit=True)

    def assert_moved(self, pids_by_client, what):
        """Every result was right (the workload checked); now prove the clients' transactions
        were spread over server connections rather than pinned."""
        moved = moved_clients(pids_by_client)
        print(f"\n{what}: {summarize_moves(pids_by_client)}")
        self.assertGreaterEqual(len(moved), len(pids_by_client) // 2,
                                f"{what}: clients stayed on one server connection "
                                f"({describe_moves(pids_by_client)})")
        self.assertTrue(shared_backends(pids_by_client))

    @contextlib.contextmanager
    def occupied(self, pid):
        """Keeps server connection `pid` busy: two other clients open a transaction each, which
        takes both connections of the pool (size 2); the one not on `pid` commits. Until the block
        ends the next transaction of any other client runs on the other connection."""
        with self.connect() as a, self.connect() as b:
            held = {}
            for c in (a, b):
                c.execute("BEGIN")
                held[c.execute("SELECT pg_backend_pid()").fetchone()[0]] = c
            self.assertIn(pid, held, f"pool of 2: {pid} is not one of {sorted(held)}")
            for p, c in held.items():
                if p != pid:
                    c.execute("COMMIT")
            yield
            held[pid].execute("COMMIT")

    def test_named_statements_survive_many_transactions(self):
        pids = named_statements_workload(self.sluice.dsn())
        self.assert_moved(pids, "named prepared statements, 8 clients over 2 connections")

    def test_describe_close_and_redefinition_behave_as_direct(self):
        with self.connect() as conn:
            pgconn = conn.pgconn
            pgconn.prepare(b"s1", b"SELECT $1::int * 2, pg_backend_pid()")
            first = int(pgconn.exec_prepared(b"s1", [b"1"]).get_value(0, 1))
            # The connection that ran s1 is busy: Describe and Execute run on the other one.
            with self.occupied(first):
                desc = pgconn.describe_prepared(b"s1")
                self.assertEqual(desc.nfields, 2)
                self.assertEqual(desc.nparams, 1)
                res = pgconn.exec_prepared(b"s1", [b"21"])
            self.assertEqual(res.get_value(0, 0), b"42")
            self.assertNotEqual(int(res.get_value(0, 1)), first, "s1 never moved")
            dup = pgconn.prepare(b"s1", b"SELECT 1")
            self.assertEqual(dup.error_field(psycopg.pq.DiagnosticField.SQLSTATE), b"42P05")
            conn.execute("DEALLOCATE s1")  # SQL-level DEALLOCATE of a protocol-level statement
            gone = pgconn.exec_prepared(b"s1", [b"1"])
            self.assertEqual(gone.error_field(psycopg.pq.DiagnosticField.SQLSTATE), b"26000")

    def test_sql_prepare_execute_deallocate(self):
        pids = sql_prepare_workload(self.sluice.dsn())
        self.assert_moved(pids, "SQL PREPARE/EXECUTE, 6 clients over 2 connections")

    def test_settings_follow_each_client(self):
        pids = settings_workload(self.sluice.dsn())
        self.assert_moved(pids, "SET search_path/statement_timeout, 6 clients over 2 connections")

    def test_set_local_and_rolled_back_set_do_not_stick(self):
        with self.connect() as conn:
            conn.execute("SET work_mem = '8MB'")
            with conn.transaction():
                conn.execute("SET LOCAL work_mem = '16MB'")
            self.assertEqual(conn.execute("SHOW work_mem").fetchone()[0], "8MB")
            conn.execute("BEGIN")
            conn.execute("SET work_mem = '32MB'")
            last = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            conn.execute("ROLLBACK")
            with self.occupied(last):  # the next read runs on the other server connection
                row = conn.execute("SELECT current_setting('work_mem'), "
                                   "pg_backend_pid()").fetchone()
            self.assertEqual(row[0], "8MB")
            self.assertNotEqual(row[1], last, "the client never moved")

    def test_set_run_as_a_prepared_statement_follows_the_client(self):
        # psycopg prepares any text it ran 5 times (prepare_threshold), SET included; a pooled
        # client's SET must follow it to the next server however it was sent.
        with self.connect() as conn:
            conn.execute("SET search_path TO before, public", prepare=True)
            conn.execute("SET search_path TO after, public", prepare=True)
            last = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            with self.occupied(last):
                row = conn.execute("SELECT current_setting('search_path'), "
                                   "pg_backend_pid()").fetchone()
            self.assertNotEqual(row[1], last, "the client never moved")
            self.assertEqual(row[0], "after, public")

    def test_copy_in_and_out(self):
        with self.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS py_copy")
            conn.execute("CREATE TABLE py_copy (id int, label text)")
            with conn.cursor() as cur:
                with cur.copy("COPY py_copy FROM STDIN") as copy:
                    for i in range(3000):
                        copy.write_row((i, f"row {i} ✓"))
                self.assertEqual(conn.execute("SELECT count(*) FROM py_copy").fetchone()[0], 3000)
                out = b""
                with cur.copy("COPY (SELECT * FROM py_copy ORDER BY id) TO STDOUT") as copy:
                    for chunk in copy:
                        out += bytes(chunk)
                self.assertEqual(out.decode().splitlines()[2999], "2999\trow 2999 ✓")
            conn.execute("DROP TABLE py_copy")

    def test_cancel_reaches_the_server_running_the_query(self):
        with self.connect() as conn:
            timer = threading.Timer(0.3, conn.cancel)
            started = time.monotonic()
            timer.start()
            with self.assertRaises(errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(10)")
            self.assertLess(time.monotonic() - started, 1.3)
            self.assertEqual(conn.execute("SELECT 1").fetchone()[0], 1)

    def test_pipeline_with_an_error_skips_to_sync(self):
        with self.connect() as conn:
            conn.execute("DROP TABLE IF EXISTS py_pipe")
            conn.execute("CREATE TABLE py_pipe (id int primary key)")
            with self.assertRaises(errors.UniqueViolation):
                with conn.pipeline():
                    conn.execute("INSERT INTO py_pipe VALUES (%s)", (1,), prepare=True)
                    conn.execute("INSERT INTO py_pipe VALUES (%s)", (1,), prepare=True)
                    conn.execute("INSERT INTO py_pipe VALUES (%s)", (2,), prepare=True)
            # The implicit transaction of the pipeline was rolled back as a whole.
            self.assertEqual(conn.execute("SELECT count(*) FROM py_pipe").fetchone()[0], 0)
            with conn.pipeline():
                for i in range(50):
                    conn.execute("INSERT INTO py_pipe VALUES (%s)", (i,), prepare=True)
            self.assertEqual(conn.execute("SELECT count(*) FROM py_pipe").fetchone()[0], 50)
            conn.execute("DROP TABLE py_pipe")

    def test_notices_reach_the_client_that_caused_them(self):
        with self.connect() as conn:
            got = []
            conn.add_notice_handler(lambda d: got.append(d.message_primary))
            for i in range(5):
                conn.execute(f"DO $$BEGIN RAISE NOTICE 'notice %', {i}; END$$")
                with self.connect() as other:  # moves conn to another server next time
                    other.execute("SELECT 1")
            self.assertEqual(got, [f"notice {i}" for i in range(5)])

    def test_binary_formats(self):
        with self.connect() as conn:
            with conn.cursor(binary=True) as cur:
                cur.execute("SELECT %b::bytea, %s::int8, %s::float8",
                            (b"\x00\x01\xff", 2**40, 1.5), prepare=True)
                self.assertEqual(cur.fetchone(), (b"\x00\x01\xff", 2**40, 1.5))

    def test_startup_parameters_and_parameter_status_are_the_clients_own(self):
        with psycopg.connect(self.sluice.dsn(application_name="mine",
                                             options="'-c TimeZone=Asia/Tokyo'"),
                             autocommit=True) as conn:
            with self.connect(application_name="theirs") as other:
                other.execute("SET TimeZone = 'America/Lima'")
                for _ in range(10):
                    other.execute("SELECT 1")
                    row = conn.execute("SELECT current_setting('application_name'), "
                                       "current_setting('TimeZone')").fetchone()
                    self.assertEqual(row, ("mine", "Asia/Tokyo"))
                self.assertEqual(conn.info.parameter_status("TimeZone"), "Asia/Tokyo")
                self.assertEqual(other.info.parameter_status("TimeZone"), "America/Lima")
                self.assertEqual(conn.info.parameter_status("application_name"), "mine")

    def test_session_features_pin_the_client(self):
        with self.connect() as conn, self.connect() as notifier:
            conn.execute("LISTEN jobs")
            conn.execute("CREATE TEMP TABLE mine (a int)")
            conn.execute("INSERT INTO mine VALUES (1)")
            conn.execute("SELECT pg_advisory_lock(4242)")
            for _ in range(5):
                notifier.execute("SELECT 1")
            self.assertEqual(conn.execute("SELECT count(*) FROM mine").fetchone()[0], 1)
            got = []
            conn.add_notify_handler(lambda n: got.append(n.payload))
            notifier.execute("NOTIFY jobs, 'hello'")
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                conn.execute("SELECT 1")  # notifications arrive with the next reply
                time.sleep(0.05)
            self.assertEqual(got, ["hello"])
            self.assertTrue(conn.execute("SELECT pg_advisory_unlock(4242)").fetchone()[0])
        self.assertIn("pinned to its server connection (listen)", self.sluice.log())

    def test_node_postgres(self):
        if not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "pg")):
            skip_or_fail("npm packages not installed (scripts/setup.sh installs them)")
        cfg = {"host": "127.0.0.1", "port": self.sluice.port, "user": "app",
               "password": "secret", "database": "appdb"}
        r = subprocess.run(["node", "--no-deprecation", os.path.join(NODE_DIR, "tx_pooling.js"),
                            json.dumps(cfg)], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        result = json.loads(r.stdout)
        self.assertTrue(result["ok"])
        self.assertLess(result["cancel_ms"], 1000)


class NoSettingLeaks(unittest.TestCase):
    """Many clients alternate their own search_path / TimeZone / statement_timeout over a pool of 2:
    each only ever observes its own values."""

    def test_each_client_sees_only_its_own_settings(self):
        zones = ["UTC", "Asia/Tokyo", "America/Lima", "Europe/Paris", "Australia/Sydney",
                 "Africa/Cairo", "America/New_York", "Asia/Kolkata"]
        with Sluice(tweak=pooled(size=2)) as sluice:
            pids = {}

            def client(i):
                with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                    for rnd in range(25):
                        # Alternate between two own values, so a leak of another client's or of
                        # this client's previous value would show.
                        path = f"c{i}_r{rnd % 2}, public"
                        zone = zones[(i + rnd) % len(zones)]
                        timeout = f"{(i + 1) * 100 + 1 + rnd % 2}ms"  # never a whole second
                        # prepare=False: psycopg would prepare a text run 5 times, and a SET
                        # run as a prepared statement is lost on the next server (see
                        # test_set_run_as_a_prepared_statement_follows_the_client).
                        conn.execute(f"SET search_path TO c{i}_r{rnd % 2}, public", prepare=False)
                        conn.execute(f"SET TimeZone = '{zone}'", prepare=False)
                        # Literal arguments: set_config() with a parameter ($1) would pin the
                        # client to its server connection (README, "Pins"), and nothing moves.
                        conn.execute(f"SELECT set_config('statement_timeout', '{timeout}', false)",
                                     prepare=False)
                        for _ in range(3):
                            row = conn.execute(
                                "SELECT current_setting('search_path'), "
                                "current_setting('TimeZone'), "
                                "current_setting('statement_timeout'), "
                                "pg_backend_pid()").fetchone()
                            self.assertEqual(row[:3], (path, zone, timeout),
                                             f"client {i} round {rnd}")
                            pids.setdefault(i, []).append(row[3])
                        self.assertEqual(conn.info.parameter_status("TimeZone"), zone)
            run_threads(10, client)
            moved = moved_clients(pids)
            print(f"\n10 clients over 2 connections: {summarize_moves(pids)}")
            self.assertGreaterEqual(len(moved), 5, describe_moves(pids))
            # A fresh client sees the defaults, whatever the pool's connections went through.
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                for _ in range(4):
                    row = conn.execute("SELECT current_setting('search_path'), "
                                       "current_setting('statement_timeout')").fetchone()
                    self.assertEqual(row, ('"$user", public', "0"))


class SessionModeControl(unittest.TestCase):
    """The move detection of the tests above, run on a pooler that pins: pool.mode session gives a
    client one server connection for its whole life, so the same workloads (their results all
    right; not started together, as session mode holds no more clients than connections) must show
    no client on a second connection. Were moved_clients() unable to tell, the transaction pooling
    tests could pass on a pooler that never moves a client."""

    def test_the_same_workloads_report_never_moved_under_session_pooling(self):
        with Sluice(tweak=pooled(mode="session", size=2)) as sluice:
            for name, workload in (("settings", settings_workload),
                                   ("named statements", named_statements_workload),
                                   ("SQL PREPARE", sql_prepare_workload)):
                pids = workload(sluice.dsn(), together=False)
                print(f"\nsession mode, {name}: {summarize_moves(pids)}")
                self.assertEqual(moved_clients(pids), [], f"{name}: {describe_moves(pids)}")
                # The pool was shared (2 connections for 6-8 clients): a client stayed on its
                # connection because session mode pins it, not for want of other connections.
                self.assertTrue(shared_backends(pids), name)


class PinningError(unittest.TestCase):
    def test_unpoolable_features_are_refused_with_0A000(self):
        with Sluice(tweak=pooled(pinning="error")) as sluice:
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                with self.assertRaises(errors.FeatureNotSupported) as cm:
                    conn.execute("LISTEN nope")
                self.assertIn("listen is not supported in transaction pooling", str(cm.exception))
                with self.assertRaises(errors.FeatureNotSupported):
                    conn.execute("SELECT pg_advisory_lock(1)")
                self.assertEqual(conn.execute("SELECT 1").fetchone()[0], 1)  # still usable


class StatementMode(unittest.TestCase):
    def test_autocommit_works_and_transaction_blocks_are_refused(self):
        with Sluice(tweak=pooled(mode="statement")) as sluice:
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                for i in range(20):
                    self.assertEqual(conn.execute("SELECT %s::int", (i,)).fetchone()[0], i)
            with psycopg.connect(sluice.dsn(), autocommit=True) as conn:
                with self.assertRaises(psycopg.OperationalError) as cm:  # FATAL, then closed
                    conn.execute("BEGIN")
                self.assertIn("transaction blocks not allowed in statement pooling mode",
                              str(cm.exception))


class MaxDbConnections(unittest.TestCase):
    """max_db_connections caps a database's server connections across its user pools; a waiting
    client of one pool gets a connection another pool closes while idle."""

    def test_two_users_share_a_cap_of_3(self):
        def tweak(c):
            c["pool"] = {"mode": "transaction", "size": 5, "max_db_connections": 3}
        with Sluice(tweak=tweak) as sluice:
            peak = [0]
            stop = threading.Event()

            def watch():
                while not stop.is_set():
                    peak[0] = max(peak[0], int(superuser_sql(
                        "SELECT count(*) FROM pg_stat_activity WHERE usename IN ('app', 'other') "
                        "AND datname = 'appdb' AND pid <> pg_backend_pid() "
                        # sluice's own side connections (health checks, catalog) are not pooled
                        "AND application_name NOT LIKE 'sluice%'")))
                    time.sleep(0.02)
            watcher = threading.Thread(target=watch)
            watcher.start()

            def client(i):
                user, password = ("app", "secret") if i % 2 else ("other", "otherpass")
                with psycopg.connect(sluice.dsn(user=user, password=password),
                                     autocommit=True) as conn:
                    for _ in range(8):
                        self.assertEqual(conn.execute("SELECT 1 FROM pg_sleep(0.03)").fetchone(),
                                         (1,))
            try:
                run_threads(8, client)
            finally:
                stop.set()
                watcher.join()
            self.assertLessEqual(peak[0], 3, f"the primary saw {peak[0]} connections")
            self.assertGreaterEqual(peak[0], 2)


class Parking(unittest.TestCase):
    """Idle pooled clients park (a socket and a shared identity, no session object) once more
    than pool.park_idle_above are connected, those that connected below it too; a parked client
    keeps its prepared statements, settings and read-your-writes state when it wakes."""

    def test_idle_clients_park_above_the_threshold_and_keep_their_state(self):
        with Sluice(tweak=pooled(size=2, park_idle_above=3)) as sluice:
            def parked():
                return sluice.metrics()["sluice_clients_parked"]
            conns = [psycopg.connect(sluice.dsn(), autocommit=True) for _ in range(3)]
            try:
                first = conns[0]
                first.pgconn.prepare(b"twice", b"SELECT $1::int * 2")
                first.execute("SET search_path TO park_test, public")
                for c in conns:
                    self.assertEqual(c.execute("SELECT 1").fetchone(), (1,))
                time.sleep(0.3)
                self.assertEqual(parked(), 0, "3 clients, park_idle_above 3: nobody parks")
                conns.append(psycopg.connect(sluice.dsn(), autocommit=True))
                conns[3].execute("SELECT 1")
                # The three that were waiting in a coroutine park too, not only the newcomer.
                wait_for(lambda: parked() == 4, what="4 parked clients")
                res = first.pgconn.exec_prepared(b"twice", [b"21"])
                self.assertEqual(res.get_value(0, 0), b"42", res.error_message)
                self.assertEqual(first.execute("SHOW search_path").fetchone(),
                                 ("park_test, public",))
                for c in conns[1:]:
                    self.assertEqual(c.execute("SHOW search_path").fetchone(),
                                     ('"$user", public',))
                wait_for(lambda: parked() == 4, what="the clients parked again")
            finally:
                for c in conns:
                    c.close()
            wait_for(lambda: parked() == 0, what="closed clients no longer parked")


class ManyClients(unittest.TestCase):
    """2000 clients over pool_size 20: pgbench with 0 failed transactions, and the primary never
    sees more than 20 (+ reserve) sluice connections."""

    SECONDS = int(os.environ.get("SLUICE_MANY_CLIENTS_SECONDS", "60"))

    def test_2000_clients_over_a_pool_of_20(self):
        st_env = dict(os.environ, PGPASSWORD="secret", PGSSLMODE="disable")
        with Sluice(tweak=lambda c: c.update(pool={"mode": "transaction", "size": 20,
                                                    "reserve_pool_size": 2,
                                                    "max_client_conn": 2100,
                                                    "query_wait_timeout": "60s"})) as sluice:
            subprocess.run(["pgbench", "-i", "-q", "-s", "2", "-h", "127.0.0.1", "-p",
                            str(sluice.port), "-U", "app", "appdb"], check=True, env=st_env,
                           capture_output=True, timeout=120)
            peak = [0]
            stop = threading.Event()

            def watch():
                while not stop.is_set():
                    peak[0] = max(peak[0], sluice_backends())
                    time.sleep(0.2)
            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                # pgbench's -T includes opening the 2000 connections (SCRAM each, about 15 s
                # under ASan on 2 cores): at least 30 s in all, so every client gets to run.
                run_for = max(self.SECONDS + 10, 30)
                r = subprocess.run(["pgbench", "-n", "-S", "-c", "2000", "-j", "2", "-T",
                                    str(run_for), "-h", "127.0.0.1", "-p",
                                    str(sluice.port),
                                    "-U", "app", "appdb"], env=st_env, capture_output=True,
                                   text=True, timeout=self.SECONDS + 240)
            finally:
                stop.set()
                watcher.join()
            out = r.stdout + r.stderr
            self.assertEqual(r.returncode, 0, out[-3000:])
            self.assertIn("number of clients: 2000", out)
            self.assertIn("number of failed transactions: 0 (0.000%)", out)
            processed = int(out.split("number of transactions actually processed: ")[1].split()[0])
            self.assertGreater(processed, 2000)
            self.assertLessEqual(peak[0], 22, f"primary saw {peak[0]} sluice connections")
            self.assertGreater(peak[0], 0)
            tps = out.split("tps = ")[1].split()[0] if "tps = " in out else "?"
            marker = "initial connection time = "
            connect = out.split(marker)[1].split()[0] if marker in out else "?"
            print(f"\n2000 clients / pool 20: pgbench -T {run_for} (connecting took "
                  f"{connect} ms): {processed} transactions, 0 failed, tps {tps}, peak server "
                  f"connections {peak[0]}")


class SlowCancels:
    """A TCP relay in front of the primary that holds every CancelRequest `delay` seconds before
    passing it on (a server slow to accept a connection, as under load); other connections pass
    at once. `forwarded` has the time.monotonic() each cancel reached the server."""

    def __init__(self, target_port, delay):
        self.target_port, self.delay, self.forwarded = target_port, delay, []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        head = b""
        while len(head) < 8 and (chunk := conn.recv(8 - len(head))):
            head += chunk
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        if head == struct.pack("!II", 16, 80877102):
            time.sleep(self.delay)
            self.forwarded.append(time.monotonic())
        upstream.sendall(head)
        back = threading.Thread(target=self.pipe, args=(upstream, conn), daemon=True)
        back.start()
        self.pipe(conn, upstream)
        back.join(30)
        conn.close()
        upstream.close()

    @staticmethod
    def pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self):
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()


class LateCancel(unittest.TestCase):
    """A cancel sluice forwards late, once the query it was sent for has ended, must not cancel
    the next query on that server connection: another client's, or the same client's. PostgreSQL
    ignores a cancel that reaches an idle backend, so sluice gives the connection its next query
    only once the server has taken the cancel (closed its connection). A pool of 1: the next
    query runs on the same backend. (PostgreSQL 15 itself signals the backend twice per cancel,
    kill(pid) then kill(-pid); the second signal, late under load, is the same race.)"""
    DELAY = 0.8

    def setUp(self):
        self.relay = SlowCancels(state()["primary_port"], self.DELAY)
        self.addCleanup(self.relay.close)

        def tweak(c):
            c["pool"] = {"mode": "transaction", "size": 1}
            c["databases"]["appdb"]["primary"]["port"] = self.relay.port
        self.sluice = Sluice(tweak=tweak).start()

    def tearDown(self):
        self.assertEqual(self.sluice.stop(), 0)

    def login(self):
        w = Wire(self.sluice.port)
        self.addCleanup(w.close)
        self.assertEqual(w.login("app", "secret", "appdb")[0], "ok")
        return w

    def cancelled_too_late(self, victim, next_client):
        first, second = "SELECT pg_sleep(0.3), 'first'", "SELECT pg_sleep(1.5), 'next'"
        pid, secret = victim.key

        def cancel():  # sent while `first` runs; the relay passes it on DELAY s later
            running = ("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
                       "query = '" + first.replace("'", "''") + "'")
            wait_for(lambda: superuser_sql(running, db="postgres") != "0", timeout=10,
                     interval=0.02, what="the first query to run")
            with socket.create_connection(("127.0.0.1", self.sluice.port)) as s:
                s.sendall(struct.pack("!IIII", 16, 80877102, pid, secret))
                s.settimeout(10)
                s.recv(1)  # sluice closes it once the server has closed its own
        thread = threading.Thread(target=cancel)
        thread.start()
        rows, err = victim.query(first)
        self.assertIsNone(err, "the cancel reached the first query: the relay did not hold it")
        sent_next = time.monotonic()
        rows2, err2 = next_client.query(second)
        thread.join(15)
        self.assertEqual(len(self.relay.forwarded), 1, "the cancel never reached the server")
        self.assertLess(sent_next, self.relay.forwarded[0],
                        "the next query was sent after the cancel reached the server: the race "
                        "this test is about did not happen")
        self.assertIsNone(err2, f"a cancel sent for the previous query cancelled {second}")
        self.assertEqual(rows2, [["", "next"]])
        self.assertEqual(victim.query("SELECT 1")[0], [["1"]])

    def test_a_late_cancel_spares_the_next_query_of_the_same_client(self):
        w = self.login()
        self.cancelled_too_late(w, w)

    def test_a_late_cancel_spares_the_query_of_another_client(self):
        self.cancelled_too_late(self.login(), self.login())


if __name__ == "__main__":
    unittest.main()
