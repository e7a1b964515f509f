// MongoDB cursors across clients: a getMore or killCursors of another client's cursor is
// refused, and killCursors is split by the server owning each id, the replies merged into one.
#include <spdlog/spdlog.h>

#include <array>

#include "server/mongo/session.hpp"

namespace sluice::server {

// A cursor another client opened: 13 Unauthorized, as mongos answers a getMore or killCursors
// of a cursor another user created (it exists, but not for this client).
MongoSession::Target MongoSession::not_owner(const rm::Command& cmd, std::int64_t id) {
  spdlog::info("mongo: client {}: {} of cursor {} refused: another client's", conn_id_, cmd.name,
               id);
  return {nullptr, "", code::kUnauthorized,
          "cursor id " + std::to_string(id) +
              " was not created by this client: sluice binds a cursor to the connection that "
              "opened it and to the session it was opened in (send the cursor's lsid from "
              "another connection)",
          true};
}

namespace {

// The id lists of killCursors replies, merged over the servers, under their reply keys.
struct KillLists {
  std::vector<std::int64_t> killed, not_found, alive, unknown;
  std::array<std::pair<const char*, std::vector<std::int64_t>*>, 4> by_key() {
    return {{{"cursorsKilled", &killed},
             {"cursorsNotFound", &not_found},
             {"cursorsAlive", &alive},
             {"cursorsUnknown", &unknown}}};
  }
};

// {killCursors: collection, cursors: ids, $db} for one server.
Buffer kill_request(const rm::Command& cmd, const std::vector<std::int64_t>& ids) {
  Buffer request;
  bson_t b;
  bson_init(&b);
  bson_append_utf8(&b, "killCursors", 11, cmd.collection.c_str(),
                   static_cast<int>(cmd.collection.size()));
  bson_t arr;
  bson_append_array_begin(&b, "cursors", 7, &arr);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto key = std::to_string(i);
    bson_append_int64(&arr, key.c_str(), static_cast<int>(key.size()), ids[i]);
  }
  bson_append_array_end(&b, &arr);
  bson_append_utf8(&b, "$db", 3, cmd.db.c_str(), static_cast<int>(cmd.db.size()));
  wire::encode_msg(request, 0, 0, 0, span_of(&b));
  bson_destroy(&b);
  return request;
}

// Appends the id lists of one server's killCursors reply to `lists`.
void merge_kill_reply(Span body, KillLists& lists) {
  bson_t doc;
  bson_iter_t it;
  bson_init_static(&doc, body.data(), body.size());
  for (auto [key, out] : lists.by_key()) {
    bson_iter_t list;
    if (bson_iter_init_find(&it, &doc, key) && BSON_ITER_HOLDS_ARRAY(&it) &&
        bson_iter_recurse(&it, &list)) {
      while (bson_iter_next(&list)) out->push_back(bson_iter_as_int64(&list));
    }
  }
}

// The merged reply: each list under its key, and ok: 1.
Buffer kill_reply(KillLists& lists) {
  bson_t b;
  bson_init(&b);
  for (auto [key, list] : lists.by_key()) {
    bson_t arr;
    bson_append_array_begin(&b, key, -1, &arr);
    for (std::size_t i = 0; i < list->size(); ++i) {
      auto k = std::to_string(i);
      bson_append_int64(&arr, k.c_str(), static_cast<int>(k.size()), (*list)[i]);
    }
    bson_append_array_end(&b, &arr);
  }
  bson_append_double(&b, "ok", 2, 1.0);
  return to_buffer(&b);
}

}  // namespace

// killCursors: each server gets the ids it owns; the replies are merged into one.
awaitable<bool> MongoSession::kill_cursors(const rm::Command& cmd, const wire::Msg& msg,
                                           const wire::Frame& frame, std::int32_t rid,
                                           Clock::time_point started) {
  auto topo = px_.topology();
  for (auto id : cmd.cursors) {  // nothing is killed when one of them is another client's
    auto owner = px_.cursor_owner(id);
    if (owner && !owner->allows(conn_id_, cmd.lsid)) {
      const auto refused = not_owner(cmd, id);
      bool ok = co_await fail(cmd, rid, refused, started);
      co_return ok;
    }
  }
  std::map<std::string, std::vector<std::int64_t>> by_owner;
  std::vector<std::int64_t> unknown;
  for (auto id : cmd.cursors) {
    auto owner = px_.cursor_owner(id);
    if (owner && find_server(*topo, owner->address))
      by_owner[owner->address].push_back(id);
    else
      unknown.push_back(id);
    px_.forget_cursor(id);
  }
  KillLists lists;
  lists.not_found = unknown;
  for (const auto& [address, ids] : by_owner) {
    Buffer request = by_owner.size() == 1 && unknown.empty()
                         ? Buffer(frame.message.begin(), frame.message.end())
                         : kill_request(cmd, ids);
    auto fwd = co_await exchange(*find_server(*topo, address), std::move(request));
    if (fwd.code != 0 || fwd.reply.empty()) {
      lists.unknown.insert(lists.unknown.end(), ids.begin(), ids.end());
      continue;
    }
    merge_kill_reply(fwd.body, lists);
  }
  count(cmd.name, "local", "ok", started);
  if (msg.more_to_come()) co_return true;
  auto body = kill_reply(lists);
  bool ok = co_await reply(rid, body);
  co_return ok;
}

}  // namespace sluice::server
