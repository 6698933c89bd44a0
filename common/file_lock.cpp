#include "common/file_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <thread>
#include <utility>

#include "common/files.h"

namespace modelcache {
namespace {

Result<int> OpenLockFile(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  if (!dir.empty()) {
    if (auto r = MakeDirs(dir); !r) {
      return r.error();
    }
  }
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return IoError("cannot open lock", path, errno);
  }
  return fd;
}

int FlockOp(LockMode mode) { return mode == LockMode::Shared ? LOCK_SH : LOCK_EX; }

}  // namespace

FileLock::~FileLock() { Release(); }

FileLock::FileLock(FileLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

FileLock& FileLock::operator=(FileLock&& other) noexcept {
  if (this != &other) {
    Release();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void FileLock::Release() {
  if (fd_ >= 0) {
    ::close(fd_);  // closing the last fd of the open file description releases the flock
    fd_ = -1;
  }
}

Result<FileLock> FileLock::TryLock(const std::string& path, LockMode mode) {
  auto fd = OpenLockFile(path);
  if (!fd) {
    return fd.error();
  }
  FileLock lock(*fd);
  while (::flock(*fd, FlockOp(mode) | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return FileLock();  // `lock` closes the fd
    }
    if (errno != EINTR) {
      return IoError("cannot lock", path, errno);
    }
  }
  return lock;
}

Result<FileLock> FileLock::Lock(const std::string& path, LockMode mode, std::stop_token stop,
                                std::chrono::milliseconds max_poll) {
  auto fd = OpenLockFile(path);
  if (!fd) {
    return fd.error();
  }
  FileLock lock(*fd);
  if (!stop.stop_possible()) {
    while (::flock(*fd, FlockOp(mode)) != 0) {
      if (errno != EINTR) {
        return IoError("cannot lock", path, errno);
      }
    }
    return lock;
  }
  // Non-blocking with a short poll, so that a cancel is seen while another holder keeps the lock.
  auto wait = std::min(std::chrono::milliseconds(1), max_poll);
  while (::flock(*fd, FlockOp(mode) | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK && errno != EINTR) {
      return IoError("cannot lock", path, errno);
    }
    if (stop.stop_requested()) {
      return Error(Reason::Cancelled, "cancelled while waiting for " + path);
    }
    std::this_thread::sleep_for(wait);
    wait = std::min(wait * 2, max_poll);
  }
  return lock;
}

}  // namespace modelcache
