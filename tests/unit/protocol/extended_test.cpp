// Extended-protocol codecs: decode(encode(x)) == x, Bind renaming keeps every byte after the
// names, malformed bodies are refused, and a whole pipeline frames identically at every split.
#include "protocol/pg/extended.hpp"

#include <catch2/catch.hpp>

#include "split.hpp"

using namespace sluice;
using namespace sluice::pg;

namespace {
Frame only_frame(const Buffer& b) {
  auto r = next_frame(b);
  REQUIRE(std::holds_alternative<Frame>(r));
  auto f = std::get<Frame>(r);
  REQUIRE(f.size == b.size());
  return f;
}

// A real Bind: portal "p1", statement "s1", one binary format code, params 'abc' and NULL,
// one text result format.
Buffer sample_bind() {
  Buffer b;
  bytes::Writer w(b);
  auto at = w.begin_message('B');
  w.cstr("p1");
  w.cstr("s1");
  w.u16(1);
  w.u16(1);
  w.u16(2);
  w.i32(3);
  w.raw(std::string_view("abc"));
  w.i32(-1);
  w.u16(1);
  w.u16(0);
  w.end_message(at);
  return b;
}
}  // namespace

TEST_CASE("Parse round-trips with and without parameter types") {
  for (const auto& types : {std::vector<std::uint32_t>{}, std::vector<std::uint32_t>{23, 25, 0}}) {
    Buffer b;
    encode_parse(b, "stmt_1", "SELECT $1::int, $2", types);
    auto f = only_frame(b);
    CHECK(f.type == 'P');
    auto p = decode_parse(f.body);
    REQUIRE(p);
    CHECK(p->name == "stmt_1");
    CHECK(p->query == "SELECT $1::int, $2");
    CHECK(p->param_types == types);
  }
}

TEST_CASE("Parse with a lying parameter count is refused") {
  Buffer b;
  encode_parse(b, "", "SELECT 1", {23});
  auto body = only_frame(b).body;
  Buffer bad(body.begin(), body.end());
  bad[bad.size() - 5] = 9;  // count says 9 types, one is present
  CHECK_FALSE(decode_parse(bad));
}

TEST_CASE("Bind is renamed without touching its parameters") {
  Buffer original = sample_bind();
  auto bind = decode_bind(only_frame(original).body);
  REQUIRE(bind);
  CHECK(bind->portal == "p1");
  CHECK(bind->statement == "s1");
  Buffer renamed;
  encode_bind_renamed(renamed, *bind, "sluice_0123456789abcdef");
  auto again = decode_bind(only_frame(renamed).body);
  REQUIRE(again);
  CHECK(again->portal == "p1");
  CHECK(again->statement == "sluice_0123456789abcdef");
  CHECK(std::equal(again->rest.begin(), again->rest.end(), bind->rest.begin(), bind->rest.end()));
  Buffer back;
  encode_bind_renamed(back, *again, "s1");
  CHECK(back == original);
  Buffer truncated{'p', 0, 's', 0, 0};
  CHECK_FALSE(decode_bind(truncated));
}

TEST_CASE("a Bind with text parameters and an Execute round-trip") {
  Buffer out;
  encode_bind(out, "", "s", {std::string("a\0'b", 4), std::nullopt});
  auto f = only_frame(out);
  CHECK(f.type == 'B');
  auto b = decode_bind(f.body);
  REQUIRE(b);
  CHECK((b->portal.empty() && b->statement == "s"));
  // 0 formats, 2 values (4 bytes, then -1 = NULL), 0 result formats.
  const Buffer rest{0, 0, 0, 2, 0, 0, 0, 4, 'a', 0, '\'', 'b', 0xff, 0xff, 0xff, 0xff, 0, 0};
  CHECK(std::equal(b->rest.begin(), b->rest.end(), rest.begin(), rest.end()));
  Buffer e;
  encode_execute(e, {"p", 7});
  auto x = decode_execute(only_frame(e).body);
  REQUIRE(x);
  CHECK((x->portal == "p" && x->max_rows == 7));
}

TEST_CASE("Describe, Close and Execute round-trip; bad kinds are refused") {
  for (char kind : {'S', 'P'}) {
    Buffer d, c;
    encode_describe(d, {kind, "name"});
    encode_close(c, {kind, ""});
    auto fd = only_frame(d);
    auto fc = only_frame(c);
    CHECK(fd.type == 'D');
    CHECK(fc.type == 'C');
    auto td = decode_target(fd.body);
    auto tc = decode_target(fc.body);
    REQUIRE(td);
    REQUIRE(tc);
    CHECK((td->kind == kind && td->name == "name"));
    CHECK((tc->kind == kind && tc->name.empty()));
  }
  Buffer bad{'X', 'n', 0};
  CHECK_FALSE(decode_target(bad));
  Buffer exec{'p', 0, 0, 0, 0, 10};
  auto e = decode_execute(exec);
  REQUIRE(e);
  CHECK(e->portal == "p");
  CHECK(e->max_rows == 10);
  Buffer short_exec{'p', 0, 0, 0};
  CHECK_FALSE(decode_execute(short_exec));
}

TEST_CASE("a pipeline of extended messages frames the same at every split") {
  Buffer stream;
  encode_parse(stream, "s1", "SELECT $1", {25});
  auto bind = sample_bind();
  stream.insert(stream.end(), bind.begin(), bind.end());
  encode_describe(stream, {'P', "p1"});
  encode_close(stream, {'S', "s1"});
  encode_flush(stream);
  encode_sync(stream);
  encode_parse_complete(stream);
  encode_bind_complete(stream);
  encode_close_complete(stream);
  auto whole = test::frames_split(stream, stream.size(), false);
  std::string types;
  for (const auto& [t, body] : whole) types.push_back(t);
  CHECK(types == "PBDCHS123");
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    INFO("cut at " << cut);
    CHECK(test::frames_split(stream, cut, false) == whole);
  }
}
