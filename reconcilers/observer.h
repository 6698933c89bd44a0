#pragma once

// What the reconciler reports for the daemon's metrics and shutdown log, without knowing about
// either: the controller implements this interface (daemon/job_metrics.h) and passes it in
// ReconcilerOptions::observer. Every method has an empty default, so an implementation overrides
// only what it counts.
//
// Methods are called from reconcile workers and job threads, possibly at the same time, so an
// implementation must be thread-safe. They are called without reconciler locks held, but on the
// job's own thread: keep them quick (count, do not do I/O).

#include <chrono>
#include <cstdint>
#include <string>

#include "crds/model_cache.h"

namespace modelcache::reconcilers {

class ReconcileObserver {
 public:
  virtual ~ReconcileObserver() = default;

  // A job (resolve, download, shard, publish, or a periodic verification) for `key` was queued on the job pool. Every
  // JobStarted is followed by exactly one JobFinished for the same key, also when the job is
  // cancelled before it runs.
  virtual void JobStarted(const crds::ObjectKey& /*key*/) {}
  virtual void JobFinished(const crds::ObjectKey& /*key*/) {}

  // `bytes` of verified files were downloaded into the store. Counted per file once it is
  // verified and in place (also for the files a cancelled or failed job completed), so partial
  // data is never counted and a resumed file is counted once.
  virtual void BytesDownloaded(uint64_t /*bytes*/) {}

  // A file's size or digest did not match: a blob found damaged when re-verifying (spec.force),
  // a file the periodic verification (--verify-interval) found changed or missing, or a download
  // that still failed verification after its retries. `what` is the file's path
  // in the repo, or the transfer's error message when it does not say which file.
  virtual void VerificationFailed(const crds::ObjectKey& /*key*/, const std::string& /*what*/) {}

  // A sharding step completed successfully and took `elapsed`.
  virtual void ShardFinished(std::chrono::duration<double> /*elapsed*/) {}
};

}  // namespace modelcache::reconcilers
