// test_decoding's lines as the WAL follower reads them: boundaries, relation names (quoted and
// bare), TRUNCATE lists, and malformed input refused with a reason.
#include "protocol/pg/test_decoding.hpp"

#include <catch2/catch.hpp>

namespace td = sluice::pg::test_decoding;

namespace {
td::Change change(std::string_view line) {
  std::string why;
  auto m = td::decode(line, &why);
  INFO(why);
  REQUIRE(m);
  REQUIRE(std::holds_alternative<td::Change>(*m));
  return std::get<td::Change>(*m);
}
}  // namespace

TEST_CASE("test_decoding: transaction boundaries", "[test_decoding]") {
  CHECK(std::holds_alternative<td::Begin>(*td::decode("BEGIN")));
  CHECK(std::holds_alternative<td::Begin>(*td::decode("BEGIN 742")));
  CHECK(std::holds_alternative<td::Commit>(*td::decode("COMMIT")));
  CHECK(std::holds_alternative<td::Commit>(*td::decode("COMMIT 742 (at 2026-12-05 06:50:00+00)")));
  CHECK(std::holds_alternative<td::Other>(*td::decode("message: transactional: 1 prefix: p")));
  CHECK_FALSE(td::decode("BEGINNING"));
  CHECK_FALSE(td::decode("COMMITTED"));
  CHECK_FALSE(td::decode(""));
  CHECK_FALSE(td::decode("ROLLBACK"));
}

TEST_CASE("test_decoding: row changes name their relation", "[test_decoding]") {
  auto c = change("table public.wf_items: UPDATE: id[integer]:42 v[bigint]:1000");
  CHECK(c.kind == 'U');
  REQUIRE(c.relations.size() == 1);
  CHECK(c.relations[0].schema == "public");
  CHECK(c.relations[0].name == "wf_items");
  CHECK(change("table public.t: INSERT: a[text]:'x: y'").kind == 'I');
  CHECK(change("table s.t: DELETE: (no-tuple-data)").kind == 'D');
  // quote_identifier: upper case, spaces, dots, colons and doubled quotes.
  auto q = change(R"(table "My Schema"."a.b: ""c"", d": INSERT: x[int]:1)");
  CHECK(q.relations[0].schema == "My Schema");
  CHECK(q.relations[0].name == R"(a.b: "c", d)");
  auto dollar = change("table public.t$1_x: UPDATE: (no-tuple-data)");
  CHECK(dollar.relations[0].name == "t$1_x");
}

TEST_CASE("test_decoding: TRUNCATE lists every relation", "[test_decoding]") {
  auto c = change(R"(table public.a, "Public".b, public.c: TRUNCATE: restart_seqs cascade)");
  CHECK(c.kind == 'T');
  REQUIRE(c.relations.size() == 3);
  CHECK(c.relations[1].schema == "Public");
  CHECK(c.relations[2].name == "c");
  CHECK(change("table public.a: TRUNCATE: (no-flags)").relations.size() == 1);
}

TEST_CASE("test_decoding: malformed lines are refused with a reason", "[test_decoding]") {
  for (std::string_view bad :
       {"table public: INSERT: x", "table .t: INSERT: x", "table public.t INSERT: x",
        "table public.t: UPSERT: x", R"(table "public.t: INSERT: x)", "table public.: INSERT:",
        "table public.a, public.b: INSERT: x", "table Public.t: INSERT: x", "BEGIN\nCOMMIT"}) {
    std::string why;
    INFO(bad);
    CHECK_FALSE(td::decode(bad, &why));
    CHECK_FALSE(why.empty());
  }
  // Every prefix of a valid line is refused or decodes without reading past it.
  const std::string line = R"(table "a""b".c, d.e: TRUNCATE: (no-flags))";
  for (std::size_t n = 0; n <= line.size(); ++n)
    (void)td::decode(std::string_view(line).substr(0, n));
  // A list longer than kMaxRelations is refused.
  std::string many = "table ";
  for (std::size_t i = 0; i <= td::kMaxRelations; ++i) many += (i ? ", " : "") + std::string("s.t");
  many += ": TRUNCATE: (no-flags)";
  std::string why;
  CHECK_FALSE(td::decode(many, &why));
  CHECK(why == "too many relations");
}
