// Maps the cancel keys sluice hands to clients onto the server backend running their query now.
#pragma once

#include <mutex>
#include <optional>
#include <string>
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
  // The target for a CancelRequest, only when both pid and secret match.
  std::optional<CancelTarget> find(pg::BackendKeyData client);

 private:
  struct Entry {
    std::uint32_t secret;
    std::optional<CancelTarget> target;
  };
  std::mutex mu_;
  std::uint32_t next_pid_ = 0;
  std::unordered_map<std::uint32_t, Entry> entries_;
};

// Sends a CancelRequest to the server (a new connection, as the protocol requires).
awaitable<void> send_cancel(CancelTarget target);

}  // namespace sluice::server
