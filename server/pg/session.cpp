// A client session's lifecycle: start, serve, park between requests, finish, kill.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

// Login, then the admin console or the first attach: nullopt when the relay is to start, else
// why the session ended.
awaitable<std::optional<std::string>> ClientSession::start() {
  auto ex = co_await asio::this_coro::executor;
  kill_timer_.emplace(ex, Clock::time_point::max());
  handle_ = std::make_shared<SessionHandle>(ex);
  handle_->kill = [this] { kill(); };
  fill_info();
  rt_->add_session(handle_);

  std::string reason = "client disconnected during login";
  auto login =
      co_await (startup_and_auth() || sleep_for(cfg_->pool.client_login_timeout) || wait_killed());
  bool logged_in = login.index() == 0 && std::get<0>(login);
  if (login.index() == 1) {
    queue_error({"08P01", "timeout during startup and authentication", {}, {}});
    co_await flush();
  } else if (logged_in && admin_ && !killed_) {
    fill_info();
    enter(Phase::kRelaying);
    spdlog::info("client {} user={}: on the admin console", peer_, user_name_);
    AdminClient who;  // named: no braced temporary inside a co_await (g++ 12)
    who.user = user_name_;
    who.full = cfg_->is_admin(user_name_);
    auto r = co_await (run_admin_console(*client_, reader_, rt_, std::move(who)) || wait_killed());
    reason = r.index() == 0 ? std::get<0>(r) : std::string("shutdown");
    logged_in = false;  // logged as an admin session
    spdlog::info("client {} user={}: left the admin console ({})", peer_, user_name_, reason);
  } else if (logged_in && !killed_) {
    bool attached = co_await attach_server();
    logged_in = attached;
  }
  if (logged_in && !killed_) {
    logged_in_ = true;
    spdlog::info("client {} user={} db={}{}: logged in", peer_, user_name_, db_name_,
                 client_->tls() ? " tls" : "");
    co_return std::nullopt;
  }
  co_await finish(std::move(reason));
  co_return std::string();
}

// Relays until the session ends, or parks it: an idle client then holds no coroutine frame,
// only this object and a wait for its socket to become readable, which runs serve() again.
awaitable<void> ClientSession::serve(std::shared_ptr<ClientSession> self) {
  auto reason = co_await self->relay();
  if (reason.is(Next::kParked)) {
    park(std::move(self));
    co_return;
  }
  if (self->close_error_ && !self->to_client_.mid_message()) {
    self->queue_error(*self->close_error_);
    co_await self->flush();
  }
  if (self->cancel_server_ && self->server_) {
    CancelTarget target{self->server_->host(), self->server_->port(), self->server_->key()};
    co_await send_cancel(std::move(target));  // no braced temporary in a co_await (g++ 12)
  }
  co_await self->finish(reason.why);
}

void ClientSession::park(std::shared_ptr<ClientSession> self) {
  self->enter(Phase::kParked);
  auto parked = std::make_unique<ParkedClient>(self->leave());
  self.reset();  // the session's memory goes back now
  wait_parked(std::move(parked));
}

void ClientSession::wait_parked(std::unique_ptr<ParkedClient> parked) {
  auto* p = parked.get();
  ++p->rt->parked;
  p->handle->kill = [p] {
    if (p->handle->park_only.exchange(false)) return;  // parked already
    p->killed = true;
    error_code ec;
    p->socket.cancel(ec);
  };
  auto wake = [parked = std::move(parked)](error_code) mutable {
    // A failed wait shows again at the read (or killed says why): serve() tells the client.
    --parked->rt->parked;
    auto ex = parked->socket.get_executor();
    auto self = std::make_shared<ClientSession>(std::move(*parked));
    parked.reset();
    self->enter(Phase::kIdle);
    asio::co_spawn(ex, serve(std::move(self)), log_exceptions("client session"));
  };
  p->socket.async_wait(tcp::socket::wait_read,
                       asio::bind_allocator(ExactAllocator<void>(), std::move(wake)));
}

// What survives a park; the session is left empty (its destructor then does nothing).
ParkedClient ClientSession::leave() {
  ParkedClient p(std::move(client_->socket()));
  client_.reset();
  p.rt = std::move(rt_);
  p.login = std::move(login_);
  p.handle = std::move(handle_);
  if (!ps_->fresh()) p.ps = std::make_unique<routing::PooledSession>(std::move(*ps_));
  if (!tracker_.fresh()) p.tracker = std::make_unique<routing::RequestTracker>(std::move(tracker_));
  p.key = std::exchange(key_, pg::BackendKeyData{0, 0});
  p.last_write_lsn = last_write_lsn_;
  p.last_write_at = last_write_at_;
  p.lexer_suspect = lexer_suspect_;
  p.killed = killed_;
  return p;
}

ClientSession::ClientSession(ParkedClient&& p)
    : rt_(std::move(p.rt)),
      cfg_(p.login->cfg),
      client_(std::make_unique<Stream>(std::move(p.socket))),
      reader_(0),  // wait_for_client() sizes it
      tracker_(&rt_->obs.insights),
      to_server_(cfg_->max_message_size),
      to_client_(pg::kMaxMessageLength) {
  const auto& pool = cfg_->pool;
  watchdog_on_ = pool.query_timeout.count() > 0 || pool.idle_transaction_timeout.count() > 0 ||
                 pool.client_idle_timeout.count() > 0;
  handle_ = std::move(p.handle);
  handle_->kill = [this] { kill(); };
  {
    std::lock_guard lock(handle_->mu());  // SHOW CLIENTS' copy: not kept while parked
    peer_ = handle_->info.addr + ':' + std::to_string(handle_->info.port);
  }
  kill_timer_.emplace(client_->socket().get_executor(), Clock::time_point::max());
  key_ = p.key;
  login_ = std::move(p.login);
  adopt(*login_);
  if (p.ps)
    ps_.emplace(std::move(*p.ps));
  else
    ps_.emplace(rt_->analyses, login_->startup, pooled_options());
  if (p.tracker) tracker_ = std::move(*p.tracker);
  last_write_lsn_ = p.last_write_lsn;
  last_write_at_ = p.last_write_at;
  lexer_suspect_ = p.lexer_suspect;
  killed_ = p.killed;
  phase_ = Phase::kParked;
  logged_in_ = true;
  woke_ = true;
}

// A client that never woke: the end a session has, without its goodbye (a shutdown).
ParkedClient::~ParkedClient() {
  if (!rt) return;  // woken: the session took everything
  --rt->parked;
  handle->kill = nullptr;
  rt->remove_session(handle);
  --rt->clients;
  if (key.pid != 0) rt->cancels.remove(key);
  error_code ec;
  socket.shutdown(tcp::socket::shutdown_both, ec);
  socket.close(ec);
}

// The end of a session: what a shutdown or KILL tells the client, and the log line.
awaitable<void> ClientSession::finish(std::string reason) {
  enter(Phase::kClosing);
  if (killed_) {
    reason = handle_->admin_kill ? "KILL" : "shutdown";
    if (!to_client_.mid_message()) {
      if (handle_->admin_kill) {
        queue_error({"57P01",
                     "terminating connection due to administrator command (KILL " + db_name_ + ")",
                     {},
                     "the database is paused until an operator runs RESUME on the admin console"});
      } else {
        queue_error({"57P01", "terminating connection because sluice is shutting down", {}, {}});
      }
      co_await flush();
    }
  }
  if (logged_in_)
    spdlog::info("client {} user={} db={}: closed ({})", peer_, user_name_, db_name_, reason);
}

// The one exit path: runs however run() ends, an exception included.
ClientSession::~ClientSession() {
  if (!client_) return;  // parked: a ParkedClient carries the client on
  if (handle_) {
    handle_->kill = nullptr;
    rt_->remove_session(handle_);
  }
  --rt_->clients;
  if (key_.pid != 0) rt_->cancels.remove(key_);
  end_pick();
  end_fill();
  // A pinned server holds LISTENs, locks or temp tables of this client: it is closed, not reused.
  if (server_ && (server_failed_ || pinned_ || !server_reusable())) server_.mark_broken();
  server_.give_back();
  client_->close();
}

void ClientSession::enter(Phase next) {
  if (next == phase_) return;
  if (!may_enter(phase_, next)) {
    spdlog::error(
        "client {}: session state {} -> {} is not a known transition (a bug: please "
        "report it)",
        peer_, to_string(phase_), to_string(next));
    assert(false && "session state transition");
  }
  phase_ = next;
  handle_->state = shown_as(next);
}

void ClientSession::nudge_idle(Runtime& rt) {
  for (auto& h : rt.sessions()) {
    if (!h->parks || !h->idle) continue;
    h->park_only = true;
    asio::post(h->ex, [h] {
      if (h->kill) h->kill();
    });
  }
}

void ClientSession::kill() {
  if (handle_->park_only.exchange(false)) {  // nudge_idle(): not a kill
    if (parked_ && parkable()) {
      park_now_ = true;
      error_code ec;
      client_->socket().cancel(ec);
    }
    return;
  }
  killed_ = true;
  kill_timer_->cancel();
  // Without a wait_killed() coroutine, the pending reads are cancelled and the loops see
  // killed_ before their next read. A write in flight finishes (cancelling it could leave half a
  // message on the socket).
  if (cancel_wait_) cancel_wait_();  // waiting for a server connection
  error_code ec;
  if (parked_ || (attached_light_ && !client_writing_)) client_->socket().cancel(ec);
  if (attached_light_ && server_ && !server_writing_) server_->stream().socket().cancel(ec);
}

awaitable<void> ClientSession::wait_killed() {
  if (!killed_) co_await kill_timer_->async_wait(use_nothrow);
}

awaitable<bool> ClientSession::send(pg::Buffer b) {
  auto ec = co_await client_->write_all(asio::buffer(b));
  co_return !ec;
}

void ClientSession::queue_error(const PgError& e) {
  rt_->obs.count_error(e.sqlstate);
  pg::encode_error_response(outbox_, {"FATAL", e.sqlstate, e.message, e.detail, e.hint});
}

// What SHOW CLIENTS shows of this client; called as login reveals more.
void ClientSession::fill_info() {
  std::shared_ptr<const ClientNames> names = login_ ? login_->names : nullptr;
  if (!names) {  // during login
    ClientNames own{user_name_, db_name_, {}};
    for (const auto& [k, v] : startup_params_) {
      if (k == "application_name") own.application_name = v;
    }
    names = std::make_shared<const ClientNames>(std::move(own));
  }
  std::lock_guard lock(handle_->mu());
  auto& i = handle_->info;
  error_code ec;
  if (i.addr.empty()) {
    auto remote = client_->socket().remote_endpoint(ec);
    if (!ec) {
      i.addr = remote.address().to_string();
      i.port = remote.port();
    }
    auto local = client_->socket().local_endpoint(ec);
    if (!ec) {
      i.local_addr = local.address().to_string();
      i.local_port = local.port();
    }
  }
  i.names = std::move(names);
  i.tls = client_->tls();
  i.admin = admin_;
}

awaitable<bool> ClientSession::flush() {
  if (outbox_.empty()) co_return true;
  pg::Buffer out = std::move(outbox_);
  outbox_.clear();
  bool ok = co_await send(std::move(out));
  co_return ok;
}

// Holds the request in 10 ms steps while `keep()` says so (kill() ends the wait through
// cancel_wait_), counting the wait; false once `limit` has passed since `since`.
awaitable<bool> ClientSession::hold(const std::function<bool()>& keep, Clock::time_point since,
                                    Clock::duration limit) {
  auto ex = co_await asio::this_coro::executor;
  const auto from = Clock::now();
  handle_->wait_since = from.time_since_epoch().count();
  enter(Phase::kWaiting);
  asio::steady_timer timer(ex);
  cancel_wait_ = [&timer] { timer.cancel(); };
  bool in_time = true;
  while (!killed_ && keep()) {
    if (Clock::now() - since >= limit) {
      in_time = false;
      break;
    }
    timer.expires_after(std::chrono::milliseconds(10));
    co_await timer.async_wait(use_nothrow);
  }
  cancel_wait_ = nullptr;
  counters_->wait_us->inc(static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - from).count()));
  co_return in_time;
}

// PAUSE / KILL: holds the client until RESUME, at most pool.query_wait_timeout (then 53300).
awaitable<std::optional<PgError>> ClientSession::wait_while_paused() {
  if (!rt_->control.paused(db_name_)) co_return std::nullopt;
  const std::function<bool()> paused = [this] { return rt_->control.paused(db_name_); };
  const bool in_time = co_await hold(paused, Clock::now(), cfg_->pool.query_wait_timeout);
  if (in_time) co_return std::nullopt;
  co_return PgError{"53300",
                    "database \"" + db_name_ + "\" stayed paused longer than " +
                        std::to_string(std::chrono::duration_cast<std::chrono::seconds>(
                                           cfg_->pool.query_wait_timeout)
                                           .count()) +
                        "s",
                    {},
                    "an operator ran PAUSE on the admin console; RESUME releases waiting "
                    "clients (pool.query_wait_timeout bounds the wait)"};
}

// After a reload: the next transaction uses the new pool size, limits and backend, as long as
// the client's database and user still exist (otherwise it keeps the old ones until it leaves).
void ClientSession::refresh_config() {
  generation_ = rt_->generation.load();
  auto login = bind_login(*rt_, user_name_, db_name_, login_->startup, login_->trusted);
  if (!login) return;
  login_ = std::move(login);
  adopt(*login_);
  fill_info();
}

void ClientSession::adopt(const Login& login) {
  cfg_ = login.cfg;
  generation_ = login.generation;
  user_name_ = login.user_name;
  db_name_ = login.db_name;
  user_ = login.user;
  db_ = login.db;
  pool_ = login.pool;
  limits_ = login.limits;
  counters_ = login.counters;
  statement_mode_ = login.mode == config::PoolMode::kStatement;
  set_replicas(login.replicas);
  tracker_.set_identity(login.sample_identity);
}

}  // namespace sluice::server::pgsession

namespace sluice::server {

awaitable<void> run_client_session(tcp::socket socket, std::shared_ptr<Runtime> rt) {
  error_code ec;
  socket.set_option(tcp::no_delay(true), ec);
  auto session = std::make_shared<pgsession::ClientSession>(std::move(socket), std::move(rt));
  auto ended = co_await session->start();
  if (!ended) co_await pgsession::ClientSession::serve(std::move(session));
}

}  // namespace sluice::server
