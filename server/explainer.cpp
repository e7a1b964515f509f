// EXPLAIN of slow statements on a separate thread with blocking libpq: the event loops never wait.
#include "server/explainer.hpp"

#include <libpq-fe.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <memory>

namespace sluice::server {

namespace {
constexpr std::size_t kMaxQueued = 16;
using Result = std::unique_ptr<PGresult, decltype(&PQclear)>;

// One statement on `conn`: true when it gave `want`.
bool exec_ok(PGconn* conn, const char* sql, ExecStatusType want) {
  Result r(PQexec(conn, sql), PQclear);
  return PQresultStatus(r.get()) == want;
}
}  // namespace

void Explainer::submit(ExplainJob job) {
  std::lock_guard lock(mu_);
  if (stop_ || jobs_.size() >= kMaxQueued) return;
  jobs_.push_back(std::move(job));
  if (!thread_.joinable()) thread_ = std::thread([this] { loop(); });
  wake_.notify_one();
}

void Explainer::stop() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
    wake_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

void Explainer::loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    wake_.wait(lock, [this] { return stop_ || !jobs_.empty(); });
    if (stop_) return;
    auto job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    run(job);
    lock.lock();
  }
}

void Explainer::run(const ExplainJob& job) {
  // statement_timeout bounds planning of a pathological statement; EXPLAIN does not execute it.
  auto conn = routing::libpq_connect(
      job.server, {"sluice_explain", 5, "-c statement_timeout=5000 -c lock_timeout=1000"});
  const auto& e = *job.entry;
  if (PQstatus(conn.get()) != CONNECTION_OK) {
    spdlog::info("insights: cannot connect to EXPLAIN fingerprint {}: {}", e.id,
                 PQerrorMessage(conn.get()));
    return;
  }
  // The volatility of the functions it calls, as this database has them now.
  auto catalog = routing::load_function_catalog(conn.get());
  if (!catalog || !routing::explainable(routing::read_facts(job.sample), *catalog)) {
    spdlog::debug(
        "insights: fingerprint {} is not explained (not one plain read, or it calls "
        "a volatile function)",
        e.id);
    return;
  }
  // A read-only transaction that is rolled back, and the extended protocol, which runs exactly
  // one statement: nothing the text holds can write.
  if (!exec_ok(conn.get(), "BEGIN READ ONLY", PGRES_COMMAND_OK)) return;
  std::string sql = "EXPLAIN (VERBOSE, FORMAT JSON) " + job.sample;
  Result res(PQexecParams(conn.get(), sql.c_str(), 0, nullptr, nullptr, nullptr, nullptr, 0),
             PQclear);
  if (PQresultStatus(res.get()) != PGRES_TUPLES_OK || PQntuples(res.get()) < 1) {
    spdlog::info("insights: EXPLAIN of fingerprint {} failed: {}", e.id,
                 PQresultErrorMessage(res.get()));
    return;
  }
  auto facts = routing::plan_facts(PQgetvalue(res.get(), 0, 0));
  if (!facts) return;
  // A sequential scan matters on a large relation: its size from the statistics (reltuples).
  std::string summary;
  for (const auto& [schema, rel] : facts->seq_scans) {
    const char* params[] = {schema.c_str(), rel.c_str()};
    Result size(PQexecParams(conn.get(),
                             "SELECT c.reltuples::bigint FROM pg_catalog.pg_class c JOIN "
                             "pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                             "WHERE n.nspname = $1 AND c.relname = $2",
                             2, nullptr, params, nullptr, nullptr, 0),
                PQclear);
    if (PQresultStatus(size.get()) != PGRES_TUPLES_OK || PQntuples(size.get()) < 1) continue;
    long long rows = std::atoll(PQgetvalue(size.get(), 0, 0));
    if (rows < static_cast<long long>(job.seq_scan_rows)) continue;
    summary += (summary.empty() ? "" : "; ") + std::string("seq scan on ") + schema + "." + rel +
               " (" + std::to_string(rows) + " rows)";
  }
  if (summary.empty())
    summary =
        "no sequential scan on a relation over " + std::to_string(job.seq_scan_rows) + " rows";
  summary += facts->indexes.empty() ? "; no index used" : "; indexes:";
  for (const auto& i : facts->indexes) summary += " " + i;
  exec_ok(conn.get(), "ROLLBACK", PGRES_COMMAND_OK);
  insights_.set_plan(*job.entry, summary);
  spdlog::warn("slow query plan: fingerprint={}: {}: {}", e.id, summary, e.normalized);
}

}  // namespace sluice::server
