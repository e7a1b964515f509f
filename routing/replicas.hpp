// Read routing for one database: the health of its replicas (bans, lag, replay position), the
// load-balancing policy, and the choice of a node for a read. Pure and thread-safe; the monitor
// feeds it check results and sessions report failures and ask for picks. Time is passed in.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "routing/classify.hpp"

namespace sluice::routing {

using Lsn = std::uint64_t;
// "16/B374D848" → 0x16B374D848; nullopt when malformed.
std::optional<Lsn> parse_lsn(std::string_view text);
std::string format_lsn(Lsn lsn);

struct RoutingPolicy {
  using Balance = config::Routing::Balance;
  using PrimaryReads = config::Routing::PrimaryReads;
  Balance balance = Balance::kRoundRobin;
  PrimaryReads primary_reads = PrimaryReads::kFallbackOnly;
  bool error_when_all_banned = false;  // else reads go to the primary
  std::uint64_t max_lag_bytes = 0;     // 0 = no limit
  double max_lag_seconds = 0;          // 0 = no limit
  std::chrono::steady_clock::duration ban_time = std::chrono::seconds(10);
  std::uint32_t primary_weight = 1;
};

// One health check of a replica, as the monitor saw it.
struct ReplicaCheck {
  bool ok = false;  // connected and queried
  std::string error;
  bool in_recovery = false;
  std::optional<Lsn> replay_lsn;
};

// What SHOW REPLICAS, /status and the metrics show of one replica.
struct ReplicaStatus {
  std::string address;
  std::uint32_t weight = 1;
  bool checked = false;
  bool banned = false;
  std::string reason;  // why it is (or was last) banned
  bool in_recovery = false;
  std::optional<Lsn> replay_lsn;
  std::uint64_t lag_bytes = 0;
  double lag_seconds = 0;
  std::uint64_t bans = 0;  // times it was banned
  double banned_for_seconds = 0;
  std::uint32_t outstanding = 0;  // client requests on it now
  std::uint64_t reads = 0;        // transactions routed to it
};

class ReplicaSet {
 public:
  using Clock = std::chrono::steady_clock;
  struct Node {
    std::string address;  // host:port, as the pool and the monitor name it
    std::uint32_t weight = 1;
  };
  ReplicaSet(std::vector<Node> replicas, RoutingPolicy policy);

  // ---- the monitor ----
  // The primary's current WAL position, sampled before the replicas are checked.
  void primary_sample(Clock::time_point now, std::optional<Lsn> lsn);
  void replica_checked(std::string_view address, Clock::time_point now, const ReplicaCheck& c);
  // Keeps what is known of replicas that are still configured (after a reload).
  void adopt(const ReplicaSet& old);

  // ---- sessions ----
  // A client's connection to the replica failed: banned at once.
  void report_failure(std::string_view address, Clock::time_point now, std::string why);
  static constexpr int kPrimary = -1;
  struct Pick {
    int node = kPrimary;   // a replica index, or kPrimary
    bool refused = false;  // no node may serve the read (policy says error)
    bool behind = false;   // the primary because replicas lag behind `min_lsn`
    bool wait = false;     // a replica whose last known position is short of `min_lsn`
  };
  // A node for a read by a client that must see everything up to `min_lsn` (0 = anything).
  // When no replica is known to be there yet: the primary, or with `may_wait` a replica the
  // caller asks (and waits for) before it reads there.
  Pick pick(Lsn min_lsn, Clock::time_point now, std::uint64_t random = 0, bool may_wait = false);
  // A session read a replica's replay position on its own connection: fresher than the
  // monitor's (positions only grow).
  void replayed(int node, Lsn lsn);
  void finished(int node);  // a pick's request is done (least-outstanding)
  const std::string& address(int node) const {
    return nodes_.at(static_cast<std::size_t>(node)).address;
  }
  std::size_t size() const { return nodes_.size(); }
  const RoutingPolicy& policy() const { return policy_; }

  // ---- function volatility (from the primary's catalog) ----
  void set_catalog(std::shared_ptr<const FunctionCatalog> catalog);
  // DDL seen through sluice may have changed volatility: every call counts as writing until the
  // catalog is fetched again.
  void catalog_changed();
  bool catalog_wanted(Clock::time_point now, Clock::duration refresh) const;
  bool may_write(const std::vector<FunctionRef>& functions) const;

  std::vector<ReplicaStatus> status(Clock::time_point now) const;

 private:
  struct State {
    std::string address;
    std::uint32_t weight = 1;
    bool checked = false;
    bool in_recovery = false;
    std::optional<Lsn> replay_lsn;
    std::uint64_t lag_bytes = 0;
    double lag_seconds = 0;
    bool failing = false;                     // the last check or client report failed
    std::optional<Clock::time_point> bad_at;  // last failure; banned until ban_time after it
    Clock::time_point banned_since{};
    std::string reason;
    std::uint64_t bans = 0;
    std::uint32_t outstanding = 0;
    std::uint64_t reads = 0;
    std::int64_t current = 0;  // smooth weighted round robin
  };
  bool banned(const State& s, Clock::time_point now) const;
  void fail(State& s, Clock::time_point now, std::string why);     // under mu_
  double seconds_behind(Lsn replay, Clock::time_point now) const;  // under mu_

  RoutingPolicy policy_;
  std::vector<Node> nodes_;
  mutable std::mutex mu_;
  std::vector<State> state_;
  std::optional<Lsn> primary_lsn_;
  // (when, primary LSN) samples: the age of the oldest WAL a replica has not replayed.
  std::deque<std::pair<Clock::time_point, Lsn>> history_;
  std::int64_t primary_current_ = 0;
  std::uint32_t primary_outstanding_ = 0;
  std::shared_ptr<const FunctionCatalog> catalog_;
  bool catalog_dirty_ = false;
  Clock::time_point catalog_at_{};
  // Orders catalog changes and fetches: a fetch asked for before the last change is stale.
  mutable std::uint64_t catalog_clock_ = 0;
  mutable std::uint64_t catalog_asked_ = 0;
  std::uint64_t catalog_changed_ = 0;
};

}  // namespace sluice::routing
