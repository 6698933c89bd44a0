#pragma once

// Duplicate-call suppression (Go's golang.org/x/sync/singleflight): callers that ask for the same
// key while a call for it is in flight wait for that call and share its result, instead of
// making their own. Nothing is cached: a caller that arrives after the call returned makes a new
// one, so a shared answer is never older than the caller's own request would have been (it was
// asked while the caller was already waiting).
//
// Used for Hub requests that thousands of resources of one model make at the same moment
// (resolving repo@main, listing the tree of a commit).
//
// A call that ends Cancelled is not shared: its own caller was stopped, not the others, so each
// waiter that was not stopped itself makes its own call.
//
// Thread-safe.

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <utility>

#include "common/result.h"

namespace modelcache {

template <typename T>
class SingleFlight {
 public:
  // fn()'s result, or the result of the call for `key` already in flight. `stop` ends a wait for
  // another caller's call (Cancelled); it is not passed to fn, which observes its own.
  Result<T> Do(const std::string& key, const std::function<Result<T>()>& fn,
               std::stop_token stop = {}) {
    std::shared_ptr<Call> call;
    bool leader = false;
    {
      std::lock_guard lock(mu_);
      auto it = calls_.find(key);
      if (it == calls_.end()) {
        call = std::make_shared<Call>();
        calls_.emplace(key, call);
        leader = true;
      } else {
        call = it->second;
        ++shared_;
      }
    }
    if (leader) {
      Result<T> result = Run(fn);
      std::lock_guard lock(mu_);
      call->result.emplace(result);
      calls_.erase(key);
      cv_.notify_all();
      return result;
    }
    {
      std::unique_lock lock(mu_);
      if (!cv_.wait(lock, stop, [&] { return call->result.has_value(); })) {
        return Error(Reason::Cancelled, "cancelled while waiting for " + key);
      }
      const Result<T>& shared = *call->result;
      if (shared || shared.error().reason != Reason::Cancelled) {
        return shared;
      }
    }
    return Run(fn);  // the leader was stopped, not us
  }

  // Calls that got another caller's result instead of making their own (for tests and metrics).
  uint64_t shared() const {
    std::lock_guard lock(mu_);
    return shared_;
  }

 private:
  struct Call {
    std::optional<Result<T>> result;  // GUARDED_BY(mu_); set once
  };

  static Result<T> Run(const std::function<Result<T>()>& fn) {
    try {
      return fn();
    } catch (const std::exception& e) {
      // Waiters must not wait forever for a call that threw.
      return Error(Reason::Internal, std::string("shared call threw: ") + e.what());
    }
  }

  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  std::map<std::string, std::shared_ptr<Call>> calls_;  // GUARDED_BY(mu_): in flight
  uint64_t shared_ = 0;                                 // GUARDED_BY(mu_)
};

}  // namespace modelcache
