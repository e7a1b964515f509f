// Backend health monitor: PQping on its own thread, never on an event loop.
#include "routing/monitor.hpp"

#include <libpq-fe.h>

namespace sluice::routing {

std::string BackendTarget::address() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

void Monitor::set_targets(std::vector<BackendTarget> targets, std::chrono::milliseconds interval) {
  std::lock_guard lock(mu_);
  std::vector<BackendHealth> next;
  for (auto& t : targets) {
    BackendHealth h;
    for (const auto& old : health_) {
      if (old.target == t) h = old;
    }
    h.target = std::move(t);
    next.push_back(std::move(h));
  }
  health_ = std::move(next);
  interval_ = interval;
  wake_.notify_all();
}

void Monitor::start() {
  std::lock_guard lock(mu_);
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { loop(); });
}

void Monitor::stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    wake_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

std::vector<BackendHealth> Monitor::snapshot() const {
  std::lock_guard lock(mu_);
  return health_;
}

BackendHealth Monitor::check(const BackendTarget& t) {
  BackendHealth h;
  h.target = t;
  auto port = std::to_string(t.port);
  const char* keys[] = {"host",    "port", "dbname", "connect_timeout", "application_name",
                        "sslmode", nullptr};
  const char* values[] = {t.host.c_str(),  port.c_str(), t.dbname.c_str(), "1",
                          "sluice_health", "prefer",     nullptr};
  auto started = std::chrono::steady_clock::now();
  PGPing r = PQpingParams(keys, values, 0);
  h.rtt_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  h.checked = true;
  h.up = r == PQPING_OK;
  switch (r) {
    case PQPING_OK:
      break;
    case PQPING_REJECT:
      h.error = "the server refuses connections (starting up, shutting down or in recovery)";
      break;
    case PQPING_NO_RESPONSE:
      h.error = "no response (server down or unreachable)";
      break;
    case PQPING_NO_ATTEMPT:
      h.error = "no attempt made (invalid connection parameters)";
      break;
  }
  h.last_check = std::chrono::system_clock::now();
  return h;
}

void Monitor::loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    auto targets = health_;
    lock.unlock();
    std::vector<BackendHealth> results;
    for (const auto& h : targets) results.push_back(check(h.target));
    lock.lock();
    for (auto& r : results) {
      for (auto& h : health_) {
        if (!(h.target == r.target)) continue;
        r.checks = h.checks + 1;
        r.failures = h.failures + (r.up ? 0 : 1);
        h = std::move(r);
        break;
      }
    }
    wake_.wait_for(lock, interval_, [this] { return stop_; });
  }
}

}  // namespace sluice::routing
