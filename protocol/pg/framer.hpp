// Splits PostgreSQL v3 byte streams into frames: untyped startup packets and typed messages.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <variant>

#include "protocol/common/bytes.hpp"

namespace sluice::pg {

using bytes::Span;

// Limits from the protocol (postgres' own MAX_STARTUP_PACKET_LENGTH is 10000).
inline constexpr std::uint32_t kMaxStartupPacket = 10000;
inline constexpr std::uint32_t kMaxMessageLength = 0x3fffffff;  // 1 GiB - 1, the server's cap
inline constexpr std::size_t kHeaderSize = 5;                   // type byte + int32 length

inline constexpr std::uint32_t kProtocolV3 = 196608;  // 3.0
inline constexpr std::uint32_t kSslRequestCode = 80877103;
inline constexpr std::uint32_t kGssEncRequestCode = 80877104;
inline constexpr std::uint32_t kCancelRequestCode = 80877102;

enum class FrameError {
  kLengthTooSmall,
  kLengthTooLarge,
};
std::string_view describe(FrameError e);

struct NeedMore {
  std::size_t bytes;  // at least this many more bytes are needed
};
struct Frame {
  char type;         // 0 for an untyped startup packet
  Span body;         // bytes after the length word
  std::size_t size;  // whole frame size in the buffer
};
struct FrameFailure {
  FrameError error;
  std::uint32_t declared_length;
};
using FrameResult = std::variant<NeedMore, Frame, FrameFailure>;

// First packet of a connection (and the packet after SSL/GSS negotiation): int32 len, payload.
FrameResult next_startup_frame(Span buf, std::uint32_t max_len = kMaxStartupPacket);

// A typed message: byte type, int32 len (counts itself), body. `max_len` caps the declared length.
FrameResult next_frame(Span buf, std::uint32_t max_len = kMaxMessageLength);

// Header of a typed message, for relays that stream bodies through without buffering them.
struct Header {
  char type;
  std::uint32_t length;  // as declared: includes the length word itself
  std::size_t total() const { return std::size_t{length} + 1; }
};
// Requires buf.size() >= kHeaderSize. Returns FrameFailure for a bad length.
std::variant<Header, FrameFailure> peek_header(Span buf, std::uint32_t max_len);

// Walks the whole typed messages at the front of a buffer, without copying; the one loop the
// session's request scans (routing, cache, refusals, fill capture) share:
//   FrameCursor c(data);
//   while (auto f = c.next()) { ... }   // c.offset(): where f ends
//   then c.failure() (a bad length), else c.need() more bytes complete the next message.
class FrameCursor {
 public:
  explicit FrameCursor(Span buf, std::uint32_t max_len = kMaxMessageLength)
      : buf_(buf), max_len_(max_len) {}
  // The next whole message; nullopt at the first incomplete or malformed one (or the end).
  std::optional<Frame> next();
  // Bytes of the whole messages returned so far.
  std::size_t offset() const { return pos_; }
  // After next() returned nullopt: bytes missing of the next message (a whole header's worth
  // when the buffer ended on a message boundary).
  std::size_t need() const { return need_; }
  // ... and the next message's declared size when its header is whole (0 otherwise).
  std::size_t partial_size() const { return partial_; }
  const std::optional<FrameFailure>& failure() const { return failure_; }

 private:
  Span buf_;
  std::uint32_t max_len_;
  std::size_t pos_ = 0;
  std::size_t need_ = 0;
  std::size_t partial_ = 0;
  std::optional<FrameFailure> failure_;
};

}  // namespace sluice::pg
