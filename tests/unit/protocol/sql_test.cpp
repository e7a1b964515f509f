// Literal quoting and startup `options` parsing.
#include "protocol/pg/sql.hpp"

#include <catch2/catch.hpp>

using namespace sluice::pg::sql;

TEST_CASE("quote_literal doubles quotes and switches to E'' for backslashes") {
  CHECK(quote_literal("abc") == "'abc'");
  CHECK(quote_literal("it's") == "'it''s'");
  CHECK(quote_literal(R"(a\b)") == R"(E'a\\b')");
  CHECK(quote_literal("") == "''");
}

TEST_CASE("options parse like the postmaster") {
  auto o = parse_options("-c search_path=app,public --statement-timeout=5s -cwork_mem=64MB");
  REQUIRE(o);
  REQUIRE(o->size() == 3);
  CHECK((*o)[0] == std::pair<std::string, std::string>{"search_path", "app,public"});
  CHECK((*o)[1] == std::pair<std::string, std::string>{"statement_timeout", "5s"});
  CHECK((*o)[2] == std::pair<std::string, std::string>{"work_mem", "64MB"});
  auto spaced = parse_options(R"(-c application_name=my\ app)");
  REQUIRE(spaced);
  CHECK((*spaced)[0].second == "my app");
  CHECK_FALSE(parse_options("-D /tmp"));
  CHECK_FALSE(parse_options("-c 'x=1'"));
  CHECK(parse_options("")->empty());
}
