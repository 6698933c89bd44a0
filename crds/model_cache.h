#pragma once

// The ModelCache API (modelcache.dev/v1alpha1): C++ types for the resource in DESIGN.md, YAML and
// JSON conversion both ways, defaulting and validation with Kubernetes-style field paths.
//
// Field names in JSON/YAML are the camelCase names of DESIGN.md. Optional fields that are absent
// stay absent when written back (round trip), except where defaulting fills them.
//
// Nothing here throws: yaml-cpp and nlohmann exceptions are caught and become InvalidSpec.
// All functions are thread-safe (no shared state).

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/result.h"

namespace modelcache::crds {

inline constexpr std::string_view kGroup = "modelcache.dev";
inline constexpr std::string_view kVersion = "v1alpha1";
inline constexpr std::string_view kApiVersion = "modelcache.dev/v1alpha1";
inline constexpr std::string_view kKind = "ModelCache";
inline constexpr std::string_view kPlural = "modelcaches";
inline constexpr std::string_view kDefaultNamespace = "default";

// The accepted values of the enumerated fields (crds/modelcache.yaml's enums; a test checks that
// they agree).
inline constexpr std::array<std::string_view, 2> kSourceTypes = {"model", "dataset"};
inline constexpr std::array<std::string_view, 2> kEngines = {"vllm", "sglang"};
inline constexpr std::array<std::string_view, 4> kDtypes = {"auto", "float16", "bfloat16",
                                                            "float32"};

// Phases, in the order a resource moves through them.
inline constexpr std::string_view kPhasePending = "Pending";
inline constexpr std::string_view kPhaseResolving = "Resolving";
inline constexpr std::string_view kPhaseDownloading = "Downloading";
inline constexpr std::string_view kPhaseSharding = "Sharding";
inline constexpr std::string_view kPhaseUploading = "Uploading";
inline constexpr std::string_view kPhaseReady = "Ready";
inline constexpr std::string_view kPhaseFailed = "Failed";
inline constexpr std::array<std::string_view, 7> kPhases = {
    kPhasePending,   kPhaseResolving, kPhaseDownloading, kPhaseSharding,
    kPhaseUploading, kPhaseReady,     kPhaseFailed};

struct ObjectKey {
  std::string namespace_;
  std::string name;

  // "namespace/name"
  std::string ToString() const { return namespace_ + "/" + name; }
  // clang-tidy 14 reads the defaulted <=> as a comparison of a pointer with 0.
  auto operator<=>(const ObjectKey&) const = default;  // NOLINT(modernize-use-nullptr)
};

struct SecretKeyRef {
  std::string name;
  std::string key;
  bool operator==(const SecretKeyRef&) const = default;
};

struct SourceSpec {
  std::string repo;                  // required: "org/name", "name" or s3://…/artifacts/name[/v]
  std::string type;                  // "model" | "dataset"; default "model"
  std::string revision;              // branch, tag or 40-hex commit; default "main"
  std::vector<std::string> include;  // fnmatch allow patterns; empty: all files
  std::vector<std::string> exclude;  // fnmatch ignore patterns
  std::string endpoint;              // optional mirror URL
  std::optional<SecretKeyRef> token_secret_ref;
  bool operator==(const SourceSpec&) const = default;
};

struct ShardSpec {
  std::string engine;  // "vllm" | "sglang"; default "vllm"
  // Absent: the accelerator count (or 1). Present, it is validated as written, so an explicit 0
  // is an error rather than a request for the default.
  std::optional<int64_t> tensor_parallel_size;
  std::string dtype;          // auto | float16 | bfloat16 | float32; default "auto"
  std::string max_file_size;  // byte size, e.g. "5GiB"; default "5GiB"
  bool operator==(const ShardSpec&) const = default;
};

struct StorageSpec {
  std::string uri;  // file:///path, /path or s3://bucket/prefix; default: --store
  bool operator==(const StorageSpec&) const = default;
};

struct ModelCacheSpec {
  SourceSpec source;
  std::string artifact_name;       // DNS-1123 label; default from the repo name
  std::string accelerator;         // "<type>:<count>", optional
  std::optional<ShardSpec> shard;  // absent: cache the repo as-is
  StorageSpec storage;
  std::string refresh_interval;  // duration; "" or "0" = never
  int64_t force = 0;             // increment to re-fetch and re-verify
  // Node label key -> value; in the node (DaemonSet) mode only nodes whose labels hold all of
  // them cache this resource. Empty: every node.
  std::map<std::string, std::string> node_selector;
  bool operator==(const ModelCacheSpec&) const = default;
};

struct ObjectMeta {
  std::string name;
  std::string namespace_;
  std::string uid;
  std::string resource_version;
  int64_t generation = 0;
  std::string creation_timestamp;  // RFC 3339
  std::optional<std::string> deletion_timestamp;
  std::map<std::string, std::string> labels;
  std::map<std::string, std::string> annotations;
  std::vector<std::string> finalizers;
  bool operator==(const ObjectMeta&) const = default;
};

// metav1.Condition.
struct Condition {
  std::string type;    // "Ready"
  std::string status;  // "True" | "False" | "Unknown"
  std::string reason;  // CamelCase, never empty
  std::string message;
  std::string last_transition_time;  // RFC 3339
  int64_t observed_generation = 0;
  bool operator==(const Condition&) const = default;
};

struct ArtifactStatus {
  std::string name;
  std::string version;
  std::string id;    // "<name>@sha256:<digest>"
  std::string uri;   // file:///… or s3://…
  std::string path;  // local directory, when the store is local
  uint64_t size_bytes = 0;
  int64_t files = 0;
  bool operator==(const ArtifactStatus&) const = default;
};

struct ProgressStatus {
  uint64_t bytes_done = 0;
  uint64_t bytes_total = 0;
  int64_t files_done = 0;
  int64_t files_total = 0;
  uint64_t bytes_per_second = 0;
  bool operator==(const ProgressStatus&) const = default;
};

// Fleets: node copies, folded from the ModelCacheNode reports (DESIGN.md "Fleets").
struct NodesStatus {
  int64_t desired = 0;  // Nodes with a live report whose labels match spec.nodeSelector
  int64_t ready = 0;    // of those, the ones whose copy is Ready
  int64_t failed = 0;   // of those, the ones whose copy Failed
  bool operator==(const NodesStatus&) const = default;
};

// The condition type of the fleet aggregate.
inline constexpr std::string_view kConditionNodesReady = "NodesReady";

struct ModelCacheStatus {
  int64_t observed_generation = 0;
  std::string phase;
  std::string resolved_revision;
  std::optional<ArtifactStatus> artifact;
  std::optional<ProgressStatus> progress;
  std::optional<NodesStatus> nodes;
  std::vector<Condition> conditions;
  bool operator==(const ModelCacheStatus&) const = default;
};

struct ModelCache {
  ObjectMeta metadata;
  ModelCacheSpec spec;
  ModelCacheStatus status;

  ObjectKey key() const { return {metadata.namespace_, metadata.name}; }
  bool operator==(const ModelCache&) const = default;
};

// One validation problem, printed the way Kubernetes prints field errors:
//   spec.source.repo: Invalid value: "a//b": must be "org/name" or "name"
//   spec.source.repo: Required value
//   spec.shard.engine: Unsupported value: "tgi": supported values: "sglang", "vllm"
// (supported values are listed sorted, as Kubernetes does).
struct FieldError {
  enum class Type { Invalid, Required, Unsupported, Duplicate, Forbidden };
  Type type = Type::Invalid;
  std::string field;  // "spec.shard.dtype"
  std::string value;  // the offending value as written, already quoted if a string
  std::string detail;
  // "<field>: <body>".
  std::string ToString() const;
  // The part after "<field>: ": "Invalid value: \"a//b\": must be ..." or "Required value".
  std::string ErrorBody() const;
};

// --- conversion -----------------------------------------------------------------------------

// From a JSON object (a Kubernetes API answer, or a status file). Unknown fields are ignored;
// wrong types are InvalidSpec naming the field ("spec.force: must be an integer").
Result<ModelCache> FromJson(const nlohmann::json& j);
nlohmann::json ToJson(const ModelCache& mc);
nlohmann::json SpecToJson(const ModelCacheSpec& spec);
nlohmann::json StatusToJson(const ModelCacheStatus& status);
Result<ModelCacheStatus> StatusFromJson(const nlohmann::json& j);

// YAML text of the full object (apiVersion, kind, metadata, spec, status if any).
std::string ToYaml(const ModelCache& mc);

// One YAML document of a (possibly multi-document) file.
struct Document {
  int line = 0;  // 1-based line of the document's first node
  std::string api_version;
  std::string kind;
  // Set when kind/apiVersion are ModelCache's and the document converted; the object is neither
  // defaulted nor validated yet.
  std::optional<ModelCache> object;
  // Conversion problems (wrong types, duplicate keys, an unsupported apiVersion/kind of the
  // modelcache.dev group), each with its 1-based line. When non-empty, `object` is unset.
  std::vector<std::pair<int, FieldError>> errors;
  // Fields the API does not know (a typo such as spec.shard.tensorParalellSize), as field paths
  // with their lines. Conversion ignores them, as the API server prunes them; `modelcache
  // validate` reports them.
  std::vector<std::pair<int, std::string>> unknown_fields;
  // 1-based line of every field of a ModelCache document, by field path ("spec.source.repo",
  // "spec.source.include[0]", "metadata.labels[app]").
  std::map<std::string, int> field_lines;

  // The line of `field`, or of its nearest ancestor that has one, or of the document: use it to
  // place a FieldError from Validate in the file.
  int LineOf(std::string_view field) const;
};

// Limits on one manifest file, so that a hostile file costs little: yaml-cpp holds a node in about
// 250 bytes, and a 1 MiB flow sequence of one-letter items took 250 MB and 7 s to load. A
// ModelCache is about 1 KiB; these leave room for hundreds in one file.
inline constexpr uint64_t kMaxManifestBytes = 512ULL * 1024;
inline constexpr size_t kMaxManifestDocuments = 1000;

// Parses every document of a YAML file. Documents of other kinds are returned with only
// api_version/kind set (callers ignore them). A YAML syntax error is InvalidSpec with
// "<filename>:<line>:<column>: <problem>" and affects the whole file; so is text longer than
// kMaxManifestBytes or with more than kMaxManifestDocuments documents ("<filename>: <problem>").
Result<std::vector<Document>> ParseYamlDocuments(std::string_view text,
                                                 const std::string& filename);

// --- defaulting and validation ----------------------------------------------------------------

// Fills defaults in place: metadata.namespace "default" when empty, source.type "model",
// source.revision "main", artifactName from the repo name (lower-cased, '.' and '_' -> '-'),
// shard.engine "vllm", shard.dtype "auto", shard.maxFileSize "5GiB", an absent
// shard.tensorParallelSize from the accelerator count (1 without one). Idempotent.
void ApplyDefaults(ModelCache& mc);

// Every problem at once, in field order. Empty means valid. Call after ApplyDefaults.
std::vector<FieldError> Validate(const ModelCache& mc);

// The same errors joined with "; ", for a condition message.
std::string JoinErrors(const std::vector<FieldError>& errors);

// The artifact name that defaulting derives from a repo id: "Qwen/Qwen3-0.6B" -> "qwen3-0-6b".
std::string DefaultArtifactName(std::string_view repo);

// Kubernetes mode's default, which namespaces cannot clash on: "<namespace>--<DefaultArtifactName>"
// ("team-a", "Qwen/Qwen3-0.6B" -> "team-a--qwen3-0-6b"), cut to 63 characters; "" when the repo
// gives no name. Two namespaces meet on one default only if a namespace itself holds "--"; that
// and every other clash (explicit names, two repos of one base name) is refused at claim time
// with ArtifactNameConflict.
std::string NamespacedArtifactName(std::string_view resource_namespace, std::string_view repo);

// A stable digest (sha256 hex) of the spec's canonical JSON: equal specs give equal hashes.
std::string SpecHash(const ModelCacheSpec& spec);

// The spec's identity as an artifact name's owner sees it (store/name_claims.h): the SpecHash of
// just the fields that decide the artifact's content — source type, repo, revision, include,
// exclude, the endpoint (an empty one read as `default_endpoint`, trailing '/' dropped) and the
// shard settings. Storage, refreshInterval, force, tokenSecretRef, accelerator and nodeSelector
// are not content: specs differing only there make the same artifact.
std::string ArtifactSpecIdentity(const ModelCacheSpec& spec, std::string_view default_endpoint);

// --- conditions (apimachinery's meta.SetStatusCondition) --------------------------------------

// Sets or adds the condition with c.type. lastTransitionTime moves only when the status changes
// (or the condition is new): to c.last_transition_time if the caller set it, else to `now`.
// Reason, message and observedGeneration are always taken from `c`. Returns true if anything
// (status, reason, message, observedGeneration) changed.
bool SetCondition(std::vector<Condition>& conditions, Condition c, const std::string& now);
const Condition* FindCondition(const std::vector<Condition>& conditions, std::string_view type);

}  // namespace modelcache::crds
