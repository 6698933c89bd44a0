#pragma once

// Directory locks shared by the store's implementations (private to store/).

#include <string>

namespace modelcache::store::internal {

// Exclusive, non-blocking flock of a directory that must still be at `path` once locked (a
// cleanup may have removed or replaced it between our open and our lock). Returns the fd, which
// holds the lock until closed, or -1 (missing, not a directory, or locked by someone else).
int LockDirAt(const std::string& path);

}  // namespace modelcache::store::internal
