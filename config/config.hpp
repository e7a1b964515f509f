// sluice configuration: YAML → an immutable, validated Config snapshot (reload = a new snapshot).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "protocol/pg/scram.hpp"

namespace sluice::config {

// Thrown only while loading: "FILE:LINE: key 'a.b': what is wrong and what to do".
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using Duration = std::chrono::milliseconds;

struct Endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const;
};

struct Backend {
  std::string host;
  std::uint16_t port = 5432;
  std::string dbname;        // defaults to the database key
  std::uint32_t weight = 1;  // share of reads (routing.load_balancing)
};

enum class PoolMode { kSession, kTransaction, kStatement };
std::string_view to_string(PoolMode m);

enum class AuthType { kScram, kMd5, kTrust };
std::string_view to_string(AuthType a);

enum class ServerTls { kDisable, kPrefer, kRequire, kVerifyFull };

struct Database {
  std::string name;
  // With roles learned from the servers (`hosts:`, or `role: auto`), the running configuration's
  // primary and replicas are what the health monitor found (App::apply_topology); the file's
  // list is `hosts`.
  Backend primary;
  std::vector<Backend> replicas;
  std::vector<Backend> hosts;  // empty: roles as configured
  bool primary_known = true;   // false while no host of `hosts` is the primary (writes wait)
  bool auto_roles() const { return !hosts.empty(); }
  std::optional<PoolMode> pool_mode;
  std::optional<std::uint32_t> pool_size;
  std::optional<std::uint32_t> max_db_connections;
};

struct User {
  std::string name;
  // What clients authenticate against: a SCRAM verifier always (derived from a plaintext password
  // at load time), plus the md5 hash when one can be known.
  pg::scram::Verifier scram;
  std::string md5_hash;         // "md5..." or empty
  std::string server_user;      // login to the server; defaults to name
  std::string server_password;  // plaintext for server auth; empty when only a verifier is known
  std::optional<PoolMode> pool_mode;
  std::optional<std::uint32_t> pool_size;
};

struct Pool {
  PoolMode mode = PoolMode::kTransaction;
  std::uint32_t size = 20;
  std::uint32_t min_pool_size = 0;  // kept open (pre-warmed) per configured (database, user)
  std::uint32_t reserve_pool_size =
      0;  // extra connections for clients waiting reserve_pool_timeout
  Duration reserve_pool_timeout{5'000};
  std::uint32_t max_client_conn = 1000;
  std::string reset_query = "DISCARD ALL";
  Duration query_wait_timeout{120'000};
  Duration server_connect_timeout{15'000};
  Duration client_login_timeout{60'000};  // startup + TLS + authentication must finish within this
  Duration server_idle_timeout{600'000};
  Duration server_lifetime{3'600'000};
  // 0 = off (the PgBouncer defaults).
  Duration query_timeout{0};             // a request running longer is cancelled, client closed
  Duration idle_transaction_timeout{0};  // a client idle inside a transaction is closed
  Duration client_idle_timeout{0};       // a client idle between transactions is closed
  // Transaction pooling: what to do with LISTEN, session advisory locks, temp tables, WITH HOLD
  // cursors, SET ROLE: keep the client on its server connection (pin) or refuse them (error).
  bool pin_is_error = false;
  std::uint32_t max_prepared_statements = 250;  // per server connection, LRU beyond
  std::uint32_t max_db_connections = 0;         // per database across its user pools; 0 = no cap
  // Pooled clients idle between requests hold no coroutine (parked) once more than this many
  // clients are connected: a few hundred bytes less each, a little CPU more per wake.
  std::uint32_t park_idle_above = 256;
};

struct Tls {
  std::string cert_file;  // client-facing certificate; empty = clients are told 'N'
  std::string key_file;
  ServerTls server_tls = ServerTls::kDisable;
  std::string server_ca_file;
};

struct Log {
  std::string level = "info";
  bool json = false;
};

// The admin console (database "sluice"): users run every command, stats_users SHOW only.
struct Admin {
  std::vector<std::string> users;
  std::vector<std::string> stats_users;
};

// Query insights: per-fingerprint statistics, the slow-query log, optional EXPLAIN.
struct Insights {
  Duration slow_query_threshold{1'000};  // 0 = no slow-query log
  Duration slow_log_interval{60'000};    // one line per fingerprint per interval
  bool explain = false;                  // EXPLAIN (FORMAT JSON) a slow parameterless SELECT
  std::uint64_t seq_scan_rows = 10'000;  // a sequential scan over more rows is reported
  std::uint32_t top_n = 20;              // fingerprints exported as metrics
  std::uint32_t max_fingerprints = 2'000;
};

// Read/write routing to replicas (transaction and statement pooling).
struct Routing {
  enum class Balance { kRoundRobin, kLeastOutstanding, kRandom };
  enum class PrimaryReads { kInclude, kExclude, kFallbackOnly };
  enum class ReadYourWrites { kOff, kWindow, kLsn };
  // global: a read sees every write acknowledged through any sluice sharing the Redis (or this
  // one, without Redis) before it arrived; session: its own client's writes (read_your_writes)
  // and the sluice.min_lsn token; eventual: lag bans alone.
  enum class Consistency { kGlobal, kSession, kEventual };
  bool enabled = true;  // with replicas configured
  Balance load_balancing = Balance::kRoundRobin;
  PrimaryReads primary_reads = PrimaryReads::kFallbackOnly;
  bool error_when_all_banned = false;                 // all_replicas_banned: primary | error
  std::uint64_t max_replica_lag_bytes = 64ull << 20;  // 0 = no limit
  Duration max_replica_lag{30'000};                   // 0 = no limit
  Duration ban_time{10'000};
  ReadYourWrites read_your_writes = ReadYourWrites::kLsn;
  Duration read_your_writes_window{1'000};
  Consistency read_consistency = Consistency::kGlobal;
  Duration max_consistency_wait{20};  // a replica slightly behind: wait this long, then primary
  Duration catalog_refresh{60'000};
  std::string health_user;  // a users: entry whose server login checks replicas; "" = the first
  std::uint32_t primary_weight = 1;  // the primary's share of reads with primary_reads: include
};

// One cache rule (cache.rules): the first rule that matches a cacheable statement decides.
struct CacheRule {
  std::string name;                       // for metrics and SHOW CACHE
  std::vector<std::string> tables;        // "schema.table" or "table": matches when read
  std::vector<std::string> fingerprints;  // libpg_query fingerprints (hex), e.g. from SHOW TOP
  bool cache = true;                      // action: cache | skip
  Duration ttl{0};                        // 0: cache.default_ttl
};

struct Cache {
  std::string redis;  // redis://[user:password@]host:port[/db]; empty = no cache
  bool enabled = true;
  bool all = true;  // mode: all (every cacheable statement) | rules (only what a rule caches)
  Duration default_ttl{60'000};
  std::uint64_t max_entry_bytes = 1u << 20;
  std::uint64_t l1_bytes = 64u << 20;  // in-process LRU; 0 = none
  Duration command_timeout{200};       // a Redis reply later than this: Redis counts as down
  Duration connect_timeout{1'000};
  Duration fill_wait{5'000};  // a miss waits this long for a concurrent identical miss's fill
  bool rls_by_role = false;   // rls: skip (default) | by_role
  bool invalidation = true;   // false only to show what stale reads look like (tests)
  std::vector<CacheRule> rules;
  // The WAL follower (writes made outside sluice): a logical replication connection to each
  // database's primary, one instance per Redis following at a time (a lease). While it is
  // behind by more than max_invalidation_lag, or not running, hits stop for that database.
  bool follow_wal = true;
  Duration max_invalidation_lag{1'000};
  std::string wal_slot = "sluice";         // slot name prefix: <prefix>_<server database>
  std::string wal_publication = "sluice";  // FOR ALL TABLES, created when the role may
  // Admission: `repeat` stores a miss's reply when its key missed before (or its query ran at
  // least admit_after) and looks cold statements up for 1 request in 16; `always` stores every
  // cacheable reply.
  bool admit_repeated = true;
  Duration admit_after{10};
  // Whether hits wait for the follower (invalidation: false shows stale reads on purpose).
  bool follows_wal() const { return follow_wal && invalidation && enabled && !redis.empty(); }
};

// The MongoDB proxy (mongo:), off unless configured.
struct MongoServer {
  std::string host;
  std::uint16_t port = 27017;
  bool primary = false;                     // role: primary | secondary
  std::map<std::string, std::string> tags;  // matched by read preference tag sets
  std::string address() const { return host + ":" + std::to_string(port); }
};

// One mongo.cache rule: the first whose collections match a cacheable read decides.
struct MongoCacheRule {
  std::string name;
  std::vector<std::string> collections;  // "db.collection", "db.*" or "*"
  bool cache = true;
  Duration ttl{0};  // 0: cache.default_ttl
};

struct Mongo {
  Endpoint listen{"127.0.0.1", 27018};
  std::string uri;                   // mongodb://...: libmongoc discovers and monitors the servers
  std::vector<MongoServer> servers;  // static roles (no discovery)
  std::string name = "default";      // the deployment's name in cache keys (shared Redis)
  std::uint32_t pool_size = 20;      // server connections per (event loop, server)
  Duration connect_timeout{5'000};
  Duration wait_timeout{10'000};  // a request waits this long for a server connection
  Duration heartbeat_interval{1'000};
  Duration max_staleness_floor{0};  // maxStalenessSeconds below this is refused (mongos: 90 s)
  std::vector<MongoCacheRule> cache;
  // The listener authenticates no client: listen off loopback only when allowed, and commands
  // outside the allow-list (administration, users, $currentOp...) only those named here.
  bool allow_remote = false;
  std::vector<std::string> allow_commands;
};

struct Config {
  std::string source;  // file path, for messages
  Endpoint listen_postgres{"127.0.0.1", 6432};
  std::optional<Endpoint> listen_http = Endpoint{"127.0.0.1", 9930};  // nullopt: "off"
  bool so_reuseport = false;  // listen.so_reuseport: a second sluice may bind the same port
  std::uint32_t workers = 1;
  AuthType auth_type = AuthType::kScram;
  std::map<std::string, Database> databases;
  std::map<std::string, User> users;
  Pool pool;
  Cache cache;
  Tls tls;
  Log log;
  Duration shutdown_timeout{30'000};
  std::uint32_t max_message_size = 0x3fffffff;
  Admin admin;
  Insights insights;
  Routing routing;
  Duration health_check_interval{1'000};
  // Roles learned from the servers: how long a write waits for a primary before 57P03.
  Duration failover_timeout{30'000};
  Duration stats_period{60'000};  // averages in SHOW STATS cover this period
  std::optional<Mongo> mongo;     // the MongoDB proxy, when mongo: is configured

  bool is_admin(const std::string& user) const;
  bool is_stats_user(const std::string& user) const;

  const Database* database(const std::string& name) const;
  const User* user(const std::string& name) const;
  // The login the health monitor uses for lag and recovery checks (routing.health_user, else the
  // first user by name); null when there is none.
  const User* health_user() const;
  PoolMode pool_mode_for(const Database& db, const User& u) const;
  std::uint32_t pool_size_for(const Database& db, const User& u) const;
  std::uint32_t max_db_connections_for(const Database& db) const {
    return db.max_db_connections.value_or(pool.max_db_connections);
  }
};

std::shared_ptr<const Config> load_file(const std::string& path);
std::shared_ptr<const Config> load_string(const std::string& yaml,
                                          const std::string& source = "<string>");

}  // namespace sluice::config
