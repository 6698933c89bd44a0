#include <string>

#include <gtest/gtest.h>

#include "crds/model_cache.h"

namespace modelcache::crds {
namespace {

TEST(DefaultArtifactNameTest, DerivesALabelFromTheRepoName) {
  EXPECT_EQ(DefaultArtifactName("Qwen/Qwen3-0.6B"), "qwen3-0-6b");
  EXPECT_EQ(DefaultArtifactName("meta-llama/Llama-3.1-8B-Instruct"), "llama-3-1-8b-instruct");
  EXPECT_EQ(DefaultArtifactName("gpt2"), "gpt2");
  EXPECT_EQ(DefaultArtifactName("org/My_Model.v2"), "my-model-v2");
  EXPECT_EQ(DefaultArtifactName("org/_x_"), "x");   // trimmed
  EXPECT_EQ(DefaultArtifactName("org/a+b"), "ab");  // other characters dropped
  EXPECT_EQ(DefaultArtifactName("org/___"), "");    // nothing usable left
  EXPECT_EQ(DefaultArtifactName(""), "");
  // An artifact of another store keeps its name, not its version.
  EXPECT_EQ(DefaultArtifactName("s3://bucket/p/artifacts/qwen3/v7"), "qwen3");
}

TEST(DefaultArtifactNameTest, KubernetesModeCarriesTheNamespace) {
  EXPECT_EQ(NamespacedArtifactName("team-a", "Qwen/Qwen3-0.6B"), "team-a--qwen3-0-6b");
  EXPECT_EQ(NamespacedArtifactName("", "gpt2"), "default--gpt2");
  // Two namespaces, one repo: two names.
  EXPECT_NE(NamespacedArtifactName("a", "meta-llama/Llama-3.1-8B"),
            NamespacedArtifactName("b", "meta-llama/Llama-3.1-8B"));
  EXPECT_EQ(NamespacedArtifactName("team-a", "org/___"), "");  // Validate asks for one
  std::string cut = NamespacedArtifactName(std::string(58, 'n'), "org/" + std::string(20, 'm'));
  EXPECT_EQ(cut, std::string(58, 'n') + "--mmm");
  std::string dash = NamespacedArtifactName(std::string(61, 'n'), "org/model");
  EXPECT_EQ(dash, std::string(61, 'n'));  // the cut lands in "--", which is trimmed
}

TEST(DefaultArtifactNameTest, CutsTo63WithoutATrailingDash) {
  std::string name =
      DefaultArtifactName("org/" + std::string(62, 'a') + ".b" + std::string(10, 'c'));
  EXPECT_EQ(name, std::string(62, 'a'));  // the cut at 63 ends in '-', which is trimmed
  EXPECT_EQ(DefaultArtifactName(std::string(100, 'x')).size(), 63u);
}

TEST(ApplyDefaultsTest, FillsEveryDefault) {
  ModelCache mc;
  mc.metadata.name = "m";
  mc.spec.source.repo = "Qwen/Qwen3-0.6B";
  mc.spec.shard = ShardSpec{};
  ApplyDefaults(mc);
  EXPECT_EQ(mc.metadata.namespace_, "default");
  EXPECT_EQ(mc.spec.source.type, "model");
  EXPECT_EQ(mc.spec.source.revision, "main");
  EXPECT_EQ(mc.spec.artifact_name, "qwen3-0-6b");
  EXPECT_EQ(mc.spec.shard->engine, "vllm");
  EXPECT_EQ(mc.spec.shard->dtype, "auto");
  EXPECT_EQ(mc.spec.shard->max_file_size, "5GiB");
  EXPECT_EQ(mc.spec.shard->tensor_parallel_size, 1);
  // Fields without defaults stay empty.
  EXPECT_EQ(mc.spec.storage.uri, "");
  EXPECT_EQ(mc.spec.refresh_interval, "");
  EXPECT_TRUE(Validate(mc).empty());
}

TEST(ApplyDefaultsTest, TensorParallelSizeFromTheAcceleratorCount) {
  ModelCache mc;
  mc.spec.source.repo = "x";
  mc.spec.accelerator = "L40s:4";
  mc.spec.shard = ShardSpec{};
  ApplyDefaults(mc);
  EXPECT_EQ(mc.spec.shard->tensor_parallel_size, 4);

  // An explicit size wins.
  mc.spec.shard->tensor_parallel_size = 2;
  ApplyDefaults(mc);
  EXPECT_EQ(mc.spec.shard->tensor_parallel_size, 2);

  // An invalid accelerator leaves the default at 1 (Validate reports the accelerator).
  ModelCache bad;
  bad.spec.source.repo = "x";
  bad.spec.accelerator = "L40s:many";
  bad.spec.shard = ShardSpec{};
  ApplyDefaults(bad);
  EXPECT_EQ(bad.spec.shard->tensor_parallel_size, 1);
}

TEST(ApplyDefaultsTest, KeepsWhatIsSetAndIsIdempotent) {
  ModelCache mc;
  mc.metadata.namespace_ = "ns";
  mc.spec.source.repo = "Qwen/Qwen3-0.6B";
  mc.spec.source.type = "dataset";
  mc.spec.source.revision = "v1";
  mc.spec.artifact_name = "mine";
  ApplyDefaults(mc);
  EXPECT_EQ(mc.metadata.namespace_, "ns");
  EXPECT_EQ(mc.spec.source.type, "dataset");
  EXPECT_EQ(mc.spec.source.revision, "v1");
  EXPECT_EQ(mc.spec.artifact_name, "mine");
  EXPECT_FALSE(mc.spec.shard.has_value());  // no shard section: none is invented

  ModelCache twice = mc;
  ApplyDefaults(twice);
  EXPECT_EQ(twice, mc);
}

}  // namespace
}  // namespace modelcache::crds
