// The MongoDB proxy's server connections: one message read off a stream, and per event loop the
// pooled connections of each server with the clients waiting for one.
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "server/asio.hpp"
#include "server/framed_reader.hpp"
#include "server/mongo.hpp"
#include "server/mongo/internal.hpp"
#include "server/mongo/metrics.hpp"
#include "server/stream.hpp"

namespace sluice::server {

struct MongoConn {
  MongoConn(tcp::socket s, std::string a) : stream(std::move(s)), address(std::move(a)) {}
  Stream stream;
  FramedReader reader{4096};
  std::string address;
};

struct ReadMessage {
  error_code ec;
  std::optional<wire::Failure> bad;
  wire::Frame frame{};  // valid until the next read
};

// One whole message from `s`, checked against maxMessageSizeBytes before anything is buffered.
awaitable<ReadMessage> read_message(Stream& s, FramedReader& r);

// The server connections of one event loop: per server address, idle connections and clients
// waiting for one. Used only on that loop.
class MongoPools {
 public:
  explicit MongoPools(MongoCounters& counters) : counters_(counters) {}

  struct Checkout {
    std::unique_ptr<MongoConn> conn;
    std::int32_t code = 0;
    std::string error;
  };

  // An idle connection, a new one while the pool has room, or one freed within wait_timeout.
  awaitable<Checkout> get(const MongoServerState& server, const config::Mongo& cfg);
  // Returns a connection; `reusable` false closes it (an I/O error, a reply not yet read).
  void put(std::unique_ptr<MongoConn> conn, bool reusable);
  void close_all();
  // A new connection to `server` (the pools' and the static monitor's).
  awaitable<Checkout> connect(const MongoServerState& server, const config::Mongo& cfg);

 private:
  struct Slot {
    std::vector<std::unique_ptr<MongoConn>> idle;
    std::uint32_t open = 0;
    std::deque<std::shared_ptr<asio::steady_timer>> waiters;
    MongoCounters::PoolGauges* gauges = nullptr;
  };
  static void wake(Slot& slot) {
    if (!slot.waiters.empty()) slot.waiters.front()->cancel();
  }
  // An idle connection the server has not closed meanwhile, if any.
  static std::unique_ptr<MongoConn> take_idle(Slot& slot);

  MongoCounters& counters_;
  std::map<std::string, Slot> servers_;
};

}  // namespace sluice::server
