// The controller's side of store retention: which references a resource holds, and the
// collector's report (Retained condition, affected names).

#include "daemon/store_gc.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "tests/common/test_util.h"

namespace modelcache::controller {
namespace {

crds::ModelCache Resource(const std::string& name, const std::string& artifact,
                          const std::string& storage = "") {
  crds::ModelCache mc;
  mc.metadata.namespace_ = "default";
  mc.metadata.name = name;
  mc.spec.source.repo = "org/" + name;
  mc.spec.source.type = "model";
  mc.spec.artifact_name = artifact;
  mc.spec.storage.uri = storage;
  return mc;
}

TEST(ReferencesOfTest, NameReportedVersionAndResolvedSnapshot) {
  crds::ModelCache ready = Resource("a", "art-a");
  ready.status.resolved_revision = std::string(40, 'c');
  ready.status.artifact = crds::ArtifactStatus{"art-old", "0123456789ab", "", "", "", 0, 0};
  crds::ModelCache fresh = Resource("b", "art-b");  // no status yet
  crds::ModelCache elsewhere = Resource("c", "art-c", "/somewhere/else");
  crds::ModelCache here = Resource("d", "art-d", "file:///stores/main/");
  auto refs = ReferencesOf({ready, fresh, elsewhere, here}, "/stores/main");
  EXPECT_EQ(refs.names, (std::set<std::string>{"art-a", "art-b", "art-d", "art-old"}));
  EXPECT_EQ(refs.versions,
            (std::set<std::pair<std::string, std::string>>{{"art-old", "0123456789ab"}}));
  EXPECT_EQ(
      refs.snapshots,
      (std::set<std::pair<std::string, std::string>>{{"models--org--a", std::string(40, 'c')}}));
}

class StoreCollectorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = store::LocalStore::Open(dir_.path() + "/store");
    ASSERT_TRUE(store);
    store_ = std::move(*store);
  }

  // Publishes a one-file version of `name`.
  std::string Publish(const std::string& name, const std::string& content) {
    auto staging = store_->CreateStaging(name);
    EXPECT_TRUE(staging);
    std::string src = dir_.path() + "/src-" + Sha256Hex(content);
    test_util::WriteFile(src, content);
    EXPECT_TRUE(store_->StageFile(*staging, "w.bin", src));
    store::ArtifactManifest m;
    m.name = name;
    m.source_type = "model";
    m.source_repo = "org/x";
    m.source_commit = std::string(40, 'a');
    m.files.push_back({"w.bin", content.size(), Sha256Hex(content)});
    auto published = store_->Publish(*staging, m);
    EXPECT_TRUE(published);
    std::filesystem::remove(src);  // the store's link is then the only one
    return published->version;
  }

  test_util::TempDir dir_;
  std::unique_ptr<store::LocalStore> store_;
};

TEST_F(StoreCollectorTest, DisabledWithoutLimits) {
  StoreCollector::Options options;
  options.store_root = store_->root();
  StoreCollector collector(options,
                           [] { return Result<store::GcReferences>(store::GcReferences{}); }, {});
  EXPECT_FALSE(collector.enabled());
}

TEST_F(StoreCollectorTest, EvictedThenKeptWhenOnlyReferencedDataRemains) {
  std::string v1 = Publish("m", std::string(5000, '1'));
  std::string v2 = Publish("m", std::string(5000, '2'));
  StoreCollector::Options options;
  options.store_root = store_->root();
  options.gc.keep_versions = 0;
  options.gc.max_bytes = 1;
  std::vector<std::string> affected;
  bool all = false;
  store::GcReferences refs;
  refs.names.insert("m");
  StoreCollector collector(
      options, [&] { return Result<store::GcReferences>(refs); },
      [&](const std::vector<std::string>& names, bool everyone) {
        affected = names;
        all = everyone;
      });
  ASSERT_TRUE(collector.enabled());
  EXPECT_FALSE(collector.ConditionFor("m"));
  collector.RunOnce();
  EXPECT_FALSE(std::filesystem::exists(store_->artifacts_dir() + "/m/" + v1));
  EXPECT_TRUE(std::filesystem::exists(store_->artifacts_dir() + "/m/" + v2));
  EXPECT_EQ(affected, std::vector<std::string>{"m"});
  // v2 is current and still over the 1-byte limit: every resource hears that it was kept.
  EXPECT_TRUE(all);
  auto kept = collector.ConditionFor("other");
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->type, "Retained");
  EXPECT_EQ(kept->reason, "Kept");
  EXPECT_NE(kept->message.find("over its limits"), std::string::npos) << kept->message;

  // Room again: the Kept state clears, and the Evicted record of "m" remains.
  options.gc.max_bytes = 1 << 30;
  StoreCollector roomy(options, [&] { return Result<store::GcReferences>(refs); }, {});
  roomy.RunOnce();
  EXPECT_FALSE(roomy.ConditionFor("m"));  // a new collector remembers nothing

  // A run that cannot gather references removes nothing.
  Publish("m", std::string(5000, '3'));
  StoreCollector blind(
      options,
      [] { return Result<store::GcReferences>(Error(Reason::StorageError, "unreadable")); }, {});
  blind.RunOnce();
  EXPECT_TRUE(std::filesystem::exists(store_->artifacts_dir() + "/m/" + v2));
}

TEST_F(StoreCollectorTest, EvictionMessageNamesTheVersions) {
  std::string v1 = Publish("m", std::string(5000, '1'));
  Publish("m", std::string(5000, '2'));
  StoreCollector::Options options;
  options.store_root = store_->root();
  options.gc.keep_versions = 0;
  options.gc.max_bytes = 6000;
  store::GcReferences refs;
  refs.names.insert("m");
  StoreCollector collector(options, [&] { return Result<store::GcReferences>(refs); }, {});
  collector.RunOnce();
  auto c = collector.ConditionFor("m");
  ASSERT_TRUE(c);
  EXPECT_EQ(c->reason, "Evicted");
  EXPECT_NE(c->message.find("evicted 1 older version of m (" + v1 + ")"), std::string::npos)
      << c->message;
  EXPECT_FALSE(collector.ConditionFor("unrelated"));
}

}  // namespace
}  // namespace modelcache::controller
