// The job pool's fairness between tenants: a free slot goes to the waiting tenant with the fewest
// running jobs, one tenant alone uses every slot, and a tenant above its share gives a slot back
// (its last-started preemptible job) when another tenant waits.

#include "reconcilers/internal/job_pool.h"

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <stop_token>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace modelcache::reconcilers {
namespace {

// Jobs that run until released or preempted, and a record of what happened in which order.
class Jobs {
 public:
  // A job named `name` that records its start, then waits for Release(name) or a preemption.
  std::function<void()> Job(const std::string& name) {
    return [this, name] {
      std::unique_lock lock(mu_);
      events_.push_back("start " + name);
      cv_.notify_all();
      std::stop_token stop = stops_[name].get_token();
      cv_.wait(lock, [&] { return released_.count(name) > 0 || stop.stop_requested(); });
      events_.push_back((stop.stop_requested() ? "preempted " : "end ") + name);
      cv_.notify_all();
    };
  }
  // Its preempt function: agrees (and stops the job) unless `refuse`.
  std::function<bool()> Preempt(const std::string& name, bool refuse = false) {
    return [this, name, refuse] {
      std::lock_guard lock(mu_);
      asked_.push_back(name);
      if (refuse) {
        return false;
      }
      stops_[name].request_stop();
      cv_.notify_all();
      return true;
    };
  }
  // Submits a preemptible job `name` of `tenant` and waits until it runs.
  bool Started(JobPool& pool, const std::string& tenant, const std::string& name,
               bool refuse = false) {
    pool.Submit(tenant, Job(name), Preempt(name, refuse));
    return Await("start " + name);
  }
  void Release(const std::string& name) {
    std::lock_guard lock(mu_);
    released_[name] = true;
    cv_.notify_all();
  }
  // Waits until `event` happened; false after a generous bound (a hung pool, not a slow one).
  bool Await(const std::string& event) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(60), [&] { return Has(event); });
  }
  std::vector<std::string> events() {
    std::lock_guard lock(mu_);
    return events_;
  }
  std::vector<std::string> asked() {
    std::lock_guard lock(mu_);
    return asked_;
  }
  size_t Index(const std::string& event) {
    std::lock_guard lock(mu_);
    for (size_t i = 0; i < events_.size(); ++i) {
      if (events_[i] == event) {
        return i;
      }
    }
    return events_.size();
  }
  void ReleaseAll(const std::vector<std::string>& names) {
    for (const auto& n : names) {
      Release(n);
    }
  }

 private:
  bool Has(const std::string& event) const {
    for (const auto& e : events_) {
      if (e == event) {
        return true;
      }
    }
    return false;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> events_;
  std::vector<std::string> asked_;
  std::map<std::string, std::stop_source> stops_;
  std::map<std::string, bool> released_;
};

TEST(JobPoolTest, OneTenantAloneUsesEverySlot) {
  Jobs jobs;
  JobPool pool(3);
  for (const char* name : {"a1", "a2", "a3"}) {
    pool.Submit("a", jobs.Job(name), jobs.Preempt(name));
  }
  for (const char* name : {"a1", "a2", "a3"}) {
    ASSERT_TRUE(jobs.Await(std::string("start ") + name));
  }
  EXPECT_TRUE(jobs.asked().empty());  // nobody else waits: nothing is preempted
  jobs.ReleaseAll({"a1", "a2", "a3"});
}

TEST(JobPoolTest, AFreeSlotGoesToTheWaitingTenantWithFewestRunningJobs) {
  Jobs jobs;
  JobPool pool(2);
  // Not preemptible: only the order of starts decides.
  pool.Submit("a", jobs.Job("a1"));
  pool.Submit("a", jobs.Job("a2"));
  ASSERT_TRUE(jobs.Await("start a1"));
  ASSERT_TRUE(jobs.Await("start a2"));
  pool.Submit("a", jobs.Job("a3"));
  pool.Submit("a", jobs.Job("a4"));
  pool.Submit("b", jobs.Job("b1"));  // submitted after a3 and a4
  jobs.Release("a1");
  ASSERT_TRUE(jobs.Await("start b1"));
  EXPECT_LT(jobs.Index("start b1"), jobs.Index("start a3"));
  jobs.Release("a2");
  ASSERT_TRUE(jobs.Await("start a3"));  // then the tenant's own jobs in submission order
  jobs.Release("a3");
  ASSERT_TRUE(jobs.Await("start a4"));
  jobs.ReleaseAll({"a4", "b1"});
}

TEST(JobPoolTest, ATenantAboveItsShareGivesItsLastStartedJobBackWhenAnotherWaits) {
  Jobs jobs;
  JobPool pool(2);
  ASSERT_TRUE(jobs.Started(pool, "a", "a1"));
  ASSERT_TRUE(jobs.Started(pool, "a", "a2"));
  pool.Submit("b", jobs.Job("b1"), jobs.Preempt("b1"));
  // b1 starts while a1 still runs: a2 (started last) gave its slot back, a1 was never asked.
  ASSERT_TRUE(jobs.Await("start b1"));
  EXPECT_LT(jobs.Index("preempted a2"), jobs.Index("start b1"));
  EXPECT_EQ(jobs.asked(), std::vector<std::string>{"a2"});
  EXPECT_EQ(jobs.Index("end a1"), jobs.events().size());
  // Each tenant at its share (1 of 2): a third submission of a's waits and preempts nobody.
  pool.Submit("a", jobs.Job("a3"), jobs.Preempt("a3"));
  jobs.Release("b1");
  ASSERT_TRUE(jobs.Await("start a3"));
  EXPECT_EQ(jobs.asked(), std::vector<std::string>{"a2"});
  jobs.ReleaseAll({"a1", "a3"});
}

TEST(JobPoolTest, AJobThatCannotStopKeepsItsSlotAndTheNextIsAsked) {
  Jobs jobs;
  JobPool pool(3);
  ASSERT_TRUE(jobs.Started(pool, "a", "a1"));
  ASSERT_TRUE(jobs.Started(pool, "a", "a2"));
  ASSERT_TRUE(jobs.Started(pool, "a", "a3", /*refuse=*/true));
  pool.Submit("b", jobs.Job("b1"));
  ASSERT_TRUE(jobs.Await("start b1"));
  EXPECT_EQ(jobs.asked(), (std::vector<std::string>{"a3", "a2"}));
  EXPECT_LT(jobs.Index("preempted a2"), jobs.Index("start b1"));
  jobs.ReleaseAll({"a1", "a3", "b1"});
}

}  // namespace
}  // namespace modelcache::reconcilers
