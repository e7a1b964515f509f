"""sluice's SQL analysis must see what the server sees (issue 17, items 4 and 5), with real psycopg
clients through sluice with the Redis cache on: a client whose server lexes strings differently
from libpg_query (standard_conforming_strings off, a client-only encoding such as SJIS) is neither
cached nor routed by a misread of its SQL; SQL PREPARE text replayed on another server connection
is one statement for the server too; with cache.rls: by_role, tables whose policies depend on more
than the role (current_setting(), functions, subqueries) are not cached."""
import unittest

import psycopg

from harness import Sluice, direct_dsn, superuser_sql
from test_cache import cache_config, metric
from test_routing import set_apply_delay, wait_replayed, wait_until

ITEMS = 5


def primary_count(table="sq_items"):
    with psycopg.connect(direct_dsn(), autocommit=True) as c:
        return c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def wait_hit(sluice, conn, sql):
    """Until `sql` on `conn` is served from the cache (the catalog is loaded)."""
    def hit():
        before = metric(sluice, "sluice_cache_hits_total")
        conn.execute(sql).fetchall()
        return metric(sluice, "sluice_cache_hits_total") > before
    assert wait_until(hit, 20, step=0.2) is not None, f"the cache never served {sql}"


class NonstandardStrings(unittest.TestCase):
    """Item 4: one sluice with transaction pooling, read routing and the cache."""

    @classmethod
    def setUpClass(cls):
        set_apply_delay("0")
        superuser_sql("DROP TABLE IF EXISTS sq_items; "
                      "CREATE TABLE sq_items (id int PRIMARY KEY, v int NOT NULL); "
                      f"INSERT INTO sq_items SELECT g, 0 FROM generate_series(1, {ITEMS}) g; "
                      "GRANT ALL ON sq_items TO app")
        wait_replayed()
        cls.sluice = Sluice(tweak=cache_config(routing=True)).start()
        # The reader's misses run on the primary: a lagging replica is not what is tested here.
        cls.reader = psycopg.connect(cls.sluice.dsn(), autocommit=True)
        cls.reader.execute("SET sluice.route = 'primary'")
        wait_hit(cls.sluice, cls.reader, "SELECT count(*) FROM sq_items")

    @classmethod
    def tearDownClass(cls):
        cls.reader.close()
        cls.sluice.stop()

    def setUp(self):
        # Through sluice: the cache sees these writes.
        self.reader.execute(f"DELETE FROM sq_items WHERE id > {ITEMS}")
        self.reader.execute(f"INSERT INTO sq_items SELECT g, 0 FROM generate_series(1, {ITEMS}) g "
                            "ON CONFLICT DO NOTHING")
        wait_replayed()

    def cached_count(self):
        return self.reader.execute("SELECT count(*) FROM sq_items").fetchone()[0]

    def test_set_off_then_a_write_disguised_as_a_read_invalidates_the_cache(self):
        """With standard_conforming_strings off, 'x\\'' ends the string for the server: the
        DELETE after it runs. libpg_query (always on) reads one SELECT of a string constant."""
        self.assertEqual(self.cached_count(), ITEMS)
        self.assertEqual(self.cached_count(), ITEMS)  # served from the cache now
        with psycopg.connect(self.sluice.dsn()) as m:  # psycopg's BEGIN: on the primary
            m.execute("SET standard_conforming_strings = off")
            m.execute("SELECT 'x\\''; DELETE FROM sq_items WHERE id = 1; --'")
            m.commit()
        self.assertEqual(primary_count(), ITEMS - 1, "the server ran the DELETE")
        wait_replayed()
        got = self.cached_count()
        print(f"standard_conforming_strings off via SET: the disguised DELETE ran on the primary; "
              f"a cached count(*) then reads {got} (primary: {ITEMS - 1})")
        self.assertEqual(got, ITEMS - 1, "the cache served a count from before the DELETE")

    def test_off_at_startup_routes_a_disguised_write_to_the_primary_and_is_never_cached(self):
        hits = metric(self.sluice, "sluice_cache_hits_total")
        with psycopg.connect(self.sluice.dsn(), options="-c standard_conforming_strings=off",
                             autocommit=True) as m:
            # A replica would refuse the INSERT (read-only transaction) had sluice sent it there.
            m.execute("SELECT 'y\\''; INSERT INTO sq_items VALUES (100, 0); --'")
            self.assertEqual(primary_count(), ITEMS + 1)
            for _ in range(3):  # cacheable for anyone else: never looked up for this client
                self.assertEqual(m.execute("SELECT count(*) FROM sq_items").fetchone()[0],
                                 ITEMS + 1)
        served = metric(self.sluice, "sluice_cache_hits_total") - hits
        pins = metric(self.sluice, "sluice_pins_total", reason="lexer")
        print(f"standard_conforming_strings off via startup options: the disguised INSERT ran on "
              f"the primary; hits for that client's reads {served:.0f}, lexer pins {pins:.0f}")
        self.assertEqual(served, 0)
        self.assertGreaterEqual(pins, 1)
        wait_replayed()
        self.assertEqual(self.cached_count(), ITEMS + 1)

    def test_sjis_client_encoding_hides_nothing(self):
        """In SJIS, 0x95 0x5C is one character (表) whose second byte is a backslash: the server
        converts it and sees E'ﾃ表' end at the quote. Read as UTF-8 by libpg_query, C3 95 (ﾃ and
        the first byte of 表 in SJIS) is one character and 5C a backslash escaping the quote."""
        with psycopg.connect(self.sluice.dsn(), client_encoding="SJIS", autocommit=True) as m:
            m.execute("SELECT E'ﾃ表'; INSERT INTO sq_items VALUES (101, 0); --'")
        self.assertEqual(primary_count(), ITEMS + 1)
        wait_replayed()
        self.assertEqual(self.cached_count(), ITEMS + 1)


class PrepareReplay(unittest.TestCase):
    """Item 4: SQL PREPARE text replayed on another server connection is one statement."""

    def test_prepare_text_is_never_replayed_as_two_statements(self):
        superuser_sql("DROP TABLE IF EXISTS sq_counter; CREATE TABLE sq_counter (n int NOT NULL); "
                      "INSERT INTO sq_counter VALUES (0); GRANT ALL ON sq_counter TO app")

        def tweak(c):
            c["pool"] = {"mode": "transaction", "size": 4}
        with Sluice(tweak=tweak) as s:
            a = psycopg.connect(s.dsn(), autocommit=True)
            b = psycopg.connect(s.dsn(), autocommit=True)
            # One statement for the server now (strings are standard): a SELECT of a string.
            a.execute("PREPARE p AS SELECT 'x\\''; UPDATE sq_counter SET n = n + 1; --'")
            a.execute("SELECT 1")  # the server connection went back to the pool after this
            # Other clients hold server connections in transactions until one holds the one
            # with p: `a` moves to another, where a replay with its standard_conforming_strings
            # off would be a SELECT and an UPDATE. (A pinned `a` keeps its own: none finds p.)
            holders = []
            for _ in range(3):  # pool size 4: one always stays for `a`
                h = psycopg.connect(s.dsn(), autocommit=True)
                holders.append(h)
                h.execute("BEGIN")
                if h.execute("SELECT count(*) FROM pg_prepared_statements "
                             "WHERE name = 'p'").fetchone()[0]:
                    break
            a.execute("SET standard_conforming_strings = off")
            got = a.execute("EXECUTE p").fetchone()[0]
            for h in holders:
                h.execute("COMMIT")
                h.close()
            n = int(superuser_sql("SELECT n FROM sq_counter"))
            print(f"PREPARE text with a backslash, then standard_conforming_strings off: EXECUTE "
                  f"returned {got!r}; hidden UPDATEs run by a replay: {n}")
            self.assertEqual(n, 0, "the replayed PREPARE ran a second statement")
            # Text libpg_query splits in two: only the PREPARE is remembered and replayed; the
            # UPDATE ran once, when the client sent it.
            c = psycopg.connect(s.dsn(), autocommit=True)
            c.execute("PREPARE q AS SELECT 42; UPDATE sq_counter SET n = n + 100")
            b.execute("BEGIN")
            b.execute("SELECT 1")
            c.execute("SET application_name = 'moved'")
            self.assertEqual(c.execute("EXECUTE q").fetchone()[0], 42)
            b.execute("COMMIT")
            self.assertEqual(int(superuser_sql("SELECT n FROM sq_counter")), 100)
            for conn in (a, b, c):
                conn.close()


class RlsByRole(unittest.TestCase):
    """Item 5: with cache.rls: by_role, only policies that depend on the role alone are cached."""

    @classmethod
    def setUpClass(cls):
        superuser_sql(
            "DROP TABLE IF EXISTS sq_tenant_docs, sq_member_docs, sq_fn_docs, sq_owner_docs, "
            "sq_members CASCADE; DROP FUNCTION IF EXISTS sq_tenant_of(name); "
            "CREATE TABLE sq_members (member name, tenant text); "
            "INSERT INTO sq_members VALUES ('app', 'a'); GRANT SELECT, UPDATE ON sq_members TO app; "
            "CREATE FUNCTION sq_tenant_of(r name) RETURNS text LANGUAGE sql STABLE AS "
            "$$ SELECT tenant FROM sq_members WHERE member = r $$; "
            "CREATE TABLE sq_tenant_docs (tenant text, body text); "
            "CREATE POLICY by_setting ON sq_tenant_docs USING "
            "(tenant = current_setting('app.tenant', true)); "
            "CREATE TABLE sq_member_docs (tenant text, body text); "
            "CREATE POLICY by_subquery ON sq_member_docs USING (tenant IN "
            "(SELECT m.tenant FROM sq_members m WHERE m.member = current_user)); "
            "CREATE TABLE sq_fn_docs (tenant text, body text); "
            "CREATE POLICY by_function ON sq_fn_docs USING (tenant = sq_tenant_of(current_user)); "
            "CREATE TABLE sq_owner_docs (owner name, body text); "
            "CREATE POLICY by_role ON sq_owner_docs USING (owner = current_user); "
            "INSERT INTO sq_owner_docs VALUES ('app', 'row of app'), ('other', 'row of other')")
        for t in ("sq_tenant_docs", "sq_member_docs", "sq_fn_docs"):
            superuser_sql(f"INSERT INTO {t} VALUES ('a', 'doc of a'), ('b', 'doc of b'); "
                          f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY; GRANT SELECT ON {t} TO app")
        superuser_sql("ALTER TABLE sq_owner_docs ENABLE ROW LEVEL SECURITY; "
                      "GRANT SELECT ON sq_owner_docs TO app, other")

        def by_role(c):
            c["rls"] = "by_role"
        cls.sluice = Sluice(tweak=cache_config(routing=False, tweak_cache=by_role)).start()
        cls.app = psycopg.connect(cls.sluice.dsn(), autocommit=True)
        wait_hit(cls.sluice, cls.app, "SELECT body FROM sq_owner_docs")

    @classmethod
    def tearDownClass(cls):
        cls.app.close()
        cls.sluice.stop()

    def bypassed(self):
        return metric(self.sluice, "sluice_cache_bypass_total", reason="rls_policy")

    def test_policies_reading_other_tables_are_not_cached(self):
        # Membership moves app from tenant a to b: sluice bumps sq_members, and nothing tells it
        # that the policies of sq_member_docs (subquery) and sq_fn_docs (function) read it.
        app, bypassed = self.app, self.bypassed()
        try:
            for t in ("sq_member_docs", "sq_fn_docs"):
                for _ in range(3):
                    self.assertEqual(app.execute(f"SELECT body FROM {t}").fetchall(),
                                     [("doc of a",)])
            app.execute("UPDATE sq_members SET tenant = 'b' WHERE member = 'app'")
            after = {t: app.execute(f"SELECT body FROM {t}").fetchall()
                     for t in ("sq_member_docs", "sq_fn_docs")}
        finally:
            superuser_sql("UPDATE sq_members SET tenant = 'a'")
        print(f"app moved to tenant b; then reads {after}; bypassed for their policies "
              f"{self.bypassed() - bypassed:.0f}")
        for t, rows in after.items():
            self.assertEqual(rows, [("doc of b",)], f"{t}: revoked rows served from the cache")
        self.assertEqual(self.bypassed() - bypassed, 8)

    def test_current_setting_policy_is_not_cached_current_user_still_is(self):
        s, bypassed = self.sluice, self.bypassed()
        hits = metric(s, "sluice_cache_hits_total")
        with psycopg.connect(s.dsn(), autocommit=True) as a, \
                psycopg.connect(s.dsn(), autocommit=True) as b:
            a.execute("SET app.tenant = 'a'")  # two sessions of one role, each its own tenant
            b.execute("SET app.tenant = 'b'")
            for _ in range(3):
                self.assertEqual(a.execute("SELECT body FROM sq_tenant_docs").fetchall(),
                                 [("doc of a",)])
                self.assertEqual(b.execute("SELECT body FROM sq_tenant_docs").fetchall(),
                                 [("doc of b",)])
        setting_hits = metric(s, "sluice_cache_hits_total") - hits
        hits = metric(s, "sluice_cache_hits_total")
        for _ in range(3):  # current_user alone: still cached per role
            self.assertEqual(self.app.execute("SELECT body FROM sq_owner_docs").fetchall(),
                             [("row of app",)])
        role_hits = metric(s, "sluice_cache_hits_total") - hits
        print(f"cache.rls: by_role: current_setting() policy hits {setting_hits:.0f}, bypassed "
              f"{self.bypassed() - bypassed:.0f}; current_user policy hits {role_hits:.0f}")
        self.assertEqual(setting_hits, 0)
        self.assertEqual(self.bypassed() - bypassed, 6)
        self.assertGreaterEqual(role_hits, 2)  # the last hit may be counted after its reply


if __name__ == "__main__":
    unittest.main()
