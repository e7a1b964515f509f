// The WAL follower (cache.follow_wal): per database, a logical replication connection to the
// primary (a permanent slot: pgoutput over a publication, or test_decoding) whose commits bump the
// cache's relation versions with their commit LSN, so writes made straight on the primary
// invalidate cached results and raise the read-consistency marks like writes through sluice.
// Blocking libpq on a thread of its own per database; what it needs of Redis (the lease that
// lets one instance follow, the bumps, the freshness stamp) comes through Hooks.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cache/cache.hpp"
#include "routing/libpq.hpp"

namespace sluice::server {

struct FollowerStatus {
  std::string state = "starting";    // starting | standby | following | failing
  std::string error;                 // why it does not follow (failing), else empty
  std::string ns;                    // the cache namespace of the database ("" before connecting)
  std::uint64_t flushed_lsn = 0;     // acknowledged to the slot: every commit before it is bumped
  std::uint64_t primary_lsn = 0;     // the primary's WAL insert position at the last probe
  std::int64_t fresh_ms = 0;         // wall clock: every commit before it is bumped (0: never)
  std::int64_t retained_bytes = -1;  // WAL the slot holds back on the primary (-1: unknown)
  std::uint64_t commits = 0;         // commits that wrote published tables, bumped
  std::uint64_t bump_failures = 0;   // bumps that did not land (retried)
  bool leader = false;               // this instance holds the lease and follows
};

class WalFollower {
 public:
  struct Target {
    std::string database;         // the name clients use
    routing::LibpqTarget server;  // the primary, logged in as the follower's role
    std::string slot;
    std::string publication;
  };
  struct Hooks {
    // Where the database's primary is now (host, port), when its roles are learned
    // (databases.*.hosts); nullopt while none is elected. Unset: the target's server always.
    std::function<std::optional<std::pair<std::string, std::uint16_t>>(const std::string& db)>
        primary;
    // Takes or renews the lease on `ns` for this instance: true while it holds it.
    std::function<bool(const std::string& ns)> lease;
    std::function<void(const std::string& ns)> release;
    // Bumps what one commit in namespace `ns` (database `db`) wrote; true once Redis has it.
    std::function<bool(const std::string& ns, const std::string& db, const cache::Writes& w,
                       std::uint64_t lsn)>
        bump;
    // Every commit on the primary before the wall-clock time `fresh_ms` is bumped.
    std::function<void(const std::string& ns, std::int64_t fresh_ms)> fresh;
    // The newest permanent relation's OID as the last follower of `ns` recorded it (nullopt:
    // none recorded, or Redis did not answer), and recording it (true once Redis has it).
    std::function<std::optional<std::uint64_t>(const std::string& ns)> newest_relation;
    std::function<bool(const std::string& ns, std::uint64_t oid)> note_newest_relation;
    // A published relation changed shape (a Relation message that differs from the last one).
    std::function<void(const std::string& db)> catalog_changed;
    // The OID of relation schema.name of `db` in the cache's catalog (test_decoding names them);
    // nullopt when the catalog does not know it, 0 while the catalog is being fetched again.
    std::function<std::optional<std::uint32_t>(const std::string& db, const std::string& schema,
                                               const std::string& name)>
        resolve;
  };

  WalFollower(std::vector<Target> targets, Hooks hooks);
  ~WalFollower();
  WalFollower(const WalFollower&) = delete;
  WalFollower& operator=(const WalFollower&) = delete;

  void start();
  // Asks the threads to end (they give their leases back through the hooks): the event loops
  // must still run until stopped() (a drain waits for it).
  void request_stop();
  bool stopped() const;
  void stop();                                           // request_stop(), then joins the threads
  std::map<std::string, FollowerStatus> status() const;  // by database

  // How often the primary's position is read and a keepalive asked for: freshness moves in
  // these steps.
  static constexpr std::chrono::milliseconds kProbeInterval{100};
  static constexpr std::chrono::milliseconds kLeaseRenew{1000};
  static constexpr std::chrono::milliseconds kStandbyPoll{250};

 private:
  class Worker;
  Hooks hooks_;
  std::vector<std::unique_ptr<Worker>> workers_;
};

}  // namespace sluice::server
