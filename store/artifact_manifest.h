#pragma once

// What an artifact version is, whatever store holds it: its manifest (modelcache.json), its
// content-addressed identity, and what publishing it returns (docs/store-layout.md).

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace modelcache::store {

struct ManifestFile {
  std::string path;  // relative to the artifact directory, '/'-separated
  uint64_t size = 0;
  std::string sha256;  // 64 lower-case hex
};

// Serialized as <version>/modelcache.json: pretty, sorted keys, deterministic, no timestamps.
// (The lint exception: nlohmann::json's special members are not declared noexcept.)
struct ArtifactManifest {         // NOLINT(bugprone-exception-escape)
  std::string name, version, id;  // id = "<name>@sha256:<digest>", version = first 12 hex of digest
  std::string source_type, source_repo, source_revision, source_commit;  // source.{…}
  std::vector<ManifestFile> files;  // sorted by path (FinalizeIdentity sorts)
  nlohmann::json shard;             // null when unsharded; else settings + engine release (opaque)
  uint64_t size_bytes = 0;
};

// The artifact digest (64 lower-case hex): SHA-256 of a canonical JSON document holding the source
// type, repo and commit, every file's (path, size, sha256) sorted by path, and the shard settings.
// The revision name, the artifact name and timestamps are not covered, so "main" and its commit
// give the same digest. Same inputs, same digest. Fills nothing.
std::string ComputeDigest(const ArtifactManifest& manifest);

// Sorts files by path and sets version, id (from ComputeDigest) and size_bytes (sum of sizes).
void FinalizeIdentity(ArtifactManifest& manifest);

// The modelcache.json document ("formatVersion": 1, camelCase keys). ManifestFromJson returns
// StorageError naming the field when the document is not a valid manifest; it does not check the
// id against the digest (ReadVersion does).
nlohmann::json ManifestToJson(const ArtifactManifest& manifest);
Result<ArtifactManifest> ManifestFromJson(const nlohmann::json& json);

// What publishing a version made (ArtifactStore::Describe); maps onto status.artifact.
struct PublishedArtifact {
  std::string name, version, id;
  std::string path;  // a local store's <root>/artifacts/<name>/<version>; empty for S3
  std::string uri;   // file://<path> percent-encoded, or s3://<bucket>/<prefix>/artifacts/…
  uint64_t size_bytes = 0;
  int64_t files = 0;
};

}  // namespace modelcache::store
