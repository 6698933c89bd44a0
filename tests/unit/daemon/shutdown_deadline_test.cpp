#include "daemon/shutdown_deadline.h"

#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/log.h"

namespace modelcache::controller {
namespace {

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

}  // namespace
}  // namespace modelcache::controller
