#pragma once

// Drift detection for a Ready artifact (--verify-interval): re-hashes what the store holds for it
// and says what no longer matches. Private to reconcilers/.

#include <stop_token>
#include <string>

#include "common/result.h"
#include "crds/model_cache.h"

namespace modelcache::reconcilers {

// Re-verifies, in the store at `store_root`:
//   * every file of artifact version `artifact` (present, regular, size and sha256 as its
//     modelcache.json says);
//   * every blob the snapshot at `commit` links for the files `spec` selects (present and hashing
//     to its name), skipping blobs that are the same inode as an artifact file already hashed;
//   * for an unsharded artifact, that the snapshot links every artifact file, to the content the
//     artifact holds (what the endpoint served when it was cached), not merely to a valid blob.
// The snapshot is looked up in the hub cache of `endpoint` (LocalStore::HubFor with
// `own_endpoint`, the daemon's), where the job that cached it put it.
// Returns "" when everything matches, else one line per problem joined by "; "
// ("model.safetensors: artifact file changed on disk"). Cancelled when `stop` is requested;
// other errors only when the store cannot be opened.
Result<std::string> FindDrift(const std::string& store_root, const crds::ModelCacheSpec& spec,
                              const crds::ArtifactStatus& artifact, const std::string& commit,
                              const std::string& endpoint, const std::string& own_endpoint,
                              std::stop_token stop);

}  // namespace modelcache::reconcilers
