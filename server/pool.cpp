// Server connection pools: checkout, FIFO waiting with a deadline, reset on return, expiry.
#include "server/pool.hpp"

#include <spdlog/spdlog.h>

namespace sluice::server {

namespace {
// How often a client waiting under max_db_connections looks for room another pool made.
constexpr auto kDbPoll = std::chrono::milliseconds(100);
}  // namespace

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    give_back();
    pool_ = std::move(other.pool_);
    conn_ = std::move(other.conn_);
    broken_ = other.broken_;
    reset_ = other.reset_;
  }
  return *this;
}

void Lease::give_back() {
  if (pool_ && conn_) pool_->give_back(std::move(conn_), broken_, reset_);
  pool_.reset();
}

void Pool::drop(std::unique_ptr<ServerConn> conn) {
  discard(std::move(conn));
  free_slot();
}

std::string_view to_string(ServerRow::State s) {
  switch (s) {
    case ServerRow::State::kActive:
      return "active";
    case ServerRow::State::kIdle:
      return "idle";
    case ServerRow::State::kTested:
      return "tested";
  }
  return "?";
}

void Pool::set_state(const ServerConn& conn, ServerRow::State state) {
  auto it = rows_.find(&conn);
  if (it == rows_.end()) return;
  it->second.state = state;
  it->second.prepared = conn.state.statement_count();
  if (state == ServerRow::State::kActive)
    it->second.request_time = std::chrono::system_clock::now();
}

// Destroys a connection on its own event loop, where its socket is registered (inline at exit).
void Pool::discard(std::unique_ptr<ServerConn> conn) {
  if (!conn) return;
  rows_.erase(conn.get());
  if (exiting_) {
    conn->stream().close();
    return;
  }
  auto ex = conn->stream().socket().get_executor();
  std::shared_ptr<ServerConn> owned(std::move(conn));
  asio::post(ex, [owned] { owned->stream().close(); });
}

PoolLimits PoolLimits::from(const config::Config& cfg, const config::Database& db,
                            const config::User& user) {
  return {cfg.pool_size_for(db, user), cfg.pool.query_wait_timeout, cfg.pool.server_lifetime,
          cfg.pool.reset_query,        cfg.pool.reserve_pool_size,  cfg.pool.reserve_pool_timeout};
}

awaitable<std::variant<Lease, PgError>> Pool::acquire(PoolLimits limits,
                                                      std::function<void()>* cancel) {
  auto ex = co_await asio::this_coro::executor;
  std::shared_ptr<Waiter> waiter;
  std::unique_ptr<ServerConn> conn;
  const auto started = Clock::now();
  const auto deadline = started + limits.wait;
  const auto reserve_at = started + limits.reserve_timeout;
  const bool db_limited = db_->limited();
  {
    std::lock_guard lock(mu_);
    conn = take_idle(limits);
    if (!conn && !take_slot(limits.size)) {
      // With a reserve, wake after reserve_timeout to consider it; otherwise at the deadline.
      // Under max_db_connections, also look every 100 ms for room another pool made.
      auto first = limits.reserve_size > 0 ? std::min(reserve_at, deadline) : deadline;
      if (db_limited) first = std::min(first, started + kDbPoll);
      waiter = std::make_shared<Waiter>(ex, first);
      waiters_.push_back(waiter);
    }
  }
  if (waiter && db_limited) db_->evict_idle(this);  // make room now if another pool idles
  struct ClearCancel {                              // however the wait ends
    std::function<void()>* cancel;
    ~ClearCancel() {
      if (cancel) *cancel = nullptr;
    }
  } clear_cancel{cancel};
  if (waiter && cancel) {
    *cancel = [w = std::weak_ptr<Waiter>(waiter)] {
      if (auto alive = w.lock()) alive->timer.cancel();
    };
  }
  while (waiter) {
    auto [ec] = co_await waiter->timer.async_wait(use_nothrow);  // a hand-over cancels it
    std::lock_guard lock(mu_);
    if (waiter->done) {
      conn = std::move(waiter->conn);  // null with a permit: open a new one in the freed slot
      break;
    }
    if (ec == asio::error::operation_aborted || Clock::now() >= deadline) {
      std::erase(waiters_, waiter);  // the caller went away, or waited long enough
      co_return PgError{
          "53300",
          "no server connection for " + name_ + " became free within " +
              std::to_string(
                  std::chrono::duration_cast<std::chrono::seconds>(limits.wait).count()) +
              "s (pool size " + std::to_string(limits.size) + ")",
          {},
          db_limited ? "raise max_db_connections, pool.size or pool.query_wait_timeout, or shorten "
                       "the transactions that hold connections"
                     : "raise pool.size or pool.query_wait_timeout, or shorten the sessions that "
                       "hold connections"};
    }
    if (db_limited && take_slot(limits.size)) {  // another pool of the database made room
      std::erase(waiters_, waiter);
      break;
    }
    bool reserve_due = Clock::now() >= reserve_at;
    if (limits.reserve_size > 0 && reserve_due &&
        take_slot(limits.size + limits.reserve_size)) {  // waited reserve_timeout: the reserve
      std::erase(waiters_, waiter);
      spdlog::info(
          "pool {}: a client waited {} ms; opening a reserve connection ({} of {}+{})", name_,
          std::chrono::duration_cast<std::chrono::milliseconds>(limits.reserve_timeout).count(),
          total_, limits.size, limits.reserve_size);
      break;
    }
    auto next = deadline;  // no reserve left: keep waiting
    if (db_limited) next = std::min(next, Clock::now() + kDbPoll);
    if (limits.reserve_size > 0 && !reserve_due) next = std::min(next, reserve_at);
    waiter->timer.expires_at(next);
    if (db_limited) db_->evict_idle(this);
  }
  if (conn) {
    if (usable(*conn, limits, ex)) co_return Lease(shared_from_this(), std::move(conn));
    std::lock_guard lock(mu_);
    discard(std::move(conn));  // keep its slot for a new connection on this event loop
  }
  co_return co_await open();
}

bool Pool::usable(ServerConn& conn, const PoolLimits& limits, const asio::any_io_executor& ex) {
  bool fresh = Clock::now() - conn.created() < limits.lifetime;
  if (fresh && conn.stream().idle_and_open() && conn.stream().rebind(ex)) return true;
  spdlog::debug("pool {}: idle server connection unusable (fresh={}); replacing it", name_, fresh);
  return false;
}

std::optional<Lease> Pool::try_acquire(const PoolLimits& limits, const asio::any_io_executor& ex) {
  std::unique_ptr<ServerConn> conn;
  {
    std::lock_guard lock(mu_);
    if (!waiters_.empty()) return std::nullopt;  // FIFO: waiters go first
    conn = take_idle(limits);
  }
  if (!conn) return std::nullopt;
  if (usable(*conn, limits, ex)) return Lease(shared_from_this(), std::move(conn));
  std::lock_guard lock(mu_);
  drop(std::move(conn));  // its slot is free again; acquire() opens a new one
  return std::nullopt;
}

awaitable<void> Pool::warm(PoolLimits limits, std::uint32_t min) {
  auto self = shared_from_this();
  {
    std::lock_guard lock(mu_);
    if (warming_) co_return;
    warming_ = true;
  }
  struct Done {  // clears the flag however this coroutine ends (cancellation included)
    Pool* pool;
    ~Done() {
      std::lock_guard lock(pool->mu_);
      pool->warming_ = false;
    }
  } done{this};
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (exiting_ || !waiters_.empty() || !take_slot(std::min(min, limits.size))) break;
    }
    auto r = co_await open();                       // frees the slot itself on failure
    if (std::holds_alternative<PgError>(r)) break;  // logged by open(); retried next round
    auto conn = std::move(std::get<Lease>(r).conn_);
    std::lock_guard lock(mu_);
    hand_over(std::move(conn));
  }
}

awaitable<std::variant<Lease, PgError>> Pool::open() {
  auto self = shared_from_this();
  // Frees the slot if the login fails or this coroutine is cancelled mid-way.
  struct SlotGuard {
    Pool* pool;
    bool armed = true;
    ~SlotGuard() {
      if (!armed) return;
      std::lock_guard lock(pool->mu_);
      pool->free_slot();
    }
  } guard{this};
  auto r = co_await ServerConn::connect(login_);
  if (auto* e = std::get_if<PgError>(&r)) {
    spdlog::warn("pool {}: server login failed: {} ({})", name_, e->message, e->sqlstate);
    co_return std::move(*e);
  }
  guard.armed = false;
  auto& conn = std::get<0>(r);
  ServerRow row;
  row.addr = conn->host();
  row.port = conn->port();
  error_code ec;
  auto local = conn->stream().socket().local_endpoint(ec);
  if (!ec) {
    row.local_addr = local.address().to_string();
    row.local_port = local.port();
  }
  row.connect_time = row.request_time = std::chrono::system_clock::now();
  row.remote_pid = static_cast<std::int32_t>(conn->key().pid);
  row.tls = conn->stream().tls();
  {
    std::lock_guard lock(mu_);
    row.epoch = epoch_;
    rows_[conn.get()] = std::move(row);
  }
  co_return Lease(self, std::move(conn));
}

void Pool::free_slot() {
  if (!waiters_.empty()) {  // the slot passes straight to the first waiter
    auto w = std::move(waiters_.front());
    waiters_.pop_front();
    w->done = true;
    asio::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
    return;
  }
  --total_;
  db_->give();
}

std::unique_ptr<ServerConn> Pool::take_idle(const PoolLimits& limits) {
  reset_query_ = limits.reset_query;
  lifetime_ = limits.lifetime;
  if (idle_.empty()) return nullptr;
  auto conn = std::move(idle_.back());  // LIFO: the warmest connection
  idle_.pop_back();
  set_state(*conn, ServerRow::State::kActive);
  return conn;
}

bool Pool::take_slot(std::uint32_t limit) {
  if (total_ >= limit || !db_->try_take()) return false;
  ++total_;
  return true;
}

bool Pool::evict_one_idle() {
  std::lock_guard lock(mu_);
  if (idle_.empty()) return false;
  auto conn = std::move(idle_.front());  // the least recently used
  idle_.erase(idle_.begin());
  spdlog::debug("pool {}: closing an idle server connection for another pool (max_db_connections)",
                name_);
  drop(std::move(conn));
  return true;
}

bool DbLimit::evict_idle(const Pool* except) {
  std::vector<std::shared_ptr<Pool>> pools;
  {
    std::lock_guard lock(mu_);
    for (const auto& w : pools_) {
      if (auto p = w.lock(); p && p.get() != except) pools.push_back(std::move(p));
    }
  }
  for (auto& p : pools) {  // one pool lock at a time, never while holding ours
    if (p->evict_one_idle()) return true;
  }
  return false;
}

void Pool::hand_over(std::unique_ptr<ServerConn> conn) {
  conn->touch();
  if (!waiters_.empty()) {
    auto w = std::move(waiters_.front());
    waiters_.pop_front();
    set_state(*conn, ServerRow::State::kActive);
    w->conn = std::move(conn);
    w->done = true;
    asio::post(w->timer.get_executor(), [w] { w->timer.cancel(); });
    return;
  }
  set_state(*conn, ServerRow::State::kIdle);
  idle_.push_back(std::move(conn));
}

void Pool::give_back(std::unique_ptr<ServerConn> conn, bool broken, bool run_reset) {
  std::string reset;
  {
    std::lock_guard lock(mu_);
    bool expired = Clock::now() - conn->created() >= lifetime_;
    auto row = rows_.find(conn.get());
    bool stale = row != rows_.end() && row->second.epoch != epoch_;
    if (broken || expired || exiting_ || stale) {
      spdlog::debug("pool {}: closing server connection ({})", name_,
                    broken    ? "broken"
                    : expired ? "lifetime"
                    : stale   ? "reconnect"
                              : "exiting");
      drop(std::move(conn));
      return;
    }
    if (!run_reset || reset_query_.empty()) {
      hand_over(std::move(conn));
      return;
    }
    reset = reset_query_;
    set_state(*conn, ServerRow::State::kTested);
  }
  auto ex = conn->stream().socket().get_executor();
  asio::co_spawn(ex, reset_then_return(std::move(conn), std::move(reset)),
                 log_exceptions("pool " + name_ + " reset"));
}

awaitable<void> Pool::reset_then_return(std::unique_ptr<ServerConn> conn, std::string reset_query) {
  auto self = shared_from_this();
  auto r = co_await with_timeout(conn->run(reset_query), std::chrono::seconds(10));
  bool ok = r && std::holds_alternative<std::monostate>(*r);
  std::lock_guard lock(mu_);
  if (ok) {
    hand_over(std::move(conn));
  } else {
    spdlog::warn("pool {}: reset query '{}' failed; closing that server connection", name_,
                 reset_query);
    drop(std::move(conn));
  }
}

void Pool::close_expired(Clock::duration idle_timeout, Clock::duration lifetime) {
  std::lock_guard lock(mu_);
  auto now = Clock::now();
  auto expired = [&](const std::unique_ptr<ServerConn>& c) {
    return now - c->last_used() >= idle_timeout || now - c->created() >= lifetime;
  };
  for (auto it = idle_.begin(); it != idle_.end();) {
    if (expired(*it)) {
      auto conn = std::move(*it);
      it = idle_.erase(it);
      drop(std::move(conn));
    } else {
      ++it;
    }
  }
}

void Pool::close_for_exit() {
  {
    std::lock_guard lock(mu_);
    exiting_ = true;
  }
  close_expired(Clock::duration::zero(), Clock::duration::zero());  // every idle connection
}

PoolSnapshot Pool::snapshot(bool with_servers) {
  std::lock_guard lock(mu_);
  PoolSnapshot s;
  s.database = database_;
  s.user = user_;
  s.mode = mode_;
  for (const auto& [conn, row] : rows_) {
    s.prepared += row.prepared;
    switch (row.state) {
      case ServerRow::State::kActive:
        ++s.active;
        break;
      case ServerRow::State::kIdle:
        ++s.idle;
        break;
      case ServerRow::State::kTested:
        ++s.tested;
        break;
    }
    if (with_servers) s.servers.push_back(row);
  }
  auto open = static_cast<std::uint32_t>(rows_.size());
  s.login = total_ > open ? total_ - open : 0;
  s.waiting = static_cast<std::uint32_t>(waiters_.size());
  if (!waiters_.empty()) s.max_wait = Clock::now() - waiters_.front()->since;
  return s;
}

void PoolSnapshot::merge(const PoolSnapshot& other) {
  mode = other.mode;
  active += other.active;
  idle += other.idle;
  tested += other.tested;
  login += other.login;
  waiting += other.waiting;
  prepared += other.prepared;
  max_wait = std::max(max_wait, other.max_wait);
  servers.insert(servers.end(), other.servers.begin(), other.servers.end());
}

std::map<std::pair<std::string, std::string>, PoolSnapshot> PoolRegistry::by_user() {
  std::map<std::pair<std::string, std::string>, PoolSnapshot> out;
  for (const auto& p : all()) {
    auto s = p->snapshot(false);
    auto [it, fresh] = out.try_emplace({s.database, s.user}, s);
    if (!fresh) it->second.merge(s);
  }
  return out;
}

void Pool::reconnect() {
  {
    std::lock_guard lock(mu_);
    ++epoch_;
  }
  close_idle();
}

std::vector<std::shared_ptr<Pool>> PoolRegistry::of_database(const std::string& db) {
  std::vector<std::shared_ptr<Pool>> out;
  for (auto& p : all()) {
    if (db.empty() || p->database() == db) out.push_back(std::move(p));
  }
  return out;
}

void PoolRegistry::close_for_exit() {
  for (auto& pool : all()) pool->close_for_exit();
}

std::shared_ptr<Pool> PoolRegistry::get(const config::Config& cfg, const config::Database& db,
                                        const config::User& user,
                                        const std::shared_ptr<ssl::context>& server_tls,
                                        const config::Backend* backend) {
  const auto& server = backend ? *backend : db.primary;
  ServerLogin login;
  login.host = server.host;
  login.port = server.port;
  login.dbname = server.dbname;
  login.user = user.server_user;
  login.password = user.server_password;
  login.md5_hash = user.server_user == user.name ? user.md5_hash : std::string();
  login.tls = cfg.tls.server_tls;
  login.tls_context = server_tls;
  login.timeout = cfg.pool.server_connect_timeout;
  // Everything that decides where and as whom the pool logs in is part of its identity, so a
  // reload that changes any of it starts a new pool instead of reusing stale logins.
  std::string key = db.name + "/" + user.name + "\n" +
                    std::string(to_string(cfg.pool_mode_for(db, user))) + "\n" + login.host + ":" +
                    std::to_string(login.port) + "/" + login.dbname + "\n" + login.user + "\n" +
                    std::to_string(std::hash<std::string>{}(login.password + login.md5_hash)) +
                    "\n" + std::to_string(static_cast<int>(login.tls)) + "\n" +
                    std::to_string(reinterpret_cast<std::uintptr_t>(server_tls.get()));
  std::lock_guard lock(mu_);
  // max_db_connections counts the connections to one server of the database.
  auto& limit = db_limits_[db.name + "@" + login.host + ":" + std::to_string(login.port)];
  if (!limit) limit = std::make_shared<DbLimit>();
  limit->set_max(cfg.max_db_connections_for(db));
  auto& pool = pools_[key];
  if (!pool) {
    pool = std::make_shared<Pool>(db.name, user.name,
                                  std::string(to_string(cfg.pool_mode_for(db, user))),
                                  std::move(login), limit);
    limit->add_pool(pool);
  }
  return pool;
}

std::vector<std::shared_ptr<Pool>> PoolRegistry::all() {
  std::lock_guard lock(mu_);
  std::vector<std::shared_ptr<Pool>> out;
  for (auto& [k, p] : pools_) out.push_back(p);
  return out;
}

}  // namespace sluice::server
