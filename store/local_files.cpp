// The local store's shared pieces (store/internal/local_files.h).

#include "store/internal/local_files.h"

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

namespace modelcache::store::internal {

namespace fs = std::filesystem;

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

bool Contains(std::string_view s, std::string_view part) {
  return s.find(part) != std::string_view::npos;
}

}  // namespace modelcache::store::internal
