// The one-shot commands end to end (prefetch, shard, validate): the real binary run to its exit,
// against the Hub imitation where it needs one.

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;

class CliCommandsTest : public DaemonTest {};

TEST_F(CliCommandsTest, PrefetchPrintsTheArtifactIdAndIsIdempotent) {
  AddRepo("org/pre", SmallModelFiles(100000, 25));
  std::vector<std::string> args{"prefetch", "org/pre:main", "--store", store_dir(),
                                "--hf-endpoint", hub_.url()};
  auto first = RunModelcache(args);
  ASSERT_EQ(first.exit_code, 0) << first.err;
  EXPECT_EQ(first.out.rfind("pre@sha256:", 0), 0u) << first.out;
  auto second = RunModelcache(args);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(first.out, second.out);
  auto missing = RunModelcache({"prefetch", "org/missing", "--store", store_dir(),
                                "--hf-endpoint", hub_.url()});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.err.find("RepoNotFound"), std::string::npos) << missing.err;
}

TEST_F(CliCommandsTest, ShardCommandWritesRankFilesAtomically) {
  std::string src = tmp_ / "llama";
  ASSERT_EQ(std::system((std::string(MC_MAKE_CHECKPOINT) + " " + src +
                         " --arch llama3 --size tiny --files 2 > /dev/null")
                            .c_str()),
            0);
  std::string out = tmp_ / "llama-tp4";
  auto r = RunModelcache({"shard", src, out, "--tp", "4", "--dtype", "float16",
                          "--max-file-size", "1MiB"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  for (int rank = 0; rank < 4; ++rank) {
    EXPECT_TRUE(fs::exists(out + "/model-rank-" + std::to_string(rank) + "-part-0.safetensors"))
        << rank;
  }
  EXPECT_TRUE(fs::exists(out + "/config.json"));
  EXPECT_NE(r.out.find("model-rank-3-part-0.safetensors"), std::string::npos) << r.out;
  // Nothing partial is left next to the output.
  for (const auto& e : fs::directory_iterator(tmp_.path())) {
    EXPECT_EQ(e.path().filename().string().find(".partial-"), std::string::npos) << e.path();
  }
  // Same inputs, byte-identical outputs.
  std::string again = tmp_ / "llama-tp4-again";
  ASSERT_EQ(RunModelcache({"shard", src, again, "--tp", "4", "--dtype", "float16",
                           "--max-file-size", "1MiB"})
                .exit_code,
            0);
  for (const auto& e : fs::directory_iterator(out)) {
    EXPECT_EQ(Slurp(e.path().string()), Slurp(again + "/" + e.path().filename().string()))
        << e.path();
  }
  // A tp that does not divide the heads fails cleanly, leaving nothing behind.
  std::string bad = tmp_ / "llama-tp3";
  auto invalid = RunModelcache({"shard", src, bad, "--tp", "3"});
  EXPECT_EQ(invalid.exit_code, 1);
  EXPECT_NE(invalid.err.find("ShardConfigInvalid"), std::string::npos) << invalid.err;
  EXPECT_FALSE(fs::exists(bad));
}

TEST_F(CliCommandsTest, ValidateReportsEveryProblemWithFileAndLine) {
  std::string good = tmp_ / "good.yaml";
  std::ofstream(good) << Manifest("fine", "org/fine");
  auto ok = RunModelcache({"validate", good});
  EXPECT_EQ(ok.exit_code, 0) << ok.out << ok.err;
  std::string bad = tmp_ / "bad.yaml";
  std::ofstream(bad) << "kind: ConfigMap\napiVersion: v1\n---\n"
                     << Manifest("Bad_Name", "a//b", "  shard:\n    dtype: fp8\n");
  auto r = RunModelcache({"validate", bad});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.out.find("metadata.name"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("spec.source.repo: Invalid value: \"a//b\""), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("spec.shard.dtype"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(bad + ":"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace modelcache::itest
