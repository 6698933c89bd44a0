#include "controller/manager.h"
#include "controller/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

namespace modelcache::controller {
namespace {

using reconcilers::Outcome;
using reconcilers::Requeue;

const crds::Condition& Ready(const crds::ModelCacheStatus& s) {
  const crds::Condition* c = crds::FindCondition(s.conditions, "Ready");
  EXPECT_NE(c, nullptr);
  return *c;
}

crds::ModelCacheStatus ReadyStatus() {
  crds::ModelCacheStatus s;
  s.phase = "Ready";
  s.artifact = crds::ArtifactStatus{"m", "v1", "m@sha256:abc", "file:///s", "/s", 10, 1};
  return Manager::ComposeStatus({}, Outcome{s, Requeue::Done()}, 1, "2026-11-24T00:00:00Z");
}

TEST(ComposeStatusTest, ProgressPhasesAreReadyFalseWithThePhaseAsReason) {
  crds::ModelCacheStatus s;
  s.phase = "Downloading";
  s.progress = crds::ProgressStatus{512, 1024, 1, 2, 0};
  auto out = Manager::ComposeStatus({}, Outcome{s, Requeue::After(std::chrono::seconds(1))}, 3,
                                    "2026-11-24T00:00:00Z");
  EXPECT_EQ(out.observed_generation, 3);
  EXPECT_EQ(Ready(out).status, "False");
  EXPECT_EQ(Ready(out).reason, "Downloading");
  EXPECT_EQ(Ready(out).observed_generation, 3);
  EXPECT_NE(Ready(out).message.find("50%"), std::string::npos) << Ready(out).message;
  EXPECT_EQ(Ready(out).last_transition_time, "2026-11-24T00:00:00Z");
}

TEST(ComposeStatusTest, ReadyIsTrueAndTransitionTimeOnlyMovesOnStatusChange) {
  auto ready = ReadyStatus();
  EXPECT_EQ(Ready(ready).status, "True");
  EXPECT_EQ(Ready(ready).reason, "ArtifactReady");
  // Same status again, later: lastTransitionTime stays.
  auto again = Manager::ComposeStatus(ready, Outcome{ready, Requeue::Done()}, 1,
                                      "2026-11-24T01:00:00Z");
  EXPECT_EQ(Ready(again).last_transition_time, "2026-11-24T00:00:00Z");
}

TEST(ComposeStatusTest, PermanentErrorFailsWithTheReasonWord) {
  crds::ModelCacheStatus prev;
  prev.phase = "Resolving";
  auto out = Manager::ComposeStatus(prev, Error(Reason::RepoNotFound, "repository x not found"),
                                    2, "2026-11-24T00:00:00Z");
  EXPECT_EQ(out.phase, "Failed");
  EXPECT_EQ(Ready(out).status, "False");
  EXPECT_EQ(Ready(out).reason, "RepoNotFound");
  EXPECT_EQ(Ready(out).message, "repository x not found");
  EXPECT_EQ(out.observed_generation, 2);
}

TEST(ComposeStatusTest, TransientErrorKeepsThePhaseAndSaysItWillRetry) {
  crds::ModelCacheStatus prev;
  prev.phase = "Downloading";
  auto out = Manager::ComposeStatus(prev, Error(Reason::NetworkError, "connection reset"), 1,
                                    "2026-11-24T00:00:00Z");
  EXPECT_EQ(out.phase, "Downloading");
  EXPECT_EQ(Ready(out).reason, "NetworkError");
  EXPECT_NE(Ready(out).message.find("will retry"), std::string::npos);
}

TEST(ComposeStatusTest, FailedRefreshOfAReadyResourceStaysReady) {
  auto ready = ReadyStatus();
  auto out = Manager::ComposeStatus(ready, Error(Reason::NetworkError, "hub unreachable"), 1,
                                    "2026-11-24T02:00:00Z");
  EXPECT_EQ(out.phase, "Ready");
  EXPECT_EQ(Ready(out).status, "True");
  EXPECT_EQ(Ready(out).last_transition_time, "2026-11-24T00:00:00Z");
  EXPECT_NE(Ready(out).message.find("refresh failed"), std::string::npos);
  // A second failure does not stack messages.
  auto twice = Manager::ComposeStatus(out, Error(Reason::NetworkError, "hub unreachable"), 1,
                                      "2026-11-24T03:00:00Z");
  EXPECT_EQ(Ready(twice).message, Ready(out).message);
  // Success clears it.
  auto healed = Manager::ComposeStatus(twice, Outcome{ready, Requeue::Done()}, 1,
                                       "2026-11-24T04:00:00Z");
  EXPECT_EQ(Ready(healed).message.find("refresh failed"), std::string::npos);
}

// --- the mode hooks (finalizer, events, secret recheck) -----------------------------------------

// A source that holds a fixed set of objects.
class FixedSource final : public Source {
 public:
  explicit FixedSource(std::vector<CachedObject> objects) : objects_(std::move(objects)) {}
  VoidResult Start(ObjectCache& cache, EnqueueFn enqueue) override {
    for (const CachedObject& o : objects_) {
      cache.Upsert(o);
      enqueue(o.object.key());
    }
    return {};
  }
  bool HasSynced() const override { return true; }
  void Stop() override {}

 private:
  std::vector<CachedObject> objects_;
};

// Records what it was asked; answers Ready, or `error` for keys named "bad".
class RecordingReconciler final : public reconcilers::Reconciler {
 public:
  Result<Outcome> Reconcile(const reconcilers::Request& request, std::stop_token) override {
    std::lock_guard lock(mu);
    calls.push_back({request.key.name, request.object.has_value()});
    if (request.key.name == "bad") {
      return error;
    }
    crds::ModelCacheStatus s;
    s.phase = request.object ? "Ready" : "";
    return Outcome{s, Requeue::Done()};
  }
  void Shutdown() override {}

  std::mutex mu;
  std::vector<std::pair<std::string, bool>> calls;  // name, had an object
  Error error{Reason::InvalidSpec, "secret missing", std::chrono::milliseconds(20)};
};

CachedObject Cached(const std::string& name, bool deleting) {
  CachedObject c;
  c.object.metadata.name = name;
  c.object.metadata.namespace_ = "default";
  c.object.metadata.generation = 1;
  if (deleting) {
    c.object.metadata.deletion_timestamp = "2026-11-24T00:00:00Z";
  }
  return c;
}

template <typename F>
bool Eventually(F condition) {
  for (int i = 0; i < 2000 && !condition(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return condition();
}

TEST(ManagerHooksTest, DeletingObjectsAreReconciledAsGoneThenFinalized) {
  FixedSource source({Cached("live", false), Cached("going", true)});
  ObjectCache cache;
  MemoryStatusStore statuses;
  RecordingReconciler reconciler;
  std::mutex mu;
  std::vector<std::string> prepared, finalized, written;
  ManagerOptions options;
  options.before_reconcile = [&](const crds::ModelCache& o) -> VoidResult {
    std::lock_guard lock(mu);
    prepared.push_back(o.metadata.name);
    return {};
  };
  options.finalize = [&](const crds::ModelCache& o) -> VoidResult {
    std::lock_guard lock(mu);
    finalized.push_back(o.metadata.name);
    return {};
  };
  options.status_written = [&](const crds::ModelCache& o, const crds::ModelCacheStatus& before) {
    std::lock_guard lock(mu);
    written.push_back(o.metadata.name + ":" + before.phase + "->" + o.status.phase);
  };
  Manager manager(options, source, cache, statuses, reconciler, RealClock::Get());
  std::stop_source stop;
  std::thread run([&] { ASSERT_TRUE(manager.Run(stop.get_token())); });
  EXPECT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    return finalized.size() == 1 && written.size() == 1;
  }));
  stop.request_stop();
  run.join();
  std::lock_guard lock(mu);
  EXPECT_EQ(prepared, std::vector<std::string>{"live"});
  EXPECT_EQ(finalized, std::vector<std::string>{"going"});
  EXPECT_EQ(written, std::vector<std::string>{"live:->Ready"});
  std::lock_guard rlock(reconciler.mu);
  EXPECT_NE(std::find(reconciler.calls.begin(), reconciler.calls.end(),
                      std::pair<std::string, bool>{"going", false}),
            reconciler.calls.end());
}

TEST(ManagerHooksTest, AFailingPrepareSkipsTheReconcileAndRetries) {
  FixedSource source({Cached("live", false)});
  ObjectCache cache;
  MemoryStatusStore statuses;
  RecordingReconciler reconciler;
  std::atomic<int> attempts{0};
  ManagerOptions options;
  options.before_reconcile = [&](const crds::ModelCache&) -> VoidResult {
    if (++attempts < 3) {
      return Error(Reason::NetworkError, "conflict storm");
    }
    return {};
  };
  Manager manager(options, source, cache, statuses, reconciler, RealClock::Get());
  std::stop_source stop;
  std::thread run([&] { ASSERT_TRUE(manager.Run(stop.get_token())); });
  EXPECT_TRUE(Eventually([&] { return statuses.writes() == 1; }));
  stop.request_stop();
  run.join();
  EXPECT_EQ(attempts.load(), 3);
  std::lock_guard lock(reconciler.mu);
  EXPECT_EQ(reconciler.calls.size(), 1u);  // only once the prepare succeeded
}

TEST(ManagerHooksTest, APermanentErrorWithRetryAfterIsLookedAtAgain) {
  FixedSource source({Cached("bad", false)});
  ObjectCache cache;
  MemoryStatusStore statuses;
  RecordingReconciler reconciler;
  Manager manager({}, source, cache, statuses, reconciler, RealClock::Get());
  std::stop_source stop;
  std::thread run([&] { ASSERT_TRUE(manager.Run(stop.get_token())); });
  EXPECT_TRUE(Eventually([&] {
    std::lock_guard lock(reconciler.mu);
    return reconciler.calls.size() >= 3;
  }));
  stop.request_stop();
  run.join();
  auto stored = statuses.Read({"default", "bad"});
  ASSERT_TRUE(stored && stored->has_value());
  EXPECT_EQ((*stored)->status.phase, "Failed");
}

TEST(ManagerHooksTest, AFailedReconcileIsCountedBeforeItsStatusIsPublished) {
  FixedSource source({Cached("bad", false)});
  ObjectCache cache;
  MemoryStatusStore statuses;
  RecordingReconciler reconciler;
  ControllerMetrics metrics;
  std::mutex mu;
  std::vector<double> errors_counted;  // at each status write of "bad"
  ManagerOptions options;
  options.metrics = &metrics;
  options.status_written = [&](const crds::ModelCache&, const crds::ModelCacheStatus&) {
    std::lock_guard lock(mu);
    errors_counted.push_back(metrics.reconciles.Value({std::string(ControllerMetrics::kError)}));
  };
  Manager manager(options, source, cache, statuses, reconciler, RealClock::Get());
  std::stop_source stop;
  std::thread run([&] { ASSERT_TRUE(manager.Run(stop.get_token())); });
  EXPECT_TRUE(Eventually([&] {
    std::lock_guard lock(mu);
    return !errors_counted.empty();
  }));
  stop.request_stop();
  run.join();
  // Whoever reads the Failed status, then the metrics, finds the failure counted.
  std::lock_guard lock(mu);
  ASSERT_FALSE(errors_counted.empty());
  EXPECT_EQ(errors_counted.front(), 1);
  EXPECT_EQ(
      manager.stats().reconciles_error.load(),
      static_cast<uint64_t>(metrics.reconciles.Value({std::string(ControllerMetrics::kError)})));
}

}  // namespace
}  // namespace modelcache::controller
