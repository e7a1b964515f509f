// Forwarding a MongoDB command: the server it goes to (read preference, the cursor's or the
// transaction's server), the round trip on a pooled connection, and what its reply changes
// (cursors opened and exhausted, transaction pins, writes to bump).
#include <spdlog/spdlog.h>

#include "server/mongo/session.hpp"
#include "server/runtime.hpp"

namespace sluice::server {

const MongoServerState* find_server(const MongoTopology& t, const std::string& address) {
  for (const auto& s : t.servers) {
    if (s.address == address) return &s;
  }
  return nullptr;
}

const config::Mongo& MongoSession::mongo_config(const config::Config& cfg) const {
  return cfg.mongo ? *cfg.mongo : px_.cfg_;
}

MongoSession::Target MongoSession::choose(const MongoTopology& t, const rm::ReadPreference& pref) {
  std::vector<rm::ServerView> views;
  for (const auto& s : t.servers)
    views.push_back({s.primary, s.up, s.rtt_ms, s.lag_seconds, &s.tags});
  auto cfg = rt_.config();
  const double floor =
      std::chrono::duration<double>(mongo_config(*cfg).max_staleness_floor).count();
  auto sel = rm::select(views, pref, floor, px_.turn_++);
  if (!sel.server) return {nullptr, "", sel.code, sel.error};
  const auto& s = t.servers[*sel.server];
  return {&s, s.primary ? "primary" : "secondary", 0, {}};
}

// Where `cmd` goes before the cache is asked: the server holding its cursor (refused when the
// cursor is another client's or unknown), its transaction's server, or by read preference.
MongoSession::Target MongoSession::target_for(const rm::Command& cmd, const MongoTopology& topo) {
  std::optional<rm::Pin> pinned;
  if (!cmd.lsid.empty() && (cmd.in_transaction || cmd.route == rm::Route::kTransaction))
    pinned = px_.pin(cmd.lsid);
  if (cmd.route == rm::Route::kCursor) {
    auto owner = cmd.cursors.empty() ? std::nullopt : px_.cursor_owner(cmd.cursors.front());
    if (owner && !owner->allows(conn_id_, cmd.lsid)) return not_owner(cmd, cmd.cursors.front());
    const auto* s = owner ? find_server(topo, owner->address) : nullptr;
    if (!s)
      return {nullptr, "", code::kCursorNotFound,
              "cursor id " + std::to_string(cmd.cursors.empty() ? 0 : cmd.cursors.front()) +
                  " not found: it was not opened through this sluice, or it was exhausted or "
                  "killed",
              true};
    return {s, s->primary ? "primary" : "secondary", 0, {}};
  }
  if (pinned) {
    const auto* s = find_server(topo, pinned->address);
    if (!s) s = choose(topo, rm::ReadPreference{}).server;
    if (s) return {s, s->primary ? "primary" : "secondary", 0, {}};
    return choose(topo, rm::ReadPreference{});
  }
  if (cmd.route == rm::Route::kRead || cmd.name == "buildInfo" || cmd.name == "buildinfo") {
    auto pref = cmd.pref;
    if (cmd.name == "buildInfo" || cmd.name == "buildinfo") pref.mode = rm::Mode::kPrimaryPreferred;
    return choose(topo, pref);
  }
  return choose(topo, rm::ReadPreference{});
}

// Sends `message` (a client's OP_MSG, ids and flags rewritten here) to `server` and reads its
// reply. A moreToCome message has none: its connection goes back at once.
awaitable<MongoSession::Forwarded> MongoSession::exchange(const MongoServerState& server,
                                                          Buffer message) {
  auto cfg = rt_.config();
  auto checkout = co_await pools_.get(server, mongo_config(*cfg));
  if (!checkout.conn) co_return Forwarded{{}, {}, checkout.code, checkout.error};
  auto conn = std::move(checkout.conn);
  const bool more_to_come = (message[wire::kHeaderSize] & wire::msg_flag::kMoreToCome) != 0;
  const std::int32_t id = px_.next_request_id_++;
  // Never exhaust: one request, one reply, and the connection is free again.
  wire::rewrite_ids(message, id, 0, wire::msg_flag::kExhaustAllowed);
  auto ec = co_await conn->stream.write_all(asio::buffer(message));
  if (ec) {
    pools_.put(std::move(conn), false);
    co_return Forwarded{{},
                        {},
                        code::kHostUnreachable,
                        "connection to " + server.address + " failed: " + ec.message()};
  }
  if (more_to_come) {
    pools_.put(std::move(conn), true);
    co_return Forwarded{};
  }
  auto got = co_await read_message(conn->stream, conn->reader);
  if (got.ec || got.bad || got.frame.header.response_to != id ||
      got.frame.header.op_code != wire::kOpMsg) {
    std::string why = got.ec    ? got.ec.message()
                      : got.bad ? got.bad->detail
                                : std::string("a reply that does not answer the request");
    pools_.put(std::move(conn), false);
    co_return Forwarded{
        {}, {}, code::kHostUnreachable, "server " + server.address + " did not answer: " + why};
  }
  Forwarded out;
  out.reply.assign(got.frame.message.begin(), got.frame.message.end());
  auto decoded = wire::decode_msg(
      wire::Frame{got.frame.header, out.reply, Span(out.reply).subspan(wire::kHeaderSize)});
  if (auto* f = std::get_if<wire::Failure>(&decoded)) {
    pools_.put(std::move(conn), false);
    co_return Forwarded{{},
                        {},
                        code::kHostUnreachable,
                        "server " + server.address + " sent a malformed reply: " + f->detail};
  }
  const auto& m = std::get<wire::Msg>(decoded);
  const bool streaming = m.more_to_come();
  out.body = m.body;
  conn->reader.shrink(16 * 1024);
  pools_.put(std::move(conn), !streaming);
  co_return out;
}

awaitable<bool> MongoSession::send_reply(Buffer& reply, std::int32_t rid) {
  // Without moreToCome: the client asked for one reply and gets exactly one.
  wire::rewrite_ids(reply, px_.next_request_id_++, rid, wire::msg_flag::kMoreToCome);
  auto ec = co_await client_.write_all(asio::buffer(reply));
  co_return !ec;
}

// What the command wrote, to bump now; inside a transaction it is kept with the pin and bumped
// at commit (the pin goes at commit or abort).
MongoSession::Writes MongoSession::writes_of(const rm::Command& cmd) {
  Writes written;
  if (cmd.route == rm::Route::kWrite) {
    for (const auto& w : cmd.writes) {
      if (cmd.in_transaction && !cmd.lsid.empty())
        px_.add_pin_writes(cmd.lsid, w.db, w.collection);
      else
        written.emplace_back(w.db, w.collection);
    }
  }
  if (cmd.route == rm::Route::kTransaction && !cmd.lsid.empty()) {
    auto pin = px_.take_pin(cmd.lsid);
    if (pin && cmd.name == "commitTransaction") written = pin->writes;
  }
  return written;
}

// Cursors the reply opened or exhausted, and the pin of a transaction that failed to start.
void MongoSession::note_reply(const rm::Command& cmd, const rm::ReplyFacts& facts,
                              const std::string& address) {
  if (facts.cursor_id && *facts.cursor_id != 0 && cmd.name != "getMore")
    px_.note_cursor(*facts.cursor_id, rm::CursorOwner{address, {}, conn_id_, cmd.lsid});
  if (cmd.name == "getMore" && facts.cursor_id && *facts.cursor_id == 0 && !cmd.cursors.empty())
    px_.forget_cursor(cmd.cursors.front());
  if (cmd.starts_transaction && !facts.ok && !cmd.lsid.empty()) px_.take_pin(cmd.lsid);
}

awaitable<bool> MongoSession::forward_command(const rm::Command& cmd, const wire::Msg& msg,
                                              const wire::Frame& frame, Clock::time_point started) {
  const auto rid = frame.header.request_id;
  auto cfg = rt_.config();
  auto topo = px_.topology();
  auto target = target_for(cmd, *topo);
  if (target.refused) {
    bool ok = co_await fail(cmd, rid, target, started);
    co_return ok;
  }
  auto cached = co_await from_cache(cmd, msg, cfg, *topo, rid, started);
  if (cached.served) co_return *cached.served;
  if (cached.filling) target = cached.primary;
  struct Finish {
    cache::Cache* c;
    cache::Lookup& l;
    ~Finish() {
      if (c && l.flight) c->finish(l);
    }
  } finish{rt_.cache.get(), cached.lookup};

  if (!target.server) {
    bool ok = co_await fail(cmd, rid, target, started);
    co_return ok;
  }
  const std::string address = target.server->address;
  const std::string_view route = target.route;  // "primary" | "secondary" (static)
  if (cmd.starts_transaction && !cmd.lsid.empty())
    px_.set_pin(cmd.lsid, rm::Pin{address, {}, Clock::now()});

  Buffer request(frame.message.begin(), frame.message.end());
  auto fwd = co_await exchange(*target.server, std::move(request));
  const auto written = writes_of(cmd);
  if (fwd.code != 0) {
    co_await bump(written);  // the write may have happened before the connection broke
    count(cmd.name, route, "network", started);
    if (msg.more_to_come()) co_return true;
    bool ok = co_await reply(rid, error_body(fwd.code, fwd.error));
    co_return ok;
  }
  if (fwd.reply.empty()) {  // moreToCome: no reply
    co_await bump(written);
    count(cmd.name, route, "ok", started);
    co_return true;
  }
  auto facts = rm::reply_facts(fwd.body);
  note_reply(cmd, facts, address);
  co_await bump(written);
  if (cached.filling) fill(cached.lookup, facts, fwd.body, *cfg);
  count(cmd.name, route, facts.ok ? "ok" : "error", started);
  bool ok = co_await send_reply(fwd.reply, rid);
  co_return ok;
}

}  // namespace sluice::server
