#include "daemon/job_metrics.h"

#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "controller/metrics.h"

namespace modelcache::controller {
namespace {

TEST(JobMetricsTest, CountsIntoTheMetricsAndTracksRunningJobs) {
  ControllerMetrics metrics;
  JobMetrics jobs(metrics);
  crds::ObjectKey a{"default", "a"};
  crds::ObjectKey b{"ml", "b"};
  jobs.JobStarted(b);
  jobs.JobStarted(a);
  jobs.JobStarted(a);  // a cancelled job winding down next to its replacement
  EXPECT_EQ(jobs.RunningJobs(), (std::vector<std::string>{"default/a", "default/a", "ml/b"}));
  jobs.JobFinished(a);
  jobs.JobFinished(b);
  EXPECT_EQ(jobs.RunningJobs(), (std::vector<std::string>{"default/a"}));

  jobs.BytesDownloaded(100);
  jobs.BytesDownloaded(23);
  jobs.VerificationFailed(a, "model.safetensors");
  jobs.ShardFinished(std::chrono::duration<double>(2.5));
  EXPECT_EQ(metrics.download_bytes.Value(), 123);
  EXPECT_EQ(metrics.verification_failures.Value(), 1);
  EXPECT_EQ(metrics.shard_duration_seconds.Count(), 1u);
  EXPECT_EQ(metrics.shard_duration_seconds.Sum(), 2.5);
}

}  // namespace
}  // namespace modelcache::controller
