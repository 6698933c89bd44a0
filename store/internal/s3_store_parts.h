#pragma once

// What S3ArtifactStore's two files (s3_store.cpp: layout, publishing, reading; s3_store_pull.cpp:
// pulls) share. Not part of store/'s interface.

#include <string>
#include <string_view>

#include "common/result.h"
#include "store/artifact_manifest.h"
#include "store/internal/layout.h"

namespace modelcache::store::internal {

// InvalidSpec unless `name` (and `version`, when not empty) is a single safe path component.
VoidResult CheckNameVersion(const std::string& name, const std::string& version);

// The bytes of modelcache.json: the same as the local store's, so a pulled directory equals a
// local one.
std::string ManifestDocument(const ArtifactManifest& manifest);

// A committed modelcache.json read from `where`: StorageError unless it parses, matches its id and
// `name`/`version`, and lists only safe paths.
Result<ArtifactManifest> ParseManifest(const std::string& text, const std::string& where,
                                       const std::string& name, const std::string& version);

}  // namespace modelcache::store::internal
