#include "common/token_bucket.h"

#include <algorithm>

namespace modelcache {

TokenBucket::TokenBucket(double qps, int burst, const Clock& clock)
    : qps_(qps),
      burst_(std::max(1, burst)),
      clock_(clock),
      tokens_(std::max(1, burst)),
      last_refill_(clock.Now()) {}

void TokenBucket::RefillLocked() {
  Clock::TimePoint now = clock_.Now();
  if (now > last_refill_) {
    double elapsed = std::chrono::duration<double>(now - last_refill_).count();
    tokens_ = std::min<double>(burst_, tokens_ + elapsed * qps_);
    last_refill_ = now;
  }
}

std::chrono::nanoseconds TokenBucket::Reserve() {
  if (qps_ <= 0) {
    return std::chrono::nanoseconds(0);
  }
  std::lock_guard lock(mu_);
  RefillLocked();
  tokens_ -= 1;
  if (tokens_ >= 0) {
    return std::chrono::nanoseconds(0);
  }
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
      std::chrono::duration<double>(-tokens_ / qps_));
}

bool TokenBucket::TryTake() {
  if (qps_ <= 0) {
    return true;
  }
  std::lock_guard lock(mu_);
  RefillLocked();
  if (tokens_ < 1) {
    return false;
  }
  tokens_ -= 1;
  return true;
}

}  // namespace modelcache
