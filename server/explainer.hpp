// Plans of slow statements: EXPLAIN (FORMAT JSON) — never ANALYZE — on sluice's own libpq
// connection, on a thread of its own, for a sample of slow parameterless statements.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "routing/insights.hpp"

namespace sluice::server {

struct ExplainJob {
  routing::QueryEntryPtr entry;
  std::string host;
  std::uint16_t port = 5432;
  std::string dbname;
  std::string user;
  std::string password;
  std::uint64_t seq_scan_rows = 10'000;
};

class Explainer {
 public:
  explicit Explainer(routing::Insights& insights) : insights_(insights) {}
  ~Explainer() { stop(); }
  Explainer(const Explainer&) = delete;
  Explainer& operator=(const Explainer&) = delete;
  // Queues a job (dropped when 16 are waiting); starts the thread on first use.
  void submit(ExplainJob job);
  void stop();

 private:
  void loop();
  void run(const ExplainJob& job);
  routing::Insights& insights_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<ExplainJob> jobs_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace sluice::server
