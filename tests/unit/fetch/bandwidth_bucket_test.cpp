// The transfer engine's bandwidth limit (fetch/internal/bandwidth_bucket.h) on a held clock: the
// bucket starts full, goes empty as bytes are taken, earns exactly rate x elapsed time, and never
// holds more than its burst.

#include "fetch/internal/bandwidth_bucket.h"

#include <chrono>

#include <gtest/gtest.h>

namespace modelcache::fetch::internal {
namespace {

using Clock = BandwidthBucket::Clock;
using std::chrono::milliseconds;

class BandwidthBucketTest : public ::testing::Test {
 protected:
  BandwidthBucket Make(uint64_t rate) {
    return BandwidthBucket(rate, [this] { return now_; });
  }
  Clock::time_point now_{std::chrono::seconds(1000)};
};

TEST_F(BandwidthBucketTest, UnlimitedNeverEmpties) {
  BandwidthBucket bucket = Make(0);
  EXPECT_FALSE(bucket.limited());
  bucket.Take(1ULL << 40);
  EXPECT_FALSE(bucket.Empty());
  EXPECT_EQ(bucket.tokens(), bucket.burst());
}

TEST_F(BandwidthBucketTest, BurstIsATwentiethOfASecondAndNoLessThan64KiB) {
  EXPECT_EQ(Make(20 << 20).burst(), 1 << 20);
  EXPECT_EQ(Make(1 << 20).burst(), 64 << 10);
  EXPECT_EQ(Make(1).burst(), 64 << 10);
}

TEST_F(BandwidthBucketTest, StartsFullAndEmptiesAsBytesAreTaken) {
  BandwidthBucket bucket = Make(20 << 20);  // burst 1 MiB
  EXPECT_TRUE(bucket.limited());
  EXPECT_EQ(bucket.tokens(), 1 << 20);
  bucket.Take((1 << 20) - 1);
  EXPECT_FALSE(bucket.Empty());
  bucket.Take(1);
  EXPECT_TRUE(bucket.Empty());
  // A write callback may take a whole buffer past empty: the debt is paid by later refills.
  bucket.Take(16 << 10);
  EXPECT_EQ(bucket.tokens(), -(16 << 10));
}

TEST_F(BandwidthBucketTest, RefillEarnsRateTimesElapsedTimeOnly) {
  BandwidthBucket bucket = Make(1 << 20);  // 1 MiB/s, burst 64 KiB
  bucket.Take(64 << 10);
  ASSERT_TRUE(bucket.Empty());
  // The clock stands still: nothing is earned, however often the engine refills.
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(bucket.Refill());
  }
  EXPECT_EQ(bucket.tokens(), 0);
  now_ += milliseconds(10);  // 10 ms at 1 MiB/s: 10485 bytes (truncated)
  EXPECT_TRUE(bucket.Refill());
  EXPECT_EQ(bucket.tokens(), (1 << 20) / 100);
  bucket.Take(bucket.tokens() + 1000);
  now_ += milliseconds(1);
  EXPECT_TRUE(bucket.Refill());
  EXPECT_EQ(bucket.tokens(), (1 << 20) / 1000 - 1000);
}

TEST_F(BandwidthBucketTest, RefillStopsAtTheBurst) {
  BandwidthBucket bucket = Make(1 << 20);
  bucket.Take(10 << 10);
  now_ += std::chrono::seconds(60);
  EXPECT_TRUE(bucket.Refill());
  EXPECT_EQ(bucket.tokens(), bucket.burst());
}

TEST_F(BandwidthBucketTest, ADebtTakesItsTimeToPayBack) {
  BandwidthBucket bucket = Make(1 << 20);
  bucket.Take((64 << 10) + (512 << 10));  // half a second's worth past empty
  now_ += milliseconds(250);
  EXPECT_FALSE(bucket.Refill());
  EXPECT_TRUE(bucket.Empty());
  now_ += milliseconds(260);
  EXPECT_TRUE(bucket.Refill());
  EXPECT_FALSE(bucket.Empty());
}

}  // namespace
}  // namespace modelcache::fetch::internal
