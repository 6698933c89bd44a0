#include "cli/status_table.h"

#include <chrono>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "common/clock.h"

namespace modelcache::controller {
namespace {

using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;

const auto kNow = std::chrono::system_clock::time_point(seconds(1'800'000'000));

std::vector<crds::ModelCache> Objects() {
  crds::ModelCache ready;
  ready.metadata.namespace_ = "default";
  ready.metadata.name = "qwen3-0-6b";
  ready.metadata.creation_timestamp = FormatRfc3339(kNow - minutes(5));
  ready.spec.source.repo = "Qwen/Qwen3-0.6B";
  ready.status.phase = "Ready";
  ready.status.resolved_revision = "c1899de289a04d12100db370d81485cdf75e47ca";
  ready.status.artifact = crds::ArtifactStatus{
      "qwen3-0-6b",
      "v1",
      "qwen3-0-6b@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
      "file:///var/lib/modelcache/artifacts/qwen3-0-6b/v1",
      "",
      1000,
      3};
  crds::Condition cond;
  cond.type = "Ready";
  cond.status = "True";
  cond.reason = "Ready";
  cond.message = "artifact published";
  ready.status.conditions.push_back(cond);

  crds::ModelCache downloading;
  downloading.metadata.namespace_ = "default";
  downloading.metadata.name = "llama";
  downloading.metadata.creation_timestamp = FormatRfc3339(kNow - hours(3));
  downloading.spec.source.repo = "meta/llama";
  downloading.status.phase = "Downloading";
  // 1.2 GiB of 2.9 GiB at 85 MiB/s.
  downloading.status.progress = crds::ProgressStatus{1288490188, 3113851289, 3, 7, 89128960};
  cond.status = "False";
  cond.reason = "Downloading";
  cond.message = "downloading 3 of 7 files";
  downloading.status.conditions.push_back(cond);
  return {ready, downloading};
}

TEST(FormatTableTest, Default) {
  EXPECT_EQ(FormatTable(Objects(), /*wide=*/false, kNow),
            "NAME         PHASE         REVISION       ARTIFACT                         AGE\n"
            "qwen3-0-6b   Ready         c1899de289a0   qwen3-0-6b@sha256:0123456789ab   5m\n"
            "llama        Downloading                                                   3h\n");
}

TEST(FormatTableTest, Wide) {
  EXPECT_EQ(FormatTable(Objects(), /*wide=*/true, kNow),
            "NAME         PHASE         REVISION       ARTIFACT                         AGE   "
            "PROGRESS                         MESSAGE\n"
            "qwen3-0-6b   Ready         c1899de289a0   qwen3-0-6b@sha256:0123456789ab   5m    "
            "                                 artifact published\n"
            "llama        Downloading                                                   3h    "
            "41% 1.2 GiB/2.9 GiB 85.0 MiB/s   downloading 3 of 7 files\n");
}

TEST(FormatTableTest, NarrowColumnsKeepTheMinimumWidth) {
  crds::ModelCache mc;
  mc.metadata.name = "a";
  EXPECT_EQ(FormatTable({mc}, false, kNow),
            "NAME   PHASE   REVISION   ARTIFACT   AGE\n"
            "a                                    <unknown>\n");
}

TEST(FormatTableTest, Empty) {
  EXPECT_EQ(FormatTable({}, false, kNow, "default"), "No resources found in default namespace.\n");
  EXPECT_EQ(FormatTable({}, true, kNow), "No resources found.\n");
}

TEST(FormatAgeTest, MatchesKubectl) {
  EXPECT_EQ(FormatAge(seconds(-5)), "<invalid>");
  EXPECT_EQ(FormatAge(seconds(-1)), "0s");
  EXPECT_EQ(FormatAge(seconds(0)), "0s");
  EXPECT_EQ(FormatAge(seconds(59)), "59s");
  EXPECT_EQ(FormatAge(seconds(119)), "119s");
  EXPECT_EQ(FormatAge(seconds(120)), "2m");
  EXPECT_EQ(FormatAge(seconds(200)), "3m20s");
  EXPECT_EQ(FormatAge(minutes(10)), "10m");
  EXPECT_EQ(FormatAge(minutes(179)), "179m");
  EXPECT_EQ(FormatAge(hours(3)), "3h");
  EXPECT_EQ(FormatAge(hours(7) + minutes(59)), "7h59m");
  EXPECT_EQ(FormatAge(hours(8)), "8h");
  EXPECT_EQ(FormatAge(hours(47)), "47h");
  EXPECT_EQ(FormatAge(hours(48)), "2d");
  EXPECT_EQ(FormatAge(hours(24 * 7 + 23)), "7d23h");
  EXPECT_EQ(FormatAge(hours(24 * 8)), "8d");
  EXPECT_EQ(FormatAge(hours(24 * 729)), "729d");
  EXPECT_EQ(FormatAge(hours(24 * 730)), "2y");
  EXPECT_EQ(FormatAge(hours(24 * (365 * 3 + 120))), "3y120d");
  EXPECT_EQ(FormatAge(hours(24 * 365 * 9)), "9y");
}

TEST(ShortArtifactIdTest, CutsTheDigest) {
  EXPECT_EQ(ShortArtifactId("m@sha256:0123456789abcdef0123"), "m@sha256:0123456789ab");
  EXPECT_EQ(ShortArtifactId("m@sha256:0123"), "m@sha256:0123");
  EXPECT_EQ(ShortArtifactId("plain"), "plain");
}

TEST(FormatListTest, JsonIsAKubectlList) {
  std::string text = FormatList(Objects(), /*yaml=*/false);
  EXPECT_EQ(text.rfind("{\n    \"apiVersion\": \"v1\",\n    \"items\": [", 0), 0u) << text;
  auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j["kind"], "List");
  ASSERT_EQ(j["items"].size(), 2u);
  EXPECT_EQ(j["items"][0]["metadata"]["name"], "qwen3-0-6b");
  EXPECT_EQ(j["items"][0]["kind"], "ModelCache");
  EXPECT_EQ(j["items"][1]["status"]["phase"], "Downloading");
  auto empty = nlohmann::json::parse(FormatList({}, false));
  EXPECT_TRUE(empty["items"].is_array());
  EXPECT_TRUE(empty["items"].empty());
}

TEST(FormatListTest, YamlReadsBackWithStringsKeptAsStrings) {
  std::string text = FormatList(Objects(), /*yaml=*/true);
  YAML::Node list = YAML::Load(text);
  EXPECT_EQ(list["apiVersion"].as<std::string>(), "v1");
  EXPECT_EQ(list["kind"].as<std::string>(), "List");
  ASSERT_EQ(list["items"].size(), 2u);
  YAML::Node second = list["items"][1];
  EXPECT_EQ(second["metadata"]["name"].as<std::string>(), "llama");
  // "False" and timestamps are quoted, so a YAML 1.1 reader does not turn them into a bool/date.
  EXPECT_NE(text.find("status: \"False\""), std::string::npos) << text;
  EXPECT_NE(text.find("creationTimestamp: \"20"), std::string::npos) << text;
  EXPECT_EQ(second["status"]["progress"]["bytesTotal"].as<uint64_t>(), 3113851289u);
  // The YAML holds the same data as the JSON.
  auto json = nlohmann::json::parse(FormatList(Objects(), false));
  EXPECT_EQ(second["spec"]["source"]["repo"].as<std::string>(),
            json["items"][1]["spec"]["source"]["repo"]);
}

}  // namespace
}  // namespace modelcache::controller
