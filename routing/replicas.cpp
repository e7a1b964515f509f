// Replica health, bans, lag and the choice of a node for a read.
#include "routing/replicas.hpp"

#include <charconv>
#include <cstdio>
#include <limits>

namespace sluice::routing {

std::optional<Lsn> parse_lsn(std::string_view text) {
  auto slash = text.find('/');
  if (slash == std::string_view::npos || slash == 0 || slash + 1 >= text.size())
    return std::nullopt;
  auto hex = [](std::string_view s, std::uint32_t& out) {
    if (s.size() > 8) return false;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 16);
    return ec == std::errc() && p == s.data() + s.size();
  };
  std::uint32_t hi = 0;
  std::uint32_t lo = 0;
  if (!hex(text.substr(0, slash), hi) || !hex(text.substr(slash + 1), lo)) return std::nullopt;
  return (static_cast<Lsn>(hi) << 32) | lo;
}

std::string format_lsn(Lsn lsn) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%X/%X", static_cast<unsigned>(lsn >> 32),
                static_cast<unsigned>(lsn & 0xffffffffu));
  return buf;
}

ReplicaSet::ReplicaSet(std::vector<Node> replicas, RoutingPolicy policy)
    : policy_(policy), nodes_(std::move(replicas)) {
  for (const auto& n : nodes_) {
    State s;
    s.address = n.address;
    s.weight = std::max<std::uint32_t>(n.weight, 1);
    state_.push_back(std::move(s));
  }
}

void ReplicaSet::adopt(const ReplicaSet& old) {
  std::scoped_lock lock(mu_, old.mu_);
  for (auto& s : state_) {
    for (const auto& o : old.state_) {
      if (o.address != s.address) continue;
      auto weight = s.weight;
      s = o;
      s.weight = weight;
      s.outstanding = 0;  // the old set's picks finish there
    }
  }
  primary_lsn_ = old.primary_lsn_;
  history_ = old.history_;
  catalog_ = old.catalog_;
  catalog_dirty_ = old.catalog_dirty_;
  catalog_at_ = old.catalog_at_;
}

void ReplicaSet::primary_sample(Clock::time_point now, std::optional<Lsn> lsn) {
  std::lock_guard lock(mu_);
  if (!lsn) return;  // the primary did not answer: lag cannot be measured this round
  primary_lsn_ = lsn;
  if (history_.empty() || history_.back().second != *lsn) history_.emplace_back(now, *lsn);
  while (history_.size() > 4096 ||
         (!history_.empty() && now - history_.front().first > std::chrono::hours(1)))
    history_.pop_front();
}

double ReplicaSet::seconds_behind(Lsn replay, Clock::time_point now) const {
  if (!primary_lsn_ || *primary_lsn_ <= replay) return 0;
  // The first sample at which the primary had WAL the replica has not replayed: the replica
  // misses writes at least this old.
  for (const auto& [when, lsn] : history_) {
    if (lsn > replay) return std::chrono::duration<double>(now - when).count();
  }
  return 0;
}

bool ReplicaSet::banned(const State& s, Clock::time_point now) const {
  return !s.checked || s.failing || (s.bad_at && now - *s.bad_at < policy_.ban_time);
}

void ReplicaSet::fail(State& s, Clock::time_point now, std::string why) {
  if (!banned(s, now) || !s.bad_at) {
    ++s.bans;
    s.banned_since = now;
  }
  s.failing = true;
  s.bad_at = now;
  s.reason = std::move(why);
}

void ReplicaSet::replica_checked(std::string_view address, Clock::time_point now,
                                 const ReplicaCheck& c) {
  std::lock_guard lock(mu_);
  for (auto& s : state_) {
    if (s.address != address) continue;
    const bool first = !s.checked;
    s.checked = true;
    s.in_recovery = c.in_recovery;
    if (!c.ok) {
      fail(s, now, c.error.empty() ? "health check failed" : c.error);
      return;
    }
    s.replay_lsn = c.replay_lsn;
    s.lag_bytes = c.replay_lsn && primary_lsn_ && *primary_lsn_ > *c.replay_lsn
                      ? *primary_lsn_ - *c.replay_lsn
                      : 0;
    s.lag_seconds = c.replay_lsn ? seconds_behind(*c.replay_lsn, now) : 0;
    std::string why;
    if (!c.in_recovery) {
      why = "not in recovery (promoted, or not a replica)";
    } else if (!c.replay_lsn) {
      why = "no replay position (pg_last_wal_replay_lsn() is null)";
    } else if (policy_.max_lag_bytes > 0 && s.lag_bytes > policy_.max_lag_bytes) {
      why = "lag " + std::to_string(s.lag_bytes) + " bytes > routing.max_replica_lag_bytes " +
            std::to_string(policy_.max_lag_bytes);
    } else if (policy_.max_lag_seconds > 0 && s.lag_seconds > policy_.max_lag_seconds) {
      char buf[128];
      std::snprintf(buf, sizeof buf, "lag %.1f s > routing.max_replica_lag_seconds %.1f s",
                    s.lag_seconds, policy_.max_lag_seconds);
      why = buf;
    }
    if (!why.empty()) {
      fail(s, now, std::move(why));
    } else {
      s.failing = false;
      if (first) s.bad_at.reset();  // healthy from the first check: usable at once
    }
    return;
  }
}

void ReplicaSet::report_failure(std::string_view address, Clock::time_point now, std::string why) {
  std::lock_guard lock(mu_);
  for (auto& s : state_) {
    if (s.address == address) {
      s.checked = true;
      fail(s, now, std::move(why));
    }
  }
}

ReplicaSet::Pick ReplicaSet::pick(Lsn min_lsn, Clock::time_point now, std::uint64_t random,
                                  bool may_wait) {
  std::lock_guard lock(mu_);
  Pick p;
  std::vector<int> up;
  std::vector<int> candidates;
  for (std::size_t i = 0; i < state_.size(); ++i) {
    const auto& s = state_[i];
    if (banned(s, now)) continue;
    up.push_back(static_cast<int>(i));
    if (min_lsn != 0 && (!s.replay_lsn || *s.replay_lsn < min_lsn)) continue;
    candidates.push_back(static_cast<int>(i));
  }
  const bool any_up = !up.empty();
  bool primary_too = policy_.primary_reads == RoutingPolicy::PrimaryReads::kInclude;
  if (candidates.empty() && any_up && may_wait) {
    candidates = std::move(up);
    p.wait = true;
    primary_too = false;
  }
  if (candidates.empty()) {
    if (any_up) {
      p.behind = true;  // read-your-writes: only the primary has the client's own writes
    } else if (policy_.error_when_all_banned ||
               policy_.primary_reads == RoutingPolicy::PrimaryReads::kExclude) {
      p.refused = true;
      return p;
    }
    ++primary_outstanding_;
    return p;
  }
  auto weight = [&](int node) -> std::int64_t {
    return node == kPrimary ? std::max<std::uint32_t>(policy_.primary_weight, 1)
                            : state_[static_cast<std::size_t>(node)].weight;
  };
  if (primary_too) candidates.push_back(kPrimary);
  int chosen = candidates.front();
  switch (policy_.balance) {
    case RoutingPolicy::Balance::kRoundRobin: {  // smooth weighted round robin (nginx's)
      std::int64_t total = 0;
      std::int64_t best = std::numeric_limits<std::int64_t>::min();
      for (int c : candidates) {
        auto& cur = c == kPrimary ? primary_current_ : state_[static_cast<std::size_t>(c)].current;
        cur += weight(c);
        total += weight(c);
        if (cur > best) {
          best = cur;
          chosen = c;
        }
      }
      (chosen == kPrimary ? primary_current_ : state_[static_cast<std::size_t>(chosen)].current) -=
          total;
      break;
    }
    case RoutingPolicy::Balance::kLeastOutstanding: {
      double best = std::numeric_limits<double>::max();
      const auto n = candidates.size();
      for (std::size_t k = 0; k < n; ++k) {  // start at a rotating place so ties spread
        int c = candidates[(k + random) % n];
        auto out =
            c == kPrimary ? primary_outstanding_ : state_[static_cast<std::size_t>(c)].outstanding;
        double load = static_cast<double>(out) / static_cast<double>(weight(c));
        if (load < best) {
          best = load;
          chosen = c;
        }
      }
      break;
    }
    case RoutingPolicy::Balance::kRandom: {
      std::int64_t total = 0;
      for (int c : candidates) total += weight(c);
      auto r = static_cast<std::int64_t>(random % static_cast<std::uint64_t>(total));
      for (int c : candidates) {
        if (r < weight(c)) {
          chosen = c;
          break;
        }
        r -= weight(c);
      }
      break;
    }
  }
  p.node = chosen;
  if (chosen == kPrimary) {
    ++primary_outstanding_;
  } else {
    auto& s = state_[static_cast<std::size_t>(chosen)];
    ++s.outstanding;
    ++s.reads;
  }
  return p;
}

void ReplicaSet::replayed(int node, Lsn lsn) {
  std::lock_guard lock(mu_);
  if (node < 0 || static_cast<std::size_t>(node) >= state_.size()) return;
  auto& s = state_[static_cast<std::size_t>(node)];
  if (!s.replay_lsn || *s.replay_lsn < lsn) s.replay_lsn = lsn;
}

void ReplicaSet::finished(int node) {
  std::lock_guard lock(mu_);
  if (node == kPrimary) {
    if (primary_outstanding_ > 0) --primary_outstanding_;
    return;
  }
  auto& s = state_.at(static_cast<std::size_t>(node));
  if (s.outstanding > 0) --s.outstanding;
}

void ReplicaSet::set_catalog(std::shared_ptr<const FunctionCatalog> catalog) {
  std::lock_guard lock(mu_);
  catalog_ = std::move(catalog);
  // A change after this fetch was asked for may be missing from it: it stays dirty (the next
  // round fetches again).
  catalog_dirty_ = catalog_changed_ > catalog_asked_;
  catalog_at_ = Clock::now();
}

void ReplicaSet::catalog_changed() {
  std::lock_guard lock(mu_);
  catalog_dirty_ = true;
  catalog_changed_ = ++catalog_clock_;
}

bool ReplicaSet::catalog_wanted(Clock::time_point now, Clock::duration refresh) const {
  std::lock_guard lock(mu_);
  const bool wanted = !catalog_ || catalog_dirty_ || now - catalog_at_ >= refresh;
  if (wanted) catalog_asked_ = ++catalog_clock_;
  return wanted;
}

bool ReplicaSet::may_write(const std::vector<FunctionRef>& functions) const {
  if (functions.empty()) return false;
  std::lock_guard lock(mu_);
  if (!catalog_ || catalog_dirty_) return true;
  for (const auto& f : functions) {
    if (catalog_->may_write(f)) return true;
  }
  return false;
}

std::vector<ReplicaStatus> ReplicaSet::status(Clock::time_point now) const {
  std::lock_guard lock(mu_);
  std::vector<ReplicaStatus> out;
  for (const auto& s : state_) {
    ReplicaStatus r;
    r.address = s.address;
    r.weight = s.weight;
    r.checked = s.checked;
    r.banned = banned(s, now);
    r.reason = s.reason;
    r.in_recovery = s.in_recovery;
    r.replay_lsn = s.replay_lsn;
    r.lag_bytes = s.lag_bytes;
    r.lag_seconds = s.lag_seconds;
    r.bans = s.bans;
    r.banned_for_seconds =
        r.banned && s.bad_at ? std::chrono::duration<double>(now - s.banned_since).count() : 0;
    r.outstanding = s.outstanding;
    r.reads = s.reads;
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace sluice::routing
