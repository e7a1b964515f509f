// The in-process cache in front of Redis: an LRU bounded in bytes, shared by every event loop,
// whose entries expire with their TTL and can be dropped by relation (the invalidation messages
// other sluice instances publish). Keys already contain the relation versions, so a dropped or
// missed invalidation only costs memory, never correctness.
#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace sluice::cache {

class L1 {
 public:
  using Clock = std::chrono::steady_clock;
  explicit L1(std::uint64_t max_bytes) : max_bytes_(max_bytes) {}

  // The value under `key` if present and not expired.
  std::shared_ptr<const std::string> get(const std::string& key, Clock::time_point now);
  // Stores `value` for `ttl`; `relations` are the tags drop() matches ("namespace:oid").
  void put(const std::string& key, std::shared_ptr<const std::string> value,
           const std::vector<std::string>& relations, Clock::time_point expires);
  // Drops every entry tagged with `relation`; returns how many.
  std::size_t drop(const std::string& relation);
  // Drops every entry whose tags start with `prefix` ("" = everything).
  std::size_t drop_prefix(std::string_view prefix);
  std::uint64_t bytes() const;
  std::size_t size() const;
  std::uint64_t evictions() const;

 private:
  struct Entry {
    std::string key;
    std::shared_ptr<const std::string> value;
    std::vector<std::string> relations;
    Clock::time_point expires;
    std::uint64_t cost = 0;
  };
  using List = std::list<Entry>;
  void erase(List::iterator it);

  mutable std::mutex mu_;
  std::uint64_t max_bytes_;
  std::uint64_t bytes_ = 0;
  std::uint64_t evictions_ = 0;
  List lru_;
  std::unordered_map<std::string, List::iterator> index_;
  std::unordered_map<std::string, std::unordered_set<std::string>> by_relation_;
};

}  // namespace sluice::cache
