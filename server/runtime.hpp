// State shared by every session: the config snapshot, TLS contexts, pools, cancel keys, sessions.
#pragma once

#include <array>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>

#include "cache/cache.hpp"
#include "config/config.hpp"
#include "routing/known_statements.hpp"
#include "routing/positions.hpp"
#include "routing/replicas.hpp"
#include "routing/session_statements.hpp"
#include "server/cancel_registry.hpp"
#include "server/failover.hpp"
#include "server/observability.hpp"
#include "server/pg/identity.hpp"
#include "server/pg/phase.hpp"
#include "server/pool.hpp"

namespace sluice::server {

// Who a client says it is: shared by the clients of one login (pgsession::Login).
struct ClientNames {
  std::string user;
  std::string database;
  std::string application_name;
};

// A client as SHOW CLIENTS shows it; written by its session under SessionHandle::mu().
struct ClientInfo {
  std::shared_ptr<const ClientNames> names = std::make_shared<const ClientNames>();
  const std::string& user() const { return names->user; }
  const std::string& database() const { return names->database; }
  const std::string& application_name() const { return names->application_name; }
  std::string addr;
  std::uint16_t port = 0;
  std::string local_addr;
  std::uint16_t local_port = 0;
  bool tls = false;
  bool admin = false;  // on the admin console
  std::chrono::system_clock::time_point connect_time = std::chrono::system_clock::now();
};

// What the shutdown path and the admin console need of a live session, safe from any thread.
struct SessionHandle {
  // Sessions run on one of the event loops (an io_context): its executor is a pointer, where an
  // any_io_executor would take 56 bytes of every idle client.
  explicit SessionHandle(const asio::any_io_executor& e) : ex(loop_of(e)) {}
  static asio::io_context::executor_type loop_of(const asio::any_io_executor& e) {
    const auto* loop = e.target<asio::io_context::executor_type>();
    if (!loop) throw std::logic_error("a client session runs outside an event loop");
    return *loop;
  }
  asio::io_context::executor_type ex;
  std::atomic<bool> idle{true};  // no query in flight and not inside a transaction
  std::function<void()> kill;    // touched only on `ex`; empty once the session has ended
  std::atomic<ClientState> state{ClientState::kLogin};
  std::atomic<Clock::rep> wait_since{0};      // steady clock, while kWaiting
  std::atomic<std::int64_t> request_time{0};  // system clock, seconds, last request
  std::atomic<bool> admin_kill{false};        // killed by KILL db rather than a shutdown
  // Set before kill() is posted to ask an idle session to park (give back its coroutine frames
  // and buffers) rather than end: see nudge_idle().
  std::atomic<bool> park_only{false};
  std::atomic<bool> parks{false};  // a pooled PostgreSQL session: it may park
  // Guards `info`. Striped: a mutex of its own would add 40 bytes to every idle client.
  std::mutex& mu() const {
    static std::array<std::mutex, 64> stripes;
    return stripes[(reinterpret_cast<std::uintptr_t>(this) >> 6) % stripes.size()];
  }
  ClientInfo info;
  ClientInfo snapshot() const {
    std::lock_guard lock(mu());
    return info;
  }
};

// PAUSE / DISABLE state set from the admin console, read on every checkout.
class Control {
 public:
  // Fast path: nothing paused anywhere.
  bool any_paused() const { return any_paused_.load(std::memory_order_relaxed); }
  bool paused(const std::string& db) const {
    std::lock_guard lock(mu_);
    return all_paused_ || paused_.contains(db);
  }
  void pause(const std::string& db) {  // "" = every database
    std::lock_guard lock(mu_);
    if (db.empty())
      all_paused_ = true;
    else
      paused_.insert(db);
    any_paused_ = true;
  }
  void resume(const std::string& db) {
    std::lock_guard lock(mu_);
    if (db.empty()) {
      all_paused_ = false;
      paused_.clear();
    } else {
      paused_.erase(db);
    }
    any_paused_ = all_paused_ || !paused_.empty();
  }
  bool disabled(const std::string& db) const {
    std::lock_guard lock(mu_);
    return disabled_.contains(db);
  }
  void set_disabled(const std::string& db, bool on) {
    std::lock_guard lock(mu_);
    if (on)
      disabled_.insert(db);
    else
      disabled_.erase(db);
  }

 private:
  mutable std::mutex mu_;
  std::atomic<bool> any_paused_{false};
  bool all_paused_ = false;
  std::set<std::string> paused_;
  std::set<std::string> disabled_;
};

// Read routing per database (only databases with replicas and routing.enabled have one).
class Routes {
 public:
  std::shared_ptr<routing::ReplicaSet> get(const std::string& db) const {
    std::lock_guard lock(mu_);
    auto it = sets_.find(db);
    return it == sets_.end() ? nullptr : it->second;
  }
  std::map<std::string, std::shared_ptr<routing::ReplicaSet>> all() const {
    std::lock_guard lock(mu_);
    return sets_;
  }
  // A new set per database from `cfg`, keeping what is known of replicas still configured.
  void rebuild(const config::Config& cfg);

 private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<routing::ReplicaSet>> sets_;
};

enum class StopMode { kDrain, kImmediate, kWaitForClients };

class MongoProxy;
class WalFollower;

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
  // A new snapshot of the same file with other roles (Failover): the TLS contexts stay; sessions
  // bind their backends again at their next checkout.
  void install_roles(std::shared_ptr<const config::Config> cfg);

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
  Observability obs;
  Control control;
  Routes routes;
  Failover failover;  // databases whose servers' roles are learned (databases.*.hosts)
  routing::WalPositions positions;  // the primaries' WAL positions, local commit marks
  routing::ReadFactsCache reads;    // read/write classification of statement texts, shared
  // The query cache; null when neither cache.redis nor replicas are configured (the Redis
  // settings apply at start, rules and TTLs on reload). Without cache.redis it only keeps the
  // relation catalogs and statement analyses that read consistency marks writes and reads with.
  std::unique_ptr<cache::Cache> cache;
  // The cache with Redis: null when cache.redis is not configured.
  cache::Cache* redis_cache() const { return cache && cache->configured() ? cache.get() : nullptr; }
  // The MongoDB proxy; null unless mongo: is configured (its servers change on restart only).
  std::shared_ptr<MongoProxy> mongo;
  std::shared_ptr<WalFollower> follower;  // cache.follow_wal (app_follower.cpp)
  // Set by the App: what RELOAD and SHUTDOWN do (called on any thread).
  std::function<std::string()> reload;  // "" when applied, else why not
  std::function<void(StopMode)> stop;
  std::atomic<std::uint64_t> generation{0};  // bumped by every reload
  std::atomic<bool> accepting{false};        // the Postgres listener is open
  // Per event loop: when its heartbeat timer last ran (steady clock), for /healthz.
  std::array<std::atomic<Clock::rep>, 64> heartbeats{};
  std::atomic<std::uint32_t> loops{0};
  std::chrono::system_clock::time_point started = std::chrono::system_clock::now();
  routing::AnalysisCache analyses;            // session-state analysis of statement texts, shared
  routing::KnownStatements known_statements;  // parse without error (pooled clients' Parses)
  pgsession::Logins logins;                   // client identities, shared by equal clients
  std::atomic<std::uint32_t> clients{0};
  std::atomic<std::uint32_t> parked{0};  // of those, parked (a ParkedClient each)
  std::atomic<bool> stopping{false};

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const config::Config> config_;
  std::shared_ptr<ssl::context> client_tls_;
  std::shared_ptr<ssl::context> server_tls_;
  std::set<std::shared_ptr<SessionHandle>> sessions_;
};

}  // namespace sluice::server
