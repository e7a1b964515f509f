// Cache admission: the doorkeeper and the per-window verdict (see admission.hpp).
#include "cache/admission.hpp"

namespace sluice::cache {

bool Admission::should_lookup() {
  std::lock_guard lock(mu_);
  if (!cold_ || ++tick_ % kColdSample == 0) return true;
  ++skipped_;
  return false;
}

bool Admission::on_miss(std::uint64_t key_hash) {
  std::lock_guard lock(mu_);
  const std::size_t a = key_hash % kDoorkeeperBits;
  const std::size_t b = (key_hash >> 32) % kDoorkeeperBits;
  const bool repeated = seen_.test(a) && seen_.test(b);
  if (!repeated) {
    if (++inserted_ > kDoorkeeperLife) {  // forget old misses: "within a window"
      seen_.reset();
      inserted_ = 1;
    }
    seen_.set(a);
    seen_.set(b);
  }
  count(repeated);
  return repeated;
}

void Admission::on_hit() {
  std::lock_guard lock(mu_);
  count(true);
}

void Admission::count(bool useful) {
  ++lookups_;
  if (useful) ++useful_;
  if (lookups_ < (cold_ ? kColdWindow : kWindow)) return;
  const double share = static_cast<double>(useful_) / static_cast<double>(lookups_);
  cold_ = share < (cheap_ ? kCheapShare : kExpensiveShare);
  lookups_ = 0;
  useful_ = 0;
}

void Admission::on_filled(std::chrono::microseconds took, std::chrono::microseconds expensive) {
  std::lock_guard lock(mu_);
  const auto us = static_cast<double>(took.count());
  fill_us_ = fill_us_ == 0 ? us : 0.9 * fill_us_ + 0.1 * us;
  cheap_ = fill_us_ < static_cast<double>(expensive.count());
}

bool Admission::cheap() const {
  std::lock_guard lock(mu_);
  return cheap_;
}

bool Admission::cold() const {
  std::lock_guard lock(mu_);
  return cold_;
}

std::uint64_t Admission::skipped() const {
  std::lock_guard lock(mu_);
  return skipped_;
}

}  // namespace sluice::cache
