// store::ArtifactStore: OpenArtifactStore picks the kind from the URI, and both kinds (a local
// directory, a bucket of the in-memory S3 imitation fake_s3.h) answer the interface the same way
// for a version published into them. Also the local layout paths callers ask the store for.

#include "store/artifact_store.h"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "store/local_store.h"
#include "store/s3_store.h"
#include "tests/unit/store/fake_s3.h"
#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {

namespace fs = std::filesystem;
using testing::FakeS3;
using testing::TempDir;
using testing::WriteText;

constexpr const char* kStoreBucket = "models";

ArtifactManifest Manifest(const std::string& name, const std::map<std::string, std::string>& files) {
  ArtifactManifest m;
  m.name = name;
  m.source_type = "model";
  m.source_repo = "org/" + name;
  m.source_revision = "main";
  m.source_commit = std::string(40, 'c');
  for (const auto& [path, content] : files) {
    m.files.push_back({path, content.size(), Sha256Hex(content)});
  }
  FinalizeIdentity(m);
  return m;
}

TEST(ArtifactStoreUriTest, TheSchemeAloneTellsTheKind) {
  EXPECT_TRUE(IsSharedStoreUri("s3://models/team"));
  EXPECT_TRUE(IsSharedStoreUri("s3://models/team/artifacts/tiny/0123456789ab"));
  EXPECT_FALSE(IsSharedStoreUri("/var/lib/modelcache"));
  EXPECT_FALSE(IsSharedStoreUri("file:///var/lib/modelcache"));
  EXPECT_FALSE(IsSharedStoreUri("relative/s3://x"));
  EXPECT_FALSE(IsSharedStoreUri(""));
}

TEST(ArtifactStoreUriTest, CheckRefusesAMalformedBucketUriOnly) {
  EXPECT_TRUE(CheckStoreUri("s3://models/team"));
  EXPECT_TRUE(CheckStoreUri("/not/created/by/a/check"));
  auto bad = CheckStoreUri("s3://Bad_Bucket/team");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::InvalidSpec);
  auto empty_segment = CheckStoreUri("s3://models//team");
  ASSERT_FALSE(empty_segment);
  EXPECT_EQ(empty_segment.error().reason, Reason::InvalidSpec);
  EXPECT_FALSE(fs::exists("/not/created/by/a/check"));
}

TEST(ArtifactStoreUriTest, OpenRefusesWhatNamesNoStore) {
  auto bad = OpenArtifactStore("s3://Bad_Bucket/team", {});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::InvalidSpec);
  auto http = OpenArtifactStore("http://example.com/store", {});
  ASSERT_FALSE(http);
  EXPECT_EQ(http.error().reason, Reason::InvalidSpec);
}

// One version published into each kind of store, then read back only through ArtifactStore.
class ArtifactStoreTest : public ::testing::TestWithParam<bool /*shared*/> {
 protected:
  void SetUp() override {
    s3_.CreateBucket(kStoreBucket);
    manifest_ = Manifest("tiny", {{"config.json", "{}"}, {"sub/weights.bin", "0123456789"}});
    local_dir_ = tmp_.path() + "/local";
    ArtifactStoreOptions options;
    options.aws.credentials = {"AKIDEXAMPLE", "secret-never-shown", ""};
    options.aws.region = "us-east-1";
    options.aws.endpoint_url = s3_.endpoint();
    options.aws.custom_endpoint = true;
    auto opened = OpenArtifactStore(Shared() ? "s3://models/team" : tmp_.path() + "/store", options);
    ASSERT_TRUE(opened) << opened.error().message;
    store_ = std::move(*opened);
  }

  bool Shared() const { return GetParam(); }

  // Publishes manifest_ with each kind's own publishing call (which the interface leaves to the
  // kind: a local store publishes a staging directory, a bucket uploads a local version).
  PublishedArtifact PublishIt() {
    auto* local = dynamic_cast<LocalStore*>(store_.get());
    auto* s3 = dynamic_cast<S3ArtifactStore*>(store_.get());
    EXPECT_EQ(local == nullptr, Shared());
    EXPECT_EQ(s3 == nullptr, !Shared());
    WriteText(local_dir_ + "/config.json", "{}");
    WriteText(local_dir_ + "/sub/weights.bin", "0123456789");
    Result<PublishedArtifact> published = Error(Reason::Internal, "not published");
    if (local != nullptr) {
      auto staging = local->CreateStaging(manifest_.name);
      EXPECT_TRUE(staging);
      for (const auto& f : manifest_.files) {
        EXPECT_TRUE(local->StageFile(*staging, f.path, local_dir_ + "/" + f.path));
      }
      published = local->Publish(*staging, manifest_);
    } else {
      S3TransferProgress progress;
      published = s3->Publish(local_dir_, manifest_, progress);
    }
    EXPECT_TRUE(published) << published.error().message;
    return published ? *published : PublishedArtifact{};
  }

  FakeS3 s3_;
  TempDir tmp_;
  std::string local_dir_;
  ArtifactManifest manifest_;
  std::unique_ptr<ArtifactStore> store_;
};

TEST_P(ArtifactStoreTest, KindAndUri) {
  EXPECT_EQ(store_->IsShared(), Shared());
  EXPECT_EQ(store_->Uri(), Shared() ? "s3://models/team" : "file://" + tmp_.path() + "/store");
}

TEST_P(ArtifactStoreTest, NothingIsThereBeforeAPublish) {
  auto current = store_->ReadCurrentVersion("tiny", {});
  ASSERT_TRUE(current) << current.error().message;
  EXPECT_FALSE(current->has_value());
  auto version = store_->ReadVersion("tiny", manifest_.version, {});
  ASSERT_TRUE(version) << version.error().message;
  EXPECT_FALSE(version->has_value());
  EXPECT_FALSE(store_->Holds(store_->Describe(manifest_), {}));
}

TEST_P(ArtifactStoreTest, APublishedVersionIsCurrentReadableAndHeld) {
  PublishedArtifact published = PublishIt();
  auto current = store_->ReadCurrentVersion("tiny", {});
  ASSERT_TRUE(current) << current.error().message;
  ASSERT_TRUE(current->has_value());
  EXPECT_EQ(**current, manifest_.version);

  auto version = store_->ReadVersion("tiny", manifest_.version, {});
  ASSERT_TRUE(version) << version.error().message;
  ASSERT_TRUE(version->has_value());
  EXPECT_EQ((*version)->id, manifest_.id);
  EXPECT_EQ((*version)->files.size(), 2U);

  PublishedArtifact described = store_->Describe(manifest_);
  EXPECT_EQ(described.uri, published.uri);
  EXPECT_EQ(described.id, manifest_.id);
  EXPECT_EQ(described.size_bytes, 12U);
  EXPECT_EQ(described.files, 2);
  EXPECT_EQ(described.path.empty(), Shared());
  EXPECT_TRUE(described.uri.starts_with(store_->Uri() + "/artifacts/tiny/"));
  EXPECT_TRUE(store_->Holds(published, {}));

  PublishedArtifact other_version = published;
  other_version.version = "0123456789ab";
  EXPECT_FALSE(store_->Holds(other_version, {}));
}

INSTANTIATE_TEST_SUITE_P(Kinds, ArtifactStoreTest, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& param) {
                           return param.param ? std::string("S3") : std::string("Local");
                         });

// A bucket holds a version only at its own URI and with the id it committed.
TEST(S3ArtifactStoreHoldsTest, OnlyItsOwnUriAndTheCommittedId) {
  FakeS3 s3;
  s3.CreateBucket(kStoreBucket);
  TempDir tmp;
  ArtifactStoreOptions options;
  options.aws.credentials = {"AKIDEXAMPLE", "secret-never-shown", ""};
  options.aws.region = "us-east-1";
  options.aws.endpoint_url = s3.endpoint();
  options.aws.custom_endpoint = true;
  auto team = OpenArtifactStore("s3://models/team", options);
  auto other = OpenArtifactStore("s3://models/other", options);
  ASSERT_TRUE(team && other);
  ArtifactManifest m = Manifest("tiny", {{"a.txt", "alpha"}});
  WriteText(tmp.path() + "/v/a.txt", "alpha");
  S3TransferProgress progress;
  auto published =
      dynamic_cast<S3ArtifactStore&>(**team).Publish(tmp.path() + "/v", m, progress);
  ASSERT_TRUE(published) << published.error().message;
  EXPECT_TRUE((*team)->Holds(*published, {}));
  EXPECT_FALSE((*other)->Holds(*published, {}));  // another prefix's URI
  PublishedArtifact wrong_id = *published;
  wrong_id.id = "tiny@sha256:" + std::string(64, '0');
  EXPECT_FALSE((*team)->Holds(wrong_id, {}));
}

// ---- the local layout callers ask for

TEST(LocalStoreLayoutTest, PathsAreUnderTheRoot) {
  TempDir tmp;
  auto store = LocalStore::Open(tmp.path() + "/store");
  ASSERT_TRUE(store);
  const std::string root = (*store)->root();
  EXPECT_EQ((*store)->DefaultStateDir(), root + "/state");
  EXPECT_EQ((*store)->VersionDir("tiny", "0123456789ab"), root + "/artifacts/tiny/0123456789ab");
  EXPECT_EQ((*store)->SnapshotDir({"model", "org/name"}, std::string(40, 'c')),
            root + "/hub/models--org--name/snapshots/" + std::string(40, 'c'));
  EXPECT_EQ((*store)->SnapshotPath({"model", "org/name"}, std::string(40, 'c'), "a/b.json"),
            (*store)->SnapshotDir({"model", "org/name"}, std::string(40, 'c')) + "/a/b.json");
  EXPECT_EQ((*store)->RepoLockPath({"model", "org/name"}), root + "/locks/models--org--name.lock");
  RepoRef other_hub{"model", "org/name", "example-0123456789abcdef"};
  EXPECT_EQ((*store)->RepoLockPath(other_hub),
            root + "/locks/example-0123456789abcdef@models--org--name.lock");
  std::string a = (*store)->ShardSourceDir();
  std::string b = (*store)->ShardSourceDir();
  EXPECT_NE(a, b);
  EXPECT_TRUE(a.starts_with(root + "/tmp/shard-src-" + std::to_string(::getpid()) + "."));
  EXPECT_EQ((*store)->PullScratchDir("ns_name"),
            root + "/tmp/s3-pull-" + std::to_string(::getpid()) + "_ns_name");
  EXPECT_EQ((*store)->PullScratchDir("ns_name"), (*store)->PullScratchDir("ns_name"));
}

TEST(LocalStoreLayoutTest, ExistsOnlyForAStoreOpenMade) {
  TempDir tmp;
  EXPECT_FALSE(LocalStore::Exists(tmp.path() + "/store"));
  fs::create_directories(tmp.path() + "/store/artifacts");
  EXPECT_FALSE(LocalStore::Exists(tmp.path() + "/store"));  // no hub/
  ASSERT_TRUE(LocalStore::Open(tmp.path() + "/store"));
  EXPECT_TRUE(LocalStore::Exists(tmp.path() + "/store"));
  EXPECT_TRUE(LocalStore::Exists("file://" + tmp.path() + "/store"));
  EXPECT_FALSE(LocalStore::Exists("s3://models/team"));
}

TEST(LocalStoreLayoutTest, RemoveOrphanedScratchTakesOnlyThoseOfGoneProcesses) {
  TempDir tmp;
  auto store = LocalStore::Open(tmp.path() + "/store");
  ASSERT_TRUE(store);
  // A process that is gone: a child that has exited and been reaped.
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::_exit(0);
  }
  ASSERT_EQ(::waitpid(child, nullptr, 0), child);
  const std::string tmp_dir = (*store)->root() + "/tmp/";
  const std::string dead = std::to_string(child);
  for (const std::string& name :
       {"shard-src-" + dead + ".0.1", "s3-pull-" + dead + "_ns_name", "other-" + dead}) {
    WriteText(tmp_dir + name + "/f", "x");
  }
  std::string mine = (*store)->ShardSourceDir();
  std::string my_pull = (*store)->PullScratchDir("ns_name");
  WriteText(mine + "/f", "x");
  WriteText(my_pull + "/f", "x");

  LocalStore::RemoveOrphanedScratch("file://" + (*store)->root());

  EXPECT_FALSE(fs::exists(tmp_dir + "shard-src-" + dead + ".0.1"));
  EXPECT_FALSE(fs::exists(tmp_dir + "s3-pull-" + dead + "_ns_name"));
  EXPECT_TRUE(fs::exists(tmp_dir + "other-" + dead + "/f"));  // not a scratch directory's name
  EXPECT_TRUE(fs::exists(mine + "/f"));
  EXPECT_TRUE(fs::exists(my_pull + "/f"));
  LocalStore::RemoveOrphanedScratch(tmp.path() + "/no-such-store");  // nothing, no crash
  EXPECT_FALSE(fs::exists(tmp.path() + "/no-such-store"));
}

}  // namespace
}  // namespace modelcache::store
