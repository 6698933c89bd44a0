#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "crds/model_cache.h"
#include "test_objects.h"

namespace modelcache::crds {
namespace {

using nlohmann::json;

TEST(JsonTest, FullObjectRoundTrips) {
  ModelCache mc = testing::FullObject();
  json j = ToJson(mc);
  auto back = FromJson(j);
  ASSERT_TRUE(back) << back.error().ToString();
  EXPECT_EQ(*back, mc);
  // And through text, as a status file or an API answer would carry it.
  auto reparsed = FromJson(json::parse(j.dump()));
  ASSERT_TRUE(reparsed);
  EXPECT_EQ(*reparsed, mc);
}

TEST(JsonTest, UsesTheDesignFieldNames) {
  json j = ToJson(testing::FullObject());
  EXPECT_EQ(j["apiVersion"], "modelcache.dev/v1alpha1");
  EXPECT_EQ(j["kind"], "ModelCache");
  EXPECT_EQ(j["metadata"]["resourceVersion"], "12345");
  EXPECT_EQ(j["metadata"]["creationTimestamp"], "2026-01-02T03:04:05Z");
  EXPECT_EQ(j["metadata"]["deletionTimestamp"], "2026-01-03T00:00:00Z");
  EXPECT_EQ(j["spec"]["source"]["tokenSecretRef"], (json{{"name", "hf-token"}, {"key", "token"}}));
  EXPECT_EQ(j["spec"]["artifactName"], "qwen3");
  EXPECT_EQ(j["spec"]["shard"]["tensorParallelSize"], 2);
  EXPECT_EQ(j["spec"]["shard"]["maxFileSize"], "2GiB");
  EXPECT_EQ(j["spec"]["refreshInterval"], "1h30m");
  EXPECT_EQ(j["status"]["observedGeneration"], 3);
  EXPECT_EQ(j["status"]["resolvedRevision"], "0123456789abcdef0123456789abcdef01234567");
  EXPECT_EQ(j["status"]["artifact"]["sizeBytes"], 1'234'567'890'123ULL);
  EXPECT_EQ(j["status"]["progress"], (json{{"bytesDone", 100},
                                           {"bytesTotal", 200},
                                           {"filesDone", 1},
                                           {"filesTotal", 2},
                                           {"bytesPerSecond", 50}}));
  EXPECT_EQ(j["status"]["conditions"][0]["lastTransitionTime"], "2026-01-02T03:05:00Z");
  EXPECT_EQ(j["status"]["conditions"][0]["observedGeneration"], 3);
}

TEST(JsonTest, AbsentOptionalsStayAbsent) {
  ModelCache mc;
  mc.metadata.name = "m";
  mc.spec.source.repo = "gpt2";
  json j = ToJson(mc);
  EXPECT_EQ(j, json::parse(R"({"apiVersion":"modelcache.dev/v1alpha1","kind":"ModelCache",
                              "metadata":{"name":"m"},"spec":{"source":{"repo":"gpt2"}}})"));
  // Status appears as soon as anything in it is set, and then only what is set.
  mc.status.phase = "Pending";
  EXPECT_EQ(ToJson(mc)["status"], (json{{"phase", "Pending"}}));
  EXPECT_EQ(StatusToJson(ModelCacheStatus{}), json::object());
  // An empty shard section is kept: it means "shard with defaults".
  mc.spec.shard = ShardSpec{};
  EXPECT_EQ(ToJson(mc)["spec"]["shard"], json::object());
  auto back = FromJson(ToJson(mc));
  ASSERT_TRUE(back);
  EXPECT_TRUE(back->spec.shard.has_value());
}

TEST(JsonTest, NullIsAbsentAndUnknownFieldsAreIgnored) {
  auto mc = FromJson(json::parse(R"({
    "apiVersion": "modelcache.dev/v1alpha1", "kind": "ModelCache",
    "metadata": {"name": "m", "managedFields": [{}], "creationTimestamp": null},
    "spec": {"source": {"repo": "gpt2", "flavour": "x"}, "shard": null, "extra": 1}})"));
  ASSERT_TRUE(mc) << mc.error().ToString();
  EXPECT_EQ(mc->spec.source.repo, "gpt2");
  EXPECT_FALSE(mc->spec.shard.has_value());
  EXPECT_EQ(mc->metadata.creation_timestamp, "");
}

TEST(JsonTest, ListItemsWithoutApiVersionAreAccepted) {
  auto mc =
      FromJson(json::parse(R"({"metadata": {"name": "m"}, "spec": {"source": {"repo": "x"}}})"));
  ASSERT_TRUE(mc);
  EXPECT_EQ(mc->metadata.name, "m");
}

TEST(JsonTest, WrongTypesNameEveryField) {
  auto mc = FromJson(json::parse(R"({
    "apiVersion": "modelcache.dev/v1", "kind": "ModelCache",
    "metadata": {"name": 5, "labels": {"a": ["x"]}},
    "spec": {"source": {"repo": "x", "include": "*.json"},
             "shard": {"tensorParallelSize": "abc"}, "force": 1.5},
    "status": {"artifact": {"sizeBytes": -1}}})"));
  ASSERT_FALSE(mc);
  EXPECT_EQ(mc.error().reason, Reason::InvalidSpec);
  EXPECT_EQ(mc.error().message,
            "apiVersion: Unsupported value: \"modelcache.dev/v1\": supported values: "
            "\"modelcache.dev/v1alpha1\"; "
            "metadata.name: Invalid value: 5: must be a string; "
            "metadata.labels[a]: Invalid value: [\"x\"]: must be a string; "
            "spec.source.include: Invalid value: \"*.json\": must be a list of strings; "
            "spec.shard.tensorParallelSize: Invalid value: \"abc\": must be an integer; "
            "spec.force: Invalid value: 1.5: must be an integer; "
            "status.artifact.sizeBytes: Invalid value: -1: must be greater than or equal to 0");
}

TEST(JsonTest, RejectsNonObjectsAndForeignKinds) {
  EXPECT_FALSE(FromJson(json::array()));
  EXPECT_FALSE(FromJson(json("text")));
  auto other = FromJson(json{{"apiVersion", "v1"}, {"kind", "ConfigMap"}});
  ASSERT_FALSE(other);
  EXPECT_NE(other.error().message.find("kind: Unsupported value: \"ConfigMap\""),
            std::string::npos);
  auto spec_not_object = FromJson(json{{"spec", "x"}});
  ASSERT_FALSE(spec_not_object);
  EXPECT_EQ(spec_not_object.error().message, "spec: Invalid value: \"x\": must be an object");
}

TEST(JsonTest, StatusRoundTrips) {
  ModelCacheStatus s = testing::FullObject().status;
  auto back = StatusFromJson(StatusToJson(s));
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, s);
  auto bad = StatusFromJson(json{{"conditions", json{{"type", "Ready"}}}});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().message,
            "status.conditions: Invalid value: {\"type\":\"Ready\"}: must be a list of conditions");
}

TEST(JsonTest, RejectsIntegersOutOfRange) {
  json j = {{"spec", {{"force", 18446744073709551615ULL}}}};
  auto mc = FromJson(j);
  ASSERT_FALSE(mc);
  EXPECT_EQ(mc.error().message,
            "spec.force: Invalid value: 18446744073709551615: must fit in a 64-bit signed integer");
}

TEST(SpecHashTest, StableAndSensitive) {
  ModelCacheSpec a = testing::FullObject().spec;
  ModelCacheSpec b = a;
  EXPECT_EQ(SpecHash(a), SpecHash(b));
  EXPECT_EQ(SpecHash(a).size(), 64u);
  // Pinned: the hash is persisted (directory mode compares it across restarts), so a change in
  // the canonical JSON must be deliberate.
  ModelCacheSpec minimal;
  minimal.source.repo = "gpt2";
  EXPECT_EQ(SpecToJson(minimal).dump(), R"({"source":{"repo":"gpt2"}})");
  EXPECT_EQ(SpecHash(minimal), "469161fe0aa25270aed864cac84bf426b1b66ec139dc6ef8dc05a73f9251d545");

  auto differs = [&](auto mutate) {
    ModelCacheSpec c = a;
    mutate(c);
    return SpecHash(c) != SpecHash(a);
  };
  EXPECT_TRUE(differs([](ModelCacheSpec& s) { s.force = 3; }));
  EXPECT_TRUE(differs([](ModelCacheSpec& s) { s.source.revision = "v1.1"; }));
  EXPECT_TRUE(differs([](ModelCacheSpec& s) { s.source.include.push_back("x"); }));
  EXPECT_TRUE(differs([](ModelCacheSpec& s) {
    s.source.include = {"*.safetensors", "*.json", "tokenizer*"};
  }));
  EXPECT_TRUE(differs([](ModelCacheSpec& s) { s.shard->tensor_parallel_size = 4; }));
  EXPECT_TRUE(differs([](ModelCacheSpec& s) { s.shard.reset(); }));
  EXPECT_TRUE(differs([](ModelCacheSpec& s) { s.source.token_secret_ref->key = "other"; }));
  // Absent and zero are the same spec.
  ModelCacheSpec zero_force = minimal;
  zero_force.force = 0;
  EXPECT_EQ(SpecHash(zero_force), SpecHash(minimal));
}

}  // namespace
}  // namespace modelcache::crds
