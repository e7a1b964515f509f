// Cache admission: a key is admitted at its second miss, a statement whose keys never repeat
// turns cold after a window (1 lookup in 16), and repeats among the sampled lookups warm it.
#include "cache/admission.hpp"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>

using sluice::cache::Admission;

namespace {
std::uint64_t key(std::uint64_t i) {
  return i * 0x9e3779b97f4a7c15ull;
}
}  // namespace

TEST_CASE("admission: a key is stored at its second miss", "[admission]") {
  Admission a;
  CHECK_FALSE(a.on_miss(key(1)));
  CHECK(a.on_miss(key(1)));
  CHECK_FALSE(a.on_miss(key(2)));
  CHECK(a.on_miss(key(2)));
}

TEST_CASE("admission: distinct keys make a statement cold, repeats warm it", "[admission]") {
  Admission a;
  for (std::uint64_t i = 0; i < Admission::kWindow; ++i) {
    REQUIRE(a.should_lookup());
    a.on_miss(key(1000 + i));
  }
  CHECK(a.cold());
  int looked = 0;
  for (int i = 0; i < 1600; ++i) looked += a.should_lookup() ? 1 : 0;
  CHECK(looked == 1600 / static_cast<int>(Admission::kColdSample));
  CHECK(a.skipped() == 1600 - static_cast<std::uint64_t>(looked));
  // A window of sampled lookups that are useful: warm again.
  for (std::uint32_t i = 0; i + 1 < Admission::kColdWindow; ++i) a.on_hit();
  CHECK(a.cold());
  a.on_hit();
  CHECK_FALSE(a.cold());
  CHECK(a.should_lookup());
}

TEST_CASE("admission: a cheap statement needs half its lookups useful, an expensive one 2%",
          "[admission]") {
  using std::chrono::milliseconds;
  auto run = [](Admission& a, int useful_percent) {
    for (std::uint32_t i = 0; i < Admission::kWindow; ++i) {
      if (i % 100 < static_cast<std::uint32_t>(useful_percent))
        a.on_hit();
      else
        a.on_miss(key(50'000 + i));
    }
  };
  Admission cheap;
  cheap.on_filled(milliseconds(1), milliseconds(10));
  CHECK(cheap.cheap());
  run(cheap, 40);
  CHECK(cheap.cold());  // 40% useful does not pay for a lookup of a 1 ms query
  Admission expensive;
  expensive.on_filled(milliseconds(200), milliseconds(10));
  CHECK_FALSE(expensive.cheap());
  run(expensive, 5);
  CHECK_FALSE(expensive.cold());  // 5% of 200 ms queries saved is worth it
  Admission warm;
  warm.on_filled(milliseconds(1), milliseconds(10));
  run(warm, 60);
  CHECK_FALSE(warm.cold());
}

TEST_CASE("admission: a statement whose keys repeat stays warm", "[admission]") {
  Admission a;
  for (std::uint64_t i = 0; i < 4 * Admission::kWindow; ++i) {
    if (i % 10 == 0)
      a.on_hit();
    else
      a.on_miss(key(i % 7));
  }
  CHECK_FALSE(a.cold());
}

TEST_CASE("admission: the doorkeeper forgets after its life", "[admission]") {
  Admission a;
  CHECK_FALSE(a.on_miss(key(1)));
  for (std::uint64_t i = 0; i < 2 * Admission::kDoorkeeperLife; ++i) a.on_miss(key(100'000 + i));
  CHECK_FALSE(a.on_miss(key(1)));  // cleared meanwhile: a first miss again
}
