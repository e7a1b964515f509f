// Query insights, sans-I/O: requests matched to their replies per client (timing, rows, errors),
// aggregated per statement fingerprint (libpg_query) with bounded memory, slow-query decisions.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "protocol/pg/messages.hpp"
#include "routing/shape.hpp"

namespace sluice::routing {

using SteadyClock = std::chrono::steady_clock;

enum class Route : std::uint8_t { kPrimary, kReplica, kCache };
inline constexpr std::array<std::string_view, 3> kRouteNames{"primary", "replica", "cache"};

// Latency distribution with log-spaced buckets (10 µs × 1.4^i): p99 within 40%, fixed memory.
class LatencyBuckets {
 public:
  static constexpr std::size_t kCount = 64;
  void add(double seconds);
  // The upper bound of the bucket holding quantile q (0 with no samples).
  double quantile(double q) const;
  static double upper_bound(std::size_t i);

 private:
  std::array<std::uint32_t, kCount> n_{};
  std::uint64_t total_ = 0;
};

// One statement fingerprint: the same statement with other constants is the same entry.
struct QueryEntry {
  std::uint64_t fingerprint = 0;
  std::string id;          // fingerprint as 16 hex digits
  std::string normalized;  // constants replaced by $n (literals masked when unparseable)
  // One plain read (a single SELECT without writes or locks): its texts may be explained.
  bool explain_candidate = false;
  // Guarded by Insights' mutex: the first text seen per identity ("database\0server user"), so
  // a sample only ever runs with the credentials of the client that sent it. At most 8.
  std::vector<std::pair<std::string, std::string>> samples;
  // Guarded by Insights' mutex:
  std::uint64_t calls = 0;
  std::uint64_t errors = 0;
  std::uint64_t rows = 0;
  std::uint64_t slow_calls = 0;
  std::array<std::uint64_t, 3> by_route{};
  double total_seconds = 0;
  double max_seconds = 0;
  LatencyBuckets latency;
  SteadyClock::time_point slow_logged{};  // last slow-log line for it
  std::uint64_t slow_unlogged = 0;        // slow calls since that line
  std::string plan;                       // EXPLAIN summary, when sluice took one
  SteadyClock::time_point explained{};
};
using QueryEntryPtr = std::shared_ptr<QueryEntry>;

struct QuerySnapshot {
  std::string id;
  std::string normalized;
  std::uint64_t calls, errors, rows, slow_calls;
  std::array<std::uint64_t, 3> by_route;
  double total_seconds, mean_seconds, p99_seconds, max_seconds;
  std::string plan;
};

class Insights {
 public:
  explicit Insights(std::size_t max_fingerprints = 2000, std::size_t max_texts = 20000)
      : max_fingerprints_(max_fingerprints), max_texts_(max_texts) {}

  // The entry of this statement text (parsed once per distinct text, then cached); the text is
  // kept as the entry's sample for `identity` (see sample_identity) when it may be explained.
  QueryEntryPtr resolve(std::string_view text, std::string_view identity = {});
  // The sample `identity` sent for this entry, if any.
  std::optional<std::string> sample(const QueryEntry& e, std::string_view identity) const;

  struct Slow {
    std::uint64_t calls_since_last = 0;  // slow calls this line reports (this one included)
  };
  // Adds one finished call; a Slow when it is slower than `threshold` (> 0) and the entry was
  // not reported within `interval`.
  std::optional<Slow> record(QueryEntry& e, double seconds, std::uint64_t rows, bool failed,
                             Route route, SteadyClock::time_point now, double threshold,
                             SteadyClock::duration interval);
  // True when the entry is due an EXPLAIN (none within `interval`); marks it as taken.
  bool take_explain(QueryEntry& e, SteadyClock::time_point now, SteadyClock::duration interval);
  void set_plan(QueryEntry& e, std::string plan);

  // The n entries with the largest total time.
  std::vector<QuerySnapshot> top(std::size_t n) const;
  std::size_t size() const;
  void reset();

 private:
  void evict();  // under mu_: drops the least costly tenth of the fingerprints
  std::size_t max_fingerprints_;
  std::size_t max_texts_;
  mutable std::mutex mu_;
  std::unordered_map<std::uint64_t, QueryEntryPtr> by_text_;  // FNV-1a of the text → entry
  std::unordered_map<std::uint64_t, QueryEntryPtr> by_fingerprint_;
};

// Whose credentials a sample may run with: the database and the server user the client's
// statements ran as.
std::string sample_identity(std::string_view database, std::string_view server_user);

// Text fit to show (SHOW QUERIES, SHOW CACHE, logs, labels): libpg_query's normalized form, or
// masked_text when the parser refuses the text. Cut at 2000 characters.
std::string normalized_text(std::string_view sql);

// One finished request (a Query, or extended messages up to Sync, or a FunctionCall).
struct Completed {
  QueryEntryPtr entry;  // null when no statement text is known (e.g. Parse-only, FunctionCall)
  double seconds = 0;
  std::uint64_t rows = 0;
  std::uint32_t statements = 0;  // CommandComplete and ErrorResponse replies
  bool failed = false;
  char tx_status = 'I';  // from its ReadyForQuery
};

// Matches one client's requests to their replies. Feed it whole client messages 'Q','P','B','C',
// 'S','F' and the server messages forwarded to the client 'C','E','Z'.
class RequestTracker {
 public:
  explicit RequestTracker(Insights* insights) : insights_(insights) {}
  // The identity texts are sampled under (sample_identity); empty: none kept.
  void set_identity(std::string identity) { identity_ = std::move(identity); }
  void on_client(const pg::Frame& f, SteadyClock::time_point now);
  // A Parse or Close sluice answered itself: the names it defines, no request to time.
  void on_answered(const pg::Frame& f);
  std::optional<Completed> on_server(const pg::Frame& f, SteadyClock::time_point now);
  bool busy() const { return head_ < queue_.size(); }
  // No statement names, nothing in flight: a fresh tracker with the same identity is the same.
  bool fresh() const { return names_.empty() && !busy() && !open_ && !open_entry_; }
  void trim() {
    if (busy()) return;
    std::vector<Request>().swap(queue_);
    head_ = 0;
  }

 private:
  struct Request {
    QueryEntryPtr entry;
    SteadyClock::time_point start;
    std::uint64_t rows = 0;
    std::uint32_t statements = 0;
    bool failed = false;
  };
  void begin(SteadyClock::time_point now) {
    if (open_) return;
    open_start_ = now;
    open_ = true;
  }
  void end_request(SteadyClock::time_point now, QueryEntryPtr entry);
  static constexpr std::size_t kMaxNames = 10000;

  Insights* insights_;
  std::string identity_;
  std::unordered_map<std::string, QueryEntryPtr> names_;  // statement name → entry
  std::vector<Request> queue_;
  std::size_t head_ = 0;
  QueryEntryPtr open_entry_;  // the first bound statement of the request being sent
  SteadyClock::time_point open_start_{};
  bool open_ = false;
};

// What EXPLAIN (VERBOSE, FORMAT JSON) says about a plan: the relations read by sequential scans
// (schema, name) and the indexes used; nullopt when the document is not a plan.
struct PlanFacts {
  std::vector<std::pair<std::string, std::string>> seq_scans;
  std::vector<std::string> indexes;
};
std::optional<PlanFacts> plan_facts(std::string_view explain_json);

// Rows a CommandComplete tag reports ("SELECT 5", "INSERT 0 3", "UPDATE 2"; 0 otherwise).
std::uint64_t rows_from_tag(std::string_view tag);

}  // namespace sluice::routing
