// Cursor, session and transaction-pin bookkeeping for the MongoDB proxy (no I/O, time passed in).
#include "routing/mongo_ownership.hpp"

#include <algorithm>

namespace sluice::routing::mongo {

std::optional<CursorOwner> Ownership::cursor_owner(std::int64_t id, Clock::time_point now) {
  auto it = cursors_.find(id);
  if (it == cursors_.end()) return std::nullopt;
  it->second.used = now;
  return it->second;
}

void Ownership::prune(Clock::time_point now) {
  // Servers time idle cursors out after 10 minutes and abort transactions older than
  // transactionLifetimeLimitSeconds (60 s): entries idle longer are dropped (once a minute).
  if (now - last_prune_ < std::chrono::minutes(1)) return;
  last_prune_ = now;
  std::erase_if(cursors_,
                [&](const auto& kv) { return now - kv.second.used > std::chrono::minutes(10); });
  std::erase_if(pins_,
                [&](const auto& kv) { return now - kv.second.used > std::chrono::minutes(2); });
  // Servers expire a session idle for logicalSessionTimeoutMinutes (30, as sluice's hello says).
  std::erase_if(sessions_,
                [&](const auto& kv) { return now - kv.second.used > std::chrono::minutes(30); });
}

void Ownership::note_cursor(std::int64_t id, CursorOwner owner, Clock::time_point now) {
  prune(now);
  if (cursors_.size() >= max_entries_) cursors_.erase(cursors_.begin());
  owner.used = now;
  cursors_[id] = std::move(owner);
}

void Ownership::forget_cursor(std::int64_t id) {
  cursors_.erase(id);
}

void Ownership::claim_session(const std::string& lsid, std::int64_t conn, Clock::time_point now) {
  prune(now);
  auto it = sessions_.find(lsid);
  if (it == sessions_.end()) {
    if (sessions_.size() >= max_entries_) sessions_.erase(sessions_.begin());
    sessions_.emplace(lsid, SessionOwner{conn, now});
    return;
  }
  if (!open_connections_.contains(it->second.connection)) it->second.connection = conn;
  it->second.used = now;
}

bool Ownership::may_end_session(const std::string& lsid, std::int64_t conn) const {
  auto it = sessions_.find(lsid);
  return it == sessions_.end() || it->second.connection == conn ||
         !open_connections_.contains(it->second.connection);
}

void Ownership::forget_session(const std::string& lsid) {
  sessions_.erase(lsid);
}

void Ownership::connection_opened(std::int64_t conn) {
  open_connections_.insert(conn);
}

void Ownership::connection_closed(std::int64_t conn) {
  open_connections_.erase(conn);
}

std::optional<Pin> Ownership::pin(const std::string& lsid, Clock::time_point now) {
  auto it = pins_.find(lsid);
  if (it == pins_.end()) return std::nullopt;
  it->second.used = now;
  return it->second;
}

void Ownership::set_pin(const std::string& lsid, Pin p, Clock::time_point now) {
  p.used = now;
  prune(now);
  if (pins_.size() >= max_entries_) pins_.erase(pins_.begin());
  pins_[lsid] = std::move(p);
}

void Ownership::add_pin_writes(const std::string& lsid, const std::string& db,
                               const std::string& coll) {
  auto it = pins_.find(lsid);
  if (it == pins_.end()) return;
  auto w = std::make_pair(db, coll);
  if (std::find(it->second.writes.begin(), it->second.writes.end(), w) == it->second.writes.end())
    it->second.writes.push_back(std::move(w));
}

std::optional<Pin> Ownership::take_pin(const std::string& lsid) {
  auto it = pins_.find(lsid);
  if (it == pins_.end()) return std::nullopt;
  auto p = std::move(it->second);
  pins_.erase(it);
  return p;
}

}  // namespace sluice::routing::mongo
