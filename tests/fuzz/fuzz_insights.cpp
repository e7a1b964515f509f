// libFuzzer: query insights fed arbitrary client messages, server replies in any order, and
// arbitrary EXPLAIN output — request tracking and plan parsing never crash, whatever arrives.
// Input starting with 'R' is SQL for the read/write classifier.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "routing/classify.hpp"
#include "routing/insights.hpp"

using namespace sluice;
using namespace sluice::pg;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static routing::Insights insights(50, 200);  // small bounds: eviction runs often
  if (size > 0 && data[0] == 'R') {            // SQL: classification, hints, the route rewrite
    std::string_view sql(reinterpret_cast<const char*>(data) + 1, size - 1);
    auto facts = routing::read_facts(sql);
    (void)routing::is_set_route_primary(sql);
    if (facts.read && !facts.parsed) __builtin_trap();  // unparsed SQL is never a read
    return 0;
  }
  if (size > 0 && data[0] == 'J') {  // EXPLAIN JSON
    (void)routing::plan_facts(std::string_view(reinterpret_cast<const char*>(data), size));
    return 0;
  }
  routing::RequestTracker tracker(&insights);
  auto now = routing::SteadyClock::time_point{} + std::chrono::hours(1);
  Span in(data, size);
  for (int guard = 0; guard < 2000 && !in.empty(); ++guard) {
    std::uint8_t selector = in[0];  // which side speaks, and how much time passes
    in = in.subspan(1);
    auto r = next_frame(in, 1 << 16);
    auto* f = std::get_if<Frame>(&r);
    if (f == nullptr) break;
    now += std::chrono::microseconds(selector);
    if ((selector & 1) == 0) {
      tracker.on_client(*f, now);
    } else if (auto done = tracker.on_server(*f, now); done && done->entry) {
      (void)insights.record(*done->entry, done->seconds, done->rows, done->failed,
                            routing::Route::kPrimary, now, 0.001, std::chrono::seconds(1));
    }
    in = in.subspan(f->size);
  }
  (void)insights.top(5);
  return 0;
}
