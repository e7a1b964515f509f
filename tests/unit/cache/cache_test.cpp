// The cache's pure parts: statement analysis, search_path and relation resolution, the L1, the
// Redis URL and reply parsing, and which replies may be replayed.
#include "cache/cache.hpp"

#include <algorithm>
#include <catch2/catch.hpp>

#include "cache/analysis.hpp"
#include "cache/l1.hpp"
#include "cache/redis.hpp"
#include "cache/relations.hpp"

using namespace sluice::cache;

namespace {
RelationName rel(std::string schema, std::string name) {
  return {std::move(schema), std::move(name)};
}
}  // namespace

TEST_CASE("a single SELECT is cacheable; what it reads and calls is listed") {
  auto f = cache_facts(
      "WITH recent AS (SELECT * FROM app.orders WHERE ts > $1) SELECT c.name, count(*) FROM "
      "recent r JOIN customers c ON c.id = r.customer_id WHERE c.id IN (SELECT id FROM vip) "
      "GROUP BY 1");
  CHECK(f.parsed);
  CHECK(f.select);
  CHECK(f.writes.empty());
  CHECK_FALSE(f.writes_unknown);
  std::vector<std::string> names;
  for (const auto& r : f.reads) names.push_back(r.schema + "." + r.name);
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{".customers", ".recent", ".vip", "app.orders"});
  CHECK(f.ctes == std::vector<std::string>{"recent"});
  REQUIRE(f.functions.size() == 1);
  CHECK(f.functions[0].name == "count");
  CHECK(f.fingerprint.size() == 16);
}

TEST_CASE("statements whose result is not a function of the data are not cacheable") {
  for (const char* sql :
       {"SELECT * FROM t FOR UPDATE", "SELECT * FROM t FOR SHARE", "SELECT current_date",
        "SELECT * FROM t WHERE ts < CURRENT_TIMESTAMP", "SELECT * FROM t TABLESAMPLE SYSTEM (1)",
        "SELECT 1; SELECT 2", "SHOW search_path", "INSERT INTO t VALUES (1)",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "SELECT * INTO t2 FROM t",
        "not sql at all"}) {
    INFO(sql);
    CHECK_FALSE(cache_facts(sql).select);
  }
  CHECK(cache_facts("SELECT 1").select);
  CHECK(cache_facts("  /* sluice:nocache */ SELECT * FROM t").nocache_hint);
  CHECK_FALSE(cache_facts("SELECT * FROM t /* sluice:nocache */").nocache_hint);
}

TEST_CASE("RLS policies are cacheable per role only when they depend on the role alone") {
  // As pg_get_expr prints them.
  CHECK(policy_role_only(""));  // no USING / WITH CHECK
  CHECK(policy_role_only("(owner = CURRENT_USER)"));
  CHECK(policy_role_only("((owner)::text = (SESSION_USER)::text)"));
  CHECK(policy_role_only("((owner = CURRENT_ROLE) OR (public_row IS TRUE))"));
  CHECK(policy_role_only("(CASE WHEN (kind = 'a'::text) THEN true ELSE (owner = USER) END)"));
  CHECK(policy_role_only("(owner = ANY (ARRAY['a'::name, CURRENT_USER]))"));
  CHECK(!policy_role_only("(tenant = current_setting('app.tenant'::text, true))"));
  CHECK(!policy_role_only("(tenant = sq_tenant_of(CURRENT_USER))"));
  CHECK(
      !policy_role_only("(tenant IN ( SELECT m.tenant FROM members m WHERE (m.member = "
                        "CURRENT_USER)))"));
  CHECK(!policy_role_only("(EXISTS ( SELECT 1 FROM acl WHERE (acl.id = t.id)))"));
  CHECK(!policy_role_only("(expires_at > now())"));
  CHECK(!policy_role_only("(day = CURRENT_DATE)"));
  CHECK(!policy_role_only("(schema_name = CURRENT_SCHEMA)"));
  CHECK(!policy_role_only("pg_has_role(CURRENT_USER, 'admins'::name, 'member'::text)"));
  CHECK(!policy_role_only("1) FROM t WHERE (true"));  // not an expression alone
  CHECK(!policy_role_only("1); DROP TABLE t; SELECT (1"));
  CHECK(!policy_role_only("not valid sql ("));
}

TEST_CASE("writes name their relations; DDL and the unknown write anything") {
  CHECK(cache_facts("INSERT INTO s.t VALUES (1)").writes == std::vector{rel("s", "t")});
  CHECK(cache_facts("UPDATE t SET a = 1 FROM u WHERE t.id = u.id").writes ==
        std::vector{rel("", "t")});
  CHECK(cache_facts("DELETE FROM t USING u").writes == std::vector{rel("", "t")});
  CHECK(cache_facts("MERGE INTO m USING s ON true WHEN MATCHED THEN DELETE").writes ==
        std::vector{rel("", "m")});
  CHECK(cache_facts("TRUNCATE a, s.b").writes == std::vector{rel("", "a"), rel("s", "b")});
  CHECK(cache_facts("COPY t FROM STDIN").writes == std::vector{rel("", "t")});
  CHECK(cache_facts("COPY t TO STDOUT").writes.empty());
  CHECK(cache_facts("WITH d AS (DELETE FROM x.d RETURNING *) SELECT * FROM d").writes ==
        std::vector{rel("x", "d")});
  CHECK(cache_facts("EXPLAIN ANALYZE UPDATE t SET a = 1").writes == std::vector{rel("", "t")});
  for (const char* sql :
       {"ALTER TABLE t ADD COLUMN c int", "DROP TABLE t", "CREATE INDEX ON t (a)",
        "GRANT SELECT ON t TO r", "DO $$ BEGIN END $$", "CALL p()", "EXECUTE stmt",
        "REFRESH MATERIALIZED VIEW mv", "SELECT * INTO t2 FROM t"}) {
    INFO(sql);
    auto f = cache_facts(sql);
    CHECK(f.writes_unknown);
    CHECK(f.catalog_change);
  }
  for (const char* sql :
       {"ALTER ROLE r SET search_path = x", "CREATE ROLE r", "GRANT a TO b", "DROP ROLE r"}) {
    INFO(sql);
    CHECK(cache_facts(sql).writes_roles);
  }
  for (const char* sql : {"SET search_path = x", "BEGIN", "COMMIT", "SHOW x", "LISTEN c",
                          "DISCARD ALL", "VACUUM t", "SELECT * FROM t"}) {
    INFO(sql);
    auto f = cache_facts(sql);
    CHECK_FALSE(f.writes_unknown);
    CHECK(f.writes.empty());
  }
}

TEST_CASE("search_path values are split as the server does") {
  CHECK(parse_search_path("\"$user\", public", "app") == std::vector<std::string>{"app", "public"});
  CHECK(parse_search_path("$user,Public", "app") == std::vector<std::string>{"app", "public"});
  CHECK(parse_search_path("\"My Schema\" , x", "r") == std::vector<std::string>{"My Schema", "x"});
  CHECK(parse_search_path("", "r").empty());
}

TEST_CASE("relations resolve through the search path, pg_catalog first, and expand") {
  RelationCatalog c;
  c.add({1, "public", "t", 'r'});
  c.add({2, "app", "t", 'r'});
  c.add({3, "pg_catalog", "pg_class", 'r'});
  c.add({4, "public", "v", 'v'});
  c.add({5, "public", "parent", 'p'});
  c.add({6, "public", "part1", 'r'});
  c.add({7, "public", "part2", 'r'});
  Relation shady{8, "public", "now_view", 'v'};
  shady.deterministic = false;
  c.add(shady);
  c.add({9, "public", "child_fk", 'r'});
  c.add_dependency(4, 1);  // v reads t
  c.add_dependency(4, 5);  // ... and parent
  c.add_dependency(5, 6);
  c.add_dependency(5, 7);
  c.add_dependency(4, 999);  // a type or a function: not a relation
  c.add_foreign_key(1, 9);   // child_fk references t
  const std::vector<std::string> path{"app", "public"};
  CHECK(c.resolve(rel("", "t"), path)->oid == 2);
  CHECK(c.resolve(rel("public", "t"), path)->oid == 1);
  CHECK(c.resolve(rel("", "pg_class"), path)->system());
  CHECK(c.resolve(rel("", "nope"), path) == nullptr);
  std::vector<std::uint32_t> out;
  CHECK(c.expand(4, out));
  std::sort(out.begin(), out.end());
  CHECK(out == std::vector<std::uint32_t>{1, 4, 5, 6, 7});
  out.clear();
  CHECK_FALSE(c.expand(8, out));   // a view calling a function that is not immutable
  CHECK_FALSE(c.expand(77, out));  // unknown
  out.clear();
  c.cascades(1, out);
  CHECK(out == std::vector<std::uint32_t>{9});
  c.add_search_path_override("app", "app");
  CHECK(*c.default_search_path("app") == "app");
  CHECK(*c.default_search_path("other") == "\"$user\", public");
  c.set_default_search_path(std::nullopt);
  CHECK_FALSE(c.default_search_path("other"));
}

TEST_CASE("the L1 is an LRU bounded in bytes, with TTLs and drops by relation") {
  using Clock = L1::Clock;
  const auto now = Clock::now();
  const auto later = now + std::chrono::seconds(60);
  L1 l1(1000);
  auto value = [](std::size_t n) { return std::make_shared<const std::string>(n, 'x'); };
  l1.put("a", value(100), {"ns:1", "ns:0"}, later);
  l1.put("b", value(100), {"ns:2", "ns:0"}, later);
  CHECK(l1.get("a", now));
  CHECK(l1.size() == 2);
  CHECK(l1.drop("ns:1") == 1);
  CHECK_FALSE(l1.get("a", now));
  CHECK(l1.get("b", now));
  CHECK_FALSE(l1.get("b", later));  // expired
  l1.put("c", value(300), {"ns:3"}, later);
  l1.put("d", value(300), {"ns:3"}, later);
  l1.put("e", value(300), {"other:3"}, later);  // over 1000 bytes with overhead: c goes
  CHECK_FALSE(l1.get("c", now));
  CHECK(l1.evictions() == 1);
  CHECK(l1.bytes() <= 1000);
  CHECK(l1.drop_prefix("ns:") == 1);
  CHECK(l1.get("e", now));
  l1.put("huge", value(5000), {}, later);  // larger than the whole cache: not kept
  CHECK_FALSE(l1.get("huge", now));
  CHECK(l1.drop_prefix("") == 1);
  CHECK(l1.bytes() == 0);
}

TEST_CASE("redis URLs") {
  std::string why;
  auto e = parse_redis_url("redis://127.0.0.1:6380/2", &why);
  REQUIRE(e);
  CHECK(e->host == "127.0.0.1");
  CHECK(e->port == 6380);
  CHECK(e->db == 2);
  CHECK(e->password.empty());
  e = parse_redis_url("redis://cacheuser:p%40ss@redis.local", &why);
  REQUIRE(e);
  CHECK(e->user == "cacheuser");
  CHECK(e->password == "p@ss");
  CHECK(e->port == 6379);
  CHECK(e->display() == "redis.local:6379/0");  // never the password
  e = parse_redis_url("redis://:secret@[::1]:7000", &why);
  REQUIRE(e);
  CHECK(e->host == "::1");
  CHECK(e->port == 7000);
  CHECK(e->user.empty());
  CHECK(e->password == "secret");
  for (const char* bad : {"http://x", "redis://", "redis://h:0", "redis://h:70000", "redis://h:1/x",
                          "redis://[::1"}) {
    INFO(bad);
    CHECK_FALSE(parse_redis_url(bad, &why));
    CHECK_FALSE(why.empty());
  }
}

TEST_CASE("RESP: commands encode as bulk strings; replies parse from any split") {
  CHECK(encode_command({"GET", "k"}) == "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
  CHECK(encode_command({"SET", ""}) == "*2\r\n$3\r\nSET\r\n$0\r\n\r\n");
  const std::string wire =
      "+OK\r\n:42\r\n$5\r\nhello\r\n$-1\r\n*3\r\n$1\r\na\r\n$-1\r\n:7\r\n-ERR wrong\r\n";
  for (std::size_t step = 1; step <= wire.size(); ++step) {
    ReplyParser p;
    std::vector<RedisReply> got;
    bool broken = false;
    for (std::size_t i = 0; i < wire.size(); i += step) {
      p.feed(std::string_view(wire).substr(i, step));
      while (auto r = p.next(broken)) got.push_back(std::move(*r));
    }
    REQUIRE_FALSE(broken);
    REQUIRE(got.size() == 6);
    CHECK(got[0].type == RedisReply::Type::kStatus);
    CHECK(got[1].integer == 42);
    CHECK(got[2].str == "hello");
    CHECK(got[3].nil());
    REQUIRE(got[4].elements.size() == 3);
    CHECK(got[4].elements[1].nil());
    CHECK(got[4].elements[2].integer == 7);
    CHECK(got[5].error());
    CHECK(got[5].str == "ERR wrong");
  }
  ReplyParser p;
  bool broken = false;
  p.feed("?garbage\r\n");
  CHECK_FALSE(p.next(broken));
  CHECK(broken);
}

TEST_CASE("only whole, error-free result replies are replayed") {
  auto msg = [](char type, std::string body) {
    std::string m(1, type);
    const auto len = static_cast<std::uint32_t>(body.size() + 4);
    for (int shift = 24; shift >= 0; shift -= 8) m.push_back(static_cast<char>(len >> shift));
    return m + body;
  };
  const auto row = msg('T', std::string("\0\0", 2)) + msg('D', std::string("\0\0", 2)) +
                   msg('C', std::string("SELECT 1\0", 9));
  CHECK(replayable_reply(row));
  CHECK(replayable_reply(msg('1', "") + msg('2', "") + row));
  CHECK_FALSE(replayable_reply(row.substr(0, row.size() - 1)));     // cut short
  CHECK_FALSE(replayable_reply(msg('T', std::string("\0\0", 2))));  // no CommandComplete
  CHECK_FALSE(replayable_reply(row + msg('E', "SERROR\0")));
  CHECK_FALSE(replayable_reply(row + msg('N', "SNOTICE\0")));
  CHECK_FALSE(replayable_reply(row + msg('Z', "I")));
  CHECK_FALSE(replayable_reply(""));
}

TEST_CASE("a catalog fetched from before a DDL does not end the staleness the DDL began") {
  sluice::config::Cache cfg;
  cfg.redis = "redis://127.0.0.1:1";
  Cache cache(cfg);
  const auto now = std::chrono::steady_clock::now();
  auto catalog = std::make_shared<DbCatalog>();
  catalog->functions = std::make_shared<sluice::routing::FunctionCatalog>();
  catalog->ns = "1/db";
  CHECK(cache.catalog_wanted("db", now, std::chrono::seconds(60)));
  cache.set_catalog("db", catalog);
  CHECK(cache.catalog("db") == catalog);
  CHECK_FALSE(cache.catalog_wanted("db", now, std::chrono::seconds(60)));
  cache.catalog_changed("db");
  CHECK(cache.catalog("db") == nullptr);  // out of date: nothing cached meanwhile
  CHECK(cache.catalog_wanted("db", now, std::chrono::seconds(60)));
  cache.catalog_changed("db");       // DDL while that fetch runs
  cache.set_catalog("db", catalog);  // ... which lands without it
  CHECK(cache.catalog("db") == nullptr);
  CHECK(cache.catalog_wanted("db", now, std::chrono::seconds(60)));
  cache.set_catalog("db", catalog);
  CHECK(cache.catalog("db") == catalog);
}

TEST_CASE("a catalog is fetched again when the cluster's catalog generation moves") {
  sluice::config::Cache cfg;
  cfg.redis = "redis://127.0.0.1:1";
  Cache cache(cfg);
  const auto now = std::chrono::steady_clock::now();
  const auto refresh = std::chrono::seconds(60);
  auto catalog = std::make_shared<DbCatalog>();
  catalog->functions = std::make_shared<sluice::routing::FunctionCatalog>();
  catalog->ns = "1/db";
  CHECK(cache.catalog_wanted("db", now, refresh));
  cache.set_catalog("db", catalog);
  // Fetched before any generation was read: the first reading is taken as its own (a change
  // during that fetch came as a message).
  cache.note_catalog_generation("db", 4);
  CHECK(cache.catalog("db") == catalog);
  // A change whose message this instance missed: the generation moves.
  cache.note_catalog_generation("db", 5);
  CHECK(cache.catalog("db") == nullptr);
  CHECK(cache.catalog_wanted("db", now, refresh));
  cache.note_catalog_generation("db", 6);  // another change while the fetch runs
  cache.set_catalog("db", catalog);        // ... asked for under 5
  cache.note_catalog_generation("db", 6);
  CHECK(cache.catalog("db") == nullptr);
  CHECK(cache.catalog_wanted("db", now, refresh));
  cache.set_catalog("db", catalog);
  cache.note_catalog_generation("db", 6);
  CHECK(cache.catalog("db") == catalog);
}

TEST_CASE("a trigger on any relation a write reaches flushes the database") {
  sluice::config::Cache cfg;
  cfg.redis = "redis://127.0.0.1:1";
  Cache cache(cfg);
  auto catalog = std::make_shared<DbCatalog>();
  catalog->functions = std::make_shared<sluice::routing::FunctionCatalog>();
  catalog->ns = "1/db";
  auto& r = catalog->relations;
  auto add = [&](std::uint32_t oid, const char* name, char kind, bool triggers) {
    Relation rel{oid, "public", name, kind};
    rel.user_triggers = triggers;
    r.add(rel);
  };
  add(1, "base", 'r', true);  // a view's base table with a trigger
  add(2, "v", 'v', false);
  r.add_dependency(2, 1);
  add(3, "parent", 'p', false);  // a partition with a trigger of its own
  add(4, "part", 'r', true);
  r.add_dependency(3, 4);
  add(5, "referenced", 'r', false);  // a cascade reaching a table with a trigger
  add(6, "referencing", 'r', true);
  r.add_foreign_key(5, 6);
  add(7, "plain", 'r', false);
  add(8, "plain_child", 'r', false);
  r.add_foreign_key(7, 8);
  cache.set_catalog("db", catalog);
  const std::optional<std::string> path;
  for (const char* sql : {"UPDATE v SET a = 1", "INSERT INTO parent VALUES (1)",
                          "DELETE FROM referenced", "UPDATE base SET a = 1"}) {
    INFO(sql);
    Writes w;
    cache.note_writes("db", *cache.facts(sql), "app", path, w);
    CHECK(w.unknown);
  }
  Writes w;  // control: no trigger on the way, the relations themselves
  cache.note_writes("db", *cache.facts("DELETE FROM plain"), "app", path, w);
  CHECK_FALSE(w.unknown);
  std::sort(w.oids.begin(), w.oids.end());
  CHECK(w.oids == std::vector<std::uint32_t>{7, 8});
}

TEST_CASE("a disabled cache still loads catalogs: its writes bump the versions") {
  sluice::config::Cache cfg;
  cfg.redis = "redis://127.0.0.1:1";
  cfg.enabled = false;
  Cache cache(cfg);
  CHECK(cache.catalog_wanted("db", std::chrono::steady_clock::now(), std::chrono::seconds(60)));
}
