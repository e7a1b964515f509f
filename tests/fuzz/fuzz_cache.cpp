// libFuzzer: the cache's readers of untrusted text — SQL analysed for cacheability and writes,
// Redis replies in any split, cached reply bytes checked before they are replayed, Redis URLs and
// search_path values. The first byte picks the reader.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "cache/analysis.hpp"
#include "cache/cache.hpp"
#include "cache/redis.hpp"
#include "cache/relations.hpp"
#include "cache/request.hpp"

using namespace sluice;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch (data[0]) {
    case 'M': {  // client messages the cache may answer, and server replies captured for a fill
      const bytes::Span msgs(data + 1, size - 1);
      auto named = [](std::string_view name) -> std::optional<cache::NamedStatement> {
        static const std::vector<std::uint32_t> types{23};
        if (name == "s1") return cache::NamedStatement{"SELECT $1", &types};
        return std::nullopt;
      };
      auto r = cache::scan_request(msgs, 64 * 1024, named);
      if (r.kind == cache::RequestScan::kCandidate &&
          (r.size > msgs.size() || r.size == 0 || r.request.material.empty()))
        __builtin_trap();
      if (r.kind == cache::RequestScan::kNeedMore && r.need == 0) __builtin_trap();
      cache::FillCapture capture;  // fed in two pieces
      const auto half = msgs.size() / 2;
      auto step = capture.append(msgs.first(half), 4096);
      if (step == cache::FillCapture::Step::kMore) step = capture.append(msgs.subspan(half), 4096);
      if (capture.reply().size() > msgs.size()) __builtin_trap();
      break;
    }
    case 'S': {  // SQL
      auto f = cache::cache_facts(in);
      // Only a parsed single SELECT is cacheable, and it writes nothing.
      if (f.select && (!f.parsed || !f.writes.empty() || f.writes_unknown)) __builtin_trap();
      if (!f.parsed && !f.writes_unknown) __builtin_trap();  // unparsed SQL may write anything
      break;
    }
    case 'R': {  // Redis replies, fed in chunks whose sizes come from the input itself
      cache::ReplyParser p;
      std::size_t pos = 0;
      bool broken = false;
      while (pos < in.size() && !broken) {
        const std::size_t step = 1 + static_cast<unsigned char>(in[pos]) % 16;
        p.feed(in.substr(pos, step));
        pos += step;
        while (auto r = p.next(broken)) (void)r;
      }
      break;
    }
    case 'V': {  // a cached value about to be replayed
      if (cache::replayable_reply(in)) {
        // Whatever is replayable ends with a CommandComplete or EmptyQueryResponse.
        if (in.size() < 5) __builtin_trap();
      }
      break;
    }
    case 'U': {
      std::string why;
      if (!cache::parse_redis_url(in, &why) && why.empty()) __builtin_trap();
      break;
    }
    default:
      (void)cache::parse_search_path(in, "role");
  }
  return 0;
}
