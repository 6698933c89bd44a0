// ReconcilerOptions::settle: a reconcile that starts a job waits for it when a pool thread is
// free, so that a job that ends in time is reported once, as its result.

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/files.h"
#include "reconcilers/model_cache_reconciler.h"
#include "tests/fixtures/hub/fake_hub.h"

namespace modelcache::reconcilers {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using testing::FakeHub;
using testing::FakeRepoSpec;
using testing::Fault;

class SettleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "settle-" + UniqueSuffix();
    fs::create_directories(root_ + "/repo");
    std::ofstream(root_ + "/repo/config.json") << "{}";
    std::ofstream(root_ + "/repo/model.safetensors", std::ios::binary)
        << std::string(300000, 'w');
    FakeRepoSpec spec;
    spec.id = "org/model";
    spec.refs["main"] = root_ + "/repo";
    hub_.AddRepo(spec);
    ASSERT_TRUE(hub_.Start());
  }
  void TearDown() override {
    reconciler_.reset();
    fs::remove_all(root_);
  }

  void MakeReconciler(milliseconds settle, int jobs = 4) {
    ReconcilerOptions o;
    o.default_store = root_ + "/store";
    o.hf_endpoint = hub_.url();
    o.backoff_base = milliseconds(5);
    o.progress_interval = milliseconds(20);
    o.max_concurrent_jobs = jobs;
    o.settle = settle;
    o.wake = [this](const crds::ObjectKey& key) {
      std::lock_guard lock(mu_);
      woken_.push_back(key.ToString());
      cv_.notify_all();
    };
    reconciler_ = std::make_unique<ModelCacheReconciler>(o);
  }

  static Request NewRequest(const std::string& name) {
    crds::ModelCache mc;
    mc.metadata.name = name;
    mc.metadata.namespace_ = "default";
    mc.metadata.generation = 1;
    mc.spec.source.repo = "org/model";
    crds::ApplyDefaults(mc);
    return Request{{"default", name}, mc, std::nullopt, {}};
  }

  // Slows the weights down to about 0.3 s per download.
  void SlowWeights() {
    Fault slow;
    slow.kind = Fault::Kind::Slow;
    slow.path_glob = "model.safetensors";
    slow.bytes_per_second = 1'000'000;
    slow.count = -1;
    hub_.AddFault(slow);
  }

  bool WaitWoken(const std::string& key) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(30), [&] {
      return std::find(woken_.begin(), woken_.end(), key) != woken_.end();
    });
  }
  size_t Woken() {
    std::lock_guard lock(mu_);
    return woken_.size();
  }

  std::string root_;
  FakeHub hub_;
  std::unique_ptr<ModelCacheReconciler> reconciler_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> woken_;
};

TEST_F(SettleTest, AJobThatEndsInTimeIsReportedOnceAsItsResult) {
  // An upper bound only: the reconcile returns when the job ends.
  MakeReconciler(std::chrono::minutes(1));
  Request request = NewRequest("m");
  auto r = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->status.phase, crds::kPhaseReady);
  ASSERT_TRUE(r->status.artifact);
  EXPECT_EQ(r->status.resolved_revision, hub_.CommitOf("model", "org/model", "main"));
  EXPECT_EQ(r->requeue.after.count(), 0);
  // The reconcile took the result itself: the job's end did not queue the key again.
  EXPECT_EQ(Woken(), 0U);

  // A second resource of the same model (already cached): the same, one call.
  Request other = NewRequest("n");
  auto again = reconciler_->Reconcile(other, {});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status.phase, crds::kPhaseReady);
  EXPECT_EQ(again->status.artifact->id, r->status.artifact->id);
  EXPECT_EQ(Woken(), 0U);
}

TEST_F(SettleTest, ASpecChangeOfAReportedResourceIsAcknowledgedAtOnce) {
  MakeReconciler(std::chrono::minutes(1));
  Request request = NewRequest("m");
  auto ready = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(ready);
  ASSERT_EQ(ready->status.phase, crds::kPhaseReady);
  // Generation 2 (an exclude added): a new job, reported as Resolving without waiting for it.
  request.status = ready->status;
  request.status.observed_generation = 1;
  request.object->metadata.generation = 2;
  request.object->spec.source.exclude = {"*.md"};
  auto changed = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(changed);
  EXPECT_EQ(changed->status.phase, crds::kPhaseResolving);
  ASSERT_TRUE(WaitWoken("default/m"));
  request.status = changed->status;
  auto done = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(done) << done.error().ToString();
  EXPECT_EQ(done->status.phase, crds::kPhaseReady);
}

TEST_F(SettleTest, AJobStillRunningIsReportedAsResolvingAndWakesTheKeyWhenItEnds) {
  SlowWeights();
  MakeReconciler(milliseconds(20));
  Request request = NewRequest("m");
  auto first = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status.phase, crds::kPhaseResolving);
  EXPECT_GT(first->requeue.after.count(), 0);
  ASSERT_TRUE(WaitWoken("default/m"));
  request.status = first->status;
  auto done = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(done) << done.error().ToString();
  EXPECT_EQ(done->status.phase, crds::kPhaseReady);
}

TEST_F(SettleTest, NoWaitWhenNoPoolThreadIsFree) {
  SlowWeights();
  MakeReconciler(std::chrono::minutes(1), /*jobs=*/1);
  // The only pool thread downloads for "a" (its reconcile waits for it, on another thread).
  auto a = std::async(std::launch::async, [&] { return reconciler_->Reconcile(NewRequest("a"), {}); });
  for (int i = 0; i < 3000 && hub_.BodyBytesServed("model.safetensors") == 0; ++i) {
    std::this_thread::sleep_for(milliseconds(1));
  }
  ASSERT_GT(hub_.BodyBytesServed("model.safetensors"), 0u);
  // "b" would queue behind it: reported at once, without waiting.
  Request b = NewRequest("b");
  auto first = reconciler_->Reconcile(b, {});
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status.phase, crds::kPhaseResolving);
  auto ra = a.get();
  ASSERT_TRUE(ra) << ra.error().ToString();
  EXPECT_EQ(ra->status.phase, crds::kPhaseReady);
  // b's job runs after a's and wakes its key.
  ASSERT_TRUE(WaitWoken("default/b"));
  b.status = first->status;
  auto done = reconciler_->Reconcile(b, {});
  ASSERT_TRUE(done);
  EXPECT_EQ(done->status.phase, crds::kPhaseReady);
}

}  // namespace
}  // namespace modelcache::reconcilers
