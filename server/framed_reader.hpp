// Buffered reading of whole PostgreSQL frames from a Stream, for login phases and internal queries.
#pragma once

#include <optional>
#include <vector>

#include "protocol/pg/framer.hpp"
#include "server/stream.hpp"

namespace sluice::server {

struct ReadFrame {
  error_code ec;                        // I/O error, or EOF
  std::optional<pg::FrameFailure> bad;  // malformed length
  pg::Frame frame{};                    // valid until the next read
};

class FramedReader {
 public:
  explicit FramedReader(std::size_t capacity = 16 * 1024) : buf_(capacity) {}

  // Reads one whole frame: a startup packet (`startup`) or a typed message.
  awaitable<ReadFrame> next(Stream& s, bool startup, std::uint32_t max_len) {
    for (;;) {
      auto avail = pending();
      auto r = startup ? pg::next_startup_frame(avail, max_len) : pg::next_frame(avail, max_len);
      if (auto* f = std::get_if<pg::Frame>(&r)) {
        consume(f->size);  // the view stays valid: bytes move only on the next read
        co_return ReadFrame{{}, std::nullopt, *f};
      }
      if (auto* bad = std::get_if<pg::FrameFailure>(&r)) co_return ReadFrame{{}, *bad, {}};
      std::size_t need = std::get<pg::NeedMore>(r).bytes;
      reserve(need);
      auto [ec, n] = co_await s.read_some(asio::buffer(buf_.data() + end_, buf_.size() - end_));
      if (ec) co_return ReadFrame{ec, std::nullopt, {}};
      end_ += n;
    }
  }

  // Bytes received but not yet handed out as frames (e.g. what a client pipelined).
  bytes::Span pending() const { return {buf_.data() + begin_, end_ - begin_}; }
  void consume(std::size_t n) {
    begin_ += n;
    if (begin_ == end_) begin_ = end_ = 0;
  }
  // Puts bytes back in front of what is pending, as if they had not been consumed yet.
  void unread(bytes::Span data) {
    if (data.empty()) return;
    if (begin_ >= data.size()) {
      begin_ -= data.size();
      std::copy(data.begin(), data.end(), buf_.begin() + static_cast<std::ptrdiff_t>(begin_));
      return;
    }
    std::vector<std::uint8_t> next(data.begin(), data.end());
    auto rest = pending();
    next.insert(next.end(), rest.begin(), rest.end());
    end_ = next.size();
    begin_ = 0;
    if (next.size() < buf_.size()) next.resize(buf_.size());
    buf_ = std::move(next);
  }
  // Room for at least `need` more bytes (the relay's "need more"); read into it, then commit().
  asio::mutable_buffer prepare(std::size_t need) {
    reserve(std::max<std::size_t>(need, 1));
    return asio::buffer(buf_.data() + end_, buf_.size() - end_);
  }
  void commit(std::size_t n) { end_ += n; }
  // Frees the buffer while nothing is pending (an idle client); ensure() brings it back.
  void release() {
    if (begin_ == end_) {
      begin_ = end_ = 0;
      std::vector<std::uint8_t>().swap(buf_);
    }
  }
  void ensure(std::size_t capacity) {
    if (buf_.size() < capacity) buf_.resize(capacity);
  }
  // Returns to the normal capacity after a large message passed.
  void shrink(std::size_t capacity) {
    if (buf_.size() > capacity && end_ - begin_ <= capacity) {
      compact();
      buf_.resize(capacity);
      buf_.shrink_to_fit();
    }
  }

 private:
  // Makes room for `more` bytes after end_, compacting first and growing only as needed.
  void reserve(std::size_t more) {
    if (buf_.size() - end_ >= more) return;
    compact();
    if (buf_.size() - end_ < more) buf_.resize(end_ + more);
  }
  void compact() {
    if (begin_ == 0) return;
    std::copy(buf_.begin() + static_cast<std::ptrdiff_t>(begin_),
              buf_.begin() + static_cast<std::ptrdiff_t>(end_), buf_.begin());
    end_ -= begin_;
    begin_ = 0;
  }

  std::vector<std::uint8_t> buf_;
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
};

}  // namespace sluice::server
