#include "controller/work_queue.h"

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/clock.h"
#include "crds/model_cache.h"

namespace modelcache::controller {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(WorkQueueTest, FifoAndDeduplicatesQueuedKeys) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.Add("a");
  q.Add("b");
  q.Add("a");
  q.Add("c");
  EXPECT_EQ(q.Len(), 3u);
  EXPECT_EQ(q.TryGet(), "a");
  EXPECT_EQ(q.TryGet(), "b");
  EXPECT_EQ(q.TryGet(), "c");
  EXPECT_EQ(q.TryGet(), std::nullopt);
}

TEST(WorkQueueTest, KeyBeingProcessedIsNotHandedOutAgainUntilDone) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.Add("a");
  ASSERT_EQ(q.TryGet(), "a");
  // Added twice while processing: coalesced, and held back until Done.
  q.Add("a");
  q.Add("a");
  EXPECT_EQ(q.Len(), 0u);
  EXPECT_EQ(q.TryGet(), std::nullopt);
  q.Done("a");
  EXPECT_EQ(q.Len(), 1u);
  ASSERT_EQ(q.TryGet(), "a");
  q.Done("a");
  // Processed exactly once more.
  EXPECT_EQ(q.TryGet(), std::nullopt);
}

TEST(WorkQueueTest, DoneWithoutReAddDoesNotRequeue) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.Add("a");
  ASSERT_EQ(q.TryGet(), "a");
  q.Done("a");
  EXPECT_EQ(q.Len(), 0u);
}

TEST(WorkQueueTest, WorksWithObjectKeys) {
  FakeClock clock;
  WorkQueue<crds::ObjectKey> q(clock);
  q.Add({"default", "b"});
  q.Add({"default", "a"});
  q.Add({"default", "b"});
  EXPECT_EQ(q.TryGet(), (crds::ObjectKey{"default", "b"}));
  EXPECT_EQ(q.TryGet(), (crds::ObjectKey{"default", "a"}));
  EXPECT_EQ(q.TryGet(), std::nullopt);
}

TEST(WorkQueueTest, AddAfterBecomesReadyWhenTheClockPasses) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.AddAfter("late", seconds(10));
  q.AddAfter("early", seconds(5));
  EXPECT_EQ(q.NumWaiting(), 2u);
  EXPECT_EQ(q.TryGet(), std::nullopt);
  clock.Advance(milliseconds(4999));
  EXPECT_EQ(q.TryGet(), std::nullopt);
  clock.Advance(milliseconds(1));
  EXPECT_EQ(q.TryGet(), "early");
  EXPECT_EQ(q.TryGet(), std::nullopt);
  clock.Advance(seconds(5));
  EXPECT_EQ(q.TryGet(), "late");
}

TEST(WorkQueueTest, AddAfterPromotesInReadyTimeOrder) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.AddAfter("c", milliseconds(30));
  q.AddAfter("a", milliseconds(10));
  q.AddAfter("b", milliseconds(20));
  clock.Advance(seconds(1));
  EXPECT_EQ(q.TryGet(), "a");
  EXPECT_EQ(q.TryGet(), "b");
  EXPECT_EQ(q.TryGet(), "c");
}

TEST(WorkQueueTest, AddAfterEarliestWins) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.AddAfter("a", seconds(10));
  q.AddAfter("a", seconds(2));   // earlier: replaces
  q.AddAfter("a", seconds(30));  // later: ignored
  EXPECT_EQ(q.NumWaiting(), 1u);
  clock.Advance(seconds(2));
  EXPECT_EQ(q.TryGet(), "a");
  q.Done("a");
  // Nothing is left waiting for the 10 s or 30 s marks.
  clock.Advance(seconds(60));
  EXPECT_EQ(q.TryGet(), std::nullopt);
  EXPECT_EQ(q.NumWaiting(), 0u);
}

TEST(WorkQueueTest, AddAfterOfAQueuedKeyIsDeduplicatedWhenDue) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.Add("a");
  q.AddAfter("a", seconds(1));
  clock.Advance(seconds(1));
  EXPECT_EQ(q.Len(), 1u);
  EXPECT_EQ(q.TryGet(), "a");
  EXPECT_EQ(q.TryGet(), std::nullopt);
}

TEST(WorkQueueTest, NonPositiveDelayIsAnImmediateAdd) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.AddAfter("a", milliseconds(0));
  q.AddAfter("b", milliseconds(-5));
  EXPECT_EQ(q.Len(), 2u);
  EXPECT_EQ(q.NumWaiting(), 0u);
}

TEST(WorkQueueTest, PerKeyBackoffDoublesCapsAndResetsOnForget) {
  FakeClock clock;
  // Without the token bucket, to see the per-key limiter alone.
  WorkQueue<std::string> q(clock, RateLimiterOptions{.qps = 0});
  EXPECT_EQ(q.When("a"), milliseconds(5));
  EXPECT_EQ(q.When("a"), milliseconds(10));
  EXPECT_EQ(q.When("a"), milliseconds(20));
  EXPECT_EQ(q.When("a"), milliseconds(40));
  EXPECT_EQ(q.NumRequeues("a"), 4);
  // Another key has its own count.
  EXPECT_EQ(q.When("b"), milliseconds(5));
  // 5 ms * 2^18 = 1310.72 s > 1000 s: capped from the 19th failure on, and it stays capped.
  for (int i = 4; i < 17; ++i) {
    (void)q.When("a");
  }
  EXPECT_EQ(q.When("a"), milliseconds(5 * (1 << 17)));  // 655.36 s, the 18th failure
  EXPECT_EQ(q.When("a"), seconds(1000));
  for (int i = 0; i < 100; ++i) {
    (void)q.When("a");
  }
  EXPECT_EQ(q.When("a"), seconds(1000));
  q.Forget("a");
  EXPECT_EQ(q.NumRequeues("a"), 0);
  EXPECT_EQ(q.When("a"), milliseconds(5));
  EXPECT_EQ(q.NumRequeues("b"), 1);
}

TEST(WorkQueueTest, AddRateLimitedWaitsForTheBackoff) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.AddRateLimited("a");  // 5 ms
  EXPECT_EQ(q.TryGet(), std::nullopt);
  clock.Advance(milliseconds(5));
  ASSERT_EQ(q.TryGet(), "a");
  q.Done("a");
  q.AddRateLimited("a");  // 10 ms
  clock.Advance(milliseconds(9));
  EXPECT_EQ(q.TryGet(), std::nullopt);
  clock.Advance(milliseconds(1));
  ASSERT_EQ(q.TryGet(), "a");
  q.Done("a");
  q.Forget("a");
  q.AddRateLimited("a");  // back to 5 ms
  clock.Advance(milliseconds(5));
  EXPECT_EQ(q.TryGet(), "a");
}

TEST(WorkQueueTest, TokenBucketAllowsABurstOf100ThenTenPerSecond) {
  FakeClock clock;
  WorkQueue<int> q(clock);
  // Each distinct key fails for the first time: the per-key delay is 5 ms, so the bucket shows.
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(q.When(i), milliseconds(5)) << i;
  }
  EXPECT_EQ(q.When(100), milliseconds(100));
  EXPECT_EQ(q.When(101), milliseconds(200));
  // The bucket refills at 10 per second: one second later the balance is -2 + 10 = 8.
  clock.Advance(seconds(1));
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(q.When(200 + i), milliseconds(5)) << i;
  }
  EXPECT_EQ(q.When(300), milliseconds(100));
  // It never holds more than the burst.
  clock.Advance(seconds(3600));
  for (int i = 0; i < 100; ++i) {
    EXPECT_EQ(q.When(400 + i), milliseconds(5)) << i;
  }
  EXPECT_EQ(q.When(500), milliseconds(100));
}

TEST(WorkQueueTest, ShutDownDrainsThenReturnsNullopt) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.Add("a");
  q.Add("b");
  q.AddAfter("later", seconds(1));
  q.ShutDown();
  EXPECT_TRUE(q.ShuttingDown());
  q.Add("c");  // ignored
  EXPECT_EQ(q.Get(), "a");
  EXPECT_EQ(q.Get(), "b");
  clock.Advance(seconds(2));
  EXPECT_EQ(q.Get(), std::nullopt);  // the delayed key was dropped
  EXPECT_EQ(q.TryGet(), std::nullopt);
}

TEST(WorkQueueTest, ShutDownUnblocksWaitingGet) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  std::optional<std::string> got = "unset";
  std::thread worker([&] { got = q.Get(); });
  q.ShutDown();
  worker.join();
  EXPECT_EQ(got, std::nullopt);
}

TEST(WorkQueueTest, BlockedGetWakesOnAdd) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  std::optional<std::string> got;
  std::thread worker([&] { got = q.Get(); });
  q.Add("a");
  worker.join();
  EXPECT_EQ(got, "a");
}

TEST(WorkQueueTest, BlockedGetWakesWhenFakeClockPassesDelay) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  q.AddAfter("a", seconds(30));
  std::optional<std::string> got;
  std::thread worker([&] { got = q.Get(); });
  clock.Advance(seconds(30));
  q.Tick();
  worker.join();
  EXPECT_EQ(got, "a");
}

TEST(WorkQueueTest, BlockedGetWakesForARealClockDelay) {
  WorkQueue<std::string> q(RealClock::Get());
  q.AddAfter("a", milliseconds(1));
  EXPECT_EQ(q.Get(), "a");
}

// N workers hammer the queue; no key may ever be processed by two workers at once, and every add
// that happened after a key's last processing began leads to one more processing.
TEST(WorkQueueTest, ConcurrentWorkersNeverShareAKey) {
  FakeClock clock;
  WorkQueue<int> q(clock);
  constexpr int kWorkers = 8;
  constexpr int kKeys = 20;
  constexpr int kAddsPerKey = 200;
  std::mutex mu;
  std::set<int> in_flight;
  std::atomic<int> overlaps{0};
  std::map<int, int> processed;
  std::vector<std::thread> workers;
  workers.reserve(kWorkers);
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&] {
      while (auto key = q.Get()) {
        {
          std::lock_guard lock(mu);
          if (!in_flight.insert(*key).second) {
            ++overlaps;
          }
        }
        std::this_thread::yield();
        {
          std::lock_guard lock(mu);
          in_flight.erase(*key);
          ++processed[*key];
        }
        q.Done(*key);
      }
    });
  }
  std::vector<std::thread> producers;
  producers.reserve(2);
  for (int p = 0; p < 2; ++p) {
    producers.emplace_back([&] {
      for (int i = 0; i < kAddsPerKey; ++i) {
        for (int k = 0; k < kKeys; ++k) {
          q.Add(k);
        }
      }
    });
  }
  for (auto& t : producers) {
    t.join();
  }
  // Wait (bounded) until the queue is idle: nothing ready and nothing in flight.
  for (int i = 0; i < 5000; ++i) {
    {
      std::lock_guard lock(mu);
      if (q.Len() == 0 && in_flight.empty()) {
        break;
      }
    }
    std::this_thread::sleep_for(milliseconds(1));
  }
  q.ShutDown();
  for (auto& t : workers) {
    t.join();
  }
  EXPECT_EQ(overlaps.load(), 0);
  ASSERT_EQ(processed.size(), static_cast<size_t>(kKeys));
  for (const auto& [key, count] : processed) {
    // Coalescing: at least once, never more often than it was added.
    EXPECT_GE(count, 1);
    EXPECT_LE(count, 2 * kAddsPerKey);
  }
}

}  // namespace
}  // namespace modelcache::controller

namespace modelcache::controller {
namespace {

TEST(WorkQueueLatencyTest, MeasuresFromTheAddThatMadeTheKeyDirtyToItsHandOut) {
  FakeClock clock;
  WorkQueue<std::string> q(clock);
  std::vector<std::chrono::nanoseconds> seen;
  q.SetLatencyObserver([&](std::chrono::nanoseconds d) { seen.push_back(d); });

  q.Add("a");
  clock.Advance(std::chrono::milliseconds(30));
  q.Add("a");  // already queued: the first add's time stands
  clock.Advance(std::chrono::milliseconds(20));
  ASSERT_EQ(q.TryGet(), "a");
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], std::chrono::milliseconds(50));

  // Added while being processed: waits from that add, through Done, to the next hand-out.
  q.Add("a");
  clock.Advance(std::chrono::milliseconds(7));
  q.Done("a");
  clock.Advance(std::chrono::milliseconds(3));
  ASSERT_EQ(q.TryGet(), "a");
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1], std::chrono::milliseconds(10));
  q.Done("a");

  // A delayed add counts from when its delay passed, not from the call.
  q.AddAfter("b", std::chrono::seconds(10));
  clock.Advance(std::chrono::seconds(10));
  q.Tick();
  clock.Advance(std::chrono::milliseconds(4));
  ASSERT_EQ(q.TryGet(), "b");
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(seen[2], std::chrono::milliseconds(4));
}

}  // namespace
}  // namespace modelcache::controller
