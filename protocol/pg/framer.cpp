// Startup-packet and typed-message framing for the PostgreSQL v3 protocol.
#include "protocol/pg/framer.hpp"

namespace sluice::pg {

std::string_view describe(FrameError e) {
  switch (e) {
    case FrameError::kLengthTooSmall:
      return "invalid message length";
    case FrameError::kLengthTooLarge:
      return "message length exceeds the configured maximum";
  }
  return "invalid message";
}

FrameResult next_startup_frame(Span buf, std::uint32_t max_len) {
  if (buf.size() < 4) return NeedMore{4 - buf.size()};
  std::uint32_t len = bytes::load_be32(buf.data());
  // A startup packet carries at least the int32 code after the length word.
  if (len < 8) return FrameFailure{FrameError::kLengthTooSmall, len};
  if (len > max_len) return FrameFailure{FrameError::kLengthTooLarge, len};
  if (buf.size() < len) return NeedMore{len - buf.size()};
  return Frame{0, buf.subspan(4, len - 4), len};
}

std::variant<Header, FrameFailure> peek_header(Span buf, std::uint32_t max_len) {
  std::uint32_t len = bytes::load_be32(buf.data() + 1);
  if (len < 4) return FrameFailure{FrameError::kLengthTooSmall, len};
  if (len > max_len) return FrameFailure{FrameError::kLengthTooLarge, len};
  return Header{static_cast<char>(buf[0]), len};
}

FrameResult next_frame(Span buf, std::uint32_t max_len) {
  if (buf.size() < kHeaderSize) return NeedMore{kHeaderSize - buf.size()};
  auto h = peek_header(buf, max_len);
  if (auto* f = std::get_if<FrameFailure>(&h)) return *f;
  const auto& header = std::get<Header>(h);
  if (buf.size() < header.total()) return NeedMore{header.total() - buf.size()};
  return Frame{header.type, buf.subspan(kHeaderSize, header.length - 4), header.total()};
}

std::optional<Frame> FrameCursor::next() {
  if (failure_) return std::nullopt;
  auto r = next_frame(buf_.subspan(pos_), max_len_);
  if (auto* f = std::get_if<Frame>(&r)) {
    pos_ += f->size;
    return *f;
  }
  if (auto* bad = std::get_if<FrameFailure>(&r)) {
    failure_ = *bad;
    need_ = partial_ = 0;
    return std::nullopt;
  }
  need_ = std::get<NeedMore>(r).bytes;
  const std::size_t have = buf_.size() - pos_;
  partial_ = have >= kHeaderSize ? have + need_ : 0;
  return std::nullopt;
}

}  // namespace sluice::pg
