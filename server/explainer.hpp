// Plans of slow statements: EXPLAIN (FORMAT JSON) — never ANALYZE — on sluice's own libpq
// connection, on a thread of its own, for a sample of slow parameterless statements. Only a
// single plain read calling no volatile function is sent, inside BEGIN READ ONLY ... ROLLBACK,
// with the credentials of the client that sent that very text.
#pragma once

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

#include "routing/insights.hpp"
#include "routing/libpq.hpp"

namespace sluice::server {

struct ExplainJob {
  routing::QueryEntryPtr entry;
  std::string sample;           // the text, as the client whose login `server` is sent it
  routing::LibpqTarget server;  // the client's server, server user and tls.server_tls
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
