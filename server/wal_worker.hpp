// The WAL follower's per-database worker (internal to wal_follower.cpp, which follows the
// stream, and wal_setup.cpp, which prepares the slot and probes the primary), and the libpq
// helpers both use.
#pragma once

#include <deque>
#include <set>
#include <span>
#include <string_view>

#include "protocol/pg/pgoutput.hpp"
#include "server/wal_follower.hpp"

namespace sluice::server::wal {

using Clock = std::chrono::steady_clock;

inline std::int64_t wall_ms(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}
inline std::string quote_ident(const std::string& s) {
  return '"' + s + '"';
}  // [a-z0-9_] only

// One query's result (cleared with it).
struct Result {
  PGresult* r = nullptr;
  Result() = default;
  Result(const Result&) = delete;
  Result& operator=(const Result&) = delete;
  ~Result() { PQclear(r); }
  int rows() const { return PQntuples(r); }
  const char* get(int row, int col) const { return PQgetvalue(r, row, col); }
};
// One query with text parameters; false with the server's message in `why` (and its SQLSTATE).
bool query(PGconn* conn, const std::string& sql, const std::vector<std::string>& params,
           Result& out, std::string& why, std::string* sqlstate = nullptr);

}  // namespace sluice::server::wal

namespace sluice::server {

namespace po = pg::pgoutput;
using wal::Clock;

class WalFollower::Worker {
 public:
  Worker(Target t, const Hooks& hooks) : t_(std::move(t)), hooks_(hooks) {}
  ~Worker() { stop(); }
  void start() {
    thread_ = std::thread([this] {
      run();
      done_ = true;
    });
  }
  void request_stop() { stop_ = true; }
  bool done() const { return done_ || !thread_.joinable(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  const std::string& database() const { return t_.database; }
  FollowerStatus status() const {
    std::lock_guard lock(mu_);
    return status_;
  }

 private:
  struct Probe {
    std::chrono::system_clock::time_point at;
    std::uint64_t lsn = 0;
  };

  void run();
  // One connection's life: set up, follow until it fails, the lease is lost or stop().
  void follow_once();
  bool choose_plugin(PGconn* conn);
  bool ensure_slot(PGconn* conn);
  std::string start_command() const;
  bool stream(PGconn* repl, PGconn* probe);
  bool on_copy_data(std::span<const std::uint8_t> bytes, PGconn* repl);
  bool on_message(const po::Message& m);
  bool on_line(std::string_view line, std::uint64_t at);
  bool bump_commit(std::uint64_t end_lsn);
  bool bump(const cache::Writes& w, std::uint64_t lsn);
  void on_keepalive(std::uint64_t wal_end);
  bool send_status(PGconn* repl, bool reply_requested);
  bool probe_primary(PGconn* probe);
  void read_retained(PGconn* probe);
  void set_state(const std::string& state, const std::string& error);
  void fail(const std::string& why);
  void pause(std::chrono::milliseconds d);

  Target t_;
  const Hooks& hooks_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> done_{false};
  mutable std::mutex mu_;
  FollowerStatus status_;
  std::string last_error_;  // logged once until it changes

  std::string ns_;
  bool in_txn_ = false;
  std::set<std::uint32_t> writes_;  // the open transaction's relations
  bool unknown_ = false;            // ... and some it could not name (the database's epoch)
  bool catalog_change_ = false;
  bool pgoutput_ = false;  // the slot's plugin: pgoutput (over the publication) or test_decoding
  std::map<std::uint32_t, std::string> relations_;  // relid → its shape as last announced
  std::uint64_t flushed_ = 0;                       // every commit before it is bumped
  std::deque<Probe> probes_;                        // waiting for the stream to pass them
  std::uint64_t segment_ = 16u << 20;               // wal_segment_size
  std::uint64_t newest_relation_ = 0;               // the newest permanent relation's OID
  // A slot was created (first start, or on a new primary after a failover: slots do not
  // survive one): commits before it were never followed, so the database's epoch is bumped
  // before the stream counts as fresh.
  bool epoch_pending_ = false;
  // Learned roles: the primary moved (or none is elected): false, and follow_once() ends.
  bool primary_current();
  static constexpr std::uint64_t kWalPage = 8192;  // XLOG_BLCKSZ
  static constexpr std::uint64_t kShortPageHeader = 24;
  static constexpr std::uint64_t kLongPageHeader = 40;  // the first page of a segment
};

}  // namespace sluice::server
