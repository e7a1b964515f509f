// The query cache: cacheability of a request (parse + catalog), its key (statement text,
// parameters, formats, database, role, search_path, result-affecting settings and the version of
// every relation read), lookups in the in-process L1 and then Redis, fills of the exact reply
// bytes, single-flighted misses, and invalidation by relation versions kept in Redis (shared by
// every sluice instance that points at the same Redis) with the primary's LSN of the last bump.
//
// Correctness rules (docs/ARCHITECTURE.md "Query cache"):
// - a write's relations are bumped before its client sees ReadyForQuery; a bump that cannot
//   reach Redis stops hits for those relations here until a retry lands;
// - a fill is stored only under the versions read before the query ran, from a source that had
//   replayed past the LSN of those versions (the session routes the miss with that LSN);
// - Redis down: every request bypasses the cache, nothing fails.
#pragma once

#include <atomic>
#include <boost/asio.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "cache/admission.hpp"
#include "cache/analysis.hpp"
#include "cache/l1.hpp"
#include "cache/redis.hpp"
#include "cache/relations.hpp"
#include "config/config.hpp"
#include "routing/classify.hpp"

namespace sluice::cache {

// What the cache knows of one database, loaded from its primary.
struct DbCatalog {
  std::shared_ptr<const routing::FunctionCatalog> functions;
  RelationCatalog relations;
  // Keys and versions live under this name: "<system identifier>/<database>", the same for
  // every sluice in front of this cluster, different for any other cluster sharing the Redis.
  std::string ns;
};

// Loads the relations part of a DbCatalog on a libpq connection (`conn` is a PGconn*); nullptr
// when a query fails (the reason in `why`).
std::shared_ptr<DbCatalog> load_catalog(void* conn,
                                        std::shared_ptr<const routing::FunctionCatalog> functions,
                                        std::string* why);

// "<system identifier>/<database>" of the server `conn` (a PGconn*) is logged in to, or
// "port<port>/<database>" without the privilege to read the identifier; "" when both fail.
std::string cluster_namespace(void* conn);

// The writes of one transaction, noted as its statements pass through.
struct Writes {
  std::vector<std::uint32_t> oids;  // relations whose version a commit bumps
  bool unknown = false;             // may have written anything in the database
  bool roles = false;               // changed roles or grants: every database
  bool catalog_change = false;      // relations or functions changed: fetch the catalog again
  bool empty() const { return oids.empty() && !unknown && !roles; }
  void clear() { *this = Writes{}; }
};

// One request as the key needs it.
struct Request {
  std::string database;  // the name clients use
  std::string role;      // the role the query runs as on the server
  std::string_view sql;
  std::string material;  // the client's messages as they decide the reply (names left out)
  std::vector<std::pair<std::string, std::string>> settings;  // the session's, sorted
  std::optional<std::string> search_path;                     // set by the session, if so
  // The client carries a causal token (sluice.min_lsn): versions are read from Redis, never
  // from what this instance learnt over the invalidation channel (a bump made through another
  // instance may not have arrived yet).
  bool strict = false;
  std::uint64_t generation = 0;  // of the configuration `config::Cache` comes from
};

struct Flight;

struct CacheCounters {
  std::atomic<std::uint64_t> hits{0}, misses{0}, fills{0}, hit_bytes{0}, fill_bytes{0},
      skipped_fills{0};
};

// Per statement kind (fingerprint): for SHOW CACHE.
struct StatementStats {
  std::string rule;
  std::string sample;               // the statement text, cut to 200 characters
  std::vector<std::string> tables;  // "db/schema.name" of the relations it names
  std::atomic<std::uint64_t> hits{0}, misses{0}, bytes{0};
  std::atomic<std::uint64_t> not_stored{0};  // first misses left out by admission
  Admission admission;
};

// What does not change between executions of one text for one database, role and search_path
// while the catalog and the configuration stay: whether it is cached, under which rule and TTL,
// and the relations whose versions make its key.
struct Plan {
  std::string_view bypass;  // non-empty: not cached, and why
  std::shared_ptr<const DbCatalog> catalog;
  std::uint64_t generation = 0;  // of the configuration the rules came from
  std::string rule = "default";
  std::chrono::milliseconds ttl{0};
  std::string ns;
  std::string path;                 // the search_path text the names were resolved with
  std::vector<std::uint32_t> oids;  // every relation read (views and children expanded)
  std::vector<std::string> keys;    // their version and LSN keys, the epochs' last
  std::vector<std::string> tags;    // "ns:oid" of every relation read, for the L1
  CacheCounters* counters = nullptr;
  StatementStats* stats = nullptr;
  bool bson = false;  // entries are one BSON document (a MongoDB reply body)
};

struct Lookup {
  enum class Outcome : std::uint8_t { kBypass, kHit, kMiss };
  Outcome outcome = Outcome::kBypass;
  std::string_view bypass;                   // kBypass: why ("redis_down", "not_cacheable", ...)
  std::shared_ptr<const std::string> value;  // kHit: the reply without ReadyForQuery
  std::string key;                           // hex SHA-256
  std::string role;                          // kMiss: the server role the key was made for
  std::shared_ptr<const Plan> plan;          // kHit, kMiss
  std::uint64_t min_lsn = 0;                 // kMiss: the source must have replayed this far
  std::shared_ptr<Flight> flight;            // kMiss: this client's fill wakes the others waiting
  bool admitted = true;  // kMiss: the reply is stored (else only if its query was expensive)
  std::chrono::steady_clock::time_point missed_at{};
};

class Cache {
 public:
  explicit Cache(config::Cache cfg);
  ~Cache();
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  // One Redis connection per event loop, plus the subscriber on the first loop.
  void start(const std::vector<asio::any_io_executor>& loops);
  // Once the event loops have stopped: lets go of the connections before the loops go.
  void close_for_exit() {
    conns_.clear();
    subscriber_.reset();
  }
  // The event loop the calling thread runs (set once per thread by the App).
  static void set_loop_index(std::size_t i);
  bool configured() const { return !cfg_.redis.empty(); }
  bool redis_up() const;

  // Catalogs, fetched by the health monitor from each database's primary.
  // True when the catalog of `db` should be fetched now (the fetch follows at once).
  bool catalog_wanted(const std::string& db, std::chrono::steady_clock::time_point now,
                      std::chrono::milliseconds refresh);
  void set_functions(const std::string& db, std::shared_ptr<const routing::FunctionCatalog> f);
  std::shared_ptr<const routing::FunctionCatalog> functions(const std::string& db) const;
  void set_catalog(const std::string& db, std::shared_ptr<const DbCatalog> catalog);
  void catalog_changed(const std::string& db);
  // The count of catalog changes in namespace `ns`, kept in Redis (every bump that changes
  // relations increments it): an instance that missed the change's message, or whose fetch
  // straddled the change, sees it move and fetches its catalog again.
  static std::string catalog_generation_key(const std::string& ns);
  void note_catalog_generation(const std::string& db, std::int64_t generation);
  // Called when a catalog goes out of date (to fetch it again soon); set before start().
  void on_catalog_stale(std::function<void()> f) {
    std::lock_guard lock(mu_);
    on_stale_ = std::move(f);
  }
  std::shared_ptr<const DbCatalog> catalog(const std::string& db) const;

  // The analysis of a statement text (cached by shape).
  std::shared_ptr<const CacheFacts> facts(std::string_view sql) { return facts_.get(sql); }

  // Whether and where `r` is cached. Runs on the caller's event loop.
  asio::awaitable<Lookup> lookup(Request r, const config::Cache& cfg);
  // MongoDB reads: a plan over collections of one namespace ("mongo:<name>/<db>"), each a
  // relation whose id is collection_id(name); `material` is what identifies the request.
  std::shared_ptr<const Plan> document_plan(const std::string& ns,
                                            const std::vector<std::string>& collections,
                                            const std::string& rule, std::chrono::milliseconds ttl);
  static std::uint32_t collection_id(std::string_view collection);
  asio::awaitable<Lookup> lookup_planned(std::shared_ptr<const Plan> plan, std::string material,
                                         bool strict, const config::Cache& cfg);
  // Bumps the versions of what `w` wrote in namespace `ns` (`what` names it in messages).
  asio::awaitable<bool> bump_namespace(const std::string& ns, const Writes& w, std::uint64_t lsn,
                                       const std::string& what);
  // Stores a miss's reply (RowDescription... CommandComplete, no ReadyForQuery) and wakes the
  // clients waiting for it. False when the bytes are not a cacheable reply.
  bool store(Lookup& l, std::string_view reply, const config::Cache& cfg);
  // A miss that will not be stored: wakes the clients waiting for it.
  void finish(Lookup& l);

  // Adds what `facts` writes to `w`, resolved with the session's search_path.
  void note_writes(const std::string& db, const CacheFacts& facts, const std::string& role,
                   const std::optional<std::string>& search_path, Writes& w) const;
  // Read consistency (routing.read_consistency: global): the largest commit-LSN mark among the
  // relations the statements `sqls` read (views expanded), the database's epoch and the global
  // one; the database's latest-write mark when a relation cannot be told (or `sqls` is empty).
  // Read from Redis, where every instance's bumps leave them. nullopt when Redis or the
  // catalog is missing.
  // The relations `sqls` read (views expanded); nullopt when any cannot be told or the catalog
  // is not loaded.
  std::optional<std::vector<std::uint32_t>> relations_of(
      const std::string& db, const std::vector<std::string_view>& sqls, const std::string& role,
      const std::optional<std::string>& search_path);
  asio::awaitable<std::optional<std::uint64_t>> read_marks(
      const std::string& db, const std::vector<std::string_view>& sqls, const std::string& role,
      const std::optional<std::string>& search_path);
  // Bumps the versions of what `w` wrote, `lsn` being the primary's WAL position after the
  // commit. False when Redis could not be told: hits for those relations stop here until a
  // retry lands.
  asio::awaitable<bool> bump(const std::string& db, const Writes& w, std::uint64_t lsn);
  // Sends the bumps that failed again (from the maintenance loop).
  asio::awaitable<void> retry_bumps();

  // The WAL follower (cache.follow_wal): every commit on the primary of namespace `ns` up to the
  // wall-clock time `fresh_ms` (milliseconds since the epoch) has been bumped. Hits in `ns`
  // stop while that is older than cache.max_invalidation_lag.
  void note_fresh(const std::string& ns, std::int64_t fresh_ms);
  std::optional<std::int64_t> fresh_ms(const std::string& ns) const;
  bool wal_fresh(const std::string& ns, const config::Cache& cfg) const;
  bool follower_fresh(const std::string& db, const config::Cache& cfg) const {
    auto c = catalog(db);
    return c && wal_fresh(c->ns, cfg);
  }
  // One Redis command on the calling event loop's connection (the follower's lease and
  // freshness stamps); nullopt when Redis is down.
  asio::awaitable<std::optional<RedisReply>> redis(std::vector<std::string> args);

  // Statistics.
  CacheCounters& counters(const std::string& rule);
  std::map<std::string, const CacheCounters*> all_counters() const;
  void count_bypass(std::string_view reason);
  std::map<std::string, std::uint64_t> bypasses() const;
  // Misses whose reply was not stored, by reason (first_miss, too_large, not_replayable).
  std::map<std::string, std::uint64_t> not_stored() const;
  std::uint64_t bumps(bool ok) const { return ok ? bumps_ok_.load() : bumps_failed_.load(); }
  std::uint64_t invalidations_received() const { return invalidations_.load(); }
  const L1& l1() const { return l1_; }
  struct TableStats {
    std::uint64_t hits = 0, misses = 0;
  };
  struct KeyStats {
    std::string rule;
    std::string sample;  // the statement text, cut to 200 characters
    std::uint64_t hits = 0, misses = 0, bytes = 0;
    std::uint64_t not_stored = 0;  // first misses admission left out
    std::uint64_t skipped = 0;     // lookups skipped while cold
    bool cold = false;             // keys do not repeat: 1 request in 16 looked up
  };
  std::map<std::string, TableStats> table_stats() const;      // "db/schema.name" →
  std::map<std::string, KeyStats> fingerprint_stats() const;  // fingerprint →
  // Counts a hit or a miss for its rule and statement.
  static void note_outcome(const Lookup& l, bool hit);
  std::size_t unbumped() const;

 private:
  std::shared_ptr<RedisConnection> local() const;
  Lookup bypassed(std::string_view why);
  static bool valid_entry(const Plan& p, std::string_view value);
  struct Version {
    std::string version;
    std::uint64_t lsn = 0;
    std::chrono::steady_clock::time_point fetched{};
  };
  // The versions (and LSNs) under `keys` (version, lsn pairs); nullopt when Redis fails.
  asio::awaitable<std::optional<std::vector<Version>>> versions(
      RedisConnection& conn, const std::vector<std::string>& keys, bool strict);
  void forget_versions(std::string_view message);
  void on_invalidation(std::string_view message);
  void wake(const std::shared_ptr<Flight>& f);
  bool blocked(const std::string& ns, const std::vector<std::uint32_t>& oids) const;
  // Some write that may touch `oids` (any, when nullptr) of database `db` has a bump not yet
  // in Redis: its commit mark is missing there.
  bool marks_pending(const std::string& db, const std::string& ns,
                     const std::vector<std::uint32_t>* oids) const;
  // The relations `sql` reads, added to `oids`; false when they cannot all be told.
  bool relations_read(const DbCatalog& catalog, std::string_view sql, const std::string& role,
                      const std::optional<std::string>& search_path,
                      std::vector<std::uint32_t>& oids);
  void remember_failed(const std::string& ns, const Writes& w, std::uint64_t lsn);
  asio::awaitable<bool> send_bump(const std::string& ns, const std::vector<std::uint32_t>& oids,
                                  bool db_wide, bool global, std::uint64_t lsn,
                                  bool catalog_change = false);
  void mark_stale(const std::string& ns);
  std::function<void()> on_stale_;

  config::Cache cfg_;
  L1 l1_;
  CacheFactsCache facts_;
  std::vector<std::shared_ptr<RedisConnection>> conns_;  // by event loop
  std::shared_ptr<RedisConnection> subscriber_;
  std::atomic<int> up_{0};
  std::atomic<bool> all_up_logged_{false};

  mutable std::mutex mu_;
  struct CatalogEntry {
    std::shared_ptr<const routing::FunctionCatalog> functions;
    std::shared_ptr<const DbCatalog> catalog;
    std::chrono::steady_clock::time_point loaded{};
    bool stale = true;
    std::uint64_t asked = 0;    // catalog_clock_ when a fetch was last asked for
    std::uint64_t changed = 0;  // ... when it last went out of date
    // catalog_generation_key's value: as last read from Redis, when the fetch was asked for,
    // and the one the catalog in use was asked under (-1: not known).
    std::int64_t generation_seen = -1;
    std::int64_t generation_asked = -1;
    std::int64_t generation = -1;
  };
  mutable std::uint64_t catalog_clock_ = 0;
  std::map<std::string, CatalogEntry> catalogs_;
  struct Failed {
    std::set<std::uint32_t> oids;
    bool db_wide = false;
    bool global = false;
    bool catalog_change = false;  // tell the other instances to fetch the catalog again
    std::uint64_t lsn = 0;
  };
  std::map<std::string, Failed> failed_;  // ns (or "database name" before a catalog) →
  std::map<std::string, std::unique_ptr<CacheCounters>> counters_;
  std::map<std::string, std::uint64_t, std::less<>> bypass_;  // found without allocating
  std::map<std::string, std::uint64_t> not_stored_;
  void count_not_stored(const Lookup& l, const char* reason);
  std::map<std::string, std::unique_ptr<StatementStats>> statements_;  // fingerprint →
  std::shared_ptr<const Plan> plan(const Request& r, const config::Cache& cfg,
                                   std::shared_ptr<const DbCatalog> catalog);
  std::shared_ptr<const Plan> make_plan(const Request& r, const config::Cache& cfg,
                                        std::shared_ptr<const DbCatalog> catalog);
  StatementStats* statement_stats(const std::string& fingerprint, const Plan& p,
                                  std::string_view sql, const std::string& db);
  std::mutex plans_mu_;
  std::unordered_map<std::string, std::shared_ptr<const Plan>> plans_;
  std::atomic<bool> any_failed_{false};
  std::mutex flights_mu_;
  std::unordered_map<std::string, std::shared_ptr<Flight>> flights_;
  std::atomic<std::uint64_t> bumps_ok_{0}, bumps_failed_{0}, invalidations_{0};
  // Versions learnt from Redis, dropped by invalidation messages (under mu_).
  std::unordered_map<std::string, Version> local_versions_;
  std::atomic<std::uint64_t> version_epoch_{0};
  std::atomic<bool> subscribed_{false};
  mutable std::mutex fresh_mu_;
  std::unordered_map<std::string, std::int64_t> fresh_;  // ns → the follower's fresh_ms
};

// True when `reply` is whole messages a cached SELECT may replay: ParseComplete, BindComplete,
// ParameterDescription, RowDescription, NoData, DataRow, CommandComplete, EmptyQueryResponse.
bool replayable_reply(std::string_view reply);

}  // namespace sluice::cache
