// State shared by every session: the config snapshot, TLS contexts, pools, cancel keys, sessions.
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>

#include "config/config.hpp"
#include "routing/session_statements.hpp"
#include "server/cancel_registry.hpp"
#include "server/pool.hpp"

namespace sluice::server {

// What the shutdown path needs of a live session, safe to hold from any thread.
struct SessionHandle {
  explicit SessionHandle(asio::any_io_executor e) : ex(std::move(e)) {}
  asio::any_io_executor ex;
  std::atomic<bool> idle{true};  // no query in flight and not inside a transaction
  std::function<void()> kill;    // touched only on `ex`; empty once the session has ended
};

class Runtime {
 public:
  std::shared_ptr<const config::Config> config() const {
    std::lock_guard lock(mu_);
    return config_;
  }
  std::shared_ptr<ssl::context> client_tls() const {
    std::lock_guard lock(mu_);
    return client_tls_;
  }
  std::shared_ptr<ssl::context> server_tls() const {
    std::lock_guard lock(mu_);
    return server_tls_;
  }
  // Installs a new snapshot; throws std::exception when TLS files cannot be loaded.
  void install(std::shared_ptr<const config::Config> cfg);

  void add_session(const std::shared_ptr<SessionHandle>& h) {
    std::lock_guard lock(mu_);
    sessions_.insert(h);
  }
  void remove_session(const std::shared_ptr<SessionHandle>& h) {
    std::lock_guard lock(mu_);
    sessions_.erase(h);
  }
  std::vector<std::shared_ptr<SessionHandle>> sessions() const {
    std::lock_guard lock(mu_);
    return {sessions_.begin(), sessions_.end()};
  }

  CancelRegistry cancels;
  PoolRegistry pools;
  routing::AnalysisCache analyses;  // session-state analysis of statement texts, shared
  // Clients pinned to a server connection (or refused) in transaction pooling, by reason.
  std::array<std::atomic<std::uint64_t>, 8> pins{};
  std::atomic<std::uint32_t> clients{0};
  std::atomic<bool> stopping{false};

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const config::Config> config_;
  std::shared_ptr<ssl::context> client_tls_;
  std::shared_ptr<ssl::context> server_tls_;
  std::set<std::shared_ptr<SessionHandle>> sessions_;
};

}  // namespace sluice::server
