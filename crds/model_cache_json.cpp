// JSON <-> ModelCache. The converter here is the only one: YAML documents are first turned into
// JSON trees (model_cache_yaml.cpp) and come through ConvertObject too, with a SourceMap that lets
// errors point at lines and lets string fields take a YAML number's text as written.

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/sha256.h"
#include "crds/internal/convert.h"
#include "crds/model_cache.h"

namespace modelcache::crds {

using nlohmann::json;

namespace internal {
namespace {

std::string EscapePointerToken(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  for (char c : token) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

// A field's two names: the Kubernetes-style path shown to users ("spec.source.include[0]") and
// the JSON pointer used to find its line ("/spec/source/include/0").
struct Loc {
  std::string path;
  std::string pointer;

  Loc Child(std::string_view key) const {
    return {path.empty() ? std::string(key) : path + "." + std::string(key),
            pointer + "/" + EscapePointerToken(key)};
  }
  // An entry of a string map: metadata.labels[app].
  Loc Key(std::string_view key) const {
    return {path + "[" + std::string(key) + "]", pointer + "/" + EscapePointerToken(key)};
  }
  Loc Index(size_t i) const {
    return {path + "[" + std::to_string(i) + "]", pointer + "/" + std::to_string(i)};
  }
};

class Converter {
 public:
  Converter(const SourceMap* source, std::vector<LocatedError>* errors,
            std::vector<std::pair<std::string, std::string>>* unknown,
            std::map<std::string, std::string>* field_pointers)
      : source_(source), errors_(errors), unknown_(unknown), field_pointers_(field_pointers) {}

  void Invalid(const Loc& loc, const json& value, std::string detail) {
    errors_->push_back({loc.pointer, FieldError{FieldError::Type::Invalid, loc.path,
                                                DescribeValue(value), std::move(detail)}});
  }

  // The value of `key` in `obj`, or nullptr when absent or null (null means absent, as in
  // Kubernetes). Records where the field is.
  const json* Field(const json& obj, std::string_view key, const Loc& field) {
    auto it = obj.find(key);
    if (it == obj.end()) {
      return nullptr;
    }
    if (field_pointers_ != nullptr) {
      (*field_pointers_)[field.path] = field.pointer;
    }
    if (it->is_null()) {
      return nullptr;
    }
    return &*it;
  }

  // True if `v` is an object; otherwise reports it.
  bool IsObject(const json& v, const Loc& loc) {
    if (v.is_object()) {
      return true;
    }
    Invalid(loc, v, "must be an object");
    return false;
  }

  void ReportUnknown(const json& obj, const Loc& loc,
                     std::initializer_list<std::string_view> known) {
    if (unknown_ == nullptr) {
      return;
    }
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      bool found = false;
      for (std::string_view k : known) {
        if (it.key() == k) {
          found = true;
          break;
        }
      }
      if (!found) {
        Loc child = loc.Child(it.key());
        unknown_->emplace_back(child.pointer, child.path);
      }
    }
  }

  void ToString(const json& v, const Loc& loc, std::string* out) {
    if (v.is_string()) {
      *out = v.get<std::string>();
      return;
    }
    // A YAML plain scalar such as `revision: 1.10` or `name: 007` resolved to a number or bool;
    // a string field takes it as written, which is what the user meant.
    if (source_ != nullptr && (v.is_number() || v.is_boolean())) {
      auto it = source_->raw_text.find(loc.pointer);
      if (it != source_->raw_text.end()) {
        *out = it->second;
        return;
      }
    }
    Invalid(loc, v, "must be a string");
  }

  void String(const json& obj, std::string_view key, const Loc& parent, std::string* out) {
    Loc loc = parent.Child(key);
    if (const json* v = Field(obj, key, loc)) {
      ToString(*v, loc, out);
    }
  }

  void OptionalString(const json& obj, std::string_view key, const Loc& parent,
                      std::optional<std::string>* out) {
    Loc loc = parent.Child(key);
    if (const json* v = Field(obj, key, loc)) {
      std::string s;
      size_t before = errors_->size();
      ToString(*v, loc, &s);
      if (errors_->size() == before) {
        *out = std::move(s);
      }
    }
  }

  void Int(const json& obj, std::string_view key, const Loc& parent, int64_t* out) {
    Loc loc = parent.Child(key);
    const json* v = Field(obj, key, loc);
    if (v == nullptr) {
      return;
    }
    if (v->is_number_integer() && !v->is_number_unsigned()) {
      *out = v->get<int64_t>();
    } else if (v->is_number_unsigned()) {
      uint64_t u = v->get<uint64_t>();
      if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        Invalid(loc, *v, "must fit in a 64-bit signed integer");
      } else {
        *out = static_cast<int64_t>(u);
      }
    } else {
      Invalid(loc, *v, "must be an integer");
    }
  }

  // Like Int, but keeps "absent" (or null) apart from 0.
  void OptionalInt(const json& obj, std::string_view key, const Loc& parent,
                   std::optional<int64_t>* out) {
    size_t before = errors_->size();
    int64_t value = 0;
    Int(obj, key, parent, &value);
    auto it = obj.find(key);
    if (errors_->size() == before && it != obj.end() && !it->is_null()) {
      *out = value;
    }
  }

  void Uint(const json& obj, std::string_view key, const Loc& parent, uint64_t* out) {
    Loc loc = parent.Child(key);
    const json* v = Field(obj, key, loc);
    if (v == nullptr) {
      return;
    }
    if (v->is_number_unsigned()) {
      *out = v->get<uint64_t>();
    } else if (v->is_number_integer()) {
      int64_t i = v->get<int64_t>();
      if (i < 0) {
        Invalid(loc, *v, "must be greater than or equal to 0");
      } else {
        *out = static_cast<uint64_t>(i);
      }
    } else {
      Invalid(loc, *v, "must be an integer");
    }
  }

  void StringList(const json& obj, std::string_view key, const Loc& parent,
                  std::vector<std::string>* out) {
    Loc loc = parent.Child(key);
    const json* v = Field(obj, key, loc);
    if (v == nullptr) {
      return;
    }
    if (!v->is_array()) {
      Invalid(loc, *v, "must be a list of strings");
      return;
    }
    for (size_t i = 0; i < v->size(); ++i) {
      Loc item = loc.Index(i);
      if (field_pointers_ != nullptr) {
        (*field_pointers_)[item.path] = item.pointer;
      }
      std::string s;
      ToString((*v)[i], item, &s);
      out->push_back(std::move(s));
    }
  }

  void StringMap(const json& obj, std::string_view key, const Loc& parent,
                 std::map<std::string, std::string>* out) {
    Loc loc = parent.Child(key);
    const json* v = Field(obj, key, loc);
    if (v == nullptr) {
      return;
    }
    if (!v->is_object()) {
      Invalid(loc, *v, "must be a map of strings");
      return;
    }
    for (auto it = v->begin(); it != v->end(); ++it) {
      Loc entry = loc.Key(it.key());
      if (field_pointers_ != nullptr) {
        (*field_pointers_)[entry.path] = entry.pointer;
      }
      std::string s;
      if (!it->is_null()) {
        ToString(*it, entry, &s);
      }
      (*out)[it.key()] = std::move(s);
    }
  }

  void Metadata(const json& v, const Loc& loc, ObjectMeta* m) {
    if (!IsObject(v, loc)) {
      return;
    }
    String(v, "name", loc, &m->name);
    String(v, "namespace", loc, &m->namespace_);
    String(v, "uid", loc, &m->uid);
    String(v, "resourceVersion", loc, &m->resource_version);
    Int(v, "generation", loc, &m->generation);
    String(v, "creationTimestamp", loc, &m->creation_timestamp);
    OptionalString(v, "deletionTimestamp", loc, &m->deletion_timestamp);
    StringMap(v, "labels", loc, &m->labels);
    StringMap(v, "annotations", loc, &m->annotations);
    StringList(v, "finalizers", loc, &m->finalizers);
    // The rest of Kubernetes' ObjectMeta is legitimate but unused here.
    ReportUnknown(
        v, loc,
        {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
         "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
         "annotations", "ownerReferences", "finalizers", "managedFields"});
  }

  void Source(const json& v, const Loc& loc, SourceSpec* s) {
    if (!IsObject(v, loc)) {
      return;
    }
    String(v, "repo", loc, &s->repo);
    String(v, "type", loc, &s->type);
    String(v, "revision", loc, &s->revision);
    StringList(v, "include", loc, &s->include);
    StringList(v, "exclude", loc, &s->exclude);
    String(v, "endpoint", loc, &s->endpoint);
    Loc ref_loc = loc.Child("tokenSecretRef");
    if (const json* ref = Field(v, "tokenSecretRef", ref_loc)) {
      if (IsObject(*ref, ref_loc)) {
        SecretKeyRef r;
        String(*ref, "name", ref_loc, &r.name);
        String(*ref, "key", ref_loc, &r.key);
        ReportUnknown(*ref, ref_loc, {"name", "key"});
        s->token_secret_ref = std::move(r);
      }
    }
    ReportUnknown(v, loc,
                  {"repo", "type", "revision", "include", "exclude", "endpoint", "tokenSecretRef"});
  }

  void Shard(const json& v, const Loc& loc, ShardSpec* s) {
    String(v, "engine", loc, &s->engine);
    OptionalInt(v, "tensorParallelSize", loc, &s->tensor_parallel_size);
    String(v, "dtype", loc, &s->dtype);
    String(v, "maxFileSize", loc, &s->max_file_size);
    ReportUnknown(v, loc, {"engine", "tensorParallelSize", "dtype", "maxFileSize"});
  }

  void Spec(const json& v, const Loc& loc, ModelCacheSpec* s) {
    if (!IsObject(v, loc)) {
      return;
    }
    Loc source_loc = loc.Child("source");
    if (const json* source = Field(v, "source", source_loc)) {
      Source(*source, source_loc, &s->source);
    }
    String(v, "artifactName", loc, &s->artifact_name);
    String(v, "accelerator", loc, &s->accelerator);
    Loc shard_loc = loc.Child("shard");
    if (const json* shard = Field(v, "shard", shard_loc)) {
      if (IsObject(*shard, shard_loc)) {
        ShardSpec sh;
        Shard(*shard, shard_loc, &sh);
        s->shard = std::move(sh);
      }
    }
    Loc storage_loc = loc.Child("storage");
    if (const json* storage = Field(v, "storage", storage_loc)) {
      if (IsObject(*storage, storage_loc)) {
        String(*storage, "uri", storage_loc, &s->storage.uri);
        ReportUnknown(*storage, storage_loc, {"uri"});
      }
    }
    String(v, "refreshInterval", loc, &s->refresh_interval);
    Int(v, "force", loc, &s->force);
    StringMap(v, "nodeSelector", loc, &s->node_selector);
    ReportUnknown(v, loc,
                  {"source", "artifactName", "accelerator", "shard", "storage", "refreshInterval",
                   "force", "nodeSelector"});
  }

  void Status(const json& v, const Loc& loc, ModelCacheStatus* s) {
    if (!IsObject(v, loc)) {
      return;
    }
    Int(v, "observedGeneration", loc, &s->observed_generation);
    String(v, "phase", loc, &s->phase);
    String(v, "resolvedRevision", loc, &s->resolved_revision);
    Loc artifact_loc = loc.Child("artifact");
    if (const json* a = Field(v, "artifact", artifact_loc)) {
      if (IsObject(*a, artifact_loc)) {
        ArtifactStatus art;
        String(*a, "name", artifact_loc, &art.name);
        String(*a, "version", artifact_loc, &art.version);
        String(*a, "id", artifact_loc, &art.id);
        String(*a, "uri", artifact_loc, &art.uri);
        String(*a, "path", artifact_loc, &art.path);
        Uint(*a, "sizeBytes", artifact_loc, &art.size_bytes);
        Int(*a, "files", artifact_loc, &art.files);
        ReportUnknown(*a, artifact_loc,
                      {"name", "version", "id", "uri", "path", "sizeBytes", "files"});
        s->artifact = std::move(art);
      }
    }
    Loc progress_loc = loc.Child("progress");
    if (const json* p = Field(v, "progress", progress_loc)) {
      if (IsObject(*p, progress_loc)) {
        ProgressStatus pr;
        Uint(*p, "bytesDone", progress_loc, &pr.bytes_done);
        Uint(*p, "bytesTotal", progress_loc, &pr.bytes_total);
        Int(*p, "filesDone", progress_loc, &pr.files_done);
        Int(*p, "filesTotal", progress_loc, &pr.files_total);
        Uint(*p, "bytesPerSecond", progress_loc, &pr.bytes_per_second);
        ReportUnknown(*p, progress_loc,
                      {"bytesDone", "bytesTotal", "filesDone", "filesTotal", "bytesPerSecond"});
        s->progress = pr;
      }
    }
    Loc nodes_loc = loc.Child("nodes");
    if (const json* n = Field(v, "nodes", nodes_loc)) {
      if (IsObject(*n, nodes_loc)) {
        NodesStatus ns;
        Int(*n, "desired", nodes_loc, &ns.desired);
        Int(*n, "ready", nodes_loc, &ns.ready);
        Int(*n, "failed", nodes_loc, &ns.failed);
        ReportUnknown(*n, nodes_loc, {"desired", "ready", "failed"});
        s->nodes = ns;
      }
    }
    Loc conditions_loc = loc.Child("conditions");
    if (const json* cs = Field(v, "conditions", conditions_loc)) {
      if (!cs->is_array()) {
        Invalid(conditions_loc, *cs, "must be a list of conditions");
      } else {
        for (size_t i = 0; i < cs->size(); ++i) {
          Loc c_loc = conditions_loc.Index(i);
          if (field_pointers_ != nullptr) {
            (*field_pointers_)[c_loc.path] = c_loc.pointer;
          }
          const json& cj = (*cs)[i];
          if (!IsObject(cj, c_loc)) {
            continue;
          }
          Condition c;
          String(cj, "type", c_loc, &c.type);
          String(cj, "status", c_loc, &c.status);
          String(cj, "reason", c_loc, &c.reason);
          String(cj, "message", c_loc, &c.message);
          String(cj, "lastTransitionTime", c_loc, &c.last_transition_time);
          Int(cj, "observedGeneration", c_loc, &c.observed_generation);
          ReportUnknown(
              cj, c_loc,
              {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"});
          s->conditions.push_back(std::move(c));
        }
      }
    }
    ReportUnknown(
        v, loc,
        {"observedGeneration", "phase", "resolvedRevision", "artifact", "progress", "nodes",
         "conditions"});
  }

  void Object(const json& j, ModelCache* mc) {
    Loc root;
    if (!j.is_object()) {
      Invalid(root, j, "must be an object");
      return;
    }
    CheckTypeField(j, "apiVersion", kApiVersion);
    CheckTypeField(j, "kind", kKind);
    Loc metadata_loc = root.Child("metadata");
    if (const json* m = Field(j, "metadata", metadata_loc)) {
      Metadata(*m, metadata_loc, &mc->metadata);
    }
    Loc spec_loc = root.Child("spec");
    if (const json* s = Field(j, "spec", spec_loc)) {
      Spec(*s, spec_loc, &mc->spec);
    }
    Loc status_loc = root.Child("status");
    if (const json* s = Field(j, "status", status_loc)) {
      Status(*s, status_loc, &mc->status);
    }
    ReportUnknown(j, root, {"apiVersion", "kind", "metadata", "spec", "status"});
  }

 private:
  // apiVersion and kind may be absent (list items) but, when present, must be ours.
  void CheckTypeField(const json& j, std::string_view key, std::string_view want) {
    Loc loc = Loc{}.Child(key);
    const json* v = Field(j, key, loc);
    if (v == nullptr) {
      return;
    }
    std::string got;
    size_t before = errors_->size();
    ToString(*v, loc, &got);
    if (errors_->size() == before && got != want) {
      errors_->push_back({loc.pointer, FieldError{FieldError::Type::Unsupported, loc.path,
                                                  Quote(got), "supported values: " + Quote(want)}});
    }
  }

  const SourceMap* source_;
  std::vector<LocatedError>* errors_;
  std::vector<std::pair<std::string, std::string>>* unknown_;
  std::map<std::string, std::string>* field_pointers_;
};

// --- writing ----------------------------------------------------------------------------------
// One template for both key orders: json (sorted keys: canonical, hashed) and ordered_json
// (DESIGN.md order, for people reading YAML).

template <typename J>
void PutString(J& obj, const char* key, const std::string& value) {
  if (!value.empty()) {
    obj[key] = value;
  }
}

template <typename J>
J MetadataJson(const ObjectMeta& m) {
  J j = J::object();
  PutString(j, "name", m.name);
  PutString(j, "namespace", m.namespace_);
  PutString(j, "uid", m.uid);
  PutString(j, "resourceVersion", m.resource_version);
  if (m.generation != 0) {
    j["generation"] = m.generation;
  }
  PutString(j, "creationTimestamp", m.creation_timestamp);
  if (m.deletion_timestamp) {
    j["deletionTimestamp"] = *m.deletion_timestamp;
  }
  if (!m.labels.empty()) {
    j["labels"] = m.labels;
  }
  if (!m.annotations.empty()) {
    j["annotations"] = m.annotations;
  }
  if (!m.finalizers.empty()) {
    j["finalizers"] = m.finalizers;
  }
  return j;
}

template <typename J>
J SpecJson(const ModelCacheSpec& spec) {
  J j = J::object();
  J source = J::object();
  PutString(source, "repo", spec.source.repo);
  PutString(source, "type", spec.source.type);
  PutString(source, "revision", spec.source.revision);
  if (!spec.source.include.empty()) {
    source["include"] = spec.source.include;
  }
  if (!spec.source.exclude.empty()) {
    source["exclude"] = spec.source.exclude;
  }
  PutString(source, "endpoint", spec.source.endpoint);
  if (spec.source.token_secret_ref) {
    J ref = J::object();
    ref["name"] = spec.source.token_secret_ref->name;
    ref["key"] = spec.source.token_secret_ref->key;
    source["tokenSecretRef"] = std::move(ref);
  }
  j["source"] = std::move(source);
  PutString(j, "artifactName", spec.artifact_name);
  PutString(j, "accelerator", spec.accelerator);
  if (spec.shard) {
    J shard = J::object();
    PutString(shard, "engine", spec.shard->engine);
    if (spec.shard->tensor_parallel_size) {
      shard["tensorParallelSize"] = *spec.shard->tensor_parallel_size;
    }
    PutString(shard, "dtype", spec.shard->dtype);
    PutString(shard, "maxFileSize", spec.shard->max_file_size);
    j["shard"] = std::move(shard);
  }
  if (!spec.storage.uri.empty()) {
    J storage = J::object();
    storage["uri"] = spec.storage.uri;
    j["storage"] = std::move(storage);
  }
  PutString(j, "refreshInterval", spec.refresh_interval);
  if (spec.force != 0) {
    j["force"] = spec.force;
  }
  if (!spec.node_selector.empty()) {
    J selector = J::object();
    for (const auto& [k, v] : spec.node_selector) {
      selector[k] = v;
    }
    j["nodeSelector"] = std::move(selector);
  }
  return j;
}

template <typename J>
J StatusJson(const ModelCacheStatus& s) {
  J j = J::object();
  if (s.observed_generation != 0) {
    j["observedGeneration"] = s.observed_generation;
  }
  PutString(j, "phase", s.phase);
  PutString(j, "resolvedRevision", s.resolved_revision);
  if (s.artifact) {
    const ArtifactStatus& a = *s.artifact;
    J aj = J::object();
    PutString(aj, "name", a.name);
    PutString(aj, "version", a.version);
    PutString(aj, "id", a.id);
    PutString(aj, "uri", a.uri);
    PutString(aj, "path", a.path);
    aj["sizeBytes"] = a.size_bytes;
    aj["files"] = a.files;
    j["artifact"] = std::move(aj);
  }
  if (s.progress) {
    const ProgressStatus& p = *s.progress;
    J pj = J::object();
    pj["bytesDone"] = p.bytes_done;
    pj["bytesTotal"] = p.bytes_total;
    pj["filesDone"] = p.files_done;
    pj["filesTotal"] = p.files_total;
    pj["bytesPerSecond"] = p.bytes_per_second;
    j["progress"] = std::move(pj);
  }
  if (s.nodes) {
    J nj = J::object();
    nj["desired"] = s.nodes->desired;
    nj["ready"] = s.nodes->ready;
    nj["failed"] = s.nodes->failed;
    j["nodes"] = std::move(nj);
  }
  if (!s.conditions.empty()) {
    J cs = J::array();
    for (const Condition& c : s.conditions) {
      // metav1.Condition: all but observedGeneration are required, message may be "".
      J cj = J::object();
      cj["type"] = c.type;
      cj["status"] = c.status;
      cj["reason"] = c.reason;
      cj["message"] = c.message;
      cj["lastTransitionTime"] = c.last_transition_time;
      if (c.observed_generation != 0) {
        cj["observedGeneration"] = c.observed_generation;
      }
      cs.push_back(std::move(cj));
    }
    j["conditions"] = std::move(cs);
  }
  return j;
}

template <typename J>
J ObjectJson(const ModelCache& mc) {
  J j = J::object();
  j["apiVersion"] = std::string(kApiVersion);
  j["kind"] = std::string(kKind);
  j["metadata"] = MetadataJson<J>(mc.metadata);
  j["spec"] = SpecJson<J>(mc.spec);
  if (!(mc.status == ModelCacheStatus{})) {
    j["status"] = StatusJson<J>(mc.status);
  }
  return j;
}

}  // namespace

int SourceMap::LineOf(std::string pointer) const {
  while (true) {
    auto it = lines.find(pointer);
    if (it != lines.end()) {
      return it->second;
    }
    size_t slash = pointer.rfind('/');
    if (slash == std::string::npos) {
      return document_line;
    }
    pointer.resize(slash);
  }
}

Conversion ConvertObject(const json& j, const SourceMap* source) {
  Conversion out;
  Converter c(source, &out.errors, &out.unknown_fields, &out.field_pointers);
  c.Object(j, &out.object);
  return out;
}

ModelCacheStatus ConvertStatus(const json& j, const SourceMap* source,
                               std::vector<LocatedError>* errors) {
  ModelCacheStatus status;
  Converter c(source, errors, nullptr, nullptr);
  c.Status(j, Loc{"status", "/status"}, &status);
  return status;
}

nlohmann::ordered_json ToOrderedJson(const ModelCache& mc) {
  return ObjectJson<nlohmann::ordered_json>(mc);
}

std::string Quote(std::string_view s) {
  return json(std::string(s)).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string DescribeValue(const json& v) {
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMax = 64;
  if (text.size() > kMax && (v.is_object() || v.is_array())) {
    text = text.substr(0, kMax) + "...";
  }
  return text;
}

}  // namespace internal

namespace {

Error ConversionError(const std::vector<internal::LocatedError>& errors) {
  std::vector<FieldError> plain;
  plain.reserve(errors.size());
  for (const auto& e : errors) {
    plain.push_back(e.error);
  }
  return {Reason::InvalidSpec, JoinErrors(plain)};
}

}  // namespace

Result<ModelCache> FromJson(const json& j) {
  internal::Conversion c = internal::ConvertObject(j, nullptr);
  if (!c.errors.empty()) {
    return ConversionError(c.errors);
  }
  return std::move(c.object);
}

json ToJson(const ModelCache& mc) { return internal::ObjectJson<json>(mc); }

json SpecToJson(const ModelCacheSpec& spec) { return internal::SpecJson<json>(spec); }

json StatusToJson(const ModelCacheStatus& status) { return internal::StatusJson<json>(status); }

Result<ModelCacheStatus> StatusFromJson(const json& j) {
  std::vector<internal::LocatedError> errors;
  ModelCacheStatus status = internal::ConvertStatus(j, nullptr, &errors);
  if (!errors.empty()) {
    return ConversionError(errors);
  }
  return status;
}

std::string SpecHash(const ModelCacheSpec& spec) {
  // nlohmann::json keeps object keys sorted, so dump() is canonical for equal specs; absent
  // optional fields are omitted, so "force: 0" and no force hash the same.
  return Sha256Hex(SpecToJson(spec).dump(-1, ' ', false, json::error_handler_t::replace));
}

}  // namespace modelcache::crds

namespace modelcache::crds {

std::string ArtifactSpecIdentity(const ModelCacheSpec& spec, std::string_view default_endpoint) {
  ModelCacheSpec content;
  content.source.type = spec.source.type;
  content.source.repo = spec.source.repo;
  content.source.revision = spec.source.revision;
  content.source.include = spec.source.include;
  content.source.exclude = spec.source.exclude;
  content.source.endpoint =
      spec.source.endpoint.empty() ? std::string(default_endpoint) : spec.source.endpoint;
  while (!content.source.endpoint.empty() && content.source.endpoint.back() == '/') {
    content.source.endpoint.pop_back();
  }
  content.shard = spec.shard;
  return SpecHash(content);
}

}  // namespace modelcache::crds
