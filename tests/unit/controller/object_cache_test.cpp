#include "controller/object_cache.h"

#include <gtest/gtest.h>

namespace modelcache::controller {
namespace {

CachedObject Cached(const std::string& name, const std::string& origin, const std::string& repo) {
  CachedObject e;
  e.object.metadata.namespace_ = "default";
  e.object.metadata.name = name;
  e.object.metadata.generation = 1;
  e.object.spec.source.repo = repo;
  e.origin = origin;
  return e;
}

crds::ObjectKey DefaultKey(const std::string& name) { return {"default", name}; }

TEST(OriginFileTest, StripsTheLine) {
  EXPECT_EQ(OriginFile("models/a.yaml:12"), "models/a.yaml");
  EXPECT_EQ(OriginFile("a.yaml"), "a.yaml");
  EXPECT_EQ(OriginFile("odd:name.yaml"), "odd:name.yaml");
  EXPECT_EQ(OriginFile("odd:name.yaml:3"), "odd:name.yaml");
}

TEST(TenantOfTest, NamespaceInKubernetesModeTopLevelEntryInDirectoryMode) {
  CachedObject kube = Cached("a", std::string(kKubernetesOrigin), "org/a");
  kube.object.metadata.namespace_ = "team-a";
  EXPECT_EQ(TenantOf(kube), "team-a");
  // Directory mode: every file below one top-level directory is one tenant; a file at the top
  // is a tenant of its own. Namespaces declared in the files do not matter.
  CachedObject nested = Cached("b", "team-b/models/qwen.yaml:12", "org/b");
  nested.object.metadata.namespace_ = "team-a";
  EXPECT_EQ(TenantOf(nested), "team-b/");
  EXPECT_EQ(TenantOf(Cached("c", "team-b/llama.yml:1", "org/c")), "team-b/");
  EXPECT_EQ(TenantOf(Cached("d", "canary.yaml:3", "org/d")), "canary.yaml");
  EXPECT_NE(TenantOf(Cached("e", "team-b.yaml:1", "org/e")), TenantOf(nested));
}

TEST(ObjectCacheTest, UpsertGetDelete) {
  ObjectCache cache;
  EXPECT_TRUE(cache.Upsert(Cached("a", "a.yaml:1", "org/a")));
  EXPECT_FALSE(cache.Upsert(Cached("a", "moved.yaml:7", "org/a")));  // only the origin moved
  EXPECT_EQ(cache.Get(DefaultKey("a"))->origin, "moved.yaml:7");
  EXPECT_TRUE(cache.Upsert(Cached("a", "moved.yaml:7", "org/b")));  // spec changed
  auto with_err = Cached("a", "moved.yaml:7", "org/b");
  with_err.source_error = Error(Reason::InvalidSpec, "declared twice");
  EXPECT_TRUE(cache.Upsert(with_err));
  EXPECT_FALSE(cache.Upsert(with_err));
  EXPECT_EQ(cache.Get(DefaultKey("a"))->source_error->reason, Reason::InvalidSpec);
  EXPECT_EQ(cache.Get(DefaultKey("zz")), std::nullopt);
  EXPECT_TRUE(cache.Delete(DefaultKey("a")));
  EXPECT_FALSE(cache.Delete(DefaultKey("a")));
  EXPECT_EQ(cache.Size(), 0u);
}

TEST(ObjectCacheTest, ListAndKeysAreOrdered) {
  ObjectCache cache;
  (void)cache.Upsert(Cached("c", "x.yaml:1", "org/c"));
  (void)cache.Upsert(Cached("a", "x.yaml:5", "org/a"));
  (void)cache.Upsert(Cached("b", "y.yaml:1", "org/b"));
  std::vector<crds::ObjectKey> keys = {DefaultKey("a"), DefaultKey("b"), DefaultKey("c")};
  EXPECT_EQ(cache.Keys(), keys);
  auto list = cache.List();
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].object.metadata.name, "a");
  EXPECT_EQ(list[2].object.metadata.name, "c");
}

TEST(ObjectCacheTest, ReplaceOriginTouchesOnlyThatFile) {
  ObjectCache cache;
  (void)cache.Upsert(Cached("a", "x.yaml:1", "org/a"));
  (void)cache.Upsert(Cached("b", "x.yaml:9", "org/b"));
  (void)cache.Upsert(Cached("c", "y.yaml:1", "org/c"));
  // x.yaml now declares a (unchanged, other line) and d; b is gone.
  auto changed = cache.ReplaceOrigin(
      "x.yaml", {Cached("a", "x.yaml:3", "org/a"), Cached("d", "x.yaml:8", "o/d")});
  std::vector<crds::ObjectKey> want = {DefaultKey("b"), DefaultKey("d")};
  EXPECT_EQ(changed, want);
  std::vector<crds::ObjectKey> keys = {DefaultKey("a"), DefaultKey("c"), DefaultKey("d")};
  EXPECT_EQ(cache.Keys(), keys);
  EXPECT_EQ(cache.Get(DefaultKey("a"))->origin, "x.yaml:3");
  // An empty list removes everything from that file.
  changed = cache.ReplaceOrigin("y.yaml", {});
  EXPECT_EQ(changed, std::vector<crds::ObjectKey>{DefaultKey("c")});
}

TEST(ObjectCacheTest, ReplaceAllReportsAddedRemovedAndChanged) {
  ObjectCache cache;
  (void)cache.ReplaceAll({Cached("a", "x.yaml:1", "org/a"), Cached("b", "x.yaml:9", "org/b"),
                          Cached("c", "x.yaml:20", "org/c")});
  auto bumped = Cached("c", "x.yaml:20", "org/c");
  bumped.object.metadata.generation = 2;
  auto changed =
      cache.ReplaceAll({Cached("a", "z.yaml:1", "org/a"), bumped, Cached("d", "x.yaml:30", "org/d")});
  std::vector<crds::ObjectKey> want = {DefaultKey("b"), DefaultKey("c"), DefaultKey("d")};
  EXPECT_EQ(changed, want);
  std::vector<crds::ObjectKey> keys = {DefaultKey("a"), DefaultKey("c"), DefaultKey("d")};
  EXPECT_EQ(cache.Keys(), keys);
  EXPECT_EQ(cache.Get(DefaultKey("a"))->origin, "z.yaml:1");
  EXPECT_TRUE(cache.ReplaceAll(cache.List()).empty());
}

}  // namespace
}  // namespace modelcache::controller
