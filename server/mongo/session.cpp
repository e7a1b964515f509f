// A MongoDB client connection's request loop: reading messages, OP_QUERY handshakes, OP_COMPRESSED
// unwrapping, OP_MSG dispatch, malformed input, and the command metrics.
#include "server/mongo/session.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "server/mongo/metrics.hpp"
#include "server/runtime.hpp"

namespace sluice::server {

MongoSession::MongoSession(MongoProxy& px, tcp::socket socket, std::size_t loop)
    : px_(px),
      rt_(px.rt_),
      client_(std::move(socket)),
      pools_(*px.pools_[loop]),
      conn_id_(++px.connection_ids_) {}

void MongoSession::open_handle() {
  {
    error_code ignored;
    auto remote = client_.socket().remote_endpoint(ignored);
    auto local = client_.socket().local_endpoint(ignored);
    std::lock_guard lock(handle_->mu());
    handle_->info.names =
        std::make_shared<const ClientNames>(ClientNames{"(mongo)", "(mongo)", {}});
    handle_->info.addr = remote.address().to_string();
    handle_->info.port = remote.port();
    handle_->info.local_addr = local.address().to_string();
    handle_->info.local_port = local.port();
  }
  handle_->kill = [this] { client_.close(); };
  handle_->state = ClientState::kActive;
  rt_.add_session(handle_);
  px_.connection_opened(conn_id_);
  px_.counters_->clients.add(1);
}

void MongoSession::close_handle() {
  handle_->kill = nullptr;
  rt_.remove_session(handle_);
  px_.connection_closed(conn_id_);
  px_.counters_->clients.add(-1);
  client_.close();
}

awaitable<void> MongoSession::run() {
  auto ex = co_await asio::this_coro::executor;
  handle_ = std::make_shared<SessionHandle>(ex);
  open_handle();
  error_code ignored;
  client_.socket().set_option(tcp::no_delay(true), ignored);
  while (!rt_.stopping || !handle_->idle) {
    handle_->idle = true;
    auto got = co_await read_message(client_, reader_);
    handle_->idle = false;
    if (got.ec) break;
    if (got.bad) {
      co_await refuse(reader_.pending(), *got.bad);
      break;
    }
    const auto started = Clock::now();
    handle_->request_time = std::chrono::duration_cast<std::chrono::seconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count();
    bool keep = co_await handle(got.frame, started);
    reader_.shrink(16 * 1024);
    if (!keep) break;
  }
  close_handle();
}

// A frame that cannot be read: the reason as an error reply when the header was readable,
// then the connection closes (its stream position is lost).
awaitable<void> MongoSession::refuse(Span pending, const wire::Failure& f) {
  px_.counters_->malformed.with({std::string(wire::describe(f.error))}).inc();
  spdlog::info("mongo: closing client {}: {}", conn_id_, f.detail);
  if (pending.size() < wire::kHeaderSize) co_return;
  std::int32_t request_id = 0;
  for (int i = 7; i >= 4; --i)
    request_id = (request_id << 8) | pending[static_cast<std::size_t>(i)];
  const auto c =
      f.error == wire::WireError::kLengthTooLarge ? code::kBSONObjectTooLarge : code::kBadValue;
  co_await reply(request_id, error_body(c, f.detail + " (sluice closes this connection)"));
}

awaitable<bool> MongoSession::reply(std::int32_t response_to, Span body) {
  Buffer out;
  wire::encode_msg(out, px_.next_request_id_++, response_to, 0, body);
  auto ec = co_await client_.write_all(asio::buffer(out));
  co_return !ec;
}

// A command refused before it reaches a server: counted as a local error, answered with why.
awaitable<bool> MongoSession::fail(const rm::Command& cmd, std::int32_t rid, const Target& t,
                                   Clock::time_point started) {
  count(cmd.name, "local", "error", started);
  auto body = error_body(t.code, t.error);
  bool ok = co_await reply(rid, body);
  co_return ok;
}

void MongoSession::count(std::string_view command, std::string_view route, std::string_view outcome,
                         Clock::time_point started) {
  // The children are looked up once per session and label triple (the family's lookup takes
  // a lock and builds the label strings).
  const auto label = rm::command_label(command);
  auto& slot = metric_children_[std::make_tuple(label, route, outcome)];
  if (!slot.first) {
    slot.first = &px_.counters_->commands.with(
        {std::string(label), std::string(route), std::string(outcome)});
    slot.second = &px_.counters_->duration.with({std::string(route)});
  }
  slot.first->inc();
  slot.second->observe(std::chrono::duration<double>(Clock::now() - started).count());
}

awaitable<bool> MongoSession::handle(const wire::Frame& frame, Clock::time_point started) {
  if (frame.header.op_code == wire::kOpQuery) {
    bool ok = co_await handle_query(frame, started);
    co_return ok;
  }
  if (frame.header.op_code == wire::kOpCompressed) {
    bool ok = co_await handle_compressed(frame, started);
    co_return ok;
  }
  if (frame.header.op_code != wire::kOpMsg) {
    const wire::Failure f{wire::WireError::kUnsupportedOpCode,
                          "opcode " + std::to_string(frame.header.op_code) +
                              " is not supported; sluice speaks OP_MSG"};
    co_await refuse(frame.message, f);
    co_return false;
  }
  bool ok = co_await handle_msg(frame, started);
  co_return ok;
}

// OP_QUERY: only the legacy handshake (hello / isMaster on admin.$cmd) is answered.
awaitable<bool> MongoSession::handle_query(const wire::Frame& frame, Clock::time_point started) {
  auto q = wire::decode_query(frame);
  if (auto* f = std::get_if<wire::Failure>(&q)) {
    co_await refuse(frame.message, *f);
    co_return false;
  }
  const auto& query = std::get<wire::Query>(q);
  auto name = wire::command_name(query.query);
  Buffer out;
  if (query.collection.ends_with(".$cmd") &&
      (name == "isMaster" || name == "ismaster" || name == "hello")) {
    wire::encode_reply(out, px_.next_request_id_++, frame.header.request_id,
                       hello_body(query.query, name != "hello"));
    count(name, "local", "ok", started);
  } else {
    wire::encode_reply(out, px_.next_request_id_++, frame.header.request_id,
                       error_body(code::kUnsupportedOpQueryCommand,
                                  "OP_QUERY is supported only for the hello / isMaster "
                                  "handshake; use OP_MSG (every driver since MongoDB 3.6)"));
    count(name, "local", "error", started);
  }
  auto ec = co_await client_.write_all(asio::buffer(out));
  co_return !ec;
}

namespace {

// `inner` re-framed as a plain message under `outer`'s header (its length and opcode rewritten).
Buffer reframe(const wire::Frame& outer, const wire::Frame& inner) {
  Buffer plain(wire::kHeaderSize + inner.body.size());
  std::copy_n(outer.message.begin(), wire::kHeaderSize, plain.begin());
  std::copy(inner.body.begin(), inner.body.end(), plain.begin() + wire::kHeaderSize);
  const auto len = static_cast<std::uint32_t>(plain.size());
  const auto op = static_cast<std::uint32_t>(inner.header.op_code);
  for (int i = 0; i < 4; ++i) {
    plain[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(len >> (8 * i));
    plain[static_cast<std::size_t>(12 + i)] = static_cast<std::uint8_t>(op >> (8 * i));
  }
  return plain;
}

}  // namespace

// OP_COMPRESSED: unwrapped and handled as the message inside (compression is never advertised,
// so this is rare).
awaitable<bool> MongoSession::handle_compressed(const wire::Frame& frame,
                                                Clock::time_point started) {
  auto inner = wire::decompress(frame);
  if (auto* f = std::get_if<wire::Failure>(&inner)) {
    co_await refuse(frame.message, *f);
    co_return false;
  }
  decompressed_ = reframe(frame, std::get<wire::Frame>(inner));
  auto again = wire::next_frame(decompressed_);
  if (!std::holds_alternative<wire::Frame>(again) ||
      std::get<wire::Frame>(again).header.op_code == wire::kOpCompressed) {
    const wire::Failure f{wire::WireError::kUnsupportedOpCode, "OP_COMPRESSED must wrap OP_MSG"};
    co_await refuse(frame.message, f);
    co_return false;
  }
  auto copy = std::get<wire::Frame>(again);
  bool keep = co_await handle(copy, started);
  co_return keep;
}

// OP_MSG: refused, answered here, or forwarded, by what the command is.
awaitable<bool> MongoSession::handle_msg(const wire::Frame& frame, Clock::time_point started) {
  auto decoded = wire::decode_msg(frame);
  if (auto* f = std::get_if<wire::Failure>(&decoded)) {
    co_await refuse(frame.message, *f);
    co_return false;
  }
  const auto& msg = std::get<wire::Msg>(decoded);
  auto cmd = rm::analyze(msg.body);
  const auto rid = frame.header.request_id;
  if (cmd.db.empty() || !cmd.pref_error.empty()) {
    const Target t{nullptr, "", cmd.db.empty() ? code::kNoDb : code::kFailedToParse,
                   cmd.db.empty() ? "OP_MSG requests require a $db argument" : cmd.pref_error};
    bool ok = co_await fail(cmd, rid, t, started);
    co_return ok;
  }
  if (cmd.refusal && !allowed_by_config(*cmd.refusal)) {
    bool ok = co_await unauthorized(cmd, msg, rid, started);
    co_return ok;
  }
  if (cmd.route == rm::Route::kLocal && cmd.name != "buildInfo" && cmd.name != "buildinfo") {
    bool ok = co_await local(cmd, msg, rid, started);
    co_return ok;
  }
  if (!cmd.lsid.empty()) px_.claim_session(cmd.lsid, conn_id_);
  if (cmd.name == "killCursors") {
    bool ok = co_await kill_cursors(cmd, msg, frame, rid, started);
    co_return ok;
  }
  bool ok = co_await forward_command(cmd, msg, frame, started);
  co_return ok;
}

}  // namespace sluice::server
