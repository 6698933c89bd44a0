#include <functional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "crds/model_cache.h"
#include "test_objects.h"

namespace modelcache::crds {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;

ModelCache Minimal() {
  ModelCache mc;
  mc.metadata.name = "qwen";
  mc.spec.source.repo = "Qwen/Qwen3-0.6B";
  mc.spec.shard = ShardSpec{};
  ApplyDefaults(mc);
  return mc;
}

std::vector<std::string> Errors(const ModelCache& mc) {
  std::vector<std::string> out;
  for (const FieldError& e : Validate(mc)) {
    out.push_back(e.ToString());
  }
  return out;
}

TEST(ValidateTest, MinimalAndFullObjectsAreValid) {
  EXPECT_THAT(Errors(Minimal()), IsEmpty());
  EXPECT_THAT(Errors(testing::FullObject()), IsEmpty());
}

// git's ref-name rules (refs.c, check_refname_format with REFNAME_ALLOW_ONELEVEL), each with a
// name git accepts and names it refuses; `git check-ref-format --allow-onelevel` gives the same
// verdicts on every row.
TEST(ValidateTest, RevisionIsAGitRefName) {
  struct Row {
    std::string revision;
    std::string problem;  // empty: valid
  };
  const std::string kBadChar = "must not contain any of ~ ^ : ? * [ \\";
  const std::string kEmptyPart = "must not start or end with '/' or contain \"//\"";
  const std::string kDotPart = "no '/'-separated part may start with '.'";
  const std::string kLockPart = "no '/'-separated part may end with \".lock\"";
  const std::vector<Row> rows = {
      {"main", ""},
      {"v1.0", ""},
      {"refs/pr/1", ""},
      {"refs/convert/parquet", ""},
      {"0123456789abcdef0123456789abcdef01234567", ""},
      {"feature/\xc3\xbc", ""},  // non-ASCII is fine
      {"a@b", ""},
      {"a{b}", ""},
      {"a./b", ""},  // only the whole name must not end with '.'
      {"x.locks", ""},
      {"lock", ""},
      {"a/@", ""},
      // The issue's names that alias or clash under refs/.
      {".", kDotPart},
      {"./main", kDotPart},
      {"main/", kEmptyPart},
      {"main/.", kDotPart},
      {"a//b", kEmptyPart},
      {"refs/./pr/1", kDotPart},
      // One per remaining rule.
      {"/main", kEmptyPart},
      {".hidden", kDotPart},
      {"a/.b", kDotPart},
      {"a..b", "must not contain \"..\""},
      {"..", "must not contain \"..\""},
      {"a@{1}", "must not contain \"@{\""},
      {"@", "must not be \"@\""},
      {"main.", "must not end with '.'"},
      {"x.lock", kLockPart},
      {"x.lock/y", kLockPart},
      {".lock", kDotPart},
      {"a b", "must not contain whitespace or control characters"},
      {"a\tb", "must not contain whitespace or control characters"},
      {std::string("a\0b", 3), "must not contain whitespace or control characters"},
      {"a\x7f", "must not contain whitespace or control characters"},
      {"a~1", kBadChar},
      {"a^", kBadChar},
      {"a:b", kBadChar},
      {"a?", kBadChar},
      {"a*", kBadChar},
      {"a[1]", kBadChar},
      {"a\\b", kBadChar},
  };
  for (const Row& row : rows) {
    ModelCache mc = Minimal();
    mc.spec.source.revision = row.revision;
    std::vector<FieldError> errors = Validate(mc);
    if (row.problem.empty()) {
      EXPECT_THAT(errors, IsEmpty()) << row.revision;
    } else {
      ASSERT_EQ(errors.size(), 1u) << row.revision;
      EXPECT_EQ(errors[0].field, "spec.source.revision");
      EXPECT_EQ(errors[0].detail, row.problem) << row.revision;
    }
  }
}

TEST(FieldErrorTest, PrintsLikeKubernetes) {
  EXPECT_EQ((FieldError{FieldError::Type::Invalid, "spec.source.repo", "\"a//b\"",
                        "must be \"org/name\" or \"name\""})
                .ToString(),
            "spec.source.repo: Invalid value: \"a//b\": must be \"org/name\" or \"name\"");
  EXPECT_EQ((FieldError{FieldError::Type::Required, "spec.source.repo", "", ""}).ToString(),
            "spec.source.repo: Required value");
  EXPECT_EQ((FieldError{FieldError::Type::Required, "x", "\"ignored\"", "why"}).ToString(),
            "x: Required value: why");
  EXPECT_EQ((FieldError{FieldError::Type::Forbidden, "x", "", "not here"}).ToString(),
            "x: Forbidden: not here");
  EXPECT_EQ((FieldError{FieldError::Type::Duplicate, "metadata.name", "\"a/b\"", ""}).ToString(),
            "metadata.name: Duplicate value: \"a/b\"");
  EXPECT_EQ((FieldError{FieldError::Type::Duplicate, "metadata.name", "\"a/b\"", ""}).ErrorBody(),
            "Duplicate value: \"a/b\"");
}

// One row: a change to a valid object and the exact errors it must produce.
struct Row {
  const char* name;
  std::function<void(ModelCache&)> mutate;
  std::vector<std::string> want;
};

class ValidateTableTest : public ::testing::TestWithParam<Row> {};

TEST_P(ValidateTableTest, ReportsExactly) {
  ModelCache mc = Minimal();
  GetParam().mutate(mc);
  EXPECT_EQ(Errors(mc), GetParam().want) << GetParam().name;
}

const char kLabelDetail[] =
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')";

std::string Label(const std::string& field, const std::string& value) {
  return field + ": Invalid value: \"" + value + "\": " + kLabelDetail;
}

const Row kRows[] = {
    // metadata
    {"name missing",
     [](ModelCache& m) { m.metadata.name = ""; },
     {"metadata.name: Required value"}},
    {"name upper",
     [](ModelCache& m) { m.metadata.name = "Qwen"; },
     {Label("metadata.name", "Qwen")}},
    {"name trailing dash",
     [](ModelCache& m) { m.metadata.name = "qwen-"; },
     {Label("metadata.name", "qwen-")}},
    {"name dot",
     [](ModelCache& m) { m.metadata.name = "qwen.3"; },
     {Label("metadata.name", "qwen.3")}},
    {"name too long",
     [](ModelCache& m) { m.metadata.name = std::string(64, 'a'); },
     {"metadata.name: Invalid value: \"" + std::string(64, 'a') +
      "\": must be no more than 63 characters"}},
    {"name 63 ok", [](ModelCache& m) { m.metadata.name = std::string(63, 'a'); }, {}},
    {"namespace",
     [](ModelCache& m) { m.metadata.namespace_ = "My_NS"; },
     {Label("metadata.namespace", "My_NS")}},
    // source.repo
    {"repo missing",
     [](ModelCache& m) { m.spec.source.repo = ""; },
     {"spec.source.repo: Required value"}},
    {"repo empty part",
     [](ModelCache& m) { m.spec.source.repo = "a//b"; },
     {"spec.source.repo: Invalid value: \"a//b\": must be \"org/name\" or \"name\""}},
    {"repo three parts",
     [](ModelCache& m) { m.spec.source.repo = "a/b/c"; },
     {"spec.source.repo: Invalid value: \"a/b/c\": must be \"org/name\" or \"name\""}},
    {"repo trailing slash",
     [](ModelCache& m) { m.spec.source.repo = "org/"; },
     {"spec.source.repo: Invalid value: \"org/\": must be \"org/name\" or \"name\""}},
    {"repo single name ok", [](ModelCache& m) { m.spec.source.repo = "gpt2"; }, {}},
    {"repo underscores ok", [](ModelCache& m) { m.spec.source.repo = "my_org/a_b.c-d_"; }, {}},
    {"repo double dash",
     [](ModelCache& m) { m.spec.source.repo = "org/a--b"; },
     {"spec.source.repo: Invalid value: \"org/a--b\": must not contain \"--\" or \"..\""}},
    {"repo double dot",
     [](ModelCache& m) { m.spec.source.repo = "org/a..b"; },
     {"spec.source.repo: Invalid value: \"org/a..b\": must not contain \"--\" or \"..\""}},
    {"repo trailing dot",
     [](ModelCache& m) { m.spec.source.repo = "org/ab."; },
     {"spec.source.repo: Invalid value: \"org/ab.\": each part must not end with '.' or '-'"}},
    {"repo leading dash",
     [](ModelCache& m) { m.spec.source.repo = "-org/ab"; },
     {"spec.source.repo: Invalid value: \"-org/ab\": each part must start with a letter or "
      "digit"}},
    {"repo bad char",
     [](ModelCache& m) { m.spec.source.repo = "org/a b"; },
     {"spec.source.repo: Invalid value: \"org/a b\": each part may contain only letters, "
      "digits, '.', '_' and '-'"}},
    {"repo part too long",
     [](ModelCache& m) { m.spec.source.repo = "org/" + std::string(97, 'a'); },
     {"spec.source.repo: Invalid value: \"org/" + std::string(97, 'a') +
      "\": each part must be no more than 96 characters"}},
    {"repo s3 ok",
     [](ModelCache& m) { m.spec.source.repo = "s3://bucket/team/artifacts/qwen/v2"; },
     {}},
    {"repo s3 no version ok",
     [](ModelCache& m) { m.spec.source.repo = "s3://bucket/artifacts/qwen"; },
     {}},
    {"repo s3 wrong shape",
     [](ModelCache& m) { m.spec.source.repo = "s3://bucket/qwen"; },
     {"spec.source.repo: Invalid value: \"s3://bucket/qwen\": must be "
      "\"s3://bucket/prefix/artifacts/name[/version]\""}},
    {"repo s3 bad bucket",
     [](ModelCache& m) { m.spec.source.repo = "s3://B/artifacts/qwen"; },
     {"spec.source.repo: Invalid value: \"s3://B/artifacts/qwen\": must be "
      "\"s3://bucket/prefix/artifacts/name[/version]\""}},
    // source.type, revision, include, exclude, endpoint
    {"type",
     [](ModelCache& m) { m.spec.source.type = "space"; },
     {"spec.source.type: Unsupported value: \"space\": supported values: \"dataset\", \"model\""}},
    {"type dataset ok", [](ModelCache& m) { m.spec.source.type = "dataset"; }, {}},
    {"revision space",
     [](ModelCache& m) { m.spec.source.revision = "my branch"; },
     {"spec.source.revision: Invalid value: \"my branch\": must not contain whitespace or "
      "control characters"}},
    {"revision dotdot",
     [](ModelCache& m) { m.spec.source.revision = "a..b"; },
     {"spec.source.revision: Invalid value: \"a..b\": must not contain \"..\""}},
    {"revision leading slash",
     [](ModelCache& m) { m.spec.source.revision = "/main"; },
     {"spec.source.revision: Invalid value: \"/main\": must not start or end with '/' or "
      "contain \"//\""}},
    {"revision with slash ok", [](ModelCache& m) { m.spec.source.revision = "refs/pr/1"; }, {}},
    {"include empty item",
     [](ModelCache& m) {
       m.spec.source.include = {"*.json", ""};
     },
     {"spec.source.include[1]: Invalid value: \"\": must not be empty"}},
    {"exclude empty item",
     [](ModelCache& m) { m.spec.source.exclude = {""}; },
     {"spec.source.exclude[0]: Invalid value: \"\": must not be empty"}},
    {"endpoint scheme",
     [](ModelCache& m) { m.spec.source.endpoint = "ftp://mirror"; },
     {"spec.source.endpoint: Invalid value: \"ftp://mirror\": must be an http:// or https:// "
      "URL"}},
    {"endpoint port",
     [](ModelCache& m) { m.spec.source.endpoint = "http://h:70000"; },
     {"spec.source.endpoint: Invalid value: \"http://h:70000\": port must be a number from 1 to "
      "65535"}},
    {"endpoint userinfo",
     [](ModelCache& m) { m.spec.source.endpoint = "https://u:p@h/"; },
     {"spec.source.endpoint: Invalid value: \"https://u:p@h/\": must not contain user "
      "information (use tokenSecretRef)"}},
    {"endpoint no host",
     [](ModelCache& m) { m.spec.source.endpoint = "https:///x"; },
     {"spec.source.endpoint: Invalid value: \"https:///x\": must have a host"}},
    {"endpoint query",
     [](ModelCache& m) { m.spec.source.endpoint = "https://h/x?y=1"; },
     {"spec.source.endpoint: Invalid value: \"https://h/x?y=1\": path must not contain "
      "whitespace, '?' or '#'"}},
    {"endpoint ipv6 ok",
     [](ModelCache& m) { m.spec.source.endpoint = "http://[::1]:8080/hub"; },
     {}},
    // tokenSecretRef
    {"secret both missing",
     [](ModelCache& m) { m.spec.source.token_secret_ref = SecretKeyRef{}; },
     {"spec.source.tokenSecretRef.name: Required value",
      "spec.source.tokenSecretRef.key: Required value"}},
    {"secret name subdomain ok",
     [](ModelCache& m) {
       m.spec.source.token_secret_ref = SecretKeyRef{"hf.token", "tok_en.1"};
     },
     {}},
    {"secret name bad",
     [](ModelCache& m) {
       m.spec.source.token_secret_ref = SecretKeyRef{"HF", "token"};
     },
     {"spec.source.tokenSecretRef.name: Invalid value: \"HF\": a lowercase RFC 1123 subdomain "
      "must consist of lower case alphanumeric characters, '-' or '.', and must start and end "
      "with an alphanumeric character (e.g. 'example.com')"}},
    {"secret key escapes",
     [](ModelCache& m) {
       m.spec.source.token_secret_ref = SecretKeyRef{"hf", ".."};
     },
     {"spec.source.tokenSecretRef.key: Invalid value: \"..\": must not be '..'"}},
    {"secret key slash",
     [](ModelCache& m) {
       m.spec.source.token_secret_ref = SecretKeyRef{"hf", "a/b"};
     },
     {"spec.source.tokenSecretRef.key: Invalid value: \"a/b\": a valid config key must consist "
      "of alphanumeric characters, '-', '_' or '.'"}},
    // artifactName, accelerator
    {"artifactName",
     [](ModelCache& m) { m.spec.artifact_name = "Qwen_3"; },
     {Label("spec.artifactName", "Qwen_3")}},
    {"artifactName underivable",
     [](ModelCache& m) {
       m.spec.source.repo = "___";
       m.spec.artifact_name = DefaultArtifactName(m.spec.source.repo);
     },
     {"spec.source.repo: Invalid value: \"___\": each part must start with a letter or digit",
      "spec.artifactName: Required value: cannot derive one from spec.source.repo; set it"}},
    {"accelerator shape",
     [](ModelCache& m) { m.spec.accelerator = "L40s"; },
     {"spec.accelerator: Invalid value: \"L40s\": must be \"<type>:<count>\" such as \"L40s:4\" "
      "(type: letters, digits, '.', '_', '-', '/'; count: 1 to 1024)"}},
    {"accelerator count zero",
     [](ModelCache& m) { m.spec.accelerator = "L40s:0"; },
     {"spec.accelerator: Invalid value: \"L40s:0\": the count must be from 1 to 1024 without "
      "leading zeros"}},
    {"accelerator count big",
     [](ModelCache& m) { m.spec.accelerator = "L40s:1025"; },
     {"spec.accelerator: Invalid value: \"L40s:1025\": the count must be from 1 to 1024 "
      "without leading zeros"}},
    {"accelerator resource name ok",
     [](ModelCache& m) { m.spec.accelerator = "nvidia.com/gpu:8"; },
     {}},
    // shard
    {"engine",
     [](ModelCache& m) { m.spec.shard->engine = "tgi"; },
     {"spec.shard.engine: Unsupported value: \"tgi\": supported values: \"sglang\", \"vllm\""}},
    {"dtype",
     [](ModelCache& m) { m.spec.shard->dtype = "fp8"; },
     {"spec.shard.dtype: Unsupported value: \"fp8\": supported values: \"auto\", \"bfloat16\", "
      "\"float16\", \"float32\""}},
    {"tp zero",
     [](ModelCache& m) { m.spec.shard->tensor_parallel_size = 0; },
     {"spec.shard.tensorParallelSize: Invalid value: 0: must be greater than or equal to 1"}},
    {"tp too big",
     [](ModelCache& m) { m.spec.shard->tensor_parallel_size = 2048; },
     {"spec.shard.tensorParallelSize: Invalid value: 2048: must be less than or equal to 1024"}},
    {"tp not power of two ok", [](ModelCache& m) { m.spec.shard->tensor_parallel_size = 3; }, {}},
    {"tp exceeds accelerators",
     [](ModelCache& m) {
       m.spec.accelerator = "L40s:4";
       m.spec.shard->tensor_parallel_size = 8;
     },
     {"spec.shard.tensorParallelSize: Invalid value: 8: exceeds the accelerator count 4"}},
    {"maxFileSize garbage",
     [](ModelCache& m) { m.spec.shard->max_file_size = "big"; },
     {"spec.shard.maxFileSize: Invalid value: \"big\": must be a byte size such as 5GiB, 500MiB "
      "or 2G"}},
    {"maxFileSize trailing dot",
     [](ModelCache& m) { m.spec.shard->max_file_size = "5.GiB"; },
     {"spec.shard.maxFileSize: Invalid value: \"5.GiB\": must be a byte size such as 5GiB, "
      "500MiB or 2G"}},
    {"maxFileSize small",
     [](ModelCache& m) { m.spec.shard->max_file_size = "1023Ki"; },
     {"spec.shard.maxFileSize: Invalid value: \"1023Ki\": must be at least 1MiB"}},
    {"maxFileSize 1Mi ok", [](ModelCache& m) { m.spec.shard->max_file_size = "1Mi"; }, {}},
    {"no shard no shard checks",
     [](ModelCache& m) {
       m.spec.shard.reset();
       m.spec.accelerator = "H100:2";
     },
     {}},
    // storage, refreshInterval, force
    {"storage relative",
     [](ModelCache& m) { m.spec.storage.uri = "var/lib"; },
     {"spec.storage.uri: Invalid value: \"var/lib\": must be an absolute path, file:///path or "
      "s3://bucket/prefix"}},
    {"storage file host",
     [](ModelCache& m) { m.spec.storage.uri = "file://host/x"; },
     {"spec.storage.uri: Invalid value: \"file://host/x\": a file URI must be "
      "file:///absolute/path (no host)"}},
    {"storage file ok", [](ModelCache& m) { m.spec.storage.uri = "file:///var/lib/mc"; }, {}},
    {"storage path ok", [](ModelCache& m) { m.spec.storage.uri = "/var/lib/mc"; }, {}},
    {"storage s3 ok", [](ModelCache& m) { m.spec.storage.uri = "s3://my.bucket-1/a/b/"; }, {}},
    {"storage s3 bucket",
     [](ModelCache& m) { m.spec.storage.uri = "s3://My_Bucket/x"; },
     {"spec.storage.uri: Invalid value: \"s3://My_Bucket/x\": bucket \"My_Bucket\" is not a "
      "valid S3 bucket name (3-63 lower-case letters, digits, '.' and '-', starting and ending "
      "with a letter or digit)"}},
    {"storage s3 ip bucket",
     [](ModelCache& m) { m.spec.storage.uri = "s3://192.168.1.1"; },
     {"spec.storage.uri: Invalid value: \"s3://192.168.1.1\": bucket \"192.168.1.1\" is not a "
      "valid S3 bucket name (3-63 lower-case letters, digits, '.' and '-', starting and ending "
      "with a letter or digit)"}},
    {"storage s3 empty segment",
     [](ModelCache& m) { m.spec.storage.uri = "s3://bucket/a//b"; },
     {"spec.storage.uri: Invalid value: \"s3://bucket/a//b\": the prefix must not contain empty "
      "segments (\"//\"), whitespace or control characters"}},
    {"refresh bad",
     [](ModelCache& m) { m.spec.refresh_interval = "hourly"; },
     {"spec.refreshInterval: Invalid value: \"hourly\": must be a duration such as 30m, 1h or "
      "1h30m (0: never)"}},
    {"refresh zero ok", [](ModelCache& m) { m.spec.refresh_interval = "0"; }, {}},
    {"force negative",
     [](ModelCache& m) { m.spec.force = -1; },
     {"spec.force: Invalid value: -1: must be greater than or equal to 0"}},
    // nodeSelector
    {"node selector ok",
     [](ModelCache& m) {
       m.spec.node_selector = {{"nvidia.com/gpu.product", "L40S"}, {"zone", ""}};
     },
     {}},
    {"node selector bad value",
     [](ModelCache& m) { m.spec.node_selector = {{"gpu", "l40s!"}}; },
     {"spec.nodeSelector[gpu]: Invalid value: \"l40s!\": a valid label must consist of "
      "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric "
      "character"}},
    {"node selector bad key prefix",
     [](ModelCache& m) { m.spec.node_selector = {{"Example.com/gpu", "x"}}; },
     {"spec.nodeSelector: Invalid value: \"Example.com/gpu\": prefix part a lowercase RFC 1123 "
      "subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start "
      "and end with an alphanumeric character (e.g. 'example.com')"}},
    {"node selector empty key name",
     [](ModelCache& m) { m.spec.node_selector = {{"example.com/", "x"}}; },
     {"spec.nodeSelector: Invalid value: \"example.com/\": name part must be non-empty"}},
};

INSTANTIATE_TEST_SUITE_P(Rules, ValidateTableTest, ::testing::ValuesIn(kRows),
                         [](const ::testing::TestParamInfo<Row>& param_info) {
                           std::string name = param_info.param.name;
                           for (char& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) {
                               c = '_';
                             }
                           }
                           return name;
                         });

TEST(ValidateTest, ReportsEveryProblemInFieldOrder) {
  ModelCache mc;  // not defaulted: required fields are reported too
  mc.metadata.name = "Bad_Name";
  mc.spec.source.repo = "a//b";
  mc.spec.source.type = "space";
  mc.spec.source.revision = "main";
  mc.spec.artifact_name = "ok";
  mc.spec.accelerator = "L40s:2";
  mc.spec.shard = ShardSpec{"tgi", 4, "fp8", "1KiB"};
  mc.spec.refresh_interval = "soon";
  mc.spec.force = -3;
  std::vector<FieldError> errors = Validate(mc);
  std::vector<std::string> fields;
  for (const FieldError& e : errors) {
    fields.push_back(e.field);
  }
  EXPECT_THAT(fields, ElementsAre("metadata.name", "metadata.namespace", "spec.source.repo",
                                  "spec.source.type", "spec.shard.engine",
                                  "spec.shard.tensorParallelSize", "spec.shard.dtype",
                                  "spec.shard.maxFileSize", "spec.refreshInterval", "spec.force"));
  EXPECT_EQ(errors[1].type, FieldError::Type::Required);
  EXPECT_EQ(errors[3].type, FieldError::Type::Unsupported);
  std::string joined = JoinErrors(errors);
  EXPECT_NE(joined.find("spec.source.repo: Invalid value: \"a//b\": must be \"org/name\" or "
                        "\"name\"; spec.source.type: Unsupported value: \"space\""),
            std::string::npos)
      << joined;
  EXPECT_EQ(JoinErrors({}), "");
}

TEST(ValidateTest, QuotesValuesWithSpecialCharacters) {
  ModelCache mc = Minimal();
  mc.spec.source.revision = "a\"b\n";
  ASSERT_EQ(Validate(mc).size(), 1u);
  EXPECT_EQ(Validate(mc)[0].value, "\"a\\\"b\\n\"");
}

}  // namespace
}  // namespace modelcache::crds
