// The byte relay between a client and its server connection: relay() attaches and releases,
// then one of two drivers schedules the engine's steps (scan.cpp): relay_sequential() one
// direction at a time, relay_attached() both at once (client_side() || server_side()). Every pool
// mode runs on the same steps; session pooling always uses the concurrent driver.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

awaitable<Outcome> ClientSession::relay() {
  for (;;) {
    if (!server_) {
      enter(Phase::kIdle);
      if (!woke_ && parkable() && reader_.pending().empty()) {
        trim_idle();
        co_return Next::kParked;
      }
      auto why = co_await wait_detached();
      if (why) co_return why;
      if (ps_ && !pinned_) {
        auto local = co_await answer_detached();
        if (local.is(Next::kAnswered)) continue;
        if (local) co_return local;
      }
      if (ps_ && !pinned_ && cache_on()) {
        auto cached = co_await try_cache();
        if (cached.is(Next::kAnswered)) continue;
        if (cached) co_return cached;
      }
      if (replicas_) {
        auto routed = co_await prepare_route();
        if (routed.is(Next::kAnswered)) continue;
        if (routed) co_return routed;
        if (route_.replica && !pinned_ && global_reads()) co_await read_marks();
      }
      if (!co_await checkout()) {
        if (!refused_) co_return "no server connection";
        auto refused = std::move(*refused_);  // named: no temporary inside a co_await (g++ 12)
        refused_.reset();
        if (!co_await refuse_request(refused)) co_return "client write failed";
        continue;
      }
    }
    Outcome reason = Next::kConcurrent;
    if (ps_ && !watchdog_on_ && !pinned_) {
      attached_light_ = true;  // kill() cancels the pending read
      auto sequential = co_await relay_sequential();
      attached_light_ = false;
      reason = killed_ ? Outcome("shutdown") : sequential;
    }
    if (reason.is(Next::kConcurrent)) {
      auto concurrent = co_await relay_attached();
      reason = concurrent;
    }
    if (reason.is(Next::kRetry)) {
      retry_elsewhere();
      continue;
    }
    // kGone, sequential: nothing was read from the client.
    if (!reason.is(Next::kReleased) && !reason.is(Next::kGone)) co_return reason;
    co_await release();
  }
}

// Relays while a server connection is attached; kReleased when it went back to the pool.
// Each result is initialised from its co_await in its own statement: g++ 12 miscompiles
// `r = co_await ...` assignments and `c ? co_await a : co_await b` (double free).
awaitable<Outcome> ClientSession::relay_attached() {
  auto reason = [](auto& r) {
    return std::visit(
        [](auto& v) -> Outcome {
          if constexpr (std::is_same_v<std::decay_t<decltype(v)>, std::monostate>) {
            return "shutdown";  // wait_killed
          } else {
            return v;
          }
        },
        r);
  };
  if (ps_ && !watchdog_on_) {
    // kill() cancels both sockets' operations instead of a third coroutine per transaction.
    attached_light_ = true;
    auto r = co_await (client_side() || server_side());
    attached_light_ = false;
    if (killed_) co_return "shutdown";
    co_return reason(r);
  }
  auto r = co_await (client_side() || server_side() || watchdog() || wait_killed());
  co_return reason(r);
}

awaitable<Outcome> ClientSession::write_to_server(asio::const_buffer b) {
  server_writing_ = true;
  auto [ec, written] = co_await server_->stream().write(b);
  server_writing_ = false;
  if (ec == asio::error::operation_aborted) {  // the server side ended mid-write
    server_failed_ = true;
    co_return "cancelled";
  }
  if (ec && can_retry()) {
    server_failed_ = true;
    routed_->retry_why = "write failed: " + ec.message();
    co_return Next::kRetry;
  }
  if (ec) {
    server_failed_ = true;
    ban_replica("write failed: " + ec.message());
    queue_error({"08006", "lost the connection to the server: " + ec.message(), {}, {}});
    co_await flush();
    co_return "server write failed";
  }
  co_return Next::kGoOn;
}

awaitable<Outcome> ClientSession::client_message_rejected(const pg::FrameFailure& failure) {
  spdlog::warn("client {}: message length {} rejected: {} (limits.max_message_size={})", peer_,
               failure.declared_length, pg::describe(failure.error), cfg_->max_message_size);
  queue_error({"08P01",
               "invalid message length from client",
               {},
               "messages are capped by limits.max_message_size"});
  co_await flush();
  co_return "protocol violation";
}

awaitable<Outcome> ClientSession::server_read_failed(const error_code& ec) {
  if (ec == asio::error::operation_aborted) co_return "cancelled";  // the other direction ended
  server_failed_ = true;
  if (can_retry()) {
    routed_->retry_why = "connection lost: " + ec.message();
    co_return Next::kRetry;
  }
  ban_replica("connection lost: " + ec.message());
  if (ps_ && ps_->pending() == 0 && ps_->idle() && !to_client_.mid_message()) {
    server_gone_ = true;  // between requests: the next one gets another server
    co_return Next::kGone;
  }
  if (!to_client_.mid_message()) {
    queue_error({"08006",
                 "server closed the connection unexpectedly",
                 {},
                 "the server may have been restarted or terminated this backend"});
    co_await flush();
  }
  co_return "server disconnected";
}

// The sequential driver (transaction and statement pooling without timeouts), the common shape
// without coroutines spawned per transaction: forward
// the client's requests, then relay the replies until they are all answered, then the client's
// next requests. Returns kConcurrent for what needs both directions at once (COPY FROM STDIN,
// Flush-driven batches, large pipelines, pinned sessions), kReleased at the end of a
// transaction.
awaitable<Outcome> ClientSession::relay_sequential() {
  sequential_ = true;
  auto result = co_await relay_sequential_steps();
  sequential_ = false;
  co_return result;
}

awaitable<Outcome> ClientSession::relay_sequential_steps() {
  for (;;) {
    auto scan = scan_client();
    bool large = to_server_buf_.size() > kSequentialBatch;
    if (scan.kind == ClientScan::kNeedMore &&
        (large || pinned_ || ps_->unsynced() || to_server_.mid_message()))
      co_return Next::kConcurrent;  // it writes what scan_client() buffered first
    const bool sent = !to_server_buf_.empty();
    if (auto end = co_await forward_client(scan)) co_return end;
    while (ps_->pending() > 0) {
      auto answer = scan_server();
      if (auto end = co_await forward_server(answer)) co_return end;
      if (answer.copy_in) co_return Next::kConcurrent;  // the client sends data now
      if (answer.stop.kind == pg::MessageScanner::Stop::kInspect) continue;  // more buffered
      if (ps_->pending() == 0) break;
      if (auto end = co_await read_server(answer.stop.need)) co_return end;
    }
    if (scan.kind == ClientScan::kReroute) {
      if (ps_->idle() && can_release()) co_return Next::kReleased;  // the next checkout
      reroute_allowed_ = true;  // the replica is inside a transaction: it keeps the request
      continue;
    }
    // Nothing sent (a partial message so far): read on rather than release and re-acquire.
    if (sent && want_release(ps_->idle())) co_return Next::kReleased;
    if (!server_->reader().pending().empty())
      co_return Next::kConcurrent;                     // unexpected extra bytes
    if (sent && !reader_.pending().empty()) continue;  // the client pipelined more: scan it
    if (auto end = co_await read_client(scan.need)) co_return end;
  }
}

// The concurrent driver, client → server (with server_side()): every pool mode.
awaitable<Outcome> ClientSession::client_side() {
  for (;;) {
    if (server_gone_) co_return Next::kReleased;   // the next request goes elsewhere
    while (cached_ && cached_->server_reserved) {  // sluice's own query is on the server
      auto& timer = *cached_->reserve_timer;
      timer.expires_at(asio::steady_timer::time_point::max());
      co_await timer.async_wait(use_nothrow);
      if (killed_) co_return "shutdown";
    }
    // forward_client() and read_client() inline: no nested coroutine frame per step.
    auto scan = scan_client();
    if (const auto out = client_bytes(scan); out.size() > 0) {
      if (auto failed = co_await write_to_server(out)) co_return failed;
      client_bytes_sent(scan);
    }
    if (scan.ends()) {
      auto end = co_await client_scan_end(scan);
      co_return end;
    }
    if (want_release(false)) co_return Next::kReleased;
    if (scan.kind == ClientScan::kReroute) {
      if (ps_->pending() == 0) {  // the replica answered everything already
        if (ps_->idle() && can_release()) co_return Next::kReleased;
        reroute_allowed_ = true;
        reroute_ = false;
        continue;
      }
      // server_side() wakes this once the replica has answered.
      if (!routed_->reroute_timer) {
        auto ex = co_await asio::this_coro::executor;
        routed_->reroute_timer.emplace(ex);
      }
      routed_->reroute_timer->expires_at(asio::steady_timer::time_point::max());
      co_await routed_->reroute_timer->async_wait(use_nothrow);
      if (killed_) co_return "shutdown";
      continue;
    }
    if (killed_) co_return "shutdown";
    auto [ec, n] = co_await client_->read_some(client_room(scan.need));
    if (auto end = client_got(ec, n)) co_return end;
  }
}

// The concurrent driver, server → client (with client_side()): in the pooled modes, at
// ReadyForQuery outside a transaction the server connection is released.
awaitable<Outcome> ClientSession::server_side() {
  for (;;) {
    // forward_server() (its plain case) and read_server() inline: no nested coroutine frame.
    auto scan = scan_server();
    if (scan.plain() && scan.out.size() > 0) {
      replying(scan.out);
      auto [wec, written] = co_await client_->write(scan.out);
      if (auto end = replied(wec, written, scan.consumed)) co_return end;
    } else if (auto end = co_await forward_server(scan)) {
      if (end.is(Next::kGone)) break;
      co_return end;
    }
    if (want_release(scan.idle_now)) co_return Next::kReleased;
    if (reroute_ && ps_->pending() == 0) {  // a request waits to move off this replica
      if (ps_->idle() && can_release()) co_return Next::kReleased;
      reroute_allowed_ = true;
      reroute_ = false;
      if (routed_->reroute_timer) routed_->reroute_timer->cancel();
    }
    if (scan.stop.kind == pg::MessageScanner::Stop::kInspect &&
        !server_->reader().pending().empty())
      continue;
    if (killed_) co_return "shutdown";
    auto [rec, n] = co_await server_->stream().read_some(server_room(scan.stop.need));
    server_->reader().commit(n);
    if (rec) {
      auto failed = co_await server_read_failed(rec);
      if (failed.is(Next::kGone)) break;
      co_return failed;
    }
  }
  // The server went away between requests: the client side detaches before the client's next
  // request (it must not be cut short while it may hold bytes it read from the client).
  auto ex = co_await asio::this_coro::executor;
  asio::steady_timer parked(ex, asio::steady_timer::time_point::max());
  co_await parked.async_wait(use_nothrow);
  co_return "cancelled";
}

}  // namespace sluice::server::pgsession
