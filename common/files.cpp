#include "common/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

namespace modelcache {

std::string ErrnoMessage(int err) {
  char buf[256];
  // GNU strerror_r returns a pointer that may or may not be buf.
  const char* msg = strerror_r(err, buf, sizeof(buf));
  return msg;
}

Reason IoReason(int err) {
  return err == ENOSPC || err == EDQUOT ? Reason::InsufficientStorage : Reason::StorageError;
}

Error IoError(std::string_view what, std::string_view path, int err) {
  std::string message;
  message.reserve(what.size() + path.size() + 40);
  message.append(what).append(" ").append(path).append(": ").append(ErrnoMessage(err));
  return {IoReason(err), std::move(message)};
}

std::string UniqueSuffix() {
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1)) + "." +
         std::to_string(rng() % 1000000);
}

VoidResult SyncDir(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    return Error(Reason::StorageError, "cannot open directory " + path + ": " + ErrnoMessage(errno));
  }
  ::fsync(fd);
  ::close(fd);
  return {};
}

VoidResult MakeDirs(const std::string& path) {
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  // The non-throwing overloads only: a name the filesystem refuses (a component over 255 bytes
  // from a repository's file list, say) is an error value, never a filesystem_error.
  std::error_code dir_ec;
  if (ec && !std::filesystem::is_directory(path, dir_ec)) {
    return Error(Reason::StorageError, "cannot create directory " + path + ": " + ec.message());
  }
  return {};
}

namespace {

constexpr int kTmpNameAttempts = 5;

}  // namespace

int WriteAll(int fd, std::string_view content) {
  while (!content.empty()) {
    ssize_t n = ::write(fd, content.data(), content.size());
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      return errno;
    }
    content.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

VoidResult WriteFileAtomic(const std::string& path, std::string_view content,
                           const TmpNameFn& tmp_name) {
  std::filesystem::path target(path);
  std::string dir = target.parent_path().empty() ? "." : target.parent_path().string();
  if (auto r = MakeDirs(dir); !r) {
    return r.error();
  }
  for (int attempt = 0; attempt < kTmpNameAttempts; ++attempt) {
    std::string tmp = tmp_name ? tmp_name(path) : path + ".tmp." + UniqueSuffix();
    // O_EXCL: a name that exists belongs to someone else (or to a crash); never write into it.
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno == EEXIST) {
      continue;
    }
    if (fd < 0) {
      return IoError("cannot create", tmp, errno);
    }
    if (int err = WriteAll(fd, content); err != 0) {
      ::close(fd);
      ::unlink(tmp.c_str());
      return IoError("cannot write", tmp, err);
    }
    int err = ::fsync(fd) == 0 ? 0 : errno;
    if (::close(fd) != 0 && err == 0) {
      err = errno;
    }
    if (err != 0) {
      ::unlink(tmp.c_str());
      return IoError("cannot sync", tmp, err);
    }
    if (::rename(tmp.c_str(), path.c_str()) == 0) {
      return SyncDir(dir);
    }
    err = errno;
    ::unlink(tmp.c_str());
    if (err != ENOENT) {
      return IoError("cannot rename " + tmp + " to", path, err);
    }
  }
  return Error(Reason::StorageError,
               "cannot write " + path + ": temporary name removed repeatedly");
}

VoidResult ReadAt(const std::string& path, uint64_t offset, std::span<char> out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Error(Reason::StorageError, "cannot open " + path + ": " + ErrnoMessage(errno));
  }
  size_t done = 0;
  while (done < out.size()) {
    ssize_t n =
        ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      return Error(Reason::StorageError,
                   "cannot read " + path + ": " +
                       (n < 0 ? ErrnoMessage(err) : std::string("unexpected end of file")));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return {};
}

Result<std::string> ReadFile(const std::string& path, uint64_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return Error(Reason::StorageError, "cannot open " + path + ": " + ErrnoMessage(errno));
  }
  std::string out;
  char buf[65536];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      int err = errno;
      ::close(fd);
      return Error(Reason::StorageError, "cannot read " + path + ": " + ErrnoMessage(err));
    }
    if (n == 0) {
      break;
    }
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > max_bytes) {
      out.resize(max_bytes + 1);
      break;
    }
  }
  ::close(fd);
  return out;
}

Result<uint64_t> FreeBytes(const std::string& path) {
  struct statvfs st {};
  if (::statvfs(path.c_str(), &st) != 0) {
    return Error(Reason::StorageError, "cannot statvfs " + path + ": " + ErrnoMessage(errno));
  }
  return static_cast<uint64_t>(st.f_bavail) * st.f_frsize;
}

}  // namespace modelcache
