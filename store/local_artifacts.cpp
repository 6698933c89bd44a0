// LocalStore, the artifacts: staging, publishing and reading immutable versions, and the
// ArtifactStore interface.

#include "store/local_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
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
using internal::CopyFileSynced;
using internal::FsyncPath;
using internal::IsHex;
using internal::IsSafeRelPath;
using internal::kCurrentName;
using internal::kManifestName;
using internal::kStagingPrefix;
using internal::kTmpNameAttempts;
using internal::kTrashPrefix;
using internal::LinkUnsupported;
using internal::LockDirAt;
using internal::ParentDir;
using internal::ReadLink;
using internal::RemoveTree;
using internal::ReplaceSymlink;
using internal::ValidateComponent;
using internal::ValidateRelPath;
using internal::WriteFileReplacing;

// ---------------------------------------------------------------------------------------------
// Artifacts.

Result<std::string> LocalStore::CreateStaging(const std::string& name) {
  if (auto r = ValidateComponent("artifact name", name); !r) {
    return r.error();
  }
  if (name == kCurrentName) {
    return Error(Reason::InvalidSpec, "artifact name 'current' is reserved");
  }
  std::string dir = artifacts_dir() + "/" + name;
  if (auto r = MakeDirs(dir); !r) {
    return r.error();
  }
  for (int attempt = 0; attempt < kTmpNameAttempts; ++attempt) {
    std::string path = dir + "/" + std::string(kStagingPrefix) + UniqueSuffix();
    if (::mkdir(path.c_str(), 0755) != 0) {
      if (errno == EEXIST) {
        continue;
      }
      return IoError("cannot create staging directory", path, errno);
    }
    // A CleanupStaging elsewhere may lock and remove the directory between our mkdir and our
    // flock; LockDirAt notices (the name no longer leads to the inode we locked) and we retry.
    int fd = LockDirAt(path);
    if (fd < 0) {
      continue;
    }
    std::lock_guard<std::mutex> lock(mu_);
    staging_locks_[path] = fd;
    return path;
  }
  return Error(Reason::StorageError, "cannot create a staging directory under " + dir);
}

VoidResult LocalStore::StageFile(const std::string& staging, const std::string& relpath,
                                 const std::string& src) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (staging_locks_.count(staging) == 0) {
      return Error(Reason::InvalidSpec, staging + " is not a staging directory of this store");
    }
  }
  if (auto r = ValidateRelPath("artifact file path", relpath); !r) {
    return r;
  }
  if (relpath == kManifestName) {
    return Error(Reason::InvalidSpec, "artifact file path 'modelcache.json' is reserved");
  }
  std::string dst = staging + "/" + relpath;
  if (auto r = MakeDirs(ParentDir(dst)); !r) {
    return r;
  }
  if (::unlink(dst.c_str()) != 0 && errno != ENOENT) {
    return IoError("cannot replace", dst, errno);
  }
  // AT_SYMLINK_FOLLOW: link the blob a snapshot symlink names, not the (relative) symlink itself.
  if (::linkat(AT_FDCWD, src.c_str(), AT_FDCWD, dst.c_str(), AT_SYMLINK_FOLLOW) == 0) {
    return {};
  }
  int err = errno;
  if (!LinkUnsupported(err)) {
    return IoError("cannot link " + src + " to", dst, err);
  }
  return CopyFileSynced(src, dst);
}

VoidResult LocalStore::DiscardStaging(const std::string& staging) {
  int fd = -1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = staging_locks_.find(staging);
    if (it == staging_locks_.end()) {
      return Error(Reason::InvalidSpec, staging + " is not a staging directory of this store");
    }
    fd = it->second;
    staging_locks_.erase(it);
  }
  RemoveTree(staging);
  ::close(fd);
  return {};
}

namespace {

// Checks that `staging` holds exactly the manifest's files with their sizes, and fsyncs every
// file and directory in it (hard-linked blobs are already durable, so their fsync is cheap; shard
// outputs and copies may not be).
VoidResult CheckAndSyncStaging(const std::string& staging, const ArtifactManifest& manifest) {
  std::map<std::string, uint64_t> expected;
  for (const ManifestFile& f : manifest.files) {
    expected[f.path] = f.size;
  }
  std::vector<std::string> dirs = {staging};
  std::error_code ec;
  fs::recursive_directory_iterator it(staging, ec);
  for (fs::recursive_directory_iterator end; !ec && it != end; it.increment(ec)) {
    std::string full = it->path().string();
    std::string rel = full.substr(staging.size() + 1);
    fs::file_status st = it->symlink_status(ec);
    if (ec) {
      break;
    }
    if (fs::is_directory(st)) {
      dirs.push_back(full);
      continue;
    }
    if (rel == kManifestName) {
      continue;
    }
    if (!fs::is_regular_file(st)) {
      return Error(Reason::Internal, "staged " + rel + " is not a regular file");
    }
    auto want = expected.find(rel);
    if (want == expected.end()) {
      return Error(Reason::Internal, "staged file " + rel + " is not in the manifest");
    }
    uint64_t size = fs::file_size(it->path(), ec);
    if (ec) {
      break;
    }
    if (size != want->second) {
      return Error(Reason::ChecksumMismatch, "staged file " + rel + " has " + std::to_string(size) +
                                                 " bytes, manifest says " +
                                                 std::to_string(want->second));
    }
    expected.erase(want);
    if (auto r = FsyncPath(full, false); !r) {
      return r;
    }
  }
  if (ec) {
    return Error(Reason::StorageError, "cannot walk " + staging + ": " + ec.message());
  }
  if (!expected.empty()) {
    return Error(Reason::StorageError,
                 "manifest file " + expected.begin()->first + " is missing from " + staging);
  }
  // Children before parents, so each directory entry is durable before its parent's.
  std::reverse(dirs.begin(), dirs.end());
  for (const std::string& d : dirs) {
    if (auto r = FsyncPath(d, true); !r) {
      return r;
    }
  }
  return {};
}

VoidResult ValidateManifestForPublish(const ArtifactManifest& m) {
  std::set<std::string> seen;
  for (const ManifestFile& f : m.files) {
    if (auto r = ValidateRelPath("artifact file path", f.path); !r) {
      return r;
    }
    if (f.path == kManifestName) {
      return Error(Reason::InvalidSpec, "artifact file path 'modelcache.json' is reserved");
    }
    if (!seen.insert(f.path).second) {
      return Error(Reason::Internal, "manifest lists " + f.path + " twice");
    }
    if (f.sha256.size() != 64 || !IsHex(f.sha256)) {
      return Error(Reason::Internal,
                   "manifest sha256 of " + f.path + " is not 64 lower-case hex: " + f.sha256);
    }
  }
  return {};
}

}  // namespace

Result<PublishedArtifact> LocalStore::Publish(const std::string& staging, ArtifactManifest manifest,
                                              PublishMode mode) {
  int lock_fd = -1;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = staging_locks_.find(staging);
    if (it == staging_locks_.end()) {
      return Error(Reason::InvalidSpec, staging + " is not a staging directory of this store");
    }
    lock_fd = it->second;
  }
  // From here on the staging directory is ours to consume, whatever happens.
  Result<PublishedArtifact> result = [&]() -> Result<PublishedArtifact> {
    const std::string dir = ParentDir(staging);
    if (dir != artifacts_dir() + "/" + manifest.name) {
      return Error(Reason::Internal, "staging directory " + staging +
                                         " does not belong to artifact '" + manifest.name + "'");
    }
    FinalizeIdentity(manifest);
    if (auto r = ValidateManifestForPublish(manifest); !r) {
      return r.error();
    }
    std::string document;
    try {
      document = ManifestToJson(manifest).dump(2) + "\n";
    } catch (const nlohmann::json::exception& e) {
      return Error(Reason::InvalidSpec, std::string("manifest is not valid UTF-8: ") + e.what());
    }
    if (auto r = WriteFileReplacing(staging + "/" + std::string(kManifestName), document); !r) {
      return r.error();
    }
    if (auto r = CheckAndSyncStaging(staging, manifest); !r) {
      return r.error();
    }

    const std::string version_path = dir + "/" + manifest.version;
    bool published = ::rename(staging.c_str(), version_path.c_str()) == 0;
    if (!published) {
      int err = errno;
      if (err != ENOTEMPTY && err != EEXIST) {
        return IoError("cannot rename " + staging + " to", version_path, err);
      }
      // The version exists. Identical inputs give identical ids; anything else is a corrupt
      // store (or a 48-bit version prefix collision), which must not be papered over.
      auto existing = ReadVersion(manifest.name, manifest.version);
      if (!existing) {
        if (mode == PublishMode::ReuseExisting) {
          return existing.error();
        }
      } else if (!*existing && mode == PublishMode::ReuseExisting) {
        return Error(Reason::StorageError,
                     "version " + version_path + " vanished while publishing; retry");
      } else if (*existing && (*existing)->id != manifest.id) {
        return Error(Reason::StorageError, "version " + version_path + " holds " + (*existing)->id +
                                               ", not " + manifest.id);
      }
      if (mode == PublishMode::ReplaceExisting) {
        // RENAME_EXCHANGE swaps both names in one step, so `version_path` never disappears.
        if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, version_path.c_str(),
                        RENAME_EXCHANGE) != 0) {
          int xerr = errno;
          if (xerr != EINVAL && xerr != ENOSYS && xerr != ENOTSUP) {
            return IoError("cannot exchange " + staging + " with", version_path, xerr);
          }
          // No exchange on this filesystem: move the old version aside, then rename. Readers may
          // see the version missing for that instant.
          std::string trash = dir + "/" + std::string(kTrashPrefix) + UniqueSuffix();
          if (::rename(version_path.c_str(), trash.c_str()) != 0) {
            return IoError("cannot move aside", version_path, errno);
          }
          if (::rename(staging.c_str(), version_path.c_str()) != 0) {
            return IoError("cannot rename " + staging + " to", version_path, errno);
          }
          RemoveTree(trash);
        }
        // After the exchange, `staging` names the old version; the caller below removes it.
      }
    }
    if (auto r = SyncDir(dir); !r) {
      return r.error();
    }
    if (auto r = ReplaceSymlink(manifest.version, dir + "/" + std::string(kCurrentName),
                                /*sync=*/true);
        !r) {
      return r.error();
    }
    return Describe(manifest);
  }();

  // Whatever `staging` names now (an unpublished directory, a reused duplicate, the old version
  // after an exchange, or nothing after a rename) is garbage.
  RemoveTree(staging);
  {
    std::lock_guard<std::mutex> lock(mu_);
    staging_locks_.erase(staging);
  }
  ::close(lock_fd);
  return result;
}

PublishedArtifact LocalStore::Describe(const ArtifactManifest& manifest) const {
  PublishedArtifact a;
  a.name = manifest.name;
  a.version = manifest.version;
  a.id = manifest.id;
  a.path = VersionDir(manifest.name, manifest.version);
  a.uri = "file://" + PercentEncode(a.path, /*keep_slash=*/true);
  a.size_bytes = manifest.size_bytes;
  a.files = static_cast<int64_t>(manifest.files.size());
  return a;
}

std::string LocalStore::VersionDir(const std::string& name, const std::string& version) const {
  return artifacts_dir() + "/" + name + "/" + version;
}

std::string LocalStore::Uri() const { return "file://" + PercentEncode(root_, /*keep_slash=*/true); }

Result<std::optional<std::string>> LocalStore::ReadCurrentVersion(const std::string& name,
                                                                  std::stop_token /*stop*/) {
  auto current = ReadCurrent(name);
  if (!current) {
    return current.error();
  }
  if (!*current) {
    return std::optional<std::string>();
  }
  return std::optional<std::string>((*current)->version);
}

Result<std::optional<ArtifactManifest>> LocalStore::ReadVersion(const std::string& name,
                                                                const std::string& version,
                                                                std::stop_token /*stop*/) {
  return static_cast<const LocalStore&>(*this).ReadVersion(name, version);
}

bool LocalStore::Holds(const PublishedArtifact& artifact, std::stop_token /*stop*/) {
  auto version = static_cast<const LocalStore&>(*this).ReadVersion(artifact.name, artifact.version);
  return version && version->has_value();
}

Result<std::optional<ArtifactManifest>> LocalStore::ReadCurrent(const std::string& name) const {
  if (auto r = ValidateComponent("artifact name", name); !r) {
    return r.error();
  }
  std::string link = artifacts_dir() + "/" + name + "/" + std::string(kCurrentName);
  std::optional<std::string> target = ReadLink(link);
  if (!target) {
    struct stat st {};
    if (::lstat(link.c_str(), &st) == 0) {
      return Error(Reason::StorageError, link + " is not a symlink");
    }
    return std::optional<ArtifactManifest>();
  }
  if (!ValidateComponent("current target", *target)) {
    return Error(Reason::StorageError, link + " points outside the artifact: " + *target);
  }
  auto manifest = ReadVersion(name, *target);
  if (!manifest) {
    return manifest.error();
  }
  if (!*manifest) {
    return Error(Reason::StorageError, link + " points to missing version " + *target);
  }
  return manifest;
}

Result<std::optional<ArtifactManifest>> LocalStore::ReadVersion(const std::string& name,
                                                                const std::string& version) const {
  if (auto r = ValidateComponent("artifact name", name); !r) {
    return r.error();
  }
  if (auto r = ValidateComponent("artifact version", version); !r) {
    return r.error();
  }
  std::string dir = VersionDir(name, version);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      return std::optional<ArtifactManifest>();
    }
    return IoError("cannot stat", dir, errno);
  }
  std::string path = dir + "/" + std::string(kManifestName);
  auto text = ReadFile(path);
  if (!text) {
    return text.error();
  }
  nlohmann::json doc = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) {
    return Error(Reason::StorageError, path + " is not valid JSON");
  }
  auto manifest = ManifestFromJson(doc);
  if (!manifest) {
    manifest.error().message = path + ": " + manifest.error().message;
    return manifest.error();
  }
  ArtifactManifest check = *manifest;
  FinalizeIdentity(check);
  if (check.id != manifest->id || check.version != manifest->version ||
      manifest->version != version || manifest->name != name ||
      check.size_bytes != manifest->size_bytes) {
    return Error(Reason::StorageError, path + " does not match its id " + manifest->id +
                                           " (recomputed " + check.id + ")");
  }
  return std::optional<ArtifactManifest>(std::move(*manifest));
}

Result<std::vector<std::string>> LocalStore::ListVersions(const std::string& name) const {
  if (auto r = ValidateComponent("artifact name", name); !r) {
    return r.error();
  }
  std::vector<std::string> versions;
  std::string dir = artifacts_dir() + "/" + name;
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    return versions;
  }
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string entry = it->path().filename().string();
    std::error_code sec;
    if (entry.front() == '.' || entry == kCurrentName || !it->is_directory(sec) ||
        it->is_symlink(sec)) {
      continue;
    }
    versions.push_back(entry);
  }
  if (ec) {
    return Error(Reason::StorageError, "cannot list " + dir + ": " + ec.message());
  }
  std::sort(versions.begin(), versions.end());
  return versions;
}

VoidResult LocalStore::VerifyVersion(const std::string& name, const std::string& version) const {
  auto manifest = ReadVersion(name, version);
  if (!manifest) {
    return manifest.error();
  }
  if (!*manifest) {
    return Error(Reason::StorageError, "artifact " + name + " has no version " + version);
  }
  std::string dir = VersionDir(name, version);
  for (const ManifestFile& f : (*manifest)->files) {
    if (!IsSafeRelPath(f.path)) {
      return Error(Reason::StorageError, "manifest of " + dir + " lists unsafe path " + f.path);
    }
    std::string path = dir + "/" + f.path;
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      return IoError("cannot stat artifact file", path, errno);
    }
    if (!S_ISREG(st.st_mode)) {
      return Error(Reason::ChecksumMismatch, path + " is not a regular file");
    }
    if (static_cast<uint64_t>(st.st_size) != f.size) {
      return Error(Reason::ChecksumMismatch, path + " has " + std::to_string(st.st_size) +
                                                 " bytes, manifest says " + std::to_string(f.size));
    }
    auto digest = Sha256File(path);
    if (!digest) {
      return digest.error();
    }
    if (*digest != f.sha256) {
      return Error(Reason::ChecksumMismatch,
                   path + " hashes to " + *digest + ", manifest says " + f.sha256);
    }
  }
  return {};
}

}  // namespace modelcache::store
