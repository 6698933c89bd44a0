// LocalStore: opening a store, the layout outside the hub cache and the artifacts (scratch,
// locks, state), which hub cache an endpoint uses, and crash cleanup. The hub cache is in
// local_hub_cache.cpp, the artifacts in local_artifacts.cpp.

#include "store/local_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "common/allow_list.h"
#include "common/files.h"
#include "common/sha256.h"
#include "common/strings.h"
#include "store/internal/dir_lock.h"
#include "store/internal/local_files.h"

namespace modelcache::store {

namespace fs = std::filesystem;
using internal::Contains;
using internal::IsSafeHubKey;
using internal::kCacheDirTag;
using internal::kStagingPrefix;
using internal::kTmpMarker;
using internal::kTrashPrefix;
using internal::LockDirAt;
using internal::PercentDecode;
using internal::RemoveTree;
using internal::WriteFileReplacing;

// ---------------------------------------------------------------------------------------------
// Open.

LocalStore::LocalStore(std::string root) : root_(std::move(root)) {}

LocalStore::~LocalStore() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [path, fd] : staging_locks_) {
    RemoveTree(path);
    ::close(fd);
  }
  staging_locks_.clear();
}

namespace {

// The absolute, normalized directory `root_or_uri` names (a path or a file:// URI).
Result<std::string> RootOf(const std::string& root_or_uri) {
  std::string path = root_or_uri;
  if (path.starts_with("file://")) {
    std::string rest = path.substr(7);
    if (rest.starts_with("localhost/")) {
      rest = rest.substr(9);
    }
    bool ok = false;
    path = PercentDecode(rest, &ok);
    if (!ok || path.empty() || path.front() != '/') {
      return Error(Reason::InvalidSpec,
                   "store URI '" + root_or_uri + "' must be file:///absolute/path");
    }
  } else if (Contains(path, "://")) {
    return Error(Reason::InvalidSpec,
                 "store URI '" + root_or_uri + "' is not a local path or file:// URI");
  }
  if (path.empty()) {
    return Error(Reason::InvalidSpec, "store path is empty");
  }
  std::error_code ec;
  fs::path abs = fs::absolute(path, ec);
  if (ec) {
    return Error(Reason::StorageError, "cannot make " + path + " absolute: " + ec.message());
  }
  std::string root = abs.lexically_normal().string();
  while (root.size() > 1 && root.back() == '/') {
    root.pop_back();
  }
  return root;
}

// The scratch directories RemoveOrphanedScratch may remove: <prefix><pid>…
constexpr std::string_view kShardSourcePrefix = "shard-src-";
constexpr std::string_view kPullScratchPrefix = "s3-pull-";

}  // namespace

Result<std::unique_ptr<LocalStore>> LocalStore::Open(const std::string& root_or_uri) {
  auto root = RootOf(root_or_uri);
  if (!root) {
    return root.error();
  }
  std::error_code ec;
  std::unique_ptr<LocalStore> store(new LocalStore(*root));
  for (const std::string& dir : {store->hub_dir(), store->artifacts_dir()}) {
    if (auto r = MakeDirs(dir); !r) {
      return r.error();
    }
  }
  std::string tag = store->hub_dir() + "/CACHEDIR.TAG";
  if (!fs::exists(tag, ec)) {
    if (auto r = WriteFileReplacing(tag, kCacheDirTag); !r) {
      return r.error();
    }
  }
  return store;
}

bool LocalStore::Exists(const std::string& root_or_uri) {
  auto root = RootOf(root_or_uri);
  std::error_code ec;
  return root && fs::is_directory(*root + "/artifacts", ec) && fs::is_directory(*root + "/hub", ec);
}

std::string LocalStore::DefaultStateDir() const { return root_ + "/state"; }

std::string LocalStore::RepoLockPath(const RepoRef& repo) const {
  std::string lock_name = RepoStoreName(repo);
  std::replace(lock_name.begin(), lock_name.end(), '/', '@');
  return root_ + "/locks/" + lock_name + ".lock";
}

std::string LocalStore::ShardSourceDir() const {
  // UniqueSuffix starts with our pid: RemoveOrphanedScratch removes the ones of dead processes.
  return root_ + "/tmp/" + std::string(kShardSourcePrefix) + UniqueSuffix();
}

std::string LocalStore::PullScratchDir(std::string_view tag) const {
  return root_ + "/tmp/" + std::string(kPullScratchPrefix) + std::to_string(::getpid()) + "_" +
         std::string(tag);
}

void LocalStore::RemoveOrphanedScratch(const std::string& root_or_uri) {
  auto root = RootOf(root_or_uri);
  if (!root) {
    return;
  }
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(*root + "/tmp", ec)) {
    std::string name = entry.path().filename().string();
    std::string_view prefix;
    for (std::string_view p : {kShardSourcePrefix, kPullScratchPrefix}) {
      if (name.starts_with(p)) {
        prefix = p;
      }
    }
    if (prefix.empty()) {
      continue;
    }
    auto pid = static_cast<pid_t>(std::atol(name.c_str() + prefix.size()));
    if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) {
      fs::remove_all(entry.path(), ec);
    }
  }
}

std::string LocalStore::hub_dir() const { return root_ + "/hub"; }
std::string LocalStore::hubs_dir() const { return root_ + "/hubs"; }
std::string LocalStore::artifacts_dir() const { return root_ + "/artifacts"; }

std::string LocalStore::HubDir(const std::string& hub) const {
  return hub.empty() ? hub_dir() : hubs_dir() + "/" + hub;
}

Result<std::string> LocalStore::HubFor(const std::string& endpoint,
                                       const std::string& own_endpoint) {
  auto normalized = NormalizeEndpoint(endpoint);
  if (!normalized) {
    return normalized.error();
  }
  const std::string record = root_ + "/hub-endpoint";
  auto owner = ReadFile(record);
  if (!owner) {
    struct stat st {};
    if (::stat(record.c_str(), &st) == 0 || errno != ENOENT) {
      return Error(Reason::StorageError, "cannot read " + record + ": " + owner.error().message);
    }
    auto own = NormalizeEndpoint(own_endpoint);
    if (!own || *own != *normalized) {
      return HubKey(endpoint);  // only the store's own endpoint may claim hub/
    }
    // Claim: write a temporary file, then link() it to the name, which fails if another
    // process claimed first; either way the record now holds one whole URL.
    std::string tmp = record + std::string(kTmpMarker) + UniqueSuffix();
    if (auto w = WriteFileReplacing(tmp, *normalized + "\n"); !w) {
      return w.error();
    }
    int linked = ::link(tmp.c_str(), record.c_str());
    int err = errno;
    ::unlink(tmp.c_str());
    if (linked != 0 && err != EEXIST) {
      return IoError("cannot write", record, err);
    }
    owner = ReadFile(record);
    if (!owner) {
      return owner.error();
    }
  }
  std::string claimed(TrimRight(*owner, "\n\r"));
  if (claimed == *normalized) {
    return std::string();
  }
  return HubKey(endpoint);
}

// ---------------------------------------------------------------------------------------------
// Cleanup.

VoidResult LocalStore::CleanupStaging() {
  std::error_code ec;
  // Artifacts: unlocked staging directories, trash, temporary "current" links.
  for (fs::directory_iterator names(artifacts_dir(), ec), end; !ec && names != end;
       names.increment(ec)) {
    std::error_code nec;
    if (!names->is_directory(nec) || names->is_symlink(nec)) {
      continue;
    }
    for (fs::directory_iterator it(names->path(), nec), e2; !nec && it != e2; it.increment(nec)) {
      std::string entry = it->path().filename().string();
      std::string path = it->path().string();
      if (entry.starts_with(kStagingPrefix)) {
        int fd = LockDirAt(path);
        if (fd < 0) {
          continue;  // locked: a live staging directory of this or another process
        }
        RemoveTree(path);
        ::close(fd);
      } else if (entry.starts_with(kTrashPrefix)) {
        RemoveTree(path);
      } else if (Contains(entry, kTmpMarker)) {
        ::unlink(path.c_str());
      }
    }
  }
  if (ec) {
    return Error(Reason::StorageError, "cannot list " + artifacts_dir() + ": " + ec.message());
  }

  // Hubs: temporary names in blobs/ (adoptions), snapshots/ (links) and refs/ (ref writes).
  for (const std::string& hub : ListHubDirs()) {
    if (auto r = CleanupHub(hub); !r) {
      return r;
    }
  }
  return {};
}

std::vector<std::string> LocalStore::ListHubDirs() const {
  std::vector<std::string> hubs = {hub_dir()};
  std::error_code ec;
  for (fs::directory_iterator it(hubs_dir(), ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code dec;
    std::string key = it->path().filename().string();
    if (IsSafeHubKey(key) && it->is_directory(dec) && !it->is_symlink(dec)) {
      hubs.push_back(it->path().string());
    }
  }
  std::sort(hubs.begin() + 1, hubs.end());
  return hubs;
}

VoidResult LocalStore::CleanupHub(const std::string& hub) {
  std::error_code ec;
  for (fs::directory_iterator repos(hub, ec), end; !ec && repos != end; repos.increment(ec)) {
    std::string folder = repos->path().filename().string();
    std::error_code rec;
    if (!Contains(folder, "--") || !repos->is_directory(rec) || repos->is_symlink(rec)) {
      continue;
    }
    for (const char* sub : {"blobs", "snapshots", "refs"}) {
      fs::path base = repos->path() / sub;
      std::error_code wec;
      if (!fs::is_directory(base, wec)) {
        continue;
      }
      fs::recursive_directory_iterator it(base, wec);
      for (fs::recursive_directory_iterator e2; !wec && it != e2; it.increment(wec)) {
        if (Contains(it->path().filename().string(), kTmpMarker)) {
          std::error_code uec;
          fs::remove(it->path(), uec);
        }
      }
    }
  }
  if (ec) {
    return Error(Reason::StorageError, "cannot list " + hub + ": " + ec.message());
  }
  return {};
}

}  // namespace modelcache::store
