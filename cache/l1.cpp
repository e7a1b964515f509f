#include "cache/l1.hpp"

namespace sluice::cache {

std::shared_ptr<const std::string> L1::get(const std::string& key, Clock::time_point now) {
  std::lock_guard lock(mu_);
  auto it = index_.find(key);
  if (it == index_.end()) return nullptr;
  if (it->second->expires <= now) {
    erase(it->second);
    return nullptr;
  }
  lru_.splice(lru_.begin(), lru_, it->second);
  return it->second->value;
}

void L1::put(const std::string& key, std::shared_ptr<const std::string> value,
             const std::vector<std::string>& relations, Clock::time_point expires) {
  std::uint64_t cost = key.size() + value->size() + 64;
  for (const auto& r : relations) cost += r.size() + 32;
  if (max_bytes_ == 0 || cost > max_bytes_) return;
  std::lock_guard lock(mu_);
  if (auto it = index_.find(key); it != index_.end()) erase(it->second);
  lru_.push_front(Entry{key, std::move(value), relations, expires, cost});
  index_.emplace(key, lru_.begin());
  for (const auto& r : relations) by_relation_[r].insert(key);
  bytes_ += cost;
  while (bytes_ > max_bytes_ && !lru_.empty()) {
    erase(std::prev(lru_.end()));
    ++evictions_;
  }
}

void L1::erase(List::iterator it) {
  for (const auto& r : it->relations) {
    auto rel = by_relation_.find(r);
    if (rel == by_relation_.end()) continue;
    rel->second.erase(it->key);
    if (rel->second.empty()) by_relation_.erase(rel);
  }
  bytes_ -= it->cost;
  index_.erase(it->key);
  lru_.erase(it);
}

std::size_t L1::drop(const std::string& relation) {
  std::lock_guard lock(mu_);
  auto rel = by_relation_.find(relation);
  if (rel == by_relation_.end()) return 0;
  const std::vector<std::string> keys(rel->second.begin(), rel->second.end());
  for (const auto& k : keys) {
    if (auto it = index_.find(k); it != index_.end()) erase(it->second);
  }
  return keys.size();
}

std::size_t L1::drop_prefix(std::string_view prefix) {
  std::lock_guard lock(mu_);
  std::size_t n = 0;
  for (auto it = lru_.begin(); it != lru_.end();) {
    auto next = std::next(it);
    bool match = prefix.empty();
    for (const auto& r : it->relations) match = match || r.starts_with(prefix);
    if (match) {
      erase(it);
      ++n;
    }
    it = next;
  }
  return n;
}

std::uint64_t L1::bytes() const {
  std::lock_guard lock(mu_);
  return bytes_;
}

std::size_t L1::size() const {
  std::lock_guard lock(mu_);
  return lru_.size();
}

std::uint64_t L1::evictions() const {
  std::lock_guard lock(mu_);
  return evictions_;
}

}  // namespace sluice::cache
