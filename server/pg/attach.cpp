// Server connections for a pooled client: checkout, release, the idle wait, local answers.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

// Gets a server connection from the pool of the node routing chose (the primary unless the
// request only reads and a replica may serve it) and gives it this client's settings.
awaitable<bool> ClientSession::checkout() {
  auto ex = co_await asio::this_coro::executor;
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
  // A replica that fails here is banned and the read goes to the next choice.
  for (std::size_t attempt = 0;; ++attempt) {
    const int node = attempt <= (replicas_ ? replicas_->size() : 0) ? choose_node()
                                                                    : routing::ReplicaSet::kPrimary;
    if (node == kRefused) {
      PgError e{"57P03",
                "no replica of database \"" + db_name_ + "\" can serve reads now",
                {},
                "every replica is banned (SHOW REPLICAS on the admin console says why); "
                "routing.primary_reads / routing.all_replicas_banned decide whether the "
                "primary takes reads then"};
      if (ps_) {
        refused_ = std::make_unique<PgError>(std::move(e));  // relay() answers it and goes on
        co_return false;
      }
      queue_error(e);
      co_await flush();
      co_return false;
    }
    node_ = node;
    auto pool = node < 0 ? pool_ : replica_pool(node);
    auto fail_replica = [&](const std::string& why) {
      spdlog::warn("client {} user={} db={}: replica {} failed ({}): banned, read goes elsewhere",
                   peer_, user_name_, db_name_, replicas_->address(node), why);
      ban_replica(why);
      end_pick();
    };
    if (auto idle = pool->try_acquire(*limits_, ex)) {
      server_ = std::move(*idle);  // the common case: no waiting, no coroutines
    } else {
      // kill() ends the wait through cancel_wait_ (no wait_killed() coroutine per checkout).
      const auto wait_from = Clock::now();
      handle_->wait_since = wait_from.time_since_epoch().count();
      handle_->state = ClientState::kWaiting;
      auto got = co_await pool->acquire(*limits_, &cancel_wait_);
      handle_->state = ClientState::kActive;
      counters_->waits->inc();
      counters_->wait_us->inc(static_cast<std::uint64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - wait_from).count()));
      if (auto* lease = std::get_if<Lease>(&got); lease && ps_) lease->skip_reset();
      if (killed_) co_return false;  // a connection goes straight back, untouched
      if (auto* e = std::get_if<PgError>(&got)) {
        if (node >= 0 && e->sqlstate != "53300") {
          fail_replica(e->message);
          continue;
        }
        spdlog::warn("client {} user={} db={}: no server connection: {}", peer_, user_name_,
                     db_name_, e->message);
        queue_error(std::move(*e));
        co_await flush();
        co_return false;
      }
      server_ = std::move(std::get<Lease>(got));
    }
    // A cancel still on its way to this backend (any client's) lands before it runs anything.
    if (rt_->cancels.any_in_flight()) {
      CancelTarget settling{server_->host(), server_->port(), server_->key()};
      co_await rt_->cancels.wait_settled(std::move(settling), &killed_);
    }
    auto& state = server_->state;
    if (ps_) {
      server_.skip_reset();  // the pooled session's state is tracked instead
      state.set_max_statements(cfg_->pool.max_prepared_statements);
    }
    // Session mode: the reset query left the server at its defaults.
    auto sync = routing::settings_sync(ps_ ? ps_->settings() : startup_,
                                       ps_ ? state.settings : routing::Settings{});
    if (!sync.empty()) {
      auto synced = co_await server_->run(std::move(sync));
      if (auto* e = std::get_if<PgError>(&synced)) {
        server_.mark_broken();  // some settings may have been applied
        if (node >= 0 && e->sqlstate.starts_with("08")) {
          server_.give_back();
          fail_replica(e->message);
          continue;
        }
        queue_error(std::move(*e));
        co_await flush();
        co_return false;
      }
    }
    break;
  }
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
  if (node_ >= 0) {  // a read on a replica: what it needs to run again elsewhere if it breaks
    routed_->ps_saved.emplace(*ps_);
    routed_->tracker_saved.emplace(tracker_);
    routed_->replay.clear();
    replayable_ = !retried_;
    replied_ = false;
  }
  if (key_.pid != 0)
    rt_->cancels.set_target(key_, CancelTarget{server_->host(), server_->port(), server_->key()});
  co_return true;
}

// Transaction pooling, between transactions: reads back the settings the client changed, then
// returns the server connection to the pool.
awaitable<void> ClientSession::release() {
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
      auto r = co_await server_->query("SELECT pg_catalog.pg_current_wal_insert_lsn()");
      auto* rows = std::get_if<routing::Rows>(&r);
      if (rows && rows->size() == 1 && !(*rows)[0].empty() && (*rows)[0][0]) {
        if (auto lsn = routing::parse_lsn(*(*rows)[0][0]))
          last_write_lsn_ = std::max(last_write_lsn_, *lsn);
      } else if (!rows) {
        server_failed_ = true;
      }
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
  retried_ = replayable_ = false;
  if (routed_) {
    routed_->replay.clear();
    routed_->ps_saved.reset();
    routed_->tracker_saved.reset();
  }
}

// Waits, without a server connection, until the client sends something. A plain-TCP client
// holds no read buffer while it waits: thousands of idle clients cost little memory.
void ClientSession::trim_idle() {
  reader_.release();
  to_server_buf_ = pg::Buffer();
  if (ps_) ps_->trim();
  tracker_.trim();
}

awaitable<std::string> ClientSession::wait_for_client() {
  for (;;) {
    auto data = reader_.pending();
    if (data.size() >= pg::kHeaderSize && data[0] == 'X') co_return "client terminated";
    if (!data.empty()) co_return std::string();
    // Woken from park(): the socket is readable now (a second wait would need another edge).
    if (!client_->tls() && !std::exchange(woke_, false)) {
      trim_idle();
      parked_ = true;  // kill() cancels this wait
      auto [wec] = co_await client_->socket().async_wait(tcp::socket::wait_read, use_nothrow);
      parked_ = false;
      if (killed_) co_return "shutdown";
      if (wec) co_return "client disconnected";
    }
    reader_.shrink(kClientBuffer);
    reader_.ensure(kClientBuffer);
    auto [ec, n] = co_await client_->read_some(reader_.prepare(1));
    reader_.commit(n);
    if (ec) co_return "client disconnected";
    counters_->received_bytes->inc(n);
    last_activity_ = Clock::now();
  }
}

// Without a server: answers a request of Parses of statements known to parse (and Closes), so a
// client blocked in a synchronous prepare never waits for servers other clients of its thread
// hold. "" when a server must answer, kAnswered, or why the session ends.
awaitable<std::string> ClientSession::answer_detached() {
  for (;;) {
    pg::Buffer out;
    auto data = reader_.pending();
    auto a = ps_->answer_detached(data, out);
    if (a.kind == routing::PooledSession::LocalAnswer::kNo) co_return std::string();
    if (a.kind == routing::PooledSession::LocalAnswer::kNeedMore) {
      if (auto end = co_await read_client(a.need)) co_return *end;
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
    co_return std::string(kAnswered);
  }
}

// Drops the client's first request (a Query, or extended messages through their Sync; routing
// judged it whole) and answers it with `e` and ReadyForQuery.
awaitable<bool> ClientSession::refuse_request(const PgError& e) {
  auto data = reader_.pending();
  std::size_t pos = 0;
  while (data.size() - pos >= pg::kHeaderSize) {
    const char type = static_cast<char>(data[pos]);
    bytes::Reader header(data.subspan(pos + 1, 4));
    const std::size_t size = 1 + static_cast<std::size_t>(header.u32());
    if (size < pg::kHeaderSize || size > data.size() - pos) break;
    pos += size;
    if (type == 'Q' || type == 'S') break;
  }
  reader_.consume(pos);
  route_ = RouteNeed{};
  rt_->obs.count_error(e.sqlstate);
  pg::Buffer out;
  pg::encode_error_response(out, {"ERROR", e.sqlstate, e.message, e.detail, e.hint});
  pg::encode_ready_for_query(out, 'I');
  co_return co_await send(std::move(out));
}

// Between transactions: "" once the client sent something, else why the session ends.
awaitable<std::string> ClientSession::wait_detached() {
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
