// Defaulting and validation of ModelCache. The rules mirror crds/modelcache.yaml's schema (a unit
// test checks that they agree); messages follow k8s.io/apimachinery's field.Error so that users
// see the same wording from `kubectl apply` and from `modelcache validate`.

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "crds/internal/convert.h"
#include "crds/internal/rules.h"
#include "crds/model_cache.h"

namespace modelcache::crds {

using internal::Quote;

std::string FieldError::ErrorBody() const {
  std::string body;
  switch (type) {
    case Type::Required:
      body = "Required value";
      break;
    case Type::Forbidden:
      body = "Forbidden";
      break;
    case Type::Invalid:
      body = "Invalid value";
      break;
    case Type::Unsupported:
      body = "Unsupported value";
      break;
    case Type::Duplicate:
      body = "Duplicate value";
      break;
  }
  // Like field.Error: Required and Forbidden never print the value.
  if (type != Type::Required && type != Type::Forbidden && !value.empty()) {
    body += ": " + value;
  }
  if (!detail.empty()) {
    body += ": " + detail;
  }
  return body;
}

std::string FieldError::ToString() const {
  if (field.empty()) {
    return ErrorBody();
  }
  return field + ": " + ErrorBody();
}

std::string JoinErrors(const std::vector<FieldError>& errors) {
  std::string out;
  for (const FieldError& e : errors) {
    if (!out.empty()) {
      out += "; ";
    }
    out += e.ToString();
  }
  return out;
}

std::string DefaultArtifactName(std::string_view repo) {
  std::string_view base = repo;
  // Outlives `base`, which may point into it.
  std::optional<internal::S3ArtifactUri> s3 = internal::ParseS3ArtifactUri(repo);
  if (s3) {
    // An artifact pulled from another store keeps its name there.
    base = s3->name;
  } else {
    size_t slash = base.rfind('/');
    if (slash != std::string_view::npos) {
      base = base.substr(slash + 1);
    }
  }
  std::string out;
  for (char c : base) {
    char l = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (l == '.' || l == '_') {
      l = '-';
    }
    if ((l >= 'a' && l <= 'z') || (l >= '0' && l <= '9') || l == '-') {
      out += l;
    }
  }
  auto trim = [](std::string& s) {
    size_t first = s.find_first_not_of('-');
    if (first == std::string::npos) {
      s.clear();
      return;
    }
    s = s.substr(first, s.find_last_not_of('-') - first + 1);
  };
  trim(out);
  if (out.size() > internal::kMaxLabelLength) {
    out.resize(internal::kMaxLabelLength);
    trim(out);  // the cut may have left a '-' at the end
  }
  return out;
}

std::string NamespacedArtifactName(std::string_view resource_namespace, std::string_view repo) {
  std::string base = DefaultArtifactName(repo);
  if (base.empty()) {
    return base;  // Validate asks for an artifactName
  }
  std::string out =
      std::string(resource_namespace.empty() ? kDefaultNamespace : resource_namespace) + "--" +
      base;
  if (out.size() > internal::kMaxLabelLength) {
    out.resize(internal::kMaxLabelLength);
    while (!out.empty() && out.back() == '-') {
      out.pop_back();
    }
  }
  return out;
}

void ApplyDefaults(ModelCache& mc) {
  if (mc.metadata.namespace_.empty()) {
    mc.metadata.namespace_ = std::string(kDefaultNamespace);
  }
  ModelCacheSpec& spec = mc.spec;
  if (spec.source.type.empty()) {
    spec.source.type = "model";
  }
  if (spec.source.revision.empty()) {
    spec.source.revision = "main";
  }
  if (spec.artifact_name.empty() && !spec.source.repo.empty()) {
    spec.artifact_name = DefaultArtifactName(spec.source.repo);
  }
  if (spec.shard) {
    ShardSpec& shard = *spec.shard;
    if (shard.engine.empty()) {
      shard.engine = "vllm";
    }
    if (shard.dtype.empty()) {
      shard.dtype = "auto";
    }
    if (shard.max_file_size.empty()) {
      shard.max_file_size = "5GiB";
    }
    if (!shard.tensor_parallel_size) {
      // An invalid accelerator is reported by Validate; defaulting stays at 1 rather than
      // producing a second, derived error.
      shard.tensor_parallel_size = internal::AcceleratorCount(spec.accelerator).value_or(1);
    }
  }
}

namespace {

class Validator {
 public:
  explicit Validator(std::vector<FieldError>* errors) : errors_(errors) {}

  void Required(const std::string& field, std::string detail = "") {
    errors_->push_back({FieldError::Type::Required, field, "", std::move(detail)});
  }
  void Invalid(const std::string& field, const std::string& value, std::string detail) {
    errors_->push_back({FieldError::Type::Invalid, field, Quote(value), std::move(detail)});
  }
  void InvalidInt(const std::string& field, int64_t value, std::string detail) {
    errors_->push_back(
        {FieldError::Type::Invalid, field, std::to_string(value), std::move(detail)});
  }
  void Unsupported(const std::string& field, const std::string& value,
                   std::span<const std::string_view> values) {
    std::vector<std::string_view> supported(values.begin(), values.end());
    std::sort(supported.begin(), supported.end());
    std::string list;
    for (std::string_view s : supported) {
      if (!list.empty()) {
        list += ", ";
      }
      list += Quote(s);
    }
    errors_->push_back(
        {FieldError::Type::Unsupported, field, Quote(value), "supported values: " + list});
  }

  // One of `supported`; empty is Required.
  void OneOf(const std::string& field, const std::string& value,
             std::span<const std::string_view> supported) {
    if (value.empty()) {
      Required(field);
    } else if (std::find(supported.begin(), supported.end(), value) == supported.end()) {
      Unsupported(field, value, supported);
    }
  }

  // Applies a rule that returns the first problem's detail, or nullopt when fine.
  template <typename Rule>
  void Check(const std::string& field, const std::string& value, Rule rule) {
    if (std::optional<std::string> detail = rule(value)) {
      Invalid(field, value, *detail);
    }
  }

 private:
  std::vector<FieldError>* errors_;
};

}  // namespace

std::vector<FieldError> Validate(const ModelCache& mc) {
  std::vector<FieldError> errors;
  Validator v(&errors);
  const ObjectMeta& meta = mc.metadata;
  const ModelCacheSpec& spec = mc.spec;

  if (meta.name.empty()) {
    v.Required("metadata.name");
  } else {
    v.Check("metadata.name", meta.name, internal::CheckDns1123Label);
  }
  if (meta.namespace_.empty()) {
    v.Required("metadata.namespace");
  } else {
    v.Check("metadata.namespace", meta.namespace_, internal::CheckDns1123Label);
  }

  const SourceSpec& source = spec.source;
  if (source.repo.empty()) {
    v.Required("spec.source.repo");
  } else {
    v.Check("spec.source.repo", source.repo, internal::CheckRepo);
  }
  v.OneOf("spec.source.type", source.type, kSourceTypes);
  if (source.revision.empty()) {
    v.Required("spec.source.revision");
  } else {
    v.Check("spec.source.revision", source.revision, internal::CheckRevision);
  }
  for (size_t i = 0; i < source.include.size(); ++i) {
    if (source.include[i].empty()) {
      v.Invalid("spec.source.include[" + std::to_string(i) + "]", "", "must not be empty");
    }
  }
  for (size_t i = 0; i < source.exclude.size(); ++i) {
    if (source.exclude[i].empty()) {
      v.Invalid("spec.source.exclude[" + std::to_string(i) + "]", "", "must not be empty");
    }
  }
  if (!source.endpoint.empty()) {
    v.Check("spec.source.endpoint", source.endpoint, internal::CheckEndpoint);
  }
  if (source.token_secret_ref) {
    const SecretKeyRef& ref = *source.token_secret_ref;
    if (ref.name.empty()) {
      v.Required("spec.source.tokenSecretRef.name");
    } else {
      v.Check("spec.source.tokenSecretRef.name", ref.name, internal::CheckDns1123Subdomain);
    }
    if (ref.key.empty()) {
      v.Required("spec.source.tokenSecretRef.key");
    } else {
      v.Check("spec.source.tokenSecretRef.key", ref.key, internal::CheckSecretKey);
    }
  }

  if (spec.artifact_name.empty()) {
    // Defaulting derives it from the repo; it stays empty only when the repo has no usable
    // characters (or no repo was given, which is reported above).
    if (!source.repo.empty()) {
      v.Required("spec.artifactName", "cannot derive one from spec.source.repo; set it");
    }
  } else {
    v.Check("spec.artifactName", spec.artifact_name, internal::CheckDns1123Label);
  }

  std::optional<int64_t> accelerator_count;
  if (!spec.accelerator.empty()) {
    v.Check("spec.accelerator", spec.accelerator, internal::CheckAccelerator);
    accelerator_count = internal::AcceleratorCount(spec.accelerator);
  }

  if (spec.shard) {
    const ShardSpec& shard = *spec.shard;
    v.OneOf("spec.shard.engine", shard.engine, kEngines);
    // Absent only when not defaulted: nothing to check then.
    int64_t tp = shard.tensor_parallel_size.value_or(1);
    if (tp < 1) {
      v.InvalidInt("spec.shard.tensorParallelSize", tp, "must be greater than or equal to 1");
    } else if (tp > internal::kMaxTensorParallelSize) {
      v.InvalidInt(
          "spec.shard.tensorParallelSize", tp,
          "must be less than or equal to " + std::to_string(internal::kMaxTensorParallelSize));
    } else if (accelerator_count && tp > *accelerator_count) {
      v.InvalidInt("spec.shard.tensorParallelSize", tp,
                   "exceeds the accelerator count " + std::to_string(*accelerator_count));
    }
    v.OneOf("spec.shard.dtype", shard.dtype, kDtypes);
    if (shard.max_file_size.empty()) {
      v.Required("spec.shard.maxFileSize");
    } else {
      v.Check("spec.shard.maxFileSize", shard.max_file_size, internal::CheckMaxFileSize);
    }
  }

  if (!spec.storage.uri.empty()) {
    v.Check("spec.storage.uri", spec.storage.uri, internal::CheckStorageUri);
  }
  if (!spec.refresh_interval.empty()) {
    v.Check("spec.refreshInterval", spec.refresh_interval, internal::CheckRefreshInterval);
  }
  if (spec.force < 0) {
    v.InvalidInt("spec.force", spec.force, "must be greater than or equal to 0");
  }
  for (const auto& [key, value] : spec.node_selector) {
    v.Check("spec.nodeSelector", key, internal::CheckLabelKey);
    v.Check("spec.nodeSelector[" + key + "]", value, internal::CheckLabelValue);
  }
  return errors;
}

}  // namespace modelcache::crds
