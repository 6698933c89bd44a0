#pragma once

// Advisory file locks (flock(2)) on lock files, the one wrapper every module uses: the store's
// in-use locks and name claims, the hub cache's per-blob locks (the same file and lock kind as
// huggingface_hub's WeakFileLock) and the cache job's per-repo lock.
//
// A FileLock owns the descriptor its flock is taken on; destroying it (or Release) closes the
// descriptor and so drops the lock. flock locks belong to the open file description, so two
// FileLocks on one path exclude each other whether they are in one process or two, and a lock
// dies with its process. A lock file is created (with its parent directories, mode 0644) and
// never removed: removing it would let a later locker lock a new inode while an old holder still
// holds the old one.
//
// Failures: IoError values ("cannot open lock <path>: …", "cannot lock <path>: …"), so a full
// disk is InsufficientStorage; Cancelled ("cancelled while waiting for <path>") when the wait's
// stop_token is requested. A FileLock is not thread-safe; the functions are.

#include <chrono>
#include <stop_token>
#include <string>

#include "common/result.h"

namespace modelcache {

enum class LockMode { Shared, Exclusive };

class FileLock {
 public:
  FileLock() = default;  // holds nothing
  ~FileLock();
  FileLock(FileLock&& other) noexcept;
  FileLock& operator=(FileLock&& other) noexcept;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

  // Takes the lock on `path` without waiting. If another holder's lock conflicts (any lock for
  // Exclusive, an exclusive one for Shared), returns a FileLock that is not held().
  static Result<FileLock> TryLock(const std::string& path, LockMode mode);

  // Takes the lock on `path`, waiting while another holder has a conflicting one. With a `stop`
  // that can be requested it polls, every millisecond at first and doubling up to `max_poll`
  // (so a lock held for milliseconds is taken within about that time, and a cancel is seen within
  // `max_poll`), and returns Cancelled once stop is requested; without one it blocks in flock.
  static Result<FileLock> Lock(const std::string& path, LockMode mode, std::stop_token stop = {},
                               std::chrono::milliseconds max_poll = std::chrono::milliseconds(50));

  bool held() const { return fd_ >= 0; }
  // Drops the lock now (as the destructor does); no-op when not held.
  void Release();

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace modelcache
