// Message-boundary scanning of both directions of the relay, and what is forwarded.
#include "server/pg/session.hpp"

namespace sluice::server::pgsession {

namespace {

// A notice or error saying the server is going away (shutdown, crash, recovery): a read that got
// nothing else yet can run elsewhere.
bool replica_going_away(const pg::Frame& f) {
  auto e = pg::decode_error_fields(f.body);
  if (!e) return false;
  auto code = e->get('C');
  auto severity = e->get('V');
  return code == "57P01" || code == "57P02" || code == "57P03" ||
         (code.starts_with("08") && (severity == "FATAL" || severity == "PANIC"));
}

}  // namespace

// Transaction pooling, one step client → server: moves the client's buffered messages into
// to_server_buf_ (statement names rewritten, requests tracked), consuming them from reader_.
ClientSession::ClientScan ClientSession::scan_client() {
  auto data = reader_.pending();
  std::size_t pos = 0;
  ClientScan result;
  const int before = ps_->pending();
  const auto now = Clock::now();
  for (;;) {
    auto stop = to_server_.scan(data.subspan(pos), kFromClientPooled,
                                [this](const pg::Header& h) { ps_->on_client_passed(h.type); });
    to_server_buf_.insert(to_server_buf_.end(), data.begin() + static_cast<std::ptrdiff_t>(pos),
                          data.begin() + static_cast<std::ptrdiff_t>(pos + stop.offset));
    pos += stop.offset;
    if (stop.kind == pg::MessageScanner::Stop::kNeedMore) {
      result.need = stop.need;
      break;
    }
    if (stop.kind == pg::MessageScanner::Stop::kError) {
      result.kind = ClientScan::kTooLong;
      result.failure = stop.failure;
      break;
    }
    if (stop.frame.type == 'X') {
      result.kind = ClientScan::kTerminate;
      break;
    }
    const auto type = stop.frame.type;
    const bool judged = pos < route_.judged;  // route_need() saw this message at the checkout
    if (replicas_ && !judged && (type == 'Q' || type == 'P' || type == 'B')) {
      if (node_ >= 0) {
        // A request that may write, pipelined after reads on a replica: it waits until the
        // replica has answered, then goes to the primary (unless the replica is then inside a
        // transaction, which keeps it).
        if (!reroute_allowed_ && !ps_->unsynced() && !verdict(stop.frame, false).replica) {
          result.kind = ClientScan::kReroute;
          reroute_ = true;
          break;
        }
      } else if (!wrote_) {
        auto v = verdict(stop.frame, true);
        wrote_ = v.write;
        catalog_changed_ = catalog_changed_ || v.catalog_change;
      }
    }
    if (rt_->cache && (type == 'Q' || type == 'P' || type == 'B')) note_writes(stop.frame);
    tracker_.on_client(stop.frame, now);
    auto outcome = ps_->on_client(stop.frame, server_->state, to_server_buf_);
    pos += stop.frame.size;
    if (outcome.bad) {
      result.kind = ClientScan::kBad;
      break;
    }
    if (outcome.pin) note_pin(*outcome.pin);
  }
  if (replayable_) {  // a read on a replica keeps what it sent, to send it elsewhere if it breaks
    routed_->replay.insert(routed_->replay.end(), data.begin(),
                           data.begin() + static_cast<std::ptrdiff_t>(pos));
    if (routed_->replay.size() > kMaxReplay || to_server_.mid_message()) {
      replayable_ = false;
      pg::Buffer().swap(routed_->replay);
    }
  }
  reader_.consume(pos);  // all of it is in to_server_buf_ now
  route_.judged -= std::min(route_.judged, pos);
  if (before == 0 && ps_->pending() > 0) request_started_ = Clock::now();
  if (!ps_->idle()) handle_->idle = false;
  return result;
}

// Writes to_server_buf_ and reacts to what scan_client() found; a reason to end the session.
awaitable<Outcome> ClientSession::forward_client(ClientScan scan) {
  if (!to_server_buf_.empty()) {
    if (auto failed = co_await write_to_server(asio::buffer(to_server_buf_))) co_return failed;
    to_server_buf_.clear();
  }
  switch (scan.kind) {
    case ClientScan::kBad: {
      queue_error({"08P01", "invalid extended-query message from client", {}, {}});
      co_await flush();
      co_return "protocol violation";
    }
    case ClientScan::kTerminate:
      co_return "client terminated";
    case ClientScan::kTooLong: {
      auto reason = co_await client_message_rejected(scan.failure);
      co_return reason;
    }
    default:
      co_return Next::kGoOn;
  }
}

// Reads more client bytes (at least `need` when known); a reason to end the session.
awaitable<Outcome> ClientSession::read_client(std::size_t need) {
  if (killed_) co_return "shutdown";
  reader_.shrink(kClientBuffer);
  reader_.ensure(kClientBuffer);
  auto [ec, n] = co_await client_->read_some(reader_.prepare(need));
  reader_.commit(n);
  if (ec) co_return "client disconnected";
  counters_->received_bytes->inc(n);
  last_activity_ = Clock::now();
  co_return Next::kGoOn;
}

// One step server → client over what the server sent so far: replies to sluice's own messages
// are dropped, the rest forwarded as one buffer (zero-copy while nothing was dropped).
ClientSession::ServerScan ClientSession::scan_server() {
  auto data = server_->reader().pending();
  ServerScan r;
  std::size_t kept = 0;  // forwarded bytes; == consumed while nothing was dropped
  to_client_buf_.clear();
  auto keep = [&](std::size_t from, std::size_t n) {
    if (n == 0) return;
    if (to_client_buf_.empty() && kept == from) {
      kept += n;  // still one contiguous run from the start: no copy
      return;
    }
    if (to_client_buf_.empty())  // first gap: copy the run before it, then append
      to_client_buf_.assign(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(kept));
    to_client_buf_.insert(to_client_buf_.end(), data.begin() + static_cast<std::ptrdiff_t>(from),
                          data.begin() + static_cast<std::ptrdiff_t>(from + n));
  };
  std::size_t& pos = r.consumed;
  const auto now = Clock::now();
  for (;;) {
    const auto& want = ps_->swallowing() ? kEveryMessage
                       : node_ >= 0      ? kFromReplica
                                         : kFromServerPooled;
    r.stop = to_client_.scan(data.subspan(pos), want, [](const pg::Header&) {});
    keep(pos, r.stop.offset);
    pos += r.stop.offset;
    if (r.stop.kind != pg::MessageScanner::Stop::kInspect) break;
    const auto& f = r.stop.frame;
    if ((f.type == 'N' || f.type == 'E') && node_ >= 0 && replica_going_away(f)) {
      if (can_retry()) {
        r.retry = true;  // nothing of this reply reaches the client
        break;
      }
      if (ps_->pending() == 0 && ps_->idle()) {
        r.gone = true;  // no request in flight: the client need not hear of it
        break;
      }
    }
    if (f.type == 'N' && !ps_->swallowing()) {  // a notice passed on
      keep(pos, f.size);
      pos += f.size;
      continue;
    }
    auto verdict = ps_->on_server(f, server_->state);
    if (verdict == routing::PooledSession::Verdict::kDesync) {
      r.desync = true;
      break;
    }
    if (f.type == 'S') {
      if (auto p = pg::decode_parameter_status(f.body)) {
        server_->set_param(p->name, p->value);
        note_lexer(p->name, p->value);
      }
    }
    const bool forward = verdict == routing::PooledSession::Verdict::kForward;
    if (forward && (f.type == 'C' || f.type == 'E' || f.type == 'Z')) note_server_message(f, now);
    if (forward && (f.type == 'G' || f.type == 'W')) {
      r.copy_in = true;
      enter(Phase::kCopy);
    }
    if (f.type == 'Z' && forward && statement_mode_ && ps_->tx_status() != 'I') {
      r.tx_refused = true;  // the client gets the error in place of this ReadyForQuery
      pos += f.size;
      break;
    }
    if (forward) keep(pos, f.size);
    pos += f.size;
    if (f.type == 'Z' && forward) {
      enter(Phase::kRelaying);
      last_activity_ = Clock::now();
      handle_->idle = ps_->pending() == 0 && ps_->tx_status() == 'I';
      // The end of a transaction that wrote (and of every request sent): its client waits for
      // the cache bump.
      r.hold_ready = writes_pending() && ps_->tx_status() == 'I' && ps_->pending() == 0;
      if (ps_->idle() || r.hold_ready) {
        r.idle_now = ps_->idle();
        break;
      }
    }
  }
  if (r.retry) {  // nothing goes to the client
    kept = 0;
    to_client_buf_.clear();
  }
  r.out = to_client_buf_.empty() ? asio::buffer(data.data(), kept) : asio::buffer(to_client_buf_);
  return r;
}

// Writes what scan_server() kept, consumes what it read; a reason to end the session.
awaitable<Outcome> ClientSession::forward_server(ServerScan scan) {
  if (scan.retry) {
    server_failed_ = true;
    routed_->retry_why = "the server is shutting down";
    co_return Next::kRetry;
  }
  std::array<char, 6> ready{};  // a ReadyForQuery held back for the cache bump
  if (scan.out.size() > 0) {
    replied_ = true;
    auto out = scan.out;
    if (scan.hold_ready) {
      std::memcpy(ready.data(), static_cast<const char*>(out.data()) + out.size() - ready.size(),
                  ready.size());
      out = asio::buffer(out.data(), out.size() - ready.size());
    }
    if (cached_ && cached_->filling) capture_fill(scan.out);
    client_writing_ = true;
    auto [ec, written] = co_await client_->write(out);
    client_writing_ = false;
    if (ec) co_return "client write failed";
    counters_->sent_bytes->inc(written);
  }
  if (scan.gone) {
    server_failed_ = server_gone_ = true;
    ban_replica("the server is shutting down");
    co_return Next::kGone;
  }
  server_->reader().consume(scan.consumed);
  if (scan.hold_ready) {
    co_await bump_writes();
    client_writing_ = true;
    auto [ec, written] = co_await client_->write(asio::buffer(ready));
    client_writing_ = false;
    if (ec) co_return "client write failed";
    counters_->sent_bytes->inc(written);
  }
  if (scan.desync) {
    server_failed_ = true;
    spdlog::error("client {} user={} db={}: server reply does not match the requests sent", peer_,
                  user_name_, db_name_);
    queue_error({"08P01", "sluice lost track of the server's replies; reconnect", {}, {}});
    co_await flush();
    co_return "server reply out of sync";
  }
  if (scan.tx_refused) {
    server_failed_ = true;  // closing it ends the transaction on the server
    queue_error({"0A000",
                 "transaction blocks not allowed in statement pooling mode",
                 {},
                 "use pool mode transaction for clients that run BEGIN ... COMMIT"});
    co_await flush();
    co_return "transaction in statement pooling";
  }
  if (scan.stop.kind == pg::MessageScanner::Stop::kError) {
    server_failed_ = true;
    queue_error({"08P01", "server sent an invalid message length", {}, {}});
    co_await flush();
    co_return "server protocol violation";
  }
  co_return Next::kGoOn;
}

// Reads more server bytes; a reason to end the session.
awaitable<Outcome> ClientSession::read_server(std::size_t need) {
  if (killed_) co_return "shutdown";
  auto& in = server_->reader();
  in.shrink(ServerConn::kReadBuffer);
  auto [ec, n] = co_await server_->stream().read_some(in.prepare(need));
  in.commit(n);
  if (ec) {
    auto reason = co_await server_read_failed(ec);
    co_return reason;
  }
  co_return Next::kGoOn;
}

// True when the server connection can go back now, or should once a write in flight ends.
bool ClientSession::want_release(bool idle_now) {
  if (idle_now) release_wanted_ = true;
  if (release_wanted_ && !ps_->idle()) release_wanted_ = false;
  return release_wanted_ && can_release();
}

}  // namespace sluice::server::pgsession
