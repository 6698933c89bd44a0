#include <string>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "store/local_store.h"

namespace modelcache::store {
namespace {

ArtifactManifest Sample() {
  ArtifactManifest m;
  m.name = "tiny";
  m.source_type = "model";
  m.source_repo = "org/tiny";
  m.source_revision = "main";
  m.source_commit = std::string(40, 'c');
  m.files = {{"model.safetensors", 10, Sha256Hex("weights")},
             {"config.json", 3, Sha256Hex("cfg")},
             {"tokenizer/vocab.txt", 5, Sha256Hex("vocab")}};
  return m;
}

TEST(ComputeDigestTest, SameInputsSameDigest) {
  ArtifactManifest a = Sample();
  ArtifactManifest b = Sample();
  EXPECT_EQ(ComputeDigest(a), ComputeDigest(b));
  EXPECT_EQ(ComputeDigest(a).size(), 64u);
  // File order does not matter: the digest sorts by path.
  std::swap(b.files[0], b.files[2]);
  EXPECT_EQ(ComputeDigest(a), ComputeDigest(b));
}

TEST(ComputeDigestTest, RevisionNameNameAndDerivedFieldsAreNotCovered) {
  ArtifactManifest a = Sample();
  ArtifactManifest b = Sample();
  b.source_revision = b.source_commit;  // "main" and its commit are the same artifact
  b.version = "whatever";
  b.id = "x";
  b.size_bytes = 99;
  EXPECT_EQ(ComputeDigest(a), ComputeDigest(b));
}

TEST(ComputeDigestTest, SensitiveToEveryInput) {
  const std::string base = ComputeDigest(Sample());
  auto changed = [&](auto mutate) {
    ArtifactManifest m = Sample();
    mutate(m);
    return ComputeDigest(m);
  };
  EXPECT_NE(base, changed([](ArtifactManifest& m) { m.files[0].sha256 = Sha256Hex("other"); }));
  EXPECT_NE(base, changed([](ArtifactManifest& m) { m.files[0].size = 11; }));
  EXPECT_NE(base, changed([](ArtifactManifest& m) { m.files[0].path = "model2.safetensors"; }));
  EXPECT_NE(base, changed([](ArtifactManifest& m) { m.files.pop_back(); }));
  EXPECT_NE(base, changed([](ArtifactManifest& m) { m.source_commit = std::string(40, 'd'); }));
  EXPECT_NE(base, changed([](ArtifactManifest& m) { m.source_repo = "org/tiny2"; }));
  EXPECT_NE(base, changed([](ArtifactManifest& m) { m.source_type = "dataset"; }));
  EXPECT_NE(base, changed([](ArtifactManifest& m) {
              m.shard = {{"engine", "vllm"}, {"tensorParallelSize", 2}};
            }));
  ArtifactManifest tp2 = Sample();
  tp2.shard = {{"engine", "vllm"}, {"tensorParallelSize", 2}};
  ArtifactManifest tp4 = Sample();
  tp4.shard = {{"engine", "vllm"}, {"tensorParallelSize", 4}};
  EXPECT_NE(ComputeDigest(tp2), ComputeDigest(tp4));
}

TEST(ComputeDigestTest, FieldBoundariesCannotBeShifted) {
  // A naive concatenation would give these the same input.
  ArtifactManifest a = Sample();
  a.source_repo = "org/ab";
  a.source_commit = "c";
  ArtifactManifest b = Sample();
  b.source_repo = "org/a";
  b.source_commit = "bc";
  EXPECT_NE(ComputeDigest(a), ComputeDigest(b));
}

TEST(FinalizeIdentityTest, SetsVersionIdSizeAndSortsFiles) {
  ArtifactManifest m = Sample();
  FinalizeIdentity(m);
  std::string digest = ComputeDigest(m);
  EXPECT_EQ(m.version, digest.substr(0, 12));
  EXPECT_EQ(m.id, "tiny@sha256:" + digest);
  EXPECT_EQ(m.size_bytes, 18u);
  ASSERT_EQ(m.files.size(), 3u);
  EXPECT_EQ(m.files[0].path, "config.json");
  EXPECT_EQ(m.files[1].path, "model.safetensors");
  EXPECT_EQ(m.files[2].path, "tokenizer/vocab.txt");
}

TEST(ManifestJsonTest, RoundTripAndDeterministicDocument) {
  ArtifactManifest m = Sample();
  m.shard = {{"engine", "vllm"}, {"tensorParallelSize", 2}, {"engineRelease", "0.10.1"}};
  FinalizeIdentity(m);
  nlohmann::json doc = ManifestToJson(m);
  EXPECT_EQ(doc["formatVersion"], 1);
  EXPECT_EQ(doc["source"]["revision"], "main");
  EXPECT_EQ(doc["sizeBytes"], 18);
  auto back = ManifestFromJson(nlohmann::json::parse(doc.dump(2)));
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(back->name, m.name);
  EXPECT_EQ(back->version, m.version);
  EXPECT_EQ(back->id, m.id);
  EXPECT_EQ(back->source_type, m.source_type);
  EXPECT_EQ(back->source_repo, m.source_repo);
  EXPECT_EQ(back->source_revision, m.source_revision);
  EXPECT_EQ(back->source_commit, m.source_commit);
  EXPECT_EQ(back->shard, m.shard);
  EXPECT_EQ(back->size_bytes, m.size_bytes);
  ASSERT_EQ(back->files.size(), m.files.size());
  for (size_t i = 0; i < m.files.size(); ++i) {
    EXPECT_EQ(back->files[i].path, m.files[i].path);
    EXPECT_EQ(back->files[i].size, m.files[i].size);
    EXPECT_EQ(back->files[i].sha256, m.files[i].sha256);
  }
  EXPECT_EQ(ManifestToJson(*back).dump(2), doc.dump(2));
  // Keys come out sorted, whatever order they were built in.
  std::string text = doc.dump(2);
  EXPECT_LT(text.find("\"files\""), text.find("\"formatVersion\""));
  EXPECT_LT(text.find("\"shard\""), text.find("\"version\""));
}

TEST(ManifestJsonTest, UnshardedIsNull) {
  ArtifactManifest m = Sample();
  FinalizeIdentity(m);
  nlohmann::json doc = ManifestToJson(m);
  EXPECT_TRUE(doc["shard"].is_null());
  auto back = ManifestFromJson(doc);
  ASSERT_TRUE(back);
  EXPECT_TRUE(back->shard.is_null());
}

TEST(ManifestJsonTest, RejectsMalformedDocuments) {
  ArtifactManifest m = Sample();
  FinalizeIdentity(m);
  const nlohmann::json good = ManifestToJson(m);
  auto reject = [](const nlohmann::json& doc) {
    auto r = ManifestFromJson(doc);
    EXPECT_FALSE(r);
    return r ? Reason::Internal : r.error().reason;
  };
  EXPECT_EQ(reject(nlohmann::json::array()), Reason::StorageError);
  nlohmann::json d = good;
  d.erase("formatVersion");
  EXPECT_EQ(reject(d), Reason::StorageError);
  d = good;
  d["formatVersion"] = 2;
  EXPECT_EQ(reject(d), Reason::StorageError);
  d = good;
  d["source"].erase("commit");
  EXPECT_EQ(reject(d), Reason::StorageError);
  d = good;
  d["files"][0]["size"] = -1;
  EXPECT_EQ(reject(d), Reason::StorageError);
  d = good;
  d["files"][1].erase("sha256");
  EXPECT_EQ(reject(d), Reason::StorageError);
  d = good;
  d.erase("shard");
  EXPECT_EQ(reject(d), Reason::StorageError);
}

}  // namespace
}  // namespace modelcache::store
