// The MongoDB proxy's metrics: command counters and durations, and the gauges read at scrape time
// (server health, pools, open cursors and transactions).
#include "server/mongo/metrics.hpp"

#include "server/mongo.hpp"
#include "server/runtime.hpp"

namespace sluice::server {

MongoCounters::MongoCounters(metrics::Registry& r)
    : commands(r.counter("sluice_mongo_commands_total",
                         "MongoDB commands, by name (known names, else other), route "
                         "(primary, secondary, local, cache) and outcome (ok, error, "
                         "network).",
                         {"command", "route", "outcome"})),
      duration(r.histogram("sluice_mongo_command_duration_seconds",
                           "MongoDB commands: request read until its reply is ready, by route.",
                           {"route"},
                           {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                            0.25, 0.5, 1, 2.5, 5, 10})),
      cache(r.counter("sluice_mongo_cache_requests_total",
                      "Cacheable MongoDB reads, by result: hit, miss, bypass (Redis down, a "
                      "write not yet bumped).",
                      {"result"})),
      fills(r.counter("sluice_mongo_cache_fills_total", "MongoDB replies stored in the cache.")
                .with({})),
      bumps(r.counter("sluice_mongo_cache_invalidations_total",
                      "Collection version bumps made by MongoDB writes through sluice, by "
                      "result.",
                      {"result"})),
      malformed(r.counter("sluice_mongo_protocol_errors_total",
                          "MongoDB client connections closed for a malformed message, by "
                          "reason.",
                          {"reason"})),
      clients(r.gauge("sluice_mongo_clients", "MongoDB client connections open.").with({})) {}

namespace {

void write_servers(metrics::Writer& w, const MongoTopology& t) {
  w.family("sluice_mongo_server_up", "gauge",
           "1 when the MongoDB server answered its last check, by server and role.");
  for (const auto& s : t.servers)
    w.sample("sluice_mongo_server_up", {"server", "role"},
             {s.address, s.primary ? "primary" : "secondary"}, s.up ? 1 : 0);
  w.family("sluice_mongo_server_rtt_seconds", "gauge",
           "Round-trip time of hello to the MongoDB server (weighted average).");
  for (const auto& s : t.servers)
    w.sample("sluice_mongo_server_rtt_seconds", {"server"}, {s.address}, s.rtt_ms / 1000.0);
  w.family("sluice_mongo_server_lag_seconds", "gauge",
           "Replication lag of a MongoDB secondary (primary's lastWriteDate minus its own); "
           "absent while unknown.");
  for (const auto& s : t.servers) {
    if (s.lag_seconds)
      w.sample("sluice_mongo_server_lag_seconds", {"server"}, {s.address}, *s.lag_seconds);
  }
}

void write_pools(metrics::Writer& w, MongoCounters& counters) {
  w.family("sluice_mongo_pool_connections", "gauge",
           "Server connections of the MongoDB pools, by server and state (idle, active).");
  w.family("sluice_mongo_pool_waiting", "gauge",
           "MongoDB requests waiting for a server connection, by server.");
  std::lock_guard lock(counters.mu);
  for (const auto& [addr, g] : counters.pools) {
    w.sample("sluice_mongo_pool_connections", {"server", "state"}, {addr, "idle"},
             static_cast<double>(g->idle.load()));
    w.sample("sluice_mongo_pool_connections", {"server", "state"}, {addr, "active"},
             static_cast<double>(g->active.load()));
    w.sample("sluice_mongo_pool_waiting", {"server"}, {addr},
             static_cast<double>(g->waiting.load()));
  }
}

}  // namespace

void MongoProxy::add_collectors() {
  rt_.obs.registry.add_collector([this](metrics::Writer& w) {
    write_servers(w, *topology());
    write_pools(w, *counters_);
    const auto [cursors, pins] = open_counts();
    w.family("sluice_mongo_cursors_open", "gauge",
             "MongoDB cursors opened through sluice and not yet exhausted or killed.");
    w.sample("sluice_mongo_cursors_open", static_cast<double>(cursors));
    w.family("sluice_mongo_transactions_open", "gauge",
             "MongoDB transactions started through sluice and not yet committed or aborted.");
    w.sample("sluice_mongo_transactions_open", static_cast<double>(pins));
  });
}

}  // namespace sluice::server
