#pragma once

// Where the controller keeps each resource's status: the full object, metadata + spec + status.
// Directory mode stores it in files (controller/directory/file_status_store.h), so that
// `modelcache get` can print it and a restarted daemon can carry metadata (generation, uid,
// creationTimestamp, the spec-hash annotation) and status across restarts; Kubernetes mode writes
// the status subresource (controller/kube/kube_status_store.h).

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/result.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

class StatusStore {
 public:
  virtual ~StatusStore() = default;

  // The stored object for `key`; nullopt if there is none. An error if it exists but cannot be
  // read or parsed (StorageError naming the file).
  virtual Result<std::optional<crds::ModelCache>> Read(const crds::ObjectKey& key) const = 0;

  // Stores `object_with_status` under its key, replacing what was there; readers see either the
  // old or the new object, never a mix. InvalidSpec if the namespace or name is empty, ".", ".."
  // or contains '/'; StorageError (InsufficientStorage when the disk is full) if it cannot be
  // written.
  virtual VoidResult Write(const crds::ModelCache& object_with_status) = 0;

  // Removes the object for `key`. OK if there was none.
  virtual VoidResult Remove(const crds::ObjectKey& key) = 0;

  // Every readable stored object, ordered by namespace then name. Unreadable entries are skipped
  // with a warning in the log.
  virtual Result<std::vector<crds::ModelCache>> List() const = 0;
};

}  // namespace modelcache::controller
