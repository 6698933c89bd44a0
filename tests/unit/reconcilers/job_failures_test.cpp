// JobFailures: the backoff book of failed jobs, on times the test chooses.

#include "reconcilers/internal/job_failures.h"

#include <gtest/gtest.h>

namespace modelcache::reconcilers {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

const crds::ObjectKey kKey{"default", "m"};

class JobFailuresTest : public ::testing::Test {
 protected:
  // stall_limit 3, backoff from 1 s up to 5 s.
  JobFailures failures_{{3, seconds(1), seconds(5)}};
  Clock::TimePoint t0_{std::chrono::hours(1)};
};

TEST_F(JobFailuresTest, ATransientFailureWaitsABackoffThatDoublesUpToTheCap) {
  std::vector<milliseconds> waits;
  for (int i = 0; i < 5; ++i) {
    Error e = failures_.Record(kKey, "spec", Error(Reason::NetworkError, "reset"), t0_);
    ASSERT_TRUE(e.retry_after);
    waits.push_back(*e.retry_after);
  }
  EXPECT_EQ(waits, (std::vector<milliseconds>{seconds(1), seconds(2), seconds(4), seconds(5),
                                              seconds(5)}));
  // The last wait counts from the last failure: what is left of it, then nothing.
  auto pending = failures_.Pending(kKey, "spec", t0_ + seconds(2));
  ASSERT_TRUE(pending);
  EXPECT_EQ(pending->reason, Reason::NetworkError);
  EXPECT_EQ(pending->retry_after, seconds(3));
  EXPECT_FALSE(failures_.Pending(kKey, "spec", t0_ + seconds(5)));
}

TEST_F(JobFailuresTest, TheServersRetryAfterWinsWhenLonger) {
  Error e = failures_.Record(kKey, "spec", Error(Reason::RateLimited, "429", seconds(60)), t0_);
  EXPECT_EQ(e.retry_after, seconds(60));
  EXPECT_TRUE(failures_.Pending(kKey, "spec", t0_ + seconds(59)));
}

TEST_F(JobFailuresTest, APermanentFailureWaitsForAnotherSpec) {
  Error e = failures_.Record(kKey, "spec", Error(Reason::RepoNotFound, "gone"), t0_);
  EXPECT_FALSE(e.retry_after);
  auto pending = failures_.Pending(kKey, "spec", t0_ + std::chrono::hours(24));
  ASSERT_TRUE(pending);
  EXPECT_EQ(pending->reason, Reason::RepoNotFound);
  EXPECT_FALSE(failures_.Pending(kKey, "changed", t0_));
  failures_.Forget(kKey);
  EXPECT_FALSE(failures_.Pending(kKey, "spec", t0_));
}

TEST_F(JobFailuresTest, StallsInARowBecomeEndpointStalledAndAnotherSpecStartsOver) {
  auto stall = [] {
    Error e(Reason::NetworkError, "stalled: less than 1 KiB/s");
    e.stalled = true;
    return e;
  };
  EXPECT_EQ(failures_.Record(kKey, "spec", stall(), t0_).reason, Reason::NetworkError);
  EXPECT_EQ(failures_.Record(kKey, "spec", stall(), t0_).reason, Reason::NetworkError);
  Error third = failures_.Record(kKey, "spec", stall(), t0_);
  EXPECT_EQ(third.reason, Reason::EndpointStalled);
  EXPECT_NE(third.message.find("stalled in 3 jobs in a row"), std::string::npos) << third.message;
  EXPECT_FALSE(IsTransient(third.reason));
  // A failure that is not a stall breaks the row; a new spec counts from one.
  EXPECT_EQ(failures_.Record(kKey, "force-1", stall(), t0_).reason, Reason::NetworkError);
  EXPECT_EQ(failures_.Record(kKey, "force-1", Error(Reason::NetworkError, "reset"), t0_).reason,
            Reason::NetworkError);
  EXPECT_EQ(failures_.Record(kKey, "force-1", stall(), t0_).reason, Reason::NetworkError);
}

TEST_F(JobFailuresTest, ACancelledJobIsNoFailure) {
  Error e = failures_.Record(kKey, "spec", Error(Reason::Cancelled, "stopped"), t0_);
  EXPECT_EQ(e.reason, Reason::Cancelled);
  EXPECT_FALSE(failures_.Pending(kKey, "spec", t0_));
}

}  // namespace
}  // namespace modelcache::reconcilers
