// Server connection pools per (database, user): LIFO idle list, FIFO waiters, exact global limits.
#pragma once

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <variant>
#include <vector>

#include "config/config.hpp"
#include "server/server_conn.hpp"

namespace sluice::server {

class Pool;

// max_db_connections: server connections of one database, counted across all its pools.
class DbLimit {
 public:
  void set_max(std::uint32_t max) {
    std::lock_guard lock(mu_);
    max_ = max;
  }
  bool limited() const {
    std::lock_guard lock(mu_);
    return max_ > 0;
  }
  // Counts one more connection unless the database is at its limit.
  bool try_take() {
    std::lock_guard lock(mu_);
    if (max_ > 0 && open_ >= max_) return false;
    ++open_;
    return true;
  }
  void give() {
    std::lock_guard lock(mu_);
    if (open_ > 0) --open_;
  }
  void add_pool(const std::shared_ptr<Pool>& p) {
    std::lock_guard lock(mu_);
    pools_.push_back(p);
  }
  // Closes one idle connection of another pool of this database, making room; false if none.
  bool evict_idle(const Pool* except);

 private:
  mutable std::mutex mu_;
  std::uint32_t max_ = 0;
  std::uint32_t open_ = 0;
  std::vector<std::weak_ptr<Pool>> pools_;
};

// A checked-out server connection. Its destructor gives the connection back: reset first when
// dirty, closed when broken. Move-only.
class Lease {
 public:
  Lease() = default;
  Lease(std::shared_ptr<Pool> pool, std::unique_ptr<ServerConn> conn)
      : pool_(std::move(pool)), conn_(std::move(conn)) {}
  Lease(Lease&&) noexcept = default;
  Lease& operator=(Lease&& other) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { give_back(); }

  friend class Pool;  // warm() keeps the connection without a reset
  ServerConn* operator->() const { return conn_.get(); }
  ServerConn& operator*() const { return *conn_; }
  explicit operator bool() const { return conn_ != nullptr; }
  // The connection is in an unknown state (lost sync, I/O error): close it, never reuse it.
  void mark_broken() { broken_ = true; }
  // Transaction pooling: the session's state is tracked, so it goes back without the reset query.
  void skip_reset() { reset_ = false; }
  void give_back();

 private:
  std::shared_ptr<Pool> pool_;
  std::unique_ptr<ServerConn> conn_;
  bool broken_ = false;
  bool reset_ = true;
};

struct PoolLimits {
  std::uint32_t size;
  Clock::duration wait;
  Clock::duration lifetime;
  std::string reset_query;
  std::uint32_t reserve_size = 0;
  Clock::duration reserve_timeout{};

  static PoolLimits from(const config::Config& cfg, const config::Database& db,
                         const config::User& user);
};

// One server connection as SHOW SERVERS and /status show it.
struct ServerRow {
  enum class State : std::uint8_t { kActive, kIdle, kTested };  // tested: running reset_query
  State state = State::kActive;
  std::string addr;
  std::uint16_t port = 0;
  std::string local_addr;
  std::uint16_t local_port = 0;
  std::chrono::system_clock::time_point connect_time{};
  std::chrono::system_clock::time_point request_time{};
  std::int32_t remote_pid = 0;
  bool tls = false;
  std::uint64_t epoch = 0;   // RECONNECT closes connections of older epochs
  std::size_t prepared = 0;  // statements sluice prepared on it, as of its last state change
};

// "active", "idle" or "tested", as PgBouncer's SHOW SERVERS writes them.
std::string_view to_string(ServerRow::State s);

// A pool's state at one moment (admin console, metrics).
struct PoolSnapshot {
  std::string database;
  std::string user;
  std::string mode;
  std::uint32_t active = 0;  // leased to a client
  std::uint32_t idle = 0;
  std::uint32_t tested = 0;  // running the reset query
  std::uint32_t login = 0;   // being opened
  std::uint32_t waiting = 0;
  std::uint64_t prepared = 0;  // prepared statements on its server connections
  Clock::duration max_wait{};  // the longest wait of a client still waiting
  std::vector<ServerRow> servers;
  // Adds another pool of the same (database, user): after a reload changed its login, the old
  // pool drains beside the new one.
  void merge(const PoolSnapshot& other);
};

class Pool : public std::enable_shared_from_this<Pool> {
 public:
  Pool(std::string database, std::string user, std::string mode, ServerLogin login,
       std::shared_ptr<DbLimit> db)
      : name_(database + "/" + user),
        database_(std::move(database)),
        user_(std::move(user)),
        mode_(std::move(mode)),
        login_(std::move(login)),
        db_(std::move(db)) {}

  const std::string& name() const { return name_; }
  const std::string& database() const { return database_; }
  const std::string& user() const { return user_; }
  std::string server_address() const {
    return config::Endpoint{login_.host, login_.port}.to_string();
  }
  PoolSnapshot snapshot(bool with_servers);
  // RECONNECT: idle connections close now, leased ones when they come back.
  void reconnect();
  // PAUSE / KILL: closes every idle connection now.
  void close_idle() { close_expired(Clock::duration::zero(), Clock::duration::zero()); }
  // A connection on the caller's event loop, or an error for the client (53300 after `wait`).
  // While it waits, `*cancel` (when given) ends the wait early when called on the caller's loop.
  awaitable<std::variant<Lease, PgError>> acquire(PoolLimits limits,
                                                  std::function<void()>* cancel = nullptr);
  // The fast path of acquire(): an idle connection, usable on `ex`, if there is one now.
  std::optional<Lease> try_acquire(const PoolLimits& limits, const asio::any_io_executor& ex);
  // Called by Lease: a healthy connection is reset (pool.reset_query) and reused; a broken one
  // closed.
  void give_back(std::unique_ptr<ServerConn> conn, bool broken, bool run_reset);
  // Opens connections until `min` (at most the pool size) exist; one warm-up at a time.
  awaitable<void> warm(PoolLimits limits, std::uint32_t min);
  // Closes idle connections past the idle timeout or lifetime.
  void close_expired(Clock::duration idle_timeout, Clock::duration lifetime);
  // Closes the least recently used idle connection (for another pool of the database).
  bool evict_one_idle();
  // At exit, with the event loops stopped: closes idle connections now and makes every later
  // give_back close inline instead of posting to a loop that is going away.
  void close_for_exit();

 private:
  struct Waiter {
    Waiter(const asio::any_io_executor& ex, Clock::time_point deadline) : timer(ex, deadline) {}
    asio::steady_timer timer;
    Clock::time_point since = Clock::now();
    std::unique_ptr<ServerConn> conn;  // handed over by a release
    bool permit = false;               // or: a slot to open a new connection
    bool done = false;
  };
  void hand_over(std::unique_ptr<ServerConn> conn);  // under mu_
  // An idle connection fit for reuse on `ex` (fresh, open, nothing unread), or null.
  bool usable(ServerConn& conn, const PoolLimits& limits, const asio::any_io_executor& ex);
  void free_slot();  // under mu_
  awaitable<std::variant<Lease, PgError>> open();
  awaitable<void> reset_then_return(std::unique_ptr<ServerConn> conn, std::string reset_query);
  void discard(std::unique_ptr<ServerConn> conn);  // under mu_
  void drop(std::unique_ptr<ServerConn> conn);     // under mu_: discard and free its slot
  void set_state(const ServerConn& conn, ServerRow::State state);  // under mu_

  bool take_slot(std::uint32_t limit);  // under mu_: below `limit` and the database's cap
  // Under mu_: the most recently used idle connection, or null; records the current limits.
  std::unique_ptr<ServerConn> take_idle(const PoolLimits& limits);
  std::string name_;
  std::string database_;
  std::string user_;
  std::string mode_;
  ServerLogin login_;
  std::shared_ptr<DbLimit> db_;
  std::mutex mu_;
  std::uint32_t total_ = 0;
  std::vector<std::unique_ptr<ServerConn>> idle_;  // back = most recently used
  std::deque<std::shared_ptr<Waiter>> waiters_;
  std::string reset_query_ = "DISCARD ALL";
  Clock::duration lifetime_ = std::chrono::hours(1);
  bool exiting_ = false;
  bool warming_ = false;
  std::uint64_t epoch_ = 0;
  std::map<const ServerConn*, ServerRow> rows_;  // every open connection
};

// All pools, keyed by everything that decides where and as whom they log in.
class PoolRegistry {
 public:
  std::shared_ptr<Pool> get(const config::Config& cfg, const config::Database& db,
                            const config::User& user,
                            const std::shared_ptr<ssl::context>& server_tls,
                            const config::Backend* backend = nullptr);  // null: the primary
  std::vector<std::shared_ptr<Pool>> all();
  // Pools of one database (all when empty).
  std::vector<std::shared_ptr<Pool>> of_database(const std::string& db);
  // Snapshots by (database, user), pools of one pair merged.
  std::map<std::pair<std::string, std::string>, PoolSnapshot> by_user();
  void close_for_exit();

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Pool>> pools_;
  std::map<std::string, std::shared_ptr<DbLimit>> db_limits_;  // by database@server
};

}  // namespace sluice::server
