// Field rules, hand-written rather than std::regex: these run for every manifest on every resync
// and must give one precise detail per problem. crds/modelcache.yaml states the same rules as
// patterns (tests/unit/crds/schema_test.cpp checks them against each other on a table of values).

#include "crds/internal/rules.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <string>
#include <string_view>
#include <vector>

#include "common/units.h"

namespace modelcache::crds::internal {
namespace {

bool IsLowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool IsAlnum(char c) { return IsLowerAlnum(c) || (c >= 'A' && c <= 'Z'); }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
// Space and control characters (everything <= 0x20, and DEL).
bool IsSpaceOrControl(char c) {
  auto u = static_cast<unsigned char>(c);
  return u <= 0x20 || u == 0x7f;
}

bool IsLabel(std::string_view s) {
  if (s.empty() || s.size() > kMaxLabelLength) {
    return false;
  }
  if (!IsLowerAlnum(s.front()) || !IsLowerAlnum(s.back())) {
    return false;
  }
  for (char c : s) {
    if (!IsLowerAlnum(c) && c != '-') {
      return false;
    }
  }
  return true;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t pos = s.find(sep, start);
    if (pos == std::string_view::npos) {
      parts.push_back(s.substr(start));
      return parts;
    }
    parts.push_back(s.substr(start, pos - start));
    start = pos + 1;
  }
}

std::optional<int64_t> ParsePositive(std::string_view digits) {
  if (digits.empty() || digits.front() == '0') {
    return std::nullopt;
  }
  int64_t value = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc() || end != digits.data() + digits.size()) {
    return std::nullopt;
  }
  return value;
}

// One part of a Hub repo id (huggingface_hub's validate_repo_id, stated positively).
std::optional<std::string> CheckRepoPart(std::string_view part) {
  if (part.size() > kMaxRepoPartLength) {
    return "each part must be no more than " + std::to_string(kMaxRepoPartLength) + " characters";
  }
  if (!IsAlnum(part.front())) {
    return std::string("each part must start with a letter or digit");
  }
  for (char c : part) {
    if (!IsAlnum(c) && c != '.' && c != '_' && c != '-') {
      return std::string("each part may contain only letters, digits, '.', '_' and '-'");
    }
  }
  if (part.find("--") != std::string_view::npos || part.find("..") != std::string_view::npos) {
    return std::string(R"(must not contain "--" or "..")");
  }
  if (part.back() == '.' || part.back() == '-') {
    return std::string("each part must not end with '.' or '-'");
  }
  return std::nullopt;
}

// A path segment of an S3 key: non-empty, no whitespace or control characters.
bool IsS3Segment(std::string_view seg) {
  if (seg.empty()) {
    return false;
  }
  for (char c : seg) {
    if (IsSpaceOrControl(c)) {
      return false;
    }
  }
  return true;
}

bool IsVersion(std::string_view v) {
  if (v.empty()) {
    return false;
  }
  for (char c : v) {
    if (!IsAlnum(c) && c != '.' && c != '_' && c != '-') {
      return false;
    }
  }
  return true;
}

// "5GiB", "500Mi", "2G", "1024", "1.5GB": digits, an optional fraction, then an optional unit
// that common/units.h's ParseByteSize accepts. Stated here so that the CRD pattern can say the
// same thing exactly.
bool IsByteSizeSyntax(std::string_view s) {
  size_t i = 0;
  while (i < s.size() && IsDigit(s[i])) {
    ++i;
  }
  if (i == 0) {
    return false;
  }
  if (i < s.size() && s[i] == '.') {
    size_t frac = ++i;
    while (i < s.size() && IsDigit(s[i])) {
      ++i;
    }
    if (i == frac) {
      return false;
    }
  }
  std::string_view unit = s.substr(i);
  static constexpr std::array<std::string_view, 24> kUnits = {
      "",  "B",  "Ki", "KiB", "Mi", "MiB", "Gi", "GiB", "Ti", "TiB", "Pi", "PiB",
      "K", "KB", "k",  "kB",  "M",  "MB",  "G",  "GB",  "T",  "TB",  "P",  "PB"};
  for (std::string_view u : kUnits) {
    if (unit == u) {
      return true;
    }
  }
  return false;
}

// "0", or one or more <number><unit> with units ms, s, m, h, d: what ParseDuration means, stated
// strictly (ParseDuration itself would also take "1..5h").
bool IsDurationSyntax(std::string_view s) {
  if (s == "0") {
    return true;
  }
  size_t i = 0;
  while (i < s.size()) {
    size_t start = i;
    while (i < s.size() && IsDigit(s[i])) {
      ++i;
    }
    if (i == start) {
      return false;
    }
    if (i < s.size() && s[i] == '.') {
      size_t frac = ++i;
      while (i < s.size() && IsDigit(s[i])) {
        ++i;
      }
      if (i == frac) {
        return false;
      }
    }
    std::string_view rest = s.substr(i);
    if (rest.starts_with("ms")) {
      i += 2;
    } else if (!rest.empty() &&
               (rest[0] == 's' || rest[0] == 'm' || rest[0] == 'h' || rest[0] == 'd')) {
      i += 1;
    } else {
      return false;
    }
  }
  return !s.empty();
}

bool IsIPv4(std::string_view s) {
  std::vector<std::string_view> parts = Split(s, '.');
  if (parts.size() != 4) {
    return false;
  }
  for (std::string_view p : parts) {
    if (p.empty() || p.size() > 3) {
      return false;
    }
    for (char c : p) {
      if (!IsDigit(c)) {
        return false;
      }
    }
  }
  return true;
}

}  // namespace

std::optional<std::string> CheckDns1123Label(const std::string& s) {
  if (s.size() > kMaxLabelLength) {
    return "must be no more than " + std::to_string(kMaxLabelLength) + " characters";
  }
  if (!IsLabel(s)) {
    return std::string(
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
        "and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')");
  }
  return std::nullopt;
}

std::optional<std::string> CheckDns1123Subdomain(const std::string& s) {
  if (s.size() > kMaxSubdomainLength) {
    return "must be no more than " + std::to_string(kMaxSubdomainLength) + " characters";
  }
  for (std::string_view label : Split(s, '.')) {
    // Within a subdomain the labels are not limited to 63 characters; only the shape matters.
    bool ok = !label.empty() && IsLowerAlnum(label.front()) && IsLowerAlnum(label.back());
    for (char c : label) {
      ok = ok && (IsLowerAlnum(c) || c == '-');
    }
    if (!ok) {
      return std::string(
          "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
          "'-' or '.', and must start and end with an alphanumeric character (e.g. "
          "'example.com')");
    }
  }
  return std::nullopt;
}

std::optional<std::string> CheckSecretKey(const std::string& s) {
  if (s.size() > kMaxSubdomainLength) {
    return "must be no more than " + std::to_string(kMaxSubdomainLength) + " characters";
  }
  for (char c : s) {
    if (!IsAlnum(c) && c != '-' && c != '_' && c != '.') {
      return std::string(
          "a valid config key must consist of alphanumeric characters, '-', '_' or '.'");
    }
  }
  // The key names a file under --secrets-dir/<name>/ in directory mode: no way out of it.
  if (s == "." || s == "..") {
    return "must not be '" + s + "'";
  }
  if (s.starts_with("..")) {
    return std::string("must not start with '..'");
  }
  return std::nullopt;
}

namespace {

// The shape Kubernetes requires of a label value and of a label key's name part.
bool IsQualifiedNamePart(std::string_view s) {
  if (s.empty() || !IsAlnum(s.front()) || !IsAlnum(s.back())) {
    return false;
  }
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return IsAlnum(c) || c == '-' || c == '_' || c == '.'; });
}

constexpr char kQualifiedNameShape[] =
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
    "alphanumeric character";

}  // namespace

std::optional<std::string> CheckLabelValue(const std::string& s) {
  if (s.size() > kMaxLabelLength) {
    return "must be no more than " + std::to_string(kMaxLabelLength) + " characters";
  }
  if (!s.empty() && !IsQualifiedNamePart(s)) {
    return std::string("a valid label ") + kQualifiedNameShape;
  }
  return std::nullopt;
}

std::optional<std::string> CheckLabelKey(const std::string& s) {
  std::string_view name = s;
  if (size_t slash = s.find('/'); slash != std::string::npos) {
    std::string prefix = s.substr(0, slash);
    if (prefix.empty()) {
      return std::string("prefix part must be non-empty");
    }
    if (auto problem = CheckDns1123Subdomain(prefix)) {
      return "prefix part " + *problem;
    }
    name = std::string_view(s).substr(slash + 1);
  }
  if (name.empty()) {
    return std::string("name part must be non-empty");
  }
  if (name.size() > kMaxLabelLength) {
    return "name part must be no more than " + std::to_string(kMaxLabelLength) + " characters";
  }
  if (!IsQualifiedNamePart(name)) {
    return std::string("name part ") + kQualifiedNameShape;
  }
  return std::nullopt;
}

std::optional<S3ArtifactUri> ParseS3ArtifactUri(std::string_view uri) {
  constexpr std::string_view kScheme = "s3://";
  if (!uri.starts_with(kScheme)) {
    return std::nullopt;
  }
  std::vector<std::string_view> segs = Split(uri.substr(kScheme.size()), '/');
  for (std::string_view seg : segs) {
    if (!IsS3Segment(seg)) {
      return std::nullopt;
    }
  }
  if (CheckS3Bucket(segs[0])) {
    return std::nullopt;
  }
  size_t n = segs.size();
  S3ArtifactUri out;
  out.bucket = std::string(segs[0]);
  size_t artifacts = 0;
  if (n >= 3 && segs[n - 2] == "artifacts") {
    artifacts = n - 2;
    out.name = std::string(segs[n - 1]);
  } else if (n >= 4 && segs[n - 3] == "artifacts") {
    artifacts = n - 3;
    out.name = std::string(segs[n - 2]);
    out.version = std::string(segs[n - 1]);
  } else {
    return std::nullopt;
  }
  if (!IsLabel(out.name) || (!out.version.empty() && !IsVersion(out.version))) {
    return std::nullopt;
  }
  for (size_t i = 1; i < artifacts; ++i) {
    if (!out.prefix.empty()) {
      out.prefix += '/';
    }
    out.prefix += segs[i];
  }
  return out;
}

std::optional<std::string> CheckRepo(const std::string& s) {
  if (s.starts_with("s3://")) {
    if (!ParseS3ArtifactUri(s)) {
      return std::string("must be \"s3://bucket/prefix/artifacts/name[/version]\"");
    }
    return std::nullopt;
  }
  std::vector<std::string_view> parts = Split(s, '/');
  if (parts.size() > 2) {
    return std::string(R"(must be "org/name" or "name")");
  }
  for (std::string_view part : parts) {
    if (part.empty()) {
      return std::string(R"(must be "org/name" or "name")");
    }
  }
  for (std::string_view part : parts) {
    if (auto problem = CheckRepoPart(part)) {
      return problem;
    }
  }
  return std::nullopt;
}

std::optional<std::string> CheckRevision(const std::string& s) {
  // git's refs.c (check_refname_format with REFNAME_ALLOW_ONELEVEL), rule by rule. A 40-hex
  // commit id is such a name too. Anything else could alias another revision or escape
  // <store>/hub/.../refs/ once the name becomes a path there ("refs/./pr/1", "main/").
  if (s == "@") {
    return std::string("must not be \"@\"");
  }
  for (char c : s) {
    if (IsSpaceOrControl(c)) {
      return std::string("must not contain whitespace or control characters");
    }
    if (std::string_view("~^:?*[\\").find(c) != std::string_view::npos) {
      return std::string("must not contain any of ~ ^ : ? * [ \\");
    }
  }
  if (s.find("..") != std::string::npos) {
    return std::string("must not contain \"..\"");
  }
  if (s.find("@{") != std::string::npos) {
    return std::string("must not contain \"@{\"");
  }
  for (std::string_view part : Split(s, '/')) {
    if (part.empty()) {
      return std::string("must not start or end with '/' or contain \"//\"");
    }
    if (part.front() == '.') {
      return std::string("no '/'-separated part may start with '.'");
    }
    if (part.ends_with(".lock")) {
      return std::string("no '/'-separated part may end with \".lock\"");
    }
  }
  if (s.back() == '.') {
    return std::string("must not end with '.'");
  }
  return std::nullopt;
}

std::optional<std::string> CheckEndpoint(const std::string& s) {
  std::string_view rest = s;
  if (rest.starts_with("https://")) {
    rest.remove_prefix(8);
  } else if (rest.starts_with("http://")) {
    rest.remove_prefix(7);
  } else {
    return std::string("must be an http:// or https:// URL");
  }
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos) {
    // Credentials do not belong in a spec (it is logged and shown); use tokenSecretRef.
    return std::string("must not contain user information (use tokenSecretRef)");
  }
  std::string_view host = authority;
  std::string_view port;
  if (authority.starts_with("[")) {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return std::string("must have a valid host");
    }
    host = authority.substr(0, close + 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (!after.starts_with(":")) {
        return std::string("must have a valid host");
      }
      port = after.substr(1);
      if (port.empty()) {
        return std::string("port must be a number from 1 to 65535");
      }
    }
    for (char c : host.substr(1, host.size() - 2)) {
      if (!IsDigit(c) && !(c >= 'a' && c <= 'f') && !(c >= 'A' && c <= 'F') && c != ':' &&
          c != '.') {
        return std::string("must have a valid host");
      }
    }
    if (host.size() == 2) {
      return std::string("must have a valid host");
    }
  } else {
    size_t colon = authority.find(':');
    if (colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      port = authority.substr(colon + 1);
      if (port.empty()) {
        return std::string("port must be a number from 1 to 65535");
      }
    }
    if (host.empty()) {
      return std::string("must have a host");
    }
    for (char c : host) {
      if (!IsAlnum(c) && c != '.' && c != '-') {
        return std::string("must have a valid host (letters, digits, '.' and '-')");
      }
    }
  }
  if (!port.empty()) {
    bool digits = port.size() <= 5;
    for (char c : port) {
      digits = digits && IsDigit(c);
    }
    auto value = digits ? ParsePositive(port) : std::nullopt;
    if (!value || *value > 65535) {
      return std::string("port must be a number from 1 to 65535");
    }
  }
  for (char c : path) {
    if (IsSpaceOrControl(c) || c == '?' || c == '#') {
      return std::string("path must not contain whitespace, '?' or '#'");
    }
  }
  return std::nullopt;
}

std::optional<int64_t> AcceleratorCount(std::string_view accelerator) {
  size_t colon = accelerator.rfind(':');
  if (colon == std::string_view::npos) {
    return std::nullopt;
  }
  std::string_view type = accelerator.substr(0, colon);
  if (type.empty() || !IsAlnum(type.front())) {
    return std::nullopt;
  }
  for (char c : type) {
    if (!IsAlnum(c) && c != '.' && c != '_' && c != '-' && c != '/') {
      return std::nullopt;
    }
  }
  std::string_view digits = accelerator.substr(colon + 1);
  if (digits.size() > 4) {
    return std::nullopt;
  }
  for (char c : digits) {
    if (!IsDigit(c)) {
      return std::nullopt;
    }
  }
  auto count = ParsePositive(digits);
  if (!count || *count > kMaxAcceleratorCount) {
    return std::nullopt;
  }
  return count;
}

std::optional<std::string> CheckAccelerator(const std::string& s) {
  if (AcceleratorCount(s)) {
    return std::nullopt;
  }
  // Say which half is wrong when the shape is right.
  size_t colon = s.rfind(':');
  if (colon != std::string::npos && colon > 0) {
    std::string_view digits = std::string_view(s).substr(colon + 1);
    bool all_digits = !digits.empty();
    for (char c : digits) {
      all_digits = all_digits && IsDigit(c);
    }
    if (all_digits && AcceleratorCount(s.substr(0, colon) + ":1")) {
      return "the count must be from 1 to " + std::to_string(kMaxAcceleratorCount) +
             " without leading zeros";
    }
  }
  return std::string(
      "must be \"<type>:<count>\" such as \"L40s:4\" (type: letters, digits, '.', '_', '-', "
      "'/'; count: 1 to 1024)");
}

std::optional<std::string> CheckMaxFileSize(const std::string& s) {
  auto bytes = IsByteSizeSyntax(s) ? ParseByteSize(s) : Result<uint64_t>(Error{});
  if (!bytes) {
    return std::string("must be a byte size such as 5GiB, 500MiB or 2G");
  }
  if (*bytes < kMinMaxFileSize) {
    return std::string("must be at least 1MiB");
  }
  return std::nullopt;
}

std::optional<std::string> CheckRefreshInterval(const std::string& s) {
  if (!IsDurationSyntax(s) || !ParseDuration(s)) {
    return std::string("must be a duration such as 30m, 1h or 1h30m (0: never)");
  }
  return std::nullopt;
}

std::optional<std::string> CheckS3Bucket(std::string_view s) {
  bool ok = s.size() >= 3 && s.size() <= 63 && IsLowerAlnum(s.front()) && IsLowerAlnum(s.back()) &&
            s.find("..") == std::string_view::npos && !IsIPv4(s);
  for (char c : s) {
    ok = ok && (IsLowerAlnum(c) || c == '.' || c == '-');
  }
  if (!ok) {
    return "bucket \"" + std::string(s) +
           "\" is not a valid S3 bucket name (3-63 lower-case letters, digits, '.' and '-', "
           "starting and ending with a letter or digit)";
  }
  return std::nullopt;
}

std::optional<std::string> CheckStorageUri(const std::string& s) {
  auto no_control = [](std::string_view v) {
    for (char c : v) {
      auto u = static_cast<unsigned char>(c);
      if (u < 0x20 || u == 0x7f) {
        return false;
      }
    }
    return true;
  };
  if (s.starts_with("/")) {
    return no_control(s) ? std::nullopt
                         : std::optional<std::string>("must not contain control characters");
  }
  if (s.starts_with("file://")) {
    std::string_view path = std::string_view(s).substr(7);
    if (!path.starts_with("/")) {
      return std::string("a file URI must be file:///absolute/path (no host)");
    }
    return no_control(path) ? std::nullopt
                            : std::optional<std::string>("must not contain control characters");
  }
  if (s.starts_with("s3://")) {
    std::string_view rest = std::string_view(s).substr(5);
    size_t slash = rest.find('/');
    if (auto problem = CheckS3Bucket(rest.substr(0, slash))) {
      return problem;
    }
    if (slash != std::string_view::npos) {
      // s3://bucket/ and s3://bucket/a/b/ are fine; s3://bucket// and s3://bucket/a//b are not.
      std::string_view prefix = rest.substr(slash + 1);
      if (!prefix.empty()) {
        if (prefix.ends_with("/")) {
          prefix.remove_suffix(1);
        }
        for (std::string_view seg : Split(prefix, '/')) {
          if (!IsS3Segment(seg)) {
            return std::string(
                "the prefix must not contain empty segments (\"//\"), whitespace or control "
                "characters");
          }
        }
      }
    }
    return std::nullopt;
  }
  return std::string("must be an absolute path, file:///path or s3://bucket/prefix");
}

}  // namespace modelcache::crds::internal
