// Bounds-checked big-endian byte reader and growable writer shared by the wire codecs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::bytes {

using Span = std::span<const std::uint8_t>;

inline std::uint32_t load_be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}
inline std::uint16_t load_be16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>((p[0] << 8) | p[1]);
}

inline std::string_view as_chars(Span s) {
  return {reinterpret_cast<const char*>(s.data()), s.size()};
}
inline Span as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// Reads fields from a span; every read checks the remaining length and fails sticky.
class Reader {
 public:
  explicit Reader(Span data) : data_(data) {}

  bool ok() const { return ok_; }
  std::size_t remaining() const { return ok_ ? data_.size() - pos_ : 0; }
  bool at_end() const { return ok_ && pos_ == data_.size(); }

  std::uint8_t u8() {
    if (!need(1)) return 0;
    return data_[pos_++];
  }
  std::uint16_t u16() {
    if (!need(2)) return 0;
    auto v = load_be16(data_.data() + pos_);
    pos_ += 2;
    return v;
  }
  std::uint32_t u32() {
    if (!need(4)) return 0;
    auto v = load_be32(data_.data() + pos_);
    pos_ += 4;
    return v;
  }
  std::int32_t i32() { return static_cast<std::int32_t>(u32()); }
  std::int16_t i16() { return static_cast<std::int16_t>(u16()); }
  // Little-endian fields (the MongoDB wire protocol and BSON).
  std::uint32_t u32le() {
    if (!need(4)) return 0;
    const auto* p = data_.data() + pos_;
    pos_ += 4;
    return std::uint32_t{p[0]} | (std::uint32_t{p[1]} << 8) | (std::uint32_t{p[2]} << 16) |
           (std::uint32_t{p[3]} << 24);
  }
  std::int32_t i32le() { return static_cast<std::int32_t>(u32le()); }
  std::int64_t i64le() {
    const std::uint64_t lo = u32le();
    const std::uint64_t hi = u32le();
    return static_cast<std::int64_t>(lo | (hi << 32));
  }
  std::size_t pos() const { return pos_; }

  // A NUL-terminated string; the view excludes the terminator.
  std::string_view cstr() {
    if (!ok_) return {};
    const auto* begin = data_.data() + pos_;
    const auto* nul = static_cast<const std::uint8_t*>(std::memchr(begin, 0, data_.size() - pos_));
    if (nul == nullptr) {
      ok_ = false;
      return {};
    }
    std::string_view out(reinterpret_cast<const char*>(begin),
                         static_cast<std::size_t>(nul - begin));
    pos_ += out.size() + 1;
    return out;
  }
  Span take(std::size_t n) {
    if (!need(n)) return {};
    Span out = data_.subspan(pos_, n);
    pos_ += n;
    return out;
  }
  Span rest() { return take(remaining()); }

 private:
  bool need(std::size_t n) {
    if (!ok_ || data_.size() - pos_ < n) {
      ok_ = false;
      return false;
    }
    return true;
  }
  Span data_;
  std::size_t pos_ = 0;
  bool ok_ = true;
};

// Appends big-endian fields; `begin_message` / `end_message` patch the length word.
class Writer {
 public:
  explicit Writer(std::vector<std::uint8_t>& out) : out_(out) {}

  void u8(std::uint8_t v) { out_.push_back(v); }
  void u16(std::uint16_t v) {
    out_.push_back(static_cast<std::uint8_t>(v >> 8));
    out_.push_back(static_cast<std::uint8_t>(v));
  }
  void u32(std::uint32_t v) {
    for (int shift = 24; shift >= 0; shift -= 8)
      out_.push_back(static_cast<std::uint8_t>(v >> shift));
  }
  void i32(std::int32_t v) { u32(static_cast<std::uint32_t>(v)); }
  void i16(std::int16_t v) { u16(static_cast<std::uint16_t>(v)); }
  void raw(Span s) { out_.insert(out_.end(), s.begin(), s.end()); }
  void raw(std::string_view s) { raw(as_bytes(s)); }
  void cstr(std::string_view s) {
    raw(s);
    out_.push_back(0);
  }

  // Starts a typed message (type byte 0 = untyped startup packet); returns the length offset.
  std::size_t begin_message(char type) {
    if (type != 0) out_.push_back(static_cast<std::uint8_t>(type));
    std::size_t at = out_.size();
    u32(0);
    return at;
  }
  void end_message(std::size_t length_at) {
    auto len = static_cast<std::uint32_t>(out_.size() - length_at);
    for (int i = 0; i < 4; ++i)
      out_[length_at + static_cast<std::size_t>(i)] =
          static_cast<std::uint8_t>(len >> (24 - 8 * i));
  }

 private:
  std::vector<std::uint8_t>& out_;
};

}  // namespace sluice::bytes
