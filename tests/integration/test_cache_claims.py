"""The README's query cache claims, each checked on rows AND counters against the real primary +
replica + redis-server, each with a control showing the measurement can see the failure:
invalidation through views, partitions, cascading foreign keys and triggers (also reached through
a view, a partition or a cascade); keys separated by search_path and result-affecting settings;
REVOKE/GRANT; unbumped writes blocking hits; cache rules (mode, TTLs, skip, max_entry_bytes),
cache.enabled: false (still bumping versions), temporary and unlogged tables."""
import time
import unittest

import psycopg

from harness import Sluice, state, superuser_sql, wait_for
from test_cache import follower_commits, redis_cli

COUNTERS = ("hits", "misses", "fills", "fills_skipped")

SETUP_SQL = r"""
DROP TABLE IF EXISTS ck_probe, ck_base, ck_other, ck_part, ck_parent, ck_child, ck_grandchild,
  ck_setnull, ck_trig_src, ck_trig_log, ck_tpart, ck_tparent, ck_tchild, ck_s1.ck_sp,
  ck_s2.ck_sp, ck_text, ck_secret, ck_secret2, ck_unlogged, ck_shadow, ck_ttl, ck_skip, ck_big,
  ck_en, ck_ub, ck_ub_other CASCADE;
DROP VIEW IF EXISTS ck_unlogged_view;
DROP FUNCTION IF EXISTS ck_log_fn() CASCADE;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ck_readers') THEN
    CREATE ROLE ck_readers;
  END IF;
END $$;
GRANT ck_readers TO app WITH ADMIN OPTION;
REVOKE ck_readers FROM other;
CREATE TABLE ck_probe (id int);
CREATE TABLE ck_base (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO ck_base SELECT g, 0 FROM generate_series(1, 10) g;
CREATE VIEW ck_view AS SELECT id, v FROM ck_base;
CREATE TABLE ck_other (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO ck_other VALUES (1, 0);
CREATE TABLE ck_part (id int NOT NULL, v int NOT NULL) PARTITION BY RANGE (id);
CREATE TABLE ck_part_1 PARTITION OF ck_part FOR VALUES FROM (0) TO (100);
CREATE TABLE ck_part_2 PARTITION OF ck_part FOR VALUES FROM (100) TO (200);
INSERT INTO ck_part VALUES (5, 0), (150, 0);
CREATE TABLE ck_parent (id int PRIMARY KEY);
CREATE TABLE ck_child (id int PRIMARY KEY,
  parent_id int REFERENCES ck_parent ON DELETE CASCADE ON UPDATE CASCADE);
CREATE TABLE ck_grandchild (id int PRIMARY KEY, child_id int REFERENCES ck_child ON DELETE CASCADE);
CREATE TABLE ck_setnull (id int PRIMARY KEY, parent_id int REFERENCES ck_parent ON DELETE SET NULL);
CREATE TABLE ck_trig_log (n serial PRIMARY KEY, src text NOT NULL);
CREATE FUNCTION ck_log_fn() RETURNS trigger LANGUAGE plpgsql AS
  $f$ BEGIN INSERT INTO ck_trig_log (src) VALUES (TG_TABLE_NAME); RETURN NULL; END $f$;
CREATE TABLE ck_trig_src (id int PRIMARY KEY, v int NOT NULL DEFAULT 0);
CREATE TRIGGER ck_log AFTER INSERT OR UPDATE ON ck_trig_src
  FOR EACH ROW EXECUTE FUNCTION ck_log_fn();
CREATE VIEW ck_trig_view AS SELECT id, v FROM ck_trig_src;
INSERT INTO ck_trig_src VALUES (1, 0);
CREATE TABLE ck_tpart (id int NOT NULL) PARTITION BY RANGE (id);
CREATE TABLE ck_tpart_1 PARTITION OF ck_tpart FOR VALUES FROM (0) TO (1000000);
CREATE TRIGGER ck_log AFTER INSERT ON ck_tpart_1 FOR EACH ROW EXECUTE FUNCTION ck_log_fn();
CREATE TABLE ck_tparent (id int PRIMARY KEY);
CREATE TABLE ck_tchild (id int PRIMARY KEY, parent_id int REFERENCES ck_tparent ON DELETE CASCADE);
CREATE TRIGGER ck_log AFTER DELETE ON ck_tchild FOR EACH ROW EXECUTE FUNCTION ck_log_fn();
CREATE SCHEMA IF NOT EXISTS ck_s1;
CREATE SCHEMA IF NOT EXISTS ck_s2;
CREATE TABLE ck_s1.ck_sp (s text); INSERT INTO ck_s1.ck_sp VALUES ('rows of ck_s1');
CREATE TABLE ck_s2.ck_sp (s text); INSERT INTO ck_s2.ck_sp VALUES ('rows of ck_s2');
GRANT USAGE ON SCHEMA ck_s1, ck_s2 TO app;
CREATE TABLE ck_text (d date, ts timestamptz, f float8);
INSERT INTO ck_text VALUES ('2024-03-01', '2024-03-01 12:00:00+00', 1.0 / 3);
CREATE TABLE ck_secret (s text); INSERT INTO ck_secret VALUES ('secret rows');
CREATE TABLE ck_secret2 (s text); INSERT INTO ck_secret2 VALUES ('rows of ck_readers');
GRANT SELECT ON ck_secret2 TO ck_readers;
CREATE UNLOGGED TABLE ck_unlogged (id int, v int); INSERT INTO ck_unlogged VALUES (1, 0);
CREATE VIEW ck_unlogged_view AS SELECT v FROM ck_unlogged;
CREATE TABLE ck_shadow (s text); INSERT INTO ck_shadow VALUES ('permanent');
CREATE TABLE ck_ttl (v int); INSERT INTO ck_ttl VALUES (1);
CREATE TABLE ck_skip (v int); INSERT INTO ck_skip VALUES (1);
CREATE TABLE ck_big (s text); INSERT INTO ck_big VALUES (repeat('x', 8000));
CREATE TABLE ck_en (id int PRIMARY KEY, v int NOT NULL); INSERT INTO ck_en VALUES (1, 0);
CREATE TABLE ck_ub (id int PRIMARY KEY, v int NOT NULL); INSERT INTO ck_ub VALUES (1, 0);
CREATE TABLE ck_ub_other (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO ck_ub_other VALUES (1, 0);
"""

OWNED_BY_APP = ["ck_probe", "ck_base", "ck_view", "ck_other", "ck_part", "ck_part_1", "ck_part_2",
                "ck_parent", "ck_child", "ck_grandchild", "ck_setnull", "ck_trig_src",
                "ck_trig_view", "ck_trig_log", "ck_tpart", "ck_tpart_1", "ck_tparent",
                "ck_tchild", "ck_s1.ck_sp", "ck_s2.ck_sp", "ck_text", "ck_secret", "ck_secret2",
                "ck_unlogged", "ck_unlogged_view", "ck_shadow", "ck_ttl", "ck_skip", "ck_big",
                "ck_en", "ck_ub", "ck_ub_other"]


def setUpModule():
    superuser_sql(SETUP_SQL + "".join(f"ALTER TABLE {t} OWNER TO app;" for t in OWNED_BY_APP) +
                  "ALTER SEQUENCE ck_trig_log_n_seq OWNER TO app;")


def cache_tweak(**cache):
    """Transaction pooling, every statement on the primary, the cluster's Redis."""
    def tweak(c):
        c["pool"] = {"mode": "transaction", "size": 10}
        c["health_check_interval"] = "200ms"
        c["routing"] = {"enabled": False}
        c["cache"] = {"redis": f"redis://127.0.0.1:{state()['redis_port']}",
                      "admission": "always", **cache}
    return tweak


def snapshot(s):
    """The cache counters (summed over rules) and bypasses by reason."""
    out = {}
    for key, value in s.metrics().items():
        for c in COUNTERS:
            name = f"sluice_cache_{c}_total"
            if key == name or key.startswith(name + "{"):
                out[c] = out.get(c, 0) + value
        if key.startswith("sluice_cache_bypass_total{"):
            out["bypass:" + key.split('reason="')[1].split('"')[0]] = value
    return out


def changes(before, after):
    return {k: int(after.get(k, 0) - before.get(k, 0)) for k in set(before) | set(after)
            if after.get(k, 0) != before.get(k, 0)}


HIT = {"hits": 1}
MISS = {"misses": 1, "fills": 1}


def read(s, conn, sql, tries=5):
    """(rows, what the cache counted for the request). Now and then a request right after the
    previous one reaches the server connection that one used before it went back to the pool,
    without a lookup (nothing counted): such a read is repeated, up to `tries` times, with the
    same rows."""
    for _ in range(tries):
        before = snapshot(s)
        rows = conn.execute(sql).fetchall()
        counted = changes(before, snapshot(s))
        if counted:
            return rows, counted
    return rows, counted


def connect(dsn):
    """Autocommit, and never switched to a named prepared statement after 5 executions
    (psycopg's default): the Parse/Bind messages are in the key, the switch would be a miss."""
    conn = psycopg.connect(dsn, autocommit=True)
    conn.prepare_threshold = None
    return conn


def warm(test, s, conn, sql="SELECT count(*) FROM ck_probe"):
    """Until sluice has (again) a catalog, no bump waiting (reads calling functions before the
    catalog came count as writes to anything: the database's flush follows it), and serves hits
    for `sql`."""
    def hit():
        return s.metrics()["sluice_cache_unbumped"] == 0 and read(s, conn, sql)[1] == HIT
    wait_for(hit, timeout=20, what=f"a cache hit for {sql!r}")


class CacheClaims(unittest.TestCase):
    """One sluice, mode: all."""

    @classmethod
    def setUpClass(cls):
        cls.s = Sluice(tweak=cache_tweak()).start()
        cls.app = connect(cls.s.dsn())
        warm(cls, cls.s, cls.app)

    @classmethod
    def tearDownClass(cls):
        cls.app.close()
        assert cls.s.stop() == 0

    def connect(self, **kw):
        c = connect(self.s.dsn(**kw))
        self.addCleanup(c.close)
        return c

    def cached(self, conn, sql, want):
        """Reads `sql` until it is a hit (a write or DDL may have left it uncached), checking the
        rows each time: the entry the next read of the test is measured against."""
        def hit():
            rows, counted = read(self.s, conn, sql)
            self.assertEqual(rows, want, sql)
            return counted == HIT
        wait_for(hit, timeout=20, what=f"a hit for {sql!r}")

    def assert_fresh(self, conn, sql, want, why):
        """After a write through sluice: the next read is a miss with the new rows, the one
        after a hit with them — or, when the WAL follower bumped the write again in between
        (it reads the commit about 200 ms later), a miss and then a hit."""
        followed = follower_commits(self.s)
        self.assertEqual(read(self.s, conn, sql), (want, MISS), f"{why}: {sql}")
        second = read(self.s, conn, sql)
        if second[1] != HIT and follower_commits(self.s) > followed:
            second = read(self.s, conn, sql)
        self.assertEqual(second, (want, HIT), f"{why}: {sql} (second read)")

    def test_control_unrelated_write_keeps_hits(self):
        """The control for every invalidation test: a write through sluice to another table
        leaves the entry a hit, so a miss after a related write is the invalidation's doing."""
        sql = "SELECT v FROM ck_view WHERE id = 1"
        self.cached(self.app, sql, [(0,)])
        self.app.execute("UPDATE ck_other SET v = v + 1 WHERE id = 1")
        self.assertEqual(read(self.s, self.app, sql), ([(0,)], HIT))

    def test_view_invalidated_by_its_base_table_and_by_writes_through_it(self):
        c = self.app
        c.execute("UPDATE ck_base SET v = 0 WHERE id IN (1, 2)")
        view_sql = "SELECT v FROM ck_view WHERE id = 1"
        base_sql = "SELECT v FROM ck_base WHERE id = 2"
        self.cached(c, view_sql, [(0,)])
        c.execute("UPDATE ck_base SET v = 11 WHERE id = 1")
        self.assert_fresh(c, view_sql, [(11,)], "write to the view's base table")
        self.cached(c, base_sql, [(0,)])
        c.execute("UPDATE ck_view SET v = 22 WHERE id = 2")  # an auto-updatable view
        self.assert_fresh(c, base_sql, [(22,)], "write through the view")

    def test_partitions(self):
        c = self.app
        c.execute("UPDATE ck_part SET v = 0")
        parent_sql = "SELECT sum(v) FROM ck_part"
        child_sql = "SELECT v FROM ck_part_1 WHERE id = 5"
        self.cached(c, parent_sql, [(0,)])
        c.execute("UPDATE ck_part_2 SET v = 7 WHERE id = 150")  # the child, by its own name
        self.assert_fresh(c, parent_sql, [(7,)], "write into a partition by name")
        self.cached(c, child_sql, [(0,)])
        c.execute("UPDATE ck_part SET v = 3 WHERE id = 5")  # through the parent
        self.assert_fresh(c, child_sql, [(3,)], "write through the partitioned parent")
        self.assert_fresh(c, parent_sql, [(10,)], "write through the partitioned parent")

    def test_cascading_foreign_keys(self):
        c = self.app
        c.execute("DELETE FROM ck_parent")
        c.execute("INSERT INTO ck_parent VALUES (1), (2), (3)")
        c.execute("INSERT INTO ck_child VALUES (10, 1), (20, 2), (30, 3)")
        c.execute("INSERT INTO ck_grandchild VALUES (100, 10), (200, 20)")
        c.execute("INSERT INTO ck_setnull VALUES (1, 1), (2, 2)")
        child = "SELECT count(*) FROM ck_child"
        grandchild = "SELECT count(*) FROM ck_grandchild"
        setnull = "SELECT count(parent_id) FROM ck_setnull"
        renamed = "SELECT parent_id FROM ck_child WHERE id = 30"
        for sql, want in ((child, 3), (grandchild, 2), (setnull, 2)):
            self.cached(c, sql, [(want,)])
        c.execute("DELETE FROM ck_parent WHERE id = 1")  # ON DELETE CASCADE, two levels
        self.assert_fresh(c, child, [(2,)], "ON DELETE CASCADE")
        self.assert_fresh(c, grandchild, [(1,)], "ON DELETE CASCADE of ON DELETE CASCADE")
        self.assert_fresh(c, setnull, [(1,)], "ON DELETE SET NULL")
        self.cached(c, renamed, [(3,)])
        c.execute("UPDATE ck_parent SET id = 33 WHERE id = 3")  # ON UPDATE CASCADE
        self.assert_fresh(c, renamed, [(33,)], "ON UPDATE CASCADE")

    def test_triggers(self):
        c = self.app
        log = "SELECT count(*) FROM ck_trig_log"
        base = c.execute("/* sluice:nocache */ SELECT count(*) FROM ck_trig_log").fetchone()[0]
        # The trigger is on the table written, on the base table of a view written, on the
        # partition a row written through its parent lands in, on a table a cascade deletes from.
        c.execute("INSERT INTO ck_tparent VALUES (1), (2), (3)")
        c.execute("INSERT INTO ck_tchild VALUES (1, 1), (2, 2), (3, 3)")
        writes = [("UPDATE ck_trig_src SET v = v + 1 WHERE id = 1",
                   "a trigger on the table written"),
                  ("UPDATE ck_trig_view SET v = v + 1 WHERE id = 1",
                   "a trigger on the base table of the view written"),
                  ("INSERT INTO ck_tpart VALUES (1)",
                   "a trigger on the partition a row written through its parent lands in"),
                  ("DELETE FROM ck_tparent WHERE id = 1",
                   "a trigger on a table an ON DELETE CASCADE deletes from")]
        failures = []
        for sql, why in writes:
            self.cached(c, log, [(base,)])
            c.execute(sql)
            base += 1
            rows, counted = read(self.s, c, log)
            if (rows, counted) != ([(base,)], MISS):
                failures.append(f"{why} ({sql}): read {rows} counted {counted}, want "
                                f"[({base},)] and a miss")
                c.execute("DELETE FROM ck_trig_log WHERE false")  # drops the stale entry
        self.assertEqual(failures, [])

    def test_search_path_separates_keys(self):
        sql = "SELECT s FROM ck_sp"
        one, two, one_again = self.connect(), self.connect(), self.connect()
        for c, schema in ((one, "ck_s1"), (two, "ck_s2"), (one_again, "ck_s1")):
            c.execute(f"SET search_path = {schema}, public")
        self.cached(one, sql, [("rows of ck_s1",)])
        # Control: another client with the same search_path is served that entry.
        self.assertEqual(read(self.s, one_again, sql), ([("rows of ck_s1",)], HIT))
        self.assertEqual(read(self.s, two, sql), ([("rows of ck_s2",)], MISS))
        self.assertEqual(read(self.s, two, sql), ([("rows of ck_s2",)], HIT))
        # The same client moving to the other schema.
        one.execute("SET search_path = ck_s2, public")
        self.assertEqual(read(self.s, one, sql), ([("rows of ck_s2",)], HIT))
        one.execute("SELECT pg_catalog.set_config('search_path', 'ck_s1, public', false)")
        self.assertEqual(read(self.s, one, sql), ([("rows of ck_s1",)], HIT))

    def test_settings_separate_keys(self):
        cases = [
            ("SELECT d::text FROM ck_text", "DateStyle", "'ISO, MDY'", "'SQL, DMY'",
             "2024-03-01", "01/03/2024"),
            ("SELECT ts::text FROM ck_text", "TimeZone", "'UTC'", "'Asia/Tokyo'",
             "2024-03-01 12:00:00+00", "2024-03-01 21:00:00+09"),
            ("SELECT f::text FROM ck_text", "extra_float_digits", "0", "1",
             "0.333333333333333", "0.3333333333333333"),
        ]
        for sql, name, first, second, want_first, want_second in cases:
            a, b, control = self.connect(), self.connect(), self.connect()
            a.execute(f"SET {name} = {first}")
            control.execute(f"SET {name} = {first}")
            b.execute(f"SET {name} = {second}")
            self.cached(a, sql, [(want_first,)])
            self.assertEqual(read(self.s, control, sql), ([(want_first,)], HIT), name)
            self.assertEqual(read(self.s, b, sql), ([(want_second,)], MISS), name)
            self.assertEqual(read(self.s, b, sql), ([(want_second,)], HIT), name)
        # A setting from the startup packet (options=-c ...) is part of the key as well.
        tokyo = self.connect(options="'-c TimeZone=Asia/Tokyo'")
        utc = self.connect(options="'-c TimeZone=UTC'")
        sql = "SELECT ts::text, 'startup' FROM ck_text"
        self.cached(utc, sql, [("2024-03-01 12:00:00+00", "startup")])
        self.assertEqual(read(self.s, tokyo, sql)[0], [("2024-03-01 21:00:00+09", "startup")])

    def test_revoke_and_grant_are_not_bypassed_by_the_cache(self):
        other = self.connect(user="other", password="otherpass")
        for table, grant, revoke in (
                ("ck_secret", "GRANT SELECT ON ck_secret TO other",
                 "REVOKE SELECT ON ck_secret FROM other"),
                ("ck_secret2", "GRANT ck_readers TO other", "REVOKE ck_readers FROM other")):
            sql = f"SELECT s FROM {table}"
            self.app.execute(grant)
            rows = [("secret rows",)] if table == "ck_secret" else [("rows of ck_readers",)]
            self.cached(other, sql, rows)  # control: the role's reads are hits
            self.app.execute(revoke)
            self.assertNotIn("hits", self.refused(other, sql), revoke)
            # Still refused once the catalog the REVOKE made stale is back (entries served
            # again): the entry the role read is not under the current versions.
            warm(self, self.s, self.app)
            refused = self.refused(other, sql)
            for _ in range(3):  # the REVOKE's catalog generation may stale it once more
                if refused != {"bypass:no_catalog": 1}:
                    break
                warm(self, self.s, self.app)
                refused = self.refused(other, sql)
            self.assertEqual(refused, {"misses": 1, "fills_skipped": 1},
                             revoke)  # the error is not stored either
            self.app.execute(grant)
            self.cached(other, sql, rows)
            self.app.execute(revoke)
            with self.assertRaises(psycopg.errors.InsufficientPrivilege, msg=revoke):
                other.execute(sql).fetchall()

    def refused(self, conn, sql):
        """What the cache counted for `sql`, refused with permission denied (repeated while
        nothing is counted, as read() does)."""
        for _ in range(5):
            before = snapshot(self.s)
            with self.assertRaises(psycopg.errors.InsufficientPrivilege, msg=sql):
                conn.execute(sql).fetchall()
            counted = changes(before, snapshot(self.s))
            if counted:
                return counted
        return counted

    def test_unlogged_and_temporary_tables_are_never_cached(self):
        c = self.app
        self.cached(c, "SELECT v FROM ck_base WHERE id = 3", [(0,)])  # control: a logged table
        for _ in range(3):
            self.assertEqual(read(self.s, c, "SELECT v FROM ck_unlogged WHERE id = 1"),
                             ([(0,)], {"bypass:temp_or_unlogged": 1}))
        # Nor a view over it.
        self.assertEqual(read(self.s, c, "SELECT v FROM ck_unlogged_view"),
                         ([(0,)], {"bypass:temp_or_unlogged": 1}))
        # A temporary table shadowing a cached permanent one: its rows, never the cached ones.
        sql = "SELECT s FROM ck_shadow"
        self.cached(c, sql, [("permanent",)])  # control: the same text is a hit elsewhere
        t = self.connect()
        t.execute("CREATE TEMPORARY TABLE ck_shadow (s text)")
        t.execute("INSERT INTO ck_shadow VALUES ('temporary')")
        warm(self, self.s, c)  # the catalog the DDL made stale is back: entries are served
        self.cached(c, sql, [("permanent",)])  # (the DDL flushed the database)
        for _ in range(3):
            rows, counted = read(self.s, t, sql)
            self.assertEqual(rows, [("temporary",)])
            self.assertEqual(counted.get("hits", 0), 0, counted)
            self.assertEqual(counted.get("fills", 0), 0, counted)
        self.assertEqual(read(self.s, c, sql), ([("permanent",)], HIT))


class Rules(unittest.TestCase):
    """cache.mode: rules, per-rule TTLs, skip rules (the first that matches decides),
    max_entry_bytes."""

    def test_rules_ttls_skip_and_max_entry_bytes(self):
        rules = [{"name": "short", "tables": ["ck_ttl"], "ttl": "1s"},
                 {"name": "skipped", "tables": ["ck_skip"], "action": "skip"},
                 {"name": "long", "tables": ["ck_probe", "public.ck_base", "ck_skip", "ck_big"]}]
        with Sluice(tweak=cache_tweak(mode="rules", rules=rules, max_entry_bytes=4096)) as s:
            c = connect(s.dsn())
            try:
                warm(self, s, c)
                # Only what a rule caches.
                other = read_value(c, "ck_other")
                for _ in range(3):
                    self.assertEqual(read(s, c, "SELECT v FROM ck_other WHERE id = 1"),
                                     (other, {"bypass:no_rule": 1}))
                base = "SELECT count(*) FROM ck_base"
                self.assertEqual(read(s, c, base), ([(10,)], MISS))
                self.assertEqual(read(s, c, base), ([(10,)], HIT))
                self.assertEqual(rule_count(s, "sluice_cache_hits_total", "long"), 2)  # + probe
                # Skip: the first rule that matches decides, also for a join.
                for sql in ("SELECT v FROM ck_skip",
                            "SELECT count(*) FROM ck_base JOIN ck_skip ON true"):
                    for _ in range(2):
                        self.assertEqual(read(s, c, sql)[1], {"bypass:rule": 1}, sql)
                # max_entry_bytes: an 8000-byte reply is run every time, never stored.
                big = "SELECT s FROM ck_big"
                for _ in range(2):
                    rows, counted = read(s, c, big)
                    self.assertEqual(len(rows[0][0]), 8000)
                    self.assertEqual(counted, {"misses": 1, "fills_skipped": 1})
                small = "SELECT left(s, 3000) FROM ck_big"  # control: under the limit
                self.assertEqual(read(s, c, small)[1], MISS)
                self.assertEqual(read(s, c, small)[1], HIT)
                # Per-rule TTL: ck_ttl's entry expires after 1 s, ck_base's (60 s) does not.
                ttl = "SELECT v FROM ck_ttl"
                self.assertEqual(read(s, c, ttl), ([(1,)], MISS))
                filled = time.time()
                self.assertEqual(read(s, c, ttl), ([(1,)], HIT))
                base_again = "SELECT count(*), 'again' FROM ck_base"
                self.assertEqual(read(s, c, base_again)[1], MISS)
                wait_for(lambda: read(s, c, ttl)[1] == MISS, timeout=10, interval=0.05,
                         what="the 1 s entry to expire")
                lived = time.time() - filled
                print(f"an entry of the 1 s rule lived {lived:.2f} s")
                self.assertGreater(lived, 0.9)
                self.assertLess(lived, 3)
                self.assertEqual(read(s, c, base_again)[1], HIT)
            finally:
                c.close()


def read_value(conn, table):
    return conn.execute(f"/* sluice:nocache */ SELECT v FROM {table} WHERE id = 1").fetchall()


def rule_count(s, name, rule):
    return s.metrics().get(f'{name}{{rule="{rule}"}}', 0)


class Enabled(unittest.TestCase):
    def test_enabled_false_serves_nothing_but_still_bumps(self):
        """cache.enabled: false on B: B neither serves nor stores, but its writes move the
        versions A's entries are keyed by (the README: "writes still bump versions")."""
        superuser_sql("UPDATE ck_en SET v = 0")
        with Sluice(tweak=cache_tweak()) as a, Sluice(tweak=cache_tweak(enabled=False)) as b:
            ca = connect(a.dsn())
            cb = connect(b.dsn())
            try:
                warm(self, a, ca)
                sql = "SELECT v FROM ck_en WHERE id = 1"
                for _ in range(3):
                    self.assertEqual(read(b, cb, sql), ([(0,)], {}))
                # Until B has its catalog: before, a write through B is bumped only once the
                # catalog comes (up to a second or so later), and A may serve the old rows.
                def b_bumps():
                    cb.execute("DELETE FROM ck_en WHERE false")
                    m = b.metrics()
                    return m['sluice_cache_bumps_total{result="ok"}'] > 0 and \
                        m["sluice_cache_unbumped"] == 0
                wait_for(b_bumps, timeout=20, what="B to bump versions")
                # A reads versions from Redis at every lookup (a causal token set), so what it
                # serves depends on Redis alone, not on when B's message reaches it.
                ca.execute("SET sluice.min_lsn = '0/1'")
                self.assertEqual(read(a, ca, sql), ([(0,)], MISS))  # B stored nothing
                self.assertEqual(read(a, ca, sql), ([(0,)], HIT))  # control: A's entry serves
                cb.execute("UPDATE ck_en SET v = 5 WHERE id = 1")
                self.assertEqual(read(a, ca, sql), ([(5,)], MISS), "a write through B")
            finally:
                ca.close()
                cb.close()


class Unbumped(unittest.TestCase):
    """A write whose version bump cannot reach Redis: here Redis refuses the bump script's INCR
    for sluice's user (ACL) while every other command works, so the cache stays up."""

    USER, PASSWORD = "ck_sluice", "ckpass"

    def acl(self, *rules):
        redis_cli("ACL", "SETUSER", self.USER, *rules)

    def test_unbumped_writes_stop_hits_until_the_bump_lands(self):
        superuser_sql("UPDATE ck_ub SET v = 0; UPDATE ck_ub_other SET v = 0")
        self.acl("reset", "on", f">{self.PASSWORD}", "~*", "&*", "+@all")
        self.addCleanup(redis_cli, "ACL", "DELUSER", self.USER)
        url = f"redis://{self.USER}:{self.PASSWORD}@127.0.0.1:{state()['redis_port']}"

        def tweak(c):
            cache_tweak()(c)
            c["cache"]["redis"] = url
        with Sluice(tweak=tweak) as s:
            c = connect(s.dsn())
            try:
                warm(self, s, c)
                ub, other = "SELECT v FROM ck_ub WHERE id = 1", "SELECT v FROM ck_ub_other"
                for sql in (ub, other):
                    read(s, c, sql)
                    self.assertEqual(read(s, c, sql), ([(0,)], HIT))  # control
                try:
                    self.acl("-incr")
                    c.execute("UPDATE ck_ub SET v = 1 WHERE id = 1")  # no client error
                    m = s.metrics()
                    self.assertEqual(m["sluice_cache_unbumped"], 1)
                    self.assertGreaterEqual(m['sluice_cache_bumps_total{result="failed"}'], 1)
                    for _ in range(3):  # the old entry is still in Redis under the old version
                        self.assertEqual(read(s, c, ub), ([(1,)], {"bypass:unbumped": 1}))
                    # Other relations of the database still hit (README: "hits on those
                    # relations").
                    self.assertEqual(read(s, c, other), ([(0,)], HIT))
                    # A write that bumps the whole database (a table with a trigger).
                    c.execute("UPDATE ck_trig_src SET v = v + 1 WHERE id = 1")
                    for _ in range(2):
                        self.assertEqual(read(s, c, other), ([(0,)], {"bypass:unbumped": 1}))
                finally:
                    self.acl("+incr")
                wait_for(lambda: s.metrics()["sluice_cache_unbumped"] == 0, timeout=10,
                         what="the delayed bump to land")
                self.assertEqual(read(s, c, ub), ([(1,)], MISS))
                self.assertEqual(read(s, c, ub), ([(1,)], HIT))
                self.assertEqual(read(s, c, other), ([(0,)], MISS))
                self.assertEqual(read(s, c, other), ([(0,)], HIT))
            finally:
                c.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
