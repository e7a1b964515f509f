// Loads and validates sluice's YAML configuration; every error names the key and the line.
#include "config/config.hpp"

#include <arpa/inet.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "protocol/pg/md5.hpp"

namespace sluice::config {

std::string Endpoint::to_string() const {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

std::string_view to_string(PoolMode m) {
  switch (m) {
    case PoolMode::kSession:
      return "session";
    case PoolMode::kTransaction:
      return "transaction";
    case PoolMode::kStatement:
      return "statement";
  }
  return "?";
}

std::string_view to_string(AuthType a) {
  switch (a) {
    case AuthType::kScram:
      return "scram-sha-256";
    case AuthType::kMd5:
      return "md5";
    case AuthType::kTrust:
      return "trust";
  }
  return "?";
}

const Database* Config::database(const std::string& name) const {
  auto it = databases.find(name);
  return it == databases.end() ? nullptr : &it->second;
}
const User* Config::user(const std::string& name) const {
  auto it = users.find(name);
  return it == users.end() ? nullptr : &it->second;
}
const User* Config::health_user() const {
  if (!routing.health_user.empty()) return user(routing.health_user);
  // Users only on the admin console may not exist on the server: prefer one that is not.
  for (const auto& [name, u] : users) {
    if (!is_admin(name)) return &u;
  }
  return users.empty() ? nullptr : &users.begin()->second;
}
bool Config::is_admin(const std::string& user) const {
  return std::find(admin.users.begin(), admin.users.end(), user) != admin.users.end();
}
bool Config::is_stats_user(const std::string& user) const {
  return is_admin(user) || std::find(admin.stats_users.begin(), admin.stats_users.end(), user) !=
                               admin.stats_users.end();
}

PoolMode Config::pool_mode_for(const Database& db, const User& u) const {
  return u.pool_mode.value_or(db.pool_mode.value_or(pool.mode));
}
std::uint32_t Config::pool_size_for(const Database& db, const User& u) const {
  return u.pool_size.value_or(db.pool_size.value_or(pool.size));
}

namespace {

std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      cur[j] =
          std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// Walks the YAML tree, remembering the source for "FILE:LINE: key 'x': ..." messages.
class Loader {
 public:
  explicit Loader(std::string source) : source_(std::move(source)) {}

  [[noreturn]] void fail(const YAML::Node& at, const std::string& key,
                         const std::string& what) const {
    std::ostringstream msg;
    msg << source_;
    if (at.IsDefined() && at.Mark().line >= 0) msg << ":" << at.Mark().line + 1;
    msg << ": key '" << key << "': " << what;
    throw ConfigError(msg.str());
  }

  // Rejects keys outside `allowed`, suggesting the closest known one.
  void check_keys(const YAML::Node& map, const std::string& path,
                  std::initializer_list<std::string_view> allowed) const {
    if (!map.IsMap()) fail(map, path, "expected a mapping");
    for (const auto& kv : map) {
      auto key = kv.first.as<std::string>();
      if (std::find(allowed.begin(), allowed.end(), key) != allowed.end()) continue;
      std::string_view best;
      std::size_t best_d = 3;
      for (auto a : allowed) {
        auto d = edit_distance(key, a);
        if (d < best_d) best_d = d, best = a;
      }
      std::string full = path.empty() ? key : path + "." + key;
      std::string what = "unknown key";
      if (!best.empty()) what += " (did you mean '" + std::string(best) + "'?)";
      fail(kv.first, full, what);
    }
  }

  // A scalar with ${VAR} / ${VAR:-default} expanded from the environment.
  std::string str(const YAML::Node& n, const std::string& path) const {
    if (!n.IsScalar()) fail(n, path, "expected a string");
    const auto raw = n.Scalar();
    std::string out;
    for (std::size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '$' && i + 1 < raw.size() && raw[i + 1] == '{') {
        auto end = raw.find('}', i);
        if (end == std::string::npos) fail(n, path, "unterminated ${...}");
        std::string name = raw.substr(i + 2, end - i - 2);
        std::optional<std::string> fallback;
        if (auto d = name.find(":-"); d != std::string::npos) {
          fallback = name.substr(d + 2);
          name.resize(d);
        }
        const char* v = std::getenv(name.c_str());
        if (v != nullptr && *v != '\0') {
          out += v;
        } else if (fallback) {
          out += *fallback;
        } else {
          fail(n, path, "environment variable " + name + " is not set");
        }
        i = end;
      } else {
        out.push_back(raw[i]);
      }
    }
    return out;
  }

  std::uint64_t uint(const YAML::Node& n, const std::string& path, std::uint64_t min,
                     std::uint64_t max) const {
    auto s = str(n, path);
    std::uint64_t v = 0;
    bool ok = !s.empty() && s.size() < 19 && std::all_of(s.begin(), s.end(), ::isdigit);
    if (ok) v = std::stoull(s);
    if (!ok || v < min || v > max) {
      fail(n, path,
           "expected a whole number from " + std::to_string(min) + " to " + std::to_string(max) +
               ", got '" + s + "'");
    }
    return v;
  }

  // "30" (seconds), "30s", "500ms", "2m", "1h".
  Duration duration(const YAML::Node& n, const std::string& path) const {
    auto s = str(n, path);
    std::size_t digits = 0;
    while (digits < s.size() && std::isdigit(static_cast<unsigned char>(s[digits]))) ++digits;
    std::string unit = s.substr(digits);
    std::uint64_t mult = 0;
    if (unit.empty() || unit == "s")
      mult = 1000;
    else if (unit == "ms")
      mult = 1;
    else if (unit == "m" || unit == "min")
      mult = 60'000;
    else if (unit == "h")
      mult = 3'600'000;
    if (digits == 0 || digits > 9 || mult == 0) {
      fail(n, path,
           "expected a duration like 30s, 500ms, 2m or a number of seconds, got '" + s + "'");
    }
    return Duration(static_cast<Duration::rep>(std::stoull(s.substr(0, digits)) * mult));
  }

  template <typename E>
  E choice(const YAML::Node& n, const std::string& path,
           std::initializer_list<std::pair<std::string_view, E>> options) const {
    auto s = str(n, path);
    std::string names;
    for (const auto& [name, value] : options) {
      if (s == name) return value;
      names += names.empty() ? "" : " | ";
      names += name;
    }
    fail(n, path, "expected one of " + names + ", got '" + s + "'");
  }

  Endpoint endpoint(const YAML::Node& n, const std::string& path) const {
    auto s = str(n, path);
    auto colon = s.rfind(':');
    if (colon == std::string::npos || colon == 0)
      fail(n, path, "expected host:port, got '" + s + "'");
    Endpoint e;
    e.host = s.substr(0, colon);
    if (e.host.front() == '[' && e.host.back() == ']') e.host = e.host.substr(1, e.host.size() - 2);
    auto port = s.substr(colon + 1);
    if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit) ||
        std::stoul(port) > 65535) {
      fail(n, path, "expected host:port with a port from 0 to 65535, got '" + s + "'");
    }
    e.port = static_cast<std::uint16_t>(std::stoul(port));
    return e;
  }

  PoolMode pool_mode(const YAML::Node& n, const std::string& path) const {
    return choice<PoolMode>(n, path,
                            {{"session", PoolMode::kSession},
                             {"transaction", PoolMode::kTransaction},
                             {"statement", PoolMode::kStatement}});
  }

  // `role`, when given, must be `expected` (the list the server sits in) or auto; sets *auto_role.
  Backend backend(const YAML::Node& n, const std::string& path, const std::string& db,
                  const char* expected = nullptr, bool* auto_role = nullptr) const {
    check_keys(n, path, {"host", "port", "dbname", "weight", "role"});
    if (n["role"]) {
      if (!expected || !auto_role)
        fail(n["role"], path + ".role", "is not used here: every host's role is learned");
      if (choice<bool>(n["role"], path + ".role", {{expected, false}, {"auto", true}}))
        *auto_role = true;
    }
    Backend b;
    if (!n["host"]) fail(n, path + ".host", "is required");
    b.host = str(n["host"], path + ".host");
    if (n["port"]) b.port = static_cast<std::uint16_t>(uint(n["port"], path + ".port", 1, 65535));
    b.dbname = n["dbname"] ? str(n["dbname"], path + ".dbname") : db;
    if (n["weight"])
      b.weight = static_cast<std::uint32_t>(uint(n["weight"], path + ".weight", 1, 1000));
    return b;
  }

  void load(const YAML::Node& root, Config& c) const {
    if (!root.IsDefined() || root.IsNull()) fail(root, "(top)", "the file is empty");
    check_keys(root, "",
               {"listen", "workers", "auth_type", "databases", "users", "pool", "cache", "tls",
                "log", "shutdown_timeout", "limits", "admin", "insights", "health_check_interval",
                "stats_period", "routing", "mongo", "failover_timeout"});
    if (auto l = root["listen"]) {
      check_keys(l, "listen", {"postgres", "http", "so_reuseport", "mongo"});
      if (l["postgres"]) c.listen_postgres = endpoint(l["postgres"], "listen.postgres");
      if (l["http"]) {
        if (l["http"].IsScalar() && l["http"].Scalar() == "off") {
          c.listen_http.reset();
        } else {
          c.listen_http = endpoint(l["http"], "listen.http");
        }
      }
      if (l["so_reuseport"]) c.so_reuseport = boolean(l["so_reuseport"], "listen.so_reuseport");
    }
    load_admin(root["admin"], c.admin);
    load_insights(root["insights"], c.insights);
    load_routing(root["routing"], c.routing);
    if (root["health_check_interval"]) {
      c.health_check_interval = duration(root["health_check_interval"], "health_check_interval");
      if (c.health_check_interval.count() < 100)
        fail(root["health_check_interval"], "health_check_interval", "must be at least 100ms");
    }
    if (root["failover_timeout"]) {
      c.failover_timeout = duration(root["failover_timeout"], "failover_timeout");
    }
    if (root["stats_period"]) {
      c.stats_period = duration(root["stats_period"], "stats_period");
      if (c.stats_period.count() < 1000)
        fail(root["stats_period"], "stats_period", "must be at least 1s");
    }
    if (root["workers"])
      c.workers = static_cast<std::uint32_t>(uint(root["workers"], "workers", 1, 64));
    if (root["auth_type"]) {
      c.auth_type = choice<AuthType>(root["auth_type"], "auth_type",
                                     {{"scram-sha-256", AuthType::kScram},
                                      {"md5", AuthType::kMd5},
                                      {"trust", AuthType::kTrust}});
    }
    load_pool(root["pool"], c.pool);
    load_databases(root, c);
    load_users(root, c);
    load_cache(root["cache"], c.cache);
    load_mongo(root, c);
    if (!c.routing.health_user.empty() && !c.users.contains(c.routing.health_user))
      fail(root["routing"]["health_user"], "routing.health_user",
           "user '" + c.routing.health_user +
               "' is not listed under users: (its server login checks the replicas)");
    for (const auto& [name, db] : c.databases) {
      if (db.auto_roles() && !c.health_user())
        fail(root["databases"][name], "databases." + name,
             "learns its servers' roles (hosts:, role: auto) by logging in to them: list a user "
             "under users: (or set routing.health_user)");
    }
    for (const auto* list : {&c.admin.users, &c.admin.stats_users}) {
      const char* key = list == &c.admin.users ? "admin.users" : "admin.stats_users";
      for (std::size_t i = 0; i < list->size(); ++i) {
        if (c.auth_type != AuthType::kTrust && !c.users.contains((*list)[i]))
          fail(root["admin"][list == &c.admin.users ? "users" : "stats_users"][i],
               std::string(key) + "[" + std::to_string(i) + "]",
               "user '" + (*list)[i] + "' is not listed under users: (it must log in)");
      }
    }
    load_tls(root["tls"], c.tls);
    if (auto l = root["log"]) {
      check_keys(l, "log", {"level", "format"});
      if (l["level"]) {
        auto level = str(l["level"], "log.level");
        static const std::set<std::string> kLevels{"trace", "debug", "info",
                                                   "warn",  "error", "off"};
        if (!kLevels.contains(level))
          fail(l["level"], "log.level", "expected trace | debug | info | warn | error | off");
        c.log.level = level;
      }
      if (l["format"])
        c.log.json = choice<bool>(l["format"], "log.format", {{"text", false}, {"json", true}});
    }
    if (root["shutdown_timeout"])
      c.shutdown_timeout = duration(root["shutdown_timeout"], "shutdown_timeout");
    if (auto lim = root["limits"]) {
      check_keys(lim, "limits", {"max_message_size"});
      if (lim["max_message_size"]) {
        c.max_message_size = static_cast<std::uint32_t>(
            uint(lim["max_message_size"], "limits.max_message_size", 1024, 0x3fffffff));
      }
    }
  }

  bool boolean(const YAML::Node& n, const std::string& path) const {
    return choice<bool>(n, path, {{"true", true}, {"false", false}, {"on", true}, {"off", false}});
  }

  std::vector<std::string> names(const YAML::Node& n, const std::string& path) const {
    if (!n.IsSequence()) fail(n, path, "expected a list of user names");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < n.size(); ++i)
      out.push_back(str(n[i], path + "[" + std::to_string(i) + "]"));
    return out;
  }

  void load_admin(const YAML::Node& a, Admin& admin) const {
    if (!a) return;
    check_keys(a, "admin", {"users", "stats_users"});
    if (a["users"]) admin.users = names(a["users"], "admin.users");
    if (a["stats_users"]) admin.stats_users = names(a["stats_users"], "admin.stats_users");
  }

  void load_insights(const YAML::Node& n, Insights& in) const {
    if (!n) return;
    check_keys(n, "insights",
               {"slow_query_threshold", "slow_log_interval", "explain", "seq_scan_rows", "top_n",
                "max_fingerprints"});
    if (n["slow_query_threshold"])
      in.slow_query_threshold =
          duration(n["slow_query_threshold"], "insights.slow_query_threshold");
    if (n["slow_log_interval"])
      in.slow_log_interval = duration(n["slow_log_interval"], "insights.slow_log_interval");
    if (n["explain"]) in.explain = boolean(n["explain"], "insights.explain");
    if (n["seq_scan_rows"])
      in.seq_scan_rows = uint(n["seq_scan_rows"], "insights.seq_scan_rows", 0, 1'000'000'000'000);
    if (n["top_n"])
      in.top_n = static_cast<std::uint32_t>(uint(n["top_n"], "insights.top_n", 0, 200));
    if (n["max_fingerprints"])
      in.max_fingerprints = static_cast<std::uint32_t>(
          uint(n["max_fingerprints"], "insights.max_fingerprints", 10, 100'000));
  }

  void load_cache(const YAML::Node& n, Cache& c) const {
    if (!n) return;
    check_keys(n, "cache",
               {"redis", "enabled", "mode", "default_ttl", "max_entry_bytes", "l1_bytes",
                "command_timeout", "connect_timeout", "fill_wait", "rls", "rules", "invalidation",
                "follow_wal", "max_invalidation_lag", "wal_slot", "wal_publication", "admission",
                "admit_after"});
    if (n["redis"]) {
      c.redis = str(n["redis"], "cache.redis");
      if (!c.redis.starts_with("redis://"))
        fail(n["redis"], "cache.redis", "expected a redis://[user:password@]host:port[/db] URL");
    }
    if (n["enabled"]) c.enabled = boolean(n["enabled"], "cache.enabled");
    if (n["mode"]) c.all = choice<bool>(n["mode"], "cache.mode", {{"all", true}, {"rules", false}});
    if (n["default_ttl"]) c.default_ttl = duration(n["default_ttl"], "cache.default_ttl");
    if (c.default_ttl.count() < 1)
      fail(n["default_ttl"], "cache.default_ttl", "must be at least 1ms");
    if (n["max_entry_bytes"])
      c.max_entry_bytes = uint(n["max_entry_bytes"], "cache.max_entry_bytes", 64, 512u << 20);
    if (n["l1_bytes"]) c.l1_bytes = uint(n["l1_bytes"], "cache.l1_bytes", 0, 1ull << 40);
    if (n["command_timeout"])
      c.command_timeout = duration(n["command_timeout"], "cache.command_timeout");
    if (n["connect_timeout"])
      c.connect_timeout = duration(n["connect_timeout"], "cache.connect_timeout");
    if (n["fill_wait"]) c.fill_wait = duration(n["fill_wait"], "cache.fill_wait");
    if (c.command_timeout.count() < 1)
      fail(n["command_timeout"], "cache.command_timeout", "must be at least 1ms");
    if (n["invalidation"]) c.invalidation = boolean(n["invalidation"], "cache.invalidation");
    if (n["follow_wal"]) c.follow_wal = boolean(n["follow_wal"], "cache.follow_wal");
    if (n["admission"])
      c.admit_repeated =
          choice<bool>(n["admission"], "cache.admission", {{"repeat", true}, {"always", false}});
    if (n["admit_after"]) c.admit_after = duration(n["admit_after"], "cache.admit_after");
    if (n["max_invalidation_lag"]) {
      c.max_invalidation_lag = duration(n["max_invalidation_lag"], "cache.max_invalidation_lag");
      if (c.max_invalidation_lag.count() < 100 || c.max_invalidation_lag.count() > 3'600'000)
        fail(n["max_invalidation_lag"], "cache.max_invalidation_lag",
             "must be between 100ms and 1h (the follower is probed every 100ms)");
    }
    for (auto [key, out] :
         {std::pair{"wal_slot", &c.wal_slot}, std::pair{"wal_publication", &c.wal_publication}}) {
      if (!n[key]) continue;
      const std::string path = std::string("cache.") + key;
      *out = str(n[key], path);
      const bool ok =
          !out->empty() && out->size() <= 40 && std::all_of(out->begin(), out->end(), [](char ch) {
            return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_';
          });
      if (!ok) fail(n[key], path, "expected 1 to 40 lower-case letters, digits or _");
    }
    if (n["rls"])
      c.rls_by_role = choice<bool>(n["rls"], "cache.rls", {{"skip", false}, {"by_role", true}});
    if (auto rules = n["rules"]) {
      if (!rules.IsSequence()) fail(rules, "cache.rules", "expected a list of rules");
      for (std::size_t i = 0; i < rules.size(); ++i) {
        const auto& r = rules[i];
        const std::string path = "cache.rules[" + std::to_string(i) + "]";
        check_keys(r, path, {"name", "tables", "fingerprints", "action", "ttl"});
        CacheRule rule;
        rule.name = r["name"] ? str(r["name"], path + ".name") : "rule" + std::to_string(i + 1);
        for (const char* key : {"tables", "fingerprints"}) {
          auto list = r[key];
          if (!list) continue;
          if (!list.IsSequence()) fail(list, path + "." + key, "expected a list");
          auto& out = std::string_view(key) == "tables" ? rule.tables : rule.fingerprints;
          for (std::size_t j = 0; j < list.size(); ++j) {
            auto v = str(list[j], path + "." + key);
            for (auto& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
            out.push_back(std::move(v));
          }
        }
        if (rule.tables.empty() && rule.fingerprints.empty())
          fail(r, path, "a rule needs tables or fingerprints to match");
        if (r["action"])
          rule.cache =
              choice<bool>(r["action"], path + ".action", {{"cache", true}, {"skip", false}});
        if (r["ttl"]) rule.ttl = duration(r["ttl"], path + ".ttl");
        c.rules.push_back(std::move(rule));
      }
    }
  }

  // 127.0.0.0/8, ::1 (also v4-mapped) and localhost; any other name may resolve anywhere.
  static bool loopback(const std::string& host) {
    if (host == "localhost") return true;
    in_addr v4{};
    if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
    in6_addr v6{};
    if (inet_pton(AF_INET6, host.c_str(), &v6) != 1) return false;
    const auto* b = v6.s6_addr;
    const bool zeros10 = std::all_of(b, b + 10, [](std::uint8_t x) { return x == 0; });
    if (zeros10 && b[10] == 0 && b[11] == 0 && b[12] == 0 && b[13] == 0 && b[14] == 0 && b[15] == 1)
      return true;                                                     // ::1
    return zeros10 && b[10] == 0xff && b[11] == 0xff && b[12] == 127;  // ::ffff:127.x.x.x
  }

  // Command names, or the aggregation stages the listener refuses.
  std::vector<std::string> allow_commands(const YAML::Node& list) const {
    if (!list.IsSequence())
      fail(list, "mongo.allow_commands", "expected a list of command names like [serverStatus]");
    std::vector<std::string> out;
    for (std::size_t i = 0; i < list.size(); ++i) {
      const std::string path = "mongo.allow_commands[" + std::to_string(i) + "]";
      auto name = str(list[i], path);
      const bool stage = name.starts_with("$");
      const std::string_view word = stage ? std::string_view(name).substr(1) : name;
      if (word.empty() || !std::isalpha(static_cast<unsigned char>(word.front())) ||
          !std::all_of(word.begin(), word.end(), [](char ch) {
            return std::isalnum(static_cast<unsigned char>(ch)) || ch == '_';
          }))
        fail(list[i], path, "expected a command name like serverStatus, got '" + name + "'");
      if (stage && name != "$currentOp" && name != "$listSessions" && name != "$listLocalSessions")
        fail(list[i], path,
             "the only stages sluice refuses are $currentOp, $listSessions or $listLocalSessions, "
             "got '" +
                 name + "'");
      out.push_back(std::move(name));
    }
    return out;
  }

  void load_mongo(const YAML::Node& root, Config& c) const {
    auto n = root["mongo"];
    // Looked up through const nodes: yaml-cpp's non-const operator[] inserts the key.
    const YAML::Node listen_map = root["listen"];
    const bool has_listen = listen_map && listen_map.IsMap() && listen_map["mongo"];
    const YAML::Node listen = has_listen ? listen_map["mongo"] : YAML::Node();
    if (!n) {
      if (has_listen)
        fail(listen, "listen.mongo", "set, but there is no mongo: section naming the servers");
      return;
    }
    check_keys(
        n, "mongo",
        {"uri", "servers", "name", "pool_size", "connect_timeout", "wait_timeout",
         "heartbeat_interval", "min_max_staleness", "cache", "allow_remote", "allow_commands"});
    Mongo m;
    if (n["allow_remote"]) m.allow_remote = boolean(n["allow_remote"], "mongo.allow_remote");
    if (has_listen) m.listen = endpoint(listen, "listen.mongo");
    if (has_listen && !m.allow_remote && !loopback(m.listen.host))
      fail(listen, "listen.mongo",
           "'" + m.listen.host +
               "' is not a loopback address: sluice's MongoDB listener does not authenticate "
               "clients, so whoever reaches it uses the servers; keep it on 127.0.0.1 or ::1, or "
               "set mongo.allow_remote: true when a firewall or a trusted network stands in front");
    if (n["allow_commands"]) m.allow_commands = allow_commands(n["allow_commands"]);
    if (n["uri"]) {
      m.uri = str(n["uri"], "mongo.uri");
      if (!m.uri.starts_with("mongodb://"))
        fail(n["uri"], "mongo.uri", "expected a mongodb://host[:port][,host...][/?options] URI");
      auto at = m.uri.find('@');
      if (at != std::string::npos && at < m.uri.find('/', 10))
        fail(n["uri"], "mongo.uri",
             "credentials in the URI are not supported: sluice's server connections do not "
             "authenticate; use servers without auth or put the URI without user:password");
    }
    if (auto list = n["servers"]) {
      if (!list.IsSequence() || list.size() == 0)
        fail(list, "mongo.servers", "expected a list of {host, port, role}");
      for (std::size_t i = 0; i < list.size(); ++i) {
        const auto& s = list[i];
        const std::string path = "mongo.servers[" + std::to_string(i) + "]";
        check_keys(s, path, {"host", "port", "role", "tags"});
        MongoServer server;
        if (!s["host"]) fail(s, path + ".host", "is required");
        server.host = str(s["host"], path + ".host");
        if (s["port"])
          server.port = static_cast<std::uint16_t>(uint(s["port"], path + ".port", 1, 65535));
        if (!s["role"]) fail(s, path + ".role", "is required: primary | secondary");
        server.primary =
            choice<bool>(s["role"], path + ".role", {{"primary", true}, {"secondary", false}});
        if (auto tags = s["tags"]) {
          if (!tags.IsMap()) fail(tags, path + ".tags", "expected a mapping like {dc: east}");
          for (const auto& kv : tags)
            server.tags[kv.first.as<std::string>()] = str(kv.second, path + ".tags");
        }
        for (const auto& other : m.servers) {
          if (other.address() == server.address())
            fail(s, path, "server " + server.address() + " is listed twice");
        }
        m.servers.push_back(std::move(server));
      }
      if (std::count_if(m.servers.begin(), m.servers.end(),
                        [](const MongoServer& s) { return s.primary; }) > 1)
        fail(list, "mongo.servers", "more than one server has role: primary");
    }
    if (m.uri.empty() == m.servers.empty())
      fail(n, "mongo", "set exactly one of uri (discovery) and servers (static roles)");
    if (n["name"]) m.name = str(n["name"], "mongo.name");
    if (n["pool_size"])
      m.pool_size = static_cast<std::uint32_t>(uint(n["pool_size"], "mongo.pool_size", 1, 10'000));
    if (n["connect_timeout"])
      m.connect_timeout = duration(n["connect_timeout"], "mongo.connect_timeout");
    if (n["wait_timeout"]) m.wait_timeout = duration(n["wait_timeout"], "mongo.wait_timeout");
    if (n["heartbeat_interval"]) {
      m.heartbeat_interval = duration(n["heartbeat_interval"], "mongo.heartbeat_interval");
      if (m.heartbeat_interval.count() < 100)
        fail(n["heartbeat_interval"], "mongo.heartbeat_interval", "must be at least 100ms");
    }
    if (n["min_max_staleness"])
      m.max_staleness_floor = duration(n["min_max_staleness"], "mongo.min_max_staleness");
    if (auto rules = n["cache"]) {
      if (!rules.IsSequence()) fail(rules, "mongo.cache", "expected a list of rules");
      if (c.cache.redis.empty())
        fail(rules, "mongo.cache", "caching needs cache.redis (the versions live in Redis)");
      for (std::size_t i = 0; i < rules.size(); ++i) {
        const auto& r = rules[i];
        const std::string path = "mongo.cache[" + std::to_string(i) + "]";
        check_keys(r, path, {"name", "collections", "action", "ttl"});
        MongoCacheRule rule;
        rule.name = r["name"] ? str(r["name"], path + ".name") : "mongo" + std::to_string(i + 1);
        auto list = r["collections"];
        if (!list || !list.IsSequence() || list.size() == 0)
          fail(r, path + ".collections", "expected a list like [\"shop.products\", \"shop.*\"]");
        for (std::size_t j = 0; j < list.size(); ++j) {
          auto v = str(list[j], path + ".collections");
          if (v != "*" && v.find('.') == std::string::npos)
            fail(list[j], path + ".collections",
                 "expected \"database.collection\", \"database.*\" or \"*\", got '" + v + "'");
          rule.collections.push_back(std::move(v));
        }
        if (r["action"])
          rule.cache =
              choice<bool>(r["action"], path + ".action", {{"cache", true}, {"skip", false}});
        if (r["ttl"]) rule.ttl = duration(r["ttl"], path + ".ttl");
        m.cache.push_back(std::move(rule));
      }
    }
    c.mongo = std::move(m);
  }

  void load_routing(const YAML::Node& n, Routing& r) const {
    if (!n) return;
    check_keys(n, "routing",
               {"enabled", "load_balancing", "primary_reads", "all_replicas_banned",
                "max_replica_lag_bytes", "max_replica_lag_seconds", "ban_time", "read_your_writes",
                "read_your_writes_window", "read_consistency", "max_consistency_wait",
                "catalog_refresh", "health_user", "primary_weight"});
    if (n["enabled"]) r.enabled = boolean(n["enabled"], "routing.enabled");
    if (n["load_balancing"])
      r.load_balancing =
          choice<Routing::Balance>(n["load_balancing"], "routing.load_balancing",
                                   {{"round_robin", Routing::Balance::kRoundRobin},
                                    {"least_outstanding", Routing::Balance::kLeastOutstanding},
                                    {"random", Routing::Balance::kRandom}});
    if (n["primary_reads"])
      r.primary_reads =
          choice<Routing::PrimaryReads>(n["primary_reads"], "routing.primary_reads",
                                        {{"include", Routing::PrimaryReads::kInclude},
                                         {"exclude", Routing::PrimaryReads::kExclude},
                                         {"fallback_only", Routing::PrimaryReads::kFallbackOnly}});
    if (n["all_replicas_banned"])
      r.error_when_all_banned =
          choice<bool>(n["all_replicas_banned"], "routing.all_replicas_banned",
                       {{"primary", false}, {"error", true}});
    if (n["max_replica_lag_bytes"])
      r.max_replica_lag_bytes =
          uint(n["max_replica_lag_bytes"], "routing.max_replica_lag_bytes", 0, 1ull << 50);
    if (n["max_replica_lag_seconds"])
      r.max_replica_lag = duration(n["max_replica_lag_seconds"], "routing.max_replica_lag_seconds");
    if (n["ban_time"]) r.ban_time = duration(n["ban_time"], "routing.ban_time");
    if (n["read_your_writes"])
      r.read_your_writes =
          choice<Routing::ReadYourWrites>(n["read_your_writes"], "routing.read_your_writes",
                                          {{"off", Routing::ReadYourWrites::kOff},
                                           {"window", Routing::ReadYourWrites::kWindow},
                                           {"lsn", Routing::ReadYourWrites::kLsn}});
    if (n["read_your_writes_window"])
      r.read_your_writes_window =
          duration(n["read_your_writes_window"], "routing.read_your_writes_window");
    if (n["read_consistency"])
      r.read_consistency =
          choice<Routing::Consistency>(n["read_consistency"], "routing.read_consistency",
                                       {{"global", Routing::Consistency::kGlobal},
                                        {"session", Routing::Consistency::kSession},
                                        {"eventual", Routing::Consistency::kEventual}});
    if (n["max_consistency_wait"]) {
      r.max_consistency_wait = duration(n["max_consistency_wait"], "routing.max_consistency_wait");
      if (r.max_consistency_wait.count() > 10'000)
        fail(n["max_consistency_wait"], "routing.max_consistency_wait", "must be at most 10s");
    }
    if (n["catalog_refresh"]) {
      r.catalog_refresh = duration(n["catalog_refresh"], "routing.catalog_refresh");
      if (r.catalog_refresh.count() < 1000)
        fail(n["catalog_refresh"], "routing.catalog_refresh", "must be at least 1s");
    }
    if (n["health_user"]) r.health_user = str(n["health_user"], "routing.health_user");
    if (n["primary_weight"])
      r.primary_weight =
          static_cast<std::uint32_t>(uint(n["primary_weight"], "routing.primary_weight", 1, 1000));
  }

  void load_pool(const YAML::Node& p, Pool& pool) const {
    if (!p) return;
    check_keys(p, "pool",
               {"mode", "size", "min_pool_size", "reserve_pool_size", "reserve_pool_timeout",
                "max_client_conn", "client_login_timeout", "reset_query", "query_wait_timeout",
                "server_connect_timeout", "server_idle_timeout", "server_lifetime", "query_timeout",
                "idle_transaction_timeout", "client_idle_timeout", "pinning",
                "max_prepared_statements", "max_db_connections", "park_idle_above"});
    if (p["mode"]) pool.mode = pool_mode(p["mode"], "pool.mode");
    if (p["pinning"])
      pool.pin_is_error =
          choice<bool>(p["pinning"], "pool.pinning", {{"pin", false}, {"error", true}});
    if (p["max_prepared_statements"])
      pool.max_prepared_statements = static_cast<std::uint32_t>(
          uint(p["max_prepared_statements"], "pool.max_prepared_statements", 1, 100000));
    if (p["max_db_connections"])
      pool.max_db_connections = static_cast<std::uint32_t>(
          uint(p["max_db_connections"], "pool.max_db_connections", 0, 100000));
    if (p["size"]) pool.size = static_cast<std::uint32_t>(uint(p["size"], "pool.size", 1, 10000));
    if (p["park_idle_above"])
      pool.park_idle_above = static_cast<std::uint32_t>(
          uint(p["park_idle_above"], "pool.park_idle_above", 0, 1'000'000));
    if (p["min_pool_size"])
      pool.min_pool_size =
          static_cast<std::uint32_t>(uint(p["min_pool_size"], "pool.min_pool_size", 0, 10000));
    if (p["reserve_pool_size"])
      pool.reserve_pool_size = static_cast<std::uint32_t>(
          uint(p["reserve_pool_size"], "pool.reserve_pool_size", 0, 10000));
    if (p["reserve_pool_timeout"])
      pool.reserve_pool_timeout = duration(p["reserve_pool_timeout"], "pool.reserve_pool_timeout");
    if (p["max_client_conn"])
      pool.max_client_conn = static_cast<std::uint32_t>(
          uint(p["max_client_conn"], "pool.max_client_conn", 1, 1'000'000));
    if (p["reset_query"]) pool.reset_query = str(p["reset_query"], "pool.reset_query");
    if (p["query_wait_timeout"])
      pool.query_wait_timeout = duration(p["query_wait_timeout"], "pool.query_wait_timeout");
    if (p["server_connect_timeout"])
      pool.server_connect_timeout =
          duration(p["server_connect_timeout"], "pool.server_connect_timeout");
    if (p["server_idle_timeout"])
      pool.server_idle_timeout = duration(p["server_idle_timeout"], "pool.server_idle_timeout");
    if (p["server_lifetime"])
      pool.server_lifetime = duration(p["server_lifetime"], "pool.server_lifetime");
    for (auto [key, field] : {std::pair{"client_login_timeout", &pool.client_login_timeout},
                              std::pair{"query_timeout", &pool.query_timeout},
                              std::pair{"idle_transaction_timeout", &pool.idle_transaction_timeout},
                              std::pair{"client_idle_timeout", &pool.client_idle_timeout}}) {
      if (p[key]) *field = duration(p[key], std::string("pool.") + key);
    }
  }

  void load_databases(const YAML::Node& root, Config& c) const {
    auto dbs = root["databases"];
    if (!dbs) fail(root, "databases", "is required: name at least one database to proxy");
    if (!dbs.IsMap() || dbs.size() == 0)
      fail(dbs, "databases", "expected a mapping of database names");
    for (const auto& kv : dbs) {
      auto name = str(kv.first, "databases");  // ${VAR} too: one image, any database name
      std::string path = "databases." + name;
      if (name.empty()) fail(kv.first, path, "the database name is empty");
      if (name == "sluice")
        fail(kv.first, path,
             "the name 'sluice' is reserved for the admin console; rename this database");
      if (c.databases.contains(name)) fail(kv.first, path, "is listed twice");
      const auto& d = kv.second;
      check_keys(d, path, {"primary", "replicas", "hosts", "pool"});
      Database db;
      db.name = name;
      bool auto_role = false;
      if (auto h = d["hosts"]) {
        // Roles from the servers: whichever host is writable is the primary.
        if (d["primary"] || d["replicas"])
          fail(h, path + ".hosts",
               "replaces primary and replicas (their roles are learned from the servers): list "
               "every server under hosts only");
        if (!h.IsSequence() || h.size() == 0)
          fail(h, path + ".hosts", "expected a list of {host, port}");
        for (std::size_t i = 0; i < h.size(); ++i)
          db.hosts.push_back(backend(h[i], path + ".hosts[" + std::to_string(i) + "]", name));
      } else {
        if (!d["primary"])
          fail(kv.first, path + ".primary", "is required (or hosts:, with roles learned)");
        db.primary = backend(d["primary"], path + ".primary", name, "primary", &auto_role);
        if (auto r = d["replicas"]) {
          if (!r.IsSequence()) fail(r, path + ".replicas", "expected a list");
          for (std::size_t i = 0; i < r.size(); ++i)
            db.replicas.push_back(backend(r[i], path + ".replicas[" + std::to_string(i) + "]", name,
                                          "replica", &auto_role));
        }
        if (auto_role) {  // role: auto anywhere: every listed server's role is learned
          db.hosts.push_back(db.primary);
          db.hosts.insert(db.hosts.end(), db.replicas.begin(), db.replicas.end());
        }
      }
      if (db.auto_roles()) {
        for (std::size_t i = 0; i < db.hosts.size(); ++i) {
          for (std::size_t j = 0; j < i; ++j) {
            if (db.hosts[i].host == db.hosts[j].host && db.hosts[i].port == db.hosts[j].port)
              fail(d, path + ".hosts",
                   db.hosts[i].host + ":" + std::to_string(db.hosts[i].port) + " is listed twice");
          }
        }
        // Until the monitor finds a primary: none known, writes wait (failover_timeout).
        db.primary = db.hosts.front();
        db.replicas.clear();
        db.primary_known = false;
      }
      if (auto p = d["pool"]) {
        check_keys(p, path + ".pool", {"mode", "size", "max_db_connections"});
        if (p["max_db_connections"])
          db.max_db_connections = static_cast<std::uint32_t>(
              uint(p["max_db_connections"], path + ".pool.max_db_connections", 0, 100000));
        if (p["mode"]) db.pool_mode = pool_mode(p["mode"], path + ".pool.mode");
        if (p["size"])
          db.pool_size = static_cast<std::uint32_t>(uint(p["size"], path + ".pool.size", 1, 10000));
      }
      c.databases.emplace(name, std::move(db));
    }
  }

  void load_users(const YAML::Node& root, Config& c) const {
    auto users = root["users"];
    if (!users) {
      if (c.auth_type == AuthType::kTrust) return;
      fail(root, "users", "is required unless auth_type is trust");
    }
    if (!users.IsSequence()) fail(users, "users", "expected a list of {name, password}");
    for (std::size_t i = 0; i < users.size(); ++i) {
      const auto& u = users[i];
      std::string path = "users[" + std::to_string(i) + "]";
      check_keys(u, path,
                 {"name", "password", "server_user", "server_password", "pool_mode", "pool_size"});
      User user;
      if (!u["name"]) fail(u, path + ".name", "is required");
      user.name = str(u["name"], path + ".name");
      if (user.name.empty()) fail(u["name"], path + ".name", "must not be empty");
      if (c.users.contains(user.name))
        fail(u["name"], path + ".name", "user '" + user.name + "' is listed twice");
      std::string password;
      if (u["password"]) password = str(u["password"], path + ".password");
      if (password.empty() && c.auth_type != AuthType::kTrust)
        fail(u, path + ".password",
             "is required (plaintext, ${ENV_VAR} or a SCRAM-SHA-256$ verifier)");
      if (password.starts_with("SCRAM-SHA-256$")) {
        auto v = pg::scram::Verifier::parse(password);
        if (!v) fail(u["password"], path + ".password", "is not a valid SCRAM-SHA-256 verifier");
        user.scram = std::move(*v);
      } else if (pg::md5::is_stored_hash(password)) {
        user.md5_hash = password;
        // An md5 hash cannot answer SCRAM; mark the verifier unusable with an empty salt.
      } else if (!password.empty()) {
        user.scram = pg::scram::Verifier::from_password(password, pg::scram::random_bytes(16));
        user.md5_hash = pg::md5::stored_hash(password, user.name);
        user.server_password = password;
      }
      user.server_user = user.name;
      if (u["server_user"]) user.server_user = str(u["server_user"], path + ".server_user");
      if (u["server_password"])
        user.server_password = str(u["server_password"], path + ".server_password");
      if (u["pool_mode"]) user.pool_mode = pool_mode(u["pool_mode"], path + ".pool_mode");
      if (u["pool_size"])
        user.pool_size =
            static_cast<std::uint32_t>(uint(u["pool_size"], path + ".pool_size", 1, 10000));
      c.users.emplace(user.name, std::move(user));
    }
  }

  void load_tls(const YAML::Node& t, Tls& tls) const {
    if (!t) return;
    check_keys(t, "tls", {"cert", "key", "server_tls", "server_ca"});
    if (t["cert"]) tls.cert_file = str(t["cert"], "tls.cert");
    if (t["key"]) tls.key_file = str(t["key"], "tls.key");
    if (tls.cert_file.empty() != tls.key_file.empty())
      fail(t, tls.cert_file.empty() ? "tls.cert" : "tls.key", "tls.cert and tls.key go together");
    for (const auto* f : {&tls.cert_file, &tls.key_file}) {
      if (!f->empty() && !std::ifstream(*f).good())
        fail(t[f == &tls.cert_file ? "cert" : "key"], f == &tls.cert_file ? "tls.cert" : "tls.key",
             "cannot read file '" + *f + "'");
    }
    if (t["server_tls"]) {
      tls.server_tls = choice<ServerTls>(t["server_tls"], "tls.server_tls",
                                         {{"disable", ServerTls::kDisable},
                                          {"prefer", ServerTls::kPrefer},
                                          {"require", ServerTls::kRequire},
                                          {"verify-full", ServerTls::kVerifyFull}});
    }
    if (t["server_ca"]) tls.server_ca_file = str(t["server_ca"], "tls.server_ca");
    if (tls.server_tls == ServerTls::kVerifyFull && tls.server_ca_file.empty())
      fail(t["server_tls"], "tls.server_tls",
           "verify-full needs tls.server_ca (the CA that signed the server)");
  }

 private:
  std::string source_;
};

std::shared_ptr<const Config> load(const YAML::Node& root, const std::string& source) {
  auto c = std::make_shared<Config>();
  c->source = source;
  Loader(source).load(root, *c);
  return c;
}

}  // namespace

std::shared_ptr<const Config> load_string(const std::string& yaml, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml);
  } catch (const YAML::ParserException& e) {
    throw ConfigError(source + ":" + std::to_string(e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
  return load(root, source);
}

std::shared_ptr<const Config> load_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot open the configuration file");
  std::stringstream ss;
  ss << in.rdbuf();
  return load_string(ss.str(), path);
}

}  // namespace sluice::config
