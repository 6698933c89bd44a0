#include "crds/manifest_check.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/files.h"

namespace modelcache::crds {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

class ManifestCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) / ("crds-manifest-" + UniqueSuffix());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& content) {
    std::string path = (dir_ / name).string();
    std::ofstream(path) << content;
    return path;
  }

  std::vector<std::string> Check(const std::string& path) {
    std::vector<std::string> out;
    for (const ManifestProblem& p : CheckManifestFile(path)) {
      out.push_back(p.ToString());
    }
    return out;
  }

  std::filesystem::path dir_;
};

TEST_F(ManifestCheckTest, ValidFileHasNoProblems) {
  std::string path = Write("ok.yaml", R"(apiVersion: v1
kind: Namespace
metadata: {name: models}
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: qwen}
spec:
  source: {repo: Qwen/Qwen3-0.6B}
  accelerator: "L40s:4"
  shard: {}
)");
  EXPECT_THAT(Check(path), IsEmpty());
}

TEST_F(ManifestCheckTest, ReportsEveryProblemAtItsLine) {
  std::string path = Write("bad.yaml", R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata:
  name: Qwen
spec:
  source:
    repo: a//b
    revision: 1.10
  accelerator: "L40s:4"
  shard:
    engine: tgi
    tensorParallelSize: 8
    dtpye: fp8
  force: lots
)");
  EXPECT_THAT(
      Check(path),
      ElementsAre(
          path + ":4: metadata.name: Invalid value: \"Qwen\": a lowercase RFC 1123 label must "
                 "consist of lower case alphanumeric characters or '-', and must start and end "
                 "with an alphanumeric character (e.g. 'my-name', or '123-abc')",
          path + ":7: spec.source.repo: Invalid value: \"a//b\": must be \"org/name\" or "
                 "\"name\"",
          path + ":11: spec.shard.engine: Unsupported value: \"tgi\": supported values: "
                 "\"sglang\", \"vllm\"",
          path + ":12: spec.shard.tensorParallelSize: Invalid value: 8: exceeds the accelerator "
                 "count 4",
          path + ":13: spec.shard.dtpye: unknown field",
          path + ":14: spec.force: Invalid value: \"lots\": must be an integer"));
}

// A zero written in the file is a value, not "unset": it is not replaced by the default.
TEST_F(ManifestCheckTest, AZeroTensorParallelSizeAndAliasingRevisionsAreRefused) {
  std::string path = Write("zero.yaml", R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: a}
spec:
  source: {repo: org/m, revision: refs/./pr/1}
  accelerator: "L40s:4"
  shard:
    tensorParallelSize: 0
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: b}
spec:
  source: {repo: org/m, revision: main/}
  shard: {}
)");
  EXPECT_THAT(
      Check(path),
      ElementsAre(path + ":5: spec.source.revision: Invalid value: \"refs/./pr/1\": no "
                         "'/'-separated part may start with '.'",
                  path + ":8: spec.shard.tensorParallelSize: Invalid value: 0: must be greater "
                         "than or equal to 1",
                  path + ":14: spec.source.revision: Invalid value: \"main/\": must not start "
                         "or end with '/' or contain \"//\""));
}

TEST_F(ManifestCheckTest, ConversionErrorsAreNotRestatedByValidation) {
  std::string path = Write("types.yaml", R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: m}
spec:
  source: [gpt2]
)");
  // The source failed to convert; "spec.source.repo: Required value" would only repeat that.
  EXPECT_THAT(Check(path), ElementsAre(path + ":5: spec.source: Invalid value: [\"gpt2\"]: must "
                                              "be an object"));
}

TEST_F(ManifestCheckTest, RequiredFieldsPointAtTheirParent) {
  std::string path = Write("req.yaml", R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata:
  namespace: ns
spec:
  source:
    type: model
)");
  EXPECT_THAT(Check(path), ElementsAre(path + ":3: metadata.name: Required value",
                                       path + ":6: spec.source.repo: Required value"));
}

TEST_F(ManifestCheckTest, DuplicateNamesAreReportedOnEach) {
  std::string path = Write("dup.yaml", R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: qwen}
spec: {source: {repo: Qwen/Qwen3-0.6B}}
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: qwen, namespace: default}
spec: {source: {repo: Qwen/Qwen3-8B}}
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: qwen, namespace: other}
spec: {source: {repo: Qwen/Qwen3-8B}}
)");
  EXPECT_THAT(Check(path),
              ElementsAre(path + ":3: metadata.name: Duplicate value: \"default/qwen\": also "
                                 "declared at line 8",
                          path + ":8: metadata.name: Duplicate value: \"default/qwen\": also "
                                 "declared at line 3"));
}

// Files of one tree that claim one artifact name: a warning on each claim after the first with a
// different spec (explicit or defaulted); a claim with the same content spec shares the name.
TEST_F(ManifestCheckTest, ArtifactNameClaimedTwiceIsAWarning) {
  std::string a = Write("a.yaml", R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: meta}
spec:
  source: {repo: meta-llama/Llama-3.1-8B}
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: meta-again}
spec:
  source: {repo: meta-llama/Llama-3.1-8B}
  refreshInterval: 1h
)");
  std::string b = Write("b.yaml", R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: unsloth}
spec:
  source: {repo: unsloth/Llama-3.1-8B}
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: mine, namespace: team}
spec:
  source: {repo: org/other}
  artifactName: llama-3-1-8b
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: apart}
spec:
  source: {repo: unsloth/Llama-3.1-8B}
  artifactName: unsloth-llama
)");
  std::vector<std::string> warnings;
  for (const ManifestProblem& p : CheckArtifactNames({a, b})) {
    warnings.push_back(p.ToString());
  }
  const std::string tail =
      "is also the artifact name of default/meta (" + a +
      ":5) with a different spec; whichever the daemon sees second fails with "
      "ArtifactNameConflict (set spec.artifactName)";
  EXPECT_THAT(warnings,
              ElementsAre(b + ":5: spec.artifactName: warning: \"llama-3-1-8b\" (the default "
                              "from spec.source.repo) " + tail,
                          b + ":12: spec.artifactName: warning: \"llama-3-1-8b\" " + tail));
  // One file alone, or the files' own problems, are not this check's business.
  EXPECT_THAT(CheckArtifactNames({a}), IsEmpty());
  EXPECT_THAT(Check(b), IsEmpty());
}

TEST_F(ManifestCheckTest, SyntaxErrorIsOneProblemWithItsLine) {
  std::string path = Write("syntax.yaml",
                           "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\n"
                           "spec: {source: [gpt2}\n");
  std::vector<ManifestProblem> problems = CheckManifestFile(path);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].line, 3);
  EXPECT_EQ(problems[0].field, "");
  EXPECT_THAT(problems[0].ToString(), ::testing::StartsWith(path + ":3: YAML syntax error: "));
}

TEST_F(ManifestCheckTest, MissingFileIsLineZero) {
  std::string path = (dir_ / "absent.yaml").string();
  std::vector<ManifestProblem> problems = CheckManifestFile(path);
  ASSERT_EQ(problems.size(), 1u);
  EXPECT_EQ(problems[0].line, 0);
  EXPECT_THAT(problems[0].ToString(), ::testing::StartsWith(path + ":0: "));
  EXPECT_THAT(problems[0].message, ::testing::HasSubstr("absent.yaml"));
}

TEST_F(ManifestCheckTest, WrongVersionStopsFurtherChecks) {
  std::string path = Write("ver.yaml", R"(apiVersion: modelcache.dev/v2
kind: ModelCache
metadata: {name: BAD}
)");
  EXPECT_THAT(Check(path), ElementsAre(path + ":1: apiVersion: Unsupported value: "
                                              "\"modelcache.dev/v2\": supported values: "
                                              "\"modelcache.dev/v1alpha1\""));
}

TEST(ManifestProblemTest, Format) {
  EXPECT_EQ((ManifestProblem{"f.yaml", 3, "spec.force", "Required value"}).ToString(),
            "f.yaml:3: spec.force: Required value");
  EXPECT_EQ((ManifestProblem{"f.yaml", 0, "", "cannot read"}).ToString(), "f.yaml:0: cannot read");
}

}  // namespace
}  // namespace modelcache::crds
