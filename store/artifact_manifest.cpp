// ArtifactManifest: identity (digest, version, id) and the modelcache.json document.

#include "store/artifact_manifest.h"

#include <algorithm>
#include <array>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/sha256.h"

namespace modelcache::store {

namespace {

constexpr int kFormatVersion = 1;
constexpr size_t kVersionHexDigits = 12;

// The digest input is a length-prefixed record stream rather than a JSON dump: it needs no
// escaping rules, cannot throw on bytes that are not UTF-8, and two different inputs can never
// serialize to the same bytes. The leading tag lets a future format change the rules without
// silently colliding with today's ids.
void AppendField(std::string& out, std::string_view key, std::string_view value) {
  out.append(key);
  out.push_back('=');
  out.append(std::to_string(value.size()));
  out.push_back(':');
  out.append(value);
  out.push_back('\n');
}

std::vector<ManifestFile> SortedFiles(const std::vector<ManifestFile>& files) {
  std::vector<ManifestFile> sorted = files;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const ManifestFile& a, const ManifestFile& b) { return a.path < b.path; });
  return sorted;
}

Error Malformed(const std::string& field, const std::string& what) {
  return {Reason::StorageError, "modelcache.json: " + field + ": " + what};
}

Result<std::string> GetString(const nlohmann::json& obj, const char* key, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string()) {
    return Malformed(path + key, "missing or not a string");
  }
  return it->get<std::string>();
}

Result<uint64_t> GetUint(const nlohmann::json& obj, const char* key, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_number_unsigned()) {
    return Malformed(path + key, "missing or not a non-negative integer");
  }
  return it->get<uint64_t>();
}

}  // namespace

std::string ComputeDigest(const ArtifactManifest& manifest) {
  std::string input = "modelcache.artifact.v1\n";
  AppendField(input, "source.type", manifest.source_type);
  AppendField(input, "source.repo", manifest.source_repo);
  AppendField(input, "source.commit", manifest.source_commit);
  for (const ManifestFile& f : SortedFiles(manifest.files)) {
    AppendField(input, "file.path", f.path);
    AppendField(input, "file.size", std::to_string(f.size));
    AppendField(input, "file.sha256", f.sha256);
  }
  // nlohmann objects keep their keys sorted, so the compact dump is canonical; `replace` keeps it
  // from throwing (shard settings are ASCII in practice).
  AppendField(input, "shard",
              manifest.shard.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  return Sha256Hex(input);
}

void FinalizeIdentity(ArtifactManifest& manifest) {
  manifest.files = SortedFiles(manifest.files);
  std::string digest = ComputeDigest(manifest);
  manifest.version = digest.substr(0, kVersionHexDigits);
  manifest.id = manifest.name + "@sha256:" + digest;
  manifest.size_bytes = 0;
  for (const ManifestFile& f : manifest.files) {
    manifest.size_bytes += f.size;
  }
}

nlohmann::json ManifestToJson(const ArtifactManifest& manifest) {
  nlohmann::json files = nlohmann::json::array();
  for (const ManifestFile& f : manifest.files) {
    files.push_back({{"path", f.path}, {"size", f.size}, {"sha256", f.sha256}});
  }
  return nlohmann::json{
      {"formatVersion", kFormatVersion},
      {"name", manifest.name},
      {"version", manifest.version},
      {"id", manifest.id},
      {"source",
       {{"type", manifest.source_type},
        {"repo", manifest.source_repo},
        {"revision", manifest.source_revision},
        {"commit", manifest.source_commit}}},
      {"files", std::move(files)},
      {"shard", manifest.shard},
      {"sizeBytes", manifest.size_bytes},
  };
}

Result<ArtifactManifest> ManifestFromJson(const nlohmann::json& json) {
  if (!json.is_object()) {
    return Malformed("(document)", "not a JSON object");
  }
  auto format = json.find("formatVersion");
  if (format == json.end() || !format->is_number_integer() ||
      format->get<int64_t>() != kFormatVersion) {
    return Malformed("formatVersion", "missing or not " + std::to_string(kFormatVersion));
  }
  ArtifactManifest m;
  auto name = GetString(json, "name", "");
  if (!name) {
    return name.error();
  }
  m.name = std::move(*name);
  auto version = GetString(json, "version", "");
  if (!version) {
    return version.error();
  }
  m.version = std::move(*version);
  auto id = GetString(json, "id", "");
  if (!id) {
    return id.error();
  }
  m.id = std::move(*id);

  auto source = json.find("source");
  if (source == json.end() || !source->is_object()) {
    return Malformed("source", "missing or not an object");
  }
  const std::array<std::pair<const char*, std::string*>, 4> source_fields = {
      {{"type", &m.source_type},
       {"repo", &m.source_repo},
       {"revision", &m.source_revision},
       {"commit", &m.source_commit}}};
  for (const auto& [key, dst] : source_fields) {
    auto v = GetString(*source, key, "source.");
    if (!v) {
      return v.error();
    }
    *dst = std::move(*v);
  }

  auto files = json.find("files");
  if (files == json.end() || !files->is_array()) {
    return Malformed("files", "missing or not an array");
  }
  for (size_t i = 0; i < files->size(); ++i) {
    const nlohmann::json& f = (*files)[i];
    std::string at = "files[" + std::to_string(i) + "].";
    if (!f.is_object()) {
      return Malformed(at, "not an object");
    }
    ManifestFile mf;
    auto path = GetString(f, "path", at);
    if (!path) {
      return path.error();
    }
    mf.path = std::move(*path);
    auto size = GetUint(f, "size", at);
    if (!size) {
      return size.error();
    }
    mf.size = *size;
    auto sha = GetString(f, "sha256", at);
    if (!sha) {
      return sha.error();
    }
    mf.sha256 = std::move(*sha);
    m.files.push_back(std::move(mf));
  }

  auto shard = json.find("shard");
  if (shard == json.end()) {
    return Malformed("shard", "missing (null when unsharded)");
  }
  m.shard = *shard;
  auto size_bytes = GetUint(json, "sizeBytes", "");
  if (!size_bytes) {
    return size_bytes.error();
  }
  m.size_bytes = *size_bytes;
  return m;
}

}  // namespace modelcache::store
