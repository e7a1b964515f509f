// MongoDB commands sluice answers itself: hello / isMaster (as a mongos would), ping,
// whatsmyuri, endSessions (told to every server), authentication (refused), and commands the
// unauthenticated listener does not open.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "server/mongo/session.hpp"
#include "server/runtime.hpp"

namespace sluice::server {

Buffer MongoSession::hello_body(Span request, bool legacy) {
  auto t = px_.topology();
  std::int32_t max_wire = 0;
  for (const auto& s : t->servers) {
    if (s.up && s.max_wire_version > 0)
      max_wire = max_wire == 0 ? s.max_wire_version : std::min(max_wire, s.max_wire_version);
  }
  if (max_wire == 0) max_wire = 17;  // MongoDB 6.0, until a server has answered
  bson_t b;
  bson_init(&b);
  if (field_true(request, "helloOk")) bson_append_bool(&b, "helloOk", 7, true);
  if (legacy)
    bson_append_bool(&b, "ismaster", 8, true);
  else
    bson_append_bool(&b, "isWritablePrimary", 17, true);
  bson_append_utf8(&b, "msg", 3, "isdbgrid", 8);
  bson_append_int32(&b, "maxBsonObjectSize", 17,
                    static_cast<std::int32_t>(wire::kMaxBsonObjectSize));
  bson_append_int32(&b, "maxMessageSizeBytes", 19,
                    static_cast<std::int32_t>(wire::kMaxMessageSize));
  bson_append_int32(&b, "maxWriteBatchSize", 17, 100'000);
  bson_append_date_time(&b, "localTime", 9,
                        std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count());
  bson_append_int32(&b, "logicalSessionTimeoutMinutes", 28, 30);
  bson_append_int64(&b, "connectionId", 12, conn_id_);
  bson_append_int32(&b, "minWireVersion", 14, 0);
  bson_append_int32(&b, "maxWireVersion", 14, max_wire);
  bson_append_bool(&b, "readOnly", 8, false);
  bson_append_double(&b, "ok", 2, 1.0);
  return to_buffer(&b);
}

bool MongoSession::allowed_by_config(const rm::Refusal& r) {
  auto cfg = rt_.config();
  const auto& allowed = mongo_config(*cfg).allow_commands;
  return !r.allow_as.empty() &&
         std::find(allowed.begin(), allowed.end(), r.allow_as) != allowed.end();
}

// A command the listener does not open to the clients it cannot authenticate: 13
// Unauthorized (as a server answers a user without the privilege), naming the setting.
awaitable<bool> MongoSession::unauthorized(const rm::Command& cmd, const wire::Msg& msg,
                                           std::int32_t rid, Clock::time_point started) {
  count(cmd.name, "local", "error", started);
  if (msg.more_to_come()) co_return true;
  const auto& r = *cmd.refusal;
  std::string text =
      "sluice refuses " +
      (r.allow_as.starts_with('$') ? "the stage " + r.allow_as : "command '" + cmd.name + "'") +
      " (" + r.what +
      "): its MongoDB listener does not authenticate clients, so it opens only "
      "what drivers need";
  text += r.allow_as.empty()
              ? " (sluice: no setting allows it; connect to the server directly)"
              : " (sluice: set mongo.allow_commands: [" + r.allow_as + "] to allow it)";
  bool ok = co_await reply(rid, error_body(code::kUnauthorized, text));
  co_return ok;
}

awaitable<bool> MongoSession::local(const rm::Command& cmd, const wire::Msg& msg, std::int32_t rid,
                                    Clock::time_point started) {
  Buffer body;
  if (cmd.name == "hello" || cmd.name == "isMaster" || cmd.name == "ismaster") {
    body = hello_body(msg.body, cmd.name != "hello");
  } else if (cmd.name == "endSessions") {
    co_await end_sessions(msg, cmd.db);
    body = ok_body();
  } else if (cmd.name == "saslStart" || cmd.name == "saslContinue" || cmd.name == "authenticate" ||
             cmd.name == "logout") {
    const Target t{nullptr, "", code::kAuthenticationFailed,
                   "sluice's MongoDB listener does not authenticate clients (its pooled "
                   "server connections are shared): connect without credentials, and "
                   "restrict who reaches listen.mongo"};
    bool ok = co_await fail(cmd, rid, t, started);
    co_return ok;
  } else if (cmd.name == "whatsmyuri") {
    body = whatsmyuri_body();
  } else {
    body = ok_body();  // ping
  }
  count(cmd.name, "local", "ok", started);
  if (msg.more_to_come()) co_return true;
  bool ok = co_await reply(rid, body);
  co_return ok;
}

// Sessions live on the servers: every reachable one is told (which aborts a transaction left
// open), and the pins of those sessions go. Only sessions this connection used first (or whose
// first connection has closed) are ended: another client's, with a guessed id, are left alone
// (servers expire idle sessions after 30 minutes anyway).
awaitable<void> MongoSession::end_sessions(const wire::Msg& msg, const std::string& db) {
  auto [ended, request_body] = own_sessions(msg.body, db);
  for (const auto& s : ended) {
    px_.take_pin(s);
    px_.forget_session(s);
  }
  auto topo = px_.topology();
  for (const auto& server : topo->servers) {
    if (!server.up || ended.empty()) continue;
    Buffer request;
    wire::encode_msg(request, 0, 0, 0, request_body);
    auto fwd = co_await exchange(server, std::move(request));
    if (fwd.code != 0) spdlog::debug("mongo: endSessions on {}: {}", server.address, fwd.error);
  }
}

Buffer MongoSession::whatsmyuri_body() {
  bson_t b;
  bson_init(&b);
  error_code ignored;
  auto ep = client_.socket().remote_endpoint(ignored);
  auto you = ep.address().to_string() + ":" + std::to_string(ep.port());
  bson_append_utf8(&b, "you", 3, you.c_str(), static_cast<int>(you.size()));
  bson_append_double(&b, "ok", 2, 1.0);
  return to_buffer(&b);
}

// The sessions of an endSessions this connection may end, and the command naming only those.
std::pair<std::vector<std::string>, Buffer> MongoSession::own_sessions(Span body,
                                                                       const std::string& db) {
  std::vector<std::string> ids;
  bson_t doc;
  bson_iter_t it;
  bson_iter_t list;
  bson_t out;
  bson_init(&out);
  bson_t arr;
  bson_append_array_begin(&out, "endSessions", 11, &arr);
  if (bson_init_static(&doc, body.data(), body.size()) && bson_iter_init(&it, &doc) &&
      bson_iter_next(&it) && BSON_ITER_HOLDS_ARRAY(&it) && bson_iter_recurse(&it, &list)) {
    while (bson_iter_next(&list)) {
      bson_iter_t id;
      if (!BSON_ITER_HOLDS_DOCUMENT(&list) || !bson_iter_recurse(&list, &id) ||
          !bson_iter_find(&id, "id") || !BSON_ITER_HOLDS_BINARY(&id))
        continue;
      bson_subtype_t st;
      std::uint32_t len = 0;
      const std::uint8_t* data = nullptr;
      bson_iter_binary(&id, &st, &len, &data);
      std::string lsid(reinterpret_cast<const char*>(data), len);
      if (!px_.may_end_session(lsid, conn_id_)) {
        spdlog::debug("mongo: client {}: endSessions of another connection's session ignored",
                      conn_id_);
        continue;
      }
      const auto key = std::to_string(ids.size());
      const auto element = sub_document(list);
      bson_t session;
      if (bson_init_static(&session, element.data(), element.size()))
        bson_append_document(&arr, key.c_str(), static_cast<int>(key.size()), &session);
      ids.push_back(std::move(lsid));
    }
  }
  bson_append_array_end(&out, &arr);
  bson_append_utf8(&out, "$db", 3, db.c_str(), static_cast<int>(db.size()));
  return {std::move(ids), to_buffer(&out)};
}

}  // namespace sluice::server
