#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "crds/model_cache.h"
#include "test_objects.h"

namespace modelcache::crds {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;

std::vector<Document> Parse(const std::string& text) {
  auto docs = ParseYamlDocuments(text, "test.yaml");
  EXPECT_TRUE(docs) << docs.error().ToString();
  return docs ? *docs : std::vector<Document>{};
}

std::vector<std::pair<int, std::string>> ErrorStrings(const Document& d) {
  std::vector<std::pair<int, std::string>> out;
  for (const auto& [line, e] : d.errors) {
    out.emplace_back(line, e.ToString());
  }
  return out;
}

const char kDesignExample[] = R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata:
  name: qwen3-0-6b                 # DNS-1123 label
  namespace: default
spec:
  source:
    repo: Qwen/Qwen3-0.6B
    type: model
    revision: main
    include: ["*.json", "*.safetensors", "tokenizer*"]
    exclude: ["original/*"]
    endpoint: ""
    tokenSecretRef: {name: hf-token, key: token}
  artifactName: qwen3-0-6b
  accelerator: "L40s:4"
  shard:
    engine: vllm
    tensorParallelSize: 4
    dtype: auto
    maxFileSize: 5GiB
  storage:
    uri: file:///var/lib/modelcache
  refreshInterval: 1h
  force: 0
)";

TEST(YamlTest, ParsesTheDesignExample) {
  auto docs = Parse(kDesignExample);
  ASSERT_EQ(docs.size(), 1u);
  const Document& d = docs[0];
  EXPECT_EQ(d.line, 1);
  EXPECT_EQ(d.api_version, "modelcache.dev/v1alpha1");
  EXPECT_EQ(d.kind, "ModelCache");
  EXPECT_THAT(d.errors, IsEmpty());
  EXPECT_THAT(d.unknown_fields, IsEmpty());
  ASSERT_TRUE(d.object.has_value());
  const ModelCache& mc = *d.object;
  EXPECT_EQ(mc.metadata.name, "qwen3-0-6b");
  EXPECT_EQ(mc.spec.source.repo, "Qwen/Qwen3-0.6B");
  EXPECT_THAT(mc.spec.source.include, ElementsAre("*.json", "*.safetensors", "tokenizer*"));
  EXPECT_EQ(mc.spec.source.token_secret_ref, (SecretKeyRef{"hf-token", "token"}));
  EXPECT_EQ(mc.spec.accelerator, "L40s:4");
  ASSERT_TRUE(mc.spec.shard.has_value());
  EXPECT_EQ(mc.spec.shard->tensor_parallel_size, 4);
  EXPECT_EQ(mc.spec.shard->max_file_size, "5GiB");
  EXPECT_EQ(mc.spec.storage.uri, "file:///var/lib/modelcache");
  EXPECT_EQ(mc.spec.refresh_interval, "1h");
  EXPECT_EQ(mc.spec.force, 0);
  EXPECT_TRUE(Validate(mc).empty());
  // Lines of fields, for placing validation errors.
  EXPECT_EQ(d.LineOf("spec.source.repo"), 8);
  EXPECT_EQ(d.LineOf("spec.source.include[1]"), 11);
  EXPECT_EQ(d.LineOf("spec.shard.tensorParallelSize"), 19);
  EXPECT_EQ(d.LineOf("spec.source.tokenSecretRef.key"), 14);
  EXPECT_EQ(d.LineOf("spec.source.nothing.here"), 7);  // nearest present parent: spec.source
  EXPECT_EQ(d.LineOf("status.phase"), 1);              // nothing: the document
}

TEST(YamlTest, MultipleDocumentsWithOtherKindsAndEmptyOnes) {
  auto docs = Parse(R"(# a GitOps file
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
data: {a: "1"}
---
---
# only a comment
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata:
  name: one
spec:
  source: {repo: gpt2}
---
apiVersion: other.example.com/v1
kind: ModelCache
spec: {anything: [1, 2]}
...
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: two, namespace: ns}
spec: {source: {repo: org/two}}
)");
  ASSERT_EQ(docs.size(), 4u);
  EXPECT_EQ(docs[0].kind, "ConfigMap");
  EXPECT_EQ(docs[0].api_version, "v1");
  EXPECT_FALSE(docs[0].object.has_value());
  EXPECT_THAT(docs[0].errors, IsEmpty());
  EXPECT_EQ(docs[0].line, 3);

  ASSERT_TRUE(docs[1].object.has_value());
  EXPECT_EQ(docs[1].object->metadata.name, "one");
  EXPECT_EQ(docs[1].line, 11);

  // Another group's ModelCache is not ours: ignored, not an error.
  EXPECT_EQ(docs[2].api_version, "other.example.com/v1");
  EXPECT_FALSE(docs[2].object.has_value());
  EXPECT_THAT(docs[2].errors, IsEmpty());

  ASSERT_TRUE(docs[3].object.has_value());
  EXPECT_EQ(docs[3].object->key().ToString(), "ns/two");
  EXPECT_EQ(docs[3].line, 23);
}

TEST(YamlTest, EmptyFileAndOnlyCommentsHaveNoDocuments) {
  EXPECT_THAT(Parse(""), IsEmpty());
  EXPECT_THAT(Parse("# nothing\n\n---\n---\n# still nothing\n"), IsEmpty());
}

TEST(YamlTest, SyntaxErrorNamesFileLineAndColumn) {
  auto docs = ParseYamlDocuments("apiVersion: v1\nkind: ModelCache\nspec: [1, 2\nmetadata: x\n",
                                 "dir/bad.yaml");
  ASSERT_FALSE(docs);
  EXPECT_EQ(docs.error().reason, Reason::InvalidSpec);
  EXPECT_THAT(docs.error().message, ::testing::StartsWith("dir/bad.yaml:4:"));
  auto tab = ParseYamlDocuments("a: 1\n b: 2\n", "t.yaml");
  ASSERT_FALSE(tab);
  EXPECT_THAT(tab.error().message, ::testing::StartsWith("t.yaml:2:"));
}

TEST(YamlTest, StringFieldsTakeScalarsAsWritten) {
  auto docs = Parse(R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata:
  name: 007
  labels: {version: 1.10, enabled: true, empty: ~, quoted: "2"}
spec:
  source:
    repo: gpt2
    revision: 1.10
    include: [1e3, 0x1F]
  accelerator: L40s:4
  refreshInterval: 0
  shard: {maxFileSize: 1024}
)");
  ASSERT_EQ(docs.size(), 1u);
  ASSERT_TRUE(docs[0].object.has_value()) << ErrorStrings(docs[0]).size();
  const ModelCache& mc = *docs[0].object;
  EXPECT_EQ(mc.metadata.name, "007");
  EXPECT_EQ(mc.metadata.labels.at("version"), "1.10");
  EXPECT_EQ(mc.metadata.labels.at("enabled"), "true");
  EXPECT_EQ(mc.metadata.labels.at("empty"), "");
  EXPECT_EQ(mc.metadata.labels.at("quoted"), "2");
  EXPECT_EQ(mc.spec.source.revision, "1.10");
  EXPECT_THAT(mc.spec.source.include, ElementsAre("1e3", "0x1F"));
  EXPECT_EQ(mc.spec.accelerator, "L40s:4");
  EXPECT_EQ(mc.spec.refresh_interval, "0");
  EXPECT_EQ(mc.spec.shard->max_file_size, "1024");
}

TEST(YamlTest, IntegerFieldsRejectOtherTypesWithTheirLine) {
  auto docs = Parse(R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: m}
spec:
  source:
    repo: [not, a, string]
  shard:
    tensorParallelSize: abc
  force: "1"
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: m2}
spec:
  source: {repo: gpt2}
  shard: {tensorParallelSize: 0x10}
  force: 1.0
)");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_FALSE(docs[0].object.has_value());
  EXPECT_THAT(ErrorStrings(docs[0]),
              ElementsAre(Pair(6,
                               "spec.source.repo: Invalid value: [\"not\",\"a\",\"string\"]: "
                               "must be a string"),
                          Pair(8,
                               "spec.shard.tensorParallelSize: Invalid value: \"abc\": must "
                               "be an integer"),
                          Pair(9, "spec.force: Invalid value: \"1\": must be an integer")));
  EXPECT_THAT(ErrorStrings(docs[1]),
              ElementsAre(Pair(17, "spec.force: Invalid value: 1.0: must be an integer")));
}

TEST(YamlTest, HexIntegersAreIntegers) {
  auto docs = Parse(R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: m, generation: 0x10}
spec: {source: {repo: gpt2}, force: +3}
)");
  ASSERT_TRUE(docs[0].object.has_value());
  EXPECT_EQ(docs[0].object->metadata.generation, 16);
  EXPECT_EQ(docs[0].object->spec.force, 3);
}

TEST(YamlTest, DuplicateKeysAreErrorsAtTheRepeat) {
  auto docs = Parse(R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: m}
spec:
  source:
    repo: gpt2
    repo: gpt3
)");
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_FALSE(docs[0].object.has_value());
  EXPECT_THAT(ErrorStrings(docs[0]),
              ElementsAre(Pair(7,
                               "spec.source.repo: Duplicate value: \"repo\": the key is "
                               "already defined at line 6")));
}

TEST(YamlTest, UnknownFieldsAreListedNotFatal) {
  auto docs = Parse(R"(apiVersion: modelcache.dev/v1alpha1
kind: ModelCache
metadata: {name: m}
spec:
  source: {repo: gpt2}
  shard:
    tensorParalellSize: 4
  colour: blue
)");
  ASSERT_TRUE(docs[0].object.has_value());
  EXPECT_THAT(docs[0].unknown_fields,
              ElementsAre(Pair(7, "spec.shard.tensorParalellSize"), Pair(8, "spec.colour")));
}

TEST(YamlTest, WrongVersionOrKindOfOurGroup) {
  auto docs = Parse(R"(apiVersion: modelcache.dev/v1beta1
kind: ModelCache
metadata: {name: m}
spec: {source: {repo: gpt2}}
---
apiVersion: modelcache.dev/v1alpha1
kind: ModelCash
---
kind: ModelCache
metadata: {name: m}
)");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_THAT(ErrorStrings(docs[0]),
              ElementsAre(Pair(1,
                               "apiVersion: Unsupported value: \"modelcache.dev/v1beta1\": "
                               "supported values: \"modelcache.dev/v1alpha1\"")));
  EXPECT_THAT(ErrorStrings(docs[1]),
              ElementsAre(Pair(7,
                               "kind: Unsupported value: \"ModelCash\": supported values: "
                               "\"ModelCache\"")));
  EXPECT_THAT(ErrorStrings(docs[2]), ElementsAre(Pair(9,
                                                      "apiVersion: Required value: must be "
                                                      "\"modelcache.dev/v1alpha1\"")));
  for (const Document& d : docs) {
    EXPECT_FALSE(d.object.has_value());
  }
}

TEST(YamlTest, NonMappingDocumentsAreNotOurs) {
  auto docs = Parse("- a\n- b\n---\njust text\n");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0].kind, "");
  EXPECT_FALSE(docs[0].object.has_value());
  EXPECT_THAT(docs[0].errors, IsEmpty());
}

TEST(YamlTest, AliasExpansionIsBounded) {
  // Each level doubles the nodes: 2^40 without a bound.
  std::string bomb = "a0: &a0 [x, x]\n";
  for (int i = 1; i <= 40; ++i) {
    bomb += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " [*a" + std::to_string(i - 1) +
            ", *a" + std::to_string(i - 1) + "]\n";
  }
  bomb += "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\n";
  auto docs = Parse(bomb);
  ASSERT_EQ(docs.size(), 1u);
  ASSERT_FALSE(docs[0].errors.empty());
  EXPECT_THAT(docs[0].errors[0].second.ToString(), HasSubstr("more than 10000 nodes"));
  EXPECT_FALSE(docs[0].object.has_value());
}

TEST(YamlTest, OnlyTheCoreSchemasTagsAreAllowed) {
  std::string head = "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\nmetadata: {name: m}\n";
  auto python = Parse(head + "spec:\n  source:\n    repo: !!python/object/apply:os.system [id]\n");
  ASSERT_EQ(python.size(), 1u);
  EXPECT_THAT(python[0].errors,
              ElementsAre(Pair(
                  6, ::testing::Property(&FieldError::ToString,
                                         HasSubstr("spec.source.repo: Invalid value: "
                                                   "\"tag:yaml.org,2002:python/object/apply:os."
                                                   "system\": YAML tags other than the core")))));
  auto local = Parse(head + "spec:\n  source: {repo: !shell org/m}\n");
  ASSERT_FALSE(local[0].errors.empty());
  // The core schema's own tags are fine: !!str makes 007 a string.
  auto core = Parse(head + "spec:\n  source: !!map {repo: !!str 007}\n");
  ASSERT_THAT(core[0].errors, IsEmpty());
  EXPECT_EQ(core[0].object->spec.source.repo, "007");
}

TEST(YamlTest, FileLimitsAreCheckedBeforeParsing) {
  std::string big = "# " + std::string(kMaxManifestBytes, 'x') + "\n";
  auto too_big = ParseYamlDocuments(big, "big.yaml");
  ASSERT_FALSE(too_big);
  EXPECT_EQ(too_big.error().message,
            "big.yaml: larger than 512 KiB, the limit for a manifest file; split it");
  std::string docs;
  for (size_t i = 0; i <= kMaxManifestDocuments; ++i) {
    docs += "---\na: 1\n";
  }
  auto too_many = ParseYamlDocuments(docs, "docs.yaml");
  ASSERT_FALSE(too_many);
  EXPECT_EQ(too_many.error().message,
            "docs.yaml: holds more than 1000 YAML documents, the limit for a manifest file; "
            "split it");
  // At the limit, and with "---" inside a scalar (not a marker), the file is read.
  docs.erase(0, docs.find("---", 1));
  EXPECT_TRUE(ParseYamlDocuments(docs + "b: '--- x'\n", "docs.yaml"));
}

TEST(YamlTest, OtherKindsAreNotConverted) {
  // The same expansion in somebody else's document costs nothing: it is never walked.
  std::string bomb = "apiVersion: v1\nkind: ConfigMap\na0: &a0 [x, x]\n";
  for (int i = 1; i <= 60; ++i) {
    bomb += "a" + std::to_string(i) + ": &a" + std::to_string(i) + " [*a" + std::to_string(i - 1) +
            ", *a" + std::to_string(i - 1) + "]\n";
  }
  auto docs = Parse(bomb);
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0].kind, "ConfigMap");
  EXPECT_THAT(docs[0].errors, IsEmpty());
}

TEST(YamlTest, DeepNestingIsRefusedNotACrash) {
  std::string head = "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\nspec: ";
  auto moderate = Parse(head + std::string(100, '[') + std::string(100, ']') + "\n");
  ASSERT_EQ(moderate.size(), 1u);
  ASSERT_FALSE(moderate[0].errors.empty());
  EXPECT_THAT(moderate[0].errors[0].second.detail, HasSubstr("nests deeper than 64 levels"));
  // Deep enough for yaml-cpp's own guard, which stops its recursive parser.
  auto deep =
      ParseYamlDocuments(head + std::string(100'000, '[') + std::string(100'000, ']'), "deep.yaml");
  ASSERT_FALSE(deep);
  EXPECT_THAT(deep.error().message, ::testing::StartsWith("deep.yaml:3:"));
  EXPECT_THAT(deep.error().message, HasSubstr("nesting is too deep"));
}

TEST(YamlTest, InvalidUtf8IsAnError) {
  auto docs = Parse(
      "apiVersion: modelcache.dev/v1alpha1\nkind: ModelCache\nmetadata: {name: m}\n"
      "spec: {source: {repo: \"gpt\xff\"}}\n");
  ASSERT_EQ(docs.size(), 1u);
  ASSERT_EQ(docs[0].errors.size(), 1u);
  EXPECT_EQ(docs[0].errors[0].first, 4);
  EXPECT_EQ(docs[0].errors[0].second.field, "spec.source.repo");
  EXPECT_EQ(docs[0].errors[0].second.detail, "must be valid UTF-8");
}

TEST(YamlTest, ToYamlRoundTripsAndKeepsTheResourceOrder) {
  ModelCache mc = testing::FullObject();
  std::string text = ToYaml(mc);
  auto docs = Parse(text);
  ASSERT_EQ(docs.size(), 1u);
  ASSERT_TRUE(docs[0].object.has_value()) << text;
  EXPECT_EQ(*docs[0].object, mc) << text;
  size_t api = text.find("apiVersion:");
  size_t kind = text.find("\nkind:");
  size_t metadata = text.find("\nmetadata:");
  size_t spec = text.find("\nspec:");
  size_t status = text.find("\nstatus:");
  EXPECT_EQ(api, 0u);
  EXPECT_LT(kind, metadata);
  EXPECT_LT(metadata, spec);
  EXPECT_LT(spec, status);
  EXPECT_LT(text.find("repo:"), text.find("revision:"));
  // Condition status words and number-like strings are quoted for every YAML reader.
  EXPECT_THAT(text, HasSubstr("status: \"True\""));
  EXPECT_THAT(text, HasSubstr("tier: \"1\""));
  EXPECT_THAT(text, HasSubstr("note: \"true\""));
  EXPECT_THAT(text, HasSubstr("creationTimestamp: \"2026-01-02T03:04:05Z\""));
  EXPECT_THAT(text, HasSubstr("resourceVersion: \"12345\""));
}

TEST(YamlTest, ToYamlQuotesAmbiguousStrings) {
  ModelCache mc;
  mc.metadata.name = "m";
  mc.spec.source.repo = "gpt2";
  for (const char* s : {"1.0", "yes", "null", "~", "", "0x10", "on", "1e3", "- x", "a: b", "#c",
                        "2026-01-02T03:04:05Z", "1:30", "1_000", "-.5", "'q'", "\"dq\""}) {
    mc.metadata.annotations["k"] = s;
    auto docs = Parse(ToYaml(mc));
    ASSERT_EQ(docs.size(), 1u);
    ASSERT_TRUE(docs[0].object.has_value()) << s;
    EXPECT_EQ(docs[0].object->metadata.annotations.at("k"), s) << ToYaml(mc);
  }
  mc.status.conditions = {
      Condition{"Ready", "False", "NetworkError", "line one\nline two", "t", 0}};
  auto docs = Parse(ToYaml(mc));
  ASSERT_TRUE(docs[0].object.has_value());
  EXPECT_EQ(docs[0].object->status.conditions[0].message, "line one\nline two");
}

}  // namespace
}  // namespace modelcache::crds
