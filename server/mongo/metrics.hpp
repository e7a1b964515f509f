// The MongoDB proxy's metric families, and its server connection gauges by address.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "server/metrics.hpp"

namespace sluice::server {

struct MongoCounters {
  explicit MongoCounters(metrics::Registry& r);
  metrics::Family<metrics::Counter>& commands;
  metrics::Family<metrics::Histogram>& duration;
  metrics::Family<metrics::Counter>& cache;
  metrics::Counter& fills;
  metrics::Family<metrics::Counter>& bumps;
  metrics::Family<metrics::Counter>& malformed;
  metrics::Gauge& clients;
  // Pool figures by server address, written from every loop, read at scrape time.
  struct PoolGauges {
    std::atomic<std::int64_t> idle{0}, active{0}, waiting{0};
  };
  PoolGauges& pool(const std::string& address) {
    std::lock_guard lock(mu);
    auto& p = pools[address];
    if (!p) p = std::make_unique<PoolGauges>();
    return *p;
  }
  std::mutex mu;
  std::map<std::string, std::unique_ptr<PoolGauges>> pools;
};

}  // namespace sluice::server
