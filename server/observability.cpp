// Metric families, per-pool counters, SHOW STATS arithmetic and the scrape-time collectors.
#include "server/observability.hpp"

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "server/mongo.hpp"
#include "server/runtime.hpp"
#include "server/version.hpp"
#include "server/wal_follower.hpp"

namespace sluice::server {

namespace {

const std::vector<std::string> kPoolLabels{"database", "user"};

// Query durations: 100 µs .. ~105 s.
std::vector<double> duration_buckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
          0.25,   0.5,     1,      2.5,   5,      10,    30,   60,    120};
}

struct ProcessStats {
  double cpu_seconds = 0;
  double rss_bytes = 0;
  double vsize_bytes = 0;
  double open_fds = 0;
  double max_fds = 0;
};

ProcessStats process_stats() {
  ProcessStats p;
  std::ifstream stat("/proc/self/stat");
  std::string line;
  std::getline(stat, line);
  // Fields after the command name (which may hold spaces) start at state, field 3.
  auto close = line.rfind(')');
  if (close != std::string::npos) {
    std::istringstream in(line.substr(close + 2));
    std::vector<std::string> f;
    for (std::string w; in >> w;) f.push_back(w);
    const double tick = static_cast<double>(sysconf(_SC_CLK_TCK));
    const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
    if (f.size() > 21) {
      p.cpu_seconds = (std::stod(f[11]) + std::stod(f[12])) / tick;  // utime + stime
      p.vsize_bytes = std::stod(f[20]);
      p.rss_bytes = std::stod(f[21]) * page;
    }
  }
  if (DIR* d = opendir("/proc/self/fd")) {
    while (const dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') p.open_fds += 1;
    }
    closedir(d);
    p.open_fds -= 1;  // the directory stream itself
  }
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) == 0) p.max_fds = static_cast<double>(lim.rlim_cur);
  return p;
}

double seconds_since_epoch(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

}  // namespace

Observability::Observability()
    : queries_(registry.counter("sluice_queries_total",
                                "Statements executed for clients (CommandComplete or "
                                "ErrorResponse), by where they ran.",
                                {"database", "user", "route"})),
      transactions_(registry.counter("sluice_transactions_total",
                                     "Transactions completed (ReadyForQuery idle after a request).",
                                     kPoolLabels)),
      received_(registry.counter("sluice_client_received_bytes_total",
                                 "Bytes received from clients.", kPoolLabels)),
      sent_(registry.counter("sluice_client_sent_bytes_total", "Bytes sent to clients.",
                             kPoolLabels)),
      query_us_(registry.counter("sluice_query_time_seconds_total",
                                 "Time spent in client requests (request to ReadyForQuery).",
                                 kPoolLabels, 1e-6)),
      xact_us_(registry.counter("sluice_transaction_time_seconds_total",
                                "Time spent in transactions.", kPoolLabels, 1e-6)),
      wait_us_(registry.counter("sluice_client_wait_seconds_total",
                                "Time clients waited for a server connection.", kPoolLabels, 1e-6)),
      waits_(registry.counter("sluice_client_waits_total",
                              "Checkouts that had to wait for a server connection.", kPoolLabels)),
      query_duration_(registry.histogram("sluice_query_duration_seconds",
                                         "Duration of client requests, request to ReadyForQuery.",
                                         kPoolLabels, duration_buckets())),
      consistent_(registry.counter(
          "sluice_consistent_reads_total",
          "Reads routed with a WAL position to reach (routing.read_consistency), by outcome: "
          "replica (at once), waited (for a replica to replay), primary_behind.",
          {"database", "outcome"})),
      consistency_wait_us_(registry.counter(
          "sluice_consistency_wait_seconds_total",
          "Time reads waited for a replica to replay up to their position.", {"database"}, 1e-6)),
      errors_(registry.counter("sluice_errors_total",
                               "ErrorResponses sent to clients, by SQLSTATE class.", {"class"})),
      pins_(registry.counter("sluice_pins_total",
                             "Transaction-pooled clients pinned to a server connection (or "
                             "refused with pool.pinning: error), by reason.",
                             {"reason"})),
      slow_(registry.counter("sluice_slow_queries_total",
                             "Requests slower than insights.slow_query_threshold.", {"database"})),
      logins_(
          registry.counter("sluice_client_logins_total", "Client logins, by result.", {"result"})),
      cache_hit_duration_(
          registry
              .histogram("sluice_cache_hit_duration_seconds",
                         "Requests answered from the cache: request to the reply written.", {},
                         {0.00005, 0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.0025, 0.005,
                          0.01, 0.05})
              .with({})) {}

std::shared_ptr<const PoolCounters> Observability::counters(const std::string& database,
                                                            const std::string& user) {
  std::lock_guard lock(mu_);
  auto& slot = by_pool_[{database, user}];
  if (!slot) {
    auto c = std::make_shared<PoolCounters>();
    for (std::size_t r = 0; r < routing::kRouteNames.size(); ++r)
      c->queries[r] = &queries_.with({database, user, std::string(routing::kRouteNames[r])});
    c->transactions = &transactions_.with({database, user});
    c->received_bytes = &received_.with({database, user});
    c->sent_bytes = &sent_.with({database, user});
    c->query_us = &query_us_.with({database, user});
    c->xact_us = &xact_us_.with({database, user});
    c->wait_us = &wait_us_.with({database, user});
    c->waits = &waits_.with({database, user});
    c->query_duration = &query_duration_.with({database, user});
    const std::array<const char*, 3> outcomes{"replica", "waited", "primary_behind"};
    for (std::size_t o = 0; o < outcomes.size(); ++o)
      c->consistent[o] = &consistent_.with({database, outcomes[o]});
    c->consistency_wait_us = &consistency_wait_us_.with({database});
    slot = std::move(c);
  }
  return slot;
}

void Observability::count_error(std::string_view sqlstate) {
  errors_.with({std::string(sqlstate.substr(0, 2))}).inc();
}
void Observability::count_pin(std::string_view reason) {
  pins_.with({std::string(reason)}).inc();
}
void Observability::count_slow(const std::string& database) {
  slow_.with({database}).inc();
}
void Observability::count_login(bool ok) {
  logins_.with({ok ? "ok" : "failed"}).inc();
}

std::map<std::string, DbTotals> Observability::totals() const {
  std::lock_guard lock(mu_);
  std::map<std::string, DbTotals> out;
  for (const auto& [key, c] : by_pool_) {
    auto& t = out[key.first];
    for (auto* q : c->queries) t.queries += static_cast<double>(q->value());
    t.xacts += static_cast<double>(c->transactions->value());
    t.received += static_cast<double>(c->received_bytes->value());
    t.sent += static_cast<double>(c->sent_bytes->value());
    t.xact_us += static_cast<double>(c->xact_us->value());
    t.query_us += static_cast<double>(c->query_us->value());
    t.wait_us += static_cast<double>(c->wait_us->value());
  }
  return out;
}

void Observability::roll_stats_period(double seconds) {
  auto now = totals();
  std::lock_guard lock(mu_);
  averages_.clear();
  for (const auto& [db, t] : now) {
    DbTotals before;
    if (auto it = period_start_.find(db); it != period_start_.end()) before = it->second;
    DbTotals a;
    double xacts = t.xacts - before.xacts, queries = t.queries - before.queries;
    a.xacts = xacts / seconds;
    a.queries = queries / seconds;
    a.received = (t.received - before.received) / seconds;
    a.sent = (t.sent - before.sent) / seconds;
    a.xact_us = xacts > 0 ? (t.xact_us - before.xact_us) / xacts : 0;
    a.query_us = queries > 0 ? (t.query_us - before.query_us) / queries : 0;
    a.wait_us = xacts > 0 ? (t.wait_us - before.wait_us) / xacts : 0;
    averages_[db] = a;
  }
  period_start_ = std::move(now);
}

std::map<std::string, DbTotals> Observability::averages() const {
  std::lock_guard lock(mu_);
  return averages_;
}

std::string format_utc(std::chrono::system_clock::time_point t, const char* format) {
  auto secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, format, &tm);
  return buf;
}

// Databases whose cache hits stop because the WAL follower is behind or not following.
static void follower_warnings(Runtime& rt, const config::Config& cfg,
                              std::vector<std::string>& out) {
  if (!rt.redis_cache() || !cfg.cache.follows_wal()) return;
  const auto own = rt.follower ? rt.follower->status() : std::map<std::string, FollowerStatus>{};
  const double bound = static_cast<double>(cfg.cache.max_invalidation_lag.count()) / 1000.0;
  for (const auto& [name, db] : cfg.databases) {
    auto lag = invalidation_lag_s(rt, name);
    if (lag && *lag <= bound) continue;
    std::string w = "cache hits for database " + name + " stop: the WAL follower " +
                    (lag ? "is " + std::to_string(*lag).substr(0, 5) + " s behind"
                         : std::string("has not caught up yet")) +
                    " (cache.max_invalidation_lag " + std::to_string(bound).substr(0, 5) + " s)";
    if (auto it = own.find(name); it != own.end() && !it->second.error.empty())
      w += "; this instance's WAL follower: " + it->second.error;
    out.push_back(std::move(w));
  }
}

std::vector<HostStatus> host_status(Runtime& rt) {
  const auto learned = rt.failover.snapshot();
  std::vector<HostStatus> out;
  for (const auto& h : rt.obs.monitor.snapshot()) {
    HostStatus s;
    s.database = h.target.database;
    s.host = h.target.server.host;
    s.port = h.target.server.port;
    s.address = h.target.address();
    s.role = h.target.role;
    if (h.queried) {
      s.in_recovery = h.in_recovery;
      s.timeline = h.timeline;
    }
    if (h.checked && !h.queried) s.error = h.error;
    if (auto t = learned.find(s.database); t != learned.end() && h.target.role == "auto") {
      s.learned = true;
      s.role = "unknown";
      for (const auto& v : t->second.hosts()) {
        if (v.address != s.address) continue;
        s.role = std::string(routing::to_string(v.role));
        s.why = v.why;
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

Probe readiness(Runtime& rt) {
  if (rt.stopping) return {false, "shutting down"};
  if (!rt.accepting) return {false, "the postgres listener is not accepting connections"};
  auto cfg = rt.config();
  auto health = rt.obs.monitor.snapshot();
  std::vector<std::string> fenced;
  for (const auto& h : host_status(rt)) {
    if (h.role == "fenced")
      fenced.push_back("database " + h.database + ": server " + h.address + " is fenced (" + h.why +
                       "): no writes or reads go to it");
  }
  for (const auto& [name, db] : cfg->databases) {
    if (db.auto_roles()) {  // learned roles: ready while a primary is elected
      if (!db.primary_known)
        return {false, "database " + name +
                           " has no primary: no server of its hosts is writable (SHOW HOSTS)"};
      continue;
    }
    const routing::BackendHealth* found = nullptr;
    for (const auto& h : health) {
      if (h.target.database == name && h.target.role == "primary") found = &h;
    }
    std::string where = "primary of database " + name + " (" + db.primary.host + ":" +
                        std::to_string(db.primary.port) + ")";
    if (!found || !found->checked) return {false, where + " not checked yet"};
    if (!found->up) return {false, where + " unreachable: " + found->error};
  }
  if (rt.mongo) return rt.mongo->readiness();
  Probe ready{true, "ready"};
  ready.warnings = std::move(fenced);
  follower_warnings(rt, *cfg, ready.warnings);
  return ready;
}

std::optional<double> invalidation_lag_s(Runtime& rt, const std::string& db) {
  auto* cache = rt.redis_cache();
  if (!cache) return std::nullopt;
  auto catalog = cache->catalog(db);
  if (!catalog) return std::nullopt;
  auto fresh = cache->fresh_ms(catalog->ns);
  if (!fresh) return std::nullopt;
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  return static_cast<double>(std::max<std::int64_t>(now - *fresh, 0)) / 1000.0;
}

Probe liveness(Runtime& rt) {
  auto now = Clock::now().time_since_epoch().count();
  auto limit = std::chrono::duration_cast<Clock::duration>(std::chrono::seconds(5)).count();
  for (std::uint32_t i = 0; i < rt.loops; ++i) {
    auto beat = rt.heartbeats[i].load();
    if (now - beat > limit)
      return {false, "event loop " + std::to_string(i) + " has not run for over 5 s"};
  }
  return {true, "alive"};
}

namespace {

// The version, readiness and clients by state.
void collect_info_and_clients(Runtime& rt, const config::Config& cfg, metrics::Writer& w) {
  w.family("sluice_info", "gauge", "Version of the running sluice (always 1).");
  w.sample("sluice_info", {"version"}, {std::string(version())}, 1);
  w.family("sluice_ready", "gauge", "1 when /readyz answers 200.");
  w.sample("sluice_ready", readiness(rt).ok ? 1 : 0);

  std::map<std::string, double> by_state{{"login", 0}, {"active", 0}, {"waiting", 0}, {"admin", 0}};
  for (const auto& h : rt.sessions()) {
    auto info = h->snapshot();
    auto st = h->state.load();
    if (info.admin) {
      by_state["admin"] += 1;
    } else if (st == ClientState::kLogin) {
      by_state["login"] += 1;
    } else if (st == ClientState::kWaiting) {
      by_state["waiting"] += 1;
    } else {
      by_state["active"] += 1;
    }
  }
  w.family("sluice_client_connections", "gauge",
           "Client connections by state: login (authenticating), active (logged in), waiting "
           "(for a server connection), admin (on the admin console).");
  for (const auto& [state, n] : by_state)
    w.sample("sluice_client_connections", {"state"}, {state}, n);
  w.family("sluice_clients_parked", "gauge",
           "Idle pooled clients parked between transactions: a socket and a shared identity, no "
           "session object (counted in sluice_client_connections too).");
  w.sample("sluice_clients_parked", rt.parked.load());
  w.family("sluice_client_connections_max", "gauge", "pool.max_client_conn.");
  w.sample("sluice_client_connections_max", cfg.pool.max_client_conn);
}

// Server connections by pool and state; pools of one (database, user) from before a reload add
// up.
void collect_pools(Runtime& rt, metrics::Writer& w) {
  auto pools = rt.pools.by_user();
  auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  w.family("sluice_server_connections", "gauge",
           "Server connections by pool and state (active: linked to a client; idle; used; "
           "tested: running the reset query; login: being opened).");
  for (const auto& [key, s] : pools) {
    for (auto [state, v] :
         {std::pair{"active", s.active}, std::pair{"idle", s.idle}, std::pair{"used", 0u},
          std::pair{"tested", s.tested}, std::pair{"login", s.login}})
      w.sample("sluice_server_connections", {"database", "user", "state"},
               {key.first, key.second, state}, v);
  }
  w.family("sluice_clients_waiting", "gauge", "Clients waiting for a server connection.");
  for (const auto& [key, s] : pools)
    w.sample("sluice_clients_waiting", kPoolLabels, {key.first, key.second}, s.waiting);
  w.family("sluice_client_max_wait_seconds", "gauge",
           "How long the longest-waiting client has waited for a server connection.");
  for (const auto& [key, s] : pools)
    w.sample("sluice_client_max_wait_seconds", kPoolLabels, {key.first, key.second},
             seconds(s.max_wait));
  w.family("sluice_server_prepared_statements", "gauge",
           "Prepared statements sluice keeps on the pool's server connections (transaction "
           "pooling; per connection at most pool.max_prepared_statements).");
  for (const auto& [key, s] : pools)
    w.sample("sluice_server_prepared_statements", kPoolLabels, {key.first, key.second},
             static_cast<double>(s.prepared));
}

// Configured pool sizes and the databases' PAUSE/DISABLE state.
void collect_databases(Runtime& rt, const config::Config& cfg, metrics::Writer& w) {
  w.family("sluice_pool_size", "gauge", "Configured server connections per (database, user).");
  for (const auto& [dn, db] : cfg.databases) {
    for (const auto& [un, u] : cfg.users)
      w.sample("sluice_pool_size", kPoolLabels, {dn, un}, cfg.pool_size_for(db, u));
  }
  w.family("sluice_database_paused", "gauge", "1 while the database is PAUSEd or KILLed.");
  w.family("sluice_database_disabled", "gauge", "1 while the database is DISABLEd.");
  for (const auto& [dn, db] : cfg.databases) {
    w.sample("sluice_database_paused", {"database"}, {dn}, rt.control.paused(dn) ? 1 : 0);
    w.sample("sluice_database_disabled", {"database"}, {dn}, rt.control.disabled(dn) ? 1 : 0);
  }
}

// The health checks of every backend.
void collect_backends(Runtime& rt, metrics::Writer& w) {
  auto health = rt.obs.monitor.snapshot();
  w.family("sluice_backend_up", "gauge",
           "1 when the backend answered the last health check (libpq PQping).");
  for (const auto& h : health)
    w.sample("sluice_backend_up", {"database", "role", "address"},
             {h.target.database, h.target.role, h.target.address()}, h.up ? 1 : 0);
  w.family("sluice_backend_check_duration_seconds", "gauge", "Duration of the last health check.");
  for (const auto& h : health)
    w.sample("sluice_backend_check_duration_seconds", {"database", "role", "address"},
             {h.target.database, h.target.role, h.target.address()}, h.rtt_seconds);
}

// Every server's role (learned or configured) and the role changes of learned ones.
void collect_hosts(Runtime& rt, metrics::Writer& w) {
  const std::vector<std::string> labels{"database", "server", "role"};
  w.family("sluice_host_role", "gauge",
           "1 for the server's current role (primary, replica, fenced, unknown); learned from "
           "the server with databases.*.hosts, else as configured.");
  for (const auto& h : host_status(rt)) {
    for (const char* role : {"primary", "replica", "fenced", "unknown"})
      w.sample("sluice_host_role", labels, {h.database, h.address, role}, h.role == role ? 1 : 0);
  }
  w.family("sluice_role_changes_total", "counter",
           "Role changes of the servers of a database with learned roles (promotions, "
           "demotions, fencing, a lost primary).");
  for (const auto& [db, t] : rt.failover.snapshot())
    w.sample("sluice_role_changes_total", {"database"}, {db},
             static_cast<double>(t.role_changes()));
}

// Read routing: replica bans and lag.
void collect_replicas(Runtime& rt, metrics::Writer& w) {
  const auto now = std::chrono::steady_clock::now();
  std::vector<std::pair<std::string, routing::ReplicaStatus>> replicas;
  for (const auto& [db, set] : rt.routes.all()) {
    for (auto& s : set->status(now)) replicas.emplace_back(db, std::move(s));
  }
  const std::vector<std::string> da{"database", "address"};
  w.family("sluice_replica_banned", "gauge",
           "1 while read routing keeps reads off the replica (unreachable, failing, not in "
           "recovery, or lagging).");
  for (const auto& [db, s] : replicas)
    w.sample("sluice_replica_banned", da, {db, s.address}, s.banned ? 1 : 0);
  w.family("sluice_replica_lag_seconds", "gauge",
           "Age of the oldest primary WAL the replica has not replayed (0 when caught up).");
  for (const auto& [db, s] : replicas)
    w.sample("sluice_replica_lag_seconds", da, {db, s.address}, s.lag_seconds);
  w.family("sluice_replica_lag_bytes", "gauge",
           "Primary WAL position minus the replica's replay position.");
  for (const auto& [db, s] : replicas)
    w.sample("sluice_replica_lag_bytes", da, {db, s.address}, static_cast<double>(s.lag_bytes));
  w.family("sluice_replica_bans_total", "counter", "Times the replica was banned.");
  for (const auto& [db, s] : replicas)
    w.sample("sluice_replica_bans_total", da, {db, s.address}, static_cast<double>(s.bans));
  w.family("sluice_replica_reads_total", "counter", "Transactions routed to the replica.");
  for (const auto& [db, s] : replicas)
    w.sample("sluice_replica_reads_total", da, {db, s.address}, static_cast<double>(s.reads));
}

// Query insights: the top fingerprints by total time (bounded cardinality).
void collect_top_queries(Runtime& rt, const config::Config& cfg, metrics::Writer& w) {
  auto top = rt.obs.insights.top(cfg.insights.top_n);
  const std::vector<std::string> q{"fingerprint", "query"};
  auto label = [](const routing::QuerySnapshot& s) {
    return s.normalized.size() > 120 ? s.normalized.substr(0, 117) + "..." : s.normalized;
  };
  w.family("sluice_top_query_calls_total", "counter",
           "Calls of the statement fingerprints with the most total time (insights.top_n).");
  for (const auto& s : top)
    w.sample("sluice_top_query_calls_total", q, {s.id, label(s)}, static_cast<double>(s.calls));
  w.family("sluice_top_query_seconds_total", "counter", "Total time of those fingerprints.");
  for (const auto& s : top)
    w.sample("sluice_top_query_seconds_total", q, {s.id, label(s)}, s.total_seconds);
  w.family("sluice_top_query_p99_seconds", "gauge",
           "99th percentile duration of those fingerprints (bucket upper bound).");
  for (const auto& s : top)
    w.sample("sluice_top_query_p99_seconds", q, {s.id, label(s)}, s.p99_seconds);
  w.family("sluice_query_fingerprints", "gauge", "Statement fingerprints tracked by insights.");
  w.sample("sluice_query_fingerprints", static_cast<double>(rt.obs.insights.size()));
}

// The process: CPU, memory, file descriptors, start time.
void collect_process(Runtime& rt, metrics::Writer& w) {
  auto p = process_stats();
  w.family("process_cpu_seconds_total", "counter", "User and system CPU time of sluice.");
  w.sample("process_cpu_seconds_total", p.cpu_seconds);
  w.family("process_resident_memory_bytes", "gauge", "Resident memory of sluice.");
  w.sample("process_resident_memory_bytes", p.rss_bytes);
  w.family("process_virtual_memory_bytes", "gauge", "Virtual memory of sluice.");
  w.sample("process_virtual_memory_bytes", p.vsize_bytes);
  w.family("process_open_fds", "gauge", "Open file descriptors.");
  w.sample("process_open_fds", p.open_fds);
  w.family("process_max_fds", "gauge", "File descriptor limit.");
  w.sample("process_max_fds", p.max_fds);
  w.family("process_start_time_seconds", "gauge", "Start time of sluice, seconds since the epoch.");
  w.sample("process_start_time_seconds", seconds_since_epoch(rt.started));
}

}  // namespace

void Observability::add_runtime_collectors(Runtime& rt) {
  registry.add_collector([&rt](metrics::Writer& w) { collect_cache(rt, w); });
  registry.add_collector([&rt](metrics::Writer& w) {
    auto cfg = rt.config();
    collect_info_and_clients(rt, *cfg, w);
    collect_pools(rt, w);
    collect_databases(rt, *cfg, w);
    collect_backends(rt, w);
    collect_hosts(rt, w);
    collect_replicas(rt, w);
    collect_top_queries(rt, *cfg, w);
    collect_process(rt, w);
  });
}

}  // namespace sluice::server
