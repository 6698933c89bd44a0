#pragma once

// The last failed job of each resource, for the spec it ran: a permanent failure is not run again
// until the spec changes, a transient one only after an exponential backoff, during which the
// failure stays the resource's condition (a hostile mirror is not hammered, and its reason stays
// visible). Private to reconcilers/.
//
// Thread-safe. Time is passed in (the reconciler's clock), so the book itself never reads one.

#include <chrono>
#include <map>
#include <mutex>
#include <optional>
#include <string>

#include "common/clock.h"
#include "common/result.h"
#include "crds/model_cache.h"

namespace modelcache::reconcilers {

class JobFailures {
 public:
  struct Policy {
    // Consecutive stalled jobs of a spec that turn into EndpointStalled (permanent); 0 = never.
    int stall_limit = 5;
    // The first wait after a transient failure, doubled per failure of the same spec up to cap.
    std::chrono::milliseconds backoff_base{1000};
    std::chrono::milliseconds backoff_cap{30000};
  };

  explicit JobFailures(Policy policy) : policy_(policy) {}

  // Records the failure of a job that ran `spec_hash` at `now` and returns the error to report:
  // a transient one carries the wait before the next attempt as retry_after (at least what the
  // server asked for); the stall_limit'th stall in a row becomes EndpointStalled. A Cancelled
  // error is returned as it is and not recorded.
  Error Record(const crds::ObjectKey& key, const std::string& spec_hash, Error error,
               Clock::TimePoint now);

  // The failure to report at `now` instead of starting a job for `spec_hash`: a permanent one,
  // or a transient one whose backoff has not passed (retry_after: what is left of it). nullopt
  // when a job may start (no failure, another spec, or the backoff passed).
  std::optional<Error> Pending(const crds::ObjectKey& key, const std::string& spec_hash,
                               Clock::TimePoint now) const;

  // Forgets the key's failures (a job succeeded, or the resource is gone).
  void Forget(const crds::ObjectKey& key);

 private:
  struct Failure {
    std::string spec_hash;
    Error error;
    int count = 0;
    int stalls = 0;  // of the last `count` failures, how many in a row the endpoint stalled
    Clock::TimePoint retry_at{};
  };

  const Policy policy_;
  mutable std::mutex mu_;
  std::map<crds::ObjectKey, Failure> failures_;  // GUARDED_BY(mu_)
};

}  // namespace modelcache::reconcilers
