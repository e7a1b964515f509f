// Server connections for a pooled client: checkout, release, the idle wait, local answers.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

// Gets a server connection from the pool of the node routing chose (the primary unless the
// request only reads and a replica may serve it) and gives it this client's settings.
awaitable<bool> ClientSession::checkout() {
  if (rt_->control.any_paused()) {
    auto refused = co_await wait_while_paused();
    if (killed_) co_return false;
    if (refused) {
      queue_error(std::move(*refused));
      co_await flush();
      co_return false;
    }
  }
  if (rt_->generation.load(std::memory_order_relaxed) != generation_) refresh_config();
  std::optional<Clock::time_point> held_since;  // a learned primary is awaited since then
  std::optional<std::uint64_t> after_round;     // ... and the monitor's verdict on the last one
  // A replica that fails here is banned and the read goes to the next choice.
  for (std::size_t attempt = 0;; ++attempt) {
    wait_lsn_ = 0;  // choose_node() sets it for a replica to ask
    const int node = attempt <= (replicas_ ? replicas_->size() : 0) ? choose_node()
                                                                    : routing::ReplicaSet::kPrimary;
    if (node == kRefused) {
      auto refused = co_await refuse_read();
      co_return refused;
    }
    if (node == routing::ReplicaSet::kPrimary && db_->auto_roles() &&
        (!db_->primary_known || after_round)) {
      if (!held_since) held_since = Clock::now();
      auto held = co_await wait_for_primary(after_round, *held_since);
      after_round.reset();
      if (killed_) co_return false;
      if (held) {
        const PgError e = std::move(*held);  // named: no temporary inside a co_await (g++ 12)
        auto refused = co_await refuse(e);
        co_return refused;
      }
      continue;  // bound again to the primary now elected
    }
    node_ = node;
    // The common case takes no coroutine: an idle connection that needs no settings.
    if (!try_acquire(node)) {
      auto got = co_await acquire(node);
      if (got == Attach::kPrimaryLost) {
        after_round = rt_->failover.rounds(db_name_);
        rt_->obs.monitor.wake();
        continue;
      }
      if (got == Attach::kNextNode) continue;
      if (got == Attach::kFailed) co_return false;
    }
    auto sync = settings_for_server();
    if (!sync.empty() || rt_->cancels.any_in_flight()) {
      auto synced = co_await prepare_server(node, std::move(sync));
      if (synced == Attach::kNextNode) continue;
      if (synced == Attach::kFailed) co_return false;
    }
    if (wait_lsn_ != 0 && node >= 0) {
      auto reached = co_await await_replay();
      if (reached == Attach::kNextNode) continue;  // the primary takes it
      if (reached == Attach::kFailed) co_return false;
    }
    break;
  }
  enter(Phase::kRelaying);
  on_attached();
  co_return true;
}

// Every replica banned, and reads may not go to the primary: pooled clients get the error for
// this request alone (relay() answers it); a session-mode client's session ends. False.
awaitable<bool> ClientSession::refuse_read() {
  PgError e{"57P03",
            "no replica of database \"" + db_name_ + "\" can serve reads now",
            {},
            "every replica is banned (SHOW REPLICAS on the admin console says why); "
            "routing.primary_reads / routing.all_replicas_banned decide whether the "
            "primary takes reads then"};
  auto refused = co_await refuse(e);
  co_return refused;
}

awaitable<std::optional<PgError>> ClientSession::wait_for_primary(
    std::optional<std::uint64_t> after_round, Clock::time_point since) {
  const std::function<bool()> no_primary = [this, after_round] {
    if (rt_->generation.load(std::memory_order_relaxed) != generation_) refresh_config();
    const bool checked = !after_round || rt_->failover.rounds(db_name_) > *after_round;
    return !checked || (db_->auto_roles() && !db_->primary_known);
  };
  const bool in_time = co_await hold(no_primary, since, cfg_->failover_timeout);
  if (in_time) co_return std::nullopt;
  const auto s = std::chrono::duration_cast<std::chrono::seconds>(cfg_->failover_timeout);
  co_return PgError{"57P03",
                    "no primary for database \"" + db_name_ + "\" after " +
                        std::to_string(s.count()) + "s (failover_timeout)",
                    {},
                    "no server listed under databases." + db_name_ +
                        ".hosts is a writable primary: a failover is under way, or every server "
                        "is down, in recovery or fenced; SHOW HOSTS on the admin console shows "
                        "each one's role and last error"};
}

awaitable<bool> ClientSession::refuse(const PgError& e) {
  if (ps_) {
    refused_ = std::make_unique<PgError>(e);
    co_return false;
  }
  queue_error(e);
  co_await flush();
  co_return false;
}

// A replica that failed a checkout: banned, and the read goes elsewhere.
void ClientSession::fail_replica(int node, const std::string& why) {
  spdlog::warn("client {} user={} db={}: replica {} failed ({}): banned, read goes elsewhere",
               peer_, user_name_, db_name_, replicas_->address(node), why);
  ban_replica(why);
  end_pick();
}

// An idle server connection of `node`'s pool, if there is one.
bool ClientSession::try_acquire(int node) {
  auto pool = node < 0 ? pool_ : replica_pool(node);
  auto idle = pool->try_acquire(*limits_, client_->socket().get_executor());
  if (!idle) return false;
  server_ = std::move(*idle);
  return true;
}

// Waits for a server connection of `node`'s pool (kill() ends the wait through cancel_wait_,
// without a wait_killed() coroutine per checkout).
awaitable<ClientSession::Attach> ClientSession::acquire(int node) {
  auto pool = node < 0 ? pool_ : replica_pool(node);
  const auto wait_from = Clock::now();
  handle_->wait_since = wait_from.time_since_epoch().count();
  enter(Phase::kWaiting);
  auto got = co_await pool->acquire(*limits_, &cancel_wait_);
  counters_->waits->inc();
  counters_->wait_us->inc(static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - wait_from).count()));
  if (auto* lease = std::get_if<Lease>(&got); lease && ps_) lease->skip_reset();
  if (killed_) co_return Attach::kFailed;  // a connection goes straight back, untouched
  if (auto* e = std::get_if<PgError>(&got)) {
    if (node >= 0 && e->sqlstate != "53300") {
      fail_replica(node, e->message);
      co_return Attach::kNextNode;
    }
    if (node < 0 && db_->auto_roles() && e->sqlstate != "53300") {
      spdlog::warn(
          "client {} user={} db={}: primary {} failed ({}): the request waits for the health "
          "check to confirm it or elect another (failover_timeout)",
          peer_, user_name_, db_name_, pool->server_address(), e->message);
      co_return Attach::kPrimaryLost;
    }
    spdlog::warn("client {} user={} db={}: no server connection: {}", peer_, user_name_, db_name_,
                 e->message);
    queue_error(std::move(*e));
    co_await flush();
    co_return Attach::kFailed;
  }
  server_ = std::move(std::get<Lease>(got));
  co_return Attach::kOk;
}

// What the attached server must run to have the client's settings (none when it has them).
std::vector<routing::ParamQuery> ClientSession::settings_for_server() {
  auto& state = server_->state;
  if (ps_) {
    server_.skip_reset();  // the pooled session's state is tracked instead
    state.set_max_statements(cfg_->pool.max_prepared_statements);
  }
  // Session mode: the reset query left the server at its defaults.
  return routing::settings_sync(ps_ ? ps_->settings() : login_->startup,
                                ps_ ? state.settings : routing::Settings{});
}

// The attached server before it runs anything of the client's: a cancel on its way to it has
// landed, and it runs `sync` (the client's settings).
awaitable<ClientSession::Attach> ClientSession::prepare_server(
    int node, std::vector<routing::ParamQuery> sync) {
  // A cancel still on its way to this backend (any client's) lands before it runs anything.
  if (rt_->cancels.any_in_flight()) {
    CancelTarget settling{server_->host(), server_->port(), server_->key()};
    co_await rt_->cancels.wait_settled(std::move(settling), &killed_);
  }
  if (sync.empty()) co_return Attach::kOk;
  auto synced = co_await server_->run(std::move(sync));
  auto* e = std::get_if<PgError>(&synced);
  if (!e) co_return Attach::kOk;
  server_.mark_broken();  // some settings may have been applied
  if (node >= 0 && e->sqlstate.starts_with("08")) {
    server_.give_back();
    fail_replica(node, e->message);
    co_return Attach::kNextNode;
  }
  queue_error(std::move(*e));
  co_await flush();
  co_return Attach::kFailed;
}

// A replica chosen while its last known position was short of what the read must see: asks it
// how far it replayed, again every millisecond, for up to routing.max_consistency_wait. kOk to
// read there; kNextNode when it did not get there (the connection goes back, the primary takes
// the read); kFailed when the client went away meanwhile.
awaitable<ClientSession::Attach> ClientSession::await_replay() {
  const auto need = std::exchange(wait_lsn_, 0);
  const auto started = Clock::now();
  const auto deadline = started + cfg_->routing.max_consistency_wait;
  std::optional<asio::steady_timer> timer;
  auto& k = *counters_;
  auto waited = [&] {
    k.consistency_wait_us->inc(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - started).count()));
  };
  for (int asked = 0;; ++asked) {
    auto r = co_await server_->query("SELECT pg_catalog.pg_last_wal_replay_lsn()");
    auto* rows = std::get_if<routing::Rows>(&r);
    if (!rows) {  // the replica failed: banned, and the read goes elsewhere
      server_.mark_broken();
      server_.give_back();
      fail_replica(node_, "asking its replay position failed");
      co_return Attach::kNextNode;
    }
    std::optional<routing::Lsn> lsn;
    if (rows->size() == 1 && !(*rows)[0].empty() && (*rows)[0][0])
      lsn = routing::parse_lsn(*(*rows)[0][0]);
    if (lsn) replicas_->replayed(node_, *lsn);
    if (lsn && *lsn >= need) {
      waited();
      k.consistent[asked == 0 ? PoolCounters::kReplica : PoolCounters::kWaited]->inc();
      co_return Attach::kOk;
    }
    const auto now = Clock::now();
    if (killed_) {
      server_.give_back();
      end_pick();
      co_return Attach::kFailed;
    }
    if (now >= deadline) break;
    if (!timer) timer.emplace(co_await asio::this_coro::executor);
    timer->expires_after(std::min<Clock::duration>(std::chrono::milliseconds(1), deadline - now));
    co_await timer->async_wait(use_nothrow);
  }
  waited();
  k.consistent[PoolCounters::kPrimaryBehind]->inc();
  server_.give_back();
  end_pick();
  behind_ = true;
  co_return Attach::kNextNode;
}

// Bookkeeping once a server is attached: the pooled session's view of it, the fill's role, the
// lexer settings, what a retried read needs, where cancels go.
void ClientSession::on_attached() {
  if (ps_) ps_->attached(server_->state);
  // A miss is keyed by the role its lookup saw. A reload since then may have changed
  // users[].server_user: what this server answers as another role is not stored under that key.
  if (cached_ && cached_->filling && cached_->fill.role != server_->user()) {
    if (cached_->fill.plan && cached_->fill.plan->counters)
      cached_->fill.plan->counters->skipped_fills++;
    end_fill();
  }
  // The client's startup options and the server's defaults, as this server has them now.
  for (const auto& [name, value] : server_->params()) note_lexer(name, value);
  primary_read_ = node_ < 0 && routed_ && db_->auto_roles() && route_.replica && !route_.write;
  if (node_ >= 0 || primary_read_) {  // a read: what it needs to run again if its server breaks
    routed_->ps_saved.emplace(*ps_);
    routed_->tracker_saved.emplace(tracker_);
    routed_->replay.clear();
    replayable_ = !retried_;
    replied_ = false;
  }
  if (key_.pid != 0)
    rt_->cancels.set_target(key_, CancelTarget{server_->host(), server_->port(), server_->key()});
}

// Transaction pooling, between transactions: reads back the settings the client changed, then
// returns the server connection to the pool.
awaitable<void> ClientSession::release() {
  enter(Phase::kDraining);
  auto& state = server_->state;
  if (!ps_->touched().empty()) {
    auto r = co_await server_->query(routing::settings_capture(ps_->capture_names()));
    if (auto* rows = std::get_if<routing::Rows>(&r)) {
      ps_->apply_capture(*rows, state);
    } else {
      server_failed_ = true;
    }
  }
  if (!server_failed_ && !ps_->uncertain().empty()) {
    auto r = co_await server_->query(
        "SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql");
    if (auto* rows = std::get_if<routing::Rows>(&r)) {
      std::set<std::string> present;
      for (const auto& row : *rows) {
        if (!row.empty() && row[0]) present.insert(*row[0]);
      }
      ps_->apply_present(present, state);
    } else {
      server_failed_ = true;
    }
  }
  end_fill();  // a reply not seen whole is not stored
  if (wrote_ && replicas_ && !server_failed_ && node_ < 0) {
    // Read-your-writes: the client's reads wait for replicas that replayed this far.
    if (cfg_->routing.read_your_writes == config::Routing::ReadYourWrites::kLsn &&
        !write_lsn_known_) {
      co_await fetch_write_lsn();
    }
    last_write_at_ = Clock::now();
  }
  if (catalog_changed_ && replicas_) {  // committed now: fetch the catalog again
    replicas_->catalog_changed();
    rt_->obs.monitor.wake();
  }
  if (key_.pid != 0) rt_->cancels.set_target(key_, std::nullopt);
  if (server_failed_) server_.mark_broken();
  server_failed_ = false;
  release_wanted_ = false;
  server_.give_back();
  end_pick();
  node_ = routing::ReplicaSet::kPrimary;
  wrote_ = catalog_changed_ = reroute_ = reroute_allowed_ = server_gone_ = false;
  write_lsn_known_ = false;
  retried_ = replayable_ = primary_read_ = false;
  if (routed_) {
    routed_->replay.clear();
    routed_->ps_saved.reset();
    routed_->tracker_saved.reset();
  }
  enter(Phase::kIdle);
}

// The primary's WAL insert position now (after this client's commit): raises last_write_lsn_.
// nullopt when the server did not say (a failed query also marks the connection broken).
awaitable<std::optional<routing::Lsn>> ClientSession::fetch_write_lsn() {
  auto r = co_await server_->query("SELECT pg_catalog.pg_current_wal_insert_lsn()");
  auto* rows = std::get_if<routing::Rows>(&r);
  if (!rows) {
    server_failed_ = true;
    co_return std::nullopt;
  }
  if (rows->size() != 1 || (*rows)[0].empty() || !(*rows)[0][0]) co_return std::nullopt;
  auto lsn = routing::parse_lsn(*(*rows)[0][0]);
  if (!lsn) co_return std::nullopt;
  last_write_lsn_ = std::max(last_write_lsn_, *lsn);
  write_lsn_known_ = true;
  co_return lsn;
}

void ClientSession::trim_idle() {
  reader_.release();
  to_server_buf_ = pg::Buffer();
  if (ps_) ps_->trim();
  tracker_.trim();
}

// Waits, without a server connection, until the client sends something. Among many clients
// (parkable()), a plain-TCP client holds no read buffer while it waits: thousands of idle clients
// cost little memory. Among few, it keeps its buffers and reads at once: waiting for readability
// first costs an epoll_ctl per request (asio re-arms the socket for every async_wait) and the
// buffers' free and malloc around it.
awaitable<Outcome> ClientSession::wait_for_client() {
  for (;;) {
    auto data = reader_.pending();
    if (data.size() >= pg::kHeaderSize && data[0] == 'X') co_return "client terminated";
    if (!data.empty()) co_return Next::kGoOn;
    // Woken from park(): the socket is readable now (a second wait would need another edge).
    const bool woke = std::exchange(woke_, false);
    const bool plain = !client_->tls();
    if (plain && !woke && parkable()) {
      trim_idle();
      parked_ = true;  // kill() cancels this wait
      auto [wec] = co_await client_->socket().async_wait(tcp::socket::wait_read, use_nothrow);
      parked_ = false;
      if (killed_) co_return "shutdown";
      // nudge_idle() cancelled the wait: the session parks (it holds no unread bytes).
      if (std::exchange(park_now_, false) && wec == asio::error::operation_aborted)
        co_return Next::kParked;
      if (wec) co_return "client disconnected";
    }
    reader_.shrink(kClientBuffer);
    reader_.ensure(kClientBuffer);
    parked_ = plain;  // kill() and nudge_idle() cancel this read too (it has read nothing then)
    auto [ec, n] = co_await client_->read_some(reader_.prepare(1));
    parked_ = false;
    reader_.commit(n);
    if (killed_) co_return "shutdown";
    if (std::exchange(park_now_, false) && ec == asio::error::operation_aborted && n == 0)
      co_return Next::kParked;
    if (ec) co_return "client disconnected";
    counters_->received_bytes->inc(n);
    last_activity_ = Clock::now();
  }
}

// Without a server: answers a request of Parses of statements known to parse (and Closes), so a
// client blocked in a synchronous prepare never waits for servers other clients of its thread
// hold. "" when a server must answer, kAnswered, or why the session ends.
awaitable<Outcome> ClientSession::answer_detached() {
  for (;;) {
    pg::Buffer out;
    auto data = reader_.pending();
    auto a = ps_->answer_detached(data, out);
    if (a.kind == routing::PooledSession::LocalAnswer::kNo) co_return Next::kGoOn;
    if (a.kind == routing::PooledSession::LocalAnswer::kNeedMore) {
      if (auto end = co_await read_client(a.need)) co_return end;
      continue;
    }
    for (std::size_t pos = 0; pos < a.consumed;) {
      auto f = std::get<pg::Frame>(pg::next_frame(data.subspan(pos)));
      tracker_.on_answered(f);
      pos += f.size;
    }
    reader_.consume(a.consumed);
    counters_->sent_bytes->inc(out.size());
    if (!co_await send(std::move(out))) co_return "client write failed";
    co_return Next::kAnswered;
  }
}

// Drops the client's first request (a Query, or extended messages through their Sync; routing
// judged it whole) and answers it with `e` and ReadyForQuery.
awaitable<bool> ClientSession::refuse_request(const PgError& e) {
  pg::FrameCursor cursor(reader_.pending());
  while (auto f = cursor.next()) {
    if (f->type == 'Q' || f->type == 'S') break;
  }
  const std::size_t pos = cursor.offset();
  reader_.consume(pos);
  route_ = RouteNeed{};
  rt_->obs.count_error(e.sqlstate);
  pg::Buffer out;
  pg::encode_error_response(out, {"ERROR", e.sqlstate, e.message, e.detail, e.hint});
  pg::encode_ready_for_query(out, 'I');
  co_return co_await send(std::move(out));
}

// Between transactions: "" once the client sent something, else why the session ends.
awaitable<Outcome> ClientSession::wait_detached() {
  if (killed_) co_return "shutdown";
  if (cfg_->pool.client_idle_timeout.count() == 0 && !client_->tls()) {
    // No timer and no parallel group: an idle client costs one small coroutine frame, and
    // kill() cancels the socket wait.
    auto why = co_await wait_for_client();
    co_return why;
  }
  if (watchdog_on_) {
    auto w = co_await (wait_for_client() || watchdog() || wait_killed());
    if (w.index() == 0) co_return std::get<0>(w);
    if (w.index() == 1) co_return std::get<1>(w);
    co_return "shutdown";
  }
  auto w = co_await (wait_for_client() || wait_killed());  // one coroutine frame fewer
  if (w.index() == 0) co_return std::get<0>(w);
  co_return "shutdown";
}

}  // namespace sluice::server::pgsession
