// The client session's state table and relay outcomes (server/pg/phase.hpp).
#include "server/pg/phase.hpp"

#include <catch2/catch.hpp>

using sluice::server::ClientState;
using namespace sluice::server::pgsession;

namespace {

constexpr Phase kAll[] = {Phase::kStartup, Phase::kAuthenticating, Phase::kIdle,
                          Phase::kParked,  Phase::kWaiting,        Phase::kRelaying,
                          Phase::kCopy,    Phase::kDraining,       Phase::kClosing};

}  // namespace

TEST_CASE("a pooled client's life: login, idle, park, checkout, relay, copy, drain, close") {
  const Phase path[] = {
      Phase::kStartup,  Phase::kAuthenticating, Phase::kWaiting,  Phase::kRelaying,
      Phase::kDraining, Phase::kIdle,           Phase::kParked,   Phase::kIdle,
      Phase::kRelaying, Phase::kCopy,           Phase::kRelaying, Phase::kDraining,
      Phase::kIdle,     Phase::kWaiting,        Phase::kIdle,     Phase::kClosing};
  for (std::size_t i = 1; i < std::size(path); ++i) {
    INFO(to_string(path[i - 1]) << " -> " << to_string(path[i]));
    CHECK(may_enter(path[i - 1], path[i]));
  }
}

TEST_CASE("every state may close; nothing leaves closing; staying is allowed") {
  for (auto p : kAll) {
    INFO(to_string(p));
    CHECK(may_enter(p, Phase::kClosing));
    CHECK(may_enter(p, p));
    if (p != Phase::kClosing) CHECK_FALSE(may_enter(Phase::kClosing, p));
  }
}

TEST_CASE("transitions that would be bugs are refused") {
  // A parked client has no server and no coroutine: it must wake (idle) before anything else.
  CHECK_FALSE(may_enter(Phase::kParked, Phase::kRelaying));
  CHECK_FALSE(may_enter(Phase::kParked, Phase::kWaiting));
  // A server connection is drained only after it relayed; draining always ends idle.
  CHECK_FALSE(may_enter(Phase::kIdle, Phase::kDraining));
  CHECK_FALSE(may_enter(Phase::kDraining, Phase::kRelaying));
  CHECK_FALSE(may_enter(Phase::kDraining, Phase::kParked));
  // Parking while a server is attached would strand it.
  CHECK_FALSE(may_enter(Phase::kRelaying, Phase::kParked));
  CHECK_FALSE(may_enter(Phase::kCopy, Phase::kIdle));
  // Nobody goes back to login.
  CHECK_FALSE(may_enter(Phase::kIdle, Phase::kAuthenticating));
  CHECK_FALSE(may_enter(Phase::kRelaying, Phase::kStartup));
  CHECK_FALSE(may_enter(Phase::kStartup, Phase::kIdle));  // authentication is never skipped
  // The whole table: count what is allowed, so an added edge is a decision made here.
  int allowed = 0;
  for (auto from : kAll) {
    for (auto to : kAll) allowed += (from != to && may_enter(from, to)) ? 1 : 0;
  }
  CHECK(allowed == 25);
}

TEST_CASE("what SHOW CLIENTS shows of each state") {
  CHECK(shown_as(Phase::kStartup) == ClientState::kLogin);
  CHECK(shown_as(Phase::kAuthenticating) == ClientState::kLogin);
  CHECK(shown_as(Phase::kWaiting) == ClientState::kWaiting);
  for (auto p : {Phase::kIdle, Phase::kParked, Phase::kRelaying, Phase::kCopy, Phase::kDraining,
                 Phase::kClosing})
    CHECK(shown_as(p) == ClientState::kActive);
}

TEST_CASE("relay outcomes: a literal ends the session, kGoOn decides nothing") {
  Outcome none;
  CHECK_FALSE(static_cast<bool>(none));
  CHECK(none.is(Next::kGoOn));
  Outcome end = "client disconnected";
  CHECK(static_cast<bool>(end));
  CHECK(end.is(Next::kEnd));
  CHECK(std::string_view(end.why) == "client disconnected");
  Outcome released = Next::kReleased;
  CHECK(static_cast<bool>(released));
  CHECK(released.is(Next::kReleased));
  CHECK_FALSE(released.is(Next::kEnd));
  CHECK(std::string_view(released.why).empty());
}
