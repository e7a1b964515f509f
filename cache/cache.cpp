#include "cache/cache.hpp"

#include <libpq-fe.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>

#include "protocol/common/digest.hpp"
#include "routing/fnv1a.hpp"
#include "routing/insights.hpp"
#include "routing/replicas.hpp"
#include "routing/shape.hpp"

namespace sluice::cache {

using asio::awaitable;
using Steady = std::chrono::steady_clock;
constexpr auto use_nothrow = asio::as_tuple(asio::use_awaitable);

namespace {

thread_local std::size_t t_loop = 0;

constexpr std::string_view kChannel = "sluice:invalidate";

// Versions start from Redis' clock in microseconds, so a version key that was lost (evicted,
// flushed) never comes back at a value an old entry was stored under.
constexpr std::string_view kInitScript = R"lua(
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if not v then
    local t = redis.call('TIME')
    redis.call('SET', k, string.format('%d%06d', t[1], t[2]), 'NX')
    v = redis.call('GET', k)
  end
  out[i] = v
end
return out
)lua";

// KEYS: version, lsn pairs. ARGV: lsn (16 hex digits), channel, message, the database's
// latest-write mark key, the catalog generation key to increment ("" when relations did not
// change). A mark only grows; "ffffffffffffffff" (an unknown LSN, as releases
// before 2026-12 stored it) is replaced by the first real one.
constexpr std::string_view kBumpScript = R"lua(
local function raise(k)
  local l = redis.call('GET', k)
  if not l or l < ARGV[1] or l == 'ffffffffffffffff' then redis.call('SET', k, ARGV[1]) end
end
for i = 1, #KEYS, 2 do
  if not redis.call('GET', KEYS[i]) then
    local t = redis.call('TIME')
    redis.call('SET', KEYS[i], string.format('%d%06d', t[1], t[2]))
  end
  redis.call('INCR', KEYS[i])
  raise(KEYS[i + 1])
end
raise(ARGV[4])
if ARGV[5] ~= '' then redis.call('INCR', ARGV[5]) end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
)lua";

// A stored mark as an LSN. The maximum (an unknown LSN stored by an older release, for a write
// long replayed by now) reads as none, so that it cannot keep reads off the replicas for good.
std::uint64_t parse_mark(const std::string& hex) {
  if (hex.empty()) return 0;
  const auto v = std::strtoull(hex.c_str(), nullptr, 16);
  return v == ~std::uint64_t{0} ? 0 : v;
}

std::string hex16(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

std::string sha256_hex(std::string_view data) {
  return digest::hex(EVP_sha256(), data);
}

void append_field(std::string& out, std::string_view v) {
  out += std::to_string(v.size());
  out.push_back(':');
  out.append(v);
}

std::string version_key(const std::string& ns, std::uint32_t oid) {
  return "sluice:v:" + ns + ":" + std::to_string(oid);
}
std::string lsn_key(const std::string& ns, std::uint32_t oid) {
  return "sluice:l:" + ns + ":" + std::to_string(oid);
}
// The commit LSN of the last write to any relation of the namespace.
std::string latest_key(const std::string& ns) {
  return "sluice:l:" + ns + ":latest";
}
constexpr std::string_view kGlobal = "*";

bool table_matches(const std::string& pattern, const Relation& r) {
  if (pattern.find('.') != std::string::npos) return pattern == r.schema + "." + r.name;
  return pattern == r.name;
}

// The relations `facts` reads under `path_text` (the search_path; nullopt when not known): every
// name resolved (into `named`, if given) and expanded to its tables (`oids`, no duplicates). ""
// when every one could be told, else why not (a cache bypass reason).
std::string_view resolve_reads(const DbCatalog& catalog, const CacheFacts& facts,
                               const std::optional<std::string>& path_text, const std::string& role,
                               std::vector<const Relation*>* named,
                               std::vector<std::uint32_t>& oids) {
  const auto path = path_text ? parse_search_path(*path_text, role) : std::vector<std::string>{};
  for (const auto& name : facts.reads) {
    if (name.schema.empty() && !path_text) return "search_path";
    const Relation* rel = catalog.relations.resolve(name, path);
    if (!rel) {
      if (name.schema.empty() &&
          std::find(facts.ctes.begin(), facts.ctes.end(), name.name) != facts.ctes.end())
        continue;  // a WITH query of that name
      return "unknown_relation";
    }
    if (named) named->push_back(rel);
    std::vector<std::uint32_t> expanded;
    if (!catalog.relations.expand(rel->oid, expanded)) return "view";
    for (auto oid : expanded) {
      if (std::find(oids.begin(), oids.end(), oid) == oids.end()) oids.push_back(oid);
    }
  }
  return {};
}

}  // namespace

struct Flight {
  std::mutex mu;
  bool done = false;
  std::vector<std::pair<asio::any_io_executor, std::shared_ptr<asio::steady_timer>>> waiters;
};

bool replayable_reply(std::string_view reply) {
  std::size_t pos = 0;
  bool complete = false;
  while (pos < reply.size()) {
    if (reply.size() - pos < 5) return false;
    const char type = reply[pos];
    const auto* p = reinterpret_cast<const unsigned char*>(reply.data() + pos + 1);
    const std::uint32_t len = (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) |
                              (std::uint32_t{p[2]} << 8) | std::uint32_t{p[3]};
    if (len < 4 || len > reply.size() - pos - 1) return false;
    switch (type) {
      case '1':
      case '2':
      case 't':
      case 'T':
      case 'n':
      case 'D':
        break;
      case 'C':
      case 'I':
        complete = true;
        break;
      default:
        return false;
    }
    pos += 1 + len;
  }
  return complete;
}

std::string cluster_namespace(void* raw) {
  auto* conn = static_cast<PGconn*>(raw);
  // The cluster's identity; without the privilege, the server's address stands in for it.
  std::string ns;
  PGresult* r = PQexec(conn,
                       "SELECT system_identifier::text, pg_catalog.current_database() FROM "
                       "pg_catalog.pg_control_system()");
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
    ns = std::string(PQgetvalue(r, 0, 0)) + "/" + PQgetvalue(r, 0, 1);
  PQclear(r);
  if (!ns.empty()) return ns;
  r = PQexec(conn,
             "SELECT pg_catalog.current_setting('port') || '/' || pg_catalog.current_database()");
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
    ns = std::string("port") + PQgetvalue(r, 0, 0);
  PQclear(r);
  return ns;
}

std::shared_ptr<DbCatalog> load_catalog(void* raw,
                                        std::shared_ptr<const routing::FunctionCatalog> functions,
                                        std::string* why) {
  auto* conn = static_cast<PGconn*>(raw);
  auto out = std::make_shared<DbCatalog>();
  out->functions = std::move(functions);
  auto query = [&](std::string_view sql, auto&& row) {
    PGresult* r = PQexec(conn, std::string(sql).c_str());
    const bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    if (ok) {
      for (int i = 0; i < PQntuples(r); ++i) row(r, i);
    } else if (why) {
      *why = PQresultErrorMessage(r);
    }
    PQclear(r);
    return ok;
  };
  auto u32 = [](PGresult* r, int i, int c) {
    return static_cast<std::uint32_t>(std::strtoul(PQgetvalue(r, i, c), nullptr, 10));
  };
  std::vector<std::pair<std::uint32_t, std::string>> views;
  bool ok = query(kRelationsSql, [&](PGresult* r, int i) {
    Relation rel;
    rel.oid = u32(r, i, 0);
    rel.schema = PQgetvalue(r, i, 1);
    rel.name = PQgetvalue(r, i, 2);
    rel.kind = PQgetvalue(r, i, 3)[0];
    rel.persistence = PQgetvalue(r, i, 4)[0];
    rel.rls = PQgetvalue(r, i, 5)[0] == 't';
    rel.user_triggers = PQgetvalue(r, i, 6)[0] == 't';
    if (rel.kind == 'v') {
      if (PQgetisnull(r, i, 7)) {
        rel.deterministic = false;
      } else {
        views.emplace_back(rel.oid, PQgetvalue(r, i, 7));
      }
    }
    out->relations.add(std::move(rel));
  });
  ok = ok && query(kDependenciesSql, [&](PGresult* r, int i) {
         out->relations.add_dependency(u32(r, i, 0), u32(r, i, 1));
       });
  ok = ok && query(kForeignKeysSql, [&](PGresult* r, int i) {
         out->relations.add_foreign_key(u32(r, i, 0), u32(r, i, 1));
       });
  std::vector<std::uint32_t> rls_beyond_role;  // tables with a policy depending on more
  ok = ok && query(kPoliciesSql, [&](PGresult* r, int i) {
         if (PQgetvalue(r, i, 3)[0] == 't' || !policy_role_only(PQgetvalue(r, i, 1)) ||
             !policy_role_only(PQgetvalue(r, i, 2)))
           rls_beyond_role.push_back(u32(r, i, 0));
       });
  ok = ok && query(kSearchPathSql, [&](PGresult* r, int i) {
         std::string role = PQgetvalue(r, i, 0);
         std::string value = PQgetvalue(r, i, 1);
         std::string source = PQgetvalue(r, i, 2);
         if (source == "override") {
           constexpr std::string_view prefix = "search_path=";
           out->relations.add_search_path_override(std::move(role), value.substr(prefix.size()));
         } else if (source == "default" || source == "configuration file" ||
                    source == "command line" || source == "environment variable") {
           out->relations.set_default_search_path(std::move(value));
         } else {
           out->relations.set_default_search_path(std::nullopt);  // cannot tell the default
         }
       });
  if (ok) {
    out->ns = cluster_namespace(conn);
    if (out->ns.empty()) {
      ok = false;
      if (why) *why = "cannot read the cluster's identity";
    }
  }
  if (!ok) return nullptr;
  for (auto oid : rls_beyond_role) {
    if (const auto* rel = out->relations.find(oid)) {
      Relation copy = *rel;
      copy.rls_role_only = false;
      out->relations.add(std::move(copy));
    }
  }
  // A view is cached only when its definition calls immutable functions alone.
  for (auto& [oid, def] : views) {
    auto f = cache_facts(def);
    bool deterministic = f.parsed && f.select && f.writes.empty() && !f.writes_unknown &&
                         out->functions && all_immutable(*out->functions, f.functions);
    if (!deterministic) {
      if (const auto* rel = out->relations.find(oid)) {
        Relation copy = *rel;
        copy.deterministic = false;
        out->relations.add(std::move(copy));
      }
    }
  }
  return out;
}

Cache::Cache(config::Cache cfg) : cfg_(std::move(cfg)), l1_(cfg_.l1_bytes) {}

Cache::~Cache() = default;

void Cache::set_loop_index(std::size_t i) {
  t_loop = i;
}

std::shared_ptr<RedisConnection> Cache::local() const {
  if (conns_.empty()) return nullptr;
  return conns_[t_loop < conns_.size() ? t_loop : 0];
}

bool Cache::redis_up() const {
  return configured() && up_.load() > 0;
}

void Cache::start(const std::vector<asio::any_io_executor>& loops) {
  if (!configured()) return;
  std::string why;
  auto endpoint = parse_redis_url(cfg_.redis, &why);
  if (!endpoint) {
    spdlog::error("cache.redis: {}; the cache stays off", why);
    return;
  }
  RedisConnection::Options o;
  o.endpoint = *endpoint;
  o.connect_timeout = cfg_.connect_timeout;
  o.command_timeout = cfg_.command_timeout;
  const int total = static_cast<int>(loops.size());
  for (const auto& ex : loops) {
    auto c = std::make_shared<RedisConnection>(ex, o);
    conns_.push_back(c);
  }
  // Logged once per change of the whole: all connections up, or the first one down.
  const std::string where = endpoint->display();
  for (std::size_t i = 0; i < conns_.size(); ++i) {
    asio::post(loops[i], [this, c = conns_[i], total, where] {
      c->start([this, total, where](bool up, const std::string& reason) {
        const int now = up ? ++up_ : --up_;
        if (up && now == total && !all_up_logged_.exchange(true))
          spdlog::info("cache: redis {} is up: serving from the cache", where);
        if (!up && all_up_logged_.exchange(false))
          spdlog::warn("cache: redis {} is down ({}): requests bypass the cache until it is back",
                       where, reason);
        // Invalidations may be missed while a connection is away: the L1 starts afresh.
        if (!up) l1_.drop_prefix("");
      });
    });
  }
  auto so = o;
  so.subscribe = std::string(kChannel);
  subscriber_ = std::make_shared<RedisConnection>(loops.front(), so);
  asio::post(loops.front(), [this, s = subscriber_] {
    s->start(
        [this](bool up, const std::string&) {
          // Invalidations may be lost while unsubscribed: nothing learnt before is trusted.
          {
            std::lock_guard lock(mu_);
            subscribed_ = up;
            ++version_epoch_;
            local_versions_.clear();
          }
          if (!up) l1_.drop_prefix("");
        },
        [this](std::string_view m) { on_invalidation(m); });
  });
}

bool Cache::catalog_wanted(const std::string& db, Steady::time_point now,
                           std::chrono::milliseconds refresh) {
  // Also with cache.enabled: false (the writes it relays still bump versions, keyed by it) and
  // without Redis (read consistency's marks are per relation).
  std::lock_guard lock(mu_);
  auto& e = catalogs_[db];
  const bool wanted = !e.catalog || e.stale || now - e.loaded >= refresh;
  if (wanted) {
    e.asked = ++catalog_clock_;
    e.generation_asked = e.generation_seen;
  }
  return wanted;
}

std::string Cache::catalog_generation_key(const std::string& ns) {
  return "sluice:c:" + ns;
}

void Cache::note_catalog_generation(const std::string& db, std::int64_t generation) {
  {
    std::lock_guard lock(mu_);
    auto it = catalogs_.find(db);
    if (it == catalogs_.end() || !it->second.catalog) return;
    auto& e = it->second;
    e.generation_seen = generation;
    // Being fetched again already, or asked for under this generation.
    if (e.stale || e.generation == generation) return;
    // The first reading for a catalog fetched before any: changes during that fetch came as
    // messages (mark_stale), so this one is taken as the catalog's own.
    if (e.generation == -1) {
      e.generation = generation;
      return;
    }
  }
  catalog_changed(db);
}

void Cache::set_functions(const std::string& db,
                          std::shared_ptr<const routing::FunctionCatalog> f) {
  std::lock_guard lock(mu_);
  catalogs_[db].functions = std::move(f);
}

std::shared_ptr<const routing::FunctionCatalog> Cache::functions(const std::string& db) const {
  std::lock_guard lock(mu_);
  auto it = catalogs_.find(db);
  return it == catalogs_.end() ? nullptr : it->second.functions;
}

void Cache::set_catalog(const std::string& db, std::shared_ptr<const DbCatalog> catalog) {
  std::lock_guard lock(mu_);
  auto& e = catalogs_[db];
  // Writes noted before the catalog came could not be keyed: they flush the database now.
  if (auto f = failed_.find("db:" + db); f != failed_.end()) {
    auto copy = f->second;
    failed_.erase(f);
    auto& to = failed_[catalog->ns];
    any_failed_ = true;
    to.db_wide = true;
    to.global = to.global || copy.global;
    to.catalog_change = to.catalog_change || copy.catalog_change;
    to.lsn = std::max(to.lsn, copy.lsn);
  }
  e.catalog = std::move(catalog);
  e.generation = e.generation_asked;  // a change since: the next reading fetches it again
  e.loaded = Steady::now();
  e.stale = e.changed > e.asked;  // a change after the fetch was asked for: fetch again
}

void Cache::catalog_changed(const std::string& db) {
  std::function<void()> wake;
  {
    std::lock_guard lock(mu_);
    auto& e = catalogs_[db];
    e.stale = true;
    e.changed = ++catalog_clock_;
    wake = on_stale_;
  }
  if (wake) wake();
}

std::shared_ptr<const DbCatalog> Cache::catalog(const std::string& db) const {
  std::lock_guard lock(mu_);
  auto it = catalogs_.find(db);
  // Out of date after DDL: nothing is cached (and writes flush the database) until it is back.
  if (it == catalogs_.end() || it->second.stale) return nullptr;
  return it->second.catalog;
}

void Cache::mark_stale(const std::string& ns) {
  std::function<void()> wake;
  {
    std::lock_guard lock(mu_);
    for (auto& [db, e] : catalogs_) {
      // A first fetch still under way (its namespace not known yet) may have read the catalog
      // from before the change: it is fetched again when it lands.
      if (e.catalog && e.catalog->ns != ns) continue;
      e.stale = true;
      e.changed = ++catalog_clock_;
    }
    wake = on_stale_;
  }
  if (wake) wake();
}

CacheCounters& Cache::counters(const std::string& rule) {
  std::lock_guard lock(mu_);
  auto& slot = counters_[rule];
  if (!slot) slot = std::make_unique<CacheCounters>();
  return *slot;
}

std::map<std::string, const CacheCounters*> Cache::all_counters() const {
  std::lock_guard lock(mu_);
  std::map<std::string, const CacheCounters*> out;
  for (const auto& [k, v] : counters_) out[k] = v.get();
  return out;
}

void Cache::count_bypass(std::string_view reason) {
  std::lock_guard lock(mu_);
  if (auto it = bypass_.find(reason); it != bypass_.end())
    ++it->second;
  else
    bypass_.emplace(reason, 1);
}

std::map<std::string, std::uint64_t> Cache::bypasses() const {
  std::lock_guard lock(mu_);
  return {bypass_.begin(), bypass_.end()};
}

std::map<std::string, Cache::TableStats> Cache::table_stats() const {
  std::lock_guard lock(mu_);
  std::map<std::string, TableStats> out;
  for (const auto& [fp, st] : statements_) {
    for (const auto& t : st->tables) {
      out[t].hits += st->hits;
      out[t].misses += st->misses;
    }
  }
  return out;
}

std::map<std::string, Cache::KeyStats> Cache::fingerprint_stats() const {
  std::lock_guard lock(mu_);
  std::map<std::string, KeyStats> out;
  for (const auto& [fp, st] : statements_)
    out[fp] = KeyStats{st->rule,
                       st->sample,
                       st->hits,
                       st->misses,
                       st->bytes,
                       st->not_stored,
                       st->admission.skipped(),
                       st->admission.cold()};
  return out;
}

StatementStats* Cache::statement_stats(const std::string& fingerprint, const Plan& p,
                                       std::string_view sql, const std::string& db) {
  if (fingerprint.empty()) return nullptr;
  std::lock_guard lock(mu_);
  auto& slot = statements_[fingerprint];
  if (!slot) {
    if (statements_.size() > 1000) {  // bounded: the first thousand statement kinds
      statements_.erase(fingerprint);
      return nullptr;
    }
    slot = std::make_unique<StatementStats>();
    slot->rule = p.rule;
    slot->sample = routing::normalized_text(sql).substr(0, 200);  // literals masked
    for (auto oid : p.oids) {
      if (const auto* r = p.catalog->relations.find(oid))
        slot->tables.push_back(db + "/" + r->schema + "." + r->name);
    }
  }
  return slot.get();
}

std::size_t Cache::unbumped() const {
  std::lock_guard lock(mu_);
  return failed_.size();
}

void Cache::note_outcome(const Lookup& l, bool hit) {
  if (!l.plan) return;
  if (auto* c = l.plan->counters) {
    (hit ? c->hits : c->misses)++;
    if (hit && l.value) c->hit_bytes += l.value->size();
  }
  if (auto* st = l.plan->stats) {
    (hit ? st->hits : st->misses)++;
    if (hit && l.value) st->bytes += l.value->size();
  }
}

bool Cache::marks_pending(const std::string& db, const std::string& ns,
                          const std::vector<std::uint32_t>* oids) const {
  if (!any_failed_) return false;
  if (oids) return blocked(ns, *oids) || blocked("db:" + db, *oids);
  std::lock_guard lock(mu_);
  return failed_.contains(ns) || failed_.contains("db:" + db) ||
         std::any_of(failed_.begin(), failed_.end(), [](const auto& f) { return f.second.global; });
}

bool Cache::blocked(const std::string& ns, const std::vector<std::uint32_t>& oids) const {
  if (!any_failed_) return false;
  std::lock_guard lock(mu_);
  if (failed_.empty()) return false;
  for (const auto& [k, f] : failed_) {
    if (f.global) return true;
  }
  auto it = failed_.find(ns);
  if (it == failed_.end()) return false;
  if (it->second.db_wide) return true;
  return std::any_of(oids.begin(), oids.end(),
                     [&](std::uint32_t o) { return it->second.oids.contains(o); });
}

void Cache::wake(const std::shared_ptr<Flight>& f) {
  std::vector<std::pair<asio::any_io_executor, std::shared_ptr<asio::steady_timer>>> waiters;
  {
    std::lock_guard lock(f->mu);
    if (f->done) return;
    f->done = true;
    waiters.swap(f->waiters);
  }
  for (auto& w : waiters) asio::post(w.first, [timer = w.second] { timer->cancel(); });
}

void Cache::finish(Lookup& l) {
  if (!l.flight) return;
  {
    std::lock_guard lock(flights_mu_);
    if (auto it = flights_.find(l.key); it != flights_.end() && it->second == l.flight)
      flights_.erase(it);
  }
  wake(l.flight);
  l.flight.reset();
}

awaitable<std::optional<std::vector<Cache::Version>>> Cache::versions(
    RedisConnection& conn, const std::vector<std::string>& keys, bool strict) {
  // Kept here while the invalidation channel is up (it drops them as bumps happen), and read
  // from Redis when not known, older than a second, or the client carries a causal token.
  const auto now = Steady::now();
  std::vector<Version> out;
  if (!strict && subscribed_) {
    std::lock_guard lock(mu_);
    for (std::size_t i = 0; i < keys.size(); i += 2) {
      auto it = local_versions_.find(keys[i]);
      if (it == local_versions_.end() || now - it->second.fetched > std::chrono::seconds(1)) break;
      out.push_back(it->second);
    }
    if (out.size() * 2 == keys.size()) co_return out;
    out.clear();
  }
  const auto epoch = version_epoch_.load();
  std::vector<std::string> mget{"MGET"};
  mget.insert(mget.end(), keys.begin(), keys.end());
  auto got = co_await conn.shared_read(std::move(mget));
  if (!got || got->type != RedisReply::Type::kArray || got->elements.size() != keys.size())
    co_return std::nullopt;
  std::vector<std::string> missing;
  for (std::size_t i = 0; i < keys.size(); i += 2) {
    if (got->elements[i].nil()) missing.push_back(keys[i]);
  }
  std::map<std::string, std::string> initialized;
  if (!missing.empty()) {
    std::vector<std::string> eval{"EVAL", std::string(kInitScript), std::to_string(missing.size())};
    eval.insert(eval.end(), missing.begin(), missing.end());
    auto init = co_await conn.command(std::move(eval));
    if (!init || init->type != RedisReply::Type::kArray || init->elements.size() != missing.size())
      co_return std::nullopt;
    for (std::size_t i = 0; i < missing.size(); ++i)
      initialized[missing[i]] = init->elements[i].str;
  }
  for (std::size_t i = 0; i < keys.size(); i += 2) {
    Version v;
    v.version = got->elements[i].nil() ? initialized[keys[i]] : got->elements[i].str;
    v.lsn = parse_mark(got->elements[i + 1].str);
    v.fetched = now;
    out.push_back(std::move(v));
  }
  // Kept only if no invalidation arrived meanwhile (it may be newer than what was read).
  std::lock_guard lock(mu_);
  if (subscribed_ && version_epoch_.load() == epoch) {
    if (local_versions_.size() > 100'000) local_versions_.clear();
    for (std::size_t i = 0; i < keys.size(); i += 2) local_versions_[keys[i]] = out[i / 2];
  }
  co_return out;
}

std::shared_ptr<const Plan> Cache::plan(const Request& r, const config::Cache& cfg,
                                        std::shared_ptr<const DbCatalog> catalog) {
  std::string key = r.database;
  key.push_back('\0');
  key += r.role;
  key.push_back('\0');
  key += r.search_path ? *r.search_path : std::string("\x01");
  key.push_back('\0');
  // By shape: nothing in a plan depends on literal values (the facts are per shape already), and
  // a simple-protocol client sends a new text for every value.
  key += routing::read_facts_key(r.sql);
  {
    std::lock_guard lock(plans_mu_);
    if (auto it = plans_.find(key); it != plans_.end() && it->second->catalog == catalog &&
                                    it->second->generation == r.generation)
      return it->second;
  }
  auto p = make_plan(r, cfg, std::move(catalog));
  if (r.sql.size() <= 16 * 1024) {
    std::lock_guard lock(plans_mu_);
    if (plans_.size() >= 8192) plans_.clear();
    plans_[key] = p;
  }
  return p;
}

std::shared_ptr<const Plan> Cache::make_plan(const Request& r, const config::Cache& cfg,
                                             std::shared_ptr<const DbCatalog> catalog) {
  auto p = std::make_shared<Plan>();
  p->catalog = catalog;
  p->generation = r.generation;
  auto not_cached = [&](std::string_view why) {
    p->bypass = why;
    return p;
  };
  auto facts = facts_.get(r.sql);
  if (facts->nocache_hint) return not_cached("hint");
  if (!facts->select) return not_cached("not_cacheable");
  if (!all_immutable(*catalog->functions, facts->functions)) return not_cached("function");
  std::optional<std::string> path_text = r.search_path;
  if (!path_text) path_text = catalog->relations.default_search_path(r.role);
  std::vector<const Relation*> named;
  if (auto why = resolve_reads(*catalog, *facts, path_text, r.role, &named, p->oids); !why.empty())
    return not_cached(why);
  for (auto oid : p->oids) {
    const auto* e = catalog->relations.find(oid);
    if (e->system()) return not_cached("system_catalog");
    if (e->persistence != 'p') return not_cached("temp_or_unlogged");
    if (e->kind == 'f') return not_cached("foreign_table");
    if (e->rls && !cfg.rls_by_role) return not_cached("rls");
    if (e->rls && !e->rls_role_only) return not_cached("rls_policy");
  }
  // Rules: the first that matches decides.
  const config::CacheRule* rule = nullptr;
  for (const auto& candidate : cfg.rules) {
    bool match = std::any_of(candidate.fingerprints.begin(), candidate.fingerprints.end(),
                             [&](const std::string& f) { return f == facts->fingerprint; });
    for (const auto* rel : named) {
      match = match || std::any_of(candidate.tables.begin(), candidate.tables.end(),
                                   [&](const std::string& t) { return table_matches(t, *rel); });
    }
    if (match) {
      rule = &candidate;
      break;
    }
  }
  if (rule && !rule->cache) return not_cached("rule");
  if (!rule && !cfg.all) return not_cached("no_rule");
  p->rule = rule ? rule->name : "default";
  p->ttl = rule && rule->ttl.count() > 0 ? rule->ttl : cfg.default_ttl;
  p->ns = catalog->ns;
  p->path = path_text.value_or("");
  // The versions: every relation read, the database's epoch (0) and the global one.
  for (auto oid : p->oids) {
    p->keys.push_back(version_key(p->ns, oid));
    p->keys.push_back(lsn_key(p->ns, oid));
    p->tags.push_back(p->ns + ":" + std::to_string(oid));
  }
  p->keys.push_back(version_key(p->ns, 0));
  p->keys.push_back(lsn_key(p->ns, 0));
  p->keys.push_back(version_key(std::string(kGlobal), 0));
  p->keys.push_back(lsn_key(std::string(kGlobal), 0));
  p->tags.push_back(p->ns + ":0");
  p->counters = &counters(p->rule);
  p->stats = statement_stats(facts->fingerprint, *p, r.sql, r.database);
  return p;
}

bool Cache::relations_read(const DbCatalog& catalog, std::string_view sql, const std::string& role,
                           const std::optional<std::string>& search_path,
                           std::vector<std::uint32_t>& oids) {
  auto facts = facts_.get(sql);
  // A function other than an immutable one may read any table.
  if (!facts->parsed || !all_immutable(*catalog.functions, facts->functions)) return false;
  auto path_text = search_path;
  if (!path_text) path_text = catalog.relations.default_search_path(role);
  return resolve_reads(catalog, *facts, path_text, role, nullptr, oids).empty();
}

std::optional<std::vector<std::uint32_t>> Cache::relations_of(
    const std::string& db, const std::vector<std::string_view>& sqls, const std::string& role,
    const std::optional<std::string>& search_path) {
  auto catalog = this->catalog(db);
  if (!catalog || !catalog->functions || sqls.empty()) return std::nullopt;
  std::vector<std::uint32_t> oids;
  for (auto sql : sqls) {
    if (!relations_read(*catalog, sql, role, search_path, oids)) return std::nullopt;
  }
  return oids;
}

awaitable<std::optional<std::uint64_t>> Cache::read_marks(
    const std::string& db, const std::vector<std::string_view>& sqls, const std::string& role,
    const std::optional<std::string>& search_path) {
  auto conn = local();
  if (!conn || !conn->up()) co_return std::nullopt;
  auto catalog = this->catalog(db);
  if (!catalog) co_return std::nullopt;
  std::vector<std::string> mget{"MGET"};
  auto oids = relations_of(db, sqls, role, search_path);
  // A write whose bump has not reached Redis yet (Redis slow or reconnecting on that write's
  // event loop) left no mark there: until the retry lands, the marks cannot vouch for it.
  if (marks_pending(db, catalog->ns, oids ? &*oids : nullptr)) co_return std::nullopt;
  if (oids) {
    for (auto oid : *oids) mget.push_back(lsn_key(catalog->ns, oid));
    mget.push_back(lsn_key(catalog->ns, 0));
  } else {
    mget.push_back(latest_key(catalog->ns));
  }
  mget.push_back(lsn_key(std::string(kGlobal), 0));
  auto got = co_await conn->shared_read(std::move(mget));
  if (!got || got->type != RedisReply::Type::kArray) co_return std::nullopt;
  std::uint64_t mark = 0;
  for (const auto& e : got->elements) mark = std::max(mark, parse_mark(e.str));
  co_return mark;
}

awaitable<Lookup> Cache::lookup(Request r, const config::Cache& cfg) {
  auto conn = local();
  if (!conn || !conn->up()) co_return bypassed("redis_down");
  auto catalog = this->catalog(r.database);
  if (!catalog || !catalog->functions) co_return bypassed("no_catalog");
  auto plan = this->plan(r, cfg, std::move(catalog));
  if (!plan->bypass.empty()) co_return bypassed(plan->bypass);
  // Writes made outside sluice reach the versions through the WAL follower alone: while it is
  // behind (or not following), a hit could be older than such a write.
  if (cfg.follows_wal() && !wal_fresh(plan->ns, cfg)) co_return bypassed("invalidation_lag");
  // A statement whose keys do not repeat stops paying for lookups (admission.hpp).
  if (cfg.admit_repeated && plan->stats && !plan->stats->admission.should_lookup())
    co_return bypassed("cold_statement");
  std::string material = "sluice-cache-1";
  append_field(material, plan->ns);
  append_field(material, r.role);
  append_field(material, plan->path);
  for (const auto& [k, v] : r.settings) {
    append_field(material, k);
    append_field(material, v);
  }
  append_field(material, r.material);
  Lookup l = co_await lookup_planned(std::move(plan), std::move(material), r.strict, cfg);
  l.role = std::move(r.role);
  co_return l;
}

void Cache::note_fresh(const std::string& ns, std::int64_t fresh_ms) {
  std::lock_guard lock(fresh_mu_);
  auto& v = fresh_[ns];
  v = std::max(v, fresh_ms);
}

std::optional<std::int64_t> Cache::fresh_ms(const std::string& ns) const {
  std::lock_guard lock(fresh_mu_);
  auto it = fresh_.find(ns);
  if (it == fresh_.end()) return std::nullopt;
  return it->second;
}

bool Cache::wal_fresh(const std::string& ns, const config::Cache& cfg) const {
  auto at = fresh_ms(ns);
  if (!at) return false;
  const auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  return now - *at <= cfg.max_invalidation_lag.count();
}

awaitable<std::optional<RedisReply>> Cache::redis(std::vector<std::string> args) {
  auto conn = local();
  if (!conn || !conn->up()) co_return std::nullopt;
  auto reply = co_await conn->command(std::move(args));
  co_return reply;
}

Lookup Cache::bypassed(std::string_view why) {
  Lookup l;
  l.outcome = Lookup::Outcome::kBypass;
  l.bypass = why;
  count_bypass(why);
  return l;
}

std::shared_ptr<const Plan> Cache::document_plan(const std::string& ns,
                                                 const std::vector<std::string>& collections,
                                                 const std::string& rule,
                                                 std::chrono::milliseconds ttl) {
  auto p = std::make_shared<Plan>();
  p->rule = rule;
  p->ttl = ttl;
  p->ns = ns;
  p->bson = true;
  for (const auto& c : collections) {
    auto oid = collection_id(c);
    if (std::find(p->oids.begin(), p->oids.end(), oid) != p->oids.end()) continue;
    p->oids.push_back(oid);
    p->keys.push_back(version_key(ns, oid));
    p->keys.push_back(lsn_key(ns, oid));
    p->tags.push_back(ns + ":" + std::to_string(oid));
  }
  p->keys.push_back(version_key(ns, 0));
  p->keys.push_back(lsn_key(ns, 0));
  p->keys.push_back(version_key(std::string(kGlobal), 0));
  p->keys.push_back(lsn_key(std::string(kGlobal), 0));
  p->tags.push_back(ns + ":0");
  p->counters = &counters(rule);
  return p;
}

std::uint32_t Cache::collection_id(std::string_view collection) {
  // FNV-1a, folded to 32 bits; 0 is the database's epoch. Two names that collide share a
  // version: a write to one also moves the other's (more misses, never a stale hit).
  const std::uint64_t h = routing::fnv1a(collection);
  auto id = static_cast<std::uint32_t>(h ^ (h >> 32));
  return id == 0 ? 1 : id;
}

bool Cache::valid_entry(const Plan& p, std::string_view value) {
  if (!p.bson) return replayable_reply(value);
  // One whole BSON document: its length word is its size, and it ends with NUL.
  if (value.size() < 5 || value.back() != '\0') return false;
  std::uint32_t len = 0;
  for (std::size_t i = 4; i-- > 0;) len = (len << 8) | static_cast<unsigned char>(value[i]);
  return len == value.size();
}

awaitable<Lookup> Cache::lookup_planned(std::shared_ptr<const Plan> plan, std::string material,
                                        bool strict, const config::Cache& cfg) {
  auto conn = local();
  if (!conn || !conn->up()) co_return bypassed("redis_down");
  if (blocked(plan->ns, plan->oids)) co_return bypassed("unbumped");
  Lookup l;
  l.plan = plan;
  const auto& keys = plan->keys;
  auto versions = co_await this->versions(*conn, keys, strict);
  if (!versions) co_return bypassed("redis_down");
  std::uint64_t min_lsn = 0;
  for (std::size_t i = 0; i < keys.size(); i += 2) {
    const auto& v = (*versions)[i / 2];
    append_field(material, keys[i]);
    append_field(material, v.version);
    min_lsn = std::max(min_lsn, v.lsn);
  }
  l.key = sha256_hex(material);
  l.min_lsn = min_lsn;

  const auto now = Steady::now();
  Admission* admission = cfg.admit_repeated && plan->stats ? &plan->stats->admission : nullptr;
  if (auto v = l1_.get(l.key, now)) {
    l.outcome = Lookup::Outcome::kHit;
    l.value = std::move(v);
    if (admission) admission->on_hit();
    co_return l;
  }
  // The entry and how long Redis keeps it: the L1 copy expires with it.
  std::vector<std::vector<std::string>> get_cmds;
  get_cmds.push_back({"GET", "sluice:e:" + l.key});
  get_cmds.push_back({"PTTL", "sluice:e:" + l.key});
  auto got = co_await conn->run(std::move(get_cmds));
  if (!got) co_return bypassed("redis_down");
  auto& entry = (*got)[0];
  if (entry.type == RedisReply::Type::kString && valid_entry(*plan, entry.str)) {
    auto value = std::make_shared<const std::string>(std::move(entry.str));
    const auto left = std::chrono::milliseconds(std::max<long long>((*got)[1].integer, 0));
    l1_.put(l.key, value, plan->tags, now + std::min(left, plan->ttl));
    l.outcome = Lookup::Outcome::kHit;
    l.value = std::move(value);
    if (admission) admission->on_hit();
    co_return l;
  }
  if (admission) l.admitted = admission->on_miss(std::stoull(l.key.substr(0, 16), nullptr, 16));
  l.missed_at = now;
  // A miss: the first client runs the query, the others wait for its fill.
  std::shared_ptr<asio::steady_timer> waiter;
  auto ex = co_await asio::this_coro::executor;
  {
    std::lock_guard lock(flights_mu_);
    auto& f = flights_[l.key];
    if (!f) {
      f = std::make_shared<Flight>();
      l.flight = f;
    } else {
      std::lock_guard flock(f->mu);
      if (!f->done) {
        waiter = std::make_shared<asio::steady_timer>(ex);
        waiter->expires_after(cfg.fill_wait);
        f->waiters.emplace_back(waiter->get_executor(), waiter);
      }
    }
  }
  if (l.flight) {
    // A flight for this key may have landed between our GET and our taking the lead: its fill
    // went to L1 before it left flights_, so L1 has it now (unless the fill was not stored).
    if (auto v = l1_.get(l.key, Steady::now())) {
      finish(l);
      l.outcome = Lookup::Outcome::kHit;
      l.value = std::move(v);
      co_return l;
    }
  }
  if (waiter) {
    co_await waiter->async_wait(use_nothrow);
    if (auto v = l1_.get(l.key, Steady::now())) {
      l.outcome = Lookup::Outcome::kHit;
      l.value = std::move(v);
      co_return l;
    }
    std::vector<std::string> again{"GET", "sluice:e:" + l.key};
    auto second = co_await conn->command(std::move(again));
    if (second && second->type == RedisReply::Type::kString && valid_entry(*plan, second->str)) {
      l.outcome = Lookup::Outcome::kHit;
      l.value = std::make_shared<const std::string>(std::move(second->str));
      co_return l;
    }
  }
  l.outcome = Lookup::Outcome::kMiss;
  co_return l;
}

void Cache::count_not_stored(const Lookup& l, const char* reason) {
  if (l.plan && l.plan->counters) l.plan->counters->skipped_fills++;
  if (l.plan && l.plan->stats) l.plan->stats->not_stored++;
  std::lock_guard lock(mu_);
  ++not_stored_[reason];
}

std::map<std::string, std::uint64_t> Cache::not_stored() const {
  std::lock_guard lock(mu_);
  return not_stored_;
}

bool Cache::store(Lookup& l, std::string_view reply, const config::Cache& cfg) {
  if (!l.admitted && l.flight) {  // other clients wait for this very key: it repeats
    std::lock_guard lock(l.flight->mu);
    if (!l.flight->waiters.empty()) l.admitted = true;
  }
  if (cfg.admit_repeated && l.plan && l.plan->stats)
    l.plan->stats->admission.on_filled(
        std::chrono::duration_cast<std::chrono::microseconds>(Steady::now() - l.missed_at),
        std::chrono::duration_cast<std::chrono::microseconds>(cfg.admit_after));
  const char* skip = reply.size() > cfg.max_entry_bytes ? "too_large"
                     : !valid_entry(*l.plan, reply)     ? "not_replayable"
                     : !l.admitted && Steady::now() - l.missed_at < cfg.admit_after ? "first_miss"
                                                                                    : nullptr;
  if (skip) {
    count_not_stored(l, skip);
    finish(l);
    return false;
  }
  auto value = std::make_shared<const std::string>(reply);
  const auto ttl = l.plan->ttl;
  l1_.put(l.key, value, l.plan->tags, Steady::now() + ttl);
  if (auto conn = local(); conn && conn->up()) {
    std::vector<std::string> set{"SET", "sluice:e:" + l.key, *value, "PX",
                                 std::to_string(std::max<std::int64_t>(ttl.count(), 1))};
    conn->send(set);
  }
  if (auto* c = l.plan->counters) {
    c->fills++;
    c->fill_bytes += reply.size();
  }
  finish(l);
  return true;
}

void Cache::note_writes(const std::string& db, const CacheFacts& facts, const std::string& role,
                        const std::optional<std::string>& search_path, Writes& w) const {
  if (facts.writes_unknown) w.unknown = true;
  if (facts.writes_roles) w.roles = true;
  if (facts.catalog_change) w.catalog_change = true;
  auto catalog = this->catalog(db);
  if (!catalog || !catalog->functions) {
    if (!facts.writes.empty() || !facts.functions.empty()) w.unknown = true;
    return;
  }
  if (user_function_may_write(*catalog->functions, facts.functions)) w.unknown = true;
  if (facts.writes.empty() || w.unknown) return;
  std::optional<std::string> path_text = search_path;
  if (!path_text) path_text = catalog->relations.default_search_path(role);
  const auto path = path_text ? parse_search_path(*path_text, role) : std::vector<std::string>{};
  for (const auto& name : facts.writes) {
    const Relation* rel =
        (name.schema.empty() && !path_text) ? nullptr : catalog->relations.resolve(name, path);
    if (!rel) {  // unknown
      w.unknown = true;
      return;
    }
    std::vector<std::uint32_t> changed;
    catalog->relations.expand(rel->oid, changed);  // views' base tables, children
    std::vector<std::uint32_t> more;
    for (auto oid : changed) catalog->relations.cascades(oid, more);
    changed.insert(changed.end(), more.begin(), more.end());
    // A trigger on any of them (the view's base table, the partition a row lands in, a table a
    // cascade reaches) may write anywhere.
    if (std::any_of(changed.begin(), changed.end(), [&](std::uint32_t oid) {
          const auto* r = catalog->relations.find(oid);
          return r && r->user_triggers;
        })) {
      w.unknown = true;
      return;
    }
    for (auto oid : changed) {
      if (std::find(w.oids.begin(), w.oids.end(), oid) == w.oids.end()) w.oids.push_back(oid);
    }
  }
}

awaitable<bool> Cache::send_bump(const std::string& ns, const std::vector<std::uint32_t>& oids,
                                 bool db_wide, bool global, std::uint64_t lsn,
                                 bool catalog_change) {
  auto conn = local();
  if (!conn || !conn->up()) co_return false;
  std::vector<std::string> keys;
  std::string message = ns;
  if (global) {
    // A role change moves the global epoch, and this database's for the entries that other
    // instances keep.
    keys.push_back(version_key(std::string(kGlobal), 0));
    keys.push_back(lsn_key(std::string(kGlobal), 0));
    keys.push_back(version_key(ns, 0));
    keys.push_back(lsn_key(ns, 0));
    message = "* *";
  } else if (db_wide) {
    keys.push_back(version_key(ns, 0));
    keys.push_back(lsn_key(ns, 0));
    message += catalog_change ? " !" : " *";  // "!": relations changed, refetch the catalog
  }
  if (!db_wide && !global) {
    for (auto oid : oids) {
      keys.push_back(version_key(ns, oid));
      keys.push_back(lsn_key(ns, oid));
      message += " " + std::to_string(oid);
    }
  }
  if (keys.empty()) co_return true;
  std::vector<std::string> eval{"EVAL", std::string(kBumpScript), std::to_string(keys.size())};
  eval.insert(eval.end(), keys.begin(), keys.end());
  eval.push_back(hex16(lsn));
  eval.push_back(std::string(kChannel));
  eval.push_back(message);
  eval.push_back(latest_key(ns));
  eval.push_back(catalog_change ? catalog_generation_key(ns) : std::string());
  auto r = co_await conn->command(std::move(eval));
  const bool ok = r && !r->error();
  if (ok) forget_versions(message);  // before the writer's client goes on
  co_return ok;
}

void Cache::remember_failed(const std::string& ns, const Writes& w, std::uint64_t lsn) {
  std::lock_guard lock(mu_);
  auto& f = failed_[ns];
  any_failed_ = true;
  f.oids.insert(w.oids.begin(), w.oids.end());
  f.db_wide = f.db_wide || w.unknown;
  f.global = f.global || w.roles;
  f.catalog_change = f.catalog_change || w.catalog_change;
  f.lsn = std::max(f.lsn, lsn);
}

awaitable<bool> Cache::bump(const std::string& db, const Writes& w, std::uint64_t lsn) {
  if (w.empty()) co_return true;
  std::shared_ptr<const DbCatalog> catalog;
  {
    std::lock_guard lock(mu_);  // out of date or not: its namespace is what the bump needs
    if (auto it = catalogs_.find(db); it != catalogs_.end()) catalog = it->second.catalog;
  }
  if (w.catalog_change) catalog_changed(db);
  if (!catalog) {  // keyed once the catalog comes (set_catalog)
    remember_failed("db:" + db, w, lsn);
    bumps_failed_++;
    co_return false;
  }
  co_return co_await bump_namespace(catalog->ns, w, lsn, db);
}

awaitable<bool> Cache::bump_namespace(const std::string& ns, const Writes& w, std::uint64_t lsn,
                                      const std::string& what) {
  // This instance's L1 first; the others hear it on the channel.
  if (w.roles) {
    l1_.drop_prefix("");
  } else if (w.unknown) {
    l1_.drop(ns + ":0");
  } else {
    for (auto oid : w.oids) l1_.drop(ns + ":" + std::to_string(oid));
  }
  const bool ok = co_await send_bump(ns, w.oids, w.unknown, w.roles, lsn, w.catalog_change);
  if (!ok) {
    remember_failed(ns, w, lsn);
    bumps_failed_++;
    spdlog::warn(
        "cache: could not bump the versions of relations written in database {} (redis "
        "unreachable): hits on them stop here until the bump lands",
        what);
    co_return false;
  }
  bumps_ok_++;
  co_return true;
}

awaitable<void> Cache::retry_bumps() {
  // By namespace; those still waiting for a catalog get one when it comes (set_catalog).
  std::map<std::string, Failed> unsent;
  {
    std::lock_guard lock(mu_);
    for (const auto& [ns, f] : failed_) {
      if (!ns.starts_with("db:")) unsent.emplace(ns, f);
    }
  }
  for (auto& [ns, f] : unsent) {
    std::vector<std::uint32_t> oids(f.oids.begin(), f.oids.end());
    const bool ok = co_await send_bump(ns, oids, f.db_wide, f.global, f.lsn, f.catalog_change);
    if (!ok) co_return;
    std::lock_guard lock(mu_);
    auto it = failed_.find(ns);
    if (it == failed_.end()) continue;
    // Only what was sent is done; writes noted meanwhile stay.
    for (auto oid : f.oids) it->second.oids.erase(oid);
    if (f.db_wide) it->second.db_wide = false;
    if (f.global) it->second.global = false;
    if (f.catalog_change) it->second.catalog_change = false;
    if (it->second.oids.empty() && !it->second.db_wide && !it->second.global) failed_.erase(it);
    any_failed_ = !failed_.empty();
    spdlog::info("cache: delayed version bump of {} landed: hits on it resume", ns);
  }
}

void Cache::forget_versions(std::string_view message) {
  std::lock_guard lock(mu_);
  ++version_epoch_;
  auto space = message.find(' ');
  const std::string ns(message.substr(0, space));
  auto rest = space == std::string_view::npos ? std::string_view() : message.substr(space + 1);
  if (ns == "*" || rest.find_first_of("*!") != std::string_view::npos || rest.empty()) {
    local_versions_.clear();
    return;
  }
  while (!rest.empty()) {
    auto next = rest.find(' ');
    local_versions_.erase(
        version_key(ns, static_cast<std::uint32_t>(
                            std::strtoul(std::string(rest.substr(0, next)).c_str(), nullptr, 10))));
    if (next == std::string_view::npos) break;
    rest.remove_prefix(next + 1);
  }
}

void Cache::on_invalidation(std::string_view message) {
  invalidations_++;
  forget_versions(message);
  auto space = message.find(' ');
  if (space == std::string_view::npos) return;
  const std::string ns(message.substr(0, space));
  auto rest = message.substr(space + 1);
  if (ns == "*") {
    l1_.drop_prefix("");
    return;
  }
  while (!rest.empty()) {
    auto next = rest.find(' ');
    auto item = rest.substr(0, next);
    if (item == "!") {  // DDL through another instance: this one's catalog is out of date
      l1_.drop(ns + ":0");
      mark_stale(ns);
    } else if (item == "*")
      l1_.drop(ns + ":0");
    else
      l1_.drop(ns + ":" + std::string(item));
    if (next == std::string_view::npos) break;
    rest.remove_prefix(next + 1);
  }
}

}  // namespace sluice::cache
