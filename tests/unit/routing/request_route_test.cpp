// Judging buffered requests before a checkout (routing/request_route.hpp).
#include "routing/request_route.hpp"

#include <catch2/catch.hpp>
#include <string>

#include "protocol/pg/extended.hpp"

using namespace sluice;
using namespace sluice::routing;

namespace {

// Reads start with SELECT; "SHOW LSN" alone is answered locally (code 7); "ALTER FUNCTION"
// changes the catalog. Records what it was asked.
struct TestJudge final : MessageJudge {
  std::string seen;  // message types judged
  bool last_parse_seen = false;
  MessageVerdict judge(const pg::Frame& f, bool parse_seen, bool lone) override {
    seen.push_back(f.type);
    last_parse_seen = parse_seen;
    auto text = pg::query_text(f);
    if (!text) return {true, false, false, 0};  // Bind/Describe/Execute/Sync: judged at the Parse
    if (lone && *text == "SHOW LSN") return {false, false, false, 7};
    if (text->starts_with("ALTER FUNCTION")) return {false, true, true, 0};
    const bool read = text->starts_with("SELECT");
    return {read, !read, false, 0};
  }
};

pg::Buffer extended(std::string_view sql, bool sync = true) {
  pg::Buffer b;
  pg::encode_parse(b, "", sql, {});
  pg::encode_bind(b, "", "", {});
  pg::encode_execute(b, {"", 0});
  if (sync) pg::encode_sync(b);
  return b;
}

}  // namespace

TEST_CASE("reads alone may go to a replica; one write sends the lot to the primary") {
  TestJudge j;
  pg::Buffer b;
  pg::encode_query(b, "SELECT 1");
  auto r = route_requests(b, 65536, j);
  CHECK(r.kind == RequestRoute::kDecided);
  CHECK(r.replica);
  CHECK_FALSE(r.write);
  CHECK(r.judged == b.size());
  pg::encode_query(b, "UPDATE t SET x = 1");
  auto both = route_requests(b, 65536, j);
  CHECK_FALSE(both.replica);
  CHECK(both.write);
  CHECK(both.judged == b.size());
}

TEST_CASE("an extended request is routed only once its Sync is in; Bind sees the Parse") {
  auto b = extended("SELECT 1", false);
  TestJudge j;
  auto r = route_requests(b, 65536, j);
  CHECK(r.kind == RequestRoute::kNeedMore);
  CHECK(r.need == pg::kHeaderSize);  // the next message's header at least
  CHECK_FALSE(r.replica);
  pg::encode_sync(b);
  TestJudge k;
  auto done = route_requests(b, 65536, k);
  CHECK(done.kind == RequestRoute::kDecided);
  CHECK(done.replica);
  CHECK(k.seen == "PBES");
  CHECK(k.last_parse_seen);
}

TEST_CASE("a Flush leaves the implicit transaction open: the primary, without waiting") {
  auto b = extended("SELECT 1", false);
  pg::encode_flush(b);
  TestJudge j;
  auto r = route_requests(b, 65536, j);
  CHECK(r.kind == RequestRoute::kDecided);
  CHECK_FALSE(r.replica);
}

TEST_CASE("an incomplete message: how much is missing, or the primary when it is too large") {
  pg::Buffer b;
  pg::encode_query(b, "SELECT 1");
  TestJudge j;
  for (std::size_t cut = 1; cut < b.size(); ++cut) {
    INFO("cut " << cut);
    auto r = route_requests(bytes::Span(b.data(), cut), 65536, j);
    CHECK(r.kind == RequestRoute::kNeedMore);
    CHECK(r.need == (cut < pg::kHeaderSize ? pg::kHeaderSize - cut : b.size() - cut));
  }
  pg::Buffer big;
  pg::encode_query(big, std::string(100, 'x'));
  auto r = route_requests(bytes::Span(big.data(), 10), 64, j);
  CHECK(r.kind == RequestRoute::kDecided);
  CHECK(r.write);
  CHECK_FALSE(r.replica);
  CHECK(j.seen.empty());  // nothing whole was judged
}

TEST_CASE("a lone Query may be answered locally; the same text in a pipeline may not") {
  pg::Buffer b;
  pg::encode_query(b, "SHOW LSN");
  TestJudge j;
  auto r = route_requests(b, 65536, j);
  CHECK(r.kind == RequestRoute::kLocal);
  CHECK(r.local == 7);
  CHECK(r.size == b.size());
  pg::encode_query(b, "SELECT 1");
  auto piped = route_requests(b, 65536, j);
  CHECK(piped.kind == RequestRoute::kDecided);
  CHECK_FALSE(piped.replica);  // SHOW LSN judged as a non-read
}

TEST_CASE("a catalog change is reported; a malformed length routes to the primary") {
  pg::Buffer b;
  pg::encode_query(b, "ALTER FUNCTION f() STABLE");
  TestJudge j;
  auto r = route_requests(b, 65536, j);
  CHECK(r.catalog_change);
  CHECK(r.write);
  const std::uint8_t bad[] = {'Q', 0, 0, 0, 2};
  auto m = route_requests(bytes::Span(bad, sizeof bad), 65536, j);
  CHECK(m.kind == RequestRoute::kDecided);
  CHECK_FALSE(m.replica);
  CHECK(m.judged == 0);
}
