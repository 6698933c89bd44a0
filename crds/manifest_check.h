#pragma once

// Offline checking of manifest files for `modelcache validate FILE...`: everything the daemon
// would refuse in a file, with the line to look at, without a cluster or a daemon.

#include <string>
#include <vector>

namespace modelcache::crds {

struct ManifestProblem {
  std::string file;
  int line = 0;       // 1-based; 0 when the problem is the file itself (missing, unreadable)
  std::string field;  // "spec.shard.dtype"; empty for file-level problems (syntax errors)
  std::string message;

  // "file:line: field: message", or "file:line: message" without a field.
  std::string ToString() const;
};

// Reads `path`, parses every YAML document, ignores documents of other kinds, applies defaults
// to each ModelCache and validates it. Reports, sorted by line:
//   - a file that cannot be read (line 0) or a YAML syntax error (its line; nothing else then),
//   - conversion problems (wrong types, duplicate keys, unsupported apiVersion/kind),
//   - fields the API does not know ("unknown field"), which the API server would drop,
//   - every validation error, at the line of the field (or of its nearest parent present),
//   - two ModelCaches with the same namespace/name (Duplicate, on each of them).
// Empty means every ModelCache in the file is valid. Thread-safe; never throws.
std::vector<ManifestProblem> CheckManifestFile(const std::string& path);

// Warnings (messages starting "warning: ") for ModelCaches of `paths`, taken as one tree (one
// watch directory), that claim the same artifact name, explicitly or by directory mode's default,
// with different specs (ArtifactSpecIdentity): one per claim after the first, at its
// spec.artifactName line (or the nearest parent present), naming the first claim. Documents that
// do not convert or have no name are skipped (CheckManifestFile reports them).
std::vector<ManifestProblem> CheckArtifactNames(const std::vector<std::string>& paths);

}  // namespace modelcache::crds
