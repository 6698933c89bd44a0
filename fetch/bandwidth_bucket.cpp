#include "fetch/internal/bandwidth_bucket.h"

#include <algorithm>
#include <utility>

namespace modelcache::fetch::internal {

BandwidthBucket::BandwidthBucket(uint64_t rate, std::function<Clock::time_point()> now)
    : rate_(rate),
      burst_(static_cast<int64_t>(std::max<uint64_t>(rate / 20, 64 << 10))),
      now_(std::move(now)),
      tokens_(burst_),
      refilled_(Now()) {}

void BandwidthBucket::Take(uint64_t bytes) {
  if (rate_ > 0) {
    tokens_ -= static_cast<int64_t>(bytes);
  }
}

bool BandwidthBucket::Refill() {
  auto now = Now();
  double seconds = std::chrono::duration<double>(now - refilled_).count();
  refilled_ = now;
  tokens_ = std::min<int64_t>(
      burst_, tokens_ + static_cast<int64_t>(seconds * static_cast<double>(rate_)));
  return tokens_ > 0;
}

}  // namespace modelcache::fetch::internal
