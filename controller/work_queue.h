#pragma once

// A work queue with client-go's semantics (k8s.io/client-go/util/workqueue), the piece that makes
// level-based reconciling safe:
//
//   - Fair: items are handed out in the order in which they became ready (FIFO).
//   - Stingy: a key is never handed to two workers at once. Adding a key that is already queued
//     is a no-op; adding a key that a worker is processing marks it dirty, and Done() queues it
//     again exactly once.
//   - Delayed adds: AddAfter(key, d) makes the key ready at now + d; if the key is already
//     waiting, the earliest ready time wins.
//   - Rate-limited adds: AddRateLimited(key) waits the maximum of a per-key exponential backoff
//     (5 ms doubling up to 1000 s, reset by Forget) and an overall token bucket (10 qps, burst
//     100); client-go's DefaultTypedControllerRateLimiter.
//
// Time comes from an injected Clock. There is no timer thread: a waiting key is promoted to the
// ready queue when a caller looks (Get, TryGet, Len, Tick). A blocking Get() sleeps until the
// earliest waiting key is due by the clock; because a FakeClock does not move by itself, Get()
// re-reads the clock at least every kMaxIdleWait, and Tick() wakes it at once. Tests that use a
// FakeClock call Advance() and then TryGet() (or Tick() to release a blocked Get()).
//
// T must be copyable and ordered by operator< (crds::ObjectKey is).
//
// Thread-safe: every method may be called from any thread.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include "common/clock.h"
#include "common/token_bucket.h"

namespace modelcache::controller {

// The rate limiter of AddRateLimited. Defaults are client-go's DefaultTypedControllerRateLimiter.
struct RateLimiterOptions {
  // Per-key exponential backoff: base_delay * 2^failures, at most max_delay.
  std::chrono::nanoseconds base_delay = std::chrono::milliseconds(5);
  std::chrono::nanoseconds max_delay = std::chrono::seconds(1000);
  // Overall token bucket, shared by all keys. qps <= 0 disables it.
  double qps = 10;
  int burst = 100;
};

template <typename T>
class WorkQueue {
 public:
  using Duration = std::chrono::nanoseconds;

  // How long a blocked Get() waits before it re-reads the clock when nothing wakes it.
  static constexpr std::chrono::milliseconds kMaxIdleWait{50};

  // `clock` must outlive the queue.
  explicit WorkQueue(Clock& clock, RateLimiterOptions options = {})
      : clock_(clock), options_(options), bucket_(options.qps, options.burst, clock) {}

  WorkQueue(const WorkQueue&) = delete;
  WorkQueue& operator=(const WorkQueue&) = delete;

  // Marks `key` as needing processing. No-op if it is already queued, or after ShutDown().
  // If a worker holds `key`, it is queued again when that worker calls Done().
  void Add(const T& key) {
    std::lock_guard lock(mu_);
    AddLocked(key);
  }

  // Adds `key` once `delay` has passed by the clock; a delay <= 0 is Add(). If `key` is already
  // waiting, it keeps the earlier of the two ready times. No-op after ShutDown().
  void AddAfter(const T& key, Duration delay) {
    std::lock_guard lock(mu_);
    AddAfterLocked(key, delay);
  }

  // AddAfter(key, When(key)): the backoff for the key's next failure (which also counts it).
  void AddRateLimited(const T& key) {
    std::lock_guard lock(mu_);
    if (shutting_down_) {
      return;
    }
    AddAfterLocked(key, WhenLocked(key));
  }

  // Counts a failure of `key` and returns how long to wait before retrying it: the maximum of
  // the per-key exponential backoff and the token bucket's delay. AddRateLimited uses it.
  Duration When(const T& key) {
    std::lock_guard lock(mu_);
    return WhenLocked(key);
  }

  // Sets a function told, for every key Get() or TryGet() hands out, how long the key waited:
  // from the Add that made it need processing (for AddAfter, from the moment its delay passed) to
  // the hand-out; client-go's queue_duration. It runs under the queue's lock, so it must be quick
  // and must not call the queue. Call before the queue is used.
  void SetLatencyObserver(std::function<void(Duration)> observer) {
    std::lock_guard lock(mu_);
    latency_observer_ = std::move(observer);
  }

  // Resets the failure count of `key` (call it when the key was processed successfully). Does
  // not remove the key from the queue or from the waiting set.
  void Forget(const T& key) {
    std::lock_guard lock(mu_);
    failures_.erase(key);
  }

  // How many times `key` was rate-limited since the last Forget.
  int NumRequeues(const T& key) const {
    std::lock_guard lock(mu_);
    auto it = failures_.find(key);
    return it == failures_.end() ? 0 : it->second;
  }

  // Blocks until a key is ready, marks it as processing and returns it. Returns nullopt once
  // ShutDown() was called and the ready queue is empty (keys still waiting for a delay are
  // dropped at shutdown). REQUIRES: the caller calls Done(key) when it has finished.
  std::optional<T> Get() {
    std::unique_lock lock(mu_);
    while (true) {
      PromoteDueLocked();
      if (!queue_.empty()) {
        return PopLocked();
      }
      if (shutting_down_) {
        return std::nullopt;
      }
      auto wait = std::chrono::duration_cast<Duration>(kMaxIdleWait);
      if (!waiting_.empty()) {
        auto until_due = std::get<0>(*waiting_.begin()) - clock_.Now();
        wait = std::clamp<Duration>(until_due, Duration(0), wait);
      }
      cv_.wait_for(lock, wait);
    }
  }

  // Get() without blocking: nullopt if no key is ready right now (or after shutdown, drained).
  std::optional<T> TryGet() {
    std::lock_guard lock(mu_);
    PromoteDueLocked();
    if (queue_.empty()) {
      return std::nullopt;
    }
    return PopLocked();
  }

  // Ends processing of `key`. If it was added while being processed, it is queued again now.
  void Done(const T& key) {
    std::lock_guard lock(mu_);
    processing_.erase(key);
    if (dirty_.count(key) > 0) {
      queue_.push_back(key);
      cv_.notify_one();
    }
  }

  // Promotes the keys whose delay has passed and wakes blocked Get() calls. With a RealClock this
  // is never needed; with a FakeClock call it after Advance() to release a blocked Get().
  void Tick() {
    std::lock_guard lock(mu_);
    PromoteDueLocked();
    cv_.notify_all();
  }

  // Stops accepting adds and wakes every Get(). Keys already ready are still handed out; Get()
  // returns nullopt once they are gone. Idempotent.
  void ShutDown() {
    std::lock_guard lock(mu_);
    shutting_down_ = true;
    waiting_.clear();
    waiting_by_key_.clear();
    cv_.notify_all();
  }

  bool ShuttingDown() const {
    std::lock_guard lock(mu_);
    return shutting_down_;
  }

  // Keys ready to be handed out now (not those waiting for a delay, not those being processed).
  size_t Len() {
    std::lock_guard lock(mu_);
    PromoteDueLocked();
    return queue_.size();
  }

  // Keys waiting for a delay to pass.
  size_t NumWaiting() const {
    std::lock_guard lock(mu_);
    return waiting_by_key_.size();
  }

 private:
  using TimePoint = Clock::TimePoint;

  // REQUIRES: mu_ held.
  void AddLocked(const T& key) {
    if (shutting_down_ || dirty_.count(key) > 0) {
      return;
    }
    dirty_.insert(key);
    added_at_.emplace(key, clock_.Now());
    if (processing_.count(key) > 0) {
      return;
    }
    queue_.push_back(key);
    cv_.notify_one();
  }

  // REQUIRES: mu_ held.
  void AddAfterLocked(const T& key, Duration delay) {
    if (shutting_down_) {
      return;
    }
    if (delay <= Duration(0)) {
      AddLocked(key);
      return;
    }
    TimePoint ready_at = clock_.Now() + delay;
    auto it = waiting_by_key_.find(key);
    if (it != waiting_by_key_.end()) {
      if (it->second.first <= ready_at) {
        return;
      }
      waiting_.erase({it->second.first, it->second.second, key});
      waiting_by_key_.erase(it);
    }
    uint64_t seq = next_seq_++;
    waiting_.insert({ready_at, seq, key});
    waiting_by_key_.emplace(key, std::make_pair(ready_at, seq));
    // A blocked Get() may now have to wake earlier than it planned.
    cv_.notify_all();
  }

  // Moves every waiting key whose time has come to the ready queue, earliest first.
  // REQUIRES: mu_ held.
  void PromoteDueLocked() {
    if (waiting_.empty()) {
      return;
    }
    TimePoint now = clock_.Now();
    while (!waiting_.empty() && std::get<0>(*waiting_.begin()) <= now) {
      T key = std::get<2>(*waiting_.begin());
      waiting_.erase(waiting_.begin());
      waiting_by_key_.erase(key);
      AddLocked(key);
    }
  }

  // REQUIRES: mu_ held and queue_ not empty.
  T PopLocked() {
    T key = std::move(queue_.front());
    queue_.pop_front();
    processing_.insert(key);
    dirty_.erase(key);
    auto added = added_at_.find(key);
    if (added != added_at_.end()) {
      if (latency_observer_) {
        latency_observer_(clock_.Now() - added->second);
      }
      added_at_.erase(added);
    }
    return key;
  }

  // REQUIRES: mu_ held.
  Duration WhenLocked(const T& key) {
    int exp = failures_[key]++;
    // In floating point so that a large exponent saturates instead of overflowing.
    double backoff = static_cast<double>(options_.base_delay.count()) * std::pow(2.0, exp);
    Duration per_key = backoff >= static_cast<double>(options_.max_delay.count())
                           ? options_.max_delay
                           : Duration(static_cast<Duration::rep>(backoff));
    return std::max(per_key, Duration(bucket_.Reserve()));
  }

  Clock& clock_;
  const RateLimiterOptions options_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<T> queue_;     // ready, in order; every element is also in dirty_
  std::set<T> dirty_;       // needs processing (queued, or added while processing)
  std::set<T> processing_;  // handed out by Get(), not yet Done()
  std::map<T, TimePoint> added_at_;  // when each key in dirty_ was added
  std::function<void(Duration)> latency_observer_;
  // Waiting for a delay: ordered by (ready time, insertion sequence), and indexed by key.
  std::set<std::tuple<TimePoint, uint64_t, T>> waiting_;
  std::map<T, std::pair<TimePoint, uint64_t>> waiting_by_key_;
  uint64_t next_seq_ = 0;
  bool shutting_down_ = false;

  std::map<T, int> failures_;
  TokenBucket bucket_;
};

}  // namespace modelcache::controller
