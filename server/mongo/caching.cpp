// The cache of complete MongoDB read results: the rule for a collection, lookups (hits answered
// here, misses filled from the primary), stores, and the version bumps of writes.
#include "server/mongo/metrics.hpp"
#include "server/mongo/session.hpp"
#include "server/runtime.hpp"

namespace sluice::server {

namespace {

// The cache rule for a read of db.collection: the first whose patterns match decides.
const config::MongoCacheRule* rule_for(const config::Mongo& m, const std::string& db,
                                       const std::string& coll) {
  const std::string full = db + "." + coll;
  for (const auto& r : m.cache) {
    for (const auto& pattern : r.collections) {
      if (pattern == "*" || pattern == full ||
          (pattern.ends_with(".*") && pattern.substr(0, pattern.size() - 1) == db + "."))
        return &r;
    }
  }
  return nullptr;
}

// What a cached result's key is made of: the database, the read concern, the command.
std::string key_material(const rm::Command& cmd, Span body) {
  std::string material = "mongo-1";
  material.push_back('\0');
  material += cmd.db;
  material.push_back('\0');
  material += cmd.read_concern;
  material.push_back('\0');
  material += rm::canonical_command(body);
  return material;
}

}  // namespace

std::string MongoSession::cache_ns(const std::string& db) const {
  return "mongo:" + px_.cfg_.name + "/" + db;
}

// Bumps the versions of what a write changed, before its reply reaches the client.
awaitable<void> MongoSession::bump(const Writes& writes) {
  if (!rt_.redis_cache() || writes.empty() || !rt_.config()->cache.invalidation) co_return;
  std::map<std::string, cache::Writes> by_db;
  for (const auto& [db, coll] : writes) {
    auto& w = by_db[db];
    if (db == "*")
      w.roles = true;  // the global epoch: every database, every cached result
    else if (coll.empty())
      w.unknown = true;
    else
      w.oids.push_back(cache::Cache::collection_id(coll));
  }
  for (const auto& [db, w] : by_db) {
    bool ok = co_await rt_.cache->bump_namespace(cache_ns(db), w, 0, "mongo " + db);
    px_.counters_->bumps.with({ok ? "ok" : "failed"}).inc();
  }
}

// The cache, for cacheable reads outside transactions: a hit is answered here; a miss is read
// from the primary (a fill must hold every write bumped so far, not a secondary's data).
awaitable<MongoSession::CacheStep> MongoSession::from_cache(
    const rm::Command& cmd, const wire::Msg& msg, std::shared_ptr<const config::Config> cfg,
    const MongoTopology& topo, std::int32_t rid, Clock::time_point started) {
  CacheStep step;
  const auto& mcfg = mongo_config(*cfg);
  const config::MongoCacheRule* rule = nullptr;
  if (cmd.cacheable && rt_.redis_cache() && cfg->cache.enabled && !mcfg.cache.empty())
    rule = rule_for(mcfg, cmd.db, cmd.collection);
  if (!rule || !rule->cache) co_return step;
  const auto ttl = rule->ttl.count() > 0 ? rule->ttl : cfg->cache.default_ttl;
  auto plan = rt_.cache->document_plan(cache_ns(cmd.db), cmd.reads, "mongo:" + rule->name, ttl);
  auto material = key_material(cmd, msg.body);
  auto got =
      co_await rt_.cache->lookup_planned(std::move(plan), std::move(material), false, cfg->cache);
  step.lookup = std::move(got);
  if (step.lookup.outcome == cache::Lookup::Outcome::kHit) {
    cache::Cache::note_outcome(step.lookup, true);
    px_.counters_->cache.with({"hit"}).inc();
    count(cmd.name, "cache", "ok", started);
    Buffer out;
    const auto& v = *step.lookup.value;
    wire::encode_msg(out, px_.next_request_id_++, rid, 0,
                     Span(reinterpret_cast<const std::uint8_t*>(v.data()), v.size()));
    auto ec = co_await client_.write_all(asio::buffer(out));
    step.served = !ec;
  } else if (step.lookup.outcome == cache::Lookup::Outcome::kMiss) {
    cache::Cache::note_outcome(step.lookup, false);
    px_.counters_->cache.with({"miss"}).inc();
    step.primary = choose(topo, rm::ReadPreference{});
    step.filling = step.primary.server != nullptr;
  } else {
    px_.counters_->cache.with({"bypass"}).inc();
  }
  co_return step;
}

// Stores a fill's reply when it is a complete result (its cursor exhausted in the first batch).
void MongoSession::fill(cache::Lookup& lookup, const rm::ReplyFacts& facts, Span body,
                        const config::Config& cfg) {
  const bool complete = facts.ok && facts.cursor_id && *facts.cursor_id == 0;
  if (complete &&
      rt_.cache->store(lookup,
                       std::string_view(reinterpret_cast<const char*>(body.data()), body.size()),
                       cfg.cache))
    px_.counters_->fills.inc();
}

}  // namespace sluice::server
