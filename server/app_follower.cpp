// The WAL follower's wiring: which primaries it follows and as whom, its lease and freshness
// stamps in Redis, its bumps through the cache (on event loop 0), and the loop that brings every
// instance the follower's freshness.
#include <spdlog/spdlog.h>

#include <future>
#include <map>
#include <mutex>
#include <random>

#include "server/app.hpp"
#include "server/wal_follower.hpp"

namespace sluice::server {

namespace {

constexpr std::chrono::milliseconds kLeaseTtl{3000};  // renewed every WalFollower::kLeaseRenew
constexpr std::chrono::milliseconds kHookTimeout{2000};

// Takes the lease when free, renews it when held by `id`.
constexpr const char* kLeaseScript = R"(
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
return 0)";
constexpr const char* kReleaseScript = R"(
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0)";
// The freshness stamp only moves forward (a new follower starts behind the last one's).
constexpr const char* kFreshScript = R"(
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 0)";

std::string lease_key(const std::string& ns) {
  return "sluice:w:" + ns;
}
std::string fresh_key(const std::string& ns) {
  return "sluice:f:" + ns;
}
std::string newest_relation_key(const std::string& ns) {
  return "sluice:o:" + ns;
}

std::string instance_id() {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof buf, "%08x%08x", rd(), rd());
  return buf;
}

// "<prefix>_<database>", in the characters slot names allow.
std::string slot_name(const std::string& prefix, const std::string& dbname) {
  std::string out = prefix + "_";
  for (char c : dbname) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    out += ok ? c : (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : '_';
  }
  return out.substr(0, 63);
}

// The follower's Redis work, as coroutines that own their arguments (a hook that timed out
// returns while the coroutine may still run on the loop).
awaitable<bool> run_script(cache::Cache* cache, const char* body, std::string key, std::string arg1,
                           std::string arg2) {
  std::vector<std::string> args{"EVAL", body, "1", std::move(key), std::move(arg1)};
  if (!arg2.empty()) args.push_back(std::move(arg2));
  auto reply = co_await cache->redis(std::move(args));
  co_return reply && !reply->error() && reply->integer == 1;
}

// The integer stored at `key`: -1 when there is none, nullopt when Redis does not answer.
awaitable<std::optional<std::int64_t>> get_integer(cache::Cache* cache, std::string key) {
  std::vector<std::string> args{"GET", std::move(key)};
  auto reply = co_await cache->redis(std::move(args));
  if (!reply || reply->error()) co_return std::nullopt;
  if (reply->type == cache::RedisReply::Type::kNil) co_return -1;
  co_return std::atoll(reply->str.c_str());
}

awaitable<bool> set_value(cache::Cache* cache, std::string key, std::string value) {
  std::vector<std::string> args{"SET", std::move(key), std::move(value)};
  auto reply = co_await cache->redis(std::move(args));
  co_return reply && !reply->error();
}

awaitable<bool> bump_commit(cache::Cache* cache, std::string ns, cache::Writes w, std::uint64_t lsn,
                            std::string db) {
  auto ok = co_await cache->bump_namespace(ns, w, lsn, db);
  co_return ok;
}

}  // namespace

void App::start_follower(const config::Config& cfg) {
  auto* cache = rt_->redis_cache();
  if (!cache) return;
  asio::co_spawn(*loops_.front(), freshness_loop(), log_exceptions("cluster state"));
  if (!cfg.cache.follows_wal()) return;
  const auto* login = cfg.health_user();
  if (!login) {
    spdlog::error(
        "cache: the WAL follower needs a user to log in to the primaries: list one under users: "
        "and set routing.health_user (it needs the REPLICATION attribute); until then no "
        "cache hits (cache.follow_wal: false serves hits without it, blind to writes made "
        "outside sluice)");
    return;
  }
  std::vector<WalFollower::Target> targets;
  for (const auto& [name, db] : cfg.databases) {
    WalFollower::Target t;
    t.database = name;
    t.server.host = db.primary.host;
    t.server.port = db.primary.port;
    t.server.dbname = db.primary.dbname;
    t.server.user = login->server_user;
    t.server.password = login->server_password;
    routing::apply_server_tls(t.server, cfg.tls);
    t.slot = slot_name(cfg.cache.wal_slot, db.primary.dbname);
    t.publication = cfg.cache.wal_publication;
    targets.push_back(std::move(t));
  }
  // The hooks run on the follower's threads: Redis work goes to loop 0 and is waited for.
  auto& loop = *loops_.front();
  Runtime* rt = rt_.get();
  auto id = std::make_shared<const std::string>(instance_id());
  auto on_loop = [&loop](auto make) {
    using T = typename decltype(make())::value_type;
    auto fut = asio::co_spawn(loop, make(), asio::use_future);
    if (fut.wait_for(kHookTimeout) != std::future_status::ready) return std::optional<T>{};
    try {
      return std::optional<T>{fut.get()};
    } catch (const std::exception& e) {  // the loop went away, or the Redis work threw
      spdlog::warn("cache: WAL follower: {}", e.what());
      return std::optional<T>{};
    }
  };
  WalFollower::Hooks hooks;
  // Learned roles: the follower follows whichever host is elected (its slot is created there
  // after a failover); configured ones: the primary it started with.
  std::map<std::string, std::pair<std::string, std::uint16_t>> configured;
  for (const auto& t : targets) configured[t.database] = {t.server.host, t.server.port};
  hooks.primary =
      [rt,
       configured](const std::string& db) -> std::optional<std::pair<std::string, std::uint16_t>> {
    auto now = rt->config();
    auto it = now->databases.find(db);
    if (it == now->databases.end() || !it->second.auto_roles()) return configured.at(db);
    if (!it->second.primary_known) return std::nullopt;
    return std::pair{it->second.primary.host, it->second.primary.port};
  };
  cache::Cache* c = rt->cache.get();
  hooks.lease = [on_loop, c, id](const std::string& ns) {
    return on_loop([&] {
             return run_script(c, kLeaseScript, lease_key(ns), *id,
                               std::to_string(kLeaseTtl.count()));
           })
        .value_or(false);
  };
  hooks.release = [on_loop, c, id](const std::string& ns) {
    on_loop([&] { return run_script(c, kReleaseScript, lease_key(ns), *id, ""); });
  };
  hooks.bump = [on_loop, c](const std::string& ns, const std::string& db, const cache::Writes& w,
                            std::uint64_t lsn) {
    return on_loop([&] { return bump_commit(c, ns, w, lsn, db); }).value_or(false);
  };
  hooks.fresh = [on_loop, c](const std::string& ns, std::int64_t fresh_ms) {
    c->note_fresh(ns, fresh_ms);
    on_loop([&] {
      return run_script(c, kFreshScript, fresh_key(ns), std::to_string(fresh_ms), "600000");
    });
  };
  hooks.newest_relation = [on_loop, c](const std::string& ns) -> std::optional<std::uint64_t> {
    auto got = on_loop([&] { return get_integer(c, newest_relation_key(ns)); });
    if (!got || !*got || **got < 0) return std::nullopt;
    return static_cast<std::uint64_t>(**got);
  };
  hooks.note_newest_relation = [on_loop, c](const std::string& ns, std::uint64_t oid) {
    return on_loop([&] { return set_value(c, newest_relation_key(ns), std::to_string(oid)); })
        .value_or(false);
  };
  // A catalog the follower found out of date names relations by old OIDs until it is fetched
  // again: meanwhile names cannot be told (0), and each commit bumps the database's epoch.
  struct Stale {
    std::mutex mu;
    std::map<std::string, const cache::DbCatalog*> since;  // db → the catalog found out of date
  };
  auto stale = std::make_shared<Stale>();
  hooks.catalog_changed = [rt, stale](const std::string& db) {
    {
      std::lock_guard lock(stale->mu);
      stale->since[db] = rt->cache->catalog(db).get();
    }
    rt->cache->catalog_changed(db);
  };
  hooks.resolve = [rt, stale](const std::string& db, const std::string& schema,
                              const std::string& name) -> std::optional<std::uint32_t> {
    auto catalog = rt->cache->catalog(db);
    {
      std::lock_guard lock(stale->mu);
      if (auto it = stale->since.find(db); it != stale->since.end()) {
        if (it->second == catalog.get()) return 0;
        stale->since.erase(it);  // fetched again since
      }
    }
    if (!catalog) return std::nullopt;
    const auto* rel = catalog->relations.resolve({schema, name}, {});
    if (!rel) return std::nullopt;
    return rel->oid;
  };
  rt_->follower = std::make_shared<WalFollower>(std::move(targets), std::move(hooks));
  rt_->follower->start();
}

// Every instance (the follower's too) learns from Redis, every kProbeInterval, how fresh each
// database's versions are (the WAL follower's stamp) and whether its catalog changed since it
// was fetched (a change whose message this instance missed, or that a fetch straddled).
awaitable<void> App::freshness_loop() {
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer timer(ex);
  while (!rt_->stopping) {
    timer.expires_after(WalFollower::kProbeInterval);
    co_await timer.async_wait(use_nothrow);
    auto cfg = rt_->config();
    const bool follows = cfg->cache.follows_wal();
    std::vector<std::pair<std::string, std::string>> dbs;  // name, namespace
    for (const auto& [name, db] : cfg->databases) {
      if (auto catalog = rt_->cache->catalog(name)) dbs.emplace_back(name, catalog->ns);
    }
    if (dbs.empty()) continue;
    std::vector<std::string> args{"MGET"};
    for (const auto& [name, ns] : dbs) {
      args.push_back(cache::Cache::catalog_generation_key(ns));
      if (follows) args.push_back(fresh_key(ns));
    }
    auto reply = co_await rt_->cache->redis(std::move(args));
    if (!reply || reply->type != cache::RedisReply::Type::kArray ||
        reply->elements.size() != dbs.size() * (follows ? 2 : 1))
      continue;
    std::size_t i = 0;
    for (const auto& [name, ns] : dbs) {
      const auto& generation = reply->elements[i++];
      rt_->cache->note_catalog_generation(name, generation.type == cache::RedisReply::Type::kString
                                                    ? std::atoll(generation.str.c_str())
                                                    : 0);
      if (!follows) continue;
      const auto& fresh = reply->elements[i++];
      if (fresh.type == cache::RedisReply::Type::kString)
        rt_->cache->note_fresh(ns, std::atoll(fresh.str.c_str()));
    }
  }
}

}  // namespace sluice::server
