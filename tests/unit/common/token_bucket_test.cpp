#include "common/token_bucket.h"

#include <chrono>

#include <gtest/gtest.h>

#include "common/clock.h"

namespace modelcache {
namespace {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;

TEST(TokenBucketTest, AllowsTheBurstAtOnceThenOnePerTokenInterval) {
  FakeClock clock;
  TokenBucket bucket(/*qps=*/2, /*burst=*/3, clock);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(bucket.Reserve(), nanoseconds(0)) << "token " << i << " of the burst";
  }
  // Beyond the burst, each reservation waits half a second longer than the one before.
  EXPECT_EQ(bucket.Reserve(), milliseconds(500));
  EXPECT_EQ(bucket.Reserve(), milliseconds(1000));
  EXPECT_EQ(bucket.Reserve(), milliseconds(1500));
}

TEST(TokenBucketTest, RefillsByTheClockUpToTheBurstOnly) {
  FakeClock clock;
  TokenBucket bucket(/*qps=*/10, /*burst=*/2, clock);
  EXPECT_TRUE(bucket.TryTake());
  EXPECT_TRUE(bucket.TryTake());
  EXPECT_FALSE(bucket.TryTake());
  clock.Advance(milliseconds(100));  // one token
  EXPECT_TRUE(bucket.TryTake());
  EXPECT_FALSE(bucket.TryTake());
  clock.Advance(std::chrono::hours(1));  // a long idle time still leaves only `burst`
  EXPECT_TRUE(bucket.TryTake());
  EXPECT_TRUE(bucket.TryTake());
  EXPECT_FALSE(bucket.TryTake());
}

TEST(TokenBucketTest, ReservationsAheadAreRepaidBeforeTryTakeSucceeds) {
  FakeClock clock;
  TokenBucket bucket(/*qps=*/1, /*burst=*/1, clock);
  EXPECT_EQ(bucket.Reserve(), nanoseconds(0));
  EXPECT_EQ(bucket.Reserve(), std::chrono::seconds(1));  // the balance is now -1
  clock.Advance(std::chrono::seconds(1));
  EXPECT_FALSE(bucket.TryTake()) << "the token of this second is already reserved";
  clock.Advance(std::chrono::seconds(1));
  EXPECT_TRUE(bucket.TryTake());
}

TEST(TokenBucketTest, ZeroQpsIsUnlimitedAndBurstIsAtLeastOne) {
  FakeClock clock;
  TokenBucket unlimited(/*qps=*/0, /*burst=*/1, clock);
  for (int i = 0; i < 1000; ++i) {
    ASSERT_EQ(unlimited.Reserve(), nanoseconds(0));
  }
  TokenBucket tiny(/*qps=*/1, /*burst=*/0, clock);
  EXPECT_EQ(tiny.burst(), 1);
  EXPECT_TRUE(tiny.TryTake());
  EXPECT_FALSE(tiny.TryTake());
}

}  // namespace
}  // namespace modelcache
