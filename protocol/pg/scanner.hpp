// Follows message boundaries in a relayed byte stream, stopping only at messages the caller
// inspects.
#pragma once

#include <array>

#include "protocol/pg/framer.hpp"

namespace sluice::pg {

// What the relay wants of a message type: pass it through blindly, or see it whole.
enum class Want : std::uint8_t { kPass, kWhole };
using WantTable = std::array<Want, 256>;

inline constexpr WantTable make_want_table(std::initializer_list<char> whole) {
  WantTable t{};
  for (char c : whole) t[static_cast<std::uint8_t>(c)] = Want::kWhole;
  return t;
}

// Bodies of passed-through messages are never buffered: a 1 GB DataRow streams through in pieces.
class MessageScanner {
 public:
  explicit MessageScanner(std::uint32_t max_len) : max_len_(max_len) {}

  struct Stop {
    enum Kind { kNeedMore, kInspect, kError } kind;
    std::size_t offset;      // bytes before this point may be forwarded
    std::size_t need = 0;    // kNeedMore: bytes still missing after data.size() (0 = any)
    Frame frame{};           // kInspect: the whole message at `offset`
    FrameFailure failure{};  // kError
  };

  // `on_header(Header)` is called once for each passed-through message (e.g. to count queries).
  template <typename OnHeader>
  Stop scan(Span data, const WantTable& want, OnHeader&& on_header) {
    std::size_t pos = 0;
    for (;;) {
      if (skip_ > 0) {
        std::size_t n = std::min(skip_, data.size() - pos);
        pos += n;
        skip_ -= n;
        if (skip_ > 0) return {Stop::kNeedMore, pos};
      }
      std::size_t avail = data.size() - pos;
      if (avail < kHeaderSize) return {Stop::kNeedMore, pos, kHeaderSize - avail};
      auto h = peek_header(data.subspan(pos), max_len_);
      if (auto* f = std::get_if<FrameFailure>(&h)) return {Stop::kError, pos, 0, {}, *f};
      const auto& header = std::get<Header>(h);
      if (want[static_cast<std::uint8_t>(header.type)] == Want::kWhole) {
        if (avail < header.total()) return {Stop::kNeedMore, pos, header.total() - avail};
        return {
            Stop::kInspect, pos, 0,
            Frame{header.type, data.subspan(pos + kHeaderSize, header.length - 4), header.total()}};
      }
      on_header(header);
      skip_ = header.total();
    }
  }

  // True while inside a passed-through message (the stream is not at a message boundary).
  bool mid_message() const { return skip_ > 0; }

 private:
  std::uint32_t max_len_;
  std::size_t skip_ = 0;
};

}  // namespace sluice::pg
