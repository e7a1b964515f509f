// Framer and relay-scanner tests, each replayed with the input split at every byte boundary.
#include "protocol/pg/framer.hpp"

#include <catch2/catch.hpp>

#include "protocol/pg/messages.hpp"
#include "protocol/pg/scanner.hpp"
#include "split.hpp"

using namespace sluice;
using namespace sluice::pg;
using sluice::test::frames_split;

TEST_CASE("startup and typed frames survive every split point") {
  Buffer stream;
  encode_startup_message(stream, {{"user", "app"}, {"database", "appdb"}});
  encode_query(stream, "SELECT 1");
  encode_terminate(stream);
  auto whole = frames_split(stream, stream.size(), true);
  REQUIRE(whole.size() == 3);
  CHECK(whole[0].first == 0);
  CHECK(whole[1] == std::pair<char, std::string>{'Q', std::string("SELECT 1\0", 9)});
  CHECK(whole[2] == std::pair<char, std::string>{'X', ""});
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    INFO("cut at " << cut);
    CHECK(frames_split(stream, cut, true) == whole);
  }
}

TEST_CASE("lengths are capped before anything is allocated") {
  SECTION("startup length 2^31-1") {
    Buffer b{0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0};
    auto r = next_startup_frame(b);
    REQUIRE(std::holds_alternative<FrameFailure>(r));
    CHECK(std::get<FrameFailure>(r).error == FrameError::kLengthTooLarge);
  }
  SECTION("startup length below the minimum") {
    Buffer b{0, 0, 0, 4};
    CHECK(std::get<FrameFailure>(next_startup_frame(b)).error == FrameError::kLengthTooSmall);
  }
  SECTION("typed message over the configured maximum") {
    Buffer b{'Q', 0, 0x10, 0, 1};
    CHECK(std::get<FrameFailure>(next_frame(b, 1 << 20)).error == FrameError::kLengthTooLarge);
    CHECK(std::holds_alternative<NeedMore>(next_frame(b, 1 << 21)));
  }
  SECTION("typed message length below 4") {
    Buffer b{'Q', 0, 0, 0, 3};
    CHECK(std::get<FrameFailure>(next_frame(b)).error == FrameError::kLengthTooSmall);
  }
}

TEST_CASE("scanner passes bodies through and stops at inspected messages, at every split") {
  Buffer stream;
  encode_parameter_status(stream, "TimeZone", "UTC");
  // A DataRow-like message bigger than any split piece.
  bytes::Writer w(stream);
  auto at = w.begin_message('D');
  for (int i = 0; i < 300; ++i) w.u8(static_cast<std::uint8_t>(i));
  w.end_message(at);
  encode_query(stream, "x");
  encode_ready_for_query(stream, 'T');
  constexpr WantTable kWant = make_want_table({'Z', 'S'});

  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    INFO("cut at " << cut);
    MessageScanner scanner(kMaxMessageLength);
    Buffer have;
    std::size_t fed = 0;
    std::size_t forwarded = 0;
    std::string seen;
    int passed = 0;
    for (std::size_t upto : {cut, stream.size()}) {
      have.insert(have.end(), stream.begin() + static_cast<long>(fed),
                  stream.begin() + static_cast<long>(upto));
      fed = upto;
      for (;;) {
        auto stop = scanner.scan(have, kWant, [&](const Header&) { ++passed; });
        std::size_t consumed = stop.offset;
        if (stop.kind == MessageScanner::Stop::kInspect) {
          seen.push_back(stop.frame.type);
          consumed += stop.frame.size;
        }
        forwarded += consumed;
        have.erase(have.begin(), have.begin() + static_cast<long>(consumed));
        if (stop.kind != MessageScanner::Stop::kInspect) break;
      }
    }
    CHECK(seen == "SZ");
    CHECK(passed == 2);
    CHECK(forwarded == stream.size());
    CHECK_FALSE(scanner.mid_message());
  }
}

TEST_CASE("scanner reports a bad length without consuming it") {
  Buffer stream;
  encode_query(stream, "ok");
  std::size_t good = stream.size();
  stream.insert(stream.end(), {'Q', 0x7f, 0xff, 0xff, 0xff});
  MessageScanner scanner(1 << 20);
  auto stop = scanner.scan(stream, make_want_table({}), [](const Header&) {});
  CHECK(stop.kind == MessageScanner::Stop::kError);
  CHECK(stop.offset == good);
}

TEST_CASE("frame cursor walks whole messages and says what the next one lacks, at every cut") {
  Buffer stream;
  encode_query(stream, "SELECT 1");   // 14 bytes
  encode_empty_message(stream, 'S');  // 5 bytes
  encode_query(stream, "SELECT 22");  // 15 bytes
  for (std::size_t cut = 0; cut <= stream.size(); ++cut) {
    INFO("cut at " << cut);
    FrameCursor c(Span(stream.data(), cut));
    std::string types;
    while (auto f = c.next()) types.push_back(f->type);
    const std::size_t ends[] = {14, 19, 34};
    std::size_t whole = 0;
    for (auto e : ends) whole += cut >= e ? 1 : 0;
    CHECK(types == std::string("QSQ").substr(0, whole));
    const std::size_t offset = whole == 0 ? 0 : ends[whole - 1];
    CHECK(c.offset() == offset);
    CHECK_FALSE(c.failure().has_value());
    const std::size_t have = cut - offset;
    if (whole == 3) {
      CHECK(c.need() == kHeaderSize);  // on a boundary: a header's worth
      CHECK(c.partial_size() == 0);
    } else if (have < kHeaderSize) {
      CHECK(c.need() == kHeaderSize - have);
      CHECK(c.partial_size() == 0);
    } else {
      const std::size_t size = (whole == 0 ? 14 : whole == 1 ? 5 : 15);
      CHECK(c.partial_size() == size);
      CHECK(c.need() == size - have);
    }
  }
}

TEST_CASE("frame cursor stops at a bad length and reports it") {
  Buffer stream;
  encode_empty_message(stream, 'S');
  const std::uint8_t bad[] = {'Q', 0, 0, 0, 3};  // a length below 4
  stream.insert(stream.end(), std::begin(bad), std::end(bad));
  FrameCursor c(stream);
  auto first = c.next();
  REQUIRE(first);
  CHECK(first->type == 'S');
  CHECK_FALSE(c.next());
  REQUIRE(c.failure());
  CHECK(c.failure()->error == FrameError::kLengthTooSmall);
  CHECK(c.failure()->declared_length == 3);
  CHECK(c.offset() == 5);
  CHECK_FALSE(c.next());  // stays stopped
  Buffer big;
  encode_query(big, std::string(200, 'x'));
  FrameCursor too_large(big, 100);
  CHECK_FALSE(too_large.next());
  REQUIRE(too_large.failure());
  CHECK(too_large.failure()->error == FrameError::kLengthTooLarge);
}
