// Backend health monitor: its own thread checks every configured primary and replica with libpq
// every interval, on connections of its own: reachability, pg_is_in_recovery(), and the WAL
// position (the primary's current LSN, a replica's replay LSN). With no login configured it
// falls back to PQping (reachability only). It also fetches each primary's function catalog
// (pg_proc.provolatile) when asked. Readiness, /status and read routing read what it finds.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "routing/classify.hpp"
#include "routing/libpq.hpp"

namespace sluice::routing {

struct BackendTarget {
  std::string database;  // the name clients use
  std::string role;      // "primary" | "replica" | "auto" (learned: databases.*.hosts)
  LibpqTarget server;    // address, login (empty user: PQping only) and TLS
  std::string address() const;
  bool operator==(const BackendTarget&) const = default;
};

struct BackendHealth {
  BackendTarget target;
  bool checked = false;  // at least one check finished
  bool up = false;       // reachable
  bool queried = false;  // logged in and answered the check query
  std::string error;     // why the last check failed
  bool in_recovery = false;
  std::optional<std::uint64_t> lsn;       // primary: pg_current_wal_lsn(); replica: replay LSN
  std::optional<std::uint32_t> timeline;  // not in recovery: the timeline WAL is written on
  double rtt_seconds = 0;
  std::uint64_t checks = 0;
  std::uint64_t failures = 0;
  std::chrono::system_clock::time_point last_check{};
  std::chrono::steady_clock::time_point checked_at{};
  std::chrono::steady_clock::time_point started_at{};  // when the check's query was sent
};

class Monitor {
 public:
  struct Hooks {
    // After every round, with its results: the primaries' as soon as they are checked (a
    // session waiting for a reading of a primary's WAL position does not wait for the replicas),
    // then the replicas'.
    std::function<void(const std::vector<BackendHealth>&)> round_done;
    // True while writes wait for a primary to be elected: rounds come five times as often.
    std::function<bool()> hurry;
    // Whether a server whose role is learned ("auto") is its database's primary now.
    std::function<bool(const BackendTarget&)> elected;
    // Whether a database's function catalog should be fetched from its primary now.
    std::function<bool(const std::string& database)> catalog_wanted;
    std::function<void(const std::string& database, std::shared_ptr<const FunctionCatalog>)>
        catalog_loaded;
    // After catalog_loaded, on the monitor's thread, with the primary's libpq connection
    // (a PGconn*): more catalog queries (the cache's relations).
    std::function<void(const std::string& database, void* conn)> with_primary;
  };

  explicit Monitor(std::chrono::milliseconds interval) : interval_(interval) {}
  ~Monitor() { stop(); }
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  // Replaces what is checked (at start and on reload); health of unchanged targets is kept.
  void set_targets(std::vector<BackendTarget> targets, std::chrono::milliseconds interval);
  void set_hooks(Hooks hooks);
  void start();
  void stop();
  // Runs the next round now (DDL seen: fetch the catalog soon; a fresh WAL position wanted).
  void wake();
  std::vector<BackendHealth> snapshot() const;

 private:
  struct Connection;
  void loop();
  BackendHealth check(const BackendTarget& t);
  void fetch_catalogs(const std::vector<BackendTarget>& targets);
  bool hooks_hurry();

  std::chrono::milliseconds interval_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::vector<BackendHealth> health_;
  Hooks hooks_;
  bool stop_ = false;
  bool woken_ = false;
  std::thread thread_;
  // Monitor thread only: one open connection per target with a login.
  std::vector<std::pair<BackendTarget, std::shared_ptr<Connection>>> conns_;
};

}  // namespace sluice::routing
