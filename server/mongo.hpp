// The MongoDB proxy: the listener's sessions (hello answered here as a mongos would), per-request
// pooled server connections, cursor and transaction ownership, read-preference routing over a
// topology that sluice monitors itself (static roles) or through libmongoc (mongo.uri), and the
// cache of complete find / aggregate results. docs/ARCHITECTURE.md "MongoDB proxy".
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "config/config.hpp"
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
    return {cursors_.size(), pins_.size()};
  }

  // A cursor's server, and the client it belongs to: the connection that opened it, or any
  // connection presenting the session it was opened in (drivers spread a cursor's getMores over
  // their pooled connections, always with its lsid).
  struct Owner {
    std::string address;
    Clock::time_point used;
    std::int64_t connection = 0;
    std::string lsid;
    bool allows(std::int64_t conn, const std::string& session) const {
      return conn == connection || (!lsid.empty() && session == lsid);
    }
  };
  struct Pin {
    std::string address;
    std::vector<std::pair<std::string, std::string>> writes;  // (db, collection) to bump at commit
    Clock::time_point used;
  };

 private:
  friend class MongoSession;
  void publish(std::shared_ptr<const MongoTopology> t);
  // What the static monitor last learnt of one server (touched only on its event loop).
  struct StaticCheck {
    bool checked = false;
    bool up = false;
    double rtt_ms = 0;
    std::optional<double> last_write;  // lastWrite.lastWriteDate, ms since the epoch
    std::int32_t max_wire_version = 0;
    std::string error = "not checked yet";
  };
  awaitable<void> watch_static();
  awaitable<void> check_static(std::size_t index, std::shared_ptr<std::vector<StaticCheck>> states);
  void publish_static(const std::vector<StaticCheck>& states);
  void watch_uri();
  void add_collectors();

  // Cursor id → owning server and client; session id → the server of its open transaction.
  std::optional<Owner> cursor_owner(std::int64_t id);
  void note_cursor(std::int64_t id, Owner owner);
  void forget_cursor(std::int64_t id);
  std::optional<Pin> pin(const std::string& lsid);
  void set_pin(const std::string& lsid, Pin p);
  void add_pin_writes(const std::string& lsid, const std::string& db, const std::string& coll);
  std::optional<Pin> take_pin(const std::string& lsid);
  // Session id → the client connection that used it first (only it may end the session; the
  // next connection to present it adopts it once that one has closed).
  void claim_session(const std::string& lsid, std::int64_t conn);
  bool may_end_session(const std::string& lsid, std::int64_t conn);
  void forget_session(const std::string& lsid);
  void connection_opened(std::int64_t conn);
  void connection_closed(std::int64_t conn);
  void prune(Clock::time_point now);  // under mu_

  Runtime& rt_;
  const config::Mongo cfg_;  // listen and servers as started (they change on restart only)
  mutable std::mutex mu_;
  std::shared_ptr<const MongoTopology> topology_;
  std::unordered_map<std::int64_t, Owner> cursors_;
  std::unordered_map<std::string, Pin> pins_;
  struct SessionOwner {
    std::int64_t connection;
    Clock::time_point used;
  };
  std::unordered_map<std::string, SessionOwner> sessions_;
  std::unordered_set<std::int64_t> open_connections_;
  Clock::time_point last_prune_{};
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
