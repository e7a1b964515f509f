// Roles of a database's hosts from their health checks: promotion, revocation, fencing, rejoin.
#include "routing/topology.hpp"

#include <catch2/catch.hpp>

using namespace sluice::routing;

namespace {
HostCheck writable(const std::string& address, std::uint32_t timeline) {
  return {address, true, false, timeline, {}};
}
HostCheck standby(const std::string& address) {
  return {address, true, true, std::nullopt, {}};
}
HostCheck down(const std::string& address) {
  return {address, false, false, std::nullopt, "connection refused"};
}
HostRole role(const Topology& t, std::size_t i) {
  return t.hosts().at(i).role;
}
}  // namespace

TEST_CASE("a writable host is the primary and hosts in recovery are replicas") {
  Topology t({"a:1", "b:2"});
  CHECK_FALSE(t.primary());  // nothing known before the first round
  auto log = t.update({writable("a:1", 1), standby("b:2")});
  REQUIRE(t.primary() == 0u);
  CHECK(t.replicas() == std::vector<std::size_t>{1});
  REQUIRE(log.size() == 2);
  CHECK(log[0] == "host b:2: found replica (in recovery)");  // replicas, then the election
  CHECK(log[1] == "host a:1: found primary (writable, timeline 1)");
  CHECK(t.role_changes() == 0);                                   // found, not changed
  CHECK(t.update({writable("a:1", 1), standby("b:2")}).empty());  // nothing changed
}

TEST_CASE("a failed check revokes the primary; a promoted standby takes over") {
  Topology t({"a:1", "b:2"});
  t.update({writable("a:1", 1), standby("b:2")});
  t.update({down("a:1"), standby("b:2")});
  CHECK_FALSE(t.primary());  // writes wait: unknown is not "still primary"
  CHECK(t.role_changes() == 1);
  CHECK(role(t, 0) == HostRole::kUnknown);
  CHECK(t.hosts()[0].error == "connection refused");
  t.update({down("a:1"), writable("b:2", 2)});
  REQUIRE(t.primary() == 1u);
  CHECK(t.replicas().empty());
  SECTION("the old primary back on its old timeline is fenced, not elected") {
    auto log = t.update({writable("a:1", 1), writable("b:2", 2)});
    CHECK(t.primary() == 1u);
    CHECK(role(t, 0) == HostRole::kFenced);
    REQUIRE(log.size() == 1);
    CHECK(log[0].find("unknown -> fenced") != std::string::npos);
    CHECK(log[0].find("timeline 1, older than timeline 2 of b:2") != std::string::npos);
    SECTION("and stays fenced when the new primary fails") {
      t.update({writable("a:1", 1), down("b:2")});
      CHECK_FALSE(t.primary());
      CHECK(role(t, 0) == HostRole::kFenced);
    }
    SECTION("until it is rebuilt as a standby: then it is a replica") {
      t.update({standby("a:1"), writable("b:2", 2)});
      CHECK(role(t, 0) == HostRole::kReplica);
      CHECK(t.replicas() == std::vector<std::size_t>{0});
      CHECK(t.fenced().empty());
    }
  }
}

TEST_CASE("split brain: the newest timeline wins whoever was primary") {
  Topology t({"a:1", "b:2"});
  t.update({writable("a:1", 1), standby("b:2")});
  t.update({writable("a:1", 1), writable("b:2", 2)});  // b promoted, a still running
  CHECK(t.primary() == 1u);
  CHECK(t.fenced() == std::vector<std::size_t>{0});
  CHECK(t.hosts()[0].why.find("older than timeline 2") != std::string::npos);
}

TEST_CASE("two writable hosts on one timeline: the incumbent keeps it, else nobody") {
  Topology t({"a:1", "b:2"});
  t.update({writable("a:1", 3)});
  t.update({writable("a:1", 3), writable("b:2", 3)});
  CHECK(t.primary() == 0u);
  CHECK(role(t, 1) == HostRole::kFenced);

  Topology fresh({"a:1", "b:2"});
  fresh.update({writable("a:1", 3), writable("b:2", 3)});
  CHECK_FALSE(fresh.primary());
  CHECK(fresh.fenced().size() == 2);
}

TEST_CASE("a replica whose check fails stays a replica; hosts without a check keep their role") {
  Topology t({"a:1", "b:2", "c:3"});
  t.update({writable("a:1", 1), standby("b:2"), standby("c:3")});
  t.update({writable("a:1", 1), down("b:2")});
  CHECK(t.replicas() == std::vector<std::size_t>{1, 2});
  CHECK(t.hosts()[1].error == "connection refused");
}

TEST_CASE("a reload keeps what is known of the hosts still listed") {
  Topology old({"a:1", "b:2"});
  old.update({down("a:1"), writable("b:2", 2)});
  Topology next({"b:2", "c:3"});
  next.adopt(old);
  CHECK(next.primary() == 0u);
  CHECK(next.newest_timeline() == 2);
  CHECK(role(next, 1) == HostRole::kUnknown);
}
