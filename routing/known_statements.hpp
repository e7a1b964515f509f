// Statements a server of a pool has parsed without error, outside any transaction, under given
// session settings: a client that holds no server connection may get its Parse of one of them
// answered by sluice (pgbench -M prepared waits for each PQprepare, blocking the other clients
// of its thread, which may hold every server connection inside their transactions).
#pragma once

#include <cstddef>
#include <list>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_set>

namespace sluice::routing {

// A bounded set of opaque keys (PooledSession builds them), oldest out first; thread-safe.
class KnownStatements {
 public:
  explicit KnownStatements(std::size_t capacity = 8192) : capacity_(capacity) {}
  KnownStatements(const KnownStatements&) = delete;
  KnownStatements& operator=(const KnownStatements&) = delete;

  bool contains(std::string_view key) const;
  void add(std::string key);
  // The catalog may have changed (DDL): what parsed before may no longer parse.
  void clear();
  std::size_t size() const;

 private:
  std::size_t capacity_;
  mutable std::mutex mu_;
  std::list<std::string> order_;                // oldest first
  std::unordered_set<std::string_view> index_;  // views into order_'s strings
};

}  // namespace sluice::routing
