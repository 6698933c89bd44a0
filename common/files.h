#pragma once

// Filesystem helpers shared by every module: atomic publish (temp + fsync + rename, the leveldb
// SetCurrentFile pattern), whole-file reads, free-space queries and errno messages.
//
// All functions are thread-safe. Failures are StorageError values naming the path.

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>

#include "common/result.h"

namespace modelcache {

// strerror, but thread-safe: "No such file or directory".
std::string ErrnoMessage(int err);

// Writes `content` to `path` so that readers see either the old file or the whole new one:
// write to "<path>.tmp.<random>", fsync, rename over `path`, fsync the directory. Creates the
// parent directories. On failure the temporary file is removed and `path` is untouched.
VoidResult WriteFileAtomic(const std::string& path, std::string_view content);

// Reads a whole file. StorageError if it is missing or unreadable. Stops after max_bytes + 1
// bytes, so that a result longer than max_bytes says "the file is larger" without reading (or
// holding) all of a huge file.
Result<std::string> ReadFile(const std::string& path,
                             uint64_t max_bytes = std::numeric_limits<uint64_t>::max() - 1);

// mkdir -p. OK if it already exists as a directory.
VoidResult MakeDirs(const std::string& path);

// fsyncs a directory so that a rename or create inside it is durable.
VoidResult SyncDir(const std::string& path);

// Bytes available to an unprivileged user on the filesystem holding `path` (statvfs f_bavail).
Result<uint64_t> FreeBytes(const std::string& path);

// A name that is unique within this process and very likely across processes: "<pid>.<n>.<rand>".
std::string UniqueSuffix();

}  // namespace modelcache
