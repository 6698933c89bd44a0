#pragma once

// A token bucket: golang.org/x/time/rate's Limiter, which client-go's flowcontrol and workqueue
// rate limiters are built on. It holds at most `burst` tokens and gains `qps` tokens per second
// by an injected Clock; it starts full.
//
// Reserve() always takes a token: the balance may go negative, and the caller is told how long
// to wait until the bucket would have refilled it (rate.Limiter.Reserve().Delay()). Reservations
// are thus served in the order they were made, never more than `burst` at once and `qps` per
// second on average. TryTake() takes a token only if one is there (rate.Limiter.Allow()).
//
// Thread-safe.

#include <chrono>
#include <mutex>

#include "common/clock.h"

namespace modelcache {

class TokenBucket {
 public:
  // qps <= 0: unlimited (every Reserve() is 0, every TryTake() true). A burst below 1 is 1.
  // `clock` must outlive the bucket.
  TokenBucket(double qps, int burst, const Clock& clock);

  // Takes a token and returns how long to wait before using it (0 when one was there).
  std::chrono::nanoseconds Reserve();
  // Takes a token if one is there now; false (and nothing taken) otherwise.
  bool TryTake();

  double qps() const { return qps_; }
  int burst() const { return burst_; }

 private:
  // Adds what the time since the last refill earned, up to burst_. REQUIRES: mu_ held.
  void RefillLocked();

  const double qps_;
  const int burst_;
  const Clock& clock_;
  std::mutex mu_;
  double tokens_;                 // GUARDED_BY(mu_); negative: reserved ahead
  Clock::TimePoint last_refill_;  // GUARDED_BY(mu_)
};

}  // namespace modelcache
