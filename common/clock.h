#pragma once

// Time as an injectable dependency, so that queues and backoff can be tested with a fake clock
// that a test advances instead of sleeping.

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace modelcache {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  // Wall-clock time, for timestamps written to status (lastTransitionTime).
  virtual std::chrono::system_clock::time_point WallNow() const = 0;
};

class RealClock final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  std::chrono::system_clock::time_point WallNow() const override {
    return std::chrono::system_clock::now();
  }
  // The process-wide instance.
  static RealClock& Get();
};

// A clock that only moves when told to. Thread-safe.
class FakeClock final : public Clock {
 public:
  TimePoint Now() const override {
    std::lock_guard lock(mu_);
    return now_;
  }
  std::chrono::system_clock::time_point WallNow() const override {
    std::lock_guard lock(mu_);
    return wall_ + (now_ - TimePoint{});
  }
  void Advance(std::chrono::nanoseconds d) {
    std::lock_guard lock(mu_);
    now_ += d;
  }

 private:
  mutable std::mutex mu_;
  TimePoint now_{std::chrono::hours(1)};
  std::chrono::system_clock::time_point wall_{std::chrono::seconds(1'700'000'000)};
};

// RFC 3339 UTC with seconds precision: "2026-11-24T03:46:12Z" (Kubernetes metav1.Time).
std::string FormatRfc3339(std::chrono::system_clock::time_point t);
// Parses what FormatRfc3339 writes (and fractional seconds); epoch on error.
std::chrono::system_clock::time_point ParseRfc3339(const std::string& s);

}  // namespace modelcache
