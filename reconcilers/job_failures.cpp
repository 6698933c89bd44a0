#include "reconcilers/internal/job_failures.h"

#include <algorithm>

#include <fmt/format.h>

namespace modelcache::reconcilers {

using std::chrono::milliseconds;

Error JobFailures::Record(const crds::ObjectKey& key, const std::string& spec_hash, Error error,
                          Clock::TimePoint now) {
  if (error.reason == Reason::Cancelled) {
    return error;
  }
  std::lock_guard lock(mu_);
  Failure& f = failures_[key];
  bool same_spec = f.spec_hash == spec_hash;
  f.count = same_spec ? f.count + 1 : 1;
  f.stalls = !error.stalled ? 0 : same_spec ? f.stalls + 1 : 1;
  f.spec_hash = spec_hash;
  if (policy_.stall_limit > 0 && f.stalls >= policy_.stall_limit) {
    // A pattern, not an accident: the endpoint holds a job slot until the stall timeout, job
    // after job. Permanent, so the resource stops taking slots until someone changes it.
    error = Error(Reason::EndpointStalled,
                  fmt::format("the endpoint stalled in {} {} in a row (--stall-limit); not "
                              "retried until the spec changes (increment spec.force to retry "
                              "as it is): {}",
                              f.stalls, f.stalls == 1 ? "job" : "jobs", error.message));
  }
  if (IsTransient(error.reason)) {
    milliseconds wait = std::max(policy_.backoff_base, milliseconds(1));
    for (int i = 1; i < f.count && wait < policy_.backoff_cap; ++i) {
      wait *= 2;
    }
    wait = std::min(wait, std::max(policy_.backoff_cap, milliseconds(1)));
    wait = std::max(wait, error.retry_after.value_or(milliseconds(0)));
    error.retry_after = wait;
    f.retry_at = now + wait;
  }
  f.error = error;
  return error;
}

std::optional<Error> JobFailures::Pending(const crds::ObjectKey& key, const std::string& spec_hash,
                                          Clock::TimePoint now) const {
  std::lock_guard lock(mu_);
  auto it = failures_.find(key);
  if (it == failures_.end() || it->second.spec_hash != spec_hash) {
    return std::nullopt;
  }
  Error error = it->second.error;
  if (!IsTransient(error.reason)) {
    return error;
  }
  auto left = std::chrono::duration_cast<milliseconds>(it->second.retry_at - now);
  if (left.count() <= 0) {
    return std::nullopt;
  }
  error.retry_after = left;
  return error;
}

void JobFailures::Forget(const crds::ObjectKey& key) {
  std::lock_guard lock(mu_);
  failures_.erase(key);
}

}  // namespace modelcache::reconcilers
