// Session-state analysis with the real parser: settings, prepared statements, transaction
// control and pins, for single and multi-statement strings; the LRU cache bounds itself.
#include "routing/session_statements.hpp"

#include <catch2/catch.hpp>
#include <thread>

using namespace sluice::routing;

namespace {
Statement only(const std::string& sql) {
  auto a = analyze(sql);
  REQUIRE(a.parsed);
  REQUIRE(a.statements.size() == 1);
  return a.statements[0];
}
bool pins(const std::string& sql, Pin p) {
  auto a = analyze(sql);
  return std::find(a.pins.begin(), a.pins.end(), p) != a.pins.end();
}
}  // namespace

TEST_CASE("SET and RESET in all their spellings") {
  auto s = only("SET search_path = app, public");
  CHECK(s.kind == StatementKind::kSet);
  CHECK(s.name == "search_path");
  CHECK(s.text == "SET search_path = app, public");
  CHECK(only("set Statement_Timeout to 5000;").name == "statement_timeout");
  CHECK(only("SET TIME ZONE 'UTC'").name == "timezone");
  CHECK(only("SET SESSION DateStyle = ISO").kind == StatementKind::kSet);
  CHECK(only("SET LOCAL work_mem = '64MB'").kind == StatementKind::kSetLocal);
  CHECK(only("RESET statement_timeout").kind == StatementKind::kReset);
  CHECK(only("SET search_path TO DEFAULT").kind == StatementKind::kReset);
  CHECK(only("RESET ALL").kind == StatementKind::kResetAll);
  CHECK(only("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").kind == StatementKind::kOther);
  CHECK(only("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").kind == StatementKind::kSet);
}

TEST_CASE("set_config with literals is a SET; anything else pins") {
  auto a = analyze("SELECT set_config('search_path', 'x', false), set_config('a.b', 'y', true)");
  REQUIRE(a.parsed);
  REQUIRE(a.set_config_calls.size() == 2);
  CHECK(a.set_config_calls[0].kind == StatementKind::kSet);
  CHECK(a.set_config_calls[0].name == "search_path");
  CHECK(a.set_config_calls[0].value == "x");
  CHECK(a.set_config_calls[1].kind == StatementKind::kSetLocal);
  CHECK(a.pins.empty());
  CHECK(pins("SELECT pg_catalog.set_config($1, 'z', false)", Pin::kUntrackedSetConfig));
  CHECK(pins("SELECT set_config('a', current_user, false)", Pin::kUntrackedSetConfig));
}

TEST_CASE("SQL-level prepared statements") {
  auto p = only("PREPARE q1(int) AS SELECT $1");
  CHECK(p.kind == StatementKind::kPrepare);
  CHECK(p.name == "q1");
  CHECK(only("EXECUTE q1(42)").kind == StatementKind::kExecute);
  CHECK(only("DEALLOCATE q1").kind == StatementKind::kDeallocate);
  CHECK(only("DEALLOCATE PREPARE q1").name == "q1");
  CHECK(only("DEALLOCATE ALL").kind == StatementKind::kDeallocateAll);
  CHECK(only("DISCARD ALL").kind == StatementKind::kDiscardAll);
  CHECK(only("DISCARD PLANS").kind == StatementKind::kOther);
}

TEST_CASE("transaction control") {
  CHECK(only("BEGIN").kind == StatementKind::kBegin);
  CHECK(only("START TRANSACTION READ ONLY").kind == StatementKind::kBegin);
  CHECK(only("COMMIT").kind == StatementKind::kCommit);
  CHECK(only("END").kind == StatementKind::kCommit);
  CHECK(only("ROLLBACK").kind == StatementKind::kRollback);
  CHECK(only("ABORT").kind == StatementKind::kRollback);
  CHECK(only("ROLLBACK TO SAVEPOINT s").kind == StatementKind::kOther);
  CHECK(only("PREPARE TRANSACTION 'gid'").kind == StatementKind::kCommit);
}

TEST_CASE("what cannot be pooled pins") {
  CHECK(pins("LISTEN jobs", Pin::kListen));
  CHECK(pins("SELECT pg_advisory_lock(42)", Pin::kAdvisoryLock));
  CHECK(pins("SELECT x FROM t WHERE pg_try_advisory_lock(id)", Pin::kAdvisoryLock));
  CHECK_FALSE(pins("SELECT pg_advisory_xact_lock(42)", Pin::kAdvisoryLock));
  CHECK(pins("CREATE TEMP TABLE t (x int)", Pin::kTempRelation));
  CHECK(pins("CREATE TEMPORARY VIEW v AS SELECT 1", Pin::kTempRelation));
  CHECK(pins("SELECT 1 INTO TEMP t2", Pin::kTempRelation));
  CHECK(pins("CREATE TEMP TABLE t3 AS SELECT 1", Pin::kTempRelation));
  CHECK_FALSE(pins("CREATE TABLE t (x int)", Pin::kTempRelation));
  CHECK(pins("DECLARE c CURSOR WITH HOLD FOR SELECT 1", Pin::kWithHoldCursor));
  CHECK_FALSE(pins("DECLARE c CURSOR FOR SELECT 1", Pin::kWithHoldCursor));
  CHECK(pins("SET ROLE other", Pin::kSetRole));
  CHECK(pins("SET SESSION AUTHORIZATION other", Pin::kSessionAuthorization));
  CHECK(analyze("SELECT * FROM accounts WHERE aid = $1").pins.empty());
}

TEST_CASE("multi-statement strings keep each statement's own text") {
  auto a = analyze("BEGIN; SET LOCAL a.b = 1;  SET search_path = s;\nCOMMIT");
  REQUIRE(a.parsed);
  REQUIRE(a.statements.size() == 4);
  CHECK(a.statements[0].kind == StatementKind::kBegin);
  CHECK(a.statements[1].kind == StatementKind::kSetLocal);
  CHECK(a.statements[2].text == "SET search_path = s");
  CHECK(a.statements[3].kind == StatementKind::kCommit);
  auto u = analyze("SELECT 'é'; SET application_name = 'ünï'");
  REQUIRE(u.statements.size() == 2);
  CHECK(u.statements[1].text == "SET application_name = 'ünï'");
}

TEST_CASE("unparseable and empty input") {
  CHECK_FALSE(analyze("SELEC 1").parsed);
  CHECK_FALSE(analyze("SELECT 'unterminated").parsed);
  auto empty = analyze("  -- just a comment\n");
  CHECK(empty.parsed);
  CHECK(empty.statements.empty());
  CHECK(analyze(std::string(1, '\0')).statements.empty());
}

TEST_CASE("the analysis cache is bounded, LRU, and shared safely") {
  AnalysisCache cache(3);
  auto first = cache.get("SET a.x = 1");
  CHECK(cache.get("SET a.x = 1") == first);  // hit returns the same analysis
  CHECK(cache.hits() == 1);
  cache.get("SET a.y = 1");
  cache.get("SET a.z = 1");
  cache.get("SET a.x = 1");  // refresh x, so y is the oldest
  cache.get("SET a.w = 1");
  CHECK(cache.size() == 3);
  auto hits = cache.hits();
  cache.get("SET a.x = 1");
  CHECK(cache.hits() == hits + 1);
  cache.get("SET a.y = 1");  // evicted: parsed again
  CHECK(cache.hits() == hits + 1);

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      for (int i = 0; i < 200; ++i) cache.get("SELECT " + std::to_string((i * 7 + t) % 10));
    });
  }
  for (auto& th : threads) th.join();
  CHECK(cache.size() == 3);
}

TEST_CASE("settings that make the server lex SQL unlike libpg_query") {
  CHECK(lexer_agrees("standard_conforming_strings", "on"));
  CHECK(lexer_agrees("Standard_Conforming_Strings", "TRUE"));
  CHECK(lexer_agrees("standard_conforming_strings", "1"));
  CHECK(!lexer_agrees("standard_conforming_strings", "off"));
  CHECK(!lexer_agrees("standard_conforming_strings", "false"));
  CHECK(!lexer_agrees("standard_conforming_strings", "0"));
  CHECK(!lexer_agrees("standard_conforming_strings", ""));
  CHECK(lexer_agrees("client_encoding", "UTF8"));
  CHECK(lexer_agrees("client_encoding", "utf-8"));
  CHECK(lexer_agrees("client_encoding", "LATIN1"));
  CHECK(lexer_agrees("client_encoding", "ISO_8859_5"));
  CHECK(lexer_agrees("client_encoding", "EUC_JP"));
  CHECK(lexer_agrees("client_encoding", "WIN1252"));
  for (auto e : {"SJIS", "Shift_JIS", "mskanji", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030",
                 "JOHAB", "WIN932", "windows-936", "win949", "win950", "no such encoding"})
    CHECK(!lexer_agrees("client_encoding", e));
  CHECK(lexer_agrees("search_path", "off"));
}

TEST_CASE("setting standard_conforming_strings off or a client-only encoding pins") {
  CHECK(pins("SET standard_conforming_strings = off", Pin::kLexer));
  CHECK(pins("set standard_conforming_strings to 0", Pin::kLexer));
  CHECK(pins("SET LOCAL standard_conforming_strings = false", Pin::kLexer));
  CHECK(pins("RESET standard_conforming_strings", Pin::kLexer));
  CHECK(pins("SET standard_conforming_strings TO DEFAULT", Pin::kLexer));
  CHECK(pins("SET NAMES 'SJIS'", Pin::kLexer));
  CHECK(pins("SET client_encoding = 'BIG5'", Pin::kLexer));
  CHECK(pins("SELECT set_config('standard_conforming_strings', 'off', false)", Pin::kLexer));
  CHECK(pins("SELECT 1; SET standard_conforming_strings = off", Pin::kLexer));
  CHECK(only("SET standard_conforming_strings = off").value == "off");
  // What drivers send at connect time stays pooled.
  CHECK(!pins("SET standard_conforming_strings = on", Pin::kLexer));
  CHECK(!pins("SET client_encoding TO 'UTF8'", Pin::kLexer));
  CHECK(!pins("SET NAMES 'utf8'", Pin::kLexer));
  CHECK(!pins("RESET ALL", Pin::kLexer));
  CHECK(!pins("SET search_path = off", Pin::kLexer));
}

TEST_CASE("SQL PREPARE text is remembered for replay only when it is one statement everywhere") {
  // libpg_query (standard strings) reads one PREPARE of a string constant; a server with
  // standard_conforming_strings off reads a PREPARE and an UPDATE.
  const std::string hidden = "PREPARE p AS SELECT 'x\\''; UPDATE t SET n = n + 1; --'";
  auto a = analyze(hidden);
  REQUIRE(a.statements.size() == 1);
  CHECK(a.statements[0].kind == StatementKind::kPrepare);
  CHECK(pins(hidden, Pin::kPrepareText));
  CHECK(pins("PREPARE e AS SELECT E'a\\nb'", Pin::kPrepareText));
  // Two statements for libpg_query and the server alike: each is its own text.
  a = analyze("PREPARE q AS SELECT 42; UPDATE t SET n = 1");
  REQUIRE(a.statements.size() == 2);
  CHECK(a.statements[0].text == "PREPARE q AS SELECT 42");
  CHECK(a.pins.empty());
  CHECK(!pins("PREPARE r(int) AS SELECT $1 + 1 -- a comment", Pin::kPrepareText));
  CHECK(!pins("PREPARE s AS SELECT ';' AS semicolon", Pin::kPrepareText));
}
