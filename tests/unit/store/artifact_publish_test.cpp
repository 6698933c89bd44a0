// The <store>/artifacts half of LocalStore: staging, atomic publish, current, cleanup, verify.

#include <filesystem>
#include <latch>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "store/local_store.h"
#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {

namespace fs = std::filesystem;
using testing::Inode;
using testing::LinkTarget;
using testing::ReadText;
using testing::TempDir;
using testing::WriteText;

const RepoRef kRepo{"model", "org/tiny"};
const std::string kCommit(40, 'c');

struct SourceFile {
  std::string path, content;
};

class ArtifactTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = LocalStore::Open(dir_.path() + "/store");
    ASSERT_TRUE(s) << s.error().ToString();
    store_ = std::move(*s);
    files_ = {{"config.json", "{\"x\":1}"},
              {"model.safetensors", "0123456789"},
              {"tokenizer/vocab.txt", "a b c"}};
    // A cached snapshot, as a finished download leaves it.
    for (const SourceFile& f : files_) {
      std::string etag = Sha256Hex(f.content);
      WriteText(store_->BlobPath(kRepo, etag), f.content);
      ASSERT_TRUE(store_->LinkSnapshot(kRepo, kCommit, f.path, etag));
    }
  }

  ArtifactManifest ManifestFor(const std::string& name, const std::string& commit) const {
    ArtifactManifest m;
    m.name = name;
    m.source_type = "model";
    m.source_repo = kRepo.id;
    m.source_revision = "main";
    m.source_commit = commit;
    for (const SourceFile& f : files_) {
      m.files.push_back({f.path, f.content.size(), Sha256Hex(f.content)});
    }
    return m;
  }

  // Stages every file from the snapshot and returns the staging directory.
  std::string StageAll(const std::string& name, LocalStore& store) {
    auto staging = store.CreateStaging(name);
    EXPECT_TRUE(staging) << staging.error().ToString();
    for (const SourceFile& f : files_) {
      auto r = store.StageFile(*staging, f.path, store.SnapshotPath(kRepo, kCommit, f.path));
      EXPECT_TRUE(r) << r.error().ToString();
    }
    return *staging;
  }

  std::set<std::string> Entries(const std::string& name) const {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(store_->root() + "/artifacts/" + name)) {
      out.insert(e.path().filename().string());
    }
    return out;
  }

  TempDir dir_;
  std::unique_ptr<LocalStore> store_;
  std::vector<SourceFile> files_;
};

TEST_F(ArtifactTest, StagingIsNeverAVersionUntilPublished) {
  std::string staging = StageAll("tiny", *store_);
  EXPECT_EQ(fs::path(staging).parent_path(), store_->root() + "/artifacts/tiny");
  EXPECT_EQ(fs::path(staging).filename().string().rfind(".staging-", 0), 0u);
  EXPECT_TRUE(store_->ListVersions("tiny")->empty());
  EXPECT_FALSE(store_->ReadCurrent("tiny")->has_value());

  auto published = store_->Publish(staging, ManifestFor("tiny", kCommit));
  ASSERT_TRUE(published) << published.error().ToString();
  EXPECT_FALSE(fs::exists(staging));
  EXPECT_EQ(*store_->ListVersions("tiny"), std::vector<std::string>{published->version});
  EXPECT_EQ(Entries("tiny"), (std::set<std::string>{published->version, "current"}));
}

TEST_F(ArtifactTest, PublishWritesTheVersionManifestAndCurrent) {
  std::string staging = StageAll("tiny", *store_);
  ArtifactManifest expected = ManifestFor("tiny", kCommit);
  FinalizeIdentity(expected);
  auto published = store_->Publish(staging, ManifestFor("tiny", kCommit));
  ASSERT_TRUE(published) << published.error().ToString();

  const std::string dir = store_->root() + "/artifacts/tiny/" + expected.version;
  EXPECT_EQ(published->name, "tiny");
  EXPECT_EQ(published->version, expected.version);
  EXPECT_EQ(published->id, expected.id);
  EXPECT_EQ(published->path, dir);
  EXPECT_EQ(published->uri, "file://" + dir);
  EXPECT_EQ(published->size_bytes, 22u);
  EXPECT_EQ(published->files, 3);

  EXPECT_EQ(ReadText(dir + "/modelcache.json"), ManifestToJson(expected).dump(2) + "\n");
  EXPECT_EQ(ReadText(dir + "/tokenizer/vocab.txt"), "a b c");
  // Artifact files are hard links of the blobs, not copies and not symlinks.
  EXPECT_FALSE(fs::is_symlink(dir + "/model.safetensors"));
  EXPECT_EQ(Inode(dir + "/model.safetensors"),
            Inode(store_->BlobPath(kRepo, Sha256Hex("0123456789"))));
  EXPECT_EQ(LinkTarget(store_->root() + "/artifacts/tiny/current"), expected.version);

  auto current = store_->ReadCurrent("tiny");
  ASSERT_TRUE(current) << current.error().ToString();
  ASSERT_TRUE(current->has_value());
  EXPECT_EQ((*current)->id, expected.id);
  EXPECT_EQ((*current)->source_revision, "main");
  EXPECT_TRUE(store_->VerifyVersion("tiny", expected.version));
}

TEST_F(ArtifactTest, RepublishingTheSameInputsReusesTheVersion) {
  auto first = store_->Publish(StageAll("tiny", *store_), ManifestFor("tiny", kCommit));
  ASSERT_TRUE(first);
  // Same inputs reached through the commit instead of "main": same artifact.
  ArtifactManifest by_commit = ManifestFor("tiny", kCommit);
  by_commit.source_revision = kCommit;
  std::string staging = StageAll("tiny", *store_);
  auto second = store_->Publish(staging, by_commit);
  ASSERT_TRUE(second) << second.error().ToString();
  EXPECT_EQ(second->id, first->id);
  EXPECT_EQ(second->path, first->path);
  EXPECT_FALSE(fs::exists(staging));
  EXPECT_EQ(Entries("tiny"), (std::set<std::string>{first->version, "current"}));
  // The existing version was kept as it was (its manifest still says "main").
  EXPECT_EQ((*store_->ReadCurrent("tiny"))->source_revision, "main");
}

TEST_F(ArtifactTest, NewInputsPublishANewVersionAndSwitchCurrent) {
  auto v1 = store_->Publish(StageAll("tiny", *store_), ManifestFor("tiny", kCommit));
  ASSERT_TRUE(v1);
  auto v2 = store_->Publish(StageAll("tiny", *store_), ManifestFor("tiny", std::string(40, 'd')));
  ASSERT_TRUE(v2) << v2.error().ToString();
  EXPECT_NE(v1->version, v2->version);
  EXPECT_EQ(LinkTarget(store_->root() + "/artifacts/tiny/current"), v2->version);
  EXPECT_EQ((*store_->ReadCurrent("tiny"))->id, v2->id);
  // The old version stays, immutable, for whoever still uses it.
  EXPECT_TRUE(store_->VerifyVersion("tiny", v1->version));
  EXPECT_EQ(store_->ListVersions("tiny")->size(), 2u);
}

TEST_F(ArtifactTest, PublishRejectsAStagingThatDoesNotMatchItsManifest) {
  {
    std::string staging = StageAll("tiny", *store_);
    WriteText(staging + "/extra.bin", "x");
    auto r = store_->Publish(staging, ManifestFor("tiny", kCommit));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().reason, Reason::Internal);
    EXPECT_FALSE(fs::exists(staging));
  }
  {
    std::string staging = StageAll("tiny", *store_);
    fs::remove(staging + "/config.json");
    auto r = store_->Publish(staging, ManifestFor("tiny", kCommit));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().reason, Reason::StorageError);
  }
  {
    std::string staging = StageAll("tiny", *store_);
    ArtifactManifest m = ManifestFor("tiny", kCommit);
    m.files[0].size += 1;
    auto r = store_->Publish(staging, m);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().reason, Reason::ChecksumMismatch);
  }
  {
    std::string staging = StageAll("tiny", *store_);
    auto r = store_->Publish(staging, ManifestFor("other-name", kCommit));
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().reason, Reason::Internal);
  }
  auto not_staging =
      store_->Publish(store_->root() + "/artifacts/tiny/.staging-x", ManifestFor("tiny", kCommit));
  ASSERT_FALSE(not_staging);
  EXPECT_EQ(not_staging.error().reason, Reason::InvalidSpec);
  EXPECT_TRUE(store_->ListVersions("tiny")->empty());
  EXPECT_FALSE(fs::exists(store_->root() + "/artifacts/tiny/current"));
}

TEST_F(ArtifactTest, ConcurrentPublishOfTheSameVersionBothSucceed) {
  // Two stores on one root behave like two processes; one store shared by two threads like two
  // workers. Both cases must end with one version and both callers successful.
  auto other = LocalStore::Open(store_->root());
  ASSERT_TRUE(other);
  for (LocalStore* second : {other->get(), store_.get()}) {
    fs::remove_all(store_->root() + "/artifacts/tiny");
    std::string a = StageAll("tiny", *store_);
    std::string b = StageAll("tiny", *second);
    std::latch start(2);
    Result<PublishedArtifact> ra = Error(Reason::Internal, "not run");
    Result<PublishedArtifact> rb = Error(Reason::Internal, "not run");
    std::thread ta([&] {
      start.arrive_and_wait();
      ra = store_->Publish(a, ManifestFor("tiny", kCommit));
    });
    std::thread tb([&] {
      start.arrive_and_wait();
      rb = second->Publish(b, ManifestFor("tiny", kCommit));
    });
    ta.join();
    tb.join();
    ASSERT_TRUE(ra) << ra.error().ToString();
    ASSERT_TRUE(rb) << rb.error().ToString();
    EXPECT_EQ(ra->id, rb->id);
    EXPECT_EQ(Entries("tiny"), (std::set<std::string>{ra->version, "current"}));
    EXPECT_TRUE(store_->VerifyVersion("tiny", ra->version));
  }
}

TEST_F(ArtifactTest, VerifyVersionDetectsAChangedByte) {
  auto v = store_->Publish(StageAll("tiny", *store_), ManifestFor("tiny", kCommit));
  ASSERT_TRUE(v);
  ASSERT_TRUE(store_->VerifyVersion("tiny", v->version));
  WriteText(v->path + "/model.safetensors", "0123456789");  // unchanged content: still fine
  ASSERT_TRUE(store_->VerifyVersion("tiny", v->version));
  WriteText(v->path + "/model.safetensors", "0123456780");
  auto bad = store_->VerifyVersion("tiny", v->version);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::ChecksumMismatch);
  fs::remove(v->path + "/config.json");
  auto missing = store_->VerifyVersion("tiny", v->version);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().reason, Reason::StorageError);
  auto unknown = store_->VerifyVersion("tiny", "000000000000");
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().reason, Reason::StorageError);
}

TEST_F(ArtifactTest, ReplaceExistingHealsACorruptVersion) {
  auto v = store_->Publish(StageAll("tiny", *store_), ManifestFor("tiny", kCommit));
  ASSERT_TRUE(v);
  // Corrupt the shared inode (blob and artifact file), as bit rot would.
  const std::string etag = Sha256Hex("0123456789");
  WriteText(store_->BlobPath(kRepo, etag), "0123456780");
  ASSERT_FALSE(store_->VerifyVersion("tiny", v->version));
  // The heal: re-fetch the blob (a new inode), restage, replace.
  ASSERT_TRUE(store_->RemoveBlob(kRepo, etag));
  WriteText(store_->BlobPath(kRepo, etag), "0123456789");
  auto healed = store_->Publish(StageAll("tiny", *store_), ManifestFor("tiny", kCommit),
                                PublishMode::ReplaceExisting);
  ASSERT_TRUE(healed) << healed.error().ToString();
  EXPECT_EQ(healed->version, v->version);
  EXPECT_TRUE(store_->VerifyVersion("tiny", v->version));
  EXPECT_EQ(Entries("tiny"), (std::set<std::string>{v->version, "current"}));
}

TEST_F(ArtifactTest, ReadVersionRejectsATamperedManifest) {
  auto v = store_->Publish(StageAll("tiny", *store_), ManifestFor("tiny", kCommit));
  ASSERT_TRUE(v);
  auto doc = nlohmann::json::parse(ReadText(v->path + "/modelcache.json"));
  doc["source"]["commit"] = std::string(40, 'e');
  WriteText(v->path + "/modelcache.json", doc.dump(2));
  auto r = store_->ReadVersion("tiny", v->version);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  auto current = store_->ReadCurrent("tiny");
  ASSERT_FALSE(current);
  WriteText(v->path + "/modelcache.json", "{not json");
  EXPECT_FALSE(store_->ReadVersion("tiny", v->version));
  EXPECT_FALSE(store_->ReadVersion("tiny", "ffffffffffff")->has_value());
}

TEST_F(ArtifactTest, CurrentPointingAtNothingIsAnError) {
  fs::create_directories(store_->root() + "/artifacts/tiny");
  fs::create_directory_symlink("0123456789ab", store_->root() + "/artifacts/tiny/current");
  auto r = store_->ReadCurrent("tiny");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
}

TEST_F(ArtifactTest, StageFileRejectsUnsafePathsAndForeignStaging) {
  auto staging = store_->CreateStaging("tiny");
  ASSERT_TRUE(staging);
  for (std::string rel : {"../x", "/abs", "modelcache.json", "a//b"}) {
    auto r = store_->StageFile(*staging, rel, store_->SnapshotPath(kRepo, kCommit, "config.json"));
    ASSERT_FALSE(r) << rel;
    EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  }
  auto missing = store_->StageFile(*staging, "x", dir_.path() + "/nope");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().reason, Reason::StorageError);
  auto foreign = store_->StageFile(dir_.path(), "x", store_->SnapshotPath(kRepo, kCommit, "f"));
  ASSERT_FALSE(foreign);
  EXPECT_EQ(foreign.error().reason, Reason::InvalidSpec);
  for (std::string name : {"", ".hidden", "a/b", "..", "current"}) {
    auto r = store_->CreateStaging(name);
    ASSERT_FALSE(r) << name;
    EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  }
  ASSERT_TRUE(store_->DiscardStaging(*staging));
  EXPECT_FALSE(fs::exists(*staging));
  EXPECT_FALSE(store_->DiscardStaging(*staging));
}

TEST_F(ArtifactTest, CleanupRemovesCrashLeftoversOnly) {
  auto v = store_->Publish(StageAll("tiny", *store_), ManifestFor("tiny", kCommit));
  ASSERT_TRUE(v);
  const std::string art = store_->root() + "/artifacts/tiny";
  // Leftovers of a crashed process: an unlocked staging dir, trash, temporary links and files.
  WriteText(art + "/.staging-999.0.1/model.safetensors", "partial");
  WriteText(art + "/.trash-999.0.2/config.json", "old");
  fs::create_directory_symlink(v->version, art + "/.current.modelcache-tmp-999.0.3");
  const std::string snap = store_->RepoDir(kRepo) + "/snapshots/" + kCommit;
  fs::create_symlink("../../../blobs/x", snap + "/tokenizer/.vocab.txt.modelcache-tmp-999.0.4");
  WriteText(store_->RepoDir(kRepo) + "/refs/.main.modelcache-tmp-999.0.5", kCommit);
  WriteText(store_->RepoDir(kRepo) + "/blobs/abc.modelcache-tmp-999.0.6", "copy");
  // Things that must survive: resume data, a live staging dir, everything published.
  const std::string incomplete = store_->IncompletePath(kRepo, "resume-me");
  WriteText(incomplete, "half a download");
  auto live = store_->CreateStaging("tiny");
  ASSERT_TRUE(live);
  WriteText(*live + "/config.json", "in progress");

  auto other = LocalStore::Open(store_->root());  // cleanup from "another process"
  ASSERT_TRUE(other);
  ASSERT_TRUE((*other)->CleanupStaging());
  ASSERT_TRUE(store_->CleanupStaging());

  EXPECT_EQ(Entries("tiny"),
            (std::set<std::string>{v->version, "current", fs::path(*live).filename().string()}));
  EXPECT_FALSE(
      fs::exists(fs::symlink_status(snap + "/tokenizer/.vocab.txt.modelcache-tmp-999.0.4")));
  EXPECT_FALSE(fs::exists(store_->RepoDir(kRepo) + "/refs/.main.modelcache-tmp-999.0.5"));
  EXPECT_FALSE(fs::exists(store_->RepoDir(kRepo) + "/blobs/abc.modelcache-tmp-999.0.6"));
  EXPECT_EQ(ReadText(incomplete), "half a download");
  EXPECT_EQ(ReadText(*live + "/config.json"), "in progress");
  EXPECT_TRUE(fs::is_symlink(snap + "/tokenizer/vocab.txt"));
  EXPECT_TRUE(store_->VerifyVersion("tiny", v->version));
  ASSERT_TRUE(store_->DiscardStaging(*live));
}

TEST_F(ArtifactTest, DestroyingTheStoreDiscardsItsUnpublishedStaging) {
  std::string staging;
  {
    auto other = LocalStore::Open(store_->root());
    ASSERT_TRUE(other);
    staging = StageAll("tiny", **other);
    ASSERT_TRUE(fs::exists(staging));
  }
  EXPECT_FALSE(fs::exists(staging));
}

}  // namespace
}  // namespace modelcache::store
