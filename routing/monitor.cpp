// Backend health monitor: blocking libpq on its own thread, never on an event loop.
#include "routing/monitor.hpp"

#include <libpq-fe.h>

#include "routing/replicas.hpp"

namespace sluice::routing {

std::string BackendTarget::address() const {
  const auto& h = server.host;
  if (h.find(':') != std::string::npos) return "[" + h + "]:" + std::to_string(server.port);
  return h + ":" + std::to_string(server.port);
}

struct Monitor::Connection {
  PgConnPtr conn{nullptr, PQfinish};
  void close() { conn.reset(); }
};

namespace {

// The one query of a check: recovery state, the WAL position that matters for the role and, on
// a writable server, the timeline it writes on (the WAL file name's first 8 hex digits: it moves
// at promotion, where pg_control_checkpoint() waits for the next checkpoint). A server only ever
// leaves recovery while it runs, so pg_walfile_name() (an error in recovery) runs only where it
// may.
constexpr const char* kCheckSql =
    "SELECT pg_catalog.pg_is_in_recovery(), CASE WHEN pg_catalog.pg_is_in_recovery() "
    "THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_insert_lsn() END, "
    "CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL ELSE pg_catalog.substr("
    "pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_lsn()), 1, 8) END";

std::optional<std::uint32_t> parse_timeline(const char* hex) {
  std::uint32_t v = 0;
  std::size_t n = 0;
  for (; hex[n] != '\0'; ++n) {
    const char c = hex[n];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0 || n >= 8) return std::nullopt;
    v = v * 16 + static_cast<std::uint32_t>(d);
  }
  if (n != 8) return std::nullopt;
  return v;
}

std::string first_line(const char* msg) {
  std::string s = msg ? msg : "";
  if (auto nl = s.find('\n'); nl != std::string::npos) s.resize(nl);
  return s;
}

// Health checks give up quickly; a statement_timeout bounds the catalog queries too.
constexpr LibpqOptions kHealthLogin{"sluice_health", 2, "-c statement_timeout=2000"};
constexpr LibpqOptions kHealthPing{"sluice_health", 1, nullptr};

std::string ping_error(PGPing r) {
  switch (r) {
    case PQPING_OK:
      return {};
    case PQPING_REJECT:
      return "the server refuses connections (starting up, shutting down or in recovery)";
    case PQPING_NO_RESPONSE:
      return "no response (server down or unreachable)";
    case PQPING_NO_ATTEMPT:
      return "no attempt made (invalid connection parameters)";
  }
  return "?";
}

}  // namespace

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
  woken_ = true;
  wake_.notify_all();
}

void Monitor::set_hooks(Hooks hooks) {
  std::lock_guard lock(mu_);
  hooks_ = std::move(hooks);
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
  conns_.clear();
}

void Monitor::wake() {
  std::lock_guard lock(mu_);
  woken_ = true;
  wake_.notify_all();
}

std::vector<BackendHealth> Monitor::snapshot() const {
  std::lock_guard lock(mu_);
  return health_;
}

BackendHealth Monitor::check(const BackendTarget& t) {
  BackendHealth h;
  h.target = t;
  h.checked = true;
  auto started = std::chrono::steady_clock::now();
  h.started_at = started;
  auto finish = [&] {
    h.rtt_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    h.last_check = std::chrono::system_clock::now();
    h.checked_at = std::chrono::steady_clock::now();
  };
  if (!t.server.user.empty()) {
    std::shared_ptr<Connection> c;
    for (auto& [target, conn] : conns_) {
      if (target == t) c = conn;
    }
    if (!c) {
      c = std::make_shared<Connection>();
      conns_.emplace_back(t, c);
    }
    if (c->conn && PQstatus(c->conn.get()) != CONNECTION_OK) c->close();
    if (!c->conn) c->conn = libpq_connect(t.server, kHealthLogin);
    if (PQstatus(c->conn.get()) == CONNECTION_OK) {
      PGresult* r = PQexec(c->conn.get(), kCheckSql);
      if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        h.up = h.queried = true;
        h.in_recovery = std::string_view(PQgetvalue(r, 0, 0)) == "t";
        if (!PQgetisnull(r, 0, 1)) h.lsn = parse_lsn(PQgetvalue(r, 0, 1));
        if (!PQgetisnull(r, 0, 2)) h.timeline = parse_timeline(PQgetvalue(r, 0, 2));
        PQclear(r);
        finish();
        return h;
      }
      h.error = first_line(PQresultErrorMessage(r));
      PQclear(r);
    } else {
      h.error = first_line(PQerrorMessage(c->conn.get()));
    }
    c->close();  // reconnect next round
  }
  // No login, or it failed: is the server reachable at all?
  PGPing ping = libpq_ping(t.server, kHealthPing);
  h.up = ping == PQPING_OK;
  if (h.error.empty()) h.error = ping_error(ping);
  finish();
  return h;
}

void Monitor::fetch_catalogs(const std::vector<BackendTarget>& targets) {
  Hooks hooks;
  {
    std::lock_guard lock(mu_);
    hooks = hooks_;
  }
  if (!hooks.catalog_wanted || !hooks.catalog_loaded) return;
  for (const auto& t : targets) {
    const bool primary =
        t.role == "primary" || (t.role == "auto" && hooks.elected && hooks.elected(t));
    if (!primary || t.server.user.empty() || !hooks.catalog_wanted(t.database)) continue;
    PGconn* conn = nullptr;
    for (auto& [target, c] : conns_) {
      if (target == t) conn = c->conn.get();
    }
    if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) continue;
    if (auto catalog = load_function_catalog(conn))
      hooks.catalog_loaded(t.database, std::move(catalog));
    if (hooks.with_primary) hooks.with_primary(t.database, conn);
  }
}

bool Monitor::hooks_hurry() {
  std::function<bool()> hurry;
  {
    std::lock_guard lock(mu_);
    hurry = hooks_.hurry;
  }
  return hurry && hurry();
}

void Monitor::loop() {
  std::unique_lock lock(mu_);
  while (!stop_) {
    woken_ = false;
    std::vector<BackendTarget> targets;
    // Primaries, and servers whose role is learned, first: a session waiting for a primary's
    // WAL position or for a new primary does not wait for the replicas' checks.
    for (const auto& h : health_) {
      if (h.target.role != "replica") targets.push_back(h.target);
    }
    for (const auto& h : health_) {
      if (h.target.role == "replica") targets.push_back(h.target);
    }
    lock.unlock();
    // Connections of targets no longer configured are closed.
    std::erase_if(conns_, [&](const auto& e) {
      return std::find(targets.begin(), targets.end(), e.first) == targets.end();
    });
    std::vector<BackendHealth> results;
    std::size_t primaries = 0;
    // What snapshot() shows is stored before the hooks see it: a role learned from a check
    // never shows beside the check before it.
    auto store = [this](std::vector<BackendHealth>::iterator from,
                        std::vector<BackendHealth>::iterator to) {
      std::lock_guard store_lock(mu_);
      for (auto r = from; r != to; ++r) {
        for (auto& h : health_) {
          if (!(h.target == r->target)) continue;
          r->checks = h.checks + 1;
          r->failures = h.failures + (r->up ? 0 : 1);
          h = *r;
          break;
        }
      }
    };
    for (const auto& t : targets) {
      if (t.role != "replica") ++primaries;
      results.push_back(check(t));
      if (results.size() != primaries) continue;
      store(results.begin(), results.end());
      Hooks hooks;
      {
        std::lock_guard hooks_lock(mu_);
        hooks = hooks_;
      }
      if (hooks.round_done) hooks.round_done(results);  // the primaries', at once
    }
    const auto first_replica = results.begin() + static_cast<std::ptrdiff_t>(primaries);
    store(first_replica, results.end());
    fetch_catalogs(targets);
    lock.lock();
    auto done = hooks_.round_done;
    lock.unlock();
    if (done) {
      std::vector<BackendHealth> replicas(first_replica, results.end());
      if (!replicas.empty()) done(replicas);
    }
    const bool hurry = hooks_hurry();
    lock.lock();
    const auto wait = hurry ? std::max(interval_ / 5, std::chrono::milliseconds(20)) : interval_;
    wake_.wait_for(lock, wait, [this] { return stop_ || woken_; });
  }
}

}  // namespace sluice::routing
