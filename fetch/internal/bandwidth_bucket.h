#pragma once

// The transfer engine's bandwidth limit: a token bucket shared by every request of the engine. A
// write callback that finds it empty pauses its transfer; the engine thread refills it (at most
// every few milliseconds while transfers wait) and resumes them.
//
// Not common/token_bucket.h: that one counts requests (a token each, Reserve returns the wait,
// thread-safe, for the work queue and the API client); this one counts bytes, goes into debt by
// a whole libcurl buffer (a write callback cannot give bytes back), and is only touched by the
// engine thread, in every write callback, so it takes no lock.
//
// Not thread-safe: only the engine thread uses it.

#include <chrono>
#include <cstdint>
#include <functional>

namespace modelcache::fetch::internal {

class BandwidthBucket {
 public:
  using Clock = std::chrono::steady_clock;

  // `rate` bytes per second (0 = unlimited), refilled by the time `now` tells (steady_clock when
  // empty). It starts full, and holds at most a twentieth of a second of the rate, and no less
  // than 64 KiB.
  BandwidthBucket(uint64_t rate, std::function<Clock::time_point()> now);

  bool limited() const { return rate_ > 0; }
  uint64_t rate() const { return rate_; }
  int64_t burst() const { return burst_; }
  int64_t tokens() const { return tokens_; }

  // Whether a transfer must wait for a refill before it takes more.
  bool Empty() const { return rate_ > 0 && tokens_ <= 0; }

  // Takes `bytes` received; the bucket may go below zero (libcurl hands over a whole buffer).
  void Take(uint64_t bytes);

  // Adds what the time since the last refill earned, up to the burst. Returns whether there are
  // tokens to take (so the transfers waiting may be resumed).
  bool Refill();

 private:
  Clock::time_point Now() const { return now_ ? now_() : Clock::now(); }

  const uint64_t rate_;
  const int64_t burst_;
  const std::function<Clock::time_point()> now_;
  int64_t tokens_;
  Clock::time_point refilled_;
};

}  // namespace modelcache::fetch::internal
