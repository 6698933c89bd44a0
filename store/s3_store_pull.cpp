// S3ArtifactStore's pulls: a committed version materialised as a local directory, verified and
// resumable (store/s3_store.h, "pulling"; docs/s3.md).

#include "store/s3_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>
#include <spdlog/fmt/fmt.h>

#include "common/files.h"
#include "common/sha256.h"
#include "common/strings.h"
#include "store/internal/dir_lock.h"
#include "store/internal/s3_store_parts.h"

namespace modelcache::store {

using internal::CheckNameVersion;
using internal::kManifestName;
using internal::ManifestDocument;
using internal::ParseManifest;

namespace {

namespace fs = std::filesystem;

// Ranged GETs of this size keep Pull's memory bounded.
constexpr uint64_t kPullRangeSize = 16ULL << 20;
// Presigned URLs handed to a PullDownloadFn live as long as S3 allows (7 days), so that no pull,
// however large, outlives them; they never leave the process whole (messages strip the query).
constexpr std::chrono::seconds kPullUrlLifetime{7 * 24 * 3600};

// Closes its descriptor (a lock on a pull's staging directory, a file being written).
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// True iff `dir` holds exactly `manifest` already: its modelcache.json has the same id and every
// file has its size and sha256.
bool AlreadyPulled(const std::string& dir, const ArtifactManifest& manifest) {
  auto text = ReadFile(dir + "/" + std::string(kManifestName));
  if (!text) {
    return false;
  }
  auto local = ParseManifest(*text, dir, manifest.name, manifest.version);
  if (!local || local->id != manifest.id) {
    return false;
  }
  for (const ManifestFile& f : manifest.files) {
    std::string path = dir + "/" + f.path;
    std::error_code ec;
    if (!fs::is_regular_file(fs::symlink_status(path, ec)) || fs::file_size(path, ec) != f.size) {
      return false;
    }
    auto sha = Sha256File(path);
    if (!sha || *sha != f.sha256) {
      return false;
    }
  }
  return true;
}

// Removes the staging directories (and their .incomplete siblings) named `prefix`* other than
// `keep` that no live pull holds locked: what killed pulls into the same target left behind.
void RemoveStaleStagings(const std::string& prefix, const std::string& keep) {
  fs::path parent = fs::path(prefix).parent_path();
  std::string stem = fs::path(prefix).filename().string();
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(parent, ec)) {
    std::string name = entry.path().filename().string();
    std::string path = entry.path().string();
    if (name.rfind(stem, 0) != 0 || path == keep || path == keep + ".incomplete") {
      continue;
    }
    std::string_view suffix = ".incomplete";
    bool scratch = name.size() > suffix.size() &&
                   name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    std::string staging = scratch ? path.substr(0, path.size() - suffix.size()) : path;
    Fd held(internal::LockDirAt(staging));
    if (held.get() < 0 && fs::exists(fs::symlink_status(staging, ec))) {
      continue;  // in use by another pull (or not a directory we made)
    }
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
}

// The committed manifest of `version` of `name` (empty: the current one). StorageError when
// there is no current version or the version is not committed.
Result<ArtifactManifest> CommittedManifest(S3ArtifactStore& store, const std::string& name,
                                           const std::string& version,
                                           const std::stop_token& stop) {
  if (auto r = CheckNameVersion(name, version); !r) {
    return r.error();
  }
  std::string wanted = version;
  if (wanted.empty()) {
    auto current = store.ReadCurrentVersion(name, stop);
    if (!current) {
      return current.error();
    }
    if (!*current) {
      return Error(Reason::StorageError, fmt::format("{} has no current version (nothing was "
                                                     "published under this name)",
                                                     store.location().Uri("artifacts/" + name)));
    }
    wanted = **current;
  }
  auto manifest = store.ReadVersion(name, wanted, stop);
  if (!manifest) {
    return manifest.error();
  }
  if (!*manifest) {
    return Error(Reason::StorageError,
                 fmt::format("{} has no modelcache.json: it is not a published version (an upload "
                             "that never committed, or one still in progress)",
                             store.location().Uri("artifacts/" + name + "/" + wanted)));
  }
  return std::move(**manifest);
}

// What a pull finds at its target directory.
enum class Target {
  Absent,         // nothing there: the staging directory is renamed to it
  Replaceable,    // an empty directory, or an earlier pull: exchanged for the new tree
  AlreadyPulled,  // this version, every file verified: nothing to do
};

// InvalidSpec when `target` is not a directory, or holds files that are not a pull's.
Result<Target> LookAtTarget(const fs::path& target, const ArtifactManifest& m) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(target, ec))) {
    return Target::Absent;
  }
  if (!fs::is_directory(fs::symlink_status(target, ec))) {
    return Error(Reason::InvalidSpec, target.string() + " exists and is not a directory");
  }
  bool is_pull = fs::exists(target / kManifestName, ec);
  if (!is_pull && !fs::is_empty(target, ec)) {
    return Error(Reason::InvalidSpec, target.string() +
                                          " exists, is not empty and holds no modelcache.json: "
                                          "pull never overwrites other files");
  }
  return is_pull && AlreadyPulled(target.string(), m) ? Target::AlreadyPulled : Target::Replaceable;
}

// Downloads `f` into `path` with ranged GETs of kPullRangeSize (bounded memory), verifying its
// size and sha256, and fsyncs it.
VoidResult DownloadRanged(S3ArtifactStore& store, const std::string& name,
                          const ArtifactManifest& m, const ManifestFile& f, const std::string& path,
                          S3TransferProgress& progress, const std::stop_token& stop) {
  if (auto r = MakeDirs(fs::path(path).parent_path().string()); !r) {
    return r.error();
  }
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) {
    return IoError("cannot create", path, errno);
  }
  const std::string& bucket = store.location().bucket;
  std::string key = store.FileKey(name, m.version, f.path);
  Hasher hasher(Hasher::Kind::Sha256);
  uint64_t written = 0;
  while (written < f.size) {
    uint64_t last = std::min(f.size, written + kPullRangeSize) - 1;
    auto chunk = store.client().GetObject(bucket, key, ByteRange{written, last}, stop);
    if (!chunk) {
      return chunk.error();
    }
    if (chunk->empty() || chunk->size() > last - written + 1) {
      return Error(Reason::ChecksumMismatch,
                   fmt::format("s3://{}/{}: answered {} bytes for range {}-{} of a {}-byte file",
                               bucket, key, chunk->size(), written, last, f.size));
    }
    hasher.Update(*chunk);
    if (int err = WriteAll(fd.get(), *chunk); err != 0) {
      return IoError("cannot write", path, err);
    }
    written += chunk->size();
    progress.bytes_done += chunk->size();
  }
  // A zero-length object is one GET of nothing; the size check above covers the rest.
  std::string sha = hasher.FinalHex();
  if (sha != f.sha256) {
    return Error(Reason::ChecksumMismatch,
                 fmt::format("{}: s3://{}/{} has sha256 {}, the manifest says {}", f.path, bucket,
                             key, sha, f.sha256));
  }
  if (::fsync(fd.get()) != 0) {
    return IoError("cannot fsync", path, errno);
  }
  return {};
}

// Writes modelcache.json into `staging` (last, as in the bucket) and fsyncs every directory.
VoidResult SealStaging(const std::string& staging, const ArtifactManifest& m) {
  if (auto r = WriteFileAtomic(staging + "/" + std::string(kManifestName), ManifestDocument(m));
      !r) {
    return r;
  }
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(staging, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_directory(ec)) {
      (void)SyncDir(it->path().string());
    }
  }
  (void)SyncDir(staging);
  return {};
}

// Makes `staging` the `target` directory: one rename when there is none, else an atomic exchange
// (or, where the filesystem cannot exchange, the old tree moved aside first), after which the
// old tree is removed. On an error `staging` is still there and `target` is as it was.
VoidResult ReplaceTarget(const std::string& staging, const fs::path& target, bool exists) {
  if (!exists) {
    if (::rename(staging.c_str(), target.c_str()) != 0) {
      return IoError("cannot rename " + staging + " to", target.string(), errno);
    }
    return {};
  }
  std::string old = staging;  // after the exchange, the old tree has the staging name
  if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) != 0) {
    int err = errno;
    if (err != EINVAL && err != ENOSYS) {
      return IoError("cannot exchange " + staging + " with", target.string(), err);
    }
    // No exchange on this filesystem: move the old tree aside, then rename.
    old = target.string() + ".old-" + UniqueSuffix();
    if (::rename(target.c_str(), old.c_str()) != 0) {
      return IoError("cannot move aside", target.string(), errno);
    }
    if (::rename(staging.c_str(), target.c_str()) != 0) {
      int rename_err = errno;
      (void)::rename(old.c_str(), target.c_str());
      return IoError("cannot rename " + staging + " to", target.string(), rename_err);
    }
  }
  std::error_code ec;
  fs::remove_all(old, ec);
  return {};
}

}  // namespace

void S3ArtifactStore::DiscardPartialPull(const std::string& dir, const std::string& version) {
  std::string staging = dir + ".partial-" + version;
  std::error_code ignored;
  fs::remove_all(staging, ignored);
  fs::remove_all(staging + ".incomplete", ignored);
}

VoidResult S3ArtifactStore::DownloadWith(const PullDownloadFn& download, const std::string& name,
                                         const ArtifactManifest& m, const std::string& staging,
                                         std::stop_token stop) {
  // Partial data next to the staging directory, not in it: nothing but the artifact's files may
  // end up in the pulled tree, whatever their names.
  std::string scratch = staging + ".incomplete";
  if (auto r = MakeDirs(scratch); !r) {
    return r.error();
  }
  std::vector<PullObject> objects;
  objects.reserve(m.files.size());
  for (size_t i = 0; i < m.files.size(); ++i) {
    const ManifestFile& f = m.files[i];
    PullObject o;
    o.path = f.path;
    o.key = FileKey(name, m.version, f.path);
    auto url = client_->PresignGetObject(location_.bucket, o.key, kPullUrlLifetime);
    if (!url) {
      return url.error();
    }
    o.url = std::move(*url);
    o.size = f.size;
    o.sha256 = f.sha256;
    o.dest = staging + "/" + f.path;
    o.scratch = scratch + "/" + std::to_string(i);
    if (auto r = MakeDirs(fs::path(o.dest).parent_path().string()); !r) {
      return r.error();
    }
    objects.push_back(std::move(o));
  }
  VoidResult result = download(objects, stop);
  std::error_code ec;
  if (!result) {
    return result;  // the partial data stays for the next pull of this version to resume
  }
  fs::remove_all(scratch, ec);
  for (const PullObject& o : objects) {
    auto st = fs::symlink_status(o.dest, ec);
    if (!fs::is_regular_file(st) || fs::file_size(o.dest, ec) != o.size) {
      return Error(Reason::Internal,
                   fmt::format("the download of {} ended without the {}-byte file {}", o.path,
                               o.size, o.dest));
    }
  }
  return {};
}

Result<PulledArtifact> S3ArtifactStore::Pull(const std::string& name, const std::string& version,
                                             const std::string& dir, S3TransferProgress& progress,
                                             std::stop_token stop,
                                             const PullDownloadFn& download) {
  auto manifest = CommittedManifest(*this, name, version, stop);
  if (!manifest) {
    return manifest.error();
  }
  const ArtifactManifest& m = *manifest;
  std::error_code ec;
  fs::path target = fs::absolute(fs::path(dir), ec).lexically_normal();
  if (ec) {
    return Error(Reason::StorageError,
                 fmt::format("cannot resolve the pull target {}: {}", dir, ec.message()));
  }
  if (!target.has_filename()) {
    target = target.parent_path();
  }
  PulledArtifact out{
      m.name, m.version, m.id, target.string(), m.size_bytes, static_cast<int64_t>(m.files.size()),
      false};
  progress.files_total = static_cast<int64_t>(m.files.size());
  progress.bytes_total = m.size_bytes;
  auto found = LookAtTarget(target, m);
  if (!found) {
    return found.error();
  }
  if (*found == Target::AlreadyPulled) {
    progress.bytes_done = m.size_bytes;
    progress.files_done = progress.files_total.load();
    out.already_present = true;
    return out;
  }

  // Stage next to the target (same filesystem, so the final rename is atomic). Through a
  // download function the staging directory is named by the version, so that a pull interrupted
  // (killed, cancelled, the network gone) resumes where it stopped: the files it verified are
  // there and the partial ones have their data and chunk maps in <staging>.incomplete. The version
  // names its content, so nothing of another version is ever taken. It is locked while in use;
  // the unlocked leftovers of other pulls into `dir` are removed first.
  std::string staging_prefix = target.string() + ".partial-";
  std::string staging = staging_prefix + (download ? m.version : UniqueSuffix());
  RemoveStaleStagings(staging_prefix, staging);
  auto fail = [&](Error e) -> Result<PulledArtifact> {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    fs::remove_all(staging + ".incomplete", ignored);
    return e;
  };
  if (auto r = MakeDirs(staging); !r) {
    return r.error();
  }
  Fd lock(internal::LockDirAt(staging));
  if (lock.get() < 0) {
    return Error(Reason::StorageError,
                 fmt::format("{} is being pulled by another process (its staging directory {} is "
                             "locked)",
                             target.string(), staging));
  }
  if (download) {
    if (auto r = DownloadWith(download, name, m, staging, stop); !r) {
      // What an interrupted transfer leaves is kept for a resume; after anything else (bytes
      // that did not verify, a broken download function) nothing is worth keeping.
      Reason why = r.error().reason;
      bool resumable = why == Reason::Cancelled || why == Reason::NetworkError ||
                       why == Reason::RateLimited || why == Reason::InsufficientStorage;
      return resumable ? r.error() : fail(r.error());
    }
    progress.bytes_done = m.size_bytes;
    progress.files_done = progress.files_total.load();
  } else {
    for (const ManifestFile& f : m.files) {
      if (stop.stop_requested()) {
        return fail(Error(Reason::Cancelled, "pull cancelled"));
      }
      if (auto r = DownloadRanged(*this, name, m, f, staging + "/" + f.path, progress, stop); !r) {
        return fail(r.error());
      }
      ++progress.files_done;
    }
  }
  if (auto r = SealStaging(staging, m); !r) {
    return fail(r.error());
  }
  if (auto r = ReplaceTarget(staging, target, *found == Target::Replaceable); !r) {
    return fail(r.error());
  }
  (void)SyncDir(target.parent_path().string());
  return out;
}

}  // namespace modelcache::store
