// The reconciler's S3 paths against the Hub imitation and an in-memory S3 imitation: an s3://
// storage.uri (streamed from the Hub, committed; status.artifact.uri), the restart check against the
// bucket's commit marker, credentials from the secrets directory, and an S3 artifact as a source.

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>

#include <gtest/gtest.h>

#include "common/files.h"
#include "reconcilers/model_cache_reconciler.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/unit/reconcilers/reconcile_loop.h"
#include "tests/unit/store/fake_s3.h"

namespace modelcache::reconcilers {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

class S3PathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = ::testing::TempDir() + "rec-s3-" + UniqueSuffix();
    fs::create_directories(root_ + "/repo/main");
    std::ofstream(root_ + "/repo/main/config.json") << "{\"a\": 1}";
    std::ofstream(root_ + "/repo/main/model.safetensors") << std::string(200000, 'w');
    testing::FakeRepoSpec spec;
    spec.id = "org/model";
    spec.refs["main"] = root_ + "/repo/main";
    hub_.AddRepo(spec);
    ASSERT_TRUE(hub_.Start());
    s3_.CreateBucket("models");
  }
  void TearDown() override {
    reconciler_.reset();
    fs::remove_all(root_);
  }

  void MakeReconciler(const std::function<void(ReconcilerOptions&)>& adjust = {}) {
    ReconcilerOptions o;
    o.default_store = root_ + "/store";
    o.hf_endpoint = hub_.url();
    o.backoff_base = milliseconds(5);
    o.progress_interval = milliseconds(20);
    o.aws_env = {{"AWS_ACCESS_KEY_ID", "AKIDTEST"},
                 {"AWS_SECRET_ACCESS_KEY", "secret-value-never-shown"},
                 {"AWS_REGION", "us-east-1"},
                 {"HOME", root_}};
    o.aws_overrides.endpoint_url = s3_.endpoint();
    o.allowed_stores = {"s3://models", root_};  // the specs below name these
    o.wake = loop_.WakeCallback();
    if (adjust) {
      adjust(o);
    }
    reconciler_ = std::make_unique<ModelCacheReconciler>(o);
  }

  crds::ModelCache Object(const std::string& repo = "org/model", const std::string& storage = "") {
    crds::ModelCache mc;
    mc.metadata.name = "m";
    mc.metadata.namespace_ = "default";
    mc.metadata.generation = 1;
    mc.spec.source.repo = repo;
    mc.spec.storage.uri = storage;
    crds::ApplyDefaults(mc);
    return mc;
  }

  Result<Outcome> RunToEnd(Request& request) { return loop_.RunToEnd(*reconciler_, request); }

  std::string root_;
  testing::FakeHub hub_;
  store::testing::FakeS3 s3_;
  ReconcileLoop loop_;  // outlives reconciler_, which wakes it
  std::unique_ptr<ModelCacheReconciler> reconciler_;
};

TEST_F(S3PathTest, UnshardedS3ArtifactIsStreamedAndCommitted) {
  MakeReconciler();
  Request request{{"default", "m"}, Object("org/model", "s3://models/team"), std::nullopt, {}};
  auto r = RunToEnd(request);
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->status.phase, crds::kPhaseReady);
  const auto& art = *r->status.artifact;
  EXPECT_EQ(art.uri, "s3://models/team/artifacts/model/" + art.version);
  EXPECT_EQ(art.path, "");
  auto objects = s3_.Objects("models");
  std::string base = "team/artifacts/model/";
  EXPECT_EQ(objects.at(base + "current").body, art.version);
  EXPECT_EQ(objects.count(base + art.version + "/modelcache.json"), 1u);
  EXPECT_EQ(objects.at(base + art.version + "/config.json").body, "{\"a\": 1}");
  EXPECT_EQ(objects.at(base + art.version + "/model.safetensors").body, std::string(200000, 'w'));
  // Unsharded: streamed from the Hub, not staged in the local store (the daemon's default store,
  // a local one): no version there and no blob in its hub cache.
  EXPECT_FALSE(fs::exists(root_ + "/store/artifacts/model/" + art.version));
  std::error_code ec;
  size_t blobs = 0;
  for (const auto& e : fs::recursive_directory_iterator(root_ + "/store", ec)) {
    blobs += e.path().parent_path().filename() == "blobs" ? 1 : 0;
  }
  EXPECT_EQ(blobs, 0u);

  // Ready and committed in the bucket: nothing to do.
  auto again = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->status.phase, crds::kPhaseReady);
  EXPECT_EQ(again->requeue.after.count(), 0);

  // The marker is gone from the bucket: the job runs again and commits again, uploading nothing
  // that is still there.
  s3_.DeleteObject("models", base + art.version + "/modelcache.json");
  s3_.ClearRequests();
  auto restart = reconciler_->Reconcile(request, {});
  ASSERT_TRUE(restart);
  EXPECT_EQ(restart->status.phase, crds::kPhaseResolving);
  auto healed = RunToEnd(request);
  ASSERT_TRUE(healed) << healed.error().ToString();
  EXPECT_EQ(healed->status.artifact->id, art.id);
  EXPECT_EQ(s3_.Objects("models").count(base + art.version + "/modelcache.json"), 1u);
  EXPECT_EQ(s3_.Count("PutObject", "/model.safetensors"), 0u);
}

TEST_F(S3PathTest, AnS3DefaultStoreNeedsALocalCache) {
  MakeReconciler([](ReconcilerOptions& o) { o.default_store = "s3://models/team"; });
  Request request{{"default", "m"}, Object(), std::nullopt, {}};
  auto r = reconciler_->Reconcile(request, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  EXPECT_NE(r.error().message.find("--cache-dir"), std::string::npos) << r.error().message;
}

TEST_F(S3PathTest, CredentialsComeFromTheSecretsDirectoryAndErrorsNameOnlyThePath) {
  std::string secrets = root_ + "/secrets";
  MakeReconciler([&](ReconcilerOptions& o) {
    o.aws_env.erase("AWS_ACCESS_KEY_ID");
    o.aws_env.erase("AWS_SECRET_ACCESS_KEY");
    o.secrets_dir = secrets;
    o.s3_secret = "s3";
  });
  Request request{{"default", "m"}, Object("org/model", "s3://models/team"), std::nullopt, {}};
  auto missing = reconciler_->Reconcile(request, {});
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().reason, Reason::InvalidSpec);
  EXPECT_NE(missing.error().message.find(secrets + "/s3"), std::string::npos)
      << missing.error().message;

  fs::create_directories(secrets + "/s3");
  std::ofstream(secrets + "/s3/AWS_ACCESS_KEY_ID") << "AKIDFROMSECRET\n";
  auto half = reconciler_->Reconcile(request, {});
  ASSERT_FALSE(half);
  EXPECT_EQ(half.error().reason, Reason::InvalidSpec);
  EXPECT_EQ(half.error().message.find("AKIDFROMSECRET"), std::string::npos);

  std::ofstream(secrets + "/s3/AWS_SECRET_ACCESS_KEY") << "secret-from-file\n";
  auto r = RunToEnd(request);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->status.phase, crds::kPhaseReady);
}

TEST_F(S3PathTest, CredentialsComeFromReadSecretAndErrorsNameTheSecretNeverAValue) {
  // Kubernetes mode's shape: read_secret answers for --s3-secret instead of the secrets
  // directory (there is none), and the environment holds no key pair at all.
  std::mutex secret_mu;
  std::optional<SecretData> secret;  // nullopt: the Secret does not exist
  std::vector<std::string> asked;
  MakeReconciler([&](ReconcilerOptions& o) {
    o.aws_env.erase("AWS_ACCESS_KEY_ID");
    o.aws_env.erase("AWS_SECRET_ACCESS_KEY");
    o.s3_secret = "ops/s3";
    o.read_secret = [&](const std::string& name) -> Result<SecretData> {
      std::lock_guard lock(secret_mu);
      asked.push_back(name);
      if (!secret) {
        return Error(Reason::InvalidSpec, "secret ops/s3 not found", std::chrono::seconds(30));
      }
      return *secret;
    };
  });
  Request request{{"default", "m"}, Object("org/model", "s3://models/team"), std::nullopt, {}};
  auto missing = reconciler_->Reconcile(request, {});
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().reason, Reason::InvalidSpec);
  EXPECT_NE(missing.error().message.find("S3 credentials for s3://models/team: secret ops/s3 not "
                                         "found"),
            std::string::npos)
      << missing.error().message;
  EXPECT_EQ(missing.error().retry_after, std::chrono::milliseconds(30000));
  EXPECT_EQ(asked, std::vector<std::string>{"ops/s3"});

  {
    std::lock_guard lock(secret_mu);
    secret = SecretData{"Secret ops/s3", {{"AWS_ACCESS_KEY_ID", "AKIDFROMSECRET"}}};
  }
  auto half = reconciler_->Reconcile(request, {});
  ASSERT_FALSE(half);
  EXPECT_EQ(half.error().reason, Reason::InvalidSpec);
  EXPECT_NE(half.error().message.find("Secret ops/s3 has no key AWS_SECRET_ACCESS_KEY"),
            std::string::npos)
      << half.error().message;
  EXPECT_EQ(half.error().message.find("AKIDFROMSECRET"), std::string::npos);
  EXPECT_TRUE(half.error().retry_after.has_value());

  // The fake S3 checks no signature, so the pair is seen in the requests' Authorization instead:
  // the key id (with a trailing newline, as `kubectl create secret --from-file` leaves it) is
  // the Secret's, the region the Secret's.
  {
    std::lock_guard lock(secret_mu);
    secret->data["AWS_SECRET_ACCESS_KEY"] = "secret-from-the-secret\n";
    secret->data["AWS_ACCESS_KEY_ID"] = "AKIDFROMSECRET\n";
    secret->data["AWS_REGION"] = "eu-west-3";
  }
  auto r = RunToEnd(request);
  ASSERT_TRUE(r) << r.error().ToString();
  EXPECT_EQ(r->status.phase, crds::kPhaseReady);
  auto requests = s3_.Requests();
  ASSERT_FALSE(requests.empty());
  for (const auto& req : requests) {
    EXPECT_NE(req.authorization.find("Credential=AKIDFROMSECRET/"), std::string::npos)
        << req.authorization;
    EXPECT_NE(req.authorization.find("/eu-west-3/s3/aws4_request"), std::string::npos)
        << req.authorization;
  }
}

TEST_F(S3PathTest, AnS3ArtifactAsSourceFillsTheLocalStore) {
  MakeReconciler();
  Request publish{{"default", "m"}, Object("org/model", "s3://models/team"), std::nullopt, {}};
  auto published = RunToEnd(publish);
  ASSERT_TRUE(published) << published.error().ToString();
  const auto& in_bucket = *published->status.artifact;

  crds::ModelCache node = Object("s3://models/team/artifacts/model", root_ + "/node-store");
  node.metadata.name = "node";
  node.spec.artifact_name = "node";
  Request request{{"default", "node"}, node, std::nullopt, {}};
  auto r = RunToEnd(request);
  ASSERT_TRUE(r) << r.error().ToString();
  ASSERT_EQ(r->status.phase, crds::kPhaseReady);
  const auto& local = *r->status.artifact;
  EXPECT_EQ(local.version, in_bucket.version);
  EXPECT_EQ(local.id, "node@" + in_bucket.id.substr(in_bucket.id.find('@') + 1));
  EXPECT_EQ(local.path, root_ + "/node-store/artifacts/node/" + local.version);
  auto config = ReadFile(local.path + "/config.json");
  ASSERT_TRUE(config);
  EXPECT_EQ(*config, "{\"a\": 1}");
  EXPECT_EQ(r->status.resolved_revision, published->status.resolved_revision);
  EXPECT_FALSE(fs::exists(root_ + "/node-store/tmp") && !fs::is_empty(root_ + "/node-store/tmp"));

  // A version that was never committed is not a source.
  crds::ModelCache pinned = Object("s3://models/team/artifacts/model/ffffffffffff", root_ + "/x");
  pinned.metadata.name = "pinned";
  Request bad{{"default", "pinned"}, pinned, std::nullopt, {}};
  auto refused = RunToEnd(bad);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().reason, Reason::StorageError);
  EXPECT_NE(refused.error().message.find("no modelcache.json"), std::string::npos)
      << refused.error().message;
}

// A transfer that writes a few bytes of every file's partial data, says so, and holds until it is
// stopped: a pull caught mid-download.
class StalledTransfer final : public fetch::Transfer {
 public:
  Result<std::vector<fetch::FileResult>> Run(const std::vector<fetch::FileTask>& tasks,
                                             fetch::TransferProgress&,
                                             std::stop_token stop) override {
    for (const auto& t : tasks) {
      std::ofstream(t.incomplete_path) << "partial";
    }
    std::unique_lock lock(mu_);
    started_ = true;
    cv_.notify_all();
    std::condition_variable_any wait;
    wait.wait(lock, stop, [] { return false; });
    return Error(Reason::Cancelled, "cancelled");
  }
  void WaitStarted() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return started_; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool started_ = false;
};

TEST_F(S3PathTest, ADeletedS3SourceResourceRemovesItsPartialPull) {
  MakeReconciler();
  Request publish{{"default", "m"}, Object("org/model", "s3://models/team"), std::nullopt, {}};
  ASSERT_TRUE(RunToEnd(publish));

  auto stalled = std::make_shared<StalledTransfer>();
  MakeReconciler([&](ReconcilerOptions& o) {
    o.transfer_factory = [stalled](const fetch::TransferSource&) -> std::unique_ptr<fetch::Transfer> {
      struct Shared final : fetch::Transfer {
        std::shared_ptr<StalledTransfer> t;
        Result<std::vector<fetch::FileResult>> Run(const std::vector<fetch::FileTask>& tasks,
                                                   fetch::TransferProgress& p,
                                                   std::stop_token stop) override {
          return t->Run(tasks, p, stop);
        }
      };
      auto s = std::make_unique<Shared>();
      s->t = stalled;
      return s;
    };
  });
  crds::ModelCache node = Object("s3://models/team/artifacts/model", root_ + "/node-store");
  node.metadata.name = "node";
  node.spec.artifact_name = "node";
  Request request{{"default", "node"}, node, std::nullopt, {}};
  ASSERT_TRUE(reconciler_->Reconcile(request, {}));
  stalled->WaitStarted();
  ASSERT_FALSE(fs::is_empty(root_ + "/node-store/tmp"));
  request.object.reset();
  ASSERT_TRUE(reconciler_->Reconcile(request, {}));
  reconciler_->Shutdown();  // waits for the cancelled job
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(root_ + "/node-store/tmp")) {
    left.push_back(e.path().filename().string());
  }
  EXPECT_EQ(left, std::vector<std::string>{});
}

}  // namespace
}  // namespace modelcache::reconcilers
