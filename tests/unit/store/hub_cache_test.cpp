// The <store>/hub half of LocalStore: huggingface_hub's cache layout rules.

#include <filesystem>
#include <set>
#include <string>
#include <thread>

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

const RepoRef kModel{"model", "org/name"};
const RepoRef kDataset{"dataset", "org/data"};
const RepoRef kGpt2{"model", "gpt2"};

class HubCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = LocalStore::Open(dir_.path() + "/store");
    ASSERT_TRUE(s) << s.error().ToString();
    store_ = std::move(*s);
  }
  // Puts `content` at blobs/<etag> of `repo` the way a verified download ends.
  std::string PutBlob(const RepoRef& repo, const std::string& etag, const std::string& content) {
    std::string path = store_->BlobPath(repo, etag);
    WriteText(path, content);
    return path;
  }

  TempDir dir_;
  std::unique_ptr<LocalStore> store_;
};

TEST(RepoFolderNameTest, FollowsHuggingfaceHub) {
  EXPECT_EQ(RepoFolderName(kModel), "models--org--name");
  EXPECT_EQ(RepoFolderName(kDataset), "datasets--org--data");
  EXPECT_EQ(RepoFolderName(kGpt2), "models--gpt2");
  EXPECT_EQ(RepoFolderName({"model", "Qwen/Qwen3-0.6B"}), "models--Qwen--Qwen3-0.6B");
}

TEST(HubKeyTest, NormalizedCollisionFreeAndFilesystemSafe) {
  auto key = HubKey("HTTPS://Hub.Example/mirror/");
  ASSERT_TRUE(key) << key.error().ToString();
  EXPECT_EQ(key->rfind("https_hub.example_443_mirror-", 0), 0U) << *key;
  // Spellings of one endpoint share a key; endpoints that read alike do not.
  for (const char* same : {"https://hub.example:443/mirror", "https://hub.example/mirror//",
                           "https://HUB.example/mirror"}) {
    EXPECT_EQ(HubKey(same).value(), *key) << same;
  }
  std::set<std::string> keys;
  for (const char* other : {"https://hub.example/Mirror", "http://hub.example/mirror",
                            "https://hub.example:8443/mirror", "https://hub.example/mirror/a",
                            "https://hub.example/mirror_a", "https://hub.example/mirror%2Fa"}) {
    auto k = HubKey(other);
    ASSERT_TRUE(k) << other;
    EXPECT_NE(*k, *key) << other;
    EXPECT_TRUE(keys.insert(*k).second) << other;
    EXPECT_EQ(
        k->find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"),
        std::string::npos)
        << *k;
  }
  EXPECT_FALSE(HubKey("https://user@hub.example"));
  EXPECT_FALSE(HubKey("https://hub.example/a/../b"));
  EXPECT_FALSE(HubKey("file:///srv/hub"));
}

TEST_F(HubCacheTest, OnlyTheOwnEndpointClaimsHubAndOthersGoBesideIt) {
  const std::string own = "https://hub.example";
  const std::string tenant = "http://127.0.0.1:9/evil";
  // A spec's endpoint never claims an unclaimed store.
  auto first = store_->HubFor(tenant, own);
  ASSERT_TRUE(first) << first.error().ToString();
  EXPECT_EQ(*first, HubKey(tenant).value());
  EXPECT_FALSE(fs::exists(store_->root() + "/hub-endpoint"));
  // The own endpoint claims it, in any spelling, and keeps it against another process's default.
  EXPECT_EQ(store_->HubFor(own + "/", own).value(), "");
  EXPECT_EQ(ReadText(store_->root() + "/hub-endpoint"), "https://hub.example:443\n");
  EXPECT_EQ(store_->HubFor("https://HUB.example:443", tenant).value(), "");
  EXPECT_EQ(store_->HubFor(tenant, tenant).value(), HubKey(tenant).value());

  RepoRef other{"model", "org/name", *first};
  EXPECT_EQ(store_->RepoDir(other), store_->root() + "/hubs/" + *first + "/models--org--name");
  EXPECT_EQ(RepoStoreName(other), *first + "/models--org--name");
  EXPECT_EQ(RepoFromStoreName(RepoStoreName(other)).hub, *first);
  EXPECT_EQ(RepoFromStoreName("models--org--name").id, "org/name");
  // A blob of the default hub is not adopted into another endpoint's cache.
  PutBlob(kModel, std::string(40, 'a'), "x");
  EXPECT_FALSE(store_->AdoptBlob(other, std::string(40, 'a'), 1).value());
  EXPECT_FALSE(store_->LinkSnapshot({"model", "org/name", "../x"}, "c", "f", "e"));
}

TEST(OpenTest, CreatesLayoutAndCacheDirTag) {
  TempDir dir;
  auto store = LocalStore::Open(dir.path() + "/s/");
  ASSERT_TRUE(store) << store.error().ToString();
  EXPECT_EQ((*store)->root(), dir.path() + "/s");
  EXPECT_EQ((*store)->hub_dir(), dir.path() + "/s/hub");
  EXPECT_TRUE(fs::is_directory(dir.path() + "/s/hub"));
  EXPECT_TRUE(fs::is_directory(dir.path() + "/s/artifacts"));
  EXPECT_EQ(ReadText(dir.path() + "/s/hub/CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55\n"
            "# This file is a cache directory tag created by huggingface_hub.\n"
            "# For information about cache directory tags, see:\n"
            "#\thttps://bford.info/cachedir/\n");
}

TEST(OpenTest, LeavesAnExistingTagAlone) {
  TempDir dir;
  WriteText(dir.path() + "/hub/CACHEDIR.TAG", "custom");
  ASSERT_TRUE(LocalStore::Open(dir.path()));
  EXPECT_EQ(ReadText(dir.path() + "/hub/CACHEDIR.TAG"), "custom");
}

TEST(OpenTest, AcceptsFileUrisAndRejectsOtherSchemes) {
  TempDir dir;
  auto store = LocalStore::Open("file://" + dir.path() + "/my%20store");
  ASSERT_TRUE(store) << store.error().ToString();
  EXPECT_EQ((*store)->root(), dir.path() + "/my store");
  EXPECT_TRUE(fs::is_directory(dir.path() + "/my store/hub"));

  auto s3 = LocalStore::Open("s3://bucket/prefix");
  ASSERT_FALSE(s3);
  EXPECT_EQ(s3.error().reason, Reason::InvalidSpec);
  auto relative_uri = LocalStore::Open("file://relative/path");
  ASSERT_FALSE(relative_uri);
  EXPECT_EQ(relative_uri.error().reason, Reason::InvalidSpec);
  auto bad_escape = LocalStore::Open("file:///tmp/x%2");
  ASSERT_FALSE(bad_escape);
  EXPECT_EQ(bad_escape.error().reason, Reason::InvalidSpec);
}

TEST_F(HubCacheTest, PathRules) {
  const std::string hub = store_->root() + "/hub";
  EXPECT_EQ(store_->RepoDir(kModel), hub + "/models--org--name");
  EXPECT_EQ(store_->RepoDir(kDataset), hub + "/datasets--org--data");
  EXPECT_EQ(store_->RepoDir(kGpt2), hub + "/models--gpt2");
  EXPECT_EQ(store_->BlobPath(kModel, "abc"), hub + "/models--org--name/blobs/abc");
  EXPECT_EQ(store_->IncompletePath(kModel, "abc"), hub + "/models--org--name/blobs/abc.incomplete");
  EXPECT_EQ(store_->SnapshotPath(kModel, "c0", "a/b.txt"),
            hub + "/models--org--name/snapshots/c0/a/b.txt");
}

TEST_F(HubCacheTest, HasBlobChecksPresenceAndSize) {
  EXPECT_FALSE(store_->HasBlob(kModel, "e1", 5));
  PutBlob(kModel, "e1", "hello");
  EXPECT_TRUE(store_->HasBlob(kModel, "e1", 5));
  EXPECT_FALSE(store_->HasBlob(kModel, "e1", 4));
  EXPECT_FALSE(store_->HasBlob(kDataset, "e1", 5));
  // A partial download is not a blob.
  WriteText(store_->IncompletePath(kModel, "e2"), "hel");
  EXPECT_FALSE(store_->HasBlob(kModel, "e2", 3));
}

TEST_F(HubCacheTest, LinkSnapshotMakesRelativeLinksThatResolveToTheBlob) {
  const std::string commit(40, 'a');
  std::string blob = PutBlob(kModel, "e1", "content");
  ASSERT_TRUE(store_->LinkSnapshot(kModel, commit, "config.json", "e1"));
  ASSERT_TRUE(store_->LinkSnapshot(kModel, commit, "sub/dir/vocab.txt", "e1"));

  std::string top = store_->SnapshotPath(kModel, commit, "config.json");
  std::string nested = store_->SnapshotPath(kModel, commit, "sub/dir/vocab.txt");
  EXPECT_EQ(LinkTarget(top), "../../blobs/e1");
  EXPECT_EQ(LinkTarget(nested), "../../../../blobs/e1");
  EXPECT_EQ(fs::canonical(top), fs::canonical(blob));
  EXPECT_EQ(fs::canonical(nested), fs::canonical(blob));
  EXPECT_EQ(ReadText(nested), "content");

  // The links keep working when the whole store moves (the point of relative links).
  fs::rename(store_->root(), dir_.path() + "/moved");
  EXPECT_EQ(ReadText(dir_.path() + "/moved/hub/models--org--name/snapshots/" + commit +
                     "/sub/dir/vocab.txt"),
            "content");
}

TEST_F(HubCacheTest, LinkSnapshotIsIdempotentAndReplacesWrongLinks) {
  const std::string commit(40, 'b');
  PutBlob(kModel, "e1", "one");
  PutBlob(kModel, "e2", "two");
  std::string link = store_->SnapshotPath(kModel, commit, "f.txt");
  ASSERT_TRUE(store_->LinkSnapshot(kModel, commit, "f.txt", "e1"));
  ASSERT_TRUE(store_->LinkSnapshot(kModel, commit, "f.txt", "e1"));
  EXPECT_EQ(ReadText(link), "one");
  ASSERT_TRUE(store_->LinkSnapshot(kModel, commit, "f.txt", "e2"));
  EXPECT_EQ(LinkTarget(link), "../../blobs/e2");
  // A plain file where the link belongs (e.g. a copy made by another tool) is replaced too.
  fs::remove(link);
  WriteText(link, "stale");
  ASSERT_TRUE(store_->LinkSnapshot(kModel, commit, "f.txt", "e1"));
  EXPECT_EQ(LinkTarget(link), "../../blobs/e1");
  // No temporary names are left behind.
  for (const auto& entry : fs::directory_iterator(fs::path(link).parent_path())) {
    EXPECT_EQ(entry.path().filename(), "f.txt");
  }
}

TEST_F(HubCacheTest, RejectsUnsafeNames) {
  const std::string commit(40, 'a');
  for (std::string path : {"../x", "/abs", "a//b", "a/./b", "", "a/.."}) {
    auto r = store_->LinkSnapshot(kModel, commit, path, "e1");
    ASSERT_FALSE(r) << path;
    EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  }
  for (const RepoRef& repo : std::initializer_list<RepoRef>{{"model", "../etc"},
                                                            {"model", "a/b/c"},
                                                            {"model", "a--b"},
                                                            {"model", ""},
                                                            {"space-ship", "a/b"}}) {
    auto r = store_->WriteRef(repo, "main", commit);
    ASSERT_FALSE(r) << repo.id;
    EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  }
  for (std::string etag : {"a/b", "..", "x.incomplete", ""}) {
    auto r = store_->LinkSnapshot(kModel, commit, "f", etag);
    ASSERT_FALSE(r) << etag;
    EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  }
  EXPECT_FALSE(store_->LinkSnapshot(kModel, "../c", "f", "e1"));
  EXPECT_FALSE(store_->WriteRef(kModel, "../../escape", commit));
}

TEST_F(HubCacheTest, WriteRefHasNoNewlineAndNestsPullRequestRefs) {
  const std::string c1(40, '1');
  const std::string c2(40, '2');
  ASSERT_TRUE(store_->WriteRef(kModel, "main", c1));
  EXPECT_EQ(ReadText(store_->RepoDir(kModel) + "/refs/main"), c1);  // exactly 40 bytes
  ASSERT_TRUE(store_->WriteRef(kModel, "refs/pr/1", c2));
  EXPECT_TRUE(fs::is_directory(store_->RepoDir(kModel) + "/refs/refs/pr"));
  EXPECT_EQ(ReadText(store_->RepoDir(kModel) + "/refs/refs/pr/1"), c2);

  auto main = store_->ReadRef(kModel, "main");
  ASSERT_TRUE(main);
  EXPECT_EQ(*main, std::optional<std::string>(c1));
  ASSERT_TRUE(store_->WriteRef(kModel, "main", c2));
  EXPECT_EQ(*store_->ReadRef(kModel, "main"), std::optional<std::string>(c2));
  auto missing = store_->ReadRef(kModel, "v1.0");
  ASSERT_TRUE(missing);
  EXPECT_FALSE(missing->has_value());
  for (const auto& entry : fs::directory_iterator(store_->RepoDir(kModel) + "/refs")) {
    std::string name = entry.path().filename().string();
    EXPECT_TRUE(name == "main" || name == "refs") << name;
  }
}

TEST_F(HubCacheTest, WriteRefIsANoOpForACommit) {
  const std::string c1(40, '1');
  ASSERT_TRUE(store_->WriteRef(kModel, c1, c1));
  EXPECT_FALSE(fs::exists(store_->RepoDir(kModel) + "/refs/" + c1));
  EXPECT_FALSE(store_->ReadRef(kModel, c1)->has_value());
}

TEST_F(HubCacheTest, AdoptBlobHardLinksAcrossRepos) {
  std::string src = PutBlob(kDataset, "shared", "same bytes");
  auto adopted = store_->AdoptBlob(kModel, "shared", 10);
  ASSERT_TRUE(adopted) << adopted.error().ToString();
  EXPECT_TRUE(*adopted);
  EXPECT_TRUE(store_->HasBlob(kModel, "shared", 10));
  EXPECT_EQ(Inode(store_->BlobPath(kModel, "shared")), Inode(src));
  // Already present: true without work.
  EXPECT_TRUE(*store_->AdoptBlob(kModel, "shared", 10));
  // Nobody has it, or only with another size: false, and nothing is created.
  EXPECT_FALSE(*store_->AdoptBlob(kGpt2, "unknown", 3));
  EXPECT_FALSE(*store_->AdoptBlob(kGpt2, "shared", 11));
  EXPECT_FALSE(fs::exists(store_->BlobPath(kGpt2, "shared")));
  EXPECT_FALSE(fs::exists(store_->BlobPath(kGpt2, "unknown")));
}

TEST_F(HubCacheTest, AdoptBlobIgnoresPartialDownloads) {
  WriteText(store_->IncompletePath(kDataset, "e9"), "partial!!!");
  EXPECT_FALSE(*store_->AdoptBlob(kModel, "e9", 10));
}

TEST_F(HubCacheTest, VerifyBlobRehashesAgainstTheEtag) {
  const std::string lfs_content = "large weights";
  const std::string lfs_etag = Sha256Hex(lfs_content);
  PutBlob(kModel, lfs_etag, lfs_content);
  EXPECT_TRUE(store_->VerifyBlob(kModel, lfs_etag, lfs_content.size()));

  const std::string regular = "{\"a\":1}";
  Hasher git = GitBlobHasher(regular.size());
  git.Update(regular);
  const std::string git_etag = git.FinalHex();
  PutBlob(kModel, git_etag, regular);
  EXPECT_TRUE(store_->VerifyBlob(kModel, git_etag, regular.size()));

  // One byte changed, same size.
  PutBlob(kModel, lfs_etag, "large weightZ");
  auto bad = store_->VerifyBlob(kModel, lfs_etag, lfs_content.size());
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::ChecksumMismatch);
  auto short_size = store_->VerifyBlob(kModel, git_etag, regular.size() + 1);
  ASSERT_FALSE(short_size);
  EXPECT_EQ(short_size.error().reason, Reason::ChecksumMismatch);
  auto missing = store_->VerifyBlob(kModel, std::string(64, 'f'), 1);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().reason, Reason::StorageError);
  auto not_a_digest = store_->VerifyBlob(kModel, "etag-xyz", 1);
  ASSERT_FALSE(not_a_digest);
  EXPECT_EQ(not_a_digest.error().reason, Reason::InvalidSpec);

  ASSERT_TRUE(store_->RemoveBlob(kModel, lfs_etag));
  EXPECT_FALSE(fs::exists(store_->BlobPath(kModel, lfs_etag)));
  EXPECT_TRUE(store_->RemoveBlob(kModel, lfs_etag));  // absent is fine
}

TEST_F(HubCacheTest, BlobLocksExcludeEachOtherAndLiveWhereHuggingfaceHubPutsThem) {
  auto first = store_->TryLockBlob(kModel, "e1");
  ASSERT_TRUE(first) << first.error().ToString();
  ASSERT_TRUE(first->has_value());
  EXPECT_TRUE((*first)->held());
  EXPECT_TRUE(fs::exists(store_->root() + "/hub/.locks/models--org--name/e1.lock"));

  // Another holder (another open file, as another process would have) is refused...
  auto second = store_->TryLockBlob(kModel, "e1");
  ASSERT_TRUE(second);
  EXPECT_FALSE(second->has_value());
  // ...while other blobs and the same etag of another repo are independent.
  EXPECT_TRUE(store_->TryLockBlob(kModel, "e2")->has_value());
  EXPECT_TRUE(store_->TryLockBlob(kDataset, "e1")->has_value());

  // A blocking waiter gets the lock once the holder lets go.
  std::optional<BlobLock> held = std::move(**first);
  std::thread waiter([&] {
    auto lock = store_->LockBlob(kModel, "e1");
    EXPECT_TRUE(lock);
    EXPECT_TRUE(lock->held());
  });
  held.reset();
  waiter.join();
  EXPECT_TRUE(store_->TryLockBlob(kModel, "e1")->has_value());
}

}  // namespace
}  // namespace modelcache::store
