// The admin console's SHOW commands: PgBouncer 1.18's columns for POOLS, STATS, SERVERS, CLIENTS,
// DATABASES, USERS, CONFIG, LISTS and VERSION, and sluice's QUERIES, REPLICAS and CACHE.
#include <algorithm>
#include <cstdio>

#include "server/admin_console.hpp"
#include "server/version.hpp"

namespace sluice::server::admin_detail {

namespace {

constexpr std::uint32_t kText = 25, kInt4 = 23, kNumeric = 1700;

std::string time_text(std::chrono::system_clock::time_point t) {
  return format_utc(t, "%Y-%m-%d %H:%M:%S UTC");  // as PgBouncer shows times
}

std::string num(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}
std::string num(std::uint64_t v) {
  return std::to_string(v);
}
std::string fixed3(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

std::string pointer_text(const void* p) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%p", p);
  return buf;
}

AdminResult table(std::vector<pg::Column> columns) {
  AdminResult r;
  r.columns = std::move(columns);
  r.tag = "SHOW";
  return r;
}

std::vector<pg::Column> connection_columns() {
  return {{"type", kText},         {"user", kText},       {"database", kText},
          {"state", kText},        {"addr", kText},       {"port", kInt4},
          {"local_addr", kText},   {"local_port", kInt4}, {"connect_time", kText},
          {"request_time", kText}, {"wait", kInt4},       {"wait_us", kInt4},
          {"close_needed", kInt4}, {"ptr", kText},        {"link", kText},
          {"remote_pid", kInt4},   {"tls", kText},        {"application_name", kText}};
}

std::string join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

}  // namespace

AdminResult AdminConsole::show(const std::string& what) {
  if (what == "POOLS") return show_pools();
  if (what == "STATS") return show_stats();
  if (what == "SERVERS") return show_servers();
  if (what == "CLIENTS") return show_clients();
  if (what == "DATABASES") return show_databases();
  if (what == "USERS") return show_users();
  if (what == "CONFIG") return show_config();
  if (what == "LISTS") return show_lists();
  if (what == "VERSION") {
    auto r = table({{"version", kText}});
    r.rows.push_back({"sluice " + std::string(version())});
    return r;
  }
  if (what == "QUERIES") return show_queries();
  if (what == "REPLICAS") return show_replicas();
  if (what == "HOSTS") return show_hosts();
  if (what == "CACHE") return show_cache();
  if (what == "HELP") {
    auto r = done("SHOW");
    r.notices.push_back(
        "Console usage\n\tSHOW HELP|POOLS|STATS|SERVERS|CLIENTS|DATABASES|USERS|CONFIG|LISTS|"
        "VERSION|QUERIES|REPLICAS|HOSTS|CACHE\n\tRELOAD\n\tPAUSE [<db>]\n\tRESUME "
        "[<db>]\n\tDISABLE "
        "<db>\n\tENABLE "
        "<db>\n\tKILL <db>\n\tRECONNECT [<db>]\n\tSHUTDOWN [WAIT_FOR_CLIENTS]");
    return r;
  }
  return error("42601", "unknown SHOW: " + what, "try SHOW HELP");
}

std::vector<PoolRow> AdminConsole::pool_rows() {
  std::map<std::pair<std::string, std::string>, PoolRow> rows;
  for (auto& [key, s] : rt_->pools.by_user()) rows[key].pool = std::move(s);
  auto now = Clock::now().time_since_epoch().count();
  for (const auto& h : rt_->sessions()) {
    auto info = h->snapshot();
    auto it = rows.find({info.database(), info.user()});
    if (info.admin || it == rows.end()) continue;
    if (h->state == ClientState::kWaiting) {
      ++it->second.cl_waiting;
      auto waited = Clock::duration(now - h->wait_since.load());
      it->second.max_wait = std::max(it->second.max_wait, waited);
    } else {
      ++it->second.cl_active;
    }
  }
  std::vector<PoolRow> out;
  for (auto& [k, v] : rows) out.push_back(std::move(v));
  return out;
}

AdminResult AdminConsole::show_pools() {
  auto r = table({{"database", kText},
                  {"user", kText},
                  {"cl_active", kInt4},
                  {"cl_waiting", kInt4},
                  {"cl_active_cancel_req", kInt4},
                  {"cl_waiting_cancel_req", kInt4},
                  {"sv_active", kInt4},
                  {"sv_active_cancel", kInt4},
                  {"sv_being_canceled", kInt4},
                  {"sv_idle", kInt4},
                  {"sv_used", kInt4},
                  {"sv_tested", kInt4},
                  {"sv_login", kInt4},
                  {"maxwait", kInt4},
                  {"maxwait_us", kInt4},
                  {"pool_mode", kText}});
  for (const auto& row : pool_rows()) {
    auto wait = std::max(row.max_wait, row.pool.max_wait);
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(wait).count();
    const auto& s = row.pool;
    r.rows.push_back({s.database, s.user, num(std::uint64_t{row.cl_active}),
                      num(std::uint64_t{row.cl_waiting}), "0", "0", num(std::uint64_t{s.active}),
                      "0", "0", num(std::uint64_t{s.idle}), "0", num(std::uint64_t{s.tested}),
                      num(std::uint64_t{s.login}), std::to_string(us / 1'000'000),
                      std::to_string(us % 1'000'000), s.mode});
  }
  return r;
}

AdminResult AdminConsole::show_stats() {
  std::vector<pg::Column> cols{{"database", kText}};
  for (const char* c :
       {"total_xact_count", "total_query_count", "total_received", "total_sent", "total_xact_time",
        "total_query_time", "total_wait_time", "avg_xact_count", "avg_query_count", "avg_recv",
        "avg_sent", "avg_xact_time", "avg_query_time", "avg_wait_time"})
    cols.push_back({c, kNumeric});
  auto r = table(std::move(cols));
  auto totals = rt_->obs.totals();
  auto averages = rt_->obs.averages();
  for (const auto& [name, db] : rt_->config()->databases) {
    auto t = totals[name];
    auto a = averages[name];
    r.rows.push_back({name, num(t.xacts), num(t.queries), num(t.received), num(t.sent),
                      num(t.xact_us), num(t.query_us), num(t.wait_us), num(a.xacts), num(a.queries),
                      num(a.received), num(a.sent), num(a.xact_us), num(a.query_us),
                      num(a.wait_us)});
  }
  return r;
}

AdminResult AdminConsole::show_servers() {
  auto r = table(connection_columns());
  for (const auto& p : rt_->pools.all()) {
    auto s = p->snapshot(true);
    for (const auto& sv : s.servers) {
      r.rows.push_back({"S", s.user, s.database, std::string(to_string(sv.state)), sv.addr,
                        std::to_string(sv.port), sv.local_addr, std::to_string(sv.local_port),
                        time_text(sv.connect_time), time_text(sv.request_time), "0", "0", "0",
                        "0x" + std::to_string(sv.remote_pid), "", std::to_string(sv.remote_pid),
                        sv.tls ? "TLS" : "", ""});
    }
  }
  return r;
}

AdminResult AdminConsole::show_clients() {
  auto r = table(connection_columns());
  auto now = Clock::now().time_since_epoch().count();
  for (const auto& h : rt_->sessions()) {
    auto info = h->snapshot();
    auto st = h->state.load();
    std::string state = st == ClientState::kLogin     ? "login"
                        : st == ClientState::kWaiting ? "waiting"
                                                      : "active";
    std::int64_t wait_us = 0;
    if (st == ClientState::kWaiting)
      wait_us = std::chrono::duration_cast<std::chrono::microseconds>(
                    Clock::duration(now - h->wait_since.load()))
                    .count();
    auto request = h->request_time.load();
    r.rows.push_back(
        {"C", info.user(), info.database(), state, info.addr, std::to_string(info.port),
         info.local_addr, std::to_string(info.local_port), time_text(info.connect_time),
         time_text(request > 0 ? std::chrono::system_clock::from_time_t(request)
                               : info.connect_time),
         std::to_string(wait_us / 1'000'000), std::to_string(wait_us % 1'000'000), "0",
         pointer_text(h.get()), "", "0", info.tls ? "TLS" : "", info.application_name()});
  }
  return r;
}

AdminResult AdminConsole::show_databases() {
  auto r = table({{"name", kText},
                  {"host", kText},
                  {"port", kInt4},
                  {"database", kText},
                  {"force_user", kText},
                  {"pool_size", kInt4},
                  {"min_pool_size", kInt4},
                  {"reserve_pool", kInt4},
                  {"pool_mode", kText},
                  {"max_connections", kInt4},
                  {"current_connections", kInt4},
                  {"paused", kInt4},
                  {"disabled", kInt4}});
  auto cfg = rt_->config();
  for (const auto& [name, db] : cfg->databases) {
    std::uint32_t current = 0;
    for (auto& p : rt_->pools.of_database(name)) {
      auto s = p->snapshot(false);
      current += s.active + s.idle + s.tested + s.login;
    }
    r.rows.push_back(
        {name, db.primary.host, std::to_string(db.primary.port), db.primary.dbname, "",
         std::to_string(db.pool_size.value_or(cfg->pool.size)),
         std::to_string(cfg->pool.min_pool_size), std::to_string(cfg->pool.reserve_pool_size),
         db.pool_mode ? std::string(config::to_string(*db.pool_mode)) : "",
         std::to_string(cfg->max_db_connections_for(db)), std::to_string(current),
         rt_->control.paused(name) ? "1" : "0", rt_->control.disabled(name) ? "1" : "0"});
  }
  return r;
}

AdminResult AdminConsole::show_users() {
  auto r = table({{"name", kText}, {"pool_mode", kText}});
  for (const auto& [name, u] : rt_->config()->users)
    r.rows.push_back({name, u.pool_mode ? std::string(config::to_string(*u.pool_mode)) : ""});
  return r;
}

AdminResult AdminConsole::show_config() {
  auto r = table({{"key", kText}, {"value", kText}, {"default", kText}, {"changeable", kText}});
  auto cfg = rt_->config();
  const config::Config d;
  auto ms = [](config::Duration v) { return std::to_string(v.count()) + "ms"; };
  auto add = [&](std::string key, std::string value, std::string def, bool changeable) {
    r.rows.push_back({std::move(key), std::move(value), std::move(def), changeable ? "yes" : "no"});
  };
  const auto& p = cfg->pool;
  add("listen.postgres", cfg->listen_postgres.to_string(), d.listen_postgres.to_string(), false);
  add("listen.http", cfg->listen_http ? cfg->listen_http->to_string() : "off",
      d.listen_http->to_string(), false);
  add("listen.so_reuseport", cfg->so_reuseport ? "true" : "false", "false", false);
  add("workers", std::to_string(cfg->workers), std::to_string(d.workers), false);
  add("auth_type", std::string(config::to_string(cfg->auth_type)),
      std::string(config::to_string(d.auth_type)), true);
  add("pool.mode", std::string(config::to_string(p.mode)),
      std::string(config::to_string(d.pool.mode)), true);
  add("pool.size", std::to_string(p.size), std::to_string(d.pool.size), true);
  add("pool.min_pool_size", std::to_string(p.min_pool_size), std::to_string(d.pool.min_pool_size),
      true);
  add("pool.reserve_pool_size", std::to_string(p.reserve_pool_size),
      std::to_string(d.pool.reserve_pool_size), true);
  add("pool.reserve_pool_timeout", ms(p.reserve_pool_timeout), ms(d.pool.reserve_pool_timeout),
      true);
  add("pool.max_client_conn", std::to_string(p.max_client_conn),
      std::to_string(d.pool.max_client_conn), true);
  add("pool.max_db_connections", std::to_string(p.max_db_connections),
      std::to_string(d.pool.max_db_connections), true);
  add("pool.max_prepared_statements", std::to_string(p.max_prepared_statements),
      std::to_string(d.pool.max_prepared_statements), true);
  add("pool.pinning", p.pin_is_error ? "error" : "pin", "pin", true);
  add("pool.reset_query", p.reset_query, d.pool.reset_query, true);
  add("pool.query_wait_timeout", ms(p.query_wait_timeout), ms(d.pool.query_wait_timeout), true);
  add("pool.query_timeout", ms(p.query_timeout), ms(d.pool.query_timeout), true);
  add("pool.idle_transaction_timeout", ms(p.idle_transaction_timeout),
      ms(d.pool.idle_transaction_timeout), true);
  add("pool.client_idle_timeout", ms(p.client_idle_timeout), ms(d.pool.client_idle_timeout), true);
  add("pool.client_login_timeout", ms(p.client_login_timeout), ms(d.pool.client_login_timeout),
      true);
  add("pool.server_connect_timeout", ms(p.server_connect_timeout),
      ms(d.pool.server_connect_timeout), true);
  add("pool.server_idle_timeout", ms(p.server_idle_timeout), ms(d.pool.server_idle_timeout), true);
  add("pool.server_lifetime", ms(p.server_lifetime), ms(d.pool.server_lifetime), true);
  add("shutdown_timeout", ms(cfg->shutdown_timeout), ms(d.shutdown_timeout), true);
  add("health_check_interval", ms(cfg->health_check_interval), ms(d.health_check_interval), true);
  add("stats_period", ms(cfg->stats_period), ms(d.stats_period), true);
  add("insights.slow_query_threshold", ms(cfg->insights.slow_query_threshold),
      ms(d.insights.slow_query_threshold), true);
  add("insights.slow_log_interval", ms(cfg->insights.slow_log_interval),
      ms(d.insights.slow_log_interval), true);
  add("insights.explain", cfg->insights.explain ? "true" : "false", "false", true);
  add("admin.users", join(cfg->admin.users), "", true);
  add("admin.stats_users", join(cfg->admin.stats_users), "", true);
  add("log.level", cfg->log.level, d.log.level, true);
  add("limits.max_message_size", std::to_string(cfg->max_message_size),
      std::to_string(d.max_message_size), false);
  return r;
}

AdminResult AdminConsole::show_lists() {
  auto r = table({{"list", kText}, {"items", kInt4}});
  auto cfg = rt_->config();
  std::uint64_t used = 0, login = 0, servers = 0;
  for (const auto& h : rt_->sessions()) {
    if (h->state == ClientState::kLogin)
      ++login;
    else
      ++used;
  }
  auto pools = rt_->pools.all();
  for (auto& p : pools) {
    auto s = p->snapshot(false);
    servers += s.active + s.idle + s.tested;
  }
  for (auto [name, n] :
       {std::pair{"databases", std::uint64_t{cfg->databases.size()}},
        std::pair{"users", std::uint64_t{cfg->users.size()}},
        std::pair{"pools", std::uint64_t{pools.size()}},
        std::pair{"free_clients", std::uint64_t{0}}, std::pair{"used_clients", used},
        std::pair{"login_clients", login}, std::pair{"free_servers", std::uint64_t{0}},
        std::pair{"used_servers", servers}, std::pair{"dns_names", std::uint64_t{0}},
        std::pair{"dns_zones", std::uint64_t{0}}, std::pair{"dns_queries", std::uint64_t{0}},
        std::pair{"dns_pending", std::uint64_t{0}}})
    r.rows.push_back({std::string(name), std::to_string(n)});
  return r;
}

// Read routing: each replica's health, lag, ban and load.
// Every server of every database and its role: learned from the server (databases.*.hosts:
// primary, replica, fenced, unknown) or as configured.
AdminResult AdminConsole::show_hosts() {
  auto r = table({{"database", kText},
                  {"host", kText},
                  {"port", kNumeric},
                  {"role", kText},
                  {"learned", kText},
                  {"timeline", kNumeric},
                  {"in_recovery", kText},
                  {"error", kText},
                  {"why", kText}});
  auto opt = [](const std::string& s) {
    return s.empty() ? std::nullopt : std::optional<std::string>(s);
  };
  for (const auto& h : host_status(*rt_)) {
    r.rows.push_back(
        {h.database, h.host, num(std::uint64_t{h.port}), h.role,
         std::string(h.learned ? "yes" : "no"),
         h.timeline ? std::optional<std::string>(num(std::uint64_t{*h.timeline})) : std::nullopt,
         h.in_recovery ? std::optional<std::string>(*h.in_recovery ? "yes" : "no") : std::nullopt,
         opt(h.error), opt(h.why)});
  }
  return r;
}

AdminResult AdminConsole::show_replicas() {
  auto r = table({{"database", kText},
                  {"address", kText},
                  {"weight", kNumeric},
                  {"banned", kText},
                  {"reason", kText},
                  {"banned_for_s", kNumeric},
                  {"bans", kNumeric},
                  {"in_recovery", kText},
                  {"replay_lsn", kText},
                  {"lag_bytes", kNumeric},
                  {"lag_s", kNumeric},
                  {"outstanding", kNumeric},
                  {"reads", kNumeric}});
  const auto now = std::chrono::steady_clock::now();
  for (const auto& [db, set] : rt_->routes.all()) {
    for (const auto& s : set->status(now)) {
      r.rows.push_back(
          {db, s.address, num(std::uint64_t{s.weight}), std::string(s.banned ? "yes" : "no"),
           s.reason.empty() ? std::nullopt : std::optional<std::string>(s.reason),
           fixed3(s.banned_for_seconds), num(s.bans),
           std::string(!s.checked      ? "?"
                       : s.in_recovery ? "yes"
                                       : "no"),
           s.replay_lsn ? std::optional<std::string>(routing::format_lsn(*s.replay_lsn))
                        : std::nullopt,
           num(s.lag_bytes), fixed3(s.lag_seconds), num(std::uint64_t{s.outstanding}),
           num(s.reads)});
    }
  }
  return r;
}

// The query cache: totals, each rule, each table read (hit ratio), the top statements by hits.
namespace {
std::string not_stored_detail(const std::string& reason) {
  if (reason == "first_miss")
    return "cache.admission: repeat stores a key's reply at its second miss (or when the query "
           "ran cache.admit_after or longer)";
  if (reason == "too_large") return "over cache.max_entry_bytes";
  return "the reply was an error or not seen whole";
}
}  // namespace

AdminResult AdminConsole::show_cache() {
  auto r = table({{"kind", kText},
                  {"name", kText},
                  {"hits", kNumeric},
                  {"misses", kNumeric},
                  {"hit_ratio", kNumeric},
                  {"bytes", kNumeric},
                  {"detail", kText}});
  if (!rt_->redis_cache()) return r;
  const auto& c = *rt_->redis_cache();
  auto ratio = [](std::uint64_t h, std::uint64_t m) {
    return fixed3(h + m == 0 ? 0.0 : static_cast<double>(h) / static_cast<double>(h + m));
  };
  std::uint64_t hits = 0, misses = 0, bypassed = 0;
  for (const auto& [rule, k] : c.all_counters()) {
    hits += k->hits;
    misses += k->misses;
  }
  std::uint64_t not_stored = 0;
  for (const auto& [reason, n] : c.bypasses()) bypassed += n;
  for (const auto& [reason, n] : c.not_stored()) not_stored += n;
  r.rows.push_back({std::string("total"), std::string(c.redis_up() ? "redis up" : "redis down"),
                    num(hits), num(misses), ratio(hits, misses), num(c.l1().bytes()),
                    "l1 entries " + std::to_string(c.l1().size()) + ", bypassed " +
                        std::to_string(bypassed) + ", not stored " + std::to_string(not_stored) +
                        ", unbumped databases " + std::to_string(c.unbumped())});
  for (const auto& [reason, n] : c.not_stored())
    r.rows.push_back({std::string("not_stored"), reason, std::nullopt, num(n), std::nullopt,
                      std::nullopt, not_stored_detail(reason)});
  for (const auto& [rule, k] : c.all_counters()) {
    r.rows.push_back({std::string("rule"), rule, num(k->hits.load()), num(k->misses.load()),
                      ratio(k->hits, k->misses), num(k->hit_bytes.load()),
                      "fills " + std::to_string(k->fills.load()) + ", skipped " +
                          std::to_string(k->skipped_fills.load())});
  }
  for (const auto& [table, t] : c.table_stats())
    r.rows.push_back({std::string("table"), table, num(t.hits), num(t.misses),
                      ratio(t.hits, t.misses), std::nullopt, std::nullopt});
  auto statements = c.fingerprint_stats();
  std::vector<std::pair<std::string, cache::Cache::KeyStats>> top(statements.begin(),
                                                                  statements.end());
  std::sort(top.begin(), top.end(),
            [](const auto& a, const auto& b) { return a.second.hits > b.second.hits; });
  if (top.size() > 20) top.resize(20);
  for (const auto& [fingerprint, k] : top)
    r.rows.push_back({std::string("statement"), fingerprint, num(k.hits), num(k.misses),
                      ratio(k.hits, k.misses), num(k.bytes),
                      "rule " + k.rule + (k.cold ? ", cold (keys do not repeat)" : "") +
                          ", not stored " + std::to_string(k.not_stored) + ", lookups skipped " +
                          std::to_string(k.skipped) + ": " + k.sample});
  return r;
}

AdminResult AdminConsole::show_queries() {
  auto r = table({{"fingerprint", kText},
                  {"query", kText},
                  {"calls", kNumeric},
                  {"total_ms", kNumeric},
                  {"mean_ms", kNumeric},
                  {"p99_ms", kNumeric},
                  {"max_ms", kNumeric},
                  {"rows", kNumeric},
                  {"errors", kNumeric},
                  {"slow_calls", kNumeric},
                  {"primary", kNumeric},
                  {"replica", kNumeric},
                  {"cache", kNumeric},
                  {"cache_hit_ratio", kNumeric},
                  {"plan", kText}});
  for (const auto& q : rt_->obs.insights.top(1000)) {
    double cache = static_cast<double>(q.by_route[2]);
    r.rows.push_back({q.id, q.normalized, num(q.calls), fixed3(q.total_seconds * 1e3),
                      fixed3(q.mean_seconds * 1e3), fixed3(q.p99_seconds * 1e3),
                      fixed3(q.max_seconds * 1e3), num(q.rows), num(q.errors), num(q.slow_calls),
                      num(q.by_route[0]), num(q.by_route[1]), num(q.by_route[2]),
                      fixed3(cache / static_cast<double>(q.calls)),
                      q.plan.empty() ? std::nullopt : std::optional<std::string>(q.plan)});
  }
  return r;
}

}  // namespace sluice::server::admin_detail
