// FNV-1a (64-bit): the stable hash behind sluice's server-side statement names and the query
// insights cache keys. Not for hash tables keyed by untrusted input.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace sluice::routing {

class Fnv1a {
 public:
  void add(std::uint8_t byte) {
    h_ ^= byte;
    h_ *= 0x100000001b3ULL;
  }
  void add(const void* data, std::size_t n) {
    const auto* p = static_cast<const std::uint8_t*>(data);
    for (std::size_t i = 0; i < n; ++i) add(p[i]);
  }
  void add(std::string_view s) { add(s.data(), s.size()); }
  std::uint64_t value() const { return h_; }

 private:
  std::uint64_t h_ = 0xcbf29ce484222325ULL;
};

inline std::uint64_t fnv1a(std::string_view s) {
  Fnv1a h;
  h.add(s);
  return h.value();
}

}  // namespace sluice::routing
