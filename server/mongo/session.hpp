// One MongoDB client connection: its request loop, the commands answered locally, forwarding to
// the server a command routes to, cursors, and the cache of complete read results.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "cache/cache.hpp"
#include "server/asio.hpp"
#include "server/framed_reader.hpp"
#include "server/mongo.hpp"
#include "server/mongo/internal.hpp"
#include "server/mongo/pools.hpp"
#include "server/stream.hpp"

namespace sluice::server {

class Runtime;
struct SessionHandle;

// Requests are handled one at a time (drivers do not pipeline on a connection); each forwarded
// request checks a server connection out and back in.
class MongoSession {
 public:
  MongoSession(MongoProxy& px, tcp::socket socket, std::size_t loop);
  awaitable<void> run();

 private:
  // The server a command goes to, or why none (refused: answered before the cache is asked).
  struct Target {
    const MongoServerState* server = nullptr;
    std::string_view route;  // "primary" | "secondary"
    std::int32_t code = 0;
    std::string error;
    bool refused = false;  // a cursor that is not this client's, or not known
  };
  struct Forwarded {
    Buffer reply;  // the whole reply message; empty when none (moreToCome, or an error)
    Span body;
    std::int32_t code = 0;
    std::string error;
  };
  // A cacheable read's lookup; `served` once a hit has been written to the client.
  struct CacheStep {
    cache::Lookup lookup;
    bool filling = false;  // a miss: the reply of `primary` fills the cache
    Target primary;
    std::optional<bool> served;
  };
  using Writes = std::vector<std::pair<std::string, std::string>>;  // (db, collection)

  // session.cpp: the request loop and replies.
  void open_handle();
  void close_handle();
  awaitable<void> refuse(Span pending, const wire::Failure& f);
  awaitable<bool> reply(std::int32_t response_to, Span body);
  awaitable<bool> fail(const rm::Command& cmd, std::int32_t rid, const Target& t,
                       Clock::time_point started);
  void count(std::string_view command, std::string_view route, std::string_view outcome,
             Clock::time_point started);
  awaitable<bool> handle(const wire::Frame& frame, Clock::time_point started);
  awaitable<bool> handle_query(const wire::Frame& frame, Clock::time_point started);
  awaitable<bool> handle_compressed(const wire::Frame& frame, Clock::time_point started);
  awaitable<bool> handle_msg(const wire::Frame& frame, Clock::time_point started);

  // local.cpp: what sluice answers itself.
  Buffer hello_body(Span request, bool legacy);
  bool allowed_by_config(const rm::Refusal& r);
  awaitable<bool> unauthorized(const rm::Command& cmd, const wire::Msg& msg, std::int32_t rid,
                               Clock::time_point started);
  awaitable<bool> local(const rm::Command& cmd, const wire::Msg& msg, std::int32_t rid,
                        Clock::time_point started);
  awaitable<void> end_sessions(const wire::Msg& msg, const std::string& db);
  Buffer whatsmyuri_body();
  std::pair<std::vector<std::string>, Buffer> own_sessions(Span body, const std::string& db);

  // forward.cpp: choosing a server and the round trip to it.
  const config::Mongo& mongo_config(const config::Config& cfg) const;
  Target choose(const MongoTopology& t, const rm::ReadPreference& pref);
  Target target_for(const rm::Command& cmd, const MongoTopology& topo);
  awaitable<Forwarded> exchange(const MongoServerState& server, Buffer message);
  awaitable<bool> send_reply(Buffer& reply, std::int32_t rid);
  awaitable<bool> forward_command(const rm::Command& cmd, const wire::Msg& msg,
                                  const wire::Frame& frame, Clock::time_point started);
  Writes writes_of(const rm::Command& cmd);
  void note_reply(const rm::Command& cmd, const rm::ReplyFacts& facts, const std::string& address);

  // caching.cpp: the cache of complete read results and its invalidation.
  std::string cache_ns(const std::string& db) const;
  awaitable<void> bump(const Writes& writes);
  awaitable<CacheStep> from_cache(const rm::Command& cmd, const wire::Msg& msg,
                                  std::shared_ptr<const config::Config> cfg,
                                  const MongoTopology& topo, std::int32_t rid,
                                  Clock::time_point started);
  void fill(cache::Lookup& lookup, const rm::ReplyFacts& facts, Span body,
            const config::Config& cfg);

  // cursors.cpp: cursor ownership and killCursors.
  Target not_owner(const rm::Command& cmd, std::int64_t id);
  awaitable<bool> kill_cursors(const rm::Command& cmd, const wire::Msg& msg,
                               const wire::Frame& frame, std::int32_t rid,
                               Clock::time_point started);

  MongoProxy& px_;
  Runtime& rt_;
  Stream client_;
  FramedReader reader_{16 * 1024};
  MongoPools& pools_;
  std::int64_t conn_id_;
  std::shared_ptr<SessionHandle> handle_;
  Buffer decompressed_;
  // Keys are views of static strings (command_label's table and route/outcome literals).
  std::map<std::tuple<std::string_view, std::string_view, std::string_view>,
           std::pair<metrics::Counter*, metrics::Histogram*>>
      metric_children_;
};

// The server at `address` in `t`, if it is still there.
const MongoServerState* find_server(const MongoTopology& t, const std::string& address);

}  // namespace sluice::server
