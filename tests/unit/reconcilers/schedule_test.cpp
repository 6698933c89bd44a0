// The reconciler's schedules, on a FakeClock: a branch is resolved again once refreshInterval has
// passed, a Ready artifact is re-verified every verify_interval and what changed on disk is
// healed, and a failed job waits out its backoff. The clock only moves when a test advances it;
// the jobs themselves run for real against the Hub imitation.

#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "common/clock.h"
#include "common/files.h"
#include "common/sha256.h"
#include "reconcilers/model_cache_reconciler.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/unit/reconcilers/reconcile_loop.h"
#include "tests/common/test_util.h"

namespace modelcache::reconcilers {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::minutes;
using testing::FakeHub;
using testing::FakeRepoSpec;
using testing::Fault;
using test_util::RandomBytes;

const crds::Condition* Verified(const Outcome& o) {
  return crds::FindCondition(o.status.conditions, "Verified");
}

class ScheduleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "schedule-" + UniqueSuffix();
    weights_ = RandomBytes(300000, 1);
    WriteRepo("main", 1, weights_);
    FakeRepoSpec spec;
    spec.id = "org/model";
    spec.refs["main"] = root_ + "/repo/main";
    hub_.AddRepo(spec);
    ASSERT_TRUE(hub_.Start());
  }
  void TearDown() override {
    reconciler_.reset();
    fs::remove_all(root_);
  }

  ReconcilerOptions Options() {
    ReconcilerOptions o;
    o.default_store = root_ + "/store";
    o.hf_endpoint = hub_.url();
    o.backoff_base = milliseconds(5);
    o.progress_interval = milliseconds(20);
    o.wake = loop_.WakeCallback();
    o.clock = &clock_;
    return o;
  }
  void Start(const ReconcilerOptions& o) {
    reconciler_ = std::make_unique<ModelCacheReconciler>(o);
  }

  void WriteRepo(const std::string& dir_name, uint64_t seed, const std::string& weights) {
    std::string dir = root_ + "/repo/" + dir_name;
    fs::create_directories(dir);
    std::ofstream(dir + "/config.json") << "{\"seed\": " << seed << "}";
    std::ofstream(dir + "/model.safetensors", std::ios::binary) << weights;
  }

  Request NewRequest(const std::string& refresh_interval = "") {
    crds::ModelCache mc;
    mc.metadata.name = "m";
    mc.metadata.namespace_ = "default";
    mc.metadata.generation = 1;
    mc.spec.source.repo = "org/model";
    mc.spec.refresh_interval = refresh_interval;
    crds::ApplyDefaults(mc);
    return Request{{"default", "m"}, mc, std::nullopt, {}};
  }

  // Runs `request` to Ready (a test failure otherwise) and returns that outcome.
  Outcome Ready(Request& request) {
    auto r = loop_.RunToEnd(*reconciler_, request);
    EXPECT_TRUE(r) << r.error().ToString();
    EXPECT_TRUE(r && r->status.phase == crds::kPhaseReady);
    return r ? *r : Outcome{};
  }

  // One reconcile of `request` with its status updated as the manager would.
  Result<Outcome> Step(Request& request) {
    auto r = reconciler_->Reconcile(request, {});
    if (r) {
      request.status = r->status;
      request.status.observed_generation = request.object->metadata.generation;
    }
    return r;
  }

  std::string root_;
  std::string weights_;
  FakeClock clock_;
  FakeHub hub_;
  ReconcileLoop loop_;  // outlives reconciler_, which wakes it
  std::unique_ptr<ModelCacheReconciler> reconciler_;
};

// Checked by making the reconciler read steady_clock instead of the injected clock: the advance is
// not seen, no refresh starts, and the test fails (as do the verification and backoff tests).
TEST_F(ScheduleTest, ABranchIsResolvedAgainOnceItsRefreshIntervalHasPassed) {
  Start(Options());
  Request request = NewRequest("1h");
  Outcome first = Ready(request);
  const std::string first_commit = first.status.resolved_revision;
  ASSERT_EQ(first_commit, hub_.CommitOf("model", "org/model", "main"));

  // The branch moves on the Hub; nothing is asked before the interval has passed.
  WriteRepo("main2", 2, RandomBytes(300000, 2));
  hub_.SetRef("model", "org/model", "main", root_ + "/repo/main2");
  hub_.ResetCounters();
  auto idle = Step(request);
  ASSERT_TRUE(idle);
  EXPECT_EQ(idle->status.phase, crds::kPhaseReady);
  EXPECT_EQ(idle->requeue.after, std::chrono::hours(1));
  clock_.Advance(minutes(59));
  auto almost = Step(request);
  ASSERT_TRUE(almost);
  EXPECT_EQ(almost->status.phase, crds::kPhaseReady);
  EXPECT_EQ(almost->requeue.after, minutes(1));
  EXPECT_EQ(hub_.Requests("/api"), 0);

  clock_.Advance(minutes(1));
  auto due = Step(request);
  ASSERT_TRUE(due) << due.error().ToString();
  EXPECT_EQ(due->status.phase, crds::kPhaseResolving);
  Outcome refreshed = Ready(request);
  EXPECT_EQ(refreshed.status.resolved_revision, hub_.CommitOf("model", "org/model", "main"));
  EXPECT_NE(refreshed.status.resolved_revision, first_commit);
  EXPECT_NE(refreshed.status.artifact->id, first.status.artifact->id);
  EXPECT_GT(hub_.Requests("/api"), 0);
  // The refresh clock starts again at the refresh's end.
  auto next = Step(request);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->requeue.after, std::chrono::hours(1));
}

TEST_F(ScheduleTest, ACommitIdIsNeverRefreshed) {
  Start(Options());
  Request request = NewRequest("1m");
  request.object->spec.source.revision = hub_.CommitOf("model", "org/model", "main");
  Ready(request);
  clock_.Advance(std::chrono::hours(24));
  hub_.ResetCounters();
  auto r = Step(request);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status.phase, crds::kPhaseReady);
  EXPECT_EQ(r->requeue.after.count(), 0);
  EXPECT_EQ(hub_.Requests("/"), 0);
}

TEST_F(ScheduleTest, AReadyArtifactIsReverifiedEveryVerifyInterval) {
  ReconcilerOptions o = Options();
  o.verify_interval = minutes(10);
  Start(o);
  Request request = NewRequest();
  Outcome ready = Ready(request);
  // First sight of a Ready resource starts its verification clock.
  auto idle = Step(request);
  ASSERT_TRUE(idle);
  EXPECT_EQ(idle->requeue.after, minutes(10));
  EXPECT_EQ(Verified(*idle), nullptr);
  clock_.Advance(minutes(9));
  auto almost = Step(request);
  ASSERT_TRUE(almost);
  EXPECT_EQ(almost->requeue.after, minutes(1));

  clock_.Advance(minutes(1));
  hub_.ResetCounters();
  auto verifying = Step(request);
  ASSERT_TRUE(verifying);
  EXPECT_EQ(verifying->status.phase, crds::kPhaseReady);  // verifying is no phase of its own
  EXPECT_EQ(verifying->requeue.after, o.progress_interval);
  auto verified = loop_.RunUntil(*reconciler_, request,
                                 [](const Outcome& out) { return Verified(out) != nullptr; });
  ASSERT_TRUE(verified) << verified.error().ToString();
  ASSERT_NE(Verified(*verified), nullptr);
  EXPECT_EQ(Verified(*verified)->status, "True");
  EXPECT_EQ(Verified(*verified)->reason, "Verified");
  EXPECT_EQ(Verified(*verified)->message,
            "every file of " + ready.status.artifact->id + " and its blobs match their checksums");
  EXPECT_EQ(verified->status.phase, crds::kPhaseReady);
  EXPECT_EQ(verified->requeue.after, minutes(10));  // the next verification
  EXPECT_EQ(hub_.Requests("/"), 0);                 // re-hashed locally
}

// Checked by dropping MarkVerified after a heal: the next check comes at once (1 ms) instead of
// a whole interval later, and the last expectation fails.
TEST_F(ScheduleTest, DriftFoundByAVerificationIsHealedAndTheConditionSaysWhat) {
  ReconcilerOptions o = Options();
  o.verify_interval = minutes(10);
  Start(o);
  Request request = NewRequest();
  Outcome ready = Ready(request);
  ASSERT_TRUE(Step(request));  // starts the verification clock
  const std::string file = ready.status.artifact->path + "/model.safetensors";
  {
    std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(4321);
    io.put(static_cast<char>(weights_[4321] ^ 0x01));
  }
  // Not due yet: the change is not looked for.
  auto not_yet = Step(request);
  ASSERT_TRUE(not_yet);
  EXPECT_EQ(not_yet->status.phase, crds::kPhaseReady);
  EXPECT_EQ(Verified(*not_yet), nullptr);

  clock_.Advance(minutes(10));
  auto healing = loop_.RunUntil(*reconciler_, request,
                                [](const Outcome& out) { return Verified(out) != nullptr; });
  ASSERT_TRUE(healing) << healing.error().ToString();
  ASSERT_NE(Verified(*healing), nullptr);
  EXPECT_EQ(healing->status.phase, crds::kPhaseResolving);
  EXPECT_EQ(Verified(*healing)->status, "False");
  EXPECT_EQ(Verified(*healing)->reason, "Healing");
  EXPECT_NE(Verified(*healing)->message.find("changed on disk"), std::string::npos)
      << Verified(*healing)->message;

  Outcome healed = Ready(request);
  ASSERT_NE(Verified(healed), nullptr);
  EXPECT_EQ(Verified(healed)->status, "True");
  EXPECT_EQ(Verified(healed)->reason, "Healed");
  EXPECT_NE(Verified(healed)->message.find("re-fetched model.safetensors"), std::string::npos)
      << Verified(healed)->message;
  EXPECT_EQ(healed.status.artifact->id, ready.status.artifact->id);
  EXPECT_EQ(*Sha256File(file), Sha256Hex(weights_));
  EXPECT_EQ(healed.requeue.after, minutes(10));  // a heal counts as a verification
}

TEST_F(ScheduleTest, AMissingArtifactVersionIsPublishedAgainFromTheVerifiedBlobs) {
  Start(Options());
  Request request = NewRequest();
  Outcome ready = Ready(request);
  fs::remove_all(ready.status.artifact->path);
  hub_.ResetCounters();
  auto healing = Step(request);
  ASSERT_TRUE(healing) << healing.error().ToString();
  EXPECT_EQ(healing->status.phase, crds::kPhaseResolving);
  ASSERT_NE(Verified(*healing), nullptr);
  EXPECT_EQ(Verified(*healing)->reason, "Healing");
  EXPECT_EQ(Verified(*healing)->message, "artifact version " + ready.status.artifact->name + "/" +
                                             ready.status.artifact->version +
                                             " is missing from the store");
  Outcome healed = Ready(request);
  ASSERT_NE(Verified(healed), nullptr);
  EXPECT_EQ(Verified(healed)->reason, "Healed");
  EXPECT_NE(Verified(healed)->message.find("re-published from the verified blobs"),
            std::string::npos)
      << Verified(healed)->message;
  EXPECT_EQ(healed.status.artifact->id, ready.status.artifact->id);
  EXPECT_TRUE(fs::exists(ready.status.artifact->path + "/model.safetensors"));
  EXPECT_EQ(hub_.BodyBytesServed("model.safetensors"), 0u);
}

TEST_F(ScheduleTest, AFailedJobWaitsOutItsBackoffOnTheClock) {
  ReconcilerOptions o = Options();
  o.max_attempts = 1;
  o.backoff_base = minutes(1);
  o.backoff_cap = minutes(4);
  Start(o);
  hub_.AddFault(
      Fault{Fault::Kind::Status, "/api/models/org/model/revision/*", 503, 0, 0, 0, -1, true});
  Request request = NewRequest();
  auto failed = loop_.RunToEnd(*reconciler_, request);
  ASSERT_FALSE(failed);
  ASSERT_EQ(failed.error().reason, Reason::NetworkError);
  EXPECT_EQ(failed.error().retry_after, minutes(1));
  const int asked = hub_.Requests("/api");

  // The clock has not moved: the whole wait is left, and no job runs.
  auto waiting = Step(request);
  ASSERT_FALSE(waiting);
  EXPECT_EQ(waiting.error().reason, Reason::NetworkError);
  EXPECT_EQ(waiting.error().retry_after, minutes(1));
  clock_.Advance(std::chrono::seconds(45));
  waiting = Step(request);
  ASSERT_FALSE(waiting);
  EXPECT_EQ(waiting.error().retry_after, std::chrono::seconds(15));
  EXPECT_EQ(hub_.Requests("/api"), asked);

  // Once it has passed a job runs, fails again, and waits twice as long.
  clock_.Advance(std::chrono::seconds(15));
  auto again = loop_.RunToEnd(*reconciler_, request);
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().reason, Reason::NetworkError);
  EXPECT_EQ(again.error().retry_after, minutes(2));
  EXPECT_GT(hub_.Requests("/api"), asked);
}

}  // namespace
}  // namespace modelcache::reconcilers
