// The metrics registry and its text exposition (Prometheus exposition format 0.0.4).
#include "server/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

namespace sluice::metrics {

Histogram::Histogram(const std::vector<double>& bounds)
    : bounds_(bounds), counts_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds.size() + 1)) {
  for (std::size_t i = 0; i <= bounds.size(); ++i) counts_[i].store(0);
}

void Histogram::observe(double v) {
  auto it = std::lower_bound(bounds_.begin(), bounds_.end(), v);  // le: v <= bound
  counts_[static_cast<std::size_t>(it - bounds_.begin())].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
}

std::vector<double> exponential_buckets(double start, double factor, std::size_t count) {
  std::vector<double> b;
  double v = start;
  for (std::size_t i = 0; i < count; ++i, v *= factor) b.push_back(v);
  return b;
}

bool valid_name(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' ||
              (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

namespace {
// Backslash and newline always; double quotes only in label values (not in HELP text).
std::string escape(std::string_view v, bool quotes) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"' && quotes) {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}
std::string escape_help(std::string_view v) {
  return escape(v, false);
}
}  // namespace

std::string escape_label(std::string_view v) {
  return escape(v, true);
}

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof buf, "%.0f", v);
  } else {
    std::snprintf(buf, sizeof buf, "%.15g", v);  // shortest that reads back exactly
    if (std::strtod(buf, nullptr) != v) std::snprintf(buf, sizeof buf, "%.17g", v);
  }
  return buf;
}

void Writer::family(std::string_view name, std::string_view type, std::string_view help) {
  out_ += "# HELP ";
  out_ += name;
  out_ += ' ';
  out_ += escape_help(help);
  out_ += "\n# TYPE ";
  out_ += name;
  out_ += ' ';
  out_ += type;
  out_ += '\n';
}

void Writer::sample(std::string_view name, const std::vector<std::string>& label_names,
                    const LabelValues& values, double value) {
  out_ += name;
  if (!label_names.empty()) {
    out_ += '{';
    for (std::size_t i = 0; i < label_names.size(); ++i) {
      if (i > 0) out_ += ',';
      out_ += label_names[i];
      out_ += "=\"";
      out_ += escape_label(i < values.size() ? values[i] : std::string());
      out_ += '"';
    }
    out_ += '}';
  }
  out_ += ' ';
  out_ += format_value(value);
  out_ += '\n';
}

void Registry::check_new(const std::string& name, const std::vector<std::string>& labels) {
  if (!valid_name(name)) throw std::invalid_argument("invalid metric name: " + name);
  for (const auto& l : labels) {
    if (!valid_name(l) || l.starts_with("__") || l == "le")
      throw std::invalid_argument("invalid label name " + l + " in " + name);
  }
  auto taken = [&](const auto& families) {
    return std::any_of(families.begin(), families.end(),
                       [&](const auto& f) { return f->name() == name; });
  };
  if (taken(counters_) || taken(gauges_) || taken(histograms_))
    throw std::invalid_argument("metric registered twice: " + name);
}

Family<Counter>& Registry::counter(std::string name, std::string help,
                                   std::vector<std::string> labels, double scale) {
  std::lock_guard lock(mu_);
  check_new(name, labels);
  counters_.push_back(
      std::make_unique<Family<Counter>>(std::move(name), std::move(help), std::move(labels)));
  order_.push_back({counters_.back().get(), nullptr, nullptr, scale});
  return *counters_.back();
}

Family<Gauge>& Registry::gauge(std::string name, std::string help,
                               std::vector<std::string> labels) {
  std::lock_guard lock(mu_);
  check_new(name, labels);
  gauges_.push_back(
      std::make_unique<Family<Gauge>>(std::move(name), std::move(help), std::move(labels)));
  order_.push_back({nullptr, gauges_.back().get(), nullptr, 1});
  return *gauges_.back();
}

Family<Histogram>& Registry::histogram(std::string name, std::string help,
                                       std::vector<std::string> labels,
                                       std::vector<double> bounds) {
  std::lock_guard lock(mu_);
  check_new(name, labels);
  if (bounds.empty() || !std::is_sorted(bounds.begin(), bounds.end()) ||
      std::adjacent_find(bounds.begin(), bounds.end()) != bounds.end())
    throw std::invalid_argument("histogram buckets must be increasing: " + name);
  histograms_.push_back(std::make_unique<Family<Histogram>>(std::move(name), std::move(help),
                                                            std::move(labels), std::move(bounds)));
  order_.push_back({nullptr, nullptr, histograms_.back().get(), 1});
  return *histograms_.back();
}

void Registry::add_collector(std::function<void(Writer&)> collect) {
  std::lock_guard lock(mu_);
  collectors_.push_back(std::move(collect));
}

std::string Registry::expose() const {
  std::vector<Entry> order;
  std::vector<std::function<void(Writer&)>> collectors;
  {
    std::lock_guard lock(mu_);
    order = order_;
    collectors = collectors_;
  }
  std::string out;
  Writer w(out);
  for (const auto& e : order) {
    if (e.counter) {
      const auto& f = *e.counter;
      w.family(f.name(), "counter", f.help());
      f.each([&](const LabelValues& v, const Counter& c) {
        w.sample(f.name(), f.labels(), v, static_cast<double>(c.value()) * e.scale);
      });
    } else if (e.gauge) {
      const auto& f = *e.gauge;
      w.family(f.name(), "gauge", f.help());
      f.each([&](const LabelValues& v, const Gauge& g) {
        w.sample(f.name(), f.labels(), v, g.value());
      });
    } else {
      const auto& f = *e.histogram;
      w.family(f.name(), "histogram", f.help());
      auto names = f.labels();
      names.push_back("le");
      f.each([&](const LabelValues& v, const Histogram& h) {
        // One consistent-enough snapshot: buckets first, then count = the +Inf bucket.
        std::uint64_t cumulative = 0;
        auto values = v;
        values.push_back({});
        for (std::size_t i = 0; i <= h.bounds().size(); ++i) {
          cumulative += h.bucket(i);
          values.back() = i < h.bounds().size() ? format_value(h.bounds()[i]) : "+Inf";
          w.sample(f.name() + "_bucket", names, values, static_cast<double>(cumulative));
        }
        w.sample(f.name() + "_sum", f.labels(), v, h.sum());
        w.sample(f.name() + "_count", f.labels(), v, static_cast<double>(cumulative));
      });
    }
  }
  for (const auto& c : collectors) c(w);
  return out;
}

}  // namespace sluice::metrics
