"""Issue 20, reads never go back in time: with routing.read_consistency: global a read through any
sluice instance sharing the Redis sees every write acknowledged before it arrived, also on a new
connection carrying no token (INSERT then SELECT on a new connection, one and two instances, with
and without the cache; the issue-6 checker without tokens), while reads of tables nobody writes
stay on the replica (marks are per relation) and a restart after pipelined, session-pooled, DDL and
COPY writes does not leave reads on the primary for good. `eventual` shows the stale reads, so each
check can fail.

Env: SLUICE_CONSISTENCY_ITERATIONS (INSERT + new-connection SELECT pairs per global variant,
default 1000), SLUICE_CONSISTENCY_CHECKER_OPS (checker operations, default 20000),
SLUICE_CONSISTENCY_LEGACY=1 leaves routing.read_consistency / max_consistency_wait out of the
config, so a build without issue 20 starts (every mode then behaves as today's `session`)."""
import os
import random
import threading
import time
import unittest

import psycopg

import test_cache
from harness import APP_PASSWORD, Sluice, superuser_sql, wait_for
from pgwire import Wire
from test_cache import cache_config, metric, redis_cli, run_checker, wait_catalog
from test_pgbench import check_run, pgbench
from test_routing import (restore_replica, routed_config, set_apply_delay, wait_checked,
                          wait_replayed)

LEGACY = os.environ.get("SLUICE_CONSISTENCY_LEGACY") == "1"
ITERATIONS = int(os.environ.get("SLUICE_CONSISTENCY_ITERATIONS", "1000"))
CHECKER_OPS = int(os.environ.get("SLUICE_CONSISTENCY_CHECKER_OPS", "20000"))
PAIR_THREADS = 4  # writer/reader pairs run side by side: each pair is sequential on its own
DELAY = "200ms"  # the replica's recovery_min_apply_delay where a case delays it
OUTCOMES = ("replica", "waited", "primary_behind")
R_ROWS = 1000


def consistency_config(mode, cache=True, pool_mode="transaction", wait=None):
    """Routing on, transaction pooling (or pool_mode), the cluster's Redis when `cache`, and
    routing.read_consistency = mode, routing.max_consistency_wait = wait if given (both left out
    under SLUICE_CONSISTENCY_LEGACY=1). cache="marks": cache.redis set, cache.enabled false (no
    hits nor fills, the Redis keeps only the versions and commit marks)."""
    base = cache_config() if cache else routed_config()

    def tweak(c):
        base(c)
        if cache == "marks":
            c["cache"]["enabled"] = False
        c["pool"]["mode"] = pool_mode
        if not LEGACY:
            c["routing"]["read_consistency"] = mode
            if wait:
                c["routing"]["max_consistency_wait"] = wait
    return tweak


def start(mode, cache=True, pool_mode="transaction", wait=None):
    """A started sluice whose replica passed its first health check (and, with the cache in
    transaction pooling, whose catalog is loaded); the caller stops it."""
    s = Sluice(tweak=consistency_config(mode, cache, pool_mode, wait)).start()
    try:
        wait_checked(s)
        if cache is True and pool_mode != "session":  # session pooling: no routing nor hits
            wait_catalog(s)
    except BaseException:
        s.stop()
        raise
    return s


def figures(instances, user=None):
    """Counters summed over instances: statements by route ("replica", "primary", "cache"; of
    `user` if given), reads that needed a position by outcome ("o_replica", "o_waited",
    "o_primary_behind") and "wait_s", the seconds spent waiting for a replica."""
    users = {"user": user} if user else {}
    out = {}
    for route in ("replica", "primary", "cache"):
        out[route] = sum(metric(s, "sluice_queries_total", route=route, **users)
                         for s in instances)
    for outcome in OUTCOMES:
        out["o_" + outcome] = sum(metric(s, "sluice_consistent_reads_total", outcome=outcome)
                                  for s in instances)
    out["wait_s"] = sum(metric(s, "sluice_consistency_wait_seconds_total") for s in instances)
    return out


def delta(after, before):
    return {k: after[k] - before[k] for k in after}


def outcome_text(d):
    return (f"reads needing a position: replica {d['o_replica']:.0f}, waited "
            f"{d['o_waited']:.0f}, primary_behind {d['o_primary_behind']:.0f}; waits "
            f"{d['wait_s'] * 1000:.0f} ms in all")


def setUpModule():
    restore_replica()  # in case an interrupted run left it down
    set_apply_delay("0")
    test_cache.Cache.setUpClass()  # cc_a, cc_b, cc_c for the issue-6 checker
    superuser_sql(
        "DROP TABLE IF EXISTS rc_items, rc_w, rc_r, rc_pipe, rc_copy, rc_session; "
        "CREATE TABLE rc_items (id bigserial PRIMARY KEY, v text NOT NULL); "
        "CREATE TABLE rc_w (id int PRIMARY KEY, v bigint NOT NULL); "
        "INSERT INTO rc_w VALUES (1, 0); "
        "CREATE TABLE rc_r (id int PRIMARY KEY, v text NOT NULL); "
        f"INSERT INTO rc_r SELECT g, 'r' || g FROM generate_series(1, {R_ROWS}) g; "
        "CREATE TABLE rc_pipe (id int, v text); CREATE TABLE rc_copy (id int, v text); "
        "CREATE TABLE rc_session (id int, v text); "
        "GRANT ALL ON rc_items, rc_w, rc_r, rc_pipe, rc_copy, rc_session TO app; "
        "GRANT ALL ON SEQUENCE rc_items_id_seq TO app; GRANT ALL ON rc_w TO other")
    wait_replayed()


def new_connection_reads(writer, reader, pairs, threads=PAIR_THREADS):
    """`pairs` rounds of INSERT ... RETURNING id on a kept connection to `writer`, then SELECT of
    that id on a NEW connection to `reader` (no token, no shared session), in `threads`
    threads. Returns (misses, seconds, statement/outcome deltas of `reader` and `writer`)."""
    instances = [writer] if writer is reader else [writer, reader]
    before = figures(instances)
    misses = []
    errors = []

    def pair(n, count):
        try:
            with psycopg.connect(writer.dsn(), autocommit=True) as a:
                for i in range(count):
                    v = f"p{n}.{i}"
                    new_id = a.execute("INSERT INTO rc_items (v) VALUES (%s) RETURNING id",
                                       (v,)).fetchone()[0]
                    with psycopg.connect(reader.dsn(), autocommit=True) as b:
                        row = b.execute("SELECT v FROM rc_items WHERE id = %s",
                                        (new_id,)).fetchone()
                    if row != (v,):
                        misses.append((new_id, row))
        except Exception as e:  # a thread's failure fails the test, not just the thread
            errors.append(repr(e))
    began = time.monotonic()
    counts = [pairs // threads + (1 if n < pairs % threads else 0) for n in range(threads)]
    running = [threading.Thread(target=pair, args=(n, c)) for n, c in enumerate(counts)]
    for t in running:
        t.start()
    for t in running:
        t.join()
    took = time.monotonic() - began
    if errors:
        raise AssertionError(f"a writer/reader pair failed: {errors[:3]}")
    return misses, took, delta(figures(instances), before)


class NewConnectionReads(unittest.TestCase):
    """Case 1: INSERT ... RETURNING id on connection A, SELECT of that id on a new connection B,
    both through sluice, transaction pooling, the replica 200 ms behind. A miss is a SELECT that
    did not return the row A's INSERT returned. The share of B's reads on the replica is
    sluice_queries_total{route="replica"} of the run over its reads (INSERTs never run there)."""

    def run_pairs(self, mode, what, pairs, cache=True, two=False):
        set_apply_delay(DELAY)
        instances = []
        try:
            instances.append(start(mode, cache))
            if two:
                instances.append(start(mode, cache))
            misses, took, d = new_connection_reads(instances[0], instances[-1], pairs)
            print(f"\n{what}, read_consistency {mode}{' (legacy config)' if LEGACY else ''}: "
                  f"{pairs} INSERT + new-connection SELECT, replica {DELAY} behind: "
                  f"{len(misses)} misses in {took:.1f} s ({took / pairs * 1000:.1f} ms a pair, "
                  f"{PAIR_THREADS} pairs at once); reads on the replica "
                  f"{d['replica'] / pairs:.1%} ({d['replica']:.0f}), primary statements "
                  f"{d['primary']:.0f}, cache hits {d['cache']:.0f}; {outcome_text(d)}")
            return misses, d
        finally:
            for s in instances:
                s.stop()
            set_apply_delay("0")

    def check_global(self, misses, d, pairs):
        self.assertEqual(len(misses), 0, f"{len(misses)} of {pairs} reads on a new connection "
                         f"did not see the row just inserted, e.g. (id, row) {misses[:5]}")
        if not LEGACY:  # the outcome counters are wired: the reads needed a position
            self.assertGreater(d["o_waited"] + d["o_primary_behind"], 0, d)

    def test_global_one_instance_with_cache(self):
        misses, d = self.run_pairs("global", "1a one instance, cache.redis on", ITERATIONS)
        self.check_global(misses, d, ITERATIONS)

    def test_global_two_instances_sharing_redis(self):
        misses, d = self.run_pairs("global", "1b A on instance 1, B on instance 2, one Redis",
                                   ITERATIONS, two=True)
        self.check_global(misses, d, ITERATIONS)

    def test_global_one_instance_without_cache(self):
        misses, d = self.run_pairs("global", "1c one instance, no cache.redis", ITERATIONS,
                                   cache=False)
        self.check_global(misses, d, ITERATIONS)

    def test_global_while_redis_holds_the_bumps(self):
        """Redis slow for writes now and then (CLIENT PAUSE 250 WRITE each second: the bump
        script waits, GET and MGET are answered): a write's bump times out (command_timeout
        200 ms), the connection comes back at once, the bump waits for its retry (up to a
        second later) and the client has its ReadyForQuery. The marks in Redis lack that write,
        so until the retry lands a read must not trust them (before, it read them and went to
        the delayed replica). A fault load can cause: a reply later than command_timeout."""
        if LEGACY:
            self.skipTest("needs routing.read_consistency")
        pairs = 300
        set_apply_delay(DELAY)
        s = start("global", cache="marks")
        stop = threading.Event()

        def pauser():
            while not stop.wait(1.0):
                redis_cli("CLIENT", "PAUSE", "250", "WRITE")
        try:
            before = figures([s])
            failed = metric(s, "sluice_cache_bumps_total", result="failed")
            pausing = threading.Thread(target=pauser)
            pausing.start()
            try:
                misses, took, _ = new_connection_reads(s, s, pairs, threads=2)
            finally:
                stop.set()
                pausing.join()
            failed = metric(s, "sluice_cache_bumps_total", result="failed") - failed
            d = delta(figures([s]), before)
        finally:
            s.stop()
            set_apply_delay("0")
        print(f"\nRedis pausing writes 250 ms a second, read_consistency global: {pairs} INSERT + "
              f"new-connection SELECT in {took:.1f} s, replica {DELAY} behind: {len(misses)} "
              f"misses; bumps failed {failed:.0f}; reads on the replica {d['replica']:.0f}; "
              f"{outcome_text(d)}")
        self.assertGreater(failed, 0, "no bump failed: the fault did not happen")
        self.assertEqual(len(misses), 0, f"{len(misses)} of {pairs} reads on a new connection "
                         f"did not see the row just inserted, e.g. (id, row) {misses[:5]}")

    def test_eventual_misses_without_cache(self):
        """The control: eventual routes on lag bans alone, so B reads the delayed replica."""
        pairs = max(40, ITERATIONS // 10)
        misses, d = self.run_pairs("eventual", "1d one instance, no cache.redis", pairs,
                                   cache=False)
        self.assertGreater(len(misses), 0, "eventual showed no miss: the check could not fail")

    def test_eventual_misses_with_cache(self):
        """The same with cache.redis and no hits (cache.enabled false): lag bans alone, so also
        here B reads the delayed replica. (A cache miss is always filled from a source that
        replayed the versions it is stored under, whatever the mode: with hits on, eventual
        reads of cacheable statements do not go back in time either.)"""
        pairs = max(40, ITERATIONS // 10)
        misses, d = self.run_pairs("eventual", "1e one instance, cache.redis on, no hits", pairs,
                                   cache="marks")
        self.assertGreater(len(misses), 0, "eventual showed no miss: the check could not fail")


PHASE_SECONDS = 5.0
READERS = 8
WRITES_PER_SECOND = 50


class Writer(threading.Thread):
    """UPDATE rc_w SET v = v + 1 ... RETURNING v through sluice as user `other`, 50 times a second;
    `acked` is the last value the server acknowledged (values only grow)."""

    def __init__(self, sluice):
        super().__init__()
        self.sluice, self.acked, self.writes, self.error = sluice, 0, 0, None
        self.stop_event = threading.Event()

    def run(self):
        try:
            with psycopg.connect(self.sluice.dsn(user="other", password="otherpass"),
                                 autocommit=True) as c:
                self.acked = c.execute("SELECT v FROM rc_w WHERE id = 1").fetchone()[0]
                next_at = time.monotonic()
                while not self.stop_event.is_set():
                    self.acked = c.execute("UPDATE rc_w SET v = v + 1 WHERE id = 1 "
                                           "RETURNING v").fetchone()[0]
                    self.writes += 1
                    next_at += 1.0 / WRITES_PER_SECOND
                    self.stop_event.wait(max(0.0, next_at - time.monotonic()))
        except Exception as e:
            self.error = repr(e)


def read_for(sluice, seconds, read, cache_off):
    """READERS threads, each on its own connection (as app), call read(conn) as fast as they can
    for `seconds`. Returns (reads, statements, problems): read() returns a problem text or
    None; statements counts the reads and the SETs that turned the cache off."""
    reads, problems, errors = [0] * READERS, [], []

    def reader(n):
        try:
            with psycopg.connect(sluice.dsn(), autocommit=True) as c:
                if cache_off:  # every read reaches a server: its route is counted
                    c.execute("SET sluice.cache = off")
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    problem = read(c, n)
                    reads[n] += 1
                    if problem:
                        problems.append(problem)
        except Exception as e:
            errors.append(repr(e))
    threads = [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise AssertionError(f"a reader failed: {errors[:3]}")
    return sum(reads), sum(reads) + (READERS if cache_off else 0), problems


class UnrelatedTablesStayOnReplica(unittest.TestCase):
    """Case 2: a writer updates table W (rc_w) 50 times a second through sluice as user `other`,
    the replica has no artificial delay. Phase 1: 8 readers as user `app` read table R (rc_r,
    never written) as fast as they can for 5 s. Their share on the replica is exact: they are
    the only statements of user app in that phase (the writer is another user), so
    sluice_queries_total{user="app",route="replica"} over the reads they counted themselves.
    Phase 2: the readers read W; every read must show at least the value acknowledged to the
    writer before the read was sent (read first, then the query)."""

    def run_phases(self, what, two):
        # The default wait, written out: the key is read.
        writer_s = start("global", cache=two, wait="20ms")
        reader_s = start("global", cache=two, wait="20ms") if two else writer_s
        writer = Writer(writer_s)
        try:
            writer.start()
            began = time.monotonic()
            before = figures([reader_s], user="app")

            def read_r(c, n):
                c.execute("SELECT v FROM rc_r WHERE id = %s",
                          (random.randint(1, R_ROWS),)).fetchone()
            reads_r, statements_r, _ = read_for(reader_s, PHASE_SECONDS, read_r, cache_off=two)
            d_r = delta(figures([reader_s], user="app"), before)
            rate = writer.writes / (time.monotonic() - began)

            before = figures([reader_s], user="app")

            def read_w(c, n):
                want = writer.acked  # acknowledged before this read is sent
                got = c.execute("SELECT v FROM rc_w WHERE id = 1").fetchone()[0]
                return None if got >= want else f"reader {n} read {got} after {want} was acked"
            reads_w, statements_w, stale = read_for(reader_s, PHASE_SECONDS, read_w,
                                                    cache_off=two)
            d_w = delta(figures([reader_s], user="app"), before)
        finally:
            writer.stop_event.set()
            writer.join()
            writer_s.stop()
            if two:
                reader_s.stop()
        self.assertIsNone(writer.error)
        share_r = d_r["replica"] / max(1, statements_r)
        share_w = d_w["replica"] / max(1, statements_w)
        print(f"\n{what}{' (legacy config)' if LEGACY else ''}: writer {rate:.0f} updates/s of "
              f"rc_w ({writer.writes} in all).\n  phase 1, 8 readers of rc_r: {reads_r} reads, "
              f"{share_r:.1%} on the replica ({d_r['replica']:.0f}; primary {d_r['primary']:.0f}, "
              f"cache {d_r['cache']:.0f}); {outcome_text(d_r)}\n  phase 2, 8 readers of rc_w: "
              f"{reads_w} reads, {len(stale)} older than the last acknowledged write "
              f"{stale[:2]}; {share_w:.1%} on the replica ({d_w['replica']:.0f}; primary "
              f"{d_w['primary']:.0f}); {outcome_text(d_w)}")
        self.assertGreater(rate, WRITES_PER_SECOND * 0.8, "the writer did not keep its pace")
        self.assertGreater(reads_r, 1000)
        # Only the readers' statements are counted (their SETs included, if any).
        self.assertLessEqual(d_r["replica"] + d_r["primary"] + d_r["cache"], statements_r, d_r)
        self.assertGreaterEqual(share_r, 0.9, "reads of a table nobody writes left the replica")
        # Per relation: R has no mark, so its reads neither waited nor went to the primary for
        # being behind (a per-database mark would make some of them do so after each W write).
        self.assertLessEqual(d_r["o_waited"] + d_r["o_primary_behind"], 0.1 * reads_r, d_r)
        self.assertEqual(len(stale), 0, f"{len(stale)} of {reads_w} reads of rc_w went back in "
                         f"time, e.g. {stale[:5]}")
        self.assertGreater(reads_w, 100)
        if not LEGACY:  # reads of W need a position: the counters are wired
            self.assertGreater(d_w["o_replica"] + d_w["o_waited"] + d_w["o_primary_behind"], 0)

    def test_one_instance_without_cache(self):
        self.run_phases("2a one instance, no cache.redis, read_consistency global", two=False)

    def test_writer_and_readers_on_two_instances_sharing_redis(self):
        """Marks travel through Redis: W's must not reach R's reads on the other instance. The
        readers turn the cache off for their session (SET sluice.cache = off) so that each read
        reaches a server and its route is counted."""
        self.run_phases("2b writer on instance 1, readers on instance 2, one Redis (readers' "
                        "sessions with sluice.cache off), read_consistency global", two=True)


class CheckerWithoutTokens(unittest.TestCase):
    """Case 3: the issue-6 checker (test_cache.run_checker) with tokens=False: each client writes
    through its home instance and reads through its connection to either instance, never telling
    the other one anything; two instances sharing the cluster's Redis, the replica 200 ms behind.
    A violation is a read older than the client's own last write."""

    def run_checker(self, mode, operations, seed, cache=True):
        for t in test_cache.TABLES:
            superuser_sql(f"UPDATE {t} SET v = 0")
        wait_replayed()
        set_apply_delay(DELAY)
        instances = []
        try:
            instances = [start(mode, cache), start(mode, cache)]
            before = figures(instances)
            began = time.monotonic()
            violations, reads, writes = run_checker(instances, clients=8, operations=operations,
                                                    seed=seed, tokens=False)
            took = time.monotonic() - began
            d = delta(figures(instances), before)
        finally:
            for s in instances:
                s.stop()
            set_apply_delay("0")
        print(f"\n3 checker, read_consistency {mode}{' (legacy config)' if LEGACY else ''}, two "
              f"instances, one Redis, no tokens, replica {DELAY} behind: {reads + writes} "
              f"operations ({reads} reads, {writes} writes) in {took:.1f} s: {len(violations)} "
              f"violations {violations[:2]}; statements on the replica {d['replica']:.0f}, "
              f"primary {d['primary']:.0f}, cache hits {d['cache']:.0f}; {outcome_text(d)}")
        self.assertEqual(reads + writes, operations - operations % 8)
        return violations, d

    def test_global_no_violations(self):
        violations, d = self.run_checker("global", CHECKER_OPS, seed=20)
        self.assertEqual(violations, [], violations[:5])
        self.assertGreater(d["cache"], 0)  # the cache was in play
        self.assertGreater(d["replica"], 0)  # and so was the replica

    def test_eventual_shows_violations(self):
        """The control: the same checker, shorter, with eventual and no cache hits (a cache miss
        is filled from a source that replayed its versions whatever the mode)."""
        violations, _ = self.run_checker("eventual", 2000, seed=21, cache="marks")
        self.assertGreater(len(violations), 0, "eventual showed no violation: the check could "
                           "not fail")


def wire_pipeline(sluice, statements):
    """Sends every statement as a simple Query before reading any reply (a pipelined client);
    returns the ErrorResponses' fields."""
    w = Wire(sluice.port)
    try:
        w.login("app", APP_PASSWORD, "appdb")
        for sql in statements:
            w.send_msg(b"Q", sql.encode() + b"\0")
        errors, ready = [], 0
        while ready < len(statements):
            typ, body = w.read()
            if typ == b"E":
                errors.append(Wire.fields(body))
            ready += typ == b"Z"
        return errors
    finally:
        w.close()


class ReplicaReadsAfterRestart(unittest.TestCase):
    """Case 4, the regression for the "maximum LSN" kept in Redis that sent every read of the
    database to the primary for good: writes to pgbench_accounts (the table pgbench -S reads)
    and others through sluice, cache on, in every way that hid a commit LSN (psycopg pipeline,
    simple queries pipelined on the wire, DDL, COPY FROM STDIN, session pooling), then a restart
    of sluice, then pgbench -S. Share on the replica: sluice_queries_total{route="replica"} over
    replica + primary of the new process (cache hits, route="cache", reach no server and are
    printed apart). Redis is not flushed: a store left with a maximum must heal by itself."""

    def test_pgbench_select_only_on_the_replica_after_restart(self):
        set_apply_delay("0")
        tx = start("global")
        session = None
        try:
            session = start("global", pool_mode="session")
            r = pgbench(tx.port, "-i", "-s", "1", "-q")
            self.assertEqual(r.returncode, 0, r.stderr)
            with psycopg.connect(tx.dsn(), autocommit=True) as c:
                with c.pipeline():  # extended protocol, one Sync for the lot
                    for i in range(10):
                        c.execute("INSERT INTO rc_pipe VALUES (%s, 'psycopg pipeline')", (i,))
                    c.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 "
                              "WHERE aid = %s", (1,))
                c.execute("DROP TABLE IF EXISTS rc_ddl")
                c.execute("CREATE TABLE rc_ddl (id int PRIMARY KEY, v text)")
                c.execute("CREATE INDEX IF NOT EXISTS rc_accounts_bid ON pgbench_accounts (bid)")
                with c.cursor().copy("COPY rc_copy FROM STDIN") as cp:
                    for i in range(100):
                        cp.write_row((i, "copied"))
                with c.cursor().copy("COPY pgbench_accounts (aid, bid, abalance, filler) "
                                     "FROM STDIN") as cp:
                    for i in range(100):
                        cp.write_row((200001 + i, 1, 0, "copied"))
            errors = wire_pipeline(tx, [
                "INSERT INTO rc_pipe VALUES (100, 'wire')",
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
                "INSERT INTO rc_pipe VALUES (101, 'wire'); UPDATE pgbench_accounts SET "
                "abalance = abalance + 1 WHERE aid = 3",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 2",
                "INSERT INTO rc_pipe VALUES (102, 'wire')"])
            self.assertEqual(errors, [])
            with psycopg.connect(session.dsn(), autocommit=True) as c:
                c.execute("INSERT INTO rc_session VALUES (1, 'session pooling')")
                # Until a write in session pooling moved a cache version (the catalog of that
                # instance is loaded): the kind of bump whose LSN was not asked.
                wait_for(lambda: c.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 "
                                           "WHERE aid = 4") and
                         metric(session, "sluice_cache_bumps_total", result="ok") > 0,
                         timeout=20, interval=0.2, what="a cache bump in session pooling")
                with c.pipeline():
                    for i in range(5):
                        c.execute("UPDATE pgbench_accounts SET abalance = abalance + 1 "
                                  "WHERE aid = %s", (10 + i,))
        finally:
            if session:
                session.stop()
            tx.stop()
        wait_replayed()  # the replica has every write: nothing is left to wait for
        tx.start()  # the restart: same config, a new process
        try:
            wait_checked(tx)
            wait_catalog(tx)
            before = figures([tx])
            r = pgbench(tx.port, "-S", "-n", "-t", "300", "-c", "4")
            check_run(self, r, "pgbench -S -n -t 300 -c 4 after the restart")
            d = delta(figures([tx]), before)
        finally:
            tx.stop()
        served = d["replica"] + d["primary"]
        share = d["replica"] / max(1.0, served)
        print(f"4 after pipelined, DDL, COPY and session-pooled writes and a restart"
              f"{' (legacy config)' if LEGACY else ''}: pgbench -S: {d['replica']:.0f} reads on "
              f"the replica, {d['primary']:.0f} on the primary ({share:.1%} on the replica), "
              f"{d['cache']:.0f} cache hits; {outcome_text(d)}")
        self.assertGreaterEqual(served, 1000)  # 1 200 SELECTs, a few of them cache hits
        self.assertGreaterEqual(share, 0.9, "reads stayed on the primary after the writes")

    def test_a_stored_maximum_heals(self):
        """Marks an older release left at the maximum LSN ("ffffffffffffffff", its stamp for a
        write whose LSN it had not asked) must not keep reads off the replica: they read as no
        mark, and the next write through sluice replaces them."""
        superuser_sql("DROP TABLE IF EXISTS rc_heal; CREATE TABLE rc_heal (id int PRIMARY KEY, "
                      "v int NOT NULL); INSERT INTO rc_heal SELECT g, 0 FROM "
                      "generate_series(1, 10) g; GRANT ALL ON rc_heal TO app")
        oid = superuser_sql("SELECT 'rc_heal'::regclass::oid")
        s = start("global")
        try:
            with psycopg.connect(s.dsn(), autocommit=True) as c:
                c.execute("UPDATE rc_heal SET v = v + 1 WHERE id = 1")  # its keys exist now
            keys = redis_cli("--scan", "--pattern", "sluice:l:*").split()
            own = [k for k in keys if k.endswith(f":{oid}")]
            self.assertEqual(len(own), 1, keys)
            for k in keys:  # what the older release left behind
                redis_cli("SET", k, "ffffffffffffffff")
            wait_replayed()
            before = figures([s], user="app")
            with psycopg.connect(s.dsn(), autocommit=True) as c:
                # 100 cache misses (one per id), each routed with the marks of rc_heal: the
                # maximum sent every one of them to the primary.
                for i in range(100):
                    c.execute("SELECT v FROM rc_heal WHERE id = %s", (i,)).fetchone()
            d = delta(figures([s], user="app"), before)
            with psycopg.connect(s.dsn(), autocommit=True) as c:
                c.execute("UPDATE rc_heal SET v = v + 1 WHERE id = 2")
            healed = redis_cli("GET", own[0])
        finally:
            s.stop()
        print(f"\na stored maximum: 100 reads of rc_heal (cache misses), {d['replica']:.0f} on "
              f"the replica, {d['primary']:.0f} on the primary, {d['cache']:.0f} hits; after a "
              f"write its mark is {healed}")
        self.assertGreaterEqual(d["replica"], 90, d)
        self.assertNotEqual(healed, "ffffffffffffffff")
        self.assertRegex(healed, r"^[0-9a-f]{16}$")


if __name__ == "__main__":
    unittest.main(verbosity=2)
