// Maps the cancel keys sluice hands to clients onto the server backend running their query now.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>

#include "protocol/pg/messages.hpp"
#include "server/asio.hpp"

namespace sluice::server {

struct CancelTarget {
  std::string host;
  std::uint16_t port = 0;
  pg::BackendKeyData key{0, 0};
};

class CancelRegistry {
 public:
  // A fresh key for a new client (pid unique among live clients, random secret).
  pg::BackendKeyData add_client();
  void set_target(pg::BackendKeyData client, std::optional<CancelTarget> target);
  void remove(pg::BackendKeyData client);
  // Forwards a client's CancelRequest to the backend running its query now (when pid and secret
  // match). Until that server has taken the request (closed the cancel connection) the backend
  // counts as being cancelled: PostgreSQL ignores a cancel that lands while a backend is idle,
  // but one that lands late cancels whatever the backend runs next.
  awaitable<void> forward(pg::BackendKeyData client);
  // Returns once no cancel forwarded to `backend` is in flight: before a server connection runs
  // anything for its next client. Gives up when *stop is set or after 10 s.
  awaitable<void> wait_settled(CancelTarget backend, const bool* stop);
  // Some cancel is in flight: only then is wait_settled() worth its coroutine (every checkout
  // asks).
  bool any_in_flight() const { return in_flight_total_.load(std::memory_order_relaxed) != 0; }

 private:
  struct Entry {  // one per connected client: small (the target only while attached)
    std::uint32_t secret;
    std::unique_ptr<CancelTarget> target;
  };
  using BackendId = std::tuple<std::string, std::uint16_t, std::uint32_t>;  // pids are per host
  static BackendId id_of(const CancelTarget& t) { return {t.host, t.port, t.key.pid}; }
  bool in_flight(const BackendId& id);
  void settled(const BackendId& id);

  std::mutex mu_;
  std::uint32_t next_pid_ = 0;
  std::unordered_map<std::uint32_t, Entry> entries_;
  std::map<BackendId, int> in_flight_;   // cancels forwarded and not yet taken, by backend
  std::atomic<int> in_flight_total_{0};  // their sum: checkouts skip the lock when 0
};

// Sends a CancelRequest to the server (a new connection, as the protocol requires).
awaitable<void> send_cancel(CancelTarget target);

}  // namespace sluice::server
