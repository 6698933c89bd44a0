#include "controller/lane_executor.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace modelcache::controller {
namespace {

TEST(LaneExecutorTest, TasksOfOneKeyRunOneAtATimeInOrderUnderConcurrency) {
  LaneExecutor lanes(8, "test");
  constexpr int kKeys = 64;
  constexpr int kPerKey = 50;
  std::mutex mu;
  std::map<std::string, std::vector<int>> ran;
  std::map<std::string, int> running;
  std::atomic<bool> overlapped{false};
  // Four submitters, each owning a quarter of the keys, interleave their submissions.
  std::vector<std::thread> submitters;
  for (int t = 0; t < 4; ++t) {
    submitters.emplace_back([&, t] {
      for (int seq = 0; seq < kPerKey; ++seq) {
        for (int k = t; k < kKeys; k += 4) {
          std::string key = "ns/object-" + std::to_string(k);
          lanes.Submit(key, [&, key, seq](std::stop_token) {
            {
              std::lock_guard lock(mu);
              if (running[key]++ != 0) {
                overlapped = true;
              }
            }
            std::this_thread::yield();
            std::lock_guard lock(mu);
            ran[key].push_back(seq);
            --running[key];
          });
        }
      }
    });
  }
  for (auto& s : submitters) {
    s.join();
  }
  lanes.Drain();
  EXPECT_FALSE(overlapped) << "two tasks of one key ran at once";
  ASSERT_EQ(ran.size(), static_cast<size_t>(kKeys));
  std::vector<int> in_order(kPerKey);
  for (int i = 0; i < kPerKey; ++i) {
    in_order[i] = i;
  }
  for (const auto& [key, seqs] : ran) {
    EXPECT_EQ(seqs, in_order) << key;
  }
}

TEST(LaneExecutorTest, KeysOnDifferentLanesRunAtTheSameTime) {
  constexpr int kLanes = 4;
  LaneExecutor lanes(kLanes, "test");
  // One key per lane: each task waits until all of them have started, which only happens if
  // the lanes run them at once.
  std::vector<std::string> keys;
  std::vector<bool> taken(kLanes, false);
  for (int i = 0; static_cast<int>(keys.size()) < kLanes; ++i) {
    std::string key = "key-" + std::to_string(i);
    size_t lane = std::hash<std::string_view>()(key) % kLanes;
    if (!taken[lane]) {
      taken[lane] = true;
      keys.push_back(key);
    }
  }
  std::mutex mu;
  std::condition_variable cv;
  int started = 0;
  bool all_met = true;
  for (const std::string& key : keys) {
    lanes.Submit(key, [&](std::stop_token) {
      std::unique_lock lock(mu);
      ++started;
      cv.notify_all();
      if (!cv.wait_for(lock, std::chrono::seconds(30), [&] { return started == kLanes; })) {
        all_met = false;
      }
    });
  }
  lanes.Drain();
  EXPECT_TRUE(all_met);
  EXPECT_EQ(started, kLanes);
}

TEST(LaneExecutorTest, StopEndsTheRunningTaskAfterTheFlushTimeAndDropsTheRest) {
  LaneExecutor lanes(1, "test");
  std::atomic<int> ran{0};
  std::mutex mu;
  std::condition_variable_any cv;
  bool started = false;
  // The first task runs until its stop token fires; the two behind it never start.
  lanes.Submit("a", [&](std::stop_token stop) {
    std::unique_lock lock(mu);
    started = true;
    cv.notify_all();
    cv.wait(lock, stop, [] { return false; });
    ++ran;
  });
  lanes.Submit("a", [&](std::stop_token) { ++ran; });
  lanes.Submit("a", [&](std::stop_token) { ++ran; });
  {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return started; });
  }
  EXPECT_EQ(lanes.Stop(std::chrono::milliseconds(0)), 2u);
  EXPECT_EQ(ran.load(), 1);
  EXPECT_FALSE(lanes.Submit("a", [&](std::stop_token) { ++ran; }));
  EXPECT_EQ(lanes.pending(), 0u);
}

}  // namespace
}  // namespace modelcache::controller
