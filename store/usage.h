#pragma once

// How much of its disk the local store uses: for the modelcache_store_used_bytes and
// modelcache_store_free_bytes gauges.

#include <cstdint>
#include <string>

#include "common/result.h"

namespace modelcache::store {

struct StoreUsage {
  // Apparent size of the regular files under the store root, each inode counted once: artifact
  // files are hard links of the hub cache's blobs and take their space only once.
  uint64_t used_bytes = 0;
  // Bytes an unprivileged process may still write on the store's file system (statvfs f_bavail).
  uint64_t free_bytes = 0;
};

// Walks `root`. Files that vanish during the walk (a concurrent publish or cleanup) are skipped;
// a directory that vanishes ends the walk early (the figure is then an underestimate). Fails
// (StorageError naming the path) only when `root` itself cannot be read.
Result<StoreUsage> MeasureStoreUsage(const std::string& root);

}  // namespace modelcache::store
