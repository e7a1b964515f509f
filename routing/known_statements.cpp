// The bounded, thread-safe set of statements known to parse (see known_statements.hpp).
#include "routing/known_statements.hpp"

namespace sluice::routing {

bool KnownStatements::contains(std::string_view key) const {
  std::lock_guard lock(mu_);
  return index_.contains(key);
}

void KnownStatements::add(std::string key) {
  std::lock_guard lock(mu_);
  if (index_.contains(key)) return;
  order_.push_back(std::move(key));
  index_.insert(order_.back());
  while (order_.size() > capacity_) {
    index_.erase(order_.front());
    order_.pop_front();
  }
}

void KnownStatements::clear() {
  std::lock_guard lock(mu_);
  index_.clear();
  order_.clear();
}

std::size_t KnownStatements::size() const {
  std::lock_guard lock(mu_);
  return order_.size();
}

}  // namespace sluice::routing
