// The MongoDB proxy: the listener's sessions (hello answered here as a mongos would), per-request
// pooled server connections, cursor and transaction ownership, read-preference routing over a
// topology that sluice monitors itself (static roles) or through libmongoc (mongo.uri), and the
// cache of complete find / aggregate results. Implemented in server/mongo/; docs/ARCHITECTURE.md
// "MongoDB proxy".
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "routing/mongo_ownership.hpp"
#include "server/asio.hpp"
#include "server/metrics.hpp"
#include "server/observability.hpp"

namespace sluice::server {

class Runtime;

// One server as the monitor last saw it.
struct MongoServerState {
  std::string address;  // host:port
  std::string host;
  std::uint16_t port = 0;
  bool primary = false;
  bool up = false;
  bool checked = false;
  double rtt_ms = 0;
  std::optional<double> lag_seconds;  // secondaries, from lastWrite dates
  std::map<std::string, std::string> tags;
  std::int32_t max_wire_version = 0;
  std::string error;  // why it is down
};

struct MongoTopology {
  std::vector<MongoServerState> servers;
};

class MongoPools;
struct MongoCounters;
struct MongoStaticCheck;  // server/mongo/topology.cpp

class MongoProxy {
 public:
  MongoProxy(Runtime& rt, const config::Mongo& cfg, std::size_t loops);
  ~MongoProxy();
  MongoProxy(const MongoProxy&) = delete;
  MongoProxy& operator=(const MongoProxy&) = delete;

  // Starts monitoring: static servers from a coroutine on `ex`, a URI on libmongoc's threads.
  void start(asio::any_io_executor ex);
  void stop();
  // Closes idle server connections of every loop (after the loops have stopped).
  void close_for_exit();

  awaitable<void> session(tcp::socket socket, std::size_t loop);

  std::shared_ptr<const MongoTopology> topology() const {
    std::lock_guard lock(mu_);
    return topology_;
  }
  // /readyz: the primary has answered its last check.
  Probe readiness() const;
  // Cursors and transactions opened through sluice and not yet finished.
  std::pair<std::size_t, std::size_t> open_counts() const {
    std::lock_guard lock(mu_);
    return {ownership_.cursor_count(), ownership_.pin_count()};
  }

 private:
  friend class MongoSession;
  void publish(std::shared_ptr<const MongoTopology> t);
  awaitable<void> watch_static();
  awaitable<void> check_static(std::size_t index,
                               std::shared_ptr<std::vector<MongoStaticCheck>> states);
  void publish_static(const std::vector<MongoStaticCheck>& states);
  void watch_uri();
  void add_collectors();

  // Cursor, session and transaction ownership (routing/mongo_ownership.hpp) under mu_, at the
  // time of the call.
  std::optional<routing::mongo::CursorOwner> cursor_owner(std::int64_t id);
  void note_cursor(std::int64_t id, routing::mongo::CursorOwner owner);
  void forget_cursor(std::int64_t id);
  std::optional<routing::mongo::Pin> pin(const std::string& lsid);
  void set_pin(const std::string& lsid, routing::mongo::Pin p);
  void add_pin_writes(const std::string& lsid, const std::string& db, const std::string& coll);
  std::optional<routing::mongo::Pin> take_pin(const std::string& lsid);
  void claim_session(const std::string& lsid, std::int64_t conn);
  bool may_end_session(const std::string& lsid, std::int64_t conn);
  void forget_session(const std::string& lsid);
  void connection_opened(std::int64_t conn);
  void connection_closed(std::int64_t conn);

  Runtime& rt_;
  const config::Mongo cfg_;  // listen and servers as started (they change on restart only)
  mutable std::mutex mu_;
  std::shared_ptr<const MongoTopology> topology_;
  routing::mongo::Ownership ownership_;             // under mu_
  std::vector<std::unique_ptr<MongoPools>> pools_;  // by event loop
  std::unique_ptr<MongoCounters> counters_;
  std::atomic<std::uint64_t> turn_{0};
  std::atomic<std::int32_t> next_request_id_{1};
  std::atomic<std::int64_t> connection_ids_{0};
  std::atomic<bool> stopping_{false};
  std::thread uri_thread_;
  std::mutex uri_mu_;
  std::condition_variable uri_cv_;
};

}  // namespace sluice::server
