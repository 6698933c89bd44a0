#include "controller/directory/directory_source.h"

#include <unistd.h>

#include <filesystem>
#include <map>
#include <mutex>
#include <string>

#include <gtest/gtest.h>

#include "common/clock.h"
#include "controller/directory/file_status_store.h"
#include "controller/object_cache.h"
#include "tests/common/test_util.h"

namespace modelcache::controller {
namespace {

namespace fs = std::filesystem;
using test_util::TempDir;
using test_util::WaitFor;
using test_util::WriteFile;

std::string Manifest(const std::string& name, const std::string& repo, const std::string& ns = "") {
  std::string out =
      "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\nmetadata:\n  name: " + name + "\n";
  if (!ns.empty()) {
    out += "  namespace: " + ns + "\n";
  }
  return out + "spec:\n  source:\n    repo: " + repo + "\n";
}

const std::string kConfigMap =
    "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: unrelated\ndata:\n  a: b\n";

crds::ObjectKey Key(const std::string& name, const std::string& ns = "default") {
  return {ns, name};
}

// Records what the source enqueues.
class Recorder {
 public:
  EnqueueFn Fn() {
    return [this](const crds::ObjectKey& key) {
      std::lock_guard lock(mu_);
      ++counts_[key];
    };
  }
  int Count(const crds::ObjectKey& key) const {
    std::lock_guard lock(mu_);
    auto it = counts_.find(key);
    return it == counts_.end() ? 0 : it->second;
  }
  int Total() const {
    std::lock_guard lock(mu_);
    int total = 0;
    for (const auto& [key, n] : counts_) {
      total += n;
    }
    return total;
  }

 private:
  mutable std::mutex mu_;
  std::map<crds::ObjectKey, int> counts_;
};

class DirectorySourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    watch_ = tmp_.path() + "/watch";
    fs::create_directories(watch_);
  }

  void StartSource(const StatusStore* previous = nullptr,
                   std::chrono::milliseconds resync = std::chrono::milliseconds(0)) {
    source_ = std::make_unique<DirectorySource>(watch_, resync, previous, clock_);
    auto started = source_->Start(cache_, recorder_.Fn());
    ASSERT_TRUE(started) << started.error().message;
    ASSERT_TRUE(source_->HasSynced());
  }

  // Waits for at least one more rescan than `before` to complete.
  bool WaitForScanAfter(uint64_t before) {
    return WaitFor([&] { return source_->scans() > before; });
  }

  std::optional<CachedObject> Get(const std::string& name) { return cache_.Get(Key(name)); }

  std::string Repo(const std::string& name) {
    auto e = Get(name);
    return e ? e->object.spec.source.repo : "<absent>";
  }

  TempDir tmp_;
  std::string watch_;
  FakeClock clock_;
  ObjectCache cache_;
  Recorder recorder_;
  std::unique_ptr<DirectorySource> source_;
};

TEST_F(DirectorySourceTest, StartFailsOnAMissingDirectory) {
  DirectorySource source(tmp_.path() + "/nope", std::chrono::milliseconds(0), nullptr, clock_);
  auto started = source.Start(cache_, recorder_.Fn());
  ASSERT_FALSE(started);
  EXPECT_EQ(started.error().reason, Reason::StorageError);
  EXPECT_FALSE(source.HasSynced());
  source.Stop();
}

TEST_F(DirectorySourceTest, InitialListReadsYamlRecursivelyAndIgnoresTheRest) {
  WriteFile(watch_ + "/a.yaml", Manifest("a1", "org/a1") + "---\n" + kConfigMap + "---\n" +
                                    Manifest("a2", "org/a2", "team-a"));
  WriteFile(watch_ + "/sub/deeper/b.yml", Manifest("b", "org/b"));
  WriteFile(watch_ + "/notes.txt", Manifest("txt", "org/txt"));
  WriteFile(watch_ + "/.hidden.yaml", Manifest("hidden1", "org/h"));
  WriteFile(watch_ + "/.git/c.yaml", Manifest("hidden2", "org/h"));
  StartSource();

  std::vector<crds::ObjectKey> want = {Key("a1"), Key("b"), Key("a2", "team-a")};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(cache_.Keys(), want);
  for (const auto& key : want) {
    EXPECT_EQ(recorder_.Count(key), 1) << key.ToString();
  }
  auto a1 = *Get("a1");
  EXPECT_EQ(a1.origin, "a.yaml:1");
  EXPECT_FALSE(a1.source_error.has_value());
  EXPECT_EQ(a1.object.metadata.generation, 1);
  EXPECT_EQ(a1.object.metadata.creation_timestamp, FormatRfc3339(clock_.WallNow()));
  EXPECT_EQ(a1.object.metadata.uid.size(), 36u);
  EXPECT_EQ(a1.object.spec.source.revision, "main");  // defaulted
  EXPECT_EQ(a1.object.metadata.annotations.at(std::string(kSpecHashAnnotation)),
            crds::SpecHash(a1.object.spec));
  EXPECT_EQ(OriginFile(cache_.Get(Key("a2", "team-a"))->origin), "a.yaml");
  EXPECT_EQ(Get("b")->origin, "sub/deeper/b.yml:1");
  EXPECT_NE(Get("a1")->object.metadata.uid, Get("b")->object.metadata.uid);
}

TEST_F(DirectorySourceTest, CreateModifyRewriteAndDelete) {
  StartSource();
  EXPECT_EQ(cache_.Size(), 0u);

  WriteFile(watch_ + "/m.yaml", Manifest("m", "org/one"));
  ASSERT_TRUE(WaitFor([&] { return Repo("m") == "org/one" && recorder_.Count(Key("m")) == 1; }));
  EXPECT_EQ(Get("m")->object.metadata.generation, 1);

  WriteFile(watch_ + "/m.yaml", Manifest("m", "org/two"));
  ASSERT_TRUE(WaitFor([&] { return Repo("m") == "org/two" && recorder_.Count(Key("m")) == 2; }));
  EXPECT_EQ(Get("m")->object.metadata.generation, 2);

  // Same bytes written again, and a change that leaves the spec alone (a comment): no enqueue,
  // no new generation.
  uint64_t before = source_->scans();
  WriteFile(watch_ + "/m.yaml", Manifest("m", "org/two"));
  ASSERT_TRUE(WaitForScanAfter(before));
  before = source_->scans();
  WriteFile(watch_ + "/m.yaml", "# a comment\n" + Manifest("m", "org/two"));
  ASSERT_TRUE(WaitForScanAfter(before));
  EXPECT_EQ(recorder_.Count(Key("m")), 2);
  EXPECT_EQ(Get("m")->object.metadata.generation, 2);

  fs::remove(watch_ + "/m.yaml");
  ASSERT_TRUE(WaitFor([&] { return !Get("m") && recorder_.Count(Key("m")) == 3; }));
}

TEST_F(DirectorySourceTest, RemovedDocumentIsADeletedResource) {
  WriteFile(watch_ + "/two.yaml", Manifest("x", "org/x") + "---\n" + Manifest("y", "org/y"));
  StartSource();
  ASSERT_EQ(cache_.Size(), 2u);
  WriteFile(watch_ + "/two.yaml", Manifest("x", "org/x"));
  ASSERT_TRUE(WaitFor([&] { return !Get("y") && recorder_.Count(Key("y")) == 2; }));
  EXPECT_EQ(recorder_.Count(Key("x")), 1);  // x did not change
}

TEST_F(DirectorySourceTest, RenameInAndOut) {
  WriteFile(tmp_.path() + "/staging/r.yaml", Manifest("r", "org/r"));
  fs::create_directories(watch_ + "/sub");
  StartSource();
  fs::rename(tmp_.path() + "/staging/r.yaml", watch_ + "/sub/r.yaml");
  ASSERT_TRUE(WaitFor([&] { return Get("r").has_value(); }));
  EXPECT_EQ(Get("r")->origin, "sub/r.yaml:1");
  fs::rename(watch_ + "/sub/r.yaml", tmp_.path() + "/staging/r.yaml");
  ASSERT_TRUE(WaitFor([&] { return !Get("r") && recorder_.Count(Key("r")) == 2; }));
}

TEST_F(DirectorySourceTest, NewSubdirectoryWithFilesAndItsRemoval) {
  StartSource();
  // Created in one go, faster than a watch could be added between the mkdir and the writes.
  WriteFile(watch_ + "/new/deeper/d1.yaml", Manifest("d1", "org/d1"));
  WriteFile(watch_ + "/new/deeper/d2.yaml", Manifest("d2", "org/d2"));
  WriteFile(watch_ + "/new/d3.yaml", Manifest("d3", "org/d3"));
  ASSERT_TRUE(WaitFor([&] { return cache_.Size() == 3; }));
  // A file added later to the new subdirectory is seen through its own watch.
  WriteFile(watch_ + "/new/deeper/d4.yaml", Manifest("d4", "org/d4"));
  ASSERT_TRUE(WaitFor([&] { return Get("d4").has_value(); }));
  fs::remove_all(watch_ + "/new");
  ASSERT_TRUE(WaitFor([&] { return cache_.Size() == 0; }));
  for (const char* name : {"d1", "d2", "d3", "d4"}) {
    EXPECT_EQ(recorder_.Count(Key(name)), 2) << name;
  }
}

// Kubernetes ConfigMap/Secret volumes (and git-sync's --link inside a directory): the data lives
// in a hidden timestamped directory, "..data" points at it, and the visible files are symlinks
// through "..data". An update writes a new directory and renames a new "..data" over the old.
TEST_F(DirectorySourceTest, ConfigMapStyleDataSymlinkSwap) {
  WriteFile(watch_ + "/..2026_01_01/a.yaml", Manifest("a", "org/a-v1"));
  fs::create_directory_symlink("..2026_01_01", watch_ + "/..data");
  fs::create_symlink("..data/a.yaml", watch_ + "/a.yaml");
  StartSource();
  ASSERT_EQ(cache_.Keys(), std::vector<crds::ObjectKey>{Key("a")});  // read once, via a.yaml
  EXPECT_EQ(Get("a")->origin, "a.yaml:1");
  EXPECT_FALSE(Get("a")->source_error.has_value());

  WriteFile(watch_ + "/..2026_02_02/a.yaml", Manifest("a", "org/a-v2"));
  WriteFile(watch_ + "/..2026_02_02/b.yaml", Manifest("b", "org/b"));
  fs::create_directory_symlink("..2026_02_02", watch_ + "/..data_tmp");
  fs::rename(watch_ + "/..data_tmp", watch_ + "/..data");
  fs::create_symlink("..data/b.yaml", watch_ + "/b.yaml");
  fs::remove_all(watch_ + "/..2026_01_01");
  ASSERT_TRUE(WaitFor([&] { return Repo("a") == "org/a-v2" && Get("b").has_value(); }));
  EXPECT_EQ(Get("a")->object.metadata.generation, 2);
  EXPECT_EQ(cache_.Size(), 2u);
}

// git-sync: the watched path itself is a symlink that is atomically replaced by a rename.
TEST_F(DirectorySourceTest, WatchedDirectoryIsASymlinkThatGetsSwapped) {
  std::string repo = tmp_.path() + "/repo";
  WriteFile(repo + "/rev1/models/a.yaml", Manifest("a", "org/a-v1"));
  WriteFile(repo + "/rev2/models/a.yaml", Manifest("a", "org/a-v2"));
  WriteFile(repo + "/rev2/models/c.yaml", Manifest("c", "org/c"));
  fs::create_directory_symlink("rev1", repo + "/current");
  watch_ = repo + "/current";
  StartSource();
  ASSERT_EQ(Repo("a"), "org/a-v1");
  EXPECT_EQ(Get("a")->origin, "models/a.yaml:1");

  fs::create_directory_symlink("rev2", repo + "/current.tmp");
  fs::rename(repo + "/current.tmp", repo + "/current");
  ASSERT_TRUE(WaitFor([&] { return Repo("a") == "org/a-v2" && Get("c").has_value(); }));

  // Edits inside the new target are watched too.
  WriteFile(repo + "/rev2/models/c.yaml", Manifest("c", "org/c-v2"));
  ASSERT_TRUE(WaitFor([&] { return Repo("c") == "org/c-v2"; }));
  // And the old target no longer matters.
  uint64_t before = source_->scans();
  WriteFile(repo + "/rev1/models/z.yaml", Manifest("z", "org/z"));
  fs::create_directory_symlink("rev2", repo + "/current.tmp2");  // an event the source sees
  fs::rename(repo + "/current.tmp2", repo + "/current");
  ASSERT_TRUE(WaitForScanAfter(before));
  EXPECT_FALSE(Get("z").has_value());
}

// A symlink is followed when it resolves inside the watched directory (a Kubernetes volume's
// "..data"), and not when it leads out of it or loops.
TEST_F(DirectorySourceTest, SymlinksInsideAreFollowedOutsideAndLoopsAreNot) {
  WriteFile(watch_ + "/.store/e.yaml", Manifest("e", "org/e"));
  fs::create_directory_symlink(".store", watch_ + "/linked");
  WriteFile(tmp_.path() + "/elsewhere/x.yaml", Manifest("x", "org/x"));
  fs::create_directory_symlink(tmp_.path() + "/elsewhere", watch_ + "/out");
  fs::create_symlink(tmp_.path() + "/elsewhere/x.yaml", watch_ + "/x.yaml");
  fs::create_directory_symlink("/", watch_ + "/slash");
  fs::create_directory_symlink(watch_, watch_ + "/cycle");  // back to the root: walked once
  fs::create_symlink("self.yaml", watch_ + "/self.yaml");   // ELOOP
  StartSource();
  EXPECT_EQ(cache_.Keys(), std::vector<crds::ObjectKey>{Key("e")});
  EXPECT_EQ(Get("e")->origin, "linked/e.yaml:1");
  WriteFile(watch_ + "/.store/f.yaml", Manifest("f", "org/f"));
  ASSERT_TRUE(WaitFor([&] { return Get("f").has_value(); }));
  EXPECT_FALSE(Get("x").has_value());
}

// A file over the size limit fails like a syntax error: what it declared before stays, marked.
TEST_F(DirectorySourceTest, OversizedFileIsRefusedLikeASyntaxError) {
  WriteFile(watch_ + "/a.yaml", Manifest("a", "org/a"));
  StartSource();
  ASSERT_TRUE(Get("a").has_value());
  WriteFile(watch_ + "/a.yaml",
            Manifest("a", "org/b") + "# " + std::string(crds::kMaxManifestBytes, 'x') + "\n");
  ASSERT_TRUE(WaitFor([&] {
    auto e = Get("a");
    return e && e->source_error.has_value();
  }));
  EXPECT_EQ(Get("a")->source_error->message,
            "a.yaml: larger than 512 KiB, the limit for a manifest file; split it");
  EXPECT_EQ(Repo("a"), "org/a");
}

TEST_F(DirectorySourceTest, DuplicateNamesAcrossFilesBlockBoth) {
  WriteFile(watch_ + "/a.yaml", Manifest("dup", "org/one"));
  WriteFile(watch_ + "/b.yaml", "# leading comment\n" + Manifest("dup", "org/two"));
  WriteFile(watch_ + "/c.yaml", Manifest("dup", "org/x", "other-ns"));  // another namespace: fine
  StartSource();
  auto dup = Get("dup");
  ASSERT_TRUE(dup.has_value());
  ASSERT_TRUE(dup->source_error.has_value());
  EXPECT_EQ(dup->source_error->reason, Reason::InvalidSpec);
  EXPECT_EQ(dup->source_error->message.rfind("declared twice: a.yaml:1 and b.yaml:", 0), 0u)
      << dup->source_error->message;
  EXPECT_FALSE(cache_.Get(Key("dup", "other-ns"))->source_error.has_value());

  int before = recorder_.Count(Key("dup"));
  fs::remove(watch_ + "/a.yaml");
  ASSERT_TRUE(WaitFor([&] {
    auto e = Get("dup");
    return e && !e->source_error && e->object.spec.source.repo == "org/two";
  }));
  EXPECT_EQ(recorder_.Count(Key("dup")), before + 1);
}

TEST_F(DirectorySourceTest, ThreeDeclarationsAreAllNamed) {
  WriteFile(watch_ + "/a.yaml", Manifest("dup", "org/one"));
  WriteFile(watch_ + "/b.yaml", Manifest("dup", "org/two"));
  WriteFile(watch_ + "/c.yaml", Manifest("dup", "org/three"));
  StartSource();
  EXPECT_EQ(Get("dup")->source_error->message, "declared 3 times: a.yaml:1, b.yaml:1 and c.yaml:1");
}

TEST_F(DirectorySourceTest, SyntaxErrorAffectsOnlyItsFile) {
  WriteFile(watch_ + "/good.yaml", Manifest("good", "org/good"));
  WriteFile(watch_ + "/edited.yaml", Manifest("edited", "org/edited"));
  WriteFile(watch_ + "/never.yaml", "key: [unclosed\n");
  StartSource();
  EXPECT_EQ(cache_.Size(), 2u);  // nothing could be read from never.yaml

  WriteFile(watch_ + "/edited.yaml", Manifest("edited", "org/edited") + "  bad: [unclosed\n");
  ASSERT_TRUE(WaitFor([&] {
    auto e = Get("edited");
    return e && e->source_error.has_value();
  }));
  auto edited = *Get("edited");
  EXPECT_EQ(edited.source_error->reason, Reason::InvalidSpec);
  EXPECT_EQ(edited.source_error->message.rfind("edited.yaml:", 0), 0u)
      << edited.source_error->message;
  // The last good version stays, unchanged.
  EXPECT_EQ(edited.object.spec.source.repo, "org/edited");
  EXPECT_EQ(edited.object.metadata.generation, 1);
  // The other file is unaffected and was not enqueued again.
  EXPECT_FALSE(Get("good")->source_error.has_value());
  EXPECT_EQ(recorder_.Count(Key("good")), 1);

  WriteFile(watch_ + "/edited.yaml", Manifest("edited", "org/edited"));
  ASSERT_TRUE(WaitFor([&] {
    auto e = Get("edited");
    return e && !e->source_error.has_value();
  }));
  EXPECT_EQ(recorder_.Count(Key("edited")), 3);  // initial, error, fixed
}

TEST_F(DirectorySourceTest, WrongTypesKeepThePreviousObjectWithTheError) {
  WriteFile(watch_ + "/t.yaml", Manifest("t", "org/t"));
  StartSource();
  WriteFile(watch_ + "/t.yaml", Manifest("t", "org/t") + "  force: [1, 2]\n");
  ASSERT_TRUE(WaitFor([&] {
    auto e = Get("t");
    return e && e->source_error.has_value();
  }));
  EXPECT_EQ(Get("t")->source_error->reason, Reason::InvalidSpec);
  EXPECT_NE(Get("t")->source_error->message.find("spec.force"), std::string::npos)
      << Get("t")->source_error->message;
  EXPECT_EQ(Repo("t"), "org/t");
}

TEST_F(DirectorySourceTest, ValidationErrorsAreSourceErrors) {
  WriteFile(watch_ + "/v.yaml",
            "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\nmetadata:\n  name: v\n"
            "spec:\n  source:\n    type: model\n");
  StartSource();
  auto v = Get("v");
  ASSERT_TRUE(v.has_value());
  ASSERT_TRUE(v->source_error.has_value());
  EXPECT_EQ(v->source_error->reason, Reason::InvalidSpec);
  EXPECT_NE(v->source_error->message.find("spec.source.repo"), std::string::npos)
      << v->source_error->message;
}

TEST_F(DirectorySourceTest, GenerationFollowsSpecChangesAcrossRestarts) {
  std::string state = tmp_.path() + "/state";
  FileStatusStore store(state);
  WriteFile(watch_ + "/g.yaml", Manifest("g", "org/one"));
  StartSource(&store);
  WriteFile(watch_ + "/g.yaml", Manifest("g", "org/two"));
  ASSERT_TRUE(WaitFor([&] { return Repo("g") == "org/two"; }));
  auto first = *Get("g");
  EXPECT_EQ(first.object.metadata.generation, 2);
  // The controller stores the cached object with its status.
  ASSERT_TRUE(store.Write(first.object));
  source_->Stop();

  // Restart with the same spec: same generation, uid and creation time, even though time moved.
  clock_.Advance(std::chrono::hours(1));
  ObjectCache cache2;
  DirectorySource second(watch_, std::chrono::milliseconds(0), &store, clock_);
  ASSERT_TRUE(second.Start(cache2, [](const crds::ObjectKey&) {}));
  auto again = *cache2.Get(Key("g"));
  EXPECT_EQ(again.object.metadata.generation, 2);
  EXPECT_EQ(again.object.metadata.uid, first.object.metadata.uid);
  EXPECT_EQ(again.object.metadata.creation_timestamp, first.object.metadata.creation_timestamp);
  second.Stop();

  // Spec edited while the daemon was down: the next generation.
  WriteFile(watch_ + "/g.yaml", Manifest("g", "org/three"));
  ObjectCache cache3;
  DirectorySource third(watch_, std::chrono::milliseconds(0), &store, clock_);
  ASSERT_TRUE(third.Start(cache3, [](const crds::ObjectKey&) {}));
  EXPECT_EQ(cache3.Get(Key("g"))->object.metadata.generation, 3);
  EXPECT_EQ(cache3.Get(Key("g"))->object.metadata.uid, first.object.metadata.uid);
  third.Stop();

  // Deleted and its status removed: declared again, it starts over with a new uid.
  ASSERT_TRUE(store.Remove(Key("g")));
  ObjectCache cache4;
  DirectorySource fourth(watch_, std::chrono::milliseconds(0), &store, clock_);
  ASSERT_TRUE(fourth.Start(cache4, [](const crds::ObjectKey&) {}));
  EXPECT_EQ(cache4.Get(Key("g"))->object.metadata.generation, 1);
  EXPECT_NE(cache4.Get(Key("g"))->object.metadata.uid, first.object.metadata.uid);
}

TEST_F(DirectorySourceTest, PeriodicResyncEnqueuesEveryKey) {
  WriteFile(watch_ + "/a.yaml", Manifest("a", "org/a"));
  WriteFile(watch_ + "/b.yaml", Manifest("b", "org/b"));
  StartSource(nullptr, std::chrono::milliseconds(50));
  ASSERT_TRUE(
      WaitFor([&] { return recorder_.Count(Key("a")) >= 3 && recorder_.Count(Key("b")) >= 3; }));
  EXPECT_EQ(Get("a")->object.metadata.generation, 1);
}

TEST_F(DirectorySourceTest, ThousandFilesInOneBurst) {
  constexpr int kFiles = 1000;
  StartSource();
  uint64_t scans_before = source_->scans();
  for (int i = 0; i < kFiles; ++i) {
    std::string name = "m" + std::to_string(i);
    WriteFile(watch_ + "/" + name + ".yaml", Manifest(name, "org/" + name));
  }
  auto all_enqueued = [&] {
    for (int i = 0; i < kFiles; ++i) {
      if (recorder_.Count(Key("m" + std::to_string(i))) == 0) {
        return false;
      }
    }
    return true;
  };
  // The cache is filled before the keys are enqueued; wait for both.
  ASSERT_TRUE(
      WaitFor([&] { return cache_.Size() == kFiles && all_enqueued(); }, std::chrono::seconds(20)))
      << cache_.Size();
  // Debounced: a handful of rescans, not one per file.
  uint64_t scans = source_->scans() - scans_before;
  EXPECT_LT(scans, 50u) << scans;
  RecordProperty("rescans", static_cast<int>(scans));
  // A restart lists them all at once.
  source_->Stop();
  ObjectCache cache2;
  Recorder recorder2;
  DirectorySource second(watch_, std::chrono::milliseconds(0), nullptr, clock_);
  ASSERT_TRUE(second.Start(cache2, recorder2.Fn()));
  EXPECT_EQ(cache2.Size(), static_cast<size_t>(kFiles));
  EXPECT_EQ(recorder2.Total(), kFiles);
  EXPECT_EQ(second.scans(), 1u);
}

TEST_F(DirectorySourceTest, VanishedRootKeepsTheCache) {
  WriteFile(watch_ + "/a.yaml", Manifest("a", "org/a"));
  StartSource();
  uint64_t before = source_->scans();
  fs::rename(watch_, tmp_.path() + "/moved-away");
  ASSERT_TRUE(WaitForScanAfter(before));
  EXPECT_TRUE(Get("a").has_value());
  // Back again (a new directory with another file): picked up through the parent's watch.
  WriteFile(tmp_.path() + "/incoming/b.yaml", Manifest("b", "org/b"));
  fs::rename(tmp_.path() + "/incoming", watch_);
  ASSERT_TRUE(WaitFor([&] { return Get("b").has_value() && !Get("a").has_value(); }));
}

TEST_F(DirectorySourceTest, StopIsIdempotentAndSafeWithoutStart) {
  DirectorySource never(watch_, std::chrono::milliseconds(0), nullptr, clock_);
  never.Stop();
  StartSource();
  source_->Stop();
  source_->Stop();
  // Started once only.
  auto again = source_->Start(cache_, recorder_.Fn());
  ASSERT_FALSE(again);
  EXPECT_EQ(again.error().reason, Reason::Internal);
}

}  // namespace
}  // namespace modelcache::controller
