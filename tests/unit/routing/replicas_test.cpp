// Replica bans, lag, read-your-writes and read-consistency positions, load balancing, with
// time passed in.
#include "routing/replicas.hpp"

#include <catch2/catch.hpp>
#include <map>

#include "routing/positions.hpp"

using namespace sluice::routing;
using namespace std::chrono_literals;
using Clock = ReplicaSet::Clock;

namespace {
ReplicaCheck healthy(Lsn replay) {
  ReplicaCheck c;
  c.ok = true;
  c.in_recovery = true;
  c.replay_lsn = replay;
  return c;
}
const Clock::time_point t0 = Clock::time_point{} + 1000h;
}  // namespace

TEST_CASE("LSNs parse and print like PostgreSQL's pg_lsn") {
  CHECK(parse_lsn("0/16B3748") == Lsn{0x16B3748});
  CHECK(parse_lsn("16/B374D848") == Lsn{0x16B374D848});
  CHECK(parse_lsn("FFFFFFFF/FFFFFFFF") == Lsn{0xFFFFFFFFFFFFFFFF});
  CHECK_FALSE(parse_lsn("16B374D848"));
  CHECK_FALSE(parse_lsn("/1"));
  CHECK_FALSE(parse_lsn("1/"));
  CHECK_FALSE(parse_lsn("1/2x"));
  CHECK_FALSE(parse_lsn("123456789/1"));
  CHECK(format_lsn(0x16B374D848) == "16/B374D848");
  CHECK(format_lsn(0) == "0/0");
}

TEST_CASE("a replica is usable after a healthy check, banned on failure until ban_time passes") {
  RoutingPolicy p;
  p.ban_time = 5s;
  ReplicaSet set({{"r1:5432", 1}}, p);
  CHECK(set.pick(0, t0).node == ReplicaSet::kPrimary);  // never checked: not used
  set.primary_sample(t0, 100);
  set.replica_checked("r1:5432", t0, healthy(100));
  auto pick = set.pick(0, t0);
  CHECK(pick.node == 0);
  set.finished(pick.node);

  set.report_failure("r1:5432", t0 + 1s, "connection refused");
  auto banned = set.pick(0, t0 + 1s);
  CHECK(banned.node == ReplicaSet::kPrimary);
  CHECK_FALSE(banned.behind);
  set.finished(banned.node);
  auto st = set.status(t0 + 1s);
  CHECK(st[0].banned);
  CHECK(st[0].reason == "connection refused");
  CHECK(st[0].bans == 1);

  set.replica_checked("r1:5432", t0 + 2s, healthy(100));  // passes, but not for ban_time yet
  CHECK(set.pick(0, t0 + 2s).node == ReplicaSet::kPrimary);
  set.replica_checked("r1:5432", t0 + 6s + 1ms, healthy(100));
  CHECK(set.pick(0, t0 + 6s + 1ms).node == 0);
  CHECK(set.status(t0 + 7s)[0].bans == 1);
}

TEST_CASE("not in recovery, failing checks and lag ban a replica") {
  RoutingPolicy p;
  p.max_lag_bytes = 1000;
  p.max_lag_seconds = 2;
  ReplicaSet set({{"r1", 1}}, p);
  set.primary_sample(t0, 100);
  auto promoted = healthy(100);
  promoted.in_recovery = false;
  set.replica_checked("r1", t0, promoted);
  CHECK(set.status(t0)[0].banned);
  CHECK(set.status(t0)[0].reason.find("not in recovery") != std::string::npos);

  ReplicaSet bytes({{"r1", 1}}, p);
  bytes.primary_sample(t0, 5000);
  bytes.replica_checked("r1", t0, healthy(3000));
  CHECK(bytes.status(t0)[0].banned);
  CHECK(bytes.status(t0)[0].lag_bytes == 2000);

  // Lag in seconds: the age of the oldest primary WAL the replica has not replayed.
  ReplicaSet secs({{"r1", 1}}, p);
  secs.primary_sample(t0, 100);
  secs.replica_checked("r1", t0, healthy(100));
  secs.primary_sample(t0 + 1s, 200);  // a write the replica has not replayed...
  secs.replica_checked("r1", t0 + 1s, healthy(100));
  CHECK_FALSE(secs.status(t0 + 1s)[0].banned);
  secs.primary_sample(t0 + 4s, 300);
  secs.replica_checked("r1", t0 + 4s, healthy(100));  // ...for 3 s now
  auto st = secs.status(t0 + 4s);
  CHECK(st[0].banned);
  CHECK(st[0].lag_seconds == Approx(3.0));
  CHECK(st[0].reason.find("max_replica_lag_seconds") != std::string::npos);

  ReplicaCheck down;
  down.error = "no response";
  ReplicaSet dead({{"r1", 1}}, p);
  dead.replica_checked("r1", t0, down);
  CHECK(dead.status(t0)[0].banned);
  CHECK(dead.status(t0)[0].reason == "no response");
}

TEST_CASE("read-your-writes: only replicas that replayed the client's LSN, else the primary") {
  ReplicaSet set({{"r1", 1}, {"r2", 1}}, RoutingPolicy{});
  set.primary_sample(t0, 500);
  set.replica_checked("r1", t0, healthy(300));
  set.replica_checked("r2", t0, healthy(500));
  for (int i = 0; i < 4; ++i) {
    auto p = set.pick(400, t0);
    CHECK(p.node == 1);
    set.finished(p.node);
  }
  auto behind = set.pick(600, t0);
  CHECK(behind.node == ReplicaSet::kPrimary);
  CHECK(behind.behind);
  set.finished(behind.node);
}

TEST_CASE("read consistency: a replica short of the position may be asked; fresher positions") {
  ReplicaSet set({{"r1", 1}, {"r2", 1}}, RoutingPolicy{});
  set.primary_sample(t0, 500);
  set.replica_checked("r1", t0, healthy(300));
  set.replica_checked("r2", t0, healthy(350));
  auto primary = set.pick(400, t0, 0, false);
  CHECK(primary.node == ReplicaSet::kPrimary);
  CHECK(primary.behind);
  CHECK_FALSE(primary.wait);
  set.finished(primary.node);
  auto ask = set.pick(400, t0, 0, true);
  CHECK(ask.node >= 0);
  CHECK(ask.wait);
  CHECK_FALSE(ask.behind);
  set.finished(ask.node);
  // A session read r1's position on its own connection: r1 serves at once, r2 is still short.
  set.replayed(0, 420);
  set.replayed(0, 410);  // positions only grow
  for (int i = 0; i < 3; ++i) {
    auto p = set.pick(400, t0, 0, true);
    CHECK(p.node == 0);
    CHECK_FALSE(p.wait);
    set.finished(p.node);
  }
  CHECK(set.pick(415, t0, 0, true).node == 0);
  set.finished(0);
  // Every replica banned: no waiting, the primary.
  set.report_failure("r1", t0, "x");
  set.report_failure("r2", t0, "x");
  auto banned = set.pick(400, t0, 0, true);
  CHECK(banned.node == ReplicaSet::kPrimary);
  CHECK_FALSE(banned.wait);
}

TEST_CASE("WAL positions: readings after a moment, per-relation commit marks") {
  WalPositions w;
  const auto t = WalPositions::Clock::time_point{} + 1000h;
  CHECK_FALSE(w.readable("db"));
  CHECK_FALSE(w.primary_since("db", t));
  w.primary_read("db", t, 100);
  CHECK(w.readable("db"));
  CHECK(w.primary_since("db", t) == Lsn{100});
  CHECK_FALSE(w.primary_since("db", t + 1ms));  // begun before the commit: not proof
  w.primary_read("db", t - 1s, 90);             // an older reading finishing late
  CHECK(w.primary_last("db") == 100);
  w.primary_read("db", t + 2ms, 130);
  CHECK(w.primary_since("db", t + 1ms) == Lsn{130});

  CHECK(w.mark("db", std::vector<std::uint32_t>{1, 2}) == 0);
  w.committed("db", 200, {1});
  w.committed("db", 150, {1, 2});
  CHECK(w.mark("db", std::vector<std::uint32_t>{1}) == 200);
  CHECK(w.mark("db", std::vector<std::uint32_t>{2}) == 150);
  CHECK(w.mark("db", std::vector<std::uint32_t>{3}) == 0);  // never written: no wait
  CHECK(w.mark("db", std::nullopt) == 200);                 // relations unknown: the latest
  w.committed("db", 250, {}, true);                         // wrote who knows what
  CHECK(w.mark("db", std::vector<std::uint32_t>{3}) == 250);
  CHECK(w.mark("other", std::nullopt) == 0);
}

TEST_CASE("load balancing: weighted round robin, least outstanding, primary_reads") {
  RoutingPolicy p;
  ReplicaSet rr({{"a", 1}, {"b", 3}}, p);
  rr.primary_sample(t0, 1);
  rr.replica_checked("a", t0, healthy(1));
  rr.replica_checked("b", t0, healthy(1));
  std::map<int, int> n;
  for (int i = 0; i < 400; ++i) {
    auto pick = rr.pick(0, t0);
    ++n[pick.node];
    rr.finished(pick.node);
  }
  CHECK(n[0] == 100);
  CHECK(n[1] == 300);

  p.balance = RoutingPolicy::Balance::kLeastOutstanding;
  ReplicaSet lo({{"a", 1}, {"b", 1}}, p);
  lo.replica_checked("a", t0, healthy(1));
  lo.replica_checked("b", t0, healthy(1));
  auto first = lo.pick(0, t0, 0);
  auto second = lo.pick(0, t0, 0);  // the other one: the first has a request outstanding
  CHECK(first.node != second.node);
  lo.finished(first.node);
  CHECK(lo.pick(0, t0, 0).node == first.node);

  p.balance = RoutingPolicy::Balance::kRoundRobin;
  p.primary_reads = RoutingPolicy::PrimaryReads::kInclude;
  ReplicaSet inc({{"a", 1}}, p);
  inc.replica_checked("a", t0, healthy(1));
  std::map<int, int> m;
  for (int i = 0; i < 10; ++i) {
    auto pick = inc.pick(0, t0);
    ++m[pick.node];
    inc.finished(pick.node);
  }
  CHECK(m[0] == 5);
  CHECK(m[ReplicaSet::kPrimary] == 5);
}

TEST_CASE("every replica banned: the primary, or a refusal when the policy says error") {
  RoutingPolicy p;
  ReplicaSet set({{"a", 1}}, p);
  set.report_failure("a", t0, "down");
  CHECK(set.pick(0, t0).node == ReplicaSet::kPrimary);
  p.error_when_all_banned = true;
  ReplicaSet strict({{"a", 1}}, p);
  strict.report_failure("a", t0, "down");
  CHECK(strict.pick(0, t0).refused);
  p.error_when_all_banned = false;
  p.primary_reads = RoutingPolicy::PrimaryReads::kExclude;
  ReplicaSet exclude({{"a", 1}}, p);
  exclude.report_failure("a", t0, "down");
  CHECK(exclude.pick(0, t0).refused);
}

TEST_CASE("the catalog: missing or stale (DDL seen) means every call may write") {
  ReplicaSet set({{"a", 1}}, RoutingPolicy{});
  std::vector<FunctionRef> lower{{"", "lower"}};
  CHECK(set.may_write(lower));  // not fetched yet
  CHECK_FALSE(set.may_write({}));
  auto c = std::make_shared<FunctionCatalog>();
  c->add("pg_catalog", "lower", 'i');
  set.set_catalog(c);
  CHECK_FALSE(set.may_write(lower));
  CHECK_FALSE(set.catalog_wanted(Clock::now(), 60s));
  set.catalog_changed();
  CHECK(set.may_write(lower));
  CHECK(set.catalog_wanted(Clock::now(), 60s));
  // A fetch asked for before a DDL may not have it: still stale once it lands.
  set.catalog_changed();  // (the fetch asked for above is older than this)
  set.set_catalog(c);
  CHECK(set.may_write(lower));
  CHECK(set.catalog_wanted(Clock::now(), 60s));  // asked again: this fetch has the change
  set.set_catalog(c);
  CHECK_FALSE(set.may_write(lower));
}

TEST_CASE("a reload keeps what is known of replicas still configured") {
  ReplicaSet old({{"a", 1}, {"b", 1}}, RoutingPolicy{});
  old.report_failure("a", t0, "down");
  old.replica_checked("b", t0, healthy(7));
  ReplicaSet next({{"b", 2}, {"c", 1}}, RoutingPolicy{});
  next.adopt(old);
  auto st = next.status(t0);
  CHECK(st[0].address == "b");
  CHECK(st[0].weight == 2);
  CHECK(st[0].replay_lsn == Lsn{7});
  CHECK_FALSE(st[0].banned);
  CHECK(st[1].banned);  // c: never checked
}
