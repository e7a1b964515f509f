// The relay engine: the steps both relay drivers (relay.cpp) are made of, for every pool mode —
// scan what one side sent up to the messages sluice must see, forward it in one write, read
// more. Session pooling vs the pooled modes is a policy inside the steps (which messages are
// inspected, whether a PooledSession rewrites and tracks them, whether the server can go back).
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

// A pipelined Query/Parse/Bind that may write, on a replica serving reads: it waits until the
// replica has answered, then goes to the primary (unless the replica is then inside a
// transaction, which keeps it). On the primary: notes whether the transaction may write.
bool ClientSession::reroutes(const pg::Frame& f, bool judged) {
  if (!replicas_ || judged || (f.type != 'Q' && f.type != 'P' && f.type != 'B')) return false;
  if (node_ >= 0) {
    if (reroute_allowed_ || ps_->unsynced() || verdict(f, false).replica) return false;
    reroute_ = true;
    return true;
  }
  if (!wrote_) {
    auto v = verdict(f, true);
    wrote_ = v.write;
    catalog_changed_ = catalog_changed_ || v.catalog_change;
  }
  return false;
}

// Session pooling: what PooledSession does for the pooled modes (requests counted, the
// lexer check of the SQL that may change how the server reads what follows).
void ClientSession::note_unpooled_request(const pg::Frame& f) {
  const auto type = f.type;
  if (type == 'Q' || type == 'S' || type == 'F') note_request();
  if (!rt_->cache || lexer_suspect_ || (type != 'Q' && type != 'P')) return;
  auto sql = pg::query_text(f);
  if (sql && changes_lexer(*sql))  // after note_writes() of this message, before the next
    lexer_mismatch("it set standard_conforming_strings or client_encoding");
}

// One step client → server over the client's buffered bytes. Session pooling forwards them in
// place (scan.in_place bytes of reader_); the pooled modes move them into to_server_buf_
// (statement names rewritten, requests tracked), consuming them from reader_.
ClientSession::ClientScan ClientSession::scan_client() {
  auto data = reader_.pending();
  std::size_t pos = 0;
  ClientScan result;
  const int before = pending();
  const auto now = Clock::now();
  auto passed = [this](const pg::Header& h) { ps_->on_client_passed(h.type); };
  for (;;) {
    auto stop = ps_ ? to_server_.scan(data.subspan(pos), kFromClientPooled, passed)
                    : to_server_.scan(data.subspan(pos), kFromClient, [](const pg::Header&) {});
    if (ps_)
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
    const auto& f = stop.frame;
    if (f.type == 'X') {
      result.kind = ClientScan::kTerminate;
      break;
    }
    if (reroutes(f, pos < route_.judged)) {  // route_need() judged it at the checkout
      result.kind = ClientScan::kReroute;
      break;
    }
    // What it writes: for the cache's bump, and (read consistency global, pooled modes with
    // read routing) the marks this instance keeps without Redis.
    if (rt_->cache && (rt_->cache->configured() || (replicas_ && global_reads())) &&
        (f.type == 'Q' || f.type == 'P' || f.type == 'B'))
      note_writes(f);
    tracker_.on_client(f, now);
    if (!ps_) {
      note_unpooled_request(f);
      pos += f.size;  // forwarded in place with the rest
      continue;
    }
    auto outcome = ps_->on_client(f, server_->state, to_server_buf_);
    pos += f.size;
    if (outcome.bad) {
      result.kind = ClientScan::kBad;
      break;
    }
    if (outcome.pin) note_pin(*outcome.pin);
  }
  if (!ps_) {
    result.in_place = pos;
    return result;
  }
  consumed_client(data.first(pos), before);
  return result;
}

// The pooled modes: what scan_client() moved into to_server_buf_ leaves reader_.
void ClientSession::consumed_client(bytes::Span moved, int pending_before) {
  // On the primary only what routing judged a read is replayed: a later request may write.
  if (replayable_ && primary_read_ && moved.size() > route_.judged) {
    replayable_ = false;
    pg::Buffer().swap(routed_->replay);
  }
  if (replayable_) {  // a read keeps what it sent, to send it elsewhere if its server breaks
    routed_->replay.insert(routed_->replay.end(), moved.begin(), moved.end());
    if (routed_->replay.size() > kMaxReplay || to_server_.mid_message()) {
      replayable_ = false;
      pg::Buffer().swap(routed_->replay);
    }
  }
  reader_.consume(moved.size());
  route_.judged -= std::min(route_.judged, moved.size());
  if (pending_before == 0 && ps_->pending() > 0) request_started_ = Clock::now();
  if (!ps_->idle()) handle_->idle = false;
}

// What scan_client() left to forward: in place in reader_ (session pooling) or to_server_buf_.
asio::const_buffer ClientSession::client_bytes(const ClientScan& scan) const {
  if (scan.in_place > 0) return asio::buffer(reader_.pending().data(), scan.in_place);
  return asio::buffer(to_server_buf_);
}

void ClientSession::client_bytes_sent(const ClientScan& scan) {
  if (scan.in_place > 0)
    reader_.consume(scan.in_place);
  else
    to_server_buf_.clear();
}

// Writes what scan_client() left to forward and reacts to what it found; a reason to end the
// session. (client_side() does the same inline: one coroutine frame less per step.)
awaitable<Outcome> ClientSession::forward_client(ClientScan scan) {
  if (const auto out = client_bytes(scan); out.size() > 0) {
    if (auto failed = co_await write_to_server(out)) co_return failed;
    client_bytes_sent(scan);
  }
  if (!scan.ends()) co_return Next::kGoOn;
  auto end = co_await client_scan_end(scan);
  co_return end;
}

// What ends the session after the bytes before it went out.
awaitable<Outcome> ClientSession::client_scan_end(ClientScan scan) {
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

// Reads more client bytes (at least `need` when known); a reason to end the session. The
// halves around the read (client_room, client_got) serve the concurrent driver inline.
awaitable<Outcome> ClientSession::read_client(std::size_t need) {
  if (killed_) co_return "shutdown";
  auto [ec, n] = co_await client_->read_some(client_room(need));
  co_return client_got(ec, n);
}

asio::mutable_buffer ClientSession::client_room(std::size_t need) {
  reader_.shrink(kClientBuffer);
  reader_.ensure(kClientBuffer);
  return reader_.prepare(need);
}

Outcome ClientSession::client_got(const error_code& ec, std::size_t n) {
  reader_.commit(n);
  if (ec) return "client disconnected";
  counters_->received_bytes->inc(n);
  last_activity_ = Clock::now();
  return Next::kGoOn;
}

// Which server messages the scanner stops at, by mode.
const pg::WantTable& ClientSession::server_want() const {
  if (!ps_) return kFromServer;
  if (ps_->swallowing()) return kEveryMessage;
  return node_ >= 0 ? kFromReplica : kFromServerPooled;
}

// Session pooling: no PooledSession; a ReadyForQuery ends a request and tells the transaction
// state. Everything is forwarded.
routing::PooledSession::Verdict ClientSession::on_server_unpooled(const pg::Frame& f) {
  if (f.type == 'Z') {
    tx_status_ = pg::decode_ready_for_query(f.body).value_or('E');
    if (pending_ > 0) --pending_;
  }
  return routing::PooledSession::Verdict::kForward;
}

// One inspected server message: what it means for the session, and whether it goes to the
// client (notes the retry, desync, refusal and idle conditions in r).
ClientSession::ServerStep ClientSession::inspect_server(const pg::Frame& f, ServerScan& r,
                                                        Clock::time_point now) {
  if ((f.type == 'N' || f.type == 'E') && (node_ >= 0 || primary_read_) && replica_going_away(f)) {
    if (can_retry()) {
      r.retry = true;  // nothing of this reply reaches the client
      return {.halt = true};
    }
    if (ps_->pending() == 0 && ps_->idle()) {
      r.gone = true;  // no request in flight: the client need not hear of it
      return {.halt = true};
    }
  }
  if (f.type == 'N' && !ps_->swallowing()) return {.forward = true};  // (replicas only)
  const auto verdict = ps_ ? ps_->on_server(f, server_->state) : on_server_unpooled(f);
  if (verdict == routing::PooledSession::Verdict::kDesync) {
    r.desync = true;
    return {.halt = true};
  }
  if (f.type == 'S') {
    if (auto p = pg::decode_parameter_status(f.body)) {
      server_->set_param(p->name, p->value);
      note_lexer(p->name, p->value);
    }
  }
  if (verdict != routing::PooledSession::Verdict::kForward) return {};
  if (f.type == 'C' || f.type == 'E' || f.type == 'Z') note_server_message(f, now);
  if (f.type == 'G' || f.type == 'W' || f.type == 'H') {  // 'H': session pooling only
    r.copy_in = f.type != 'H';
    enter(Phase::kCopy);
  }
  if (f.type != 'Z') return {.forward = true};
  if (statement_mode_ && ps_->tx_status() != 'I') {
    r.tx_refused = true;  // the client gets the error in place of this ReadyForQuery
    return {.last = true};
  }
  enter(Phase::kRelaying);
  last_activity_ = Clock::now();
  handle_->idle = pending() == 0 && tx_status() == 'I';
  // The end of a transaction that wrote (and of every request sent): its client waits for the
  // cache bump.
  r.hold_ready = writes_pending() && tx_status() == 'I' && pending() == 0;
  r.idle_now = ps_ && ps_->idle();
  return {.forward = true, .last = r.idle_now || r.hold_ready};
}

// One step server → client over what the server sent so far: replies to sluice's own messages
// are dropped, the rest forwarded as one buffer (zero-copy while nothing was dropped, as always
// in session pooling).
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
    r.stop = to_client_.scan(data.subspan(pos), server_want(), [](const pg::Header&) {});
    keep(pos, r.stop.offset);
    pos += r.stop.offset;
    if (r.stop.kind != pg::MessageScanner::Stop::kInspect) break;
    const auto& f = r.stop.frame;
    const auto step = inspect_server(f, r, now);
    if (step.halt) break;
    if (step.forward) keep(pos, f.size);
    pos += f.size;
    if (step.last) break;
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
    auto out = scan.out;
    if (scan.hold_ready) {
      std::memcpy(ready.data(), static_cast<const char*>(out.data()) + out.size() - ready.size(),
                  ready.size());
      out = asio::buffer(out.data(), out.size() - ready.size());
    }
    replying(scan.out);
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

// Before and after a plain scan's write to the client (server_side() writes inline).
void ClientSession::replying(asio::const_buffer out) {
  replied_ = true;
  if (cached_ && cached_->filling) capture_fill(out);
  client_writing_ = true;
}

Outcome ClientSession::replied(const error_code& ec, std::size_t written, std::size_t consumed) {
  client_writing_ = false;
  if (ec) return "client write failed";
  counters_->sent_bytes->inc(written);
  server_->reader().consume(consumed);
  return Next::kGoOn;
}

// Reads more server bytes; a reason to end the session.
awaitable<Outcome> ClientSession::read_server(std::size_t need) {
  if (killed_) co_return "shutdown";
  auto [ec, n] = co_await server_->stream().read_some(server_room(need));
  server_->reader().commit(n);
  if (ec) {
    auto reason = co_await server_read_failed(ec);
    co_return reason;
  }
  co_return Next::kGoOn;
}

asio::mutable_buffer ClientSession::server_room(std::size_t need) {
  auto& in = server_->reader();
  in.shrink(ServerConn::kReadBuffer);
  return in.prepare(need);
}

// True when the server connection can go back now, or should once a write in flight ends.
bool ClientSession::want_release(bool idle_now) {
  if (!ps_) return false;  // session pooling keeps its server to the end
  if (idle_now) release_wanted_ = true;
  if (release_wanted_ && !ps_->idle()) release_wanted_ = false;
  return release_wanted_ && can_release();
}

}  // namespace sluice::server::pgsession
