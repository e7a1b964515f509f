// Query insights without sockets: requests matched to replies (simple, extended, pipelined,
// errors), fingerprints, per-fingerprint statistics, slow-log throttling, bounded memory.
#include "routing/insights.hpp"

#include <catch2/catch.hpp>

#include "protocol/pg/extended.hpp"

using namespace sluice;
using namespace sluice::routing;
using namespace std::chrono_literals;

namespace {

// One whole message of `b` (which holds exactly one), as the relay hands it over.
struct Message {
  pg::Buffer bytes;
  pg::Frame frame() const { return std::get<pg::Frame>(pg::next_frame(pg::Span(bytes))); }
};

Message query(std::string_view sql) {
  Message m;
  pg::encode_query(m.bytes, sql);
  return m;
}
Message parse(std::string_view name, std::string_view sql) {
  Message m;
  pg::encode_parse(m.bytes, name, sql, {});
  return m;
}
Message bind(std::string_view statement) {
  Message m;
  pg::Bind b{"", "", {}};
  pg::Buffer rest{0, 0, 0, 0, 0, 0};  // no formats, no parameters, no result formats
  b.rest = pg::Span(rest);
  pg::encode_bind_renamed(m.bytes, b, statement);
  return m;
}
Message empty(char type) {
  Message m;
  pg::encode_empty_message(m.bytes, type);
  return m;
}
Message complete(std::string_view tag) {
  Message m;
  pg::encode_command_complete(m.bytes, tag);
  return m;
}
Message ready(char status) {
  Message m;
  pg::encode_ready_for_query(m.bytes, status);
  return m;
}
Message error() {
  Message m;
  pg::encode_error_response(m.bytes, {"ERROR", "22012", "division by zero"});
  return m;
}

const auto t0 = SteadyClock::time_point{} + 1h;

}  // namespace

TEST_CASE("CommandComplete tags give row counts") {
  CHECK(rows_from_tag("SELECT 5") == 5);
  CHECK(rows_from_tag("INSERT 0 3") == 3);
  CHECK(rows_from_tag("UPDATE 12") == 12);
  CHECK(rows_from_tag("DELETE 0") == 0);
  CHECK(rows_from_tag("COPY 7") == 7);
  CHECK(rows_from_tag("CREATE TABLE") == 0);
  CHECK(rows_from_tag("BEGIN") == 0);
  CHECK(rows_from_tag("SELECT x") == 0);
}

TEST_CASE("a simple query: one request, its statements, rows and duration") {
  Insights insights;
  RequestTracker t(&insights);
  t.on_client(query("SELECT 1; SELECT 2").frame(), t0);
  CHECK(t.busy());
  CHECK_FALSE(t.on_server(complete("SELECT 1").frame(), t0 + 1ms));
  CHECK_FALSE(t.on_server(complete("SELECT 1").frame(), t0 + 2ms));
  auto done = t.on_server(ready('I').frame(), t0 + 3ms);
  REQUIRE(done);
  CHECK(done->statements == 2);
  CHECK(done->rows == 2);
  CHECK_FALSE(done->failed);
  CHECK(done->tx_status == 'I');
  CHECK(done->seconds == Approx(0.003));
  REQUIRE(done->entry);
  CHECK(done->entry->normalized == "SELECT $1; SELECT $2");
  CHECK_FALSE(t.busy());
}

TEST_CASE("the same statement with other constants is one fingerprint") {
  Insights insights;
  auto a = insights.resolve("SELECT * FROM t WHERE id = 1");
  auto b = insights.resolve("select *   from t where id = 2");
  auto c = insights.resolve("SELECT * FROM u WHERE id = 1");
  CHECK(a == b);
  CHECK(a != c);
  CHECK(a->id.size() == 16);
  auto junk = insights.resolve("this is not sql");
  CHECK(junk->normalized == "this is not sql");
}

TEST_CASE("extended protocol: a named statement bound again later keeps its fingerprint") {
  Insights insights;
  RequestTracker t(&insights);
  t.on_client(parse("s1", "SELECT abalance FROM pgbench_accounts WHERE aid = $1").frame(), t0);
  t.on_client(empty('S').frame(), t0);
  auto prepared = t.on_server(ready('I').frame(), t0 + 1ms);  // Parse-only: no statement text
  REQUIRE(prepared);
  CHECK_FALSE(prepared->entry);
  CHECK(prepared->statements == 0);
  for (int i = 0; i < 2; ++i) {
    t.on_client(bind("s1").frame(), t0 + 10ms);
    t.on_client(empty('S').frame(), t0 + 10ms);
    t.on_server(complete("SELECT 1").frame(), t0 + 11ms);
    auto done = t.on_server(ready('I').frame(), t0 + 12ms);
    REQUIRE(done);
    REQUIRE(done->entry);
    CHECK(done->entry->normalized == "SELECT abalance FROM pgbench_accounts WHERE aid = $1");
    CHECK(done->statements == 1);
    CHECK(done->seconds == Approx(0.002));
  }
}

TEST_CASE("pipelined requests are matched in order; an error marks its request") {
  Insights insights;
  RequestTracker t(&insights);
  t.on_client(query("SELECT 1").frame(), t0);
  t.on_client(query("SELECT 1/0").frame(), t0 + 1ms);
  t.on_client(query("SELECT 2").frame(), t0 + 2ms);
  t.on_server(complete("SELECT 1").frame(), t0 + 3ms);
  auto first = t.on_server(ready('I').frame(), t0 + 4ms);
  t.on_server(error().frame(), t0 + 5ms);
  auto second = t.on_server(ready('I').frame(), t0 + 6ms);
  t.on_server(complete("SELECT 1").frame(), t0 + 7ms);
  auto third = t.on_server(ready('T').frame(), t0 + 8ms);
  REQUIRE(first);
  REQUIRE(second);
  REQUIRE(third);
  CHECK_FALSE(first->failed);
  CHECK(second->failed);
  CHECK(second->statements == 1);
  CHECK(second->seconds == Approx(0.005));
  CHECK(third->tx_status == 'T');
  CHECK(first->entry == third->entry);                     // SELECT 1 and SELECT 2: one fingerprint
  CHECK_FALSE(t.on_server(ready('I').frame(), t0 + 9ms));  // nothing outstanding
}

TEST_CASE("Close forgets a statement name; trim resets an idle tracker") {
  Insights insights;
  RequestTracker t(&insights);
  t.on_client(parse("s", "SELECT 1").frame(), t0);
  Message close;
  pg::encode_close(close.bytes, {'S', "s"});
  t.on_client(close.frame(), t0);
  t.on_client(bind("s").frame(), t0);
  t.on_client(empty('S').frame(), t0);
  auto done = t.on_server(ready('I').frame(), t0);
  REQUIRE(done);
  CHECK_FALSE(done->entry);
  t.trim();
  CHECK_FALSE(t.busy());
  t.on_client(query("SELECT 3").frame(), t0);
  CHECK(t.busy());
  CHECK(t.on_server(ready('I').frame(), t0));
}

TEST_CASE("statistics per fingerprint; slow calls logged once per interval") {
  Insights insights;
  auto e = insights.resolve("SELECT pg_sleep(0.5)");
  auto now = t0;
  auto s1 = insights.record(*e, 0.5, 1, false, Route::kPrimary, now, 0.3, 60s);
  REQUIRE(s1);
  CHECK(s1->calls_since_last == 1);
  CHECK_FALSE(insights.record(*e, 0.6, 1, false, Route::kPrimary, now + 1s, 0.3, 60s));
  CHECK_FALSE(insights.record(*e, 0.01, 1, false, Route::kPrimary, now + 2s, 0.3, 60s));
  auto s2 = insights.record(*e, 0.7, 1, true, Route::kReplica, now + 61s, 0.3, 60s);
  REQUIRE(s2);
  CHECK(s2->calls_since_last == 2);  // the suppressed one and this one
  auto top = insights.top(10);
  REQUIRE(top.size() == 1);
  CHECK(top[0].calls == 4);
  CHECK(top[0].errors == 1);
  CHECK(top[0].slow_calls == 3);
  CHECK(top[0].by_route[0] == 3);
  CHECK(top[0].by_route[1] == 1);
  CHECK(top[0].total_seconds == Approx(1.81));
  CHECK(top[0].max_seconds == Approx(0.7));
  CHECK(top[0].p99_seconds >= 0.6);
  CHECK(top[0].p99_seconds <= 0.7);
  CHECK_FALSE(insights.record(*e, 5, 1, false, Route::kPrimary, now, 0, 60s));  // log off
}

// Table names of letters only: the fingerprint folds numbered names (t10, t199: partitions).
std::string table_name(int i) {
  std::string name = "t";
  for (; i > 0; i /= 26) name += static_cast<char>('a' + i % 26);
  return name;
}

TEST_CASE("top orders by total time and memory stays bounded") {
  Insights insights(20, 50);
  for (int i = 0; i < 200; ++i) {
    auto e = insights.resolve("SELECT * FROM " + table_name(i));
    insights.record(*e, 0.001 * i, 0, false, Route::kPrimary, t0, 0, 60s);
  }
  CHECK(insights.size() <= 20);
  auto top = insights.top(3);
  REQUIRE(top.size() == 3);
  CHECK(top[0].normalized == "SELECT * FROM " + table_name(199));
  CHECK(top[0].total_seconds > top[1].total_seconds);
  CHECK(top[1].total_seconds > top[2].total_seconds);
}

TEST_CASE("latency buckets: quantiles are bucket upper bounds") {
  LatencyBuckets b;
  CHECK(b.quantile(0.99) == 0);
  for (int i = 0; i < 99; ++i) b.add(0.001);
  b.add(2.0);
  CHECK(b.quantile(0.5) >= 0.001);
  CHECK(b.quantile(0.5) < 0.0014);
  CHECK(b.quantile(0.99) < 0.0014);
  CHECK(b.quantile(1.0) >= 2.0);
  CHECK(b.quantile(1.0) < 2.8);
  b.add(1e9);  // beyond the last bucket: clamped
  CHECK(b.quantile(1.0) == LatencyBuckets::upper_bound(LatencyBuckets::kCount - 1));
}

TEST_CASE("plan facts: sequential scans and indexes from EXPLAIN (VERBOSE, FORMAT JSON)") {
  auto facts = plan_facts(R"([{"Plan": {"Node Type": "Nested Loop", "Plans": [
      {"Node Type": "Seq Scan", "Relation Name": "big", "Schema": "public", "Plan Rows": 10},
      {"Node Type": "Index Scan", "Index Name": "small_pkey", "Relation Name": "small",
       "Schema": "public"},
      {"Node Type": "Seq Scan", "Relation Name": "big", "Schema": "public"}]}}])");
  REQUIRE(facts);
  REQUIRE(facts->seq_scans.size() == 1);
  CHECK(facts->seq_scans[0] == std::pair<std::string, std::string>{"public", "big"});
  CHECK(facts->indexes == std::vector<std::string>{"small_pkey"});
  CHECK_FALSE(plan_facts("not json"));
  CHECK_FALSE(plan_facts("[]"));
  CHECK_FALSE(plan_facts(R"({"Plan": {}})"));
  CHECK(plan_facts(R"([{"Plan": {"Node Type": "Result"}}])")->seq_scans.empty());
}

TEST_CASE("statement shapes: constants masked, everything else as written") {
  CHECK(shape_hash("SELECT * FROM t WHERE id = 1") == shape_hash("SELECT * FROM t WHERE id = 42"));
  CHECK(shape_hash("SELECT 'a', 1.5e3") == shape_hash("SELECT 'it''s', 7"));
  CHECK(shape_hash("SELECT * FROM t10") != shape_hash("SELECT * FROM t11"));  // identifiers
  CHECK(shape_hash("SELECT $1") != shape_hash("SELECT $2"));
  CHECK(shape_hash("SELECT \"a'b\" FROM t WHERE x = 'y'") !=
        shape_hash("SELECT \"a'c\" FROM t WHERE x = 'y'"));
  CHECK(shape_hash("SELECT 1 -- it's\n, a") != shape_hash("SELECT 1 -- it's\n, b"));
  // Backslashes, block comments and dollar quotes: the whole text is the key.
  CHECK(shape_hash("SELECT E'\\'' || a || 'x'") != shape_hash("SELECT E'\\'' || b || 'x'"));
  CHECK(shape_hash("SELECT /* ' */ a, ' */ 1") != shape_hash("SELECT /* ' */ b, ' */ 1"));
  CHECK(shape_hash("SELECT $$'$$ || a || '$$") != shape_hash("SELECT $$'$$ || b || '$$"));
  CHECK(shape_hash("SELECT 1") != shape_hash("SELECT 1 "));  // whitespace counts
  // Same shape, same entry, parsed once.
  Insights insights;
  auto a = insights.resolve("SELECT abalance FROM pgbench_accounts WHERE aid = 17;",
                            sample_identity("db", "u1"));
  auto b = insights.resolve("SELECT abalance FROM pgbench_accounts WHERE aid = 99123;",
                            sample_identity("db", "u2"));
  CHECK(a == b);
  // Samples are kept per identity: a text never runs with another identity's credentials.
  CHECK(insights.sample(*a, sample_identity("db", "u1")) ==
        "SELECT abalance FROM pgbench_accounts WHERE aid = 17;");
  CHECK(insights.sample(*a, sample_identity("db", "u2")) ==
        "SELECT abalance FROM pgbench_accounts WHERE aid = 99123;");
  CHECK_FALSE(insights.sample(*a, sample_identity("db", "u3")));
  // Only a single plain read is ever sampled.
  auto multi = insights.resolve("SELECT 1; INSERT INTO t VALUES (1)", sample_identity("db", "u1"));
  CHECK_FALSE(multi->explain_candidate);
  CHECK_FALSE(insights.sample(*multi, sample_identity("db", "u1")));
}

TEST_CASE("texts shown to people never carry a literal") {
  CHECK(normalized_text("SELECT * FROM t WHERE a = 'secret' AND b = 42") ==
        "SELECT * FROM t WHERE a = $1 AND b = $2");
  // Unparseable: masked by the fallback lexer.
  CHECK(masked_text("SELEC * FROM t WHERE a = 'secret' AND b = 42") ==
        "SELEC * FROM t WHERE a = ? AND b = ?");
  CHECK(normalized_text("SELEC 'secret'") == "SELEC ?");
  CHECK(masked_text("SELEC E'sec\\'ret' x") == "SELEC E?...");
  CHECK(masked_text("SELEC 'unterminated secret") == "SELEC ?...");
  CHECK(masked_text("SELEC $$secret$$") == "SELEC ?...");
  CHECK(masked_text("SELEC /* secret */ 1") == "SELEC ?...");
  CHECK(masked_text("SELEC 1 -- secret\n, 2") == "SELEC ? -- ?\n, ?");
}
