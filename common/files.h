#pragma once

// Filesystem helpers shared by every module: atomic publish (temp + fsync + rename, the leveldb
// SetCurrentFile pattern), whole-file reads, free-space queries, errno messages and the one
// mapping of an errno to an Error.
//
// All functions are thread-safe. Failures are StorageError values naming the path, or
// InsufficientStorage when the filesystem or the user's quota is full (IoReason).

#include <cstdint>
#include <functional>
#include <limits>
#include <span>
#include <string>
#include <string_view>

#include "common/result.h"

namespace modelcache {

// strerror, but thread-safe: "No such file or directory".
std::string ErrnoMessage(int err);

// The reason an I/O errno gets: InsufficientStorage for ENOSPC and EDQUOT (the disk or the
// user's quota is full: freeing space helps, retrying alone does not), else StorageError.
Reason IoReason(int err);

// "<what> <path>: <ErrnoMessage(err)>" with IoReason(err), e.g.
// IoError("cannot write", "/s/x.tmp", ENOSPC) is InsufficientStorage
// "cannot write /s/x.tmp: No space left on device".
Error IoError(std::string_view what, std::string_view path, int err);

// Writes all of `data` to `fd`, resuming short writes and retrying EINTR. Returns 0, or the errno
// of the write that failed (some bytes may have been written; IoError makes it an Error).
int WriteAll(int fd, std::string_view data);

// Names the temporary file that WriteFileAtomic writes beside `path`; each call must give a new
// name (UniqueSuffix) in the directory of `path`.
using TmpNameFn = std::function<std::string(const std::string& path)>;

// Writes `content` to `path` so that readers see either the old file or the whole new one: creates
// the parent directories, writes a new temporary file (`tmp_name(path)`; by default
// "<path>.tmp.<UniqueSuffix()>"), fsyncs it, renames it over `path` and fsyncs the directory.
// On failure the temporary file is removed and `path` is untouched (still the old file, or
// absent): IoError "cannot create|write|sync <tmp>" or "cannot rename <tmp> to <path>". A
// temporary name that already exists, or that someone else removes before the rename (a cleanup
// of crash leftovers), is retried under a new name, 5 times at most.
VoidResult WriteFileAtomic(const std::string& path, std::string_view content,
                           const TmpNameFn& tmp_name = {});

// Reads a whole file. StorageError if it is missing or unreadable. Stops after max_bytes + 1
// bytes, so that a result longer than max_bytes says "the file is larger" without reading (or
// holding) all of a huge file.
Result<std::string> ReadFile(const std::string& path,
                             uint64_t max_bytes = std::numeric_limits<uint64_t>::max() - 1);

// Reads exactly out.size() bytes of `path` from `offset` (pread, restarted after EINTR).
// StorageError "cannot open|read <path>: ..." ("unexpected end of file" when the file is shorter).
VoidResult ReadAt(const std::string& path, uint64_t offset, std::span<char> out);

// mkdir -p. OK if it already exists as a directory.
VoidResult MakeDirs(const std::string& path);

// fsyncs a directory so that a rename or create inside it is durable.
VoidResult SyncDir(const std::string& path);

// Bytes available to an unprivileged user on the filesystem holding `path` (statvfs f_bavail).
Result<uint64_t> FreeBytes(const std::string& path);

// A name that is unique within this process and very likely across processes: "<pid>.<n>.<rand>".
std::string UniqueSuffix();

}  // namespace modelcache
