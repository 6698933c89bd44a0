// crds/modelcache.yaml and the C++ API must agree: every field the C++ writes is in the schema
// with the same type, the schema has nothing the C++ does not know, enums and required lists are
// the same, defaults are the same, and each pattern accepts exactly what the C++ rule accepts on
// a table of values. Also checks the structural-schema rules the API server enforces.

#include <algorithm>
#include <functional>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "crds/model_cache.h"
#include "test_objects.h"

namespace modelcache::crds {
namespace {

using nlohmann::json;

class SchemaTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    crd_ = new YAML::Node(YAML::LoadFile(std::string(MC_SOURCE_DIR) + "/crds/modelcache.yaml"));
  }
  static void TearDownTestSuite() {
    delete crd_;
    crd_ = nullptr;
  }

  // Const access throughout: a non-const operator[] would add missing keys to the shared tree.
  static YAML::Node Version() {
    const YAML::Node& crd = *crd_;
    return crd["spec"]["versions"][0];
  }
  static YAML::Node Root() {
    const YAML::Node version = Version();
    return version["schema"]["openAPIV3Schema"];
  }
  // The schema node of a dotted path of properties ("spec.source.repo").
  static YAML::Node At(const std::string& path) {
    YAML::Node node = Root();
    size_t start = 0;
    while (start <= path.size()) {
      size_t dot = path.find('.', start);
      std::string key =
          path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      // reset(), not operator=: assigning a YAML::Node writes through to the node it refers to.
      const YAML::Node& current = node;
      node.reset(current["properties"][key]);
      if (!node) {
        ADD_FAILURE() << "schema has no " << path;
        return node;
      }
      if (dot == std::string::npos) {
        break;
      }
      start = dot + 1;
    }
    return node;
  }
  static std::set<std::string> Strings(const YAML::Node& seq) {
    std::set<std::string> out;
    for (const auto& item : seq) {
      out.insert(item.as<std::string>());
    }
    return out;
  }

  static YAML::Node* crd_;
};

YAML::Node* SchemaTest::crd_ = nullptr;

TEST_F(SchemaTest, DefinitionIdentity) {
  const YAML::Node& crd = *crd_;
  EXPECT_EQ(crd["apiVersion"].as<std::string>(), "apiextensions.k8s.io/v1");
  EXPECT_EQ(crd["kind"].as<std::string>(), "CustomResourceDefinition");
  EXPECT_EQ(crd["metadata"]["name"].as<std::string>(),
            std::string(kPlural) + "." + std::string(kGroup));
  EXPECT_EQ(crd["spec"]["group"].as<std::string>(), kGroup);
  EXPECT_EQ(crd["spec"]["scope"].as<std::string>(), "Namespaced");
  const YAML::Node names = crd["spec"]["names"];
  EXPECT_EQ(names["kind"].as<std::string>(), kKind);
  EXPECT_EQ(names["plural"].as<std::string>(), kPlural);
  EXPECT_EQ(names["singular"].as<std::string>(), "modelcache");
  EXPECT_EQ(Strings(names["shortNames"]), std::set<std::string>{"mc"});
  ASSERT_EQ(crd["spec"]["versions"].size(), 1u);
  EXPECT_EQ(Version()["name"].as<std::string>(), kVersion);
  EXPECT_TRUE(Version()["served"].as<bool>());
  EXPECT_TRUE(Version()["storage"].as<bool>());
  EXPECT_TRUE(Version()["subresources"]["status"].IsMap());

  std::vector<std::pair<std::string, std::string>> columns;
  for (const auto& c : Version()["additionalPrinterColumns"]) {
    if (!c["priority"] || c["priority"].as<int>() == 0) {
      columns.emplace_back(c["name"].as<std::string>(), c["jsonPath"].as<std::string>());
    }
  }
  EXPECT_THAT(columns,
              ::testing::ElementsAre(
                  std::pair<std::string, std::string>{"Phase", ".status.phase"},
                  std::pair<std::string, std::string>{"Revision", ".status.resolvedRevision"},
                  std::pair<std::string, std::string>{"Artifact", ".status.artifact.id"},
                  std::pair<std::string, std::string>{"Nodes-Ready", ".status.nodes.ready"},
                  std::pair<std::string, std::string>{"Nodes-Desired", ".status.nodes.desired"},
                  std::pair<std::string, std::string>{"Age", ".metadata.creationTimestamp"}));
}

// Every value of the JSON has a schema node of the same type.
void ExpectInSchema(const json& value, const YAML::Node& schema, const std::string& path) {
  if (!schema || !schema["type"]) {
    ADD_FAILURE() << path << ": not in the schema";
    return;
  }
  std::string type = schema["type"].as<std::string>();
  if (value.is_object()) {
    ASSERT_EQ(type, "object") << path;
    if (path == "metadata") {
      return;  // the API server's own ObjectMeta
    }
    if (schema["additionalProperties"]) {  // a map: every value has the same schema
      for (auto it = value.begin(); it != value.end(); ++it) {
        ExpectInSchema(*it, schema["additionalProperties"], path + "[" + it.key() + "]");
      }
      return;
    }
    for (auto it = value.begin(); it != value.end(); ++it) {
      ExpectInSchema(*it, schema["properties"][it.key()],
                     path.empty() ? it.key() : path + "." + it.key());
    }
  } else if (value.is_array()) {
    ASSERT_EQ(type, "array") << path;
    for (const json& item : value) {
      ExpectInSchema(item, schema["items"], path + "[]");
    }
  } else if (value.is_string()) {
    EXPECT_EQ(type, "string") << path;
  } else if (value.is_number_integer()) {
    EXPECT_EQ(type, "integer") << path;
    EXPECT_EQ(schema["format"].as<std::string>(""), "int64") << path << ": C++ uses 64 bits";
  } else if (value.is_boolean()) {
    EXPECT_EQ(type, "boolean") << path;
  } else {
    ADD_FAILURE() << path << ": unexpected JSON type " << value.type_name();
  }
}

// Every schema property is something the C++ writes (for the fully populated object).
void ExpectInJson(const YAML::Node& schema, const json& value, const std::string& path) {
  if (!schema["properties"]) {
    return;
  }
  for (const auto& prop : schema["properties"]) {
    std::string key = prop.first.as<std::string>();
    std::string child = path.empty() ? key : path + "." + key;
    if (child == "apiVersion" || child == "kind" || child == "metadata") {
      continue;
    }
    ASSERT_TRUE(value.contains(key)) << child << " is in the schema but not in ToJson's output";
    const json& v = value[key];
    if (v.is_array()) {
      for (const json& item : v) {
        ExpectInJson(prop.second["items"], item, child + "[]");
      }
    } else {
      ExpectInJson(prop.second, v, child);
    }
  }
}

TEST_F(SchemaTest, FieldsAndTypesAgreeBothWays) {
  json full = ToJson(testing::FullObject());
  ExpectInSchema(full, Root(), "");
  ExpectInJson(Root(), full, "");
}

TEST_F(SchemaTest, EnumsAreTheAcceptedSets) {
  auto set_of = [](const auto& values) {
    return std::set<std::string>(values.begin(), values.end());
  };
  EXPECT_EQ(Strings(At("spec.source.type")["enum"]), set_of(kSourceTypes));
  EXPECT_EQ(Strings(At("spec.shard.engine")["enum"]), set_of(kEngines));
  EXPECT_EQ(Strings(At("spec.shard.dtype")["enum"]), set_of(kDtypes));
  EXPECT_EQ(Strings(At("status.phase")["enum"]), set_of(kPhases));
  EXPECT_EQ(Strings(At("status.conditions")["items"]["properties"]["status"]["enum"]),
            (std::set<std::string>{"True", "False", "Unknown"}));

  // And C++ validation accepts exactly those.
  for (std::string_view engine : kEngines) {
    ModelCache mc;
    mc.metadata.name = "m";
    mc.spec.source.repo = "x";
    mc.spec.shard = ShardSpec{std::string(engine), std::nullopt, "", ""};
    ApplyDefaults(mc);
    EXPECT_TRUE(Validate(mc).empty()) << engine;
  }
}

TEST_F(SchemaTest, RequiredListsMatchTheCpp) {
  EXPECT_EQ(Strings(Root()["required"]), std::set<std::string>{"spec"});
  EXPECT_EQ(Strings(At("spec")["required"]), std::set<std::string>{"source"});
  EXPECT_EQ(Strings(At("spec.source")["required"]), std::set<std::string>{"repo"});
  EXPECT_EQ(Strings(At("spec.source.tokenSecretRef")["required"]),
            (std::set<std::string>{"name", "key"}));
  EXPECT_FALSE(At("spec.shard")["required"]);
  EXPECT_FALSE(At("status")["required"]);

  // The C++ side: with everything defaulted, only these are reported as Required.
  ModelCache mc;
  mc.metadata.name = "m";
  mc.spec.source.token_secret_ref = SecretKeyRef{};
  mc.spec.shard = ShardSpec{};
  ApplyDefaults(mc);
  std::set<std::string> required;
  for (const FieldError& e : Validate(mc)) {
    EXPECT_EQ(e.type, FieldError::Type::Required) << e.ToString();
    required.insert(e.field);
  }
  EXPECT_EQ(required, (std::set<std::string>{"spec.source.repo", "spec.source.tokenSecretRef.name",
                                             "spec.source.tokenSecretRef.key"}));
}

TEST_F(SchemaTest, DefaultsAreTheCppDefaults) {
  ModelCache mc;
  mc.spec.source.repo = "x";
  mc.spec.shard = ShardSpec{};
  ApplyDefaults(mc);
  EXPECT_EQ(At("spec.source.type")["default"].as<std::string>(), mc.spec.source.type);
  EXPECT_EQ(At("spec.source.revision")["default"].as<std::string>(), mc.spec.source.revision);
  EXPECT_EQ(At("spec.shard.engine")["default"].as<std::string>(), mc.spec.shard->engine);
  EXPECT_EQ(At("spec.shard.dtype")["default"].as<std::string>(), mc.spec.shard->dtype);
  EXPECT_EQ(At("spec.shard.maxFileSize")["default"].as<std::string>(),
            mc.spec.shard->max_file_size);
}

TEST_F(SchemaTest, NumericBoundsMatchTheCpp) {
  EXPECT_EQ(At("spec.shard.tensorParallelSize")["minimum"].as<int>(), 1);
  EXPECT_EQ(At("spec.shard.tensorParallelSize")["maximum"].as<int>(), 1024);
  EXPECT_EQ(At("spec.force")["minimum"].as<int>(), 0);
  auto valid_tp = [](int64_t tp) {
    ModelCache mc;
    mc.metadata.name = "m";
    mc.spec.source.repo = "x";
    mc.spec.shard = ShardSpec{"", tp, "", ""};
    ApplyDefaults(mc);
    return Validate(mc).empty();
  };
  EXPECT_FALSE(valid_tp(-1));
  EXPECT_FALSE(valid_tp(0));  // written as 0: refused like the schema's minimum, not defaulted
  EXPECT_TRUE(valid_tp(1));
  EXPECT_TRUE(valid_tp(1024));
  EXPECT_FALSE(valid_tp(1025));
}

// The API server's structural-schema rules that a hand-written schema can break: every node has a
// type, x-kubernetes-preserve-unknown-fields is never false ("must be true or undefined"),
// list-map keys are required in the items, and defaults pass their own enum and pattern.
void CheckStructural(const YAML::Node& node, const std::string& path) {
  EXPECT_TRUE(node["type"]) << path << ": no type";
  if (const YAML::Node preserve = node["x-kubernetes-preserve-unknown-fields"]) {
    EXPECT_TRUE(preserve.as<bool>()) << path
                                     << ": x-kubernetes-preserve-unknown-fields: false "
                                        "is rejected by the API server";
  }
  EXPECT_FALSE(node["properties"] && node["additionalProperties"]) << path;
  if (const YAML::Node keys = node["x-kubernetes-list-map-keys"]) {
    std::set<std::string> required;
    for (const auto& r : node["items"]["required"]) {
      required.insert(r.as<std::string>());
    }
    for (const auto& k : keys) {
      EXPECT_TRUE(required.count(k.as<std::string>())) << path << ": map key must be required";
    }
  }
  if (const YAML::Node def = node["default"]) {
    std::string d = def.as<std::string>();
    if (node["enum"]) {
      std::set<std::string> values;
      for (const auto& v : node["enum"]) {
        values.insert(v.as<std::string>());
      }
      EXPECT_TRUE(values.count(d)) << path;
    }
    if (node["pattern"]) {
      EXPECT_TRUE(std::regex_search(d, std::regex(node["pattern"].as<std::string>()))) << path;
    }
  }
  if (const YAML::Node negated = node["not"]) {
    // A junctor may hold value validations only: no type, description, default or nested
    // properties (the API server refuses the CRD otherwise).
    for (const char* key : {"type", "description", "default", "properties", "items",
                            "additionalProperties", "nullable"}) {
      EXPECT_FALSE(negated[key]) << path << ".not." << key;
    }
    if (node["default"]) {
      EXPECT_FALSE(std::regex_search(node["default"].as<std::string>(),
                                     std::regex(negated["pattern"].as<std::string>())))
          << path;
    }
  }
  if (node["properties"]) {
    for (const auto& prop : node["properties"]) {
      CheckStructural(prop.second, path + "." + prop.first.as<std::string>());
    }
  }
  if (node["items"]) {
    CheckStructural(node["items"], path + "[]");
  }
  if (node["additionalProperties"] && node["additionalProperties"].IsMap()) {
    CheckStructural(node["additionalProperties"], path + "[*]");
  }
}

TEST_F(SchemaTest, IsStructural) {
  CheckStructural(Root(), "");
  // metadata may only be {type: object} (plus name/generateName restrictions).
  EXPECT_FALSE(At("metadata")["properties"]);
}

// --- patterns against the C++ rules ------------------------------------------------------------

struct PatternCase {
  std::string field;  // schema path
  std::function<void(ModelCache&, const std::string&)> set;
  std::vector<std::string> values;
};

ModelCache Base() {
  ModelCache mc;
  mc.metadata.name = "m";
  mc.spec.source.repo = "x";
  mc.spec.source.token_secret_ref = SecretKeyRef{"hf", "token"};
  mc.spec.shard = ShardSpec{};
  ApplyDefaults(mc);
  return mc;
}

// Revisions on which the schema and the C++ must agree: git's ref-name rules one by one, the
// issue's aliasing cases, and every string of up to four characters over the characters those
// rules treat specially (780 strings: each rule at every position).
std::vector<std::string> RevisionProbes() {
  std::vector<std::string> probes = {"main",
                                     "v1.0",
                                     "refs/pr/1",
                                     "refs/convert/parquet",
                                     "0123456789abcdef0123456789abcdef01234567",
                                     ".",
                                     "./main",
                                     "main/",
                                     "main/.",
                                     "a//b",
                                     "refs/./pr/1",
                                     "a.",
                                     "a..b",
                                     "/main",
                                     "a b",
                                     "a\tb",
                                     "..",
                                     "",
                                     "x\x7f",
                                     "feature/ü",
                                     "@",
                                     "@{",
                                     "a@{1}",
                                     "a@b",
                                     "@/a",
                                     "a/@",
                                     "x.lock",
                                     "x.lock/y",
                                     "y/x.lock",
                                     "x.locks",
                                     "lock",
                                     ".lock",
                                     "a/.lock",
                                     "a~1",
                                     "a^",
                                     "a:b",
                                     "a?",
                                     "a*",
                                     "a[1]",
                                     "a\\b",
                                     "a{b}",
                                     "a./b",
                                     "a/b.",
                                     "é.lock"};
  const std::string alphabet = "a./@{";
  std::vector<std::string> level = {""};
  for (int len = 1; len <= 4; ++len) {
    std::vector<std::string> next;
    for (const std::string& prefix : level) {
      for (char c : alphabet) {
        next.push_back(prefix + c);
      }
    }
    probes.insert(probes.end(), next.begin(), next.end());
    level = std::move(next);
  }
  return probes;
}

bool CppAccepts(const PatternCase& c, const std::string& value) {
  ModelCache mc = Base();
  c.set(mc, value);
  for (const FieldError& e : Validate(mc)) {
    if (e.field == c.field) {
      return false;
    }
  }
  return true;
}

bool SchemaAccepts(const YAML::Node& node, const std::string& value) {
  if (node["minLength"] && value.size() < node["minLength"].as<size_t>()) {
    return false;
  }
  if (node["maxLength"] && value.size() > node["maxLength"].as<size_t>()) {
    return false;
  }
  // OpenAPI patterns are unanchored searches; ours anchor themselves.
  if (node["pattern"] && !std::regex_search(value, std::regex(node["pattern"].as<std::string>()))) {
    return false;
  }
  const YAML::Node negated = node["not"];
  return !negated || !negated["pattern"] ||
         !std::regex_search(value, std::regex(negated["pattern"].as<std::string>()));
}

TEST_F(SchemaTest, PatternsAgreeWithTheCppRules) {
  // Values on which the two must agree. Rules a pattern cannot state (documented at the top of
  // crds/modelcache.yaml) are deliberately not probed here.
  const std::vector<PatternCase> cases = {
      {"spec.source.repo",
       [](ModelCache& m, const std::string& v) { m.spec.source.repo = v; },
       {"gpt2",
        "Qwen/Qwen3-0.6B",
        "a_b/c.d-e",
        "a-.b",
        "a.-b",
        "x_",
        "a_.b",
        "9/8",
        "a//b",
        "a/b/c",
        "-a",
        "a-",
        "a.",
        "a--b",
        "a..b",
        "a b",
        "",
        "_a",
        "a/.b",
        "a/b-",
        "é",
        "s3://bucket/artifacts/name",
        "s3://bucket/a/b/artifacts/name/v1.2",
        "s3://bucket/name",
        "s3://bucket/artifacts/Name",
        "s3://B/artifacts/x",
        "s3://bucket/artifacts/name/v1/extra",
        "s3://bucket//artifacts/name",
        "s3://bucket/artifacts/name/"}},
      {"spec.source.revision",
       [](ModelCache& m, const std::string& v) { m.spec.source.revision = v; }, RevisionProbes()},
      {"spec.source.endpoint",
       [](ModelCache& m, const std::string& v) { m.spec.source.endpoint = v; },
       {"", "http://h", "https://h:8080/x/y", "http://[::1]:80", "https://hf-mirror.com/",
        "ftp://h", "http://", "https://u@h", "http://h/x y", "http://h?x", "http://h:abc",
        "http://h#f", "HTTP://h", "http://h:"}},
      {"spec.source.tokenSecretRef.name",
       [](ModelCache& m, const std::string& v) { m.spec.source.token_secret_ref->name = v; },
       {"hf-token", "a.b", "a", "HF", "-a", "a..b", "a.", "", "a_b", std::string(254, 'a')}},
      {"spec.source.tokenSecretRef.key",
       [](ModelCache& m, const std::string& v) { m.spec.source.token_secret_ref->key = v; },
       {"token", ".token", "a.b_c-d", "-", "..", ".", "..x", "a/b", "", "a b",
        std::string(254, 'k')}},
      {"spec.artifactName",
       [](ModelCache& m, const std::string& v) { m.spec.artifact_name = v; },
       {"qwen3", "a", "0-0", "Qwen", "-a", "a_b", "a-", std::string(63, 'a'),
        std::string(64, 'a')}},
      {"spec.accelerator",
       [](ModelCache& m, const std::string& v) {
         m.spec.accelerator = v;
         m.spec.shard->tensor_parallel_size = 1;
       },
       {"", "L40s:4", "nvidia.com/gpu:8", "H100:1024", "a:1", "x:999", "x:1019", "L40s", "L40s:0",
        "L40s:1025", ":4", "L40s:04", "L 40s:4", "-a:1", "a:b:1", "x:10000"}},
      {"spec.shard.maxFileSize",
       [](ModelCache& m, const std::string& v) { m.spec.shard->max_file_size = v; },
       {"5GiB", "500Mi", "2G", "1.5GB", "1048576", "2MB", "1Gi", "3000kB", "1PB", "5.GiB", "big",
        "5XB", "GiB", "5 GiB", "", "1.GB", ".5GiB", "5gib", "5iB"}},
      {"spec.storage.uri",
       [](ModelCache& m, const std::string& v) { m.spec.storage.uri = v; },
       {"", "/var/lib", "/", "file:///x", "file:///", "s3://bucket", "s3://bucket/",
        "s3://bucket/a/b/", "s3://my.bucket-1/p", "var", "file://host/x", "s3://B", "s3://bucket//",
        "s3://bucket/a//b", "http://x", "s3://ab", "s3://bucket/a b", "/a\nb"}},
      {"spec.refreshInterval",
       [](ModelCache& m, const std::string& v) { m.spec.refresh_interval = v; },
       {"", "0", "1h", "1h30m", "500ms", "1.5h", "2d", "0s", "1", "h", "1x", "-1h", "1..h", "soon",
        "1h 30m", "1.h", "00"}},
  };
  for (const PatternCase& c : cases) {
    YAML::Node node = At(c.field);
    for (const std::string& value : c.values) {
      EXPECT_EQ(SchemaAccepts(node, value), CppAccepts(c, value))
          << c.field << " = \"" << value << "\"";
    }
  }
}

TEST_F(SchemaTest, NodeSelectorValuesAgreeWithTheCppRule) {
  // Keys are checked by the controller only (a schema cannot constrain map keys without CEL).
  YAML::Node value_schema = At("spec.nodeSelector")["additionalProperties"];
  for (const std::string& value :
       {std::string(""), std::string("L40S"), std::string("a.b_c-d"), std::string("1"),
        std::string("-a"), std::string("a-"), std::string("a b"), std::string("a/b"),
        std::string(63, 'x'), std::string(64, 'x'), std::string("é")}) {
    ModelCache mc = Base();
    mc.spec.node_selector = {{"gpu", value}};
    bool cpp = true;
    for (const FieldError& e : Validate(mc)) {
      cpp = cpp && e.field != "spec.nodeSelector[gpu]";
    }
    EXPECT_EQ(SchemaAccepts(value_schema, value), cpp) << "\"" << value << "\"";
  }
}

TEST_F(SchemaTest, ANonRequiredFieldThatCppRequiresIsNotEmptyInTheSchema) {
  // revision and maxFileSize are defaulted, so the C++ never sees them empty; the schema must
  // still refuse "" written explicitly, as the C++ does for a non-defaulted object.
  EXPECT_FALSE(SchemaAccepts(At("spec.source.revision"), ""));
  EXPECT_FALSE(SchemaAccepts(At("spec.shard.maxFileSize"), ""));
}

}  // namespace
}  // namespace modelcache::crds
