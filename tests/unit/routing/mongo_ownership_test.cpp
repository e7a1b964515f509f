// MongoDB cursor, session and transaction-pin ownership, with time passed in.
#include "routing/mongo_ownership.hpp"

#include <catch2/catch.hpp>

namespace rm = sluice::routing::mongo;
using namespace std::chrono_literals;
using Clock = rm::Clock;

namespace {
const Clock::time_point t0 = Clock::time_point{} + 1000h;

rm::CursorOwner owner(std::string address, std::int64_t conn, std::string lsid = {}) {
  return rm::CursorOwner{std::move(address), {}, conn, std::move(lsid)};
}
}  // namespace

TEST_CASE("a cursor belongs to its server, its connection and its session",
          "[routing][mongo][ownership]") {
  rm::Ownership own;
  own.note_cursor(42, owner("a:27017", 1, "L1"), t0);
  auto got = own.cursor_owner(42, t0 + 1s);
  REQUIRE(got);
  CHECK(got->address == "a:27017");
  CHECK(got->connection == 1);
  CHECK(got->used == t0 + 1s);  // a lookup is a use
  CHECK(got->allows(1, ""));    // the connection that opened it
  CHECK(got->allows(2, "L1"));  // another connection presenting its session
  CHECK_FALSE(got->allows(2, "L2"));
  CHECK_FALSE(got->allows(2, ""));
  CHECK_FALSE(own.cursor_owner(43, t0));
  CHECK(own.cursor_count() == 1);
  own.forget_cursor(42);
  CHECK_FALSE(own.cursor_owner(42, t0));
  CHECK(own.cursor_count() == 0);
}

TEST_CASE("a cursor opened without a session is another client's for every other connection",
          "[routing][mongo][ownership]") {
  rm::Ownership own;
  own.note_cursor(7, owner("a:27017", 1), t0);
  auto got = own.cursor_owner(7, t0);
  REQUIRE(got);
  CHECK(got->allows(1, "L1"));
  CHECK_FALSE(got->allows(2, ""));  // an empty lsid matches no session
  CHECK_FALSE(got->allows(2, "L1"));
}

TEST_CASE("idle cursors, pins and sessions expire by the time passed in",
          "[routing][mongo][ownership]") {
  rm::Ownership own;
  own.note_cursor(1, owner("a:1", 1), t0);
  own.note_cursor(2, owner("a:1", 1), t0);
  own.set_pin("L1", rm::Pin{"a:1", {}, {}}, t0);
  own.claim_session("L1", 1, t0);
  CHECK(own.cursor_count() == 2);
  CHECK(own.pin_count() == 1);
  CHECK(own.session_count() == 1);

  own.prune(t0 + 30s);  // within a minute of the last prune: nothing is looked at
  CHECK(own.cursor_count() == 2);

  REQUIRE(own.cursor_owner(2, t0 + 5min));  // used: its 10 minutes start again
  own.prune(t0 + 10min + 1s);
  CHECK_FALSE(own.cursor_owner(1, t0 + 10min + 1s));  // idle 10 minutes: gone
  CHECK(own.cursor_owner(2, t0 + 10min + 1s));
  CHECK(own.pin_count() == 0);      // pins go after 2 idle minutes
  CHECK(own.session_count() == 1);  // sessions after 30

  own.prune(t0 + 30min + 1s);
  CHECK(own.session_count() == 0);
  CHECK(own.cursor_count() == 0);  // cursor 2 was last used at 10 min 1 s
}

TEST_CASE("a pin is kept while it is used", "[routing][mongo][ownership]") {
  rm::Ownership own;
  own.set_pin("L1", rm::Pin{"a:1", {}, {}}, t0);
  REQUIRE(own.pin("L1", t0 + 90s));
  own.prune(t0 + 3min);  // idle 90 s only
  auto p = own.pin("L1", t0 + 3min);
  REQUIRE(p);
  CHECK(p->address == "a:1");
  CHECK(p->used == t0 + 3min);
  own.prune(t0 + 5min + 1s);
  CHECK_FALSE(own.pin("L1", t0 + 5min + 1s));
}

TEST_CASE("a session is ended only by its first connection while that one is open",
          "[routing][mongo][ownership]") {
  rm::Ownership own;
  own.connection_opened(1);
  own.connection_opened(2);
  CHECK(own.may_end_session("L1", 2));  // unknown sessions: anyone may end them
  own.claim_session("L1", 1, t0);
  own.claim_session("L1", 2, t0 + 1s);  // a second connection does not take it over
  CHECK(own.may_end_session("L1", 1));
  CHECK_FALSE(own.may_end_session("L1", 2));

  own.connection_closed(1);  // its first connection is gone: any connection may end it
  CHECK(own.may_end_session("L1", 2));
  CHECK(own.may_end_session("L1", 3));
  own.claim_session("L1", 2, t0 + 2s);  // and the next to present it adopts it
  own.connection_opened(3);
  CHECK(own.may_end_session("L1", 2));
  CHECK_FALSE(own.may_end_session("L1", 3));
  CHECK_FALSE(own.may_end_session("L1", 1));

  own.forget_session("L1");
  CHECK(own.session_count() == 0);
  CHECK(own.may_end_session("L1", 3));
}

TEST_CASE("a closed connection's cursors stay reachable through their session only",
          "[routing][mongo][ownership]") {
  rm::Ownership own;
  own.connection_opened(1);
  own.note_cursor(9, owner("a:1", 1, "L1"), t0);
  own.claim_session("L1", 1, t0);
  own.connection_closed(1);
  auto got = own.cursor_owner(9, t0);
  REQUIRE(got);
  CHECK(got->allows(2, "L1"));
  CHECK_FALSE(got->allows(2, "L2"));
  CHECK(own.may_end_session("L1", 2));
}

TEST_CASE("a transaction pin collects its writes once each and is taken at its end",
          "[routing][mongo][ownership]") {
  rm::Ownership own;
  own.add_pin_writes("L1", "db", "a");  // no pin: nothing is recorded
  CHECK(own.pin_count() == 0);
  own.set_pin("L1", rm::Pin{"p:1", {}, {}}, t0);
  own.add_pin_writes("L1", "db", "a");
  own.add_pin_writes("L1", "db", "b");
  own.add_pin_writes("L1", "db", "a");
  auto p = own.pin("L1", t0);
  REQUIRE(p);
  CHECK(p->writes == std::vector<std::pair<std::string, std::string>>{{"db", "a"}, {"db", "b"}});

  auto taken = own.take_pin("L1");
  REQUIRE(taken);
  CHECK(taken->address == "p:1");
  CHECK(taken->writes.size() == 2);
  CHECK_FALSE(own.pin("L1", t0));
  CHECK_FALSE(own.take_pin("L1"));
  CHECK(own.pin_count() == 0);
}

TEST_CASE("each map is bounded", "[routing][mongo][ownership]") {
  rm::Ownership own(2);
  own.note_cursor(1, owner("a:1", 1), t0);
  own.note_cursor(2, owner("a:1", 1), t0);
  own.note_cursor(3, owner("a:1", 1), t0);
  CHECK(own.cursor_count() == 2);
  CHECK(own.cursor_owner(3, t0));  // the newest is kept
  own.set_pin("L1", rm::Pin{"a:1", {}, {}}, t0);
  own.set_pin("L2", rm::Pin{"a:1", {}, {}}, t0);
  own.set_pin("L3", rm::Pin{"a:1", {}, {}}, t0);
  CHECK(own.pin_count() == 2);
  CHECK(own.pin("L3", t0));
  own.claim_session("L1", 1, t0);
  own.claim_session("L2", 1, t0);
  own.claim_session("L3", 1, t0);
  CHECK(own.session_count() == 2);
}
