#pragma once

// The controller's side of reconcilers::ReconcileObserver: counts downloaded bytes, verification
// failures and shard durations into ControllerMetrics, and remembers which jobs are running, so
// that a shutdown that runs out of time can say what it was waiting for.
//
// Thread-safe.

#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "controller/metrics.h"
#include "reconcilers/observer.h"

namespace modelcache::controller {

class JobMetrics final : public reconcilers::ReconcileObserver {
 public:
  // `metrics` must outlive this object.
  explicit JobMetrics(ControllerMetrics& metrics) : metrics_(metrics) {}

  void JobStarted(const crds::ObjectKey& key) override;
  void JobFinished(const crds::ObjectKey& key) override;
  void BytesDownloaded(uint64_t bytes) override;
  void VerificationFailed(const crds::ObjectKey& key, const std::string& what) override;
  void ShardFinished(std::chrono::duration<double> elapsed) override;

  // "namespace/name" of every job started and not yet finished, sorted (a key appears twice while
  // a cancelled job winds down next to its replacement).
  std::vector<std::string> RunningJobs() const;

 private:
  ControllerMetrics& metrics_;
  mutable std::mutex mu_;
  std::multiset<crds::ObjectKey> running_;  // guarded by mu_
};

}  // namespace modelcache::controller
