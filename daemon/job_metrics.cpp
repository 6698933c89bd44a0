#include "daemon/job_metrics.h"

#include <spdlog/spdlog.h>

namespace modelcache::controller {

void JobMetrics::JobStarted(const crds::ObjectKey& key) {
  std::lock_guard lock(mu_);
  running_.insert(key);
}

void JobMetrics::JobFinished(const crds::ObjectKey& key) {
  std::lock_guard lock(mu_);
  auto it = running_.find(key);
  if (it != running_.end()) {
    running_.erase(it);
  }
}

void JobMetrics::BytesDownloaded(uint64_t bytes) {
  metrics_.download_bytes.Inc({}, static_cast<double>(bytes));
}

void JobMetrics::VerificationFailed(const crds::ObjectKey& key, const std::string& what) {
  metrics_.verification_failures.Inc();
  spdlog::debug("{}: verification failure: {}", key.ToString(), what);
}

void JobMetrics::ShardFinished(std::chrono::duration<double> elapsed) {
  metrics_.shard_duration_seconds.Observe(elapsed.count());
}

std::vector<std::string> JobMetrics::RunningJobs() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  for (const auto& key : running_) {
    out.push_back(key.ToString());
  }
  return out;
}

}  // namespace modelcache::controller
