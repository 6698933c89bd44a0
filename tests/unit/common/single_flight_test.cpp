#include "common/single_flight.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace modelcache {
namespace {

// A call that blocks until released, counting how often it ran.
class Gate {
 public:
  Result<std::string> Call(std::string answer) {
    ++runs_;
    std::unique_lock lock(mu_);
    entered_ = true;
    cv_.notify_all();
    cv_.wait(lock, [this] { return open_; });
    return answer;
  }
  void WaitEntered() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return entered_; });
  }
  void Open() {
    std::lock_guard lock(mu_);
    open_ = true;
    cv_.notify_all();
  }
  int runs() const { return runs_.load(); }

 private:
  std::atomic<int> runs_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;
  bool open_ = false;
};

TEST(SingleFlightTest, CallersDuringAFlightShareItsResult) {
  SingleFlight<std::string> flights;
  Gate gate;
  Result<std::string> first = Error(Reason::Internal, "unset");
  std::thread leader([&] { first = flights.Do("k", [&] { return gate.Call("abc"); }); });
  gate.WaitEntered();
  std::vector<std::thread> followers;
  std::vector<Result<std::string>> results(3, Error(Reason::Internal, "unset"));
  for (int i = 0; i < 3; ++i) {
    followers.emplace_back([&, i] {
      results[i] = flights.Do("k", [&] { return gate.Call("not shared"); });
    });
  }
  // Wait until all three joined the flight, then let it land.
  while (flights.shared() < 3) {
    std::this_thread::yield();
  }
  gate.Open();
  leader.join();
  for (auto& t : followers) {
    t.join();
  }
  ASSERT_TRUE(first);
  EXPECT_EQ(*first, "abc");
  for (const auto& r : results) {
    ASSERT_TRUE(r);
    EXPECT_EQ(*r, "abc");
  }
  EXPECT_EQ(gate.runs(), 1);
}

TEST(SingleFlightTest, NothingIsKeptAfterTheFlight) {
  SingleFlight<std::string> flights;
  int runs = 0;
  auto fn = [&]() -> Result<std::string> { return std::to_string(++runs); };
  EXPECT_EQ(*flights.Do("k", fn), "1");
  EXPECT_EQ(*flights.Do("k", fn), "2");  // a later caller asks again
  EXPECT_EQ(*flights.Do("other", fn), "3");
  EXPECT_EQ(flights.shared(), 0U);
}

TEST(SingleFlightTest, ErrorsAreSharedButACancelledLeaderIsNot) {
  SingleFlight<std::string> flights;
  // An error of the call itself is the answer for everyone who asked during it.
  Gate failing;
  std::thread leader([&] {
    (void)flights.Do("k", [&]() -> Result<std::string> {
      (void)failing.Call("");
      return Error(Reason::RepoNotFound, "no such repo");
    });
  });
  failing.WaitEntered();
  Result<std::string> follower = std::string("unset");
  std::thread t([&] { follower = flights.Do("k", [] { return Result<std::string>("mine"); }); });
  while (flights.shared() < 1) {
    std::this_thread::yield();
  }
  failing.Open();
  leader.join();
  t.join();
  ASSERT_FALSE(follower);
  EXPECT_EQ(follower.error().reason, Reason::RepoNotFound);

  // A leader that was stopped: the follower was not, and makes its own call.
  Gate cancelled;
  std::thread stopped([&] {
    (void)flights.Do("c", [&]() -> Result<std::string> {
      (void)cancelled.Call("");
      return Error(Reason::Cancelled, "stopped");
    });
  });
  cancelled.WaitEntered();
  uint64_t shared = flights.shared();
  Result<std::string> own = std::string("unset");
  std::thread t2([&] { own = flights.Do("c", [] { return Result<std::string>("own"); }); });
  while (flights.shared() < shared + 1) {
    std::this_thread::yield();
  }
  cancelled.Open();
  stopped.join();
  t2.join();
  ASSERT_TRUE(own);
  EXPECT_EQ(*own, "own");
}

TEST(SingleFlightTest, AWaiterCanBeStopped) {
  SingleFlight<std::string> flights;
  Gate gate;
  std::thread leader([&] { (void)flights.Do("k", [&] { return gate.Call("late"); }); });
  gate.WaitEntered();
  std::stop_source stop;
  Result<std::string> waited = std::string("unset");
  std::thread t([&] {
    waited = flights.Do("k", [] { return Result<std::string>("x"); }, stop.get_token());
  });
  while (flights.shared() < 1) {
    std::this_thread::yield();
  }
  stop.request_stop();
  t.join();
  ASSERT_FALSE(waited);
  EXPECT_EQ(waited.error().reason, Reason::Cancelled);
  gate.Open();
  leader.join();
}

}  // namespace
}  // namespace modelcache
