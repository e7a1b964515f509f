// sluice's own metrics registry (prometheus-cpp is not packaged): counters, gauges and histograms
// with labels, rendered in the Prometheus text exposition format (version 0.0.4).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::metrics {

using LabelValues = std::vector<std::string>;

class Counter {
 public:
  void inc(std::uint64_t n = 1) { v_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> v_{0};
};

class Gauge {
 public:
  void set(double v) { v_.store(v, std::memory_order_relaxed); }
  void add(double d) { v_.fetch_add(d, std::memory_order_relaxed); }
  double value() const { return v_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> v_{0};
};

class Histogram {
 public:
  explicit Histogram(const std::vector<double>& bounds);
  void observe(double v);
  // Non-cumulative count of bucket i (i == bounds().size() is +Inf).
  std::uint64_t bucket(std::size_t i) const { return counts_[i].load(std::memory_order_relaxed); }
  std::uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  double sum() const { return sum_.load(std::memory_order_relaxed); }
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double>& bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> counts_;
  std::atomic<std::uint64_t> count_{0};
  std::atomic<double> sum_{0};
};

// Writes samples of families computed at scrape time (pool states, process figures).
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  // Starts a family: "# HELP" and "# TYPE" lines. type: counter | gauge | histogram.
  void family(std::string_view name, std::string_view type, std::string_view help);
  void sample(std::string_view name, const std::vector<std::string>& label_names,
              const LabelValues& values, double value);
  void sample(std::string_view name, double value) { sample(name, {}, {}, value); }

 private:
  std::string& out_;
};

// Escapes a label value: backslash, double quote and newline.
std::string escape_label(std::string_view v);
// A sample value as Prometheus reads it: integers without exponent, +Inf, -Inf, NaN.
std::string format_value(double v);
// Valid metric / label name per the data model ([a-zA-Z_:][a-zA-Z0-9_:]*).
bool valid_name(std::string_view name);

template <typename T>
class Family {
 public:
  Family(std::string name, std::string help, std::vector<std::string> labels,
         std::vector<double> bounds = {})
      : name_(std::move(name)),
        help_(std::move(help)),
        labels_(std::move(labels)),
        bounds_(std::move(bounds)) {}
  // The child with these label values (one per label name); its address never changes, so
  // callers on the hot path look it up once and keep the reference.
  T& with(const LabelValues& values) {
    std::lock_guard lock(mu_);
    auto& slot = children_[values];
    if (!slot) {
      if constexpr (std::is_same_v<T, Histogram>) {
        slot = std::make_unique<T>(bounds_);
      } else {
        slot = std::make_unique<T>();
      }
    }
    return *slot;
  }
  template <typename F>
  void each(F&& f) const {
    std::lock_guard lock(mu_);
    for (const auto& [values, child] : children_) f(values, *child);
  }
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& labels() const { return labels_; }

 private:
  std::string name_;
  std::string help_;
  std::vector<std::string> labels_;
  std::vector<double> bounds_;
  mutable std::mutex mu_;
  std::map<LabelValues, std::unique_ptr<T>> children_;
};

// Families are created at start-up and live as long as the registry.
class Registry {
 public:
  // `scale` multiplies counter values on output (e.g. 1e-6 for a counter kept in microseconds
  // and exposed in seconds).
  Family<Counter>& counter(std::string name, std::string help, std::vector<std::string> labels = {},
                           double scale = 1);
  Family<Gauge>& gauge(std::string name, std::string help, std::vector<std::string> labels = {});
  Family<Histogram>& histogram(std::string name, std::string help, std::vector<std::string> labels,
                               std::vector<double> bounds);
  // Called at every scrape, after the registered families, to write computed families.
  void add_collector(std::function<void(Writer&)> collect);
  // The whole exposition, in registration order.
  std::string expose() const;

 private:
  struct Entry {
    Family<Counter>* counter = nullptr;
    Family<Gauge>* gauge = nullptr;
    Family<Histogram>* histogram = nullptr;
    double scale = 1;
  };
  void check_new(const std::string& name, const std::vector<std::string>& labels);
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Family<Counter>>> counters_;
  std::vector<std::unique_ptr<Family<Gauge>>> gauges_;
  std::vector<std::unique_ptr<Family<Histogram>>> histograms_;
  std::vector<Entry> order_;
  std::vector<std::function<void(Writer&)>> collectors_;
};

// Exponential bucket bounds: start, start*factor, ... (count bounds).
std::vector<double> exponential_buckets(double start, double factor, std::size_t count);

}  // namespace sluice::metrics
