// LocalStore, the hub cache: a huggingface_hub-compatible cache per Hub endpoint (blobs,
// snapshots, refs, blob locks) and the records of what modelcache wrote into it.

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

#include <spdlog/fmt/fmt.h>

#include "common/allow_list.h"
#include "common/files.h"
#include "common/sha256.h"
#include "common/strings.h"
#include "store/internal/local_files.h"
#include "store/local_store.h"

namespace modelcache::store {

namespace fs = std::filesystem;
using internal::Contains;
using internal::CopyFileSynced;
using internal::IsHex;
using internal::LinkUnsupported;
using internal::ParentDir;
using internal::ReadLink;
using internal::ReplaceSymlink;
using internal::ValidateComponent;
using internal::ValidateEtag;
using internal::ValidateRelPath;
using internal::ValidateRepo;
using internal::WriteFileReplacing;
using internal::kTmpMarker;
using internal::kTmpNameAttempts;

// ---------------------------------------------------------------------------------------------
// Names.

std::string RepoFolderName(const RepoRef& repo) {
  std::string out = repo.type + "s";
  size_t start = 0;
  while (true) {
    size_t slash = repo.id.find('/', start);
    out += "--";
    out += repo.id.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    if (slash == std::string::npos) {
      return out;
    }
    start = slash + 1;
  }
}

std::string RepoStoreName(const RepoRef& repo) {
  return repo.hub.empty() ? RepoFolderName(repo) : repo.hub + "/" + RepoFolderName(repo);
}

RepoRef RepoFromStoreName(const std::string& store_name) {
  RepoRef repo;
  size_t slash = store_name.find('/');
  std::string folder = store_name;
  if (slash != std::string::npos) {
    repo.hub = store_name.substr(0, slash);
    folder = store_name.substr(slash + 1);
  }
  // "models--org--name" -> ("model", "org/name"); "models--gpt2" -> ("model", "gpt2").
  size_t dashes = folder.find("--");
  std::string type = folder.substr(0, dashes);
  if (dashes == std::string::npos || type.size() < 2 || type.back() != 's') {
    return repo;  // empty type: refused by every call that validates
  }
  repo.type = type.substr(0, type.size() - 1);
  std::string rest = folder.substr(dashes + 2);
  size_t sep = rest.find("--");
  repo.id = sep == std::string::npos ? rest : rest.substr(0, sep) + "/" + rest.substr(sep + 2);
  return repo;
}

Result<std::string> NormalizeEndpoint(const std::string& endpoint) {
  auto location = AllowList::ParseLocation(endpoint);
  if (!location) {
    return location.error();
  }
  if (location->scheme != "http" && location->scheme != "https") {
    return Error(Reason::InvalidSpec, "endpoint '" + endpoint + "' is not an http(s) URL");
  }
  std::string out = location->scheme + "://" + location->authority;
  for (const auto& segment : location->segments) {
    if (!segment.empty()) {
      out += "/" + segment;
    }
  }
  return out;
}

Result<std::string> HubKey(const std::string& endpoint) {
  auto normalized = NormalizeEndpoint(endpoint);
  if (!normalized) {
    return normalized.error();
  }
  std::string readable;
  for (char c : std::string_view(*normalized).substr(normalized->find("://") + 3)) {
    bool safe = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                c == '-' || c == '.';
    readable += safe ? c : '_';
  }
  readable = normalized->substr(0, normalized->find(':')) + "_" + readable.substr(0, 80);
  return readable + "-" + Sha256Hex(*normalized).substr(0, 16);
}

std::string LocalStore::WrittenRecordPath(const RepoRef& repo, const std::string& commit) const {
  return root_ + "/written/" + RepoStoreName(repo) + "/" + commit + ".json";
}

Result<std::optional<std::map<std::string, std::string>>> LocalStore::ReadWritten(
    const RepoRef& repo, const std::string& commit) const {
  using Files = std::map<std::string, std::string>;
  const std::string path = WrittenRecordPath(repo, commit);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return std::optional<Files>();
    }
    return IoError("cannot stat", path, errno);
  }
  auto text = ReadFile(path);
  if (!text) {
    return text.error();
  }
  nlohmann::json doc = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("files") || !doc["files"].is_object()) {
    return Error(Reason::StorageError, path + " is not a record of written files");
  }
  Files files;
  for (const auto& [file, etag] : doc["files"].items()) {
    if (!etag.is_string()) {
      return Error(Reason::StorageError, fmt::format("{}: files.{} is not a string", path, file));
    }
    files[file] = etag.get<std::string>();
  }
  return std::optional<Files>(std::move(files));
}

VoidResult LocalStore::RecordWritten(const RepoRef& repo, const std::string& commit,
                                     const std::map<std::string, std::string>& files) {
  if (auto r = ValidateRepo(repo); !r) {
    return r;
  }
  if (auto r = ValidateComponent("commit", commit); !r) {
    return r;
  }
  auto existing = ReadWritten(repo, commit);
  // An unreadable record is replaced: what this job writes is recorded either way.
  std::map<std::string, std::string> merged;
  if (existing && *existing) {
    merged = **existing;
  }
  for (const auto& [path, etag] : files) {
    if (auto r = ValidateRelPath("file path", path); !r) {
      return r;
    }
    if (auto r = ValidateEtag(etag); !r) {
      return r;
    }
    merged[path] = etag;
  }
  if (existing && *existing && **existing == merged) {
    return {};
  }
  nlohmann::json doc = {{"formatVersion", 1}, {"files", merged}};
  std::string path = WrittenRecordPath(repo, commit);
  if (auto r = MakeDirs(ParentDir(path)); !r) {
    return r;
  }
  return WriteFileReplacing(path, doc.dump(1));
}

// ---------------------------------------------------------------------------------------------
// Hub cache.

std::string LocalStore::RepoDir(const RepoRef& repo) const {
  return HubDir(repo.hub) + "/" + RepoFolderName(repo);
}

std::string LocalStore::BlobPath(const RepoRef& repo, const std::string& etag) const {
  return RepoDir(repo) + "/blobs/" + etag;
}

std::string LocalStore::IncompletePath(const RepoRef& repo, const std::string& etag) const {
  return BlobPath(repo, etag) + ".incomplete";
}

std::string LocalStore::SnapshotPath(const RepoRef& repo, const std::string& commit,
                                     const std::string& path) const {
  return SnapshotDir(repo, commit) + "/" + path;
}

std::string LocalStore::SnapshotDir(const RepoRef& repo, const std::string& commit) const {
  return RepoDir(repo) + "/snapshots/" + commit;
}

bool LocalStore::HasBlob(const RepoRef& repo, const std::string& etag, uint64_t size) const {
  if (!ValidateRepo(repo) || !ValidateEtag(etag)) {
    return false;
  }
  struct stat st {};
  return ::stat(BlobPath(repo, etag).c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         static_cast<uint64_t>(st.st_size) == size;
}

VoidResult LocalStore::VerifyBlob(const RepoRef& repo, const std::string& etag,
                                  uint64_t size) const {
  if (auto r = ValidateRepo(repo); !r) {
    return r;
  }
  if (auto r = ValidateEtag(etag); !r) {
    return r;
  }
  bool sha256 = etag.size() == 64 && IsHex(etag);
  bool sha1 = etag.size() == 40 && IsHex(etag);
  if (!sha256 && !sha1) {
    return Error(Reason::InvalidSpec,
                 "etag '" + etag + "' is neither a sha256 nor a git blob sha1");
  }
  std::string path = BlobPath(repo, etag);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return IoError("cannot stat blob", path, errno);
  }
  if (!S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != size) {
    return Error(Reason::ChecksumMismatch, "blob " + path + " has " + std::to_string(st.st_size) +
                                               " bytes, expected " + std::to_string(size));
  }
  Result<std::string> digest = sha256 ? Sha256File(path) : GitBlobSha1File(path);
  if (!digest) {
    return digest.error();
  }
  if (*digest != etag) {
    return Error(Reason::ChecksumMismatch,
                 "blob " + path + " hashes to " + *digest + ", expected " + etag);
  }
  return {};
}

VoidResult LocalStore::RemoveBlob(const RepoRef& repo, const std::string& etag) {
  if (auto r = ValidateRepo(repo); !r) {
    return r;
  }
  if (auto r = ValidateEtag(etag); !r) {
    return r;
  }
  std::string path = BlobPath(repo, etag);
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return IoError("cannot remove blob", path, errno);
  }
  return {};
}

Result<bool> LocalStore::AdoptBlob(const RepoRef& repo, const std::string& etag, uint64_t size) {
  if (auto r = ValidateRepo(repo); !r) {
    return r.error();
  }
  if (auto r = ValidateEtag(etag); !r) {
    return r.error();
  }
  if (HasBlob(repo, etag, size)) {
    return true;
  }
  // Within the repo's own hub cache only: a blob name is what an endpoint claimed, and one
  // endpoint's claims never stand in for another's.
  const std::string own_folder = RepoFolderName(repo);
  const std::string hub = HubDir(repo.hub);
  std::error_code ec;
  std::string source;
  if (!fs::exists(hub, ec)) {
    return false;  // another endpoint's cache, nothing fetched into it yet
  }
  for (fs::directory_iterator it(hub, ec), end; !ec && it != end; it.increment(ec)) {
    std::string folder = it->path().filename().string();
    if (folder == own_folder || !Contains(folder, "--")) {
      continue;
    }
    std::string candidate = it->path().string() + "/blobs/" + etag;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        static_cast<uint64_t>(st.st_size) == size) {
      source = candidate;
      break;
    }
  }
  if (ec) {
    return Error(Reason::StorageError, "cannot list " + hub + ": " + ec.message());
  }
  if (source.empty()) {
    return false;
  }
  const std::string dest = BlobPath(repo, etag);
  if (auto r = MakeDirs(ParentDir(dest)); !r) {
    return r.error();
  }
  // Link (or copy) under a temporary name, then rename: blobs/<etag> must only ever appear whole.
  for (int attempt = 0; attempt < kTmpNameAttempts; ++attempt) {
    std::string tmp = dest + std::string(kTmpMarker) + UniqueSuffix();
    if (::link(source.c_str(), tmp.c_str()) != 0) {
      int err = errno;
      if (err == ENOENT) {
        return false;  // the source blob was removed meanwhile
      }
      if (!LinkUnsupported(err)) {
        return IoError("cannot link blob to", tmp, err);
      }
      if (auto r = CopyFileSynced(source, tmp); !r) {
        return r.error();
      }
    }
    if (::rename(tmp.c_str(), dest.c_str()) == 0) {
      if (auto r = SyncDir(ParentDir(dest)); !r) {
        return r.error();
      }
      return true;
    }
    int err = errno;
    ::unlink(tmp.c_str());
    if (err != ENOENT) {
      return IoError("cannot rename blob onto", dest, err);
    }
  }
  return Error(Reason::StorageError,
               "cannot adopt blob " + dest + ": temporary name removed repeatedly");
}

Result<std::optional<BlobLock>> LocalStore::TryLockBlob(const RepoRef& repo,
                                                        const std::string& etag) {
  if (auto r = ValidateRepo(repo); !r) {
    return r.error();
  }
  if (auto r = ValidateEtag(etag); !r) {
    return r.error();
  }
  std::string path = HubDir(repo.hub) + "/.locks/" + RepoFolderName(repo) + "/" + etag + ".lock";
  auto lock = FileLock::TryLock(path, LockMode::Exclusive);
  if (!lock) {
    return lock.error();
  }
  if (!lock->held()) {
    return std::optional<BlobLock>();
  }
  return std::optional<BlobLock>(std::move(*lock));
}

Result<BlobLock> LocalStore::LockBlob(const RepoRef& repo, const std::string& etag) {
  if (auto r = ValidateRepo(repo); !r) {
    return r.error();
  }
  if (auto r = ValidateEtag(etag); !r) {
    return r.error();
  }
  std::string path = HubDir(repo.hub) + "/.locks/" + RepoFolderName(repo) + "/" + etag + ".lock";
  return FileLock::Lock(path, LockMode::Exclusive);
}

VoidResult LocalStore::LinkSnapshot(const RepoRef& repo, const std::string& commit,
                                    const std::string& path, const std::string& etag) {
  if (auto r = ValidateRepo(repo); !r) {
    return r;
  }
  if (auto r = ValidateComponent("commit", commit); !r) {
    return r;
  }
  if (auto r = ValidateRelPath("file path", path); !r) {
    return r;
  }
  if (auto r = ValidateEtag(etag); !r) {
    return r;
  }
  // os.path.relpath(blob, dirname(pointer)) in huggingface_hub: two levels up from
  // snapshots/<commit>/, plus one per sub-directory of the file.
  std::string target;
  for (size_t i = 0, depth = 2 + static_cast<size_t>(std::count(path.begin(), path.end(), '/'));
       i < depth; ++i) {
    target += "../";
  }
  target += "blobs/" + etag;
  std::string link_path = SnapshotPath(repo, commit, path);
  if (ReadLink(link_path) == target) {
    return {};
  }
  if (auto r = MakeDirs(ParentDir(link_path)); !r) {
    return r;
  }
  // Not fsynced: a snapshot link is derived data that the next reconcile recreates, and a
  // directory fsync per file would dominate the cost of caching a repo of small files.
  return ReplaceSymlink(target, link_path, /*sync=*/false);
}

VoidResult LocalStore::WriteRef(const RepoRef& repo, const std::string& revision,
                                const std::string& commit) {
  if (auto r = ValidateRepo(repo); !r) {
    return r;
  }
  if (auto r = ValidateRelPath("revision", revision); !r) {
    return r;
  }
  if (auto r = ValidateComponent("commit", commit); !r) {
    return r;
  }
  if (revision == commit) {
    return {};
  }
  std::string path = RepoDir(repo) + "/refs/" + revision;
  if (auto current = ReadRef(repo, revision); current && *current == commit) {
    return {};
  }
  return WriteFileReplacing(path, commit);
}

Result<std::optional<std::string>> LocalStore::ReadRef(const RepoRef& repo,
                                                       const std::string& revision) const {
  if (auto r = ValidateRepo(repo); !r) {
    return r.error();
  }
  if (auto r = ValidateRelPath("revision", revision); !r) {
    return r.error();
  }
  std::string path = RepoDir(repo) + "/refs/" + revision;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR) {
      return std::optional<std::string>();
    }
    return IoError("cannot stat ref", path, errno);
  }
  auto content = ReadFile(path);
  if (!content) {
    return content.error();
  }
  return std::optional<std::string>(std::move(*content));
}

}  // namespace modelcache::store
