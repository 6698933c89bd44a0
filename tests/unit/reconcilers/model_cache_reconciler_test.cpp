#include "reconcilers/model_cache_reconciler.h"

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "common/files.h"
#include "common/sha256.h"
#include "reconcilers/observer.h"
#include "store/name_claims.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/unit/reconcilers/reconcile_loop.h"
#include "tests/common/test_util.h"

namespace modelcache::reconcilers {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using testing::FakeHub;
using testing::FakeRepoSpec;
using testing::Fault;
using test_util::RandomBytes;

// Counts finished jobs, so that a test can wait for a job's end.
class JobEnds : public ReconcileObserver {
 public:
  void JobFinished(const crds::ObjectKey& /*key*/) override {
    std::lock_guard lock(mu_);
    ++finished_;
    cv_.notify_all();
  }
  // Waits for the n-th JobFinished; false if it has not come after `bound` (a failure bound,
  // far beyond what a working cancel takes, not a measurement).
  bool WaitFinished(int n, std::chrono::seconds bound) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, bound, [&] { return finished_ >= n; });
  }
  int finished() {
    std::lock_guard lock(mu_);
    return finished_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int finished_ = 0;
};

class ReconcilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "rec-" + UniqueSuffix();
    WriteRepo("main", 1);
    FakeRepoSpec spec;
    spec.id = "org/model";
    spec.refs["main"] = root_ + "/repo/main";
    hub_.AddRepo(spec);
    ASSERT_TRUE(hub_.Start());
    ReconcilerOptions o = Options();
    o.observer = &ends_;
    reconciler_ = std::make_unique<ModelCacheReconciler>(o);
  }

  ReconcilerOptions Options() {
    ReconcilerOptions o;
    o.default_store = root_ + "/store";
    o.hf_endpoint = hub_.url();
    o.backoff_base = milliseconds(5);
    o.progress_interval = milliseconds(20);
    o.wake = loop_.WakeCallback();
    return o;
  }
  void TearDown() override {
    reconciler_.reset();
    fs::remove_all(root_);
  }

  void WriteRepo(const std::string& rev, uint64_t seed) {
    std::string dir = root_ + "/repo/" + rev;
    fs::create_directories(dir);
    std::ofstream(dir + "/config.json") << "{\"seed\": " << seed << "}";
    std::ofstream(dir + "/model.safetensors", std::ios::binary) << RandomBytes(300000, seed);
  }

  crds::ModelCache Object(const std::string& revision = "main") {
    crds::ModelCache mc;
    mc.metadata.name = "m";
    mc.metadata.namespace_ = "default";
    mc.metadata.generation = 1;
    mc.spec.source.repo = "org/model";
    mc.spec.source.revision = revision;
    crds::ApplyDefaults(mc);
    return mc;
  }

  Result<Outcome> RunToEnd(Request& request) { return loop_.RunToEnd(*reconciler_, request); }

  std::string root_;
  FakeHub hub_;
  ReconcileLoop loop_;  // outlives reconciler_, which wakes it
  JobEnds ends_;        // outlives reconciler_, which tells it
  std::unique_ptr<ModelCacheReconciler> reconciler_;
};

TEST_F(ReconcilerTest, ResolvesDownloadsAndPublishes) {
  Request request{{"default", "m"}, Object(), std::nullopt, {}};
  auto first = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(first);
  EXPECT_EQ(first->status.phase, crds::kPhaseResolving);
  EXPECT_GT(first->requeue.after.count(), 0);
  auto r = RunToEnd(request);
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->status.phase, crds::kPhaseReady);
  EXPECT_EQ(r->status.resolved_revision, hub_.CommitOf("model", "org/model", "main"));
  ASSERT_TRUE(r->status.artifact);
  EXPECT_EQ(r->status.artifact->files, 2);
  EXPECT_TRUE(fs::exists(r->status.artifact->path + "/model.safetensors"));
  EXPECT_TRUE(fs::exists(r->status.artifact->path + "/modelcache.json"));

  // Level-based: the next call with the Ready status takes no step and asks no network.
  hub_.ResetCounters();
  auto again = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status.phase, crds::kPhaseReady);
  EXPECT_EQ(again->requeue.after.count(), 0);
  EXPECT_EQ(hub_.Requests("/api"), 0);
}

TEST_F(ReconcilerTest, SameInputsGiveTheSameArtifactId) {
  Request request{{"default", "m"}, Object(), std::nullopt, {}};
  auto a = RunToEnd(request);
  ASSERT_TRUE(a);
  // A different resource, the same inputs: the same id, nothing downloaded again.
  hub_.ResetCounters();
  Request other{{"default", "m"}, Object(hub_.CommitOf("model", "org/model", "main")),
                std::nullopt, {}};
  other.key.name = "m";
  auto b = RunToEnd(other);
  ASSERT_TRUE(b);
  EXPECT_EQ(a->status.artifact->id, b->status.artifact->id);
  EXPECT_EQ(hub_.BodyBytesServed("model.safetensors"), 0u);
}

// With a claim scope (a daemon), the first resource owns its artifact name: another one with a
// different spec is refused before any request, one with the same content spec shares it, and the
// owner's deletion (or its move to another name) frees it.
TEST_F(ReconcilerTest, AnArtifactNameBelongsToItsFirstClaimer) {
  ReconcilerOptions o = Options();
  o.claim_scope = "test";
  o.name_recheck = milliseconds(1234);
  ModelCacheReconciler daemon(o);
  Request owner{{"default", "owner"}, Object(), std::nullopt, {}};
  auto ready = loop_.RunToEnd(daemon, owner);
  ASSERT_TRUE(ready) << ready.error().ToString();
  ASSERT_EQ(ready->status.phase, crds::kPhaseReady);
  const std::string current = fs::read_symlink(root_ + "/store/artifacts/model/current");

  // Another revision (the same commit, even) is another spec: refused, nothing asked.
  hub_.ResetCounters();
  Request other{{"team", "other"}, Object(hub_.CommitOf("model", "org/model", "main")),
                std::nullopt, {}};
  auto refused = daemon.Reconcile(other, {});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().reason, Reason::ArtifactNameConflict);
  EXPECT_EQ(refused.error().retry_after, milliseconds(1234));
  EXPECT_EQ(hub_.Requests("/"), 0);
  EXPECT_EQ(fs::read_symlink(root_ + "/store/artifacts/model/current"), current);
  // Settings that are not content (refreshInterval) share the name.
  crds::ModelCache sharer_object = Object();
  sharer_object.spec.refresh_interval = "1h";
  Request sharer{{"team", "sharer"}, sharer_object, std::nullopt, {}};
  auto shared = loop_.RunToEnd(daemon, sharer);
  ASSERT_TRUE(shared) << shared.error().ToString();
  EXPECT_EQ(shared->status.artifact->id, ready->status.artifact->id);

  // The owner moves to another name and the sharer inherits this one; the sharer's deletion
  // frees it, and the refused resource takes it.
  crds::ModelCache renamed = Object();
  renamed.spec.artifact_name = "renamed";
  renamed.metadata.generation = 2;
  owner.object = renamed;
  ASSERT_TRUE(loop_.RunToEnd(daemon, owner));
  auto record = store::ReadNameRecord(root_ + "/store", "model");
  ASSERT_TRUE(record && *record);
  EXPECT_EQ((*record)->holders, std::vector<std::string>{"test team/sharer"});
  EXPECT_FALSE(daemon.Reconcile(other, {}));
  Request deleted{{"team", "sharer"}, std::nullopt, std::nullopt, {}};
  ASSERT_TRUE(daemon.Reconcile(deleted, {}));
  auto taken = loop_.RunToEnd(daemon, other);
  ASSERT_TRUE(taken) << taken.error().ToString();
  EXPECT_EQ(taken->status.phase, crds::kPhaseReady);
  EXPECT_EQ(fs::canonical(root_ + "/store/artifacts/model/current"),
            fs::canonical(taken->status.artifact->path));
}

TEST_F(ReconcilerTest, PermanentErrorsComeBackAsErrors) {
  crds::ModelCache mc = Object("no-such-branch");
  Request request{{"default", "m"}, mc, std::nullopt, {}};
  auto r = RunToEnd(request);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::RevisionNotFound);
  EXPECT_FALSE(IsTransient(r.error().reason));
}

TEST_F(ReconcilerTest, AFailedJobIsNotRunAgainUntilItsSpecChangesOrItsBackoffPasses) {
  // Permanent: reported again on every reconcile (a stale requeue, a resync) without a new job,
  // so without a request to the Hub; a spec change runs a job again.
  Request request{{"default", "m"}, Object("no-such-branch"), std::nullopt, {}};
  auto first = RunToEnd(request);
  ASSERT_FALSE(first);
  ASSERT_EQ(first.error().reason, Reason::RevisionNotFound);
  hub_.ResetCounters();
  for (int i = 0; i < 3; ++i) {
    auto again = reconciler_->Reconcile(request, {});
    ASSERT_FALSE(again);
    EXPECT_EQ(again.error().reason, Reason::RevisionNotFound);
    EXPECT_EQ(again.error().message, first.error().message);
  }
  EXPECT_EQ(hub_.Requests("/api"), 0);
  request.object = Object("main");
  auto fixed = RunToEnd(request);
  ASSERT_TRUE(fixed) << fixed.error().ToString();
  EXPECT_EQ(fixed->status.phase, crds::kPhaseReady);

  // Transient: the failure comes back with the wait before the next job as retry_after, and
  // no job runs before it has passed (a minute here, one attempt per request).
  ReconcileLoop loop;
  ReconcilerOptions o;
  o.default_store = root_ + "/store";
  o.hf_endpoint = hub_.url();
  o.max_attempts = 1;
  o.backoff_base = o.backoff_cap = std::chrono::minutes(1);
  o.progress_interval = milliseconds(20);
  o.wake = loop.WakeCallback();
  ModelCacheReconciler slow_retries(o);
  Request flaky{{"default", "f"}, Object("main"), std::nullopt, {}};
  flaky.object->metadata.name = "f";
  hub_.AddFault(Fault{Fault::Kind::Status, "/api/models/org/model/revision/*", 503, 0, 0, 0, -1,
                      true});
  auto failed = loop.RunToEnd(slow_retries, flaky);
  ASSERT_FALSE(failed);
  ASSERT_EQ(failed.error().reason, Reason::NetworkError);
  ASSERT_TRUE(failed.error().retry_after.has_value());
  EXPECT_EQ(*failed.error().retry_after, std::chrono::minutes(1));
  int asked = hub_.Requests("/api/models/org/model/revision");
  auto waiting = slow_retries.Reconcile(flaky, {});
  ASSERT_FALSE(waiting);
  EXPECT_EQ(waiting.error().reason, Reason::NetworkError);
  ASSERT_TRUE(waiting.error().retry_after.has_value());
  EXPECT_LE(*waiting.error().retry_after, *failed.error().retry_after);
  EXPECT_EQ(hub_.Requests("/api/models/org/model/revision"), asked);
}

TEST_F(ReconcilerTest, AnEndpointThatStallsJobAfterJobFailsWithEndpointStalled) {
  // The weights drip far below the stall floor (1 KiB/s): every job stalls after the stall
  // timeout (one attempt per request). Each stalled job backs off longer than the one before;
  // the --stall-limit'th in a row is permanent, and only a spec change (force) runs a job again.
  ReconcileLoop loop;
  ReconcilerOptions o;
  o.default_store = root_ + "/store";
  o.hf_endpoint = hub_.url();
  o.max_attempts = 1;
  o.backoff_base = milliseconds(5);
  o.transfer.stall_timeout = std::chrono::seconds(1);
  o.stall_limit = 3;
  o.progress_interval = milliseconds(20);
  o.wake = loop.WakeCallback();
  ModelCacheReconciler reconciler(o);
  Fault drip;
  drip.kind = Fault::Kind::Slow;
  drip.path_glob = "model.safetensors";
  drip.bytes_per_second = 64;
  drip.count = -1;
  hub_.AddFault(drip);
  Request request{{"default", "m"}, Object(), std::nullopt, {}};
  std::chrono::milliseconds last_wait{0};
  for (int job = 1; job < o.stall_limit; ++job) {
    auto stalled = loop.RunToEnd(reconciler, request);
    ASSERT_FALSE(stalled);
    ASSERT_EQ(stalled.error().reason, Reason::NetworkError) << stalled.error().ToString();
    EXPECT_NE(stalled.error().message.find("stalled: less than"), std::string::npos);
    ASSERT_TRUE(stalled.error().retry_after.has_value());
    EXPECT_GT(*stalled.error().retry_after, last_wait);  // the backoff grows
    last_wait = *stalled.error().retry_after;
    std::this_thread::sleep_for(last_wait);
  }
  auto failed = loop.RunToEnd(reconciler, request);
  ASSERT_FALSE(failed);
  ASSERT_EQ(failed.error().reason, Reason::EndpointStalled) << failed.error().ToString();
  EXPECT_NE(failed.error().message.find("stalled in 3 jobs in a row"), std::string::npos)
      << failed.error().message;
  EXPECT_FALSE(IsTransient(failed.error().reason));
  int asked = hub_.Requests("/org/model/resolve");
  auto again = reconciler.Reconcile(request, {});
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().reason, Reason::EndpointStalled);
  EXPECT_EQ(hub_.Requests("/org/model/resolve"), asked);  // no job, no request
  // A manual retry: spec.force incremented runs a job (which stalls again, but asks).
  request.object->spec.force = 1;
  auto retried = loop.RunToEnd(reconciler, request);
  ASSERT_FALSE(retried);
  EXPECT_EQ(retried.error().reason, Reason::NetworkError) << retried.error().ToString();
  EXPECT_GT(hub_.Requests("/org/model/resolve"), asked);
}

TEST_F(ReconcilerTest, AJobPreemptedForAnotherTenantStartsAgainAndFinishes) {
  // Two slots; namespaces are tenants. Tenant a's two downloads are slow; tenant b's resource
  // takes a slot from a's job started last at once (it would otherwise wait for a whole
  // download), and that job, given back, is started again rather than reported as a failure.
  // org/other's weights have a name of their own, so that the fault slowing org/model's can be
  // kept while org/other's is lifted.
  const std::string other_dir = root_ + "/repo/other";
  fs::create_directories(other_dir);
  std::ofstream(other_dir + "/config.json") << "{\"seed\": 2}";
  std::ofstream(other_dir + "/other.safetensors", std::ios::binary) << RandomBytes(300000, 2);
  FakeRepoSpec other;
  other.id = "org/other";
  other.refs["main"] = root_ + "/repo/other";
  hub_.AddRepo(other);
  ReconcileLoop loop;
  ReconcilerOptions o;
  o.default_store = root_ + "/store";
  o.hf_endpoint = hub_.url();
  o.backoff_base = milliseconds(5);
  o.max_concurrent_jobs = 2;
  o.progress_interval = milliseconds(20);
  o.wake = loop.WakeCallback();
  ModelCacheReconciler reconciler(o);
  Fault slow;
  slow.kind = Fault::Kind::Slow;
  slow.path_glob = "*.safetensors";
  slow.bytes_per_second = 1000;  // 300 s for the weights
  slow.count = -1;
  hub_.AddFault(slow);
  auto request = [&](const std::string& ns, const std::string& name, const std::string& repo) {
    Request r{{ns, name}, Object(), std::nullopt, {}};
    r.object->metadata.namespace_ = ns;
    r.object->metadata.name = name;
    r.object->spec.source.repo = repo;
    return r;
  };
  auto downloading = [&](Request& r) {
    for (int i = 0; i < 2000; ++i) {
      auto step = reconciler.Reconcile(r, {});
      if (!step) {
        return false;
      }
      r.status = step->status;
      if (step->status.phase == crds::kPhaseDownloading) {
        return true;
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    return false;
  };
  Request first = request("a", "first", "org/model");
  Request last = request("a", "last", "org/other");
  ASSERT_TRUE(downloading(first));
  ASSERT_TRUE(downloading(last));
  // What starts from now on goes at full speed, except org/model's weights: the first job keeps
  // its slow download even if its request has not reached the Hub yet.
  hub_.ClearFaults();
  slow.path_glob = "model.safetensors";
  hub_.AddFault(slow);
  Request b = request("b", "m", "org/other");
  auto other_tenant = loop.RunToEnd(reconciler, b);
  ASSERT_TRUE(other_tenant) << other_tenant.error().ToString();
  EXPECT_EQ(other_tenant->status.phase, crds::kPhaseReady);
  auto again = loop.RunToEnd(reconciler, last);
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(again->status.phase, crds::kPhaseReady);
  auto still = reconciler.Reconcile(first, {});  // never asked: still on its slow download
  ASSERT_TRUE(still) << still.error().ToString();
  EXPECT_EQ(still->status.phase, crds::kPhaseDownloading);
}

TEST_F(ReconcilerTest, SourceErrorIsReportedWithoutAnyStep) {
  Request request{{"default", "m"}, Object(), Error(Reason::InvalidSpec, "declared twice"), {}};
  auto r = reconciler_->Reconcile(request, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  EXPECT_EQ(hub_.Requests("/api"), 0);
}

// The weights of the "main" revision are served at 1 kB/s: their 300 000 bytes take five minutes,
// so a job fetching them ends in a test's lifetime only if it is cancelled.
Fault Crawl() {
  Fault slow;
  slow.kind = Fault::Kind::Slow;
  slow.path_glob = "model.safetensors";
  slow.bytes_per_second = 1000;
  slow.count = -1;
  return slow;
}

// Checked by breaking the cancel (the request_stop() of a spec change commented out): the new
// job is never started, so RunToEnd gives up and the test fails.
TEST_F(ReconcilerTest, SpecChangeCancelsTheRunningJob) {
  hub_.AddFault(Crawl());
  // v2 keeps its weights under another name, outside the fault: once the main job has stopped,
  // v2 is quick.
  std::string v2 = root_ + "/repo/v2";
  fs::create_directories(v2);
  std::ofstream(v2 + "/config.json") << "{\"seed\": 2}";
  std::ofstream(v2 + "/weights.safetensors", std::ios::binary) << RandomBytes(3000, 2);
  hub_.SetRef("model", "org/model", "v2", v2);
  Request request{{"default", "m"}, Object(), std::nullopt, {}};
  ASSERT_TRUE(reconciler_->Reconcile(request, {}));
  // Wait until it is downloading.
  for (int i = 0; i < 3000 && hub_.BodyBytesServed("model.safetensors") == 0; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_GT(hub_.BodyBytesServed("model.safetensors"), 0u);
  request.object = Object("v2");
  request.object->metadata.generation = 2;
  auto r = RunToEnd(request);
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->status.phase, crds::kPhaseReady);
  EXPECT_EQ(r->status.resolved_revision, hub_.CommitOf("model", "org/model", "v2"));
  EXPECT_TRUE(fs::exists(r->status.artifact->path + "/weights.safetensors"));
  // The old download stopped part way.
  EXPECT_LT(hub_.BodyBytesServed("model.safetensors"), 300000u);
}

// Checked by breaking the cancel (the request_stop() of a deletion commented out): the job goes
// on crawling, does not end within the bound, and the test fails.
TEST_F(ReconcilerTest, DeletionCancelsAndReportsNothing) {
  hub_.AddFault(Crawl());
  Request request{{"default", "m"}, Object(), std::nullopt, {}};
  ASSERT_TRUE(reconciler_->Reconcile(request, {}));
  for (int i = 0; i < 3000 && hub_.BodyBytesServed("model.safetensors") == 0; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_GT(hub_.BodyBytesServed("model.safetensors"), 0u);
  ASSERT_EQ(ends_.finished(), 0);

  request.object.reset();
  auto r = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(r);
  // Nothing to report for a deleted resource, and nothing to come back for.
  EXPECT_EQ(r->status, crds::ModelCacheStatus{});
  EXPECT_EQ(r->requeue.after.count(), 0);
  ASSERT_TRUE(ends_.WaitFinished(1, std::chrono::seconds(60)))
      << "the deleted resource's job is still running";
  EXPECT_LT(hub_.BodyBytesServed("model.safetensors"), 300000u);
  // A later reconcile of the deleted key starts nothing.
  ASSERT_TRUE(reconciler_->Reconcile(request, {}));
  reconciler_.reset();
  EXPECT_EQ(ends_.finished(), 1);
}

TEST_F(ReconcilerTest, MissingTokenSecretIsInvalidSpec) {
  crds::ModelCache mc = Object();
  mc.spec.source.token_secret_ref = crds::SecretKeyRef{"hf", "token"};
  Request request{{"default", "m"}, mc, std::nullopt, {}};
  auto r = reconciler_->Reconcile(request, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  EXPECT_NE(r.error().message.find("tokenSecretRef"), std::string::npos);
}

}  // namespace
}  // namespace modelcache::reconcilers
