// Cache admission (cache.admission: repeat), per statement fingerprint: whether a miss's reply is
// worth storing, and whether a lookup is worth its Redis round trips at all. A reply is stored
// when its key missed before within the doorkeeper's life (a Bloom filter of recent misses, as
// TinyLFU admits) or its query ran at least cache.admit_after. A statement turns cold when too
// few of a window's lookups are useful (hits, or misses of a key seen before): under half for a
// cheap statement (its queries run under admit_after: a lookup costs the proxy about what the
// query it saves does), under 2% for an expensive one. A cold statement is looked up for one
// request in 16, which keeps measuring: a workload that never repeats stops paying for the cache.
#pragma once

#include <bitset>
#include <chrono>
#include <cstdint>
#include <mutex>

namespace sluice::cache {

class Admission {
 public:
  static constexpr std::uint32_t kWindow = 512;     // lookups per verdict while warm
  static constexpr std::uint32_t kColdWindow = 64;  // sampled lookups per verdict while cold
  static constexpr std::uint32_t kColdSample = 16;  // a cold statement: 1 request in 16
  static constexpr double kCheapShare = 0.5;        // useful lookups a cheap statement needs
  static constexpr double kExpensiveShare = 0.02;   // ... and an expensive one
  static constexpr std::size_t kDoorkeeperBits = 1u << 14;               // 2 KB per statement
  static constexpr std::uint32_t kDoorkeeperLife = kDoorkeeperBits / 8;  // misses, then cleared

  // Whether this request looks the cache up (false: the statement is cold, skip this one).
  bool should_lookup();
  // A miss of the key whose hash is `key_hash`: true when it missed before (store the reply).
  bool on_miss(std::uint64_t key_hash);
  void on_hit();
  // How long a miss's query took (until its reply was whole), against cache.admit_after.
  void on_filled(std::chrono::microseconds took, std::chrono::microseconds expensive);
  bool cold() const;
  bool cheap() const;
  std::uint64_t skipped() const;  // lookups skipped while cold

 private:
  void count(bool useful);  // one lookup of the window

  mutable std::mutex mu_;
  std::bitset<kDoorkeeperBits> seen_;
  std::uint32_t inserted_ = 0;
  std::uint32_t lookups_ = 0;  // this window
  std::uint32_t useful_ = 0;   // hits and repeated misses, this window
  std::uint32_t tick_ = 0;
  std::uint64_t skipped_ = 0;
  double fill_us_ = 0;  // moving average of the misses' query time
  bool cheap_ = true;   // until a miss says otherwise
  bool cold_ = false;
};

}  // namespace sluice::cache
