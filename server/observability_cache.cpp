// Scrape-time collectors of the query cache (sluice_cache_*, sluice_redis_up) and of the WAL
// follower (sluice_wal_follower_*): split from observability.cpp.
#include <optional>

#include "server/observability.hpp"
#include "server/runtime.hpp"
#include "server/wal_follower.hpp"

namespace sluice::server {

namespace {

// The WAL follower: freshness on every instance, the stream's figures on the one following.
void collect_follower(Runtime& rt, metrics::Writer& w) {
  auto cfg = rt.config();
  if (!cfg->cache.follows_wal()) return;
  w.family("sluice_wal_follower_lag_seconds", "gauge",
           "How old the newest moment is up to which every commit on the primary has been "
           "bumped in the cache (hits stop past cache.max_invalidation_lag).");
  for (const auto& [name, db] : cfg->databases)
    if (auto lag = invalidation_lag_s(rt, name))
      w.sample("sluice_wal_follower_lag_seconds", {"database"}, {name}, *lag);
  if (!rt.follower) return;
  const auto status = rt.follower->status();
  auto per_db = [&](std::string_view family, const char* type, std::string_view help, auto value) {
    w.family(family, type, help);
    for (const auto& [name, s] : status) {
      if (auto v = value(s)) w.sample(family, {"database"}, {name}, *v);
    }
  };
  using Opt = std::optional<double>;
  per_db("sluice_wal_follower_leader", "gauge",
         "1 when this instance holds the lease and follows the database's WAL.",
         [](const FollowerStatus& s) -> Opt { return s.leader ? 1 : 0; });
  per_db("sluice_wal_follower_lag_bytes", "gauge",
         "WAL between the primary's insert position and what the follower acknowledged.",
         [](const FollowerStatus& s) -> Opt {
           if (!s.leader || s.primary_lsn == 0) return std::nullopt;
           return static_cast<double>(s.primary_lsn > s.flushed_lsn ? s.primary_lsn - s.flushed_lsn
                                                                    : 0);
         });
  per_db("sluice_wal_follower_retained_bytes", "gauge",
         "WAL the follower's replication slot holds back on the primary.",
         [](const FollowerStatus& s) -> Opt {
           if (!s.leader || s.retained_bytes < 0) return std::nullopt;
           return static_cast<double>(s.retained_bytes);
         });
  per_db("sluice_wal_follower_commits_total", "counter",
         "Commits on the primary that wrote published tables, bumped by this instance.",
         [](const FollowerStatus& s) -> Opt { return static_cast<double>(s.commits); });
  per_db("sluice_wal_follower_bump_failures_total", "counter",
         "Bumps of followed commits that did not reach Redis (retried; hits stop meanwhile).",
         [](const FollowerStatus& s) -> Opt { return static_cast<double>(s.bump_failures); });
}

}  // namespace

// The query cache: Redis, per-rule counters, bypasses, the in-process tier, bumps.
void collect_cache(Runtime& rt, metrics::Writer& w) {
  if (!rt.redis_cache()) return;
  const auto& c = *rt.redis_cache();
  w.family("sluice_redis_up", "gauge", "1 when sluice's Redis connections are up.");
  w.sample("sluice_redis_up", c.redis_up() ? 1 : 0);
  auto per_rule = c.all_counters();
  auto rule_family = [&](std::string_view name, std::string_view help, auto field) {
    w.family(name, "counter", help);
    for (const auto& [rule, k] : per_rule)
      w.sample(name, {"rule"}, {rule}, static_cast<double>((k->*field).load()));
  };
  rule_family("sluice_cache_hits_total", "Requests answered from the cache, by rule.",
              &cache::CacheCounters::hits);
  rule_family("sluice_cache_misses_total",
              "Cacheable requests not in the cache (run on a server, then filled), by rule.",
              &cache::CacheCounters::misses);
  rule_family("sluice_cache_fills_total", "Replies stored in the cache, by rule.",
              &cache::CacheCounters::fills);
  rule_family("sluice_cache_fills_skipped_total",
              "Misses whose reply was not stored (larger than cache.max_entry_bytes, an "
              "error, or not seen whole), by rule.",
              &cache::CacheCounters::skipped_fills);
  rule_family("sluice_cache_hit_bytes_total", "Reply bytes served from the cache, by rule.",
              &cache::CacheCounters::hit_bytes);
  rule_family("sluice_cache_fill_bytes_total", "Reply bytes stored in the cache, by rule.",
              &cache::CacheCounters::fill_bytes);
  w.family("sluice_cache_bypass_total", "counter",
           "Requests the cache did not look up, by reason (redis_down and unbumped mean the "
           "cache cannot serve; the others are statements it must not cache).");
  for (const auto& [reason, n] : c.bypasses())
    w.sample("sluice_cache_bypass_total", {"reason"}, {reason}, static_cast<double>(n));
  w.family("sluice_cache_evictions_total", "counter",
           "Entries evicted from the in-process cache to stay within cache.l1_bytes.");
  w.sample("sluice_cache_evictions_total", {"tier"}, {"l1"},
           static_cast<double>(c.l1().evictions()));
  w.family("sluice_cache_bytes", "gauge", "Bytes held by the in-process cache.");
  w.sample("sluice_cache_bytes", {"tier"}, {"l1"}, static_cast<double>(c.l1().bytes()));
  w.family("sluice_cache_entries", "gauge", "Entries held by the in-process cache.");
  w.sample("sluice_cache_entries", {"tier"}, {"l1"}, static_cast<double>(c.l1().size()));
  w.family("sluice_cache_bumps_total", "counter",
           "Version bumps of written relations sent to Redis, by result.");
  w.sample("sluice_cache_bumps_total", {"result"}, {"ok"}, static_cast<double>(c.bumps(true)));
  w.sample("sluice_cache_bumps_total", {"result"}, {"failed"}, static_cast<double>(c.bumps(false)));
  w.family("sluice_cache_unbumped", "gauge",
           "Databases with writes whose bump has not reached Redis yet (no hits on them here).");
  w.sample("sluice_cache_unbumped", static_cast<double>(c.unbumped()));
  w.family("sluice_cache_invalidations_received_total", "counter",
           "Invalidation messages received on the Redis channel (from every sluice).");
  w.sample("sluice_cache_invalidations_received_total",
           static_cast<double>(c.invalidations_received()));
  w.family("sluice_cache_not_stored_total", "counter",
           "Misses whose reply was not stored, by reason (first_miss: admission waits for the "
           "key's second miss; too_large; not_replayable).");
  for (const auto& [reason, n] : c.not_stored())
    w.sample("sluice_cache_not_stored_total", {"reason"}, {reason}, static_cast<double>(n));
  collect_follower(rt, w);
}

}  // namespace sluice::server
