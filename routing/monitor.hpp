// Backend health monitor: its own thread pings every configured primary and replica with libpq
// (PQping: reachability without credentials) every interval; readiness and /status read it.
// Replica lag and bans build on it (routing issue).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace sluice::routing {

struct BackendTarget {
  std::string database;  // the name clients use
  std::string role;      // "primary" | "replica"
  std::string host;
  std::uint16_t port = 5432;
  std::string dbname;
  std::string address() const;
  bool operator==(const BackendTarget&) const = default;
};

struct BackendHealth {
  BackendTarget target;
  bool checked = false;  // at least one check finished
  bool up = false;
  std::string error;  // why the last check failed
  double rtt_seconds = 0;
  std::uint64_t checks = 0;
  std::uint64_t failures = 0;
  std::chrono::system_clock::time_point last_check{};
};

class Monitor {
 public:
  explicit Monitor(std::chrono::milliseconds interval) : interval_(interval) {}
  ~Monitor() { stop(); }
  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

  // Replaces what is checked (at start and on reload); health of unchanged targets is kept.
  void set_targets(std::vector<BackendTarget> targets, std::chrono::milliseconds interval);
  void start();
  void stop();
  std::vector<BackendHealth> snapshot() const;

 private:
  void loop();
  static BackendHealth check(const BackendTarget& t);

  std::chrono::milliseconds interval_;
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::vector<BackendHealth> health_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace sluice::routing
