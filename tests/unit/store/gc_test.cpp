// Store garbage collection: references, current, keep-versions, order, limits, shared blobs,
// dry runs and in-use locks, on a real store in a temporary directory.

#include "store/gc.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::WriteText;

const RepoRef kGcRepo{"model", "org/m"};
const std::string kFolder = "models--org--m";

std::string Commit(char c) { return std::string(40, c); }

// Sets a path's mtime to `seconds` since the epoch, so tests control "oldest first".
void SetMtime(const std::string& path, int64_t seconds) {
  struct timespec times[2] = {{seconds, 0}, {seconds, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW), 0) << path;
}

bool Exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(path, ec));
}

class GcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto opened = LocalStore::Open(dir_.path() + "/store");
    ASSERT_TRUE(opened) << opened.error().message;
    store_ = std::move(*opened);
  }

  // Puts `files` (path -> content) into the hub as snapshot `commit` of `repo` (blobs named by
  // their sha256), with mtime `when` on the snapshot and its blobs.
  void AddSnapshot(const RepoRef& repo, const std::string& commit,
                   const std::map<std::string, std::string>& files, int64_t when) {
    for (const auto& [path, content] : files) {
      std::string etag = Sha256Hex(content);
      std::string blob = store_->BlobPath(repo, etag);
      if (!Exists(blob)) {
        WriteText(blob, content);
        SetMtime(blob, when);
      }
      ASSERT_TRUE(store_->LinkSnapshot(repo, commit, path, etag));
    }
    // As a cache job does: what modelcache writes is recorded.
    std::map<std::string, std::string> written;
    for (const auto& [path, content] : files) {
      written[path] = Sha256Hex(content);
    }
    ASSERT_TRUE(store_->RecordWritten(repo, commit, written));
    SetMtime(store_->RepoDir(repo) + "/snapshots/" + commit, when);
  }

  // Publishes the snapshot's files as a version of `name`; returns the version. `current` then
  // points to it.
  std::string Publish(const std::string& name, const RepoRef& repo, const std::string& commit,
                      const std::map<std::string, std::string>& files, int64_t when) {
    AddSnapshot(repo, commit, files, when);
    auto staging = store_->CreateStaging(name);
    EXPECT_TRUE(staging);
    ArtifactManifest m;
    m.name = name;
    m.source_type = repo.type;
    m.source_repo = repo.id;
    m.source_revision = "main";
    m.source_commit = commit;
    for (const auto& [path, content] : files) {
      EXPECT_TRUE(store_->StageFile(*staging, path, store_->SnapshotPath(repo, commit, path)));
      m.files.push_back({path, content.size(), Sha256Hex(content)});
    }
    auto published = store_->Publish(*staging, m);
    EXPECT_TRUE(published) << published.error().message;
    SetMtime(published->path, when);
    return published->version;
  }

  std::string VersionPath(const std::string& name, const std::string& v) const {
    return store_->artifacts_dir() + "/" + name + "/" + v;
  }

  GcReport Run(const GcReferences& refs, GcOptions options) {
    auto report = RunGc(*store_, refs, options);
    EXPECT_TRUE(report) << report.error().message;
    return report ? *report : GcReport();
  }

  static std::vector<std::string> Versions(const GcReport& r) {
    std::vector<std::string> out;
    for (const auto& item : r.items) {
      if (item.kind == GcKind::Version) {
        out.push_back(item.name + "/" + item.version);
      }
    }
    return out;
  }

  TempDir dir_;
  std::unique_ptr<LocalStore> store_;
};

// Four revisions of one model: each has its own weights (10 000 bytes) and the same config.
std::map<std::string, std::string> Rev(int i) {
  return {{"config.json", "{\"same\": true}"},
          {"model.safetensors", std::string(10000, static_cast<char>('a' + i))}};
}

TEST_F(GcTest, ReferencedVersionsAndCurrentAreNeverRemoved) {
  std::string v1 = Publish("m", kGcRepo, Commit('1'), Rev(1), 1000);
  std::string v2 = Publish("m", kGcRepo, Commit('2'), Rev(2), 2000);
  std::string v3 = Publish("m", kGcRepo, Commit('3'), Rev(3), 3000);  // current
  GcReferences refs;
  refs.versions.insert({"m", v1});  // a resource still reports v1
  GcOptions options;
  options.keep_versions = 0;
  GcReport r = Run(refs, options);
  EXPECT_EQ(Versions(r), std::vector<std::string>{"m/" + v2});
  EXPECT_TRUE(Exists(VersionPath("m", v1)));
  EXPECT_FALSE(Exists(VersionPath("m", v2)));
  EXPECT_TRUE(Exists(VersionPath("m", v3)));
  EXPECT_EQ(testing::LinkTarget(store_->artifacts_dir() + "/m/current"), v3);
  EXPECT_EQ(r.evicted_versions["m"], std::vector<std::string>{v2});
  // v2's snapshot went with it (nothing referenced commit 2), and so did its weights blob; the
  // config blob stays: the other snapshots link it.
  EXPECT_FALSE(Exists(store_->RepoDir(kGcRepo) + "/snapshots/" + Commit('2')));
  EXPECT_FALSE(Exists(store_->BlobPath(kGcRepo, Sha256Hex(Rev(2)["model.safetensors"]))));
  EXPECT_TRUE(Exists(store_->BlobPath(kGcRepo, Sha256Hex(Rev(1)["config.json"]))));
  // v1's snapshot is kept because v1 is kept (it was built from it).
  EXPECT_TRUE(Exists(store_->RepoDir(kGcRepo) + "/snapshots/" + Commit('1')));
  // Nothing references v3's or v1's files, yet the artifacts still read.
  EXPECT_EQ(testing::ReadText(VersionPath("m", v1) + "/model.safetensors"),
            Rev(1)["model.safetensors"]);
}

TEST_F(GcTest, KeepVersionsKeepsTheNewestAndRemovesTheOldestFirst) {
  std::vector<std::string> v;
  for (int i = 0; i < 5; ++i) {
    v.push_back(Publish("m", kGcRepo, Commit(static_cast<char>('1' + i)), Rev(i), 1000 * (i + 1)));
  }
  GcReferences refs;
  refs.names.insert("m");
  GcOptions options;
  options.keep_versions = 2;
  GcReport r = Run(refs, options);
  EXPECT_EQ(Versions(r), (std::vector<std::string>{"m/" + v[0], "m/" + v[1], "m/" + v[2]}));
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(Exists(VersionPath("m", v[i])), i >= 3) << i;
  }
  // The removed versions' weights are gone; the kept ones' are not.
  EXPECT_FALSE(Exists(store_->BlobPath(kGcRepo, Sha256Hex(Rev(0)["model.safetensors"]))));
  EXPECT_TRUE(Exists(store_->BlobPath(kGcRepo, Sha256Hex(Rev(3)["model.safetensors"]))));
  EXPECT_EQ(r.freed_bytes, r.used_bytes - ScanStore(*store_)->used_bytes);
}

TEST_F(GcTest, AnUnreferencedNameLosesCurrentThenEverything) {
  std::string v1 = Publish("gone", kGcRepo, Commit('1'), Rev(1), 1000);
  std::string v2 = Publish("gone", kGcRepo, Commit('2'), Rev(2), 2000);
  GcReport r = Run({}, GcOptions());
  EXPECT_EQ(Versions(r), (std::vector<std::string>{"gone/" + v1, "gone/" + v2}));
  ASSERT_EQ(r.items.front().kind, GcKind::Version);
  EXPECT_FALSE(r.items.front().removes_current);
  EXPECT_FALSE(Exists(store_->artifacts_dir() + "/gone"));
  EXPECT_FALSE(Exists(store_->RepoDir(kGcRepo) + "/snapshots/" + Commit('1')));
  auto left = ScanStore(*store_);
  ASSERT_TRUE(left);
  EXPECT_TRUE(left->blobs.empty());
  EXPECT_EQ(left->used_bytes, 0u);
  EXPECT_EQ(r.freed_bytes, r.used_bytes);
}

TEST_F(GcTest, QuotaRemovesOnlyAsMuchAsNeededOldestFirst) {
  std::string v1 = Publish("m", kGcRepo, Commit('1'), Rev(1), 1000);
  std::string v2 = Publish("m", kGcRepo, Commit('2'), Rev(2), 2000);
  std::string v3 = Publish("m", kGcRepo, Commit('3'), Rev(3), 3000);
  GcReferences refs;
  refs.names.insert("m");
  auto before = ScanStore(*store_);
  ASSERT_TRUE(before);
  GcOptions options;
  options.keep_versions = 0;
  options.max_bytes = before->used_bytes - 5000;  // one version's weights is enough
  GcReport r = Run(refs, options);
  EXPECT_EQ(Versions(r), std::vector<std::string>{"m/" + v1});
  EXPECT_FALSE(r.over_limits);
  EXPECT_GE(r.freed_bytes, 5000u);
  EXPECT_TRUE(Exists(VersionPath("m", v2)));
  EXPECT_LE(ScanStore(*store_)->used_bytes, options.max_bytes);
  // Within the limit now: another run removes nothing.
  EXPECT_TRUE(Run(refs, options).items.empty());
}

TEST_F(GcTest, FreeSpaceFloorDrivesRemoval) {
  Publish("m", kGcRepo, Commit('1'), Rev(1), 1000);
  std::string v2 = Publish("m", kGcRepo, Commit('2'), Rev(2), 2000);
  std::string v3 = Publish("m", kGcRepo, Commit('3'), Rev(3), 3000);
  GcReferences refs;
  refs.names.insert("m");
  GcOptions options;
  options.keep_versions = 0;
  options.min_free = 1'000'000 + 15000;  // needs two versions' weights
  options.free_space = [](const std::string&) -> Result<uint64_t> { return 1'000'000; };
  options.dry_run = true;
  GcReport r = Run(refs, options);
  EXPECT_EQ(Versions(r).size(), 2u);
  EXPECT_EQ(r.needed_bytes, 15000u);
  EXPECT_GE(r.freed_bytes, 15000u);
  EXPECT_FALSE(r.over_limits);
  // Enough free space: nothing to do.
  options.free_space = [](const std::string&) -> Result<uint64_t> { return 2'000'000; };
  EXPECT_TRUE(Run(refs, options).items.empty());
}

TEST_F(GcTest, OverLimitsWhenOnlyReferencedDataRemains) {
  std::string v1 = Publish("m", kGcRepo, Commit('1'), Rev(1), 1000);
  std::string v2 = Publish("m", kGcRepo, Commit('2'), Rev(2), 2000);
  GcReferences refs;
  refs.names.insert("m");
  refs.snapshots.insert({kFolder, Commit('2')});
  GcOptions options;
  options.keep_versions = 0;
  options.max_bytes = 1;
  GcReport r = Run(refs, options);
  EXPECT_EQ(Versions(r), std::vector<std::string>{"m/" + v1});
  EXPECT_TRUE(r.over_limits);
  EXPECT_TRUE(Exists(VersionPath("m", v2)));
  EXPECT_TRUE(Exists(store_->RepoDir(kGcRepo) + "/snapshots/" + Commit('2')));
}

TEST_F(GcTest, SharedBlobsStayWhileAnySnapshotLinksThem) {
  // Two commits share config.json; only commit 2 is referenced.
  AddSnapshot(kGcRepo, Commit('1'), Rev(1), 1000);
  AddSnapshot(kGcRepo, Commit('2'), Rev(2), 2000);
  ASSERT_TRUE(store_->WriteRef(kGcRepo, "old", Commit('1')));
  ASSERT_TRUE(store_->WriteRef(kGcRepo, "refs/pr/1", Commit('1')));
  ASSERT_TRUE(store_->WriteRef(kGcRepo, "main", Commit('2')));
  GcReferences refs;
  refs.snapshots.insert({kFolder, Commit('2')});
  GcReport r = Run(refs, GcOptions());
  ASSERT_EQ(r.items.size(), 2u);  // the snapshot and its own weights
  EXPECT_EQ(r.items[0].kind, GcKind::Snapshot);
  EXPECT_EQ(r.items[1].kind, GcKind::Blob);
  EXPECT_EQ(r.items[1].freed_bytes, 10000u);
  EXPECT_TRUE(Exists(store_->BlobPath(kGcRepo, Sha256Hex(Rev(1)["config.json"]))));
  EXPECT_FALSE(Exists(store_->BlobPath(kGcRepo, Sha256Hex(Rev(1)["model.safetensors"]))));
  EXPECT_EQ(testing::ReadText(store_->SnapshotPath(kGcRepo, Commit('2'), "config.json")),
            Rev(2)["config.json"]);
  // The ref to the removed commit went with it; the other stays.
  EXPECT_FALSE(Exists(store_->RepoDir(kGcRepo) + "/refs/old"));
  EXPECT_FALSE(Exists(store_->RepoDir(kGcRepo) + "/refs/refs/pr/1"));
  EXPECT_EQ(testing::ReadText(store_->RepoDir(kGcRepo) + "/refs/main"), Commit('2'));
}

TEST_F(GcTest, OrphanBlobsGoIncompleteFilesStay) {
  AddSnapshot(kGcRepo, Commit('1'), Rev(1), 1000);
  // A job that failed after downloading one blob, before linking: recorded, never linked.
  std::string orphan = store_->BlobPath(kGcRepo, Sha256Hex("orphan"));
  WriteText(orphan, "orphan");
  ASSERT_TRUE(store_->RecordWritten(kGcRepo, Commit('1'), {{"orphan.bin", Sha256Hex("orphan")}}));
  std::string partial = store_->IncompletePath(kGcRepo, Sha256Hex("partial"));
  WriteText(partial, "part");
  GcReferences refs;
  refs.snapshots.insert({kFolder, Commit('1')});
  GcReport r = Run(refs, GcOptions());
  ASSERT_EQ(r.items.size(), 1u);
  EXPECT_EQ(r.items[0].path, orphan);
  EXPECT_FALSE(Exists(orphan));
  EXPECT_TRUE(Exists(partial));
}

TEST_F(GcTest, AForeignHuggingfaceHubDownloadIsNeverRemoved) {
  // hf download of org/foreign, and of another file of a commit modelcache also cached: no record
  // names them.
  const RepoRef foreign{"model", "org/foreign"};
  std::string blob = store_->BlobPath(foreign, Sha256Hex("weights"));
  WriteText(blob, "weights");
  ASSERT_TRUE(store_->LinkSnapshot(foreign, Commit('9'), "model.bin", Sha256Hex("weights")));
  ASSERT_TRUE(store_->WriteRef(foreign, "main", Commit('9')));
  std::string stray = store_->BlobPath(foreign, Sha256Hex("stray"));
  WriteText(stray, "stray");
  AddSnapshot(kGcRepo, Commit('1'), Rev(1), 1000);
  std::string theirs = store_->BlobPath(kGcRepo, Sha256Hex("theirs"));
  WriteText(theirs, "theirs");
  ASSERT_TRUE(store_->LinkSnapshot(kGcRepo, Commit('1'), "extra/theirs.txt", Sha256Hex("theirs")));
  ASSERT_TRUE(store_->WriteRef(kGcRepo, "main", Commit('1')));

  GcReport r = Run({}, GcOptions());  // nothing referenced, no limits: all that is removable
  EXPECT_FALSE(r.items.empty());
  EXPECT_TRUE(Exists(blob));
  EXPECT_TRUE(Exists(stray));
  EXPECT_EQ(testing::ReadText(store_->SnapshotPath(foreign, Commit('9'), "model.bin")), "weights");
  EXPECT_EQ(testing::ReadText(store_->RepoDir(foreign) + "/refs/main"), Commit('9'));
  // Of the shared commit, modelcache's links and blobs went; the hand-made file and its ref stay.
  EXPECT_EQ(testing::ReadText(store_->SnapshotPath(kGcRepo, Commit('1'), "extra/theirs.txt")),
            "theirs");
  EXPECT_TRUE(Exists(theirs));
  EXPECT_EQ(testing::ReadText(store_->RepoDir(kGcRepo) + "/refs/main"), Commit('1'));
  for (const auto& [path, content] : Rev(1)) {
    EXPECT_FALSE(Exists(store_->SnapshotPath(kGcRepo, Commit('1'), path))) << path;
    EXPECT_FALSE(Exists(store_->BlobPath(kGcRepo, Sha256Hex(content)))) << path;
  }
  EXPECT_FALSE(Exists(store_->WrittenRecordPath(kGcRepo, Commit('1'))));
}

TEST_F(GcTest, DryRunListsEverythingAndChangesNothing) {
  std::string v1 = Publish("m", kGcRepo, Commit('1'), Rev(1), 1000);
  std::string v2 = Publish("m", kGcRepo, Commit('2'), Rev(2), 2000);
  GcOptions options;
  options.dry_run = true;
  auto before = ScanStore(*store_);
  GcReport r = Run({}, options);
  EXPECT_EQ(Versions(r).size(), 2u);
  EXPECT_EQ(r.freed_bytes, before->used_bytes);
  for (const auto& item : r.items) {
    EXPECT_TRUE(Exists(item.path)) << item.path;
    EXPECT_FALSE(item.why.empty());
  }
  auto after = ScanStore(*store_);
  EXPECT_EQ(after->used_bytes, before->used_bytes);
  EXPECT_EQ(after->versions.size(), 2u);
  EXPECT_EQ(testing::LinkTarget(store_->artifacts_dir() + "/m/current"), v2);
}

TEST_F(GcTest, InUseRepoAndArtifactAreLeftAlone) {
  std::string v1 = Publish("m", kGcRepo, Commit('1'), Rev(1), 1000);
  std::string v2 = Publish("m", kGcRepo, Commit('2'), Rev(2), 2000);
  {
    auto repo_lock = LockInUse(store_->root(), "repo", kFolder);
    auto name_lock = LockInUse(store_->root(), "artifact", "m");
    ASSERT_TRUE(repo_lock && repo_lock->held());
    ASSERT_TRUE(name_lock && name_lock->held());
    // A second user shares the lock; GC cannot take it.
    auto shared = LockInUse(store_->root(), "repo", kFolder);
    ASSERT_TRUE(shared && shared->held());
    auto exclusive = TryLockExclusive(store_->root(), "repo", kFolder);
    ASSERT_TRUE(exclusive);
    EXPECT_FALSE(exclusive->held());
    GcReport r = Run({}, GcOptions());
    EXPECT_TRUE(r.items.empty());
    EXPECT_EQ(r.busy, (std::vector<std::string>{"artifact m", "repo " + kFolder}));
    EXPECT_TRUE(Exists(VersionPath("m", v1)));
  }
  GcReport r = Run({}, GcOptions());
  EXPECT_EQ(Versions(r).size(), 2u);
  EXPECT_TRUE(r.busy.empty());
}

TEST_F(GcTest, BytesLinkedOutsideTheStoreAreNotCountedAsFreed) {
  std::string v1 = Publish("m", kGcRepo, Commit('1'), Rev(1), 1000);
  std::string outside = dir_.path() + "/outside";
  ASSERT_EQ(::link((VersionPath("m", v1) + "/model.safetensors").c_str(), outside.c_str()), 0);
  GcOptions options;
  options.dry_run = true;
  GcReport r = Run({}, options);
  EXPECT_EQ(r.freed_bytes, r.used_bytes - 10000);
}

}  // namespace
}  // namespace modelcache::store
