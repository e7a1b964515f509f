// The health monitor's wiring: what it checks (every database's primary and replicas) and where
// its findings go (read routing, the query cache's catalogs).
#include <spdlog/spdlog.h>

#include "server/app.hpp"

namespace sluice::server {

// What the monitor checks: every database's primary and replicas.
void App::watch_backends() {
  auto cfg = rt_->config();
  std::vector<routing::BackendTarget> targets;
  // Read routing needs recovery state and WAL positions, the cache the catalog: those checks
  // log in as the health user.
  const auto* login = cfg->health_user();
  if (!login && !rt_->routes.all().empty())
    spdlog::warn(
        "routing: no user to check replicas with (recovery state, lag): replicas stay "
        "banned and reads go to the primary; list a user under users: and set "
        "routing.health_user");
  if (!login && rt_->redis_cache())
    spdlog::warn(
        "cache: no user to read the catalog with: nothing is cached; list a user under users: "
        "and set routing.health_user");
  for (const auto& entry : cfg->databases) {
    const auto& name = entry.first;  // not a structured binding: lambdas capture it (clang)
    const auto& db = entry.second;
    auto target = [&](const char* role, const auto& server) {
      routing::BackendTarget t{name, role, {}};
      t.server.host = server.host;
      t.server.port = server.port;
      t.server.dbname = server.dbname;
      if (login && (rt_->routes.get(name) || rt_->cache || db.auto_roles())) {
        t.server.user = login->server_user;
        t.server.password = login->server_password;
      }
      routing::apply_server_tls(t.server, cfg->tls);
      return t;
    };
    if (db.auto_roles()) {  // roles learned: the same targets whatever each one turns out to be
      for (const auto& h : db.hosts) targets.push_back(target("auto", h));
      continue;
    }
    targets.push_back(target("primary", db.primary));
    for (const auto& r : db.replicas) targets.push_back(target("replica", r));
  }
  rt_->obs.monitor.set_targets(std::move(targets), cfg->health_check_interval);
}

namespace {

// Databases whose servers' roles are learned: each round's checks elect the primary, fence what
// must not take writes, and make the hosts in recovery replicas (server/failover.hpp). A server
// that lost the primary role has its pooled connections closed as they come back: the next
// write opens one on the new primary.
void learn_roles(Runtime& rt, const std::vector<routing::BackendHealth>& results) {
  std::map<std::string, std::vector<routing::HostCheck>> by_db;
  for (const auto& h : results) {
    if (h.target.role != "auto") continue;
    routing::HostCheck c;
    c.address = h.target.address();
    c.ok = h.queried;
    c.in_recovery = h.in_recovery;
    c.timeline = h.timeline;
    c.error = h.error;
    by_db[h.target.database].push_back(std::move(c));
  }
  for (const auto& [db, checks] : by_db) {
    auto change = rt.failover.update(db, checks,
                                     [&rt](auto derived) { rt.install_roles(std::move(derived)); });
    for (const auto& line : change.log) {
      if (line.find("-> fenced") != std::string::npos)
        spdlog::error(
            "database {}: {}: fenced, it gets no writes and no reads until it is rebuilt as a "
            "standby of the primary (SHOW HOSTS on the admin console)",
            db, line);
      else if (line.find(": found ") != std::string::npos)
        spdlog::info("database {}: {}", db, line);
      else
        spdlog::warn("database {}: {}", db, line);
    }
    if (change.old_primary) {
      for (const auto& pool : rt.pools.of_database(db)) {
        if (pool->server_address() == *change.old_primary) pool->reconnect();
      }
    }
    if (!change.log.empty()) rt.obs.monitor.wake();  // confirm the new roles at once
  }
}

}  // namespace

// The monitor's findings go to each database's read routing.
void App::feed_routes() {
  routing::Monitor::Hooks hooks;
  // The monitor is part of the Runtime and stops (joins its thread) before the Runtime goes:
  // a plain pointer, so the hooks make no reference cycle.
  Runtime* rt = rt_.get();
  hooks.round_done = [rt](const std::vector<routing::BackendHealth>& results) {
    learn_roles(*rt, results);
    // Primaries first: lag is measured against them. A learned host counts as what it was
    // just found to be.
    auto role_of = [rt](const routing::BackendHealth& h) -> std::string {
      if (h.target.role != "auto") return h.target.role;
      if (rt->failover.elected(h.target.database, h.target.address())) return "primary";
      return h.queried && h.in_recovery ? "replica" : "";
    };
    for (const auto& h : results) {
      if (role_of(h) != "primary") continue;
      if (h.queried && h.lsn && !h.in_recovery)
        rt->positions.primary_read(h.target.database, h.started_at, *h.lsn);
      if (auto set = rt->routes.get(h.target.database))
        set->primary_sample(h.checked_at, h.queried ? h.lsn : std::nullopt);
    }
    for (const auto& h : results) {
      if (role_of(h) != "replica") continue;
      auto set = rt->routes.get(h.target.database);
      if (!set) continue;
      routing::ReplicaCheck c;
      c.ok = h.queried;
      c.error = h.error;
      c.in_recovery = h.in_recovery;
      c.replay_lsn = h.lsn;
      set->replica_checked(h.target.address(), h.checked_at, c);
    }
  };
  hooks.hurry = [rt] { return rt->failover.any_without_primary(); };
  hooks.elected = [rt](const routing::BackendTarget& t) {
    return rt->failover.elected(t.database, t.address());
  };
  hooks.catalog_wanted = [rt](const std::string& db) {
    const auto now = std::chrono::steady_clock::now();
    const auto refresh = rt->config()->routing.catalog_refresh;
    auto set = rt->routes.get(db);
    return (set && set->catalog_wanted(now, refresh)) ||
           (rt->cache && rt->cache->catalog_wanted(db, now, refresh));
  };
  hooks.catalog_loaded = [rt](const std::string& db,
                              std::shared_ptr<const routing::FunctionCatalog> catalog) {
    spdlog::debug("{} functions of database {} loaded from its primary", catalog->size(), db);
    if (rt->cache) rt->cache->set_functions(db, catalog);
    if (auto set = rt->routes.get(db)) set->set_catalog(std::move(catalog));
  };
  hooks.with_primary = [rt](const std::string& db, void* conn) {
    if (!rt->cache) return;
    const auto now = std::chrono::steady_clock::now();
    if (!rt->cache->catalog_wanted(db, now, rt->config()->routing.catalog_refresh)) return;
    std::string why;
    auto catalog = cache::load_catalog(conn, rt->cache->functions(db), &why);
    if (!catalog) {
      spdlog::warn("cache: cannot load the relations of database {}: {}", db, why);
      return;
    }
    spdlog::debug("cache: {} relations of database {} loaded (namespace {})",
                  catalog->relations.size(), db, catalog->ns);
    rt->cache->set_catalog(db, std::move(catalog));
  };
  if (rt_->cache) rt_->cache->on_catalog_stale([rt] { rt->obs.monitor.wake(); });
  rt_->obs.monitor.set_hooks(std::move(hooks));
}

}  // namespace sluice::server
