// Which buffered requests the cache answers, their keys, and fill capture (cache/request.hpp).
#include "cache/request.hpp"

#include <catch2/catch.hpp>

#include "protocol/pg/extended.hpp"

using namespace sluice;
using namespace sluice::cache;

namespace {

const std::vector<std::uint32_t> kInt4{23};
StatementLookup lookup() {
  return [](std::string_view name) -> std::optional<NamedStatement> {
    if (name == "s1") return NamedStatement{"SELECT * FROM t WHERE id = $1", &kInt4};
    return std::nullopt;
  };
}

pg::Buffer unnamed(std::string_view sql, std::uint32_t max_rows = 0) {
  pg::Buffer b;
  pg::encode_parse(b, "", sql, {});
  pg::encode_bind(b, "", "", {std::string("1")});
  pg::encode_describe(b, {'P', ""});
  pg::encode_execute(b, {"", max_rows});
  pg::encode_sync(b);
  return b;
}

}  // namespace

TEST_CASE("a lone Query is a candidate keyed by its text; anything after it is not") {
  pg::Buffer b;
  pg::encode_query(b, "SELECT 1");
  auto r = scan_request(b, 65536, lookup());
  REQUIRE(r.kind == RequestScan::kCandidate);
  CHECK(r.size == b.size());
  CHECK(r.request.sql == "SELECT 1");
  CHECK(r.request.material == "QSELECT 1");
  pg::encode_query(b, "SELECT 2");
  CHECK(scan_request(b, 65536, lookup()).kind == RequestScan::kNo);
}

TEST_CASE("unnamed Parse/Bind/Describe/Execute/Sync: parameters are part of the key") {
  const auto first = unnamed("SELECT $1");  // the request's views point into it
  auto one = scan_request(first, 65536, lookup());
  REQUIRE(one.kind == RequestScan::kCandidate);
  CHECK(one.request.sql == "SELECT $1");
  CHECK(one.request.material.starts_with(std::string("PSELECT $1\0\0B", 13)));
  CHECK(one.request.material.ends_with("DPES"));
  pg::Buffer other;
  pg::encode_parse(other, "", "SELECT $1", {});
  pg::encode_bind(other, "", "", {std::string("2")});
  pg::encode_describe(other, {'P', ""});
  pg::encode_execute(other, {"", 0});
  pg::encode_sync(other);
  auto two = scan_request(other, 65536, lookup());
  REQUIRE(two.kind == RequestScan::kCandidate);
  CHECK(two.request.material != one.request.material);
  // A row limit reads part of the result: never cached.
  CHECK(scan_request(unnamed("SELECT $1", 10), 65536, lookup()).kind == RequestScan::kNo);
}

TEST_CASE("a Bind of a named statement uses the text it was prepared with") {
  pg::Buffer b;
  pg::encode_bind(b, "", "s1", {std::string("5")});
  pg::encode_execute(b, {"", 0});
  pg::encode_sync(b);
  auto r = scan_request(b, 65536, lookup());
  REQUIRE(r.kind == RequestScan::kCandidate);
  CHECK(r.request.sql == "SELECT * FROM t WHERE id = $1");
  CHECK(
      r.request.material.starts_with(std::string("NSELECT * FROM t WHERE id = $1\0"
                                                 "23,\0B",
                                                 36)));
  pg::Buffer unknown;
  pg::encode_bind(unknown, "", "nope", {});
  pg::encode_execute(unknown, {"", 0});
  pg::encode_sync(unknown);
  CHECK(scan_request(unknown, 65536, lookup()).kind == RequestScan::kNo);
}

TEST_CASE("incomplete requests ask for more; too large ones are not waited for") {
  auto b = unnamed("SELECT 1");
  for (std::size_t cut = 1; cut < b.size(); ++cut) {
    INFO("cut " << cut);
    auto r = scan_request(bytes::Span(b.data(), cut), 65536, lookup());
    // Before the Sync every cut either waits for more or (on a boundary) is not ours yet.
    CHECK(r.kind != RequestScan::kCandidate);
    if (r.kind == RequestScan::kNeedMore) CHECK(r.need > 0);
  }
  pg::Buffer big;
  pg::encode_query(big, std::string(200, 'x'));
  CHECK(scan_request(bytes::Span(big.data(), 20), 100, lookup()).kind == RequestScan::kNo);
  auto partial = scan_request(bytes::Span(big.data(), 20), 65536, lookup());
  CHECK(partial.kind == RequestScan::kNeedMore);
  CHECK(partial.need == big.size() - 20);
}

TEST_CASE("the session part of the key leaves out what cannot change a result") {
  Request r;
  std::map<std::string, std::string> settings{{"application_name", "x"},
                                              {"search_path", "app, public"},
                                              {"sluice.route", "replica"},
                                              {"timezone", "UTC"}};
  key_session(r, "appdb", "app", settings, 4);
  CHECK(r.database == "appdb");
  CHECK(r.role == "app");
  REQUIRE(r.settings.size() == 1);
  CHECK(r.settings[0] == std::pair<std::string, std::string>{"timezone", "UTC"});
  CHECK(r.search_path == "app, public");
  CHECK_FALSE(r.strict);
  CHECK(r.generation == 4);
  settings["sluice.min_lsn"] = "0/10";
  Request s;
  key_session(s, "appdb", "app", settings, 4);
  CHECK(s.strict);
}

TEST_CASE("fill capture keeps the reply up to its ReadyForQuery, at any split") {
  pg::Buffer reply;
  pg::encode_command_complete(reply, "SELECT 1");
  const std::size_t body = reply.size();
  pg::encode_ready_for_query(reply, 'I');
  for (std::size_t cut = 0; cut <= reply.size(); ++cut) {
    INFO("cut " << cut);
    FillCapture c;
    auto first = c.append(bytes::Span(reply.data(), cut), 1000);
    if (cut == reply.size()) {
      CHECK(first == FillCapture::Step::kStore);
    } else {
      CHECK(first == FillCapture::Step::kMore);
      CHECK(c.append(bytes::Span(reply).subspan(cut), 1000) == FillCapture::Step::kStore);
    }
    CHECK(c.reply().size() == body);
  }
  pg::Buffer in_tx;
  pg::encode_command_complete(in_tx, "SELECT 1");
  pg::encode_ready_for_query(in_tx, 'T');
  FillCapture t;
  CHECK(t.append(in_tx, 1000) == FillCapture::Step::kDrop);
  FillCapture small;
  CHECK(small.append(reply, 0) == FillCapture::Step::kStore);  // within the allowance of 64
  pg::Buffer rows(200, 'D');
  FillCapture over;
  CHECK(over.append(rows, 100) == FillCapture::Step::kTooLarge);
}
