// Query insights: fingerprints via libpg_query, per-fingerprint statistics, request tracking.
#include "routing/insights.hpp"

#include <pg_query.h>

#include <algorithm>
#include <boost/json.hpp>
#include <cmath>
#include <cstdio>

#include "protocol/pg/extended.hpp"
#include "routing/classify.hpp"
#include "routing/fnv1a.hpp"

namespace sluice::routing {

namespace {

constexpr double kFirstBound = 10e-6;
constexpr double kFactor = 1.4;
constexpr std::size_t kMaxNormalized = 2000;

}  // namespace

namespace {

std::string hex16(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

// Fingerprint and normalized text; unparseable text is its own fingerprint (hashed bytes).
QueryEntryPtr make_entry(const std::string& text) {
  auto e = std::make_shared<QueryEntry>();
  PgQueryFingerprintResult fp = pg_query_fingerprint(text.c_str());
  bool parsed = fp.error == nullptr;
  e->fingerprint = parsed ? fp.fingerprint : fnv1a(text) ^ 0x5a5a5a5a5a5a5a5aULL;
  pg_query_free_fingerprint_result(fp);
  e->normalized = normalized_text(text);
  e->id = hex16(e->fingerprint);
  if (parsed) {
    auto facts = read_facts(text);
    e->explain_candidate = facts.statements == 1 && facts.plain_select;
  }
  return e;
}

constexpr std::size_t kMaxSamples = 8;
constexpr std::size_t kMaxSampleBytes = 64 * 1024;

void walk_plan(const boost::json::object& node, PlanFacts& facts) {
  auto text = [&](const char* key) -> std::string {
    if (auto* v = node.if_contains(key); v && v->is_string()) return std::string(v->as_string());
    return {};
  };
  if (text("Node Type") == "Seq Scan") {
    std::pair<std::string, std::string> rel{text("Schema"), text("Relation Name")};
    if (std::find(facts.seq_scans.begin(), facts.seq_scans.end(), rel) == facts.seq_scans.end())
      facts.seq_scans.push_back(std::move(rel));
  }
  if (auto index = text("Index Name"); !index.empty()) {
    if (std::find(facts.indexes.begin(), facts.indexes.end(), index) == facts.indexes.end())
      facts.indexes.push_back(std::move(index));
  }
  if (auto* kids = node.if_contains("Plans"); kids && kids->is_array()) {
    for (const auto& k : kids->as_array()) {
      if (k.is_object()) walk_plan(k.as_object(), facts);
    }
  }
}

}  // namespace

std::string sample_identity(std::string_view database, std::string_view server_user) {
  std::string id(database);
  id += '\0';
  id += server_user;
  return id;
}

std::string normalized_text(std::string_view sql) {
  std::string out;
  std::string text(sql);
  PgQueryNormalizeResult n = pg_query_normalize(text.c_str());
  if (n.error == nullptr && n.normalized_query) out = n.normalized_query;
  pg_query_free_normalize_result(n);
  if (out.empty()) out = masked_text(sql);
  if (out.size() > kMaxNormalized) {
    out.resize(kMaxNormalized);
    out += "...";
  }
  return out;
}

std::optional<PlanFacts> plan_facts(std::string_view explain_json) {
  boost::json::error_code ec;
  auto doc = boost::json::parse(explain_json, ec);
  // EXPLAIN (FORMAT JSON) is an array with one object per statement, each holding "Plan".
  if (ec || !doc.is_array() || doc.as_array().empty() || !doc.as_array()[0].is_object())
    return std::nullopt;
  const auto* plan = doc.as_array()[0].as_object().if_contains("Plan");
  if (!plan || !plan->is_object()) return std::nullopt;
  PlanFacts facts;
  walk_plan(plan->as_object(), facts);
  return facts;
}

double LatencyBuckets::upper_bound(std::size_t i) {
  return kFirstBound * std::pow(kFactor, static_cast<double>(i));
}

void LatencyBuckets::add(double seconds) {
  std::size_t i = 0;
  if (seconds > kFirstBound) {
    i = static_cast<std::size_t>(std::ceil(std::log(seconds / kFirstBound) / std::log(kFactor)));
    i = std::min(i, kCount - 1);
  }
  ++n_[i];
  ++total_;
}

double LatencyBuckets::quantile(double q) const {
  if (total_ == 0) return 0;
  auto want = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total_)));
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < kCount; ++i) {
    seen += n_[i];
    if (seen >= want) return upper_bound(i);
  }
  return upper_bound(kCount - 1);
}

QueryEntryPtr Insights::resolve(std::string_view text, std::string_view identity) {
  auto keep_sample = [&](QueryEntry& e) {  // under mu_
    if (!e.explain_candidate || identity.empty() || text.size() > kMaxSampleBytes ||
        e.samples.size() >= kMaxSamples)
      return;
    for (const auto& s : e.samples) {
      if (s.first == identity) return;
    }
    e.samples.emplace_back(std::string(identity), std::string(text));
  };
  auto h = shape_hash(text);
  {
    std::lock_guard lock(mu_);
    if (auto it = by_text_.find(h); it != by_text_.end()) {
      keep_sample(*it->second);
      return it->second;
    }
  }
  auto fresh = make_entry(std::string(text));  // parse outside the lock
  std::lock_guard lock(mu_);
  if (by_text_.size() >= max_texts_) by_text_.clear();  // refilled from the fingerprints
  auto it = by_fingerprint_.find(fresh->fingerprint);
  if (it == by_fingerprint_.end()) {
    if (by_fingerprint_.size() >= max_fingerprints_) evict();  // before the newcomer joins
    it = by_fingerprint_.emplace(fresh->fingerprint, std::move(fresh)).first;
  }
  QueryEntryPtr entry = it->second;
  by_text_[h] = entry;
  keep_sample(*entry);
  return entry;
}

std::optional<std::string> Insights::sample(const QueryEntry& e, std::string_view identity) const {
  std::lock_guard lock(mu_);
  for (const auto& s : e.samples) {
    if (s.first == identity) return s.second;
  }
  return std::nullopt;
}

void Insights::evict() {
  std::vector<std::pair<double, std::uint64_t>> cost;
  cost.reserve(by_fingerprint_.size());
  for (const auto& [fp, e] : by_fingerprint_) cost.emplace_back(e->total_seconds, fp);
  auto drop = std::max<std::size_t>(by_fingerprint_.size() / 10, 1);
  std::nth_element(cost.begin(), cost.begin() + static_cast<std::ptrdiff_t>(drop - 1), cost.end());
  for (std::size_t i = 0; i < drop; ++i) by_fingerprint_.erase(cost[i].second);
  by_text_.clear();  // drop references to evicted entries; sessions keep theirs until done
}

std::optional<Insights::Slow> Insights::record(QueryEntry& e, double seconds, std::uint64_t rows,
                                               bool failed, Route route,
                                               SteadyClock::time_point now, double threshold,
                                               SteadyClock::duration interval) {
  std::lock_guard lock(mu_);
  ++e.calls;
  if (failed) ++e.errors;
  e.rows += rows;
  ++e.by_route[static_cast<std::size_t>(route)];
  e.total_seconds += seconds;
  e.max_seconds = std::max(e.max_seconds, seconds);
  e.latency.add(seconds);
  if (threshold <= 0 || seconds < threshold) return std::nullopt;
  ++e.slow_calls;
  ++e.slow_unlogged;
  if (e.slow_logged != SteadyClock::time_point{} && now - e.slow_logged < interval)
    return std::nullopt;
  e.slow_logged = now;
  Slow s{e.slow_unlogged};
  e.slow_unlogged = 0;
  return s;
}

bool Insights::take_explain(QueryEntry& e, SteadyClock::time_point now,
                            SteadyClock::duration interval) {
  std::lock_guard lock(mu_);
  if (e.explained != SteadyClock::time_point{} && now - e.explained < interval) return false;
  e.explained = now;
  return true;
}

void Insights::set_plan(QueryEntry& e, std::string plan) {
  std::lock_guard lock(mu_);
  e.plan = std::move(plan);
}

std::vector<QuerySnapshot> Insights::top(std::size_t n) const {
  std::vector<QuerySnapshot> out;
  {
    std::lock_guard lock(mu_);
    out.reserve(by_fingerprint_.size());
    for (const auto& [fp, e] : by_fingerprint_) {
      if (e->calls == 0) continue;
      out.push_back({e->id, e->normalized, e->calls, e->errors, e->rows, e->slow_calls, e->by_route,
                     e->total_seconds, e->total_seconds / static_cast<double>(e->calls),
                     std::min(e->latency.quantile(0.99), e->max_seconds), e->max_seconds, e->plan});
    }
  }
  auto by_total = [](const QuerySnapshot& a, const QuerySnapshot& b) {
    return a.total_seconds > b.total_seconds;
  };
  if (out.size() > n) {
    std::partial_sort(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(n), out.end(),
                      by_total);
    out.resize(n);
  } else {
    std::sort(out.begin(), out.end(), by_total);
  }
  return out;
}

std::size_t Insights::size() const {
  std::lock_guard lock(mu_);
  return by_fingerprint_.size();
}

void Insights::reset() {
  std::lock_guard lock(mu_);
  by_text_.clear();
  by_fingerprint_.clear();
}

std::uint64_t rows_from_tag(std::string_view tag) {
  // The row count is the last word for SELECT, INSERT (after the OID), UPDATE, DELETE, MERGE,
  // FETCH, MOVE and COPY; other tags carry none.
  static constexpr std::array<std::string_view, 8> kCounted{"SELECT", "INSERT", "UPDATE", "DELETE",
                                                            "MERGE",  "FETCH",  "MOVE",   "COPY"};
  auto space = tag.find(' ');
  if (space == std::string_view::npos) return 0;
  if (std::find(kCounted.begin(), kCounted.end(), tag.substr(0, space)) == kCounted.end()) return 0;
  auto last = tag.rfind(' ');
  std::uint64_t n = 0;
  for (char c : tag.substr(last + 1)) {
    if (c < '0' || c > '9') return 0;
    n = n * 10 + static_cast<std::uint64_t>(c - '0');
  }
  return n;
}

void RequestTracker::end_request(SteadyClock::time_point now, QueryEntryPtr entry) {
  begin(now);
  if (head_ > 0 && head_ == queue_.size()) {
    queue_.clear();
    head_ = 0;
  }
  queue_.push_back({std::move(entry), open_start_});
  open_ = false;
  open_entry_.reset();
}

void RequestTracker::on_answered(const pg::Frame& f) {
  if (f.type == 'C') {
    auto t = pg::decode_target(f.body);
    if (t && t->kind == 'S') names_.erase(std::string(t->name));
    return;
  }
  auto p = pg::decode_parse(f.body);
  if (f.type != 'P' || !p || !insights_) return;
  auto it = names_.find(std::string(p->name));
  if (it == names_.end() && names_.size() >= kMaxNames) return;
  auto entry = insights_->resolve(p->query, identity_);
  if (it == names_.end()) {
    names_.emplace(std::string(p->name), std::move(entry));
  } else {
    it->second = std::move(entry);
  }
}

void RequestTracker::on_client(const pg::Frame& f, SteadyClock::time_point now) {
  switch (f.type) {
    case 'Q': {
      auto sql = pg::decode_query(f.body);
      end_request(now, sql && insights_ ? insights_->resolve(*sql, identity_) : nullptr);
      break;
    }
    case 'P':
      begin(now);
      on_answered(f);
      break;
    case 'B': {
      begin(now);
      auto b = pg::decode_bind(f.body);
      if (!b || open_entry_) break;
      if (auto it = names_.find(std::string(b->statement)); it != names_.end())
        open_entry_ = it->second;
      break;
    }
    case 'C':
      begin(now);
      on_answered(f);
      break;
    case 'S':
      end_request(now, std::move(open_entry_));
      break;
    case 'F':
      end_request(now, nullptr);
      break;
    default:
      begin(now);
      break;
  }
}

std::optional<Completed> RequestTracker::on_server(const pg::Frame& f,
                                                   SteadyClock::time_point now) {
  if (!busy()) return std::nullopt;
  auto& r = queue_[head_];
  switch (f.type) {
    case 'C': {
      ++r.statements;
      auto tag = bytes::as_chars(f.body);
      if (auto nul = tag.find('\0'); nul != std::string_view::npos) tag = tag.substr(0, nul);
      r.rows += rows_from_tag(tag);
      return std::nullopt;
    }
    case 'E':
      ++r.statements;
      r.failed = true;
      return std::nullopt;
    case 'Z': {
      Completed c;
      c.entry = std::move(r.entry);
      c.seconds = std::chrono::duration<double>(now - r.start).count();
      c.rows = r.rows;
      c.statements = r.statements;
      c.failed = r.failed;
      c.tx_status = pg::decode_ready_for_query(f.body).value_or('E');
      ++head_;
      return c;
    }
    default:
      return std::nullopt;
  }
}

}  // namespace sluice::routing
