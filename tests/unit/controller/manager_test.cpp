#include "controller/manager.h"
#include "controller/metrics.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <map>
#include <string_view>
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "tests/common/test_util.h"
#include "tests/unit/controller/memory_status_store.h"

namespace modelcache::controller {
namespace {

using reconcilers::Outcome;
using reconcilers::Requeue;
using test_util::WaitFor;

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
  EXPECT_TRUE(WaitFor([&] {
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
  EXPECT_TRUE(WaitFor([&] { return statuses.writes() == 1; }));
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
  EXPECT_TRUE(WaitFor([&] {
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
  EXPECT_TRUE(WaitFor([&] {
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


// --- status writes on lanes (Kubernetes mode) ---------------------------------------------------

// Answers "Downloading" (requeue at once) on the first call for each key, "Ready" after.
class TwoStepReconciler final : public reconcilers::Reconciler {
 public:
  Result<Outcome> Reconcile(const reconcilers::Request& request, std::stop_token) override {
    std::lock_guard lock(mu);
    int n = ++calls[request.key.name];
    crds::ModelCacheStatus s;
    s.phase = n == 1 ? "Downloading" : "Ready";
    return Outcome{s, n == 1 ? Requeue::After(std::chrono::milliseconds(1)) : Requeue::Done()};
  }
  void Shutdown() override {}
  int Calls(const std::string& name) {
    std::lock_guard lock(mu);
    return calls[name];
  }
  std::mutex mu;
  std::map<std::string, int> calls;
};

// Holds the first write of `held` until Release(); records every write in the order done.
class GatedStatusStore final : public StatusStore {
 public:
  explicit GatedStatusStore(std::string held) : held_(std::move(held)) {}
  Result<std::optional<crds::ModelCache>> Read(const crds::ObjectKey& key) const override {
    return inner_.Read(key);
  }
  VoidResult Write(const crds::ModelCache& object) override {
    std::unique_lock lock(mu_);
    if (object.metadata.name == held_ && !held_once_) {
      held_once_ = true;
      holding_ = true;
      cv_.wait(lock, [&] { return released_; });
      holding_ = false;
    }
    done_.push_back(object.metadata.name + ":" + object.status.phase);
    lock.unlock();
    return inner_.Write(object);
  }
  VoidResult Remove(const crds::ObjectKey& key) override { return inner_.Remove(key); }
  Result<std::vector<crds::ModelCache>> List() const override { return inner_.List(); }

  void Release() {
    std::lock_guard lock(mu_);
    released_ = true;
    cv_.notify_all();
  }
  bool Holding() {
    std::lock_guard lock(mu_);
    return holding_;
  }
  std::vector<std::string> Done() {
    std::lock_guard lock(mu_);
    return done_;
  }

 private:
  const std::string held_;
  MemoryStatusStore inner_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_once_ = false;
  bool holding_ = false;
  bool released_ = false;
  std::vector<std::string> done_;
};

TEST(ManagerStatusWritersTest, AWriteNeverOvertakesAnEarlierOneOfItsObjectWhileOthersGoOn) {
  constexpr int kWriters = 4;
  // Another object on another lane than "slow" (lanes are chosen by the hash of the key).
  auto lane = [](const std::string& name) {
    return std::hash<std::string_view>()("default/" + name) % kWriters;
  };
  std::string other = "fast";
  for (int i = 0; lane(other) == lane("slow"); ++i) {
    other = "fast-" + std::to_string(i);
  }
  FixedSource source({Cached("slow", false), Cached(other, false)});
  ObjectCache cache;
  GatedStatusStore statuses("slow");
  TwoStepReconciler reconciler;
  ManagerOptions options;
  options.status_writers = kWriters;
  Manager manager(options, source, cache, statuses, reconciler, RealClock::Get());
  std::stop_source stop;
  std::thread run([&] { ASSERT_TRUE(manager.Run(stop.get_token())); });
  // While slow's first write hangs, the workers go on: slow's second status is composed (and
  // queued behind the first), and the other object's writes are done on their own lane.
  EXPECT_TRUE(WaitFor([&] {
    auto done = statuses.Done();
    return statuses.Holding() && reconciler.Calls("slow") == 2 &&
           std::count(done.begin(), done.end(), other + ":Ready") == 1;
  }));
  EXPECT_TRUE(statuses.Holding());
  statuses.Release();
  EXPECT_TRUE(WaitFor([&] { return statuses.Done().size() == 4; }));
  stop.request_stop();
  run.join();
  std::vector<std::string> slow;
  for (const std::string& w : statuses.Done()) {
    if (w.rfind("slow:", 0) == 0) {
      slow.push_back(w);
    }
  }
  EXPECT_EQ(slow, (std::vector<std::string>{"slow:Downloading", "slow:Ready"}));
  auto stored = statuses.Read({"default", "slow"});
  ASSERT_TRUE(stored && stored->has_value());
  EXPECT_EQ((*stored)->status.phase, "Ready");
}


TEST(ManagerStatusWritersTest, APrepareOnTheLanesRunsOnceBeforeTheReconcileAndItsWrites) {
  FixedSource source({Cached("live", false)});
  ObjectCache cache;
  MemoryStatusStore statuses;
  TwoStepReconciler reconciler;
  std::mutex mu;
  std::vector<std::string> log;
  ManagerOptions options;
  options.status_writers = 4;
  // The cached copy never shows the hook's effect (as a watch that lags behind the write).
  options.before_reconcile_needed = [](const crds::ModelCache&) { return true; };
  options.before_reconcile = [&](const crds::ModelCache&) -> VoidResult {
    std::lock_guard lock(mu);
    log.push_back("prepare after " + std::to_string(reconciler.Calls("live")) + " reconciles");
    return {};
  };
  options.status_written = [&](const crds::ModelCache& o, const crds::ModelCacheStatus&) {
    std::lock_guard lock(mu);
    log.push_back("written " + o.status.phase);
  };
  Manager manager(options, source, cache, statuses, reconciler, RealClock::Get());
  std::stop_source stop;
  std::thread run([&] { ASSERT_TRUE(manager.Run(stop.get_token())); });
  EXPECT_TRUE(WaitFor([&] {
    std::lock_guard lock(mu);
    return log.size() == 3;
  }));
  stop.request_stop();
  run.join();
  // Once, before any reconcile; the two reconciles of the same copy do not call it again.
  std::lock_guard lock(mu);
  EXPECT_EQ(log, (std::vector<std::string>{"prepare after 0 reconciles", "written Downloading",
                                           "written Ready"}));
  EXPECT_EQ(reconciler.Calls("live"), 2);
}

// Every reconcile outcome moves its key in the queue as reconcilers/reconciler.h says.
TEST(QueueStepTest, EachOutcomeMapsToTheQueueAsTheContractSays) {
  using Kind = Manager::QueueStep::Kind;
  using std::chrono::milliseconds;
  auto step = [](const Result<Outcome>& result, bool stopping = false) {
    auto s = Manager::QueueStepFor(result, stopping);
    return std::make_pair(s.kind, s.after);
  };
  const auto none = milliseconds(0);
  EXPECT_EQ(step(Outcome{{}, Requeue::Done()}), std::make_pair(Kind::Forget, none));
  EXPECT_EQ(step(Outcome{{}, Requeue::After(milliseconds(250))}),
            std::make_pair(Kind::AddAfter, milliseconds(250)));
  // Transient: rate-limited, unless the server said how long to wait.
  EXPECT_EQ(step(Error(Reason::NetworkError, "reset")), std::make_pair(Kind::AddRateLimited, none));
  EXPECT_EQ(step(Error(Reason::RateLimited, "429", milliseconds(7000))),
            std::make_pair(Kind::AddAfter, milliseconds(7000)));
  // Permanent: waits for the spec, unless something outside it may still appear.
  EXPECT_EQ(step(Error(Reason::RepoNotFound, "gone")), std::make_pair(Kind::Forget, none));
  EXPECT_EQ(step(Error(Reason::InvalidSpec, "no secret", milliseconds(30000))),
            std::make_pair(Kind::AddAfter, milliseconds(30000)));
  // A reconcile cancelled by the shutdown leaves the key alone; one cancelled otherwise does not.
  EXPECT_EQ(step(Error(Reason::Cancelled, "shutting down"), true),
            std::make_pair(Kind::Leave, none));
  EXPECT_NE(step(Error(Reason::Cancelled, "stopped"), false).first, Kind::Leave);
}

}  // namespace
}  // namespace modelcache::controller
