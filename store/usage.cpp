#include "store/usage.h"

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cerrno>
#include <filesystem>
#include <set>
#include <utility>

#include "common/files.h"

namespace modelcache::store {

Result<StoreUsage> MeasureStoreUsage(const std::string& root) {
  namespace fs = std::filesystem;
  StoreUsage usage;
  struct statvfs vfs {};
  if (::statvfs(root.c_str(), &vfs) != 0) {
    return Error(Reason::StorageError, "cannot statvfs store " + root + ": " + ErrnoMessage(errno));
  }
  usage.free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;

  std::set<std::pair<dev_t, ino_t>> seen;
  std::error_code ec;
  fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec);
  if (ec) {
    return Error(Reason::StorageError, "cannot read store " + root + ": " + ec.message());
  }
  for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) {
      // A directory removed under us ends the walk; the gauge is an estimate refreshed at the
      // next scrape.
      break;
    }
    struct stat st {};
    // lstat: symlinks (the hub cache's snapshots) point at blobs counted on their own.
    if (::lstat(it->path().c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
      continue;
    }
    if (seen.emplace(st.st_dev, st.st_ino).second) {
      usage.used_bytes += static_cast<uint64_t>(st.st_size);
    }
  }
  return usage;
}

}  // namespace modelcache::store
