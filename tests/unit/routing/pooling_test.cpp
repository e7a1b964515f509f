// Transaction pooling's bookkeeping, without sockets: what the server is sent for each client
// message, which server replies the client sees, and how settings follow the client.
#include "routing/pooling.hpp"

#include <catch2/catch.hpp>

#include "protocol/pg/sql.hpp"

using namespace sluice;
using namespace sluice::routing;
using Verdict = PooledSession::Verdict;
using namespace std::string_literals;

namespace {

struct Msg {
  char type;
  pg::Buffer body;
};

std::vector<Msg> frames(const pg::Buffer& b) {
  std::vector<Msg> out;
  pg::Span rest(b);
  while (!rest.empty()) {
    auto r = pg::next_frame(rest);
    REQUIRE(std::holds_alternative<pg::Frame>(r));
    auto f = std::get<pg::Frame>(r);
    out.push_back({f.type, pg::Buffer(f.body.begin(), f.body.end())});
    rest = rest.subspan(f.size);
  }
  return out;
}

// One client message through the session; returns what the server was sent.
std::vector<Msg> send(PooledSession& s, ServerState& server, const pg::Buffer& msg,
                      PooledSession::ClientOutcome* outcome = nullptr) {
  auto r = pg::next_frame(msg);
  REQUIRE(std::holds_alternative<pg::Frame>(r));
  pg::Buffer out;
  auto o = s.on_client(std::get<pg::Frame>(r), server, out);
  if (outcome) *outcome = o;
  return frames(out);
}

Verdict reply(PooledSession& s, ServerState& server, const pg::Buffer& msg) {
  auto r = pg::next_frame(msg);
  REQUIRE(std::holds_alternative<pg::Frame>(r));
  return s.on_server(std::get<pg::Frame>(r), server);
}

pg::Buffer parse(std::string_view name, std::string_view query) {
  pg::Buffer b;
  pg::encode_parse(b, name, query, {23});
  return b;
}
pg::Buffer bind(std::string_view statement) {
  pg::Buffer b = {'B'};
  pg::Buffer body = {0};  // unnamed portal
  body.insert(body.end(), statement.begin(), statement.end());
  body.push_back(0);
  body.insert(body.end(), {0, 0, 0, 0, 0, 0});  // no formats, no parameters, no result formats
  std::uint32_t len = static_cast<std::uint32_t>(body.size() + 4);
  b.insert(b.end(), {static_cast<std::uint8_t>(len >> 24), static_cast<std::uint8_t>(len >> 16),
                     static_cast<std::uint8_t>(len >> 8), static_cast<std::uint8_t>(len)});
  b.insert(b.end(), body.begin(), body.end());
  return b;
}
pg::Buffer empty(char type) {
  pg::Buffer b;
  pg::encode_empty_message(b, type);
  return b;
}
pg::Buffer query(std::string_view sql) {
  pg::Buffer b;
  pg::encode_query(b, sql);
  return b;
}
pg::Buffer rfq(char status) {
  pg::Buffer b;
  pg::encode_ready_for_query(b, status);
  return b;
}
pg::Buffer error() {
  pg::Buffer b;
  pg::encode_error_response(b, {"ERROR", "42P01", "relation does not exist"});
  return b;
}
std::string_view name_in(const Msg& m) {  // Parse's name, or Bind's statement
  std::string_view s(reinterpret_cast<const char*>(m.body.data()), m.body.size());
  if (m.type == 'B') s = s.substr(s.find('\0') + 1);
  if (m.type == 'D' || m.type == 'C') s = s.substr(1);
  return s.substr(0, s.find('\0'));
}

}  // namespace

TEST_CASE("statement names are stable and depend on text and types") {
  auto a = make_statement("SELECT $1", {23});
  CHECK(a->server_name == make_statement("SELECT $1", {23})->server_name);
  CHECK(a->server_name != make_statement("SELECT $1", {25})->server_name);
  CHECK(a->server_name != make_statement("SELECT $2", {23})->server_name);
  CHECK(a->server_name.starts_with("sluice_"));
  CHECK(a->server_name.size() == 7 + 16);
}

TEST_CASE("a named statement follows its client onto another server connection") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState first;
  auto sent = send(s, first, parse("q1", "SELECT * FROM t WHERE id = $1"));
  REQUIRE(sent.size() == 1);
  CHECK(sent[0].type == 'P');
  auto server_name = std::string(name_in(sent[0]));
  CHECK(server_name.starts_with("sluice_"));
  sent = send(s, first, bind("q1"));
  REQUIRE(sent.size() == 1);
  CHECK(name_in(sent[0]) == server_name);
  send(s, first, empty('S'));
  CHECK(!s.idle());
  CHECK(reply(s, first, empty('1')) == Verdict::kForward);
  CHECK(reply(s, first, empty('2')) == Verdict::kForward);
  CHECK(reply(s, first, rfq('I')) == Verdict::kForward);
  CHECK(s.idle());

  // Next transaction, another server connection that never saw q1.
  ServerState second;
  sent = send(s, second, bind("q1"));
  REQUIRE(sent.size() == 2);
  CHECK(sent[0].type == 'P');
  CHECK(name_in(sent[0]) == server_name);
  CHECK(sent[1].type == 'B');
  CHECK(name_in(sent[1]) == server_name);
  send(s, second, empty('S'));
  CHECK(reply(s, second, empty('1')) == Verdict::kDrop);  // sluice's own Parse
  CHECK(reply(s, second, empty('2')) == Verdict::kForward);
  CHECK(reply(s, second, rfq('I')) == Verdict::kForward);

  // Describe of the statement on a third connection replays the Parse first too.
  ServerState third;
  pg::Buffer describe;
  pg::encode_describe(describe, {'S', "q1"});
  sent = send(s, third, describe);
  REQUIRE(sent.size() == 2);
  CHECK(sent[0].type == 'P');
  CHECK(sent[1].type == 'D');
  CHECK(name_in(sent[1]) == server_name);

  // And the same connection again: nothing to replay.
  sent = send(s, second, bind("q1"));
  CHECK(sent.size() == 1);
}

TEST_CASE("a statement another client prepared is parsed again for this client's ParseComplete") {
  AnalysisCache cache;
  PooledSession a(cache, {}, {});
  PooledSession b(cache, {}, {});
  ServerState server;
  send(a, server, parse("x", "SELECT $1"));
  auto sent = send(b, server, parse("y", "SELECT $1"));
  REQUIRE(sent.size() == 2);
  // sluice parses it under a scratch name, closed right after: the server's copy stays as is.
  CHECK(sent[0].type == 'P');
  CHECK(name_in(sent[0]) == kProbeStatement);
  CHECK(sent[1].type == 'C');
  CHECK(name_in(sent[1]) == kProbeStatement);
  CHECK(reply(b, server, empty('1')) == Verdict::kForward);
  CHECK(reply(b, server, empty('3')) == Verdict::kDrop);
  CHECK(server.statement_count() == 1);
  sent = send(b, server, bind("y"));  // the server's copy serves it: no Parse
  REQUIRE(sent.size() == 1);
  CHECK(name_in(sent[0]) == name_in(send(a, server, bind("x"))[0]));
}

TEST_CASE("Close forgets the client's name and still answers CloseComplete in order") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, parse("q", "SELECT 1"));
  pg::Buffer close;
  pg::encode_close(close, {'S', "q"});
  auto sent = send(s, server, close);
  REQUIRE(sent.size() == 1);
  CHECK(name_in(sent[0]) == kNoSuchStatement);
  CHECK(s.statement_count() == 0);
  sent = send(s, server, bind("q"));  // unknown now: the server itself reports 26000
  REQUIRE(sent.size() == 1);
  CHECK(name_in(sent[0]) == "q");
}

TEST_CASE("an error skips the replies up to Sync and undoes a failed Parse") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, parse("bad", "SELECT * FROM missing"));
  send(s, server, bind("bad"));
  send(s, server, empty('S'));
  CHECK(server.statement_count() == 1);
  CHECK(reply(s, server, error()) == Verdict::kForward);
  CHECK(server.statement_count() == 0);
  CHECK(s.statement_count() == 0);  // Postgres did not create it either
  CHECK(reply(s, server, rfq('I')) == Verdict::kForward);
  CHECK(s.idle());
}

TEST_CASE("a replayed Parse that fails is shown to the client") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState one;
  send(s, one, parse("q", "SELECT * FROM t"));
  send(s, one, empty('S'));
  reply(s, one, empty('1'));
  reply(s, one, rfq('I'));
  ServerState two;
  send(s, two, bind("q"));
  send(s, two, empty('S'));
  CHECK(reply(s, two, error()) == Verdict::kForward);
  CHECK(two.statement_count() == 0);
  CHECK(reply(s, two, rfq('I')) == Verdict::kForward);
}

TEST_CASE("the per-server statement cache is bounded and evicts the least recently used") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server(2);
  send(s, server, parse("a", "SELECT 1"));
  send(s, server, parse("b", "SELECT 2"));
  send(s, server, bind("a"));  // a is now the most recently used
  auto sent = send(s, server, parse("c", "SELECT 3"));
  REQUIRE(sent.size() == 2);
  CHECK(sent[0].type == 'C');
  CHECK(name_in(sent[0]) == make_statement("SELECT 2", {23})->server_name);
  CHECK(server.statement_count() == 2);
  sent = send(s, server, bind("b"));  // evicted: prepared again, evicting a
  REQUIRE(sent.size() == 3);
  CHECK(sent[0].type == 'C');
  CHECK(sent[1].type == 'P');
  CHECK(sent[2].type == 'B');
}

TEST_CASE("redefining a name is refused by the server, as without sluice") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, parse("q", "SELECT 1"));
  auto sent = send(s, server, parse("q", "SELECT 2"));
  REQUIRE(sent.size() == 1);
  CHECK(name_in(sent[0]) == make_statement("SELECT 1", {23})->server_name);  // 42P05 there
}

TEST_CASE("settings are captured, synced with a diff, and reset when another client set them") {
  using Params = std::vector<std::optional<std::string>>;
  AnalysisCache cache;
  PooledSession s(cache, {{"application_name", "app"}}, {});
  ServerState server;
  auto sync = settings_sync(s.settings(), server.settings);
  REQUIRE(sync.size() == 1);
  CHECK(sync[0].sql == "SELECT pg_catalog.set_config($1, $2, false)");
  CHECK(sync[0].params == Params{"application_name", "app"});
  s.attached(server);
  CHECK(settings_sync(s.settings(), server.settings).empty());

  send(s, server, query("SET search_path TO myschema, public"));
  CHECK(s.touched() == std::set<std::string>{"search_path"});
  CHECK(s.capture_names() == s.touched());
  auto capture = settings_capture(s.touched());
  REQUIRE(capture.size() == 1);
  CHECK(capture[0].sql.find("ARRAY[$1]::text[]") != std::string::npos);
  CHECK(capture[0].params == Params{"search_path"});
  s.apply_capture({{std::string("search_path"), std::string("myschema, public")}}, server);
  CHECK(s.touched().empty());
  CHECK(s.settings().at("search_path") == "myschema, public");

  ServerState other;
  other.settings = {{"timezone", "Asia/Tokyo"}};
  sync = settings_sync(s.settings(), other.settings);
  REQUIRE(sync.size() == 1);
  CHECK(sync[0].params == Params{"timezone", std::nullopt, "application_name", "app", "search_path",
                                 "myschema, public"});

  send(s, server, query("SELECT set_config('statement_timeout', '5s', false)"));
  CHECK(s.touched().contains("statement_timeout"));
  send(s, server, query("SET LOCAL work_mem = '1MB'"));
  CHECK(!s.touched().contains("work_mem"));  // ends with the transaction anyway
  s.apply_capture({{std::string("statement_timeout"), std::nullopt}}, server);
  CHECK(!s.settings().contains("statement_timeout"));
}

TEST_CASE("setting values never enter SQL text; client_encoding is synced first, alone") {
  using Params = std::vector<std::optional<std::string>>;
  // U+8868 in Shift JIS is 0x95 0x5C: its second byte is a backslash. Quoted into the SQL text
  // byte by byte, E'...' would end early on the server, which decodes the character whole.
  const std::string value = "\x95\x5c', false); CREATE TABLE injected (); --";
  Settings want{{"client_encoding", "SJIS"}, {"app.v", value}, {"a.first", "1"}};
  auto sync = settings_sync(want, {{"zz.old", "x"}});
  REQUIRE(sync.size() == 2);
  CHECK(sync[0].params == Params{"client_encoding", "SJIS"});
  CHECK(sync[1].params == Params{"zz.old", std::nullopt, "a.first", "1", "app.v", value});
  for (const auto& q : sync) {
    CHECK(q.sql.find("injected") == std::string::npos);
    CHECK(q.sql.find('\'') == std::string::npos);
  }
  // Without an encoding change everything is one statement.
  CHECK(settings_sync(want, {{"client_encoding", "SJIS"}}).size() == 1);
  // Large sets are split below Bind's 65535-parameter limit.
  Settings many;
  for (int i = 0; i < 2500; ++i) many["x.s" + std::to_string(i)] = "v";
  auto big = settings_sync(many, {});
  REQUIRE(big.size() == 3);
  CHECK(big[0].params.size() == 2000);
  CHECK(settings_capture({"a", "b"}).at(0).params == Params{"a", "b"});

  // Changing client_encoding reads every setting back (the server shows them in the new one).
  AnalysisCache cache;
  PooledSession s(cache, {{"app.v", "x"}}, {});
  ServerState server;
  send(s, server, query("SET client_encoding = 'LATIN1'"));  // SJIS would pin (lexer)
  CHECK(s.capture_names() == std::set<std::string>{"app.v", "client_encoding"});
}

TEST_CASE("the cheap check lets ordinary statements skip the parser") {
  CHECK(!may_affect_session("SELECT abalance FROM pgbench_accounts WHERE aid = 42"));
  CHECK(!may_affect_session("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1"));
  CHECK(!may_affect_session("INSERT INTO t VALUES (1); SELECT 2"));
  CHECK(may_affect_session("  set search_path = x"));
  CHECK(may_affect_session("SELECT 1; RESET ALL"));
  CHECK(may_affect_session("SELECT pg_catalog.set_config('a', 'b', false)"));
  CHECK(may_affect_session("SELECT pg_advisory_lock(1)"));
  CHECK(may_affect_session("SELECT PG_ADVISORY_UNLOCK_ALL()"));
  CHECK(may_affect_session("create Temp table x (a int)"));
  CHECK(may_affect_session("SELECT 1 FROM t -- exec ... EXECUTE"));
  CHECK(!may_affect_session("SELECT 1 FROM t -- exec ... EXECUT"));
  CHECK(may_affect_session("CREATE TEMP TABLE x (a int)"));
  CHECK(may_affect_session("/* hi */ SET x = 1"));
  CHECK(may_affect_session("EXPLAIN EXECUTE q(1)"));
  CHECK(may_affect_session("LISTEN ch"));
  CHECK(may_affect_session("DECLARE c CURSOR WITH HOLD FOR SELECT 1"));
}

TEST_CASE("SQL-level PREPARE is replayed before EXECUTE on another server") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState one;
  send(s, one, query("PREPARE p(int) AS SELECT $1 + 1"));
  CHECK(s.uncertain().contains("p"));
  reply(s, one, rfq('I'));
  s.apply_present({"p"}, one);
  CHECK(s.uncertain().empty());

  ServerState two;
  auto sent = send(s, two, query("EXECUTE p(41)"));
  REQUIRE(sent.size() == 2);
  CHECK(sent[0].type == 'Q');
  CHECK(std::string_view(reinterpret_cast<const char*>(sent[0].body.data())) ==
        "PREPARE p(int) AS SELECT $1 + 1");
  CHECK(s.swallowing());
  pg::Buffer cc = {'C', 0, 0, 0, 12, 'P', 'R', 'E', 'P', 'A', 'R', 'E', 0};
  CHECK(reply(s, two, cc) == Verdict::kDrop);
  CHECK(reply(s, two, rfq('I')) == Verdict::kDrop);
  CHECK(!s.swallowing());
  CHECK(reply(s, two, rfq('I')) == Verdict::kForward);
  CHECK(two.sql_prepared.at("p") == "PREPARE p(int) AS SELECT $1 + 1");

  // Another client's EXECUTE p on that server must fail as if p did not exist.
  PooledSession other(cache, {}, {});
  sent = send(other, two, query("EXECUTE p(1)"));
  REQUIRE(sent.size() == 2);
  CHECK(std::string_view(reinterpret_cast<const char*>(sent[0].body.data())) == "DEALLOCATE \"p\"");

  // DEALLOCATE ALL forgets both kinds on the server and in the client.
  send(s, two, parse("named", "SELECT 1"));
  send(s, two, query("DEALLOCATE ALL"));
  CHECK(s.statement_count() == 0);
  CHECK(two.statement_count() == 0);
  CHECK(two.sql_prepared.empty());
}

TEST_CASE("features that cannot be pooled pin, or are refused in order with pinning: error") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  PooledSession::ClientOutcome o;
  send(s, server, query("LISTEN jobs"), &o);
  REQUIRE(o.pin);
  CHECK(*o.pin == Pin::kListen);
  send(s, server, query("SELECT pg_advisory_xact_lock(1)"), &o);
  CHECK(!o.pin);

  PooledSession strict(cache, {}, {true, nullptr, {}});
  auto sent = send(strict, server, query("SELECT pg_advisory_lock(7)"), &o);
  REQUIRE(o.pin);
  REQUIRE(sent.size() == 1);
  auto sql = std::string_view(reinterpret_cast<const char*>(sent[0].body.data()));
  CHECK(sql.starts_with("DO $sluice$"));
  CHECK(sql.find("'0A000'") != std::string_view::npos);
}

TEST_CASE("SQL PREPARE text with a backslash pins instead of being remembered for replay") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState one;
  PooledSession::ClientOutcome o;
  send(s, one, query("PREPARE p AS SELECT 'x\\''; UPDATE t SET n = n + 1; --'"), &o);
  REQUIRE(o.pin);
  CHECK(*o.pin == Pin::kPrepareText);
  reply(s, one, rfq('I'));
  // Had it been remembered, another server would get it again (with that server's lexer).
  ServerState two;
  auto sent = send(s, two, query("EXECUTE p"));
  REQUIRE(sent.size() == 1);
  CHECK(std::string_view(reinterpret_cast<const char*>(sent[0].body.data())) == "EXECUTE p");
}

TEST_CASE("replies that match nothing sent are a desync, never forwarded") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  CHECK(reply(s, server, empty('1')) == Verdict::kDesync);
  CHECK(reply(s, server, rfq('I')) == Verdict::kDesync);
  send(s, server, parse("", "SELECT 1"));
  send(s, server, empty('S'));
  CHECK(reply(s, server, rfq('I')) == Verdict::kDesync);  // ParseComplete missing
}

TEST_CASE("a transaction keeps the server; unsynced extended messages keep it too") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, query("BEGIN"));
  reply(s, server, rfq('T'));
  CHECK(!s.idle());
  send(s, server, query("COMMIT"));
  CHECK(s.pending() == 1);
  reply(s, server, rfq('I'));
  CHECK(s.idle());
  send(s, server, parse("", "SELECT 1"));
  reply(s, server, empty('1'));
  CHECK(!s.idle());  // no Sync yet: the unnamed statement lives on this server
  s.on_client_passed('H');
  send(s, server, empty('S'));
  reply(s, server, rfq('I'));
  CHECK(s.idle());
  s.on_client_passed('H');  // a Flush alone leaves nothing on the server
  CHECK(s.idle());
  s.on_client_passed('E');
  CHECK(!s.idle());
}

TEST_CASE("SQL DEALLOCATE of a protocol-level statement succeeds, as in Postgres") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, parse("proto", "SELECT 1"));
  auto sent = send(s, server, query("DEALLOCATE proto"));
  REQUIRE(sent.size() == 2);
  CHECK(std::string_view(reinterpret_cast<const char*>(sent[0].body.data())) ==
        "PREPARE \"proto\" AS SELECT NULL");
  CHECK(s.statement_count() == 0);
}

TEST_CASE("messages that arrive after an extended-query error are skipped like the server does") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, parse("", "SELECT 1/0"));
  CHECK(reply(s, server, error()) == Verdict::kForward);  // before the rest arrived
  // The server discards these until Sync: no reply is expected and none of them take effect.
  send(s, server, parse("late", "SELECT 1"));
  send(s, server, bind("late"));
  CHECK(s.statement_count() == 0);
  CHECK(server.statement_count() == 0);
  send(s, server, empty('S'));
  CHECK(reply(s, server, rfq('I')) == Verdict::kForward);  // not a desync
  CHECK(s.idle());
  // After the Sync, messages count again.
  send(s, server, parse("late", "SELECT 1"));
  CHECK(reply(s, server, empty('1')) == Verdict::kForward);
  CHECK(s.statement_count() == 1);
}

TEST_CASE("a Close the server skipped leaves the statement in place") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, parse("keep", "SELECT 1"));
  send(s, server, empty('S'));
  CHECK(reply(s, server, empty('1')) == Verdict::kForward);
  CHECK(reply(s, server, rfq('I')) == Verdict::kForward);
  send(s, server, bind(""));  // fails
  pg::Buffer close;
  pg::encode_close(close, {'S', "keep"});
  send(s, server, close);
  send(s, server, parse("keep", "SELECT 2"));  // skipped too: no redefinition error
  send(s, server, empty('S'));
  CHECK(reply(s, server, error()) == Verdict::kForward);
  CHECK(reply(s, server, rfq('I')) == Verdict::kForward);
  REQUIRE(s.statement("keep"));
  CHECK(s.statement("keep")->query == "SELECT 1");
  CHECK(server.statement_count() == 1);
}

TEST_CASE("a re-parse of a shared statement that the server skipped keeps the server's copy") {
  AnalysisCache cache;
  PooledSession a(cache, {}, {});
  PooledSession b(cache, {}, {});
  ServerState server;
  send(a, server, parse("x", "SELECT 1"));
  send(a, server, empty('S'));
  CHECK(reply(a, server, empty('1')) == Verdict::kForward);
  CHECK(reply(a, server, rfq('I')) == Verdict::kForward);
  // Another client prepares the same text: sluice parses it under a scratch name and closes
  // that, but an error before them makes the server skip both.
  send(b, server, bind(""));
  auto sent = send(b, server, parse("y", "SELECT 1"));
  CHECK(sent.size() == 2);  // Parse + Close of the scratch name
  send(b, server, empty('S'));
  CHECK(reply(b, server, error()) == Verdict::kForward);
  CHECK(reply(b, server, rfq('I')) == Verdict::kForward);
  CHECK(server.statement_count() == 1);  // still there: the next Bind needs no Parse
  sent = send(a, server, bind("x"));
  CHECK(sent.size() == 1);
}

TEST_CASE("a statement whose Parse may be skipped is parsed again after the Sync that follows") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, parse("q", "SELECT 1"));  // stands for any message that fails first
  send(s, server, bind("q"));
  send(s, server, empty('S'));
  auto sent = send(s, server, bind("q"));  // a later segment: the first Parse is unsettled
  REQUIRE(sent.size() == 3);               // Close, Parse, Bind
  CHECK(sent[0].type == 'C');
  CHECK(sent[1].type == 'P');
  send(s, server, empty('S'));
  CHECK(reply(s, server, error()) == Verdict::kForward);  // the first segment failed
  CHECK(reply(s, server, rfq('I')) == Verdict::kForward);
  CHECK(reply(s, server, empty('3')) == Verdict::kDrop);  // sluice's own Close and Parse
  CHECK(reply(s, server, empty('1')) == Verdict::kDrop);
  CHECK(server.statement_count() == 1);  // the reply confirmed it
  CHECK(reply(s, server, empty('2')) == Verdict::kForward);
  CHECK(reply(s, server, rfq('I')) == Verdict::kForward);
  sent = send(s, server, bind("q"));  // settled now: no Parse
  CHECK(sent.size() == 1);
}

TEST_CASE("a re-parse skipped after its first Parse was skipped leaves the statement absent") {
  // Seen with test_pipeline_stress (statement pooling, seed 1796406277): both segments fail
  // before the statement's Parses; the skipped Close of the re-parse must not bring back a
  // server copy that never existed, or the next Bind goes out without a Parse (26000).
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, parse("q", "SELECT 1"));  // defines q for the client, parsed here
  send(s, server, empty('S'));
  reply(s, server, empty('1'));
  reply(s, server, rfq('I'));
  ServerState other;  // the next request runs on a server that never saw q
  pg::Buffer describe;
  pg::encode_describe(describe, {'S', "missing"});
  send(s, other, describe);               // fails: the server skips to the Sync
  auto sent = send(s, other, bind("q"));  // Parse injected before the Bind
  REQUIRE(sent.size() == 2);
  send(s, other, empty('S'));
  send(s, other, bind("missing"));   // the second segment fails too
  sent = send(s, other, bind("q"));  // the first Parse is unsettled: Close + Parse + Bind
  REQUIRE(sent.size() == 3);
  send(s, other, empty('S'));
  CHECK(reply(s, other, error()) == Verdict::kForward);
  CHECK(reply(s, other, rfq('I')) == Verdict::kForward);
  CHECK(reply(s, other, error()) == Verdict::kForward);
  CHECK(reply(s, other, rfq('I')) == Verdict::kForward);
  CHECK(other.statement_count() == 0);
  sent = send(s, other, bind("q"));  // still absent: prepared again first
  REQUIRE(sent.size() == 2);
  CHECK(sent[0].type == 'P');
}

TEST_CASE("a re-parse skipped after its first Parse succeeded leaves the statement present") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, parse("q", "SELECT 1"));
  send(s, server, bind("q"));
  send(s, server, empty('S'));
  send(s, server, bind("missing"));  // the second segment fails
  auto sent = send(s, server, bind("q"));
  REQUIRE(sent.size() == 3);
  send(s, server, empty('S'));
  CHECK(reply(s, server, empty('1')) == Verdict::kForward);
  CHECK(reply(s, server, empty('2')) == Verdict::kForward);
  CHECK(reply(s, server, rfq('I')) == Verdict::kForward);
  CHECK(reply(s, server, error()) == Verdict::kForward);
  CHECK(reply(s, server, rfq('I')) == Verdict::kForward);
  CHECK(server.statement_count() == 1);
  CHECK(send(s, server, bind("q")).size() == 1);  // no Parse: the server has it
}

TEST_CASE("a prepared SET marks its setting at every Bind, not only at its Parse") {
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  send(s, server, parse("set", "SET search_path TO a, public"));
  send(s, server, empty('S'));
  reply(s, server, empty('1'));
  reply(s, server, rfq('I'));
  s.apply_capture({}, server);  // the release read the settings back: nothing touched now
  CHECK(s.touched().empty());
  send(s, server, bind("set"));  // the SET runs now
  CHECK(s.touched().contains("search_path"));
}

namespace {
pg::Buffer concat(std::initializer_list<pg::Buffer> parts) {
  pg::Buffer out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}
// A client prepares `name` as pgbench's PQprepare does (Parse + Sync) on `server`, answered.
void prepare_on_server(PooledSession& s, ServerState& server, std::string_view name,
                       std::string_view sql) {
  send(s, server, parse(name, sql));
  send(s, server, empty('S'));
  REQUIRE(reply(s, server, empty('1')) == Verdict::kForward);
  REQUIRE(reply(s, server, rfq('I')) == Verdict::kForward);
}
}  // namespace

TEST_CASE("a detached client's Parse of a statement known to parse is answered without a server") {
  AnalysisCache cache;
  KnownStatements known;
  const PooledSession::Options options{false, &known, "appdb\0app"s};
  PooledSession first(cache, {}, options);
  PooledSession second(cache, {}, options);
  const auto request = concat({parse("p1", "SELECT abalance FROM a WHERE aid = $1"), empty('S')});
  pg::Buffer out;

  // Nobody parsed it yet: a server must answer.
  CHECK(second.answer_detached(request, out).kind == PooledSession::LocalAnswer::kNo);
  ServerState server;
  prepare_on_server(first, server, "p1", "SELECT abalance FROM a WHERE aid = $1");
  CHECK(known.size() == 1);

  // Now another client's prepare is answered by sluice: ParseComplete, ReadyForQuery idle.
  auto a = second.answer_detached(request, out);
  REQUIRE(a.kind == PooledSession::LocalAnswer::kAnswered);
  CHECK(a.consumed == request.size());
  auto replies = frames(out);
  REQUIRE(replies.size() == 2);
  CHECK(replies[0].type == '1');
  CHECK(replies[1].type == 'Z');
  CHECK(replies[1].body == pg::Buffer{'I'});
  REQUIRE(second.statement("p1"));

  // Its first Bind, on a server that never saw it, prepares it there first.
  ServerState other;
  auto sent = send(second, other, bind("p1"));
  REQUIRE(sent.size() == 2);
  CHECK(sent[0].type == 'P');
  CHECK(sent[1].type == 'B');

  // The same name again would be 42P05 from the server: not answered locally.
  out.clear();
  CHECK(second.answer_detached(request, out).kind == PooledSession::LocalAnswer::kNo);
  CHECK(out.empty());
}

TEST_CASE("local answers need the same pool, settings and a whole request of Parses and Closes") {
  AnalysisCache cache;
  KnownStatements known;
  PooledSession first(cache, {}, {false, &known, "db\0a"s});
  ServerState server;
  prepare_on_server(first, server, "p", "SELECT 1");
  pg::Buffer out;
  const auto request = concat({parse("q", "SELECT 1"), empty('S')});

  PooledSession other_pool(cache, {}, {false, &known, "db\0b"s});
  CHECK(other_pool.answer_detached(request, out).kind == PooledSession::LocalAnswer::kNo);
  PooledSession other_settings(cache, {{"search_path", "elsewhere"}}, {false, &known, "db\0a"s});
  CHECK(other_settings.answer_detached(request, out).kind == PooledSession::LocalAnswer::kNo);

  PooledSession same(cache, {}, {false, &known, "db\0a"s});
  auto half = parse("q", "SELECT 1");
  auto a = same.answer_detached(half, out);
  CHECK(a.kind == PooledSession::LocalAnswer::kNeedMore);  // the Sync is still to come
  CHECK(a.need == pg::kHeaderSize);
  // A Flush instead of Sync, or a Bind in the request: a server answers.
  CHECK(same.answer_detached(concat({half, empty('H')}), out).kind ==
        PooledSession::LocalAnswer::kNo);
  CHECK(same.answer_detached(concat({half, bind("q"), empty('S')}), out).kind ==
        PooledSession::LocalAnswer::kNo);
  CHECK(out.empty());

  // Parse, Close of another name, Sync: both answered, the closed name forgotten.
  prepare_on_server(same, server, "old", "SELECT 2");
  pg::Buffer close;
  pg::encode_close(close, {'S', "old"});
  a = same.answer_detached(concat({half, close, empty('S')}), out);
  REQUIRE(a.kind == PooledSession::LocalAnswer::kAnswered);
  auto replies = frames(out);
  REQUIRE(replies.size() == 3);
  CHECK(replies[1].type == '3');
  CHECK(!same.statement("old"));
  CHECK(same.statement("q"));
}

TEST_CASE("only a Parse first in its request, outside a transaction, makes a statement known") {
  AnalysisCache cache;
  KnownStatements known;
  PooledSession s(cache, {}, {false, &known, "db"});
  ServerState server;
  // Inside a transaction: it may name what this transaction created.
  send(s, server, query("BEGIN"));
  reply(s, server, rfq('T'));
  send(s, server, parse("in_tx", "SELECT * FROM made_here"));
  send(s, server, empty('S'));
  reply(s, server, empty('1'));
  reply(s, server, rfq('T'));
  // After another message of the same request: likewise.
  send(s, server, query("COMMIT"));
  reply(s, server, rfq('I'));
  send(s, server, parse("", "CREATE TABLE t2 (i int)"));
  send(s, server, parse("after", "SELECT * FROM t2"));
  send(s, server, empty('S'));
  reply(s, server, empty('1'));
  reply(s, server, empty('1'));
  reply(s, server, rfq('I'));
  CHECK(known.size() == 0);

  // A failed Parse makes nothing known; a good one does, and a DROP forgets everything.
  send(s, server, parse("bad", "SELECT * FROM missing"));
  send(s, server, empty('S'));
  reply(s, server, error());
  reply(s, server, rfq('I'));
  CHECK(known.size() == 0);
  prepare_on_server(s, server, "good", "SELECT 1");
  CHECK(known.size() == 1);
  send(s, server, query("DROP TABLE t2"));
  CHECK(known.size() == 0);
}

TEST_CASE("a Parse in a failed transaction leaves the server's copy of the same text in place") {
  // Seen with test_pipeline_stress (transaction pooling, seed 1796419220): s0_10 is parsed in a
  // transaction that an error then aborts; s1_11, the same text, is parsed after. In a failed
  // transaction Postgres refuses every Parse (25P02) but still runs Close: a Close of the shared
  // copy before the Parse dropped s0_10 for good, and a Describe of s0_10 (which Postgres
  // answers in a failed transaction) then needed a Parse and got 25P02.
  AnalysisCache cache;
  PooledSession s(cache, {}, {});
  ServerState server;
  std::set<std::string> on_server;  // what the server really has
  // The server in a failed transaction: Close runs, Parse fails and skips to the Sync.
  auto run_aborted = [&](const std::vector<Msg>& sent) {
    bool skipping = false;
    for (const auto& m : sent) {
      if (m.type == 'S') {
        skipping = false;
        CHECK(reply(s, server, rfq('E')) == Verdict::kForward);
      } else if (skipping) {
        continue;
      } else if (m.type == 'C') {
        on_server.erase(std::string(name_in(m)));
        reply(s, server, empty('3'));
      } else if (m.type == 'P') {
        pg::Buffer e;
        pg::encode_error_response(e, {"ERROR", "25P02", "current transaction is aborted"});
        CHECK(reply(s, server, e) == Verdict::kForward);
        skipping = true;
      }
    }
  };
  send(s, server, query("BEGIN"));
  reply(s, server, rfq('T'));
  auto sent = send(s, server, parse("s0", "INSERT INTO t VALUES ($1)"));
  REQUIRE(sent.size() == 1);
  const std::string server_name(name_in(sent[0]));
  on_server.insert(server_name);
  send(s, server, empty('S'));
  reply(s, server, empty('1'));
  reply(s, server, rfq('T'));
  send(s, server, query("SELECT 1/0"));
  reply(s, server, error());
  reply(s, server, rfq('E'));

  sent = send(s, server, parse("s1", "INSERT INTO t VALUES ($1)"));  // the same text
  auto sync = send(s, server, empty('S'));
  sent.insert(sent.end(), sync.begin(), sync.end());
  run_aborted(sent);
  CHECK(!s.statement("s1"));  // Postgres did not create it
  CHECK(on_server.contains(server_name));
  pg::Buffer describe;
  pg::encode_describe(describe, {'S', "s0"});
  sent = send(s, server, describe);
  REQUIRE(sent.size() == 1);  // no Parse: that would fail in this transaction
  CHECK(sent[0].type == 'D');
  CHECK(name_in(sent[0]) == server_name);
}
