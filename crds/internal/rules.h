#pragma once

// Private to crds/: the string rules of ModelCache's fields. Each Check* returns nullopt when the
// value is fine, else the detail of the first problem ("must be ..."), for FieldError::detail.
// crds/modelcache.yaml expresses the same rules as patterns; keep the two in step.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace modelcache::crds::internal {

inline constexpr size_t kMaxLabelLength = 63;
inline constexpr size_t kMaxSubdomainLength = 253;
inline constexpr size_t kMaxRepoPartLength = 96;
inline constexpr int64_t kMaxTensorParallelSize = 1024;
inline constexpr int64_t kMaxAcceleratorCount = 1024;
inline constexpr uint64_t kMinMaxFileSize = 1ULL << 20;

// DNS-1123 label: <= 63, [a-z0-9]([-a-z0-9]*[a-z0-9])?
std::optional<std::string> CheckDns1123Label(const std::string& s);
// DNS-1123 subdomain: <= 253, dot-separated labels.
std::optional<std::string> CheckDns1123Subdomain(const std::string& s);
// A Secret's key (IsConfigMapKey): [-._a-zA-Z0-9]+, not "." or "..", not starting with "..".
std::optional<std::string> CheckSecretKey(const std::string& s);
// A label value (IsValidLabelValue): empty, or <= 63 characters of [-_.a-zA-Z0-9] starting and
// ending with an alphanumeric character.
std::optional<std::string> CheckLabelValue(const std::string& s);
// A label key (IsQualifiedName): an optional DNS-1123 subdomain prefix and '/', then a name of
// 1-63 characters shaped like a non-empty label value.
std::optional<std::string> CheckLabelKey(const std::string& s);
// "name", "org/name" (HF repo id parts) or s3://bucket/prefix/artifacts/name[/version].
std::optional<std::string> CheckRepo(const std::string& s);
// A git ref name as `git check-ref-format --allow-onelevel` accepts it (a 40-hex commit id is
// one): no whitespace, control characters or any of ~^:?*[\, no "..", no "@{", not "@", no
// empty '/'-separated part (leading, trailing or doubled '/'), no part starting with '.' or
// ending with ".lock", and no '.' at the end.
std::optional<std::string> CheckRevision(const std::string& s);
// http(s)://host[:port][/path].
std::optional<std::string> CheckEndpoint(const std::string& s);
// "<type>:<count>", count 1..1024.
std::optional<std::string> CheckAccelerator(const std::string& s);
// A byte size (common/units.h) of at least 1MiB.
std::optional<std::string> CheckMaxFileSize(const std::string& s);
// A duration (common/units.h): "0" or e.g. "1h30m", "500ms", "1.5h", "2d".
std::optional<std::string> CheckRefreshInterval(const std::string& s);
// /abs/path, file:///abs/path or s3://bucket[/prefix].
std::optional<std::string> CheckStorageUri(const std::string& s);
// An S3 bucket name: 3-63 of [a-z0-9.-], starting and ending alphanumeric, no "..", not an IP.
std::optional<std::string> CheckS3Bucket(std::string_view s);

// The count of a valid accelerator ("L40s:4" -> 4), else nullopt.
std::optional<int64_t> AcceleratorCount(std::string_view accelerator);

struct S3ArtifactUri {
  std::string bucket;
  std::string prefix;  // without leading/trailing '/'; may be empty
  std::string name;
  std::string version;  // empty: the current version
};
// Parses s3://bucket/prefix/artifacts/name[/version]; nullopt if it does not have that shape.
std::optional<S3ArtifactUri> ParseS3ArtifactUri(std::string_view uri);

}  // namespace modelcache::crds::internal
