// A bounded LRU of analyses keyed by statement text (or by `KeyOf::key`, e.g. the text with its
// literals masked, when the analysis does not depend on them), safe to share between threads: the
// parser runs once per distinct key. Texts longer than `max_key` are analysed but not kept.
#pragma once

#include <cstddef>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

namespace sluice::routing {

// Keys a text by itself.
struct ExactText {
  static std::string_view key(std::string_view sql, std::string&) { return sql; }
};

// `KeyOf::key(text, buffer)` gives the cache key (built in `buffer` when it is not the text).
template <class T, T (*Analyze)(std::string_view), class KeyOf = ExactText>
class TextCache {
 public:
  explicit TextCache(std::size_t capacity = 4096, std::size_t max_key = 16 * 1024)
      : capacity_(capacity), max_key_(max_key) {}

  std::shared_ptr<const T> get(std::string_view sql) {
    if (sql.size() > max_key_) return std::make_shared<const T>(Analyze(sql));
    std::string keyed;
    const std::string_view key = KeyOf::key(sql, keyed);
    {
      std::lock_guard lock(mu_);
      if (auto it = index_.find(key); it != index_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second);
        ++hits_;
        return it->second->second;
      }
    }
    auto result = std::make_shared<const T>(Analyze(sql));  // parse outside the lock
    std::lock_guard lock(mu_);
    if (index_.contains(key)) return result;  // another thread got there first
    lru_.emplace_front(std::string(key), result);
    index_.emplace(lru_.front().first, lru_.begin());
    while (lru_.size() > capacity_) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
    return result;
  }
  std::size_t size() const {
    std::lock_guard lock(mu_);
    return lru_.size();
  }
  std::size_t hits() const {
    std::lock_guard lock(mu_);
    return hits_;
  }

 private:
  using Lru = std::list<std::pair<std::string, std::shared_ptr<const T>>>;
  std::size_t capacity_;
  std::size_t max_key_;
  mutable std::mutex mu_;
  Lru lru_;  // front = most recently used
  std::unordered_map<std::string_view, typename Lru::iterator> index_;
  std::size_t hits_ = 0;
};

}  // namespace sluice::routing
