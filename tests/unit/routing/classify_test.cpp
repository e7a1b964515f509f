// Read/write classification with the real parser, and the function catalog's verdicts.
#include "routing/classify.hpp"

#include <catch2/catch.hpp>

using namespace sluice::routing;

namespace {
bool reads(std::string_view sql) {
  auto f = read_facts(sql);
  return f.parsed && f.read;
}
}  // namespace

TEST_CASE("reads: SELECT, VALUES, TABLE, SHOW, EXPLAIN without ANALYZE, read-only CTEs") {
  CHECK(reads("SELECT 1"));
  CHECK(reads("select a, b from t where id = $1 order by a limit 10"));
  CHECK(reads("VALUES (1), (2)"));
  CHECK(reads("TABLE t"));
  CHECK(reads("SHOW search_path"));
  CHECK(reads("EXPLAIN SELECT * FROM t"));
  CHECK(reads("EXPLAIN (ANALYZE false) SELECT 1"));
  CHECK(reads("WITH x AS (SELECT 1) SELECT * FROM x"));
  CHECK(reads("SELECT 1; SELECT 2"));
  CHECK(reads("SELECT 1 UNION SELECT 2"));
  CHECK(reads("SET statement_timeout = 0; SELECT 1"));  // session state is tracked anyway
}

TEST_CASE("writes: DML, locking reads, data-modifying CTEs, SELECT INTO, EXPLAIN ANALYZE") {
  CHECK_FALSE(reads("INSERT INTO t VALUES (1)"));
  CHECK_FALSE(reads("UPDATE t SET a = 1"));
  CHECK_FALSE(reads("DELETE FROM t"));
  CHECK_FALSE(reads("MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE"));
  CHECK_FALSE(reads("SELECT * FROM t FOR UPDATE"));
  CHECK_FALSE(reads("SELECT * FROM t FOR NO KEY UPDATE"));
  CHECK_FALSE(reads("SELECT * FROM t FOR SHARE"));
  CHECK_FALSE(reads("SELECT * FROM t FOR KEY SHARE"));
  CHECK_FALSE(reads("SELECT * FROM (SELECT * FROM t FOR UPDATE) s"));
  CHECK_FALSE(reads("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"));
  CHECK_FALSE(reads("SELECT 1 INTO newtable"));
  CHECK_FALSE(reads("EXPLAIN ANALYZE SELECT 1"));
  CHECK_FALSE(reads("EXPLAIN (ANALYZE) SELECT 1"));
  CHECK_FALSE(reads("EXPLAIN (ANALYZE true, BUFFERS) SELECT 1"));
  CHECK_FALSE(reads("SELECT 1; INSERT INTO t VALUES (1)"));
  CHECK_FALSE(reads("COPY t FROM STDIN"));
  CHECK_FALSE(reads("CREATE TABLE t (a int)"));
  CHECK_FALSE(reads("DO $$BEGIN END$$"));
  CHECK_FALSE(reads("CALL p()"));
  CHECK_FALSE(reads("LISTEN ch"));
  CHECK_FALSE(reads("PREPARE TRANSACTION 'x'"));
  CHECK_FALSE(reads("selec 1"));  // unparseable: the primary
  CHECK_FALSE(reads(""));         // nothing to run
  CHECK_FALSE(read_facts("selec 1").parsed);
}

TEST_CASE("functions called are listed with their schema") {
  auto f = read_facts("SELECT nextval('s'), pg_catalog.now(), lower(x) FROM t WHERE f(a) > 1");
  REQUIRE(f.functions.size() == 4);
  CHECK(f.functions[0] == FunctionRef{"", "nextval", 1});
  CHECK(f.functions[1] == FunctionRef{"pg_catalog", "now", 0});
  auto nested = read_facts("SELECT (SELECT g() FROM t2) FROM t WHERE EXISTS (SELECT h())");
  CHECK(nested.functions.size() == 2);
}

TEST_CASE("transactions: BEGIN READ ONLY, SET TRANSACTION, READ WRITE") {
  auto b = read_facts("BEGIN");
  CHECK(b.begins);
  CHECK_FALSE(b.read_only_tx);
  CHECK(read_facts("BEGIN READ ONLY").read_only_tx);
  CHECK(read_facts("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").read_only_tx);
  CHECK(read_facts("BEGIN; SET TRANSACTION READ ONLY; SELECT 1").read_only_tx);
  CHECK(read_facts("BEGIN READ WRITE").read_write_tx);
  CHECK_FALSE(read_facts("BEGIN READ WRITE").read_only_tx);
  CHECK(reads("COMMIT"));
  CHECK(reads("ROLLBACK"));
}

TEST_CASE("DDL that can change function volatility is flagged") {
  CHECK(read_facts("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'").catalog_change);
  CHECK(read_facts("ALTER FUNCTION f() VOLATILE").catalog_change);
  CHECK(read_facts("DROP FUNCTION f()").catalog_change);
  CHECK(read_facts("CREATE EXTENSION pgcrypto").catalog_change);
  CHECK_FALSE(read_facts("DROP TABLE t").catalog_change);
  CHECK_FALSE(read_facts("CREATE TABLE t (a int)").catalog_change);
}

TEST_CASE("hints and sluice's own statements") {
  CHECK(read_facts("/* sluice:primary */ SELECT 1").hint == Hint::kPrimary);
  CHECK(read_facts("  /* app=x sluice:replica */ INSERT INTO t VALUES (1)").hint == Hint::kReplica);
  CHECK(read_facts("SELECT 1 /* sluice:primary */").hint == Hint::kNone);
  CHECK(leading_hint("/* sluice:primaryx */ SELECT 1") == Hint::kNone);
  CHECK(leading_hint("/* unterminated sluice:primary") == Hint::kNone);
  CHECK(read_facts("SHOW sluice.last_write_lsn").show_last_write_lsn);
  CHECK(read_facts("show SLUICE.LAST_WRITE_LSN;").show_last_write_lsn);
  CHECK_FALSE(read_facts("SHOW sluice.last_write_lsn; SELECT 1").show_last_write_lsn);
  CHECK(is_set_route_primary("SET sluice.route = primary"));
  CHECK(is_set_route_primary("set session sluice.route to PRIMARY;"));
  CHECK(is_set_route_primary("SET sluice.route=primary"));
  CHECK_FALSE(is_set_route_primary("SET sluice.route = replica"));
  CHECK_FALSE(is_set_route_primary("SET sluice.route = primary; SELECT 1"));
}

TEST_CASE("reads whose answer names the server go to the primary, as reads") {
  auto primary = [](std::string_view sql) {
    auto f = read_facts(sql);
    return f.parsed && f.read && f.server_identity;
  };
  CHECK(primary("SELECT pg_backend_pid()"));
  CHECK(primary("SELECT pg_catalog.pg_backend_pid()"));
  CHECK(primary("SELECT 1, pg_backend_pid()"));
  CHECK(primary("select a from t where b = 1 + pg_backend_pid()"));
  CHECK(primary("SELECT (SELECT pg_backend_pid() FROM t LIMIT 1)"));
  CHECK(primary("SELECT pg_postmaster_start_time(), pg_conf_load_time()"));
  CHECK(primary("SELECT pg_current_logfile('stderr')"));
  CHECK(primary("SELECT pg_blocking_pids($1)"));
  CHECK(primary("SELECT pg_safe_snapshot_blocking_pids(123)"));
  CHECK(primary("SELECT * FROM pg_stat_get_activity(NULL)"));
  CHECK(primary("SELECT pg_stat_get_backend_pid(s) FROM pg_stat_get_backend_idset() s"));
  CHECK(primary("SELECT pg_catalog.pg_stat_get_backend_activity(1)"));
  CHECK(primary("SELECT 1; SELECT pg_backend_pid()"));
  // Where-am-I probes, other reads, and functions of the same name in another schema.
  CHECK_FALSE(read_facts("SELECT pg_is_in_recovery()").server_identity);
  CHECK_FALSE(read_facts("SELECT now()").server_identity);
  CHECK_FALSE(read_facts("SELECT inet_server_addr(), inet_server_port()").server_identity);
  CHECK_FALSE(read_facts("SELECT pg_stat_get_numscans(1)").server_identity);
  CHECK_FALSE(read_facts("SELECT app.pg_backend_pid()").server_identity);
  CHECK_FALSE(read_facts("SELECT backend_pid FROM pg_backend_pids").server_identity);
  CHECK(names_server({"", "pg_backend_pid", 0}));
  CHECK(names_server({"pg_catalog", "pg_stat_get_backend_idset", 0}));
  CHECK_FALSE(names_server({"public", "pg_backend_pid", 0}));
  CHECK_FALSE(names_server({"", "pg_is_in_recovery", 0}));
}

TEST_CASE("the catalog: volatile or unknown functions may write, overloads and schemas count") {
  FunctionCatalog c;
  c.add("pg_catalog", "nextval", 'v');
  c.add("pg_catalog", "lower", 'i');
  c.add("pg_catalog", "now", 's');
  c.add("public", "f", 'i');
  c.add("other", "f", 'v');  // an overload elsewhere
  c.add("public", "g", 'i');
  CHECK(c.may_write({"", "nextval"}));
  CHECK_FALSE(c.may_write({"", "lower"}));
  CHECK_FALSE(c.may_write({"pg_catalog", "now"}));
  CHECK(c.may_write({"", "f"}));  // some f is volatile: cannot tell which one resolves
  CHECK_FALSE(c.may_write({"public", "f"}));
  CHECK(c.may_write({"other", "f"}));
  CHECK(c.may_write({"", "created_later"}));
  CHECK(c.may_write({"nosuchschema", "g"}));
  CHECK(c.size() == 6);
}

TEST_CASE("the catalog tells overloads apart by their number of arguments") {
  FunctionCatalog c;
  // generate_series(int, int) is immutable; the timestamptz one takes three and is stable.
  c.add("pg_catalog", "generate_series", 'i', 2);
  c.add("pg_catalog", "generate_series", 'i', 3);
  c.add("pg_catalog", "generate_series", 's', 3);
  c.add("pg_catalog", "count", 'i', 0);
  c.add("pg_catalog", "count", 'i', 1);
  c.add("pg_catalog", "concat", 's', 1, 0, true);  // VARIADIC "any"
  c.add("public", "d", 'i', 2, 1);                 // d(a, b DEFAULT ...)
  c.add("public", "mine", 'v', 0);
  CHECK(c.immutable({"", "generate_series", 2}));
  CHECK_FALSE(c.immutable({"", "generate_series", 3}));
  CHECK_FALSE(c.immutable({"", "generate_series", -1}));  // any overload: one is stable
  CHECK(c.immutable({"", "count", 0}));
  CHECK_FALSE(c.immutable({"", "count", 4}));  // no such overload: unknown
  CHECK_FALSE(c.immutable({"", "concat", 5}));
  CHECK(c.immutable({"public", "d", 1}));
  CHECK(c.immutable({"public", "d", 2}));
  CHECK_FALSE(c.immutable({"public", "d", 3}));
  CHECK(c.builtin({"", "count", 0}));
  CHECK_FALSE(c.builtin({"", "mine", 0}));
  CHECK(c.may_write({"", "mine", 0}));
  CHECK(c.may_write({"", "mine", 2}));  // unknown overload
  auto f = read_facts("SELECT count(*), generate_series(1, 3), concat(VARIADIC ARRAY['a'])");
  REQUIRE(f.functions.size() == 3);
  CHECK(f.functions[0].args == 0);
  CHECK(f.functions[1].args == 2);
  CHECK(f.functions[2].args == -1);
}

TEST_CASE("classifications are cached by statement shape: once per shape, not per value") {
  ReadFactsCache cache(2);
  auto a = cache.get("SELECT v FROM t WHERE id = 1");
  auto b = cache.get("SELECT v FROM t WHERE id = 42");  // same shape
  CHECK(a == b);
  CHECK(cache.hits() == 1);
  CHECK(cache.size() == 1);
  // EXPLAIN options are literals that decide whether the statement runs: kept whole.
  CHECK(cache.get("EXPLAIN (ANALYZE 0) SELECT 1")->read);
  CHECK_FALSE(cache.get("EXPLAIN (ANALYZE 1) SELECT 1")->read);
  CHECK(cache.size() == 2);  // bounded: the first shape went
  CHECK(cache.get("SELECT v FROM t WHERE id = 7") != a);
  // Hints live in comments, which keep a text whole.
  CHECK(cache.get("/* sluice:primary */ SELECT 1")->hint == Hint::kPrimary);
  CHECK(cache.get("/* sluice:replica */ SELECT 1")->hint == Hint::kReplica);
  CHECK(read_facts_key("SELECT 'a', 1") == read_facts_key("SELECT 'b', 2"));
  CHECK(read_facts_key("SELECT nextval('s')") == read_facts_key("SELECT nextval('t')"));
  CHECK(read_facts_key("SELECT f(1)") != read_facts_key("SELECT g(1)"));
}

TEST_CASE("explainable: one plain read calling only immutable or stable functions") {
  FunctionCatalog catalog;
  catalog.add("pg_catalog", "lower", 'i', 1);
  catalog.add("public", "slow_stable", 's', 1);
  catalog.add("pg_catalog", "pg_sleep", 'v', 1);
  catalog.add("pg_catalog", "random", 'v', 0);
  auto ok = [&](std::string_view sql) { return explainable(read_facts(sql), catalog); };
  CHECK(ok("SELECT a FROM t WHERE id = 1"));
  CHECK(ok("SELECT lower(a), slow_stable(0.3) FROM t"));
  CHECK(ok("VALUES (1)"));
  CHECK(ok("WITH r AS (SELECT 1) SELECT * FROM r"));
  // More than one statement: PQexec would run the rest.
  CHECK_FALSE(ok("SELECT pg_sleep(0.5); INSERT INTO t VALUES (1)"));
  CHECK_FALSE(ok("SELECT 1; SELECT 2"));
  // Writes, locks, INTO, data-modifying CTEs.
  CHECK_FALSE(ok("WITH w AS (INSERT INTO t VALUES (1) RETURNING 1) SELECT * FROM w"));
  CHECK_FALSE(ok("SELECT * FROM t FOR UPDATE"));
  CHECK_FALSE(ok("SELECT * INTO t2 FROM t"));
  CHECK_FALSE(ok("INSERT INTO t VALUES (1)"));
  // Volatile or unknown functions.
  CHECK_FALSE(ok("SELECT pg_sleep(0.5)"));
  CHECK_FALSE(ok("SELECT random()"));
  CHECK_FALSE(ok("SELECT not_in_the_catalog(1)"));
  // Not a SELECT at all, or unparseable.
  CHECK_FALSE(ok("SHOW search_path"));
  CHECK_FALSE(ok("EXPLAIN SELECT 1"));
  CHECK_FALSE(ok("SET search_path = x"));
  CHECK_FALSE(ok("SELEC 1"));
  CHECK_FALSE(ok(""));
}
