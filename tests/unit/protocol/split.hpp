// Test helper: the frames a reader produces when a byte stream arrives split in two at `cut`.
#pragma once

#include <catch2/catch.hpp>
#include <string>
#include <utility>
#include <vector>

#include "protocol/pg/framer.hpp"
#include "protocol/pg/messages.hpp"

namespace sluice::test {

using pg::Buffer;
using pg::Frame;
using pg::NeedMore;
using pg::next_frame;
using pg::next_startup_frame;

// Feeds `stream` in two pieces split at `cut`, collecting the frames a reader would produce.
inline std::vector<std::pair<char, std::string>> frames_split(const Buffer& stream, std::size_t cut,
                                                              bool first_is_startup) {
  std::vector<std::pair<char, std::string>> out;
  Buffer have;
  std::size_t fed = 0;
  bool startup = first_is_startup;
  auto feed = [&](std::size_t upto) {
    have.insert(have.end(), stream.begin() + static_cast<long>(fed),
                stream.begin() + static_cast<long>(upto));
    fed = upto;
    for (;;) {
      auto r = startup ? next_startup_frame(have) : next_frame(have);
      auto* f = std::get_if<Frame>(&r);
      if (f == nullptr) {
        REQUIRE(std::holds_alternative<NeedMore>(r));
        return;
      }
      out.emplace_back(f->type, std::string(bytes::as_chars(f->body)));
      have.erase(have.begin(), have.begin() + static_cast<long>(f->size));
      startup = false;
    }
  };
  feed(cut);
  feed(stream.size());
  REQUIRE(have.empty());
  return out;
}
}  // namespace sluice::test
