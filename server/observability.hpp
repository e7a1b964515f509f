// What sluice measures: the metric families sessions update, per-(database, user) counters,
// query insights, the backend monitor, and SHOW STATS totals and averages.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "routing/insights.hpp"
#include "routing/monitor.hpp"
#include "server/explainer.hpp"
#include "server/metrics.hpp"

namespace sluice::server {

class Runtime;

struct Probe {
  Probe() = default;
  Probe(bool ok_, std::string reason_) : ok(ok_), reason(std::move(reason_)) {}
  bool ok = false;
  std::string reason;                 // why not (JSON-safe plain text)
  std::vector<std::string> warnings;  // ready, but something works less well than it should
};
// A wall-clock time in UTC with strftime's `format`.
std::string format_utc(std::chrono::system_clock::time_point t, const char* format);

// /readyz: configuration loaded, listener accepting, every database's primary reachable (with
// learned roles: elected); a fenced server is a warning.
Probe readiness(Runtime& rt);

// Every server of every database as the health monitor last found it, with its role: as
// configured, or learned (databases.*.hosts: primary, replica, fenced, unknown). SHOW HOSTS,
// /status, the sluice_host_role metric and /readyz show these.
struct HostStatus {
  std::string database;
  std::string host;
  std::uint16_t port = 0;
  std::string address;  // host:port
  std::string role;
  bool learned = false;  // the role comes from the server, not the file
  std::optional<std::uint32_t> timeline;
  std::optional<bool> in_recovery;  // unknown before a check answered
  std::string error;                // the last check's, when it failed
  std::string why;                  // what a learned role rests on
};
std::vector<HostStatus> host_status(Runtime& rt);
// The WAL follower's freshness for `db` as every instance learns it (seconds behind now);
// nullopt before it was ever fresh or before the database's catalog is loaded.
std::optional<double> invalidation_lag_s(Runtime& rt, const std::string& db);
// The query cache's and the WAL follower's metric families (observability_cache.cpp).
void collect_cache(Runtime& rt, metrics::Writer& w);
// /healthz: every event loop ran its heartbeat recently.
Probe liveness(Runtime& rt);

// The counters of one (database, user), looked up once per client session.
struct PoolCounters {
  std::array<metrics::Counter*, 3> queries;  // by route: primary, replica, cache
  metrics::Counter* transactions;
  metrics::Counter* received_bytes;
  metrics::Counter* sent_bytes;
  metrics::Counter* query_us;  // time in requests
  metrics::Counter* xact_us;   // time in transactions
  metrics::Counter* wait_us;   // time clients waited for a server connection
  metrics::Counter* waits;
  metrics::Histogram* query_duration;
  // Reads that needed a WAL position (read consistency), by outcome: on a replica at once,
  // on a replica after waiting for it, on the primary because every replica was behind.
  enum Consistency : std::uint8_t { kReplica, kWaited, kPrimaryBehind };
  std::array<metrics::Counter*, 3> consistent;
  metrics::Counter* consistency_wait_us;  // time those reads waited for a replica
};

// SHOW STATS figures of one database.
struct DbTotals {
  double xacts = 0, queries = 0, received = 0, sent = 0, xact_us = 0, query_us = 0, wait_us = 0;
};

class Observability {
 public:
  Observability();
  std::shared_ptr<const PoolCounters> counters(const std::string& database,
                                               const std::string& user);
  // An ErrorResponse sent to a client, by SQLSTATE class.
  void count_error(std::string_view sqlstate);
  void count_pin(std::string_view reason);
  void count_slow(const std::string& database);
  void count_login(bool ok);
  void observe_cache_hit(double seconds) { cache_hit_duration_.observe(seconds); }

  // Totals by database, from the counters.
  std::map<std::string, DbTotals> totals() const;
  // PgBouncer's averages over the last stats period: per second for counts and bytes, per
  // transaction / query for times (µs).
  std::map<std::string, DbTotals> averages() const;
  void roll_stats_period(double seconds);  // called every stats_period

  // Families computed at scrape time from the runtime (pools, clients, process, insights).
  void add_runtime_collectors(Runtime& rt);

  metrics::Registry registry;
  routing::Insights insights;
  routing::Monitor monitor{std::chrono::seconds(1)};
  Explainer explainer{insights};

 private:
  metrics::Family<metrics::Counter>& queries_;
  metrics::Family<metrics::Counter>& transactions_;
  metrics::Family<metrics::Counter>& received_;
  metrics::Family<metrics::Counter>& sent_;
  metrics::Family<metrics::Counter>& query_us_;
  metrics::Family<metrics::Counter>& xact_us_;
  metrics::Family<metrics::Counter>& wait_us_;
  metrics::Family<metrics::Counter>& waits_;
  metrics::Family<metrics::Histogram>& query_duration_;
  metrics::Family<metrics::Counter>& consistent_;
  metrics::Family<metrics::Counter>& consistency_wait_us_;
  metrics::Family<metrics::Counter>& errors_;
  metrics::Family<metrics::Counter>& pins_;
  metrics::Family<metrics::Counter>& slow_;
  metrics::Family<metrics::Counter>& logins_;
  metrics::Histogram& cache_hit_duration_;

  mutable std::mutex mu_;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<PoolCounters>> by_pool_;
  std::map<std::string, DbTotals> period_start_;
  std::map<std::string, DbTotals> averages_;
};

}  // namespace sluice::server
