#include "store/local_store.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstdio>
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

namespace modelcache::store {

namespace fs = std::filesystem;
using internal::LockDirAt;

namespace {

// Marks every temporary name the store creates, so CleanupStaging can find crash leftovers without
// guessing (huggingface_hub's own names never contain it).
constexpr std::string_view kTmpMarker = ".modelcache-tmp-";
constexpr std::string_view kStagingPrefix = ".staging-";
constexpr std::string_view kTrashPrefix = ".trash-";
constexpr std::string_view kManifestName = "modelcache.json";
constexpr std::string_view kCurrentName = "current";
constexpr int kTmpNameAttempts = 5;

// Byte-for-byte what huggingface_hub writes (constants.py / file_download.py), so tools that
// recognise caches by their tag treat both the same.
constexpr std::string_view kCacheDirTag =
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by huggingface_hub.\n"
    "# For information about cache directory tags, see:\n"
    "#\thttps://bford.info/cachedir/\n";

bool IsSafeComponent(std::string_view s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string_view::npos &&
         s.find('\0') == std::string_view::npos;
}

// A relative '/'-separated path with no empty, "." or ".." segment.
bool IsSafeRelPath(std::string_view s) {
  if (s.empty() || s.front() == '/') {
    return false;
  }
  size_t start = 0;
  while (true) {
    size_t slash = s.find('/', start);
    std::string_view seg =
        s.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (!IsSafeComponent(seg)) {
      return false;
    }
    if (slash == std::string_view::npos) {
      return true;
    }
    start = slash + 1;
  }
}

bool IsHex(std::string_view s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// Etags name blobs, so they must stay inside blobs/ and never look like one of our temporary or
// .incomplete names: letters, digits, '-' and '_' only.
bool IsSafeEtag(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
           c == '_';
  });
}

// A hub key names a directory under <root>/hubs/: HubKey's characters only.
bool IsSafeHubKey(std::string_view s) {
  return s.empty() ||
         (IsSafeComponent(s) && s.front() != '.' && std::all_of(s.begin(), s.end(), [](char c) {
            return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                   c == '-' || c == '_' || c == '.';
          }));
}

VoidResult ValidateRepo(const RepoRef& repo) {
  if (!IsSafeHubKey(repo.hub)) {
    return Error(Reason::InvalidSpec, "hub key '" + repo.hub + "' is not a safe directory name");
  }
  if (repo.type != "model" && repo.type != "dataset" && repo.type != "space") {
    return Error(Reason::InvalidSpec,
                 "repo type '" + repo.type + "' is not one of model, dataset, space");
  }
  // huggingface_hub's validate_repo_id also rejects "--" and "..": they would make two repo ids
  // share one folder name.
  size_t slash = repo.id.find('/');
  bool ok = IsSafeRelPath(repo.id) &&
            (slash == std::string::npos || repo.id.find('/', slash + 1) == std::string::npos) &&
            repo.id.find("--") == std::string::npos && repo.id.find("..") == std::string::npos;
  if (!ok) {
    return Error(Reason::InvalidSpec, "repo id '" + repo.id + R"(' must be "org/name" or "name")");
  }
  return {};
}

VoidResult ValidateEtag(const std::string& etag) {
  if (!IsSafeEtag(etag)) {
    return Error(Reason::InvalidSpec, "etag '" + etag + "' is not a safe blob name");
  }
  return {};
}

VoidResult ValidateComponent(const std::string& what, const std::string& value) {
  if (!IsSafeComponent(value) || value.front() == '.') {
    return Error(Reason::InvalidSpec, what + " '" + value + "' is not a single path component");
  }
  return {};
}

VoidResult ValidateRelPath(const std::string& what, const std::string& value) {
  if (!IsSafeRelPath(value)) {
    return Error(Reason::InvalidSpec,
                 what + " '" + value + "' must be a relative path without '.', '..' or '//'");
  }
  return {};
}

std::string ParentDir(const std::string& path) { return fs::path(path).parent_path().string(); }
std::string BaseName(const std::string& path) { return fs::path(path).filename().string(); }

// readlink(2) into a string; nullopt if `path` is not a symlink (or does not exist).
std::optional<std::string> ReadLink(const std::string& path) {
  std::string buf(256, '\0');
  while (true) {
    ssize_t n = ::readlink(path.c_str(), buf.data(), buf.size());
    if (n < 0) {
      return std::nullopt;
    }
    if (static_cast<size_t>(n) < buf.size()) {
      buf.resize(static_cast<size_t>(n));
      return buf;
    }
    buf.resize(buf.size() * 2);
  }
}

std::string TmpNameFor(const std::string& path) {
  return ParentDir(path) + "/." + BaseName(path) + std::string(kTmpMarker) + UniqueSuffix();
}

// Points `link_path` at `target` with a temporary symlink renamed over it, so readers see the old
// link or the new one and never nothing. A concurrent CleanupStaging may delete our temporary name
// between symlink() and rename(); that surfaces as ENOENT and we simply try a new name.
VoidResult ReplaceSymlink(const std::string& target, const std::string& link_path, bool sync) {
  for (int attempt = 0; attempt < kTmpNameAttempts; ++attempt) {
    std::string tmp = TmpNameFor(link_path);
    if (::symlink(target.c_str(), tmp.c_str()) != 0) {
      return IoError("cannot create symlink", tmp, errno);
    }
    if (::rename(tmp.c_str(), link_path.c_str()) == 0) {
      return sync ? SyncDir(ParentDir(link_path)) : VoidResult();
    }
    int err = errno;
    ::unlink(tmp.c_str());
    if (err != ENOENT) {
      return IoError("cannot rename symlink onto", link_path, err);
    }
  }
  return Error(Reason::StorageError,
               "cannot replace symlink " + link_path + ": temporary name removed repeatedly");
}

// WriteFileAtomic with a temporary name that carries kTmpMarker, so a crash leftover is
// recognisable (a stray "refs/main.tmp.123" would read as a ref to huggingface_hub).
VoidResult WriteFileReplacing(const std::string& path, std::string_view content) {
  return WriteFileAtomic(path, content, TmpNameFor);
}

// Copies src to dst (created exclusively) and fsyncs it.
VoidResult CopyFileSynced(const std::string& src, const std::string& dst) {
  int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    return IoError("cannot open", src, errno);
  }
  int out = ::open(dst.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (out < 0) {
    int err = errno;
    ::close(in);
    return IoError("cannot create", dst, err);
  }
  std::vector<char> buf(1 << 20);
  int err = 0;
  std::string failed = dst;
  while (err == 0) {
    ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      err = errno;
      failed = src;
      break;
    }
    if (n == 0) {
      break;
    }
    err = WriteAll(out, std::string_view(buf.data(), static_cast<size_t>(n)));
  }
  if (err == 0 && ::fsync(out) != 0) {
    err = errno;
  }
  ::close(in);
  if (::close(out) != 0 && err == 0) {
    err = errno;
  }
  if (err != 0) {
    ::unlink(dst.c_str());
    return IoError("cannot copy to", failed, err);
  }
  return {};
}

// Link failures that mean "this filesystem cannot hard-link here", where a copy is the answer.
bool LinkUnsupported(int err) {
  return err == EXDEV || err == EPERM || err == EMLINK || err == ENOTSUP || err == EACCES;
}

VoidResult FsyncPath(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | (directory ? O_DIRECTORY : 0));
  if (fd < 0) {
    return IoError("cannot open", path, errno);
  }
  int err = ::fsync(fd) == 0 ? 0 : errno;
  ::close(fd);
  if (err != 0) {
    return IoError("cannot fsync", path, err);
  }
  return {};
}

void RemoveTree(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);  // best effort: a concurrent cleanup may be removing it too
}

std::string PercentDecode(std::string_view s, bool* ok) {
  std::string out;
  *ok = true;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') {
        return c - '0';
      }
      if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
      }
      if (c >= 'A' && c <= 'F') {
        return c - 'A' + 10;
      }
      return -1;
    };
    if (i + 2 >= s.size()) {
      *ok = false;
      return out;
    }
    int hi = hex(s[i + 1]);
    int lo = hex(s[i + 2]);
    if (hi < 0 || lo < 0) {
      *ok = false;
      return out;
    }
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

std::string PercentEncodePath(std::string_view s) {
  constexpr std::string_view kHex = "0123456789ABCDEF";
  std::string out;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '.' || c == '_' || c == '~' || c == '/';
    if (plain) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xF]);
    }
  }
  return out;
}

bool Contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

}  // namespace

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
      return Error(Reason::StorageError, path + ": files." + file + " is not a string");
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
    pid_t pid = static_cast<pid_t>(std::atol(name.c_str() + prefix.size()));
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
  return RepoDir(repo) + "/snapshots/" + commit + "/" + path;
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
  a.path = artifacts_dir() + "/" + manifest.name + "/" + manifest.version;
  a.uri = "file://" + PercentEncodePath(a.path);
  a.size_bytes = manifest.size_bytes;
  a.files = static_cast<int64_t>(manifest.files.size());
  return a;
}

std::string LocalStore::Uri() const { return "file://" + PercentEncodePath(root_); }

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
  std::string dir = artifacts_dir() + "/" + name + "/" + version;
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
  std::string dir = artifacts_dir() + "/" + name + "/" + version;
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
