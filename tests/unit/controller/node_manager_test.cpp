// The Manager's side of the node daemon: health (a stuck worker), readiness, statuses for the
// STATUS= line and the phase gauge, metric hooks, and the status flush at shutdown.

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>

#include "controller/manager.h"
#include "controller/metrics.h"
#include "tests/unit/controller/memory_status_store.h"
#include "tests/common/test_util.h"

namespace modelcache::controller {
namespace {

using reconcilers::Outcome;
using reconcilers::Request;
using reconcilers::Requeue;
using test_util::WaitFor;

crds::ObjectKey KeyOf(const crds::ModelCache& mc) {
  return crds::ObjectKey{mc.metadata.namespace_, mc.metadata.name};
}

crds::ModelCache NamedObject(const std::string& name) {
  crds::ModelCache mc;
  mc.metadata.name = name;
  mc.metadata.namespace_ = "default";
  mc.metadata.generation = 1;
  mc.spec.source.repo = "org/" + name;
  crds::ApplyDefaults(mc);
  return mc;
}

// A source that lists a fixed set of objects once.
class ListSource final : public Source {
 public:
  explicit ListSource(std::vector<crds::ModelCache> objects) : objects_(std::move(objects)) {}
  VoidResult Start(ObjectCache& cache, EnqueueFn enqueue) override {
    for (const auto& o : objects_) {
      cache.Upsert(CachedObject{o, "list", std::nullopt});
      enqueue(KeyOf(o));
    }
    synced_ = true;
    return {};
  }
  bool HasSynced() const override { return synced_; }
  void Stop() override {}

 private:
  std::vector<crds::ModelCache> objects_;
  std::atomic<bool> synced_{false};
};

// Reports "downloading" for keys named "dl-*", "ready" for the others; a key named "stuck" blocks
// in Reconcile until released.
class ScriptedReconciler final : public reconcilers::Reconciler {
 public:
  Result<Outcome> Reconcile(const Request& request, std::stop_token) override {
    if (request.key.name == "stuck") {
      std::unique_lock lock(mu_);
      entered_ = true;
      cv_.notify_all();
      cv_.wait(lock, [this] { return released_; });
    }
    crds::ModelCacheStatus s;
    if (request.key.name.rfind("dl-", 0) == 0) {
      s.phase = std::string(crds::kPhaseDownloading);
      s.progress = crds::ProgressStatus{250, 1000, 0, 1, 100};
      return Outcome{s, Requeue::After(std::chrono::hours(1))};
    }
    s.phase = std::string(crds::kPhaseReady);
    return Outcome{s, Requeue::Done()};
  }
  void Shutdown() override {}

  bool WaitEntered() {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(5), [this] { return entered_; });
  }
  void Release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false;
  bool released_ = false;
};

TEST(NodeManagerTest, AStuckWorkerMakesTheManagerUnhealthy) {
  ListSource source({NamedObject("stuck")});
  ObjectCache cache;
  MemoryStatusStore statuses;
  ScriptedReconciler reconciler;
  FakeClock clock;
  ManagerOptions options;
  options.workers = 1;
  options.stuck_after = std::chrono::seconds(60);
  Manager manager(options, source, cache, statuses, reconciler, clock);
  EXPECT_TRUE(manager.Healthy());
  EXPECT_FALSE(manager.Ready());

  std::stop_source stop;
  std::thread run([&] { ASSERT_TRUE(manager.Run(stop.get_token())); });
  ASSERT_TRUE(reconciler.WaitEntered());
  EXPECT_TRUE(manager.Ready());
  EXPECT_TRUE(manager.Healthy());  // busy, but not for long yet
  clock.Advance(std::chrono::seconds(59));
  EXPECT_TRUE(manager.Healthy());
  clock.Advance(std::chrono::seconds(2));
  EXPECT_FALSE(manager.Healthy());
  auto busy = manager.BusyWorkers();
  ASSERT_EQ(busy.size(), 1u);
  EXPECT_NE(busy[0].find("default/stuck (reconciling for 1m1s"), std::string::npos) << busy[0];

  reconciler.Release();
  EXPECT_TRUE(WaitFor([&] { return manager.Healthy(); }));
  stop.request_stop();
  run.join();
  EXPECT_FALSE(manager.Ready());
}

TEST(NodeManagerTest, CountsResultsTimesReconcilesAndReportsStatuses) {
  ListSource source({NamedObject("a"), NamedObject("b"), NamedObject("dl-c")});
  ObjectCache cache;
  MemoryStatusStore statuses;
  ScriptedReconciler reconciler;
  ControllerMetrics metrics;
  std::atomic<int> changes{0};
  ManagerOptions options;
  options.workers = 2;
  options.metrics = &metrics;
  options.on_status_change = [&] { ++changes; };
  Manager manager(options, source, cache, statuses, reconciler, RealClock::Get());

  std::stop_source stop;
  std::thread run([&] { ASSERT_TRUE(manager.Run(stop.get_token())); });
  ASSERT_TRUE(WaitFor([&] { return metrics.reconcile_duration_seconds.Count() == 3; }));
  EXPECT_EQ(metrics.reconciles.Value({"success"}), 2);
  EXPECT_EQ(metrics.reconciles.Value({"requeue"}), 1);  // dl-c asks to come back
  EXPECT_EQ(metrics.reconciles.Value({"error"}), 0);
  EXPECT_EQ(metrics.workqueue_latency_seconds.Count(), 3u);
  EXPECT_EQ(changes.load(), 3);
  EXPECT_EQ(manager.QueueDepth(), 0u);

  auto all = manager.Statuses();
  ASSERT_EQ(all.size(), 3u);
  int ready = 0;
  int downloading = 0;
  for (const auto& s : all) {
    ready += s.phase == crds::kPhaseReady ? 1 : 0;
    downloading += s.phase == crds::kPhaseDownloading ? 1 : 0;
  }
  EXPECT_EQ(ready, 2);
  EXPECT_EQ(downloading, 1);

  // Shutdown rewrites the status of the interrupted download: Pending, saying what happened.
  stop.request_stop();
  run.join();
  auto stored = statuses.Read(crds::ObjectKey{"default", "dl-c"});
  ASSERT_TRUE(stored && stored->has_value());
  const auto& s = (*stored)->status;
  EXPECT_EQ(s.phase, crds::kPhasePending);
  const crds::Condition* c = crds::FindCondition(s.conditions, "Ready");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->reason, "Pending");
  EXPECT_NE(c->message.find("interrupted by shutdown while downloading at 25%"), std::string::npos)
      << c->message;
  ASSERT_TRUE(s.progress);
  EXPECT_EQ(s.progress->bytes_done, 250u);  // what is on disk stays reported
  // Ready ones are left alone.
  auto a = statuses.Read(crds::ObjectKey{"default", "a"});
  ASSERT_TRUE(a && a->has_value());
  EXPECT_EQ((*a)->status.phase, crds::kPhaseReady);
}

}  // namespace
}  // namespace modelcache::controller
