// Small parts of the node daemon: store usage, the shutdown deadline, job metrics, --listen.

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "common/log.h"
#include "controller/daemon_services.h"
#include "controller/job_metrics.h"
#include "controller/shutdown_deadline.h"
#include "controller/store_usage.h"
#include "tests/unit/controller/test_util.h"

namespace modelcache::controller {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::WriteFile;

TEST(StoreUsageTest, CountsEachInodeOnceAndSkipsSymlinks) {
  TempDir dir;
  const std::string& root = dir.path();
  WriteFile(root + "/hub/blobs/a", std::string(1000, 'a'));
  WriteFile(root + "/hub/blobs/b", std::string(300, 'b'));
  fs::create_directories(root + "/artifacts/x");
  fs::create_hard_link(root + "/hub/blobs/a", root + "/artifacts/x/model.bin");
  fs::create_directories(root + "/hub/snapshots/c");
  fs::create_symlink("../../blobs/a", root + "/hub/snapshots/c/model.bin");
  auto usage = MeasureStoreUsage(root);
  ASSERT_TRUE(usage) << usage.error().message;
  EXPECT_EQ(usage->used_bytes, 1300u);
  EXPECT_GT(usage->free_bytes, 0u);

  auto missing = MeasureStoreUsage(root + "/none");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().reason, Reason::StorageError);
  EXPECT_NE(missing.error().message.find(root + "/none"), std::string::npos);
}

// In a child process: a deadline disarmed in time, then armed again (ignored), must never fire.
// A second deadline, armed later and due a second after the first would have been, is the
// clock: the child ends when the first deadline that fires ends it, so the log must name the
// second one. Checked by breaking Disarm (disarmed_ no longer set): the first deadline fires at
// 500 ms and the child's log names it instead.
TEST(ShutdownDeadlineDeathTest, DisarmedInTimeDoesNothing) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        (void)SetupLogging(LogFormat::Text);
        ShutdownDeadline disarmed;
        disarmed.SetDescriber([] { return std::vector<std::string>{"the-disarmed-one"}; });
        disarmed.Arm(std::chrono::milliseconds(500));
        disarmed.Disarm();
        disarmed.Arm(std::chrono::milliseconds(1));  // after Disarm: ignored
        ShutdownDeadline clock;
        clock.SetDescriber([] { return std::vector<std::string>{"the-clock"}; });
        clock.Arm(std::chrono::milliseconds(1500));
        while (true) {
          ::pause();
        }
      },
      ::testing::ExitedWithCode(ShutdownDeadline::kExitCode), "still running: the-clock;");
}

TEST(ShutdownDeadlineDeathTest, ExpiryLogsWhatStillRunsAndExitsNonZero) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        (void)SetupLogging(LogFormat::Text);  // to stderr, where the death test looks
        ShutdownDeadline deadline;
        deadline.SetDescriber([] {
          return std::vector<std::string>{"default/a (job)", "default/b (reconciling for 2s)"};
        });
        deadline.Arm(std::chrono::milliseconds(10));
        // Shutdown never finishes.
        while (true) {
          ::pause();
        }
      },
      ::testing::ExitedWithCode(ShutdownDeadline::kExitCode),
      "still running: default/a \\(job\\), default/b \\(reconciling for 2s\\)");
}

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

TEST(ListenOptionTest, OffAndEmptyMeanNoEndpoint) {
  auto off = ParseListenOption("off");
  ASSERT_TRUE(off);
  EXPECT_FALSE(off->has_value());
  auto empty = ParseListenOption("");
  ASSERT_TRUE(empty);
  EXPECT_FALSE(empty->has_value());
  auto on = ParseListenOption("127.0.0.1:9100");
  ASSERT_TRUE(on && on->has_value());
  EXPECT_EQ((*on)->port, 9100);
  auto bad = ParseListenOption("9100");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::InvalidSpec);
}

}  // namespace
}  // namespace modelcache::controller
