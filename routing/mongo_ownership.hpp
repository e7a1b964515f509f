// Who owns what MongoDB clients open through sluice: cursors, sessions and pinned transactions.
// Pure bookkeeping with time passed in (no I/O, no locking: the proxy holds one mutex around it,
// shared by its event loops). docs/ARCHITECTURE.md "MongoDB proxy".
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace sluice::routing::mongo {

using Clock = std::chrono::steady_clock;

// A cursor's server, and the client it belongs to: the connection that opened it, or any
// connection presenting the session it was opened in (drivers spread a cursor's getMores over
// their pooled connections, always with its lsid).
struct CursorOwner {
  std::string address;
  Clock::time_point used;
  std::int64_t connection = 0;
  std::string lsid;
  bool allows(std::int64_t conn, const std::string& session) const {
    return conn == connection || (!lsid.empty() && session == lsid);
  }
};

// The server a session's open transaction runs on, and what it wrote (bumped at commit).
struct Pin {
  std::string address;
  std::vector<std::pair<std::string, std::string>> writes;  // (db, collection)
  Clock::time_point used;
};

class Ownership {
 public:
  // Each map holds at most `max_entries` (the oldest-hashed entry goes to make room).
  explicit Ownership(std::size_t max_entries = 100'000) : max_entries_(max_entries) {}

  // Cursor id → owning server and client; a lookup counts as a use (it delays expiry).
  std::optional<CursorOwner> cursor_owner(std::int64_t id, Clock::time_point now);
  void note_cursor(std::int64_t id, CursorOwner owner, Clock::time_point now);
  void forget_cursor(std::int64_t id);

  // Session id → the server of its open transaction.
  std::optional<Pin> pin(const std::string& lsid, Clock::time_point now);
  void set_pin(const std::string& lsid, Pin p, Clock::time_point now);
  void add_pin_writes(const std::string& lsid, const std::string& db, const std::string& coll);
  std::optional<Pin> take_pin(const std::string& lsid);

  // Session id → the client connection that used it first (only it may end the session; the
  // next connection to present it adopts it once that one has closed).
  void claim_session(const std::string& lsid, std::int64_t conn, Clock::time_point now);
  bool may_end_session(const std::string& lsid, std::int64_t conn) const;
  void forget_session(const std::string& lsid);
  void connection_opened(std::int64_t conn);
  void connection_closed(std::int64_t conn);

  // Drops what the servers have timed out by `now` (runs at most once a minute).
  void prune(Clock::time_point now);

  std::size_t cursor_count() const { return cursors_.size(); }
  std::size_t pin_count() const { return pins_.size(); }
  std::size_t session_count() const { return sessions_.size(); }

 private:
  struct SessionOwner {
    std::int64_t connection;
    Clock::time_point used;
  };
  std::size_t max_entries_;
  std::unordered_map<std::int64_t, CursorOwner> cursors_;
  std::unordered_map<std::string, Pin> pins_;
  std::unordered_map<std::string, SessionOwner> sessions_;
  std::unordered_set<std::int64_t> open_connections_;
  Clock::time_point last_prune_{};
};

}  // namespace sluice::routing::mongo
