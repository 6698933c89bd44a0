#pragma once

// The local store's shared pieces: the names it reserves, the validation of what names a path,
// and the link and file primitives every change goes through. Used by the store's three parts:
// local_store.cpp (open, layout, cleanup), local_hub_cache.cpp (the huggingface_hub cache) and
// local_artifacts.cpp (artifact versions). Not part of store/'s interface.

#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "store/internal/layout.h"
#include "store/local_store.h"

namespace modelcache::store::internal {

inline constexpr std::string_view kStagingPrefix = ".staging-";
inline constexpr std::string_view kTrashPrefix = ".trash-";
inline constexpr int kTmpNameAttempts = 5;

// Byte-for-byte what huggingface_hub writes (constants.py / file_download.py), so tools that
// recognise caches by their tag treat both the same.
inline constexpr std::string_view kCacheDirTag =
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by huggingface_hub.\n"
    "# For information about cache directory tags, see:\n"
    "#\thttps://bford.info/cachedir/\n";

bool IsSafeComponent(std::string_view s);

// A relative '/'-separated path with no empty, "." or ".." segment.
bool IsSafeRelPath(std::string_view s);

bool IsHex(std::string_view s);

// Etags name blobs, so they must stay inside blobs/ and never look like one of our temporary or
// .incomplete names: letters, digits, '-' and '_' only.
bool IsSafeEtag(std::string_view s);

// A hub key names a directory under <root>/hubs/: HubKey's characters only.
bool IsSafeHubKey(std::string_view s);

VoidResult ValidateRepo(const RepoRef& repo);

VoidResult ValidateEtag(const std::string& etag);

VoidResult ValidateComponent(const std::string& what, const std::string& value);

VoidResult ValidateRelPath(const std::string& what, const std::string& value);

std::string ParentDir(const std::string& path);

std::string BaseName(const std::string& path);

// readlink(2) into a string; nullopt if `path` is not a symlink (or does not exist).
std::optional<std::string> ReadLink(const std::string& path);

std::string TmpNameFor(const std::string& path);

// Points `link_path` at `target` with a temporary symlink renamed over it, so readers see the old
// link or the new one and never nothing. A concurrent CleanupStaging may delete our temporary name
// between symlink() and rename(); that surfaces as ENOENT and we simply try a new name.
VoidResult ReplaceSymlink(const std::string& target, const std::string& link_path, bool sync);

// WriteFileAtomic with a temporary name that carries kTmpMarker, so a crash leftover is
// recognisable (a stray "refs/main.tmp.123" would read as a ref to huggingface_hub).
VoidResult WriteFileReplacing(const std::string& path, std::string_view content);

// Copies src to dst (created exclusively) and fsyncs it.
VoidResult CopyFileSynced(const std::string& src, const std::string& dst);

// Link failures that mean "this filesystem cannot hard-link here", where a copy is the answer.
bool LinkUnsupported(int err);

VoidResult FsyncPath(const std::string& path, bool directory);

void RemoveTree(const std::string& path);

std::string PercentDecode(std::string_view s, bool* ok);

bool Contains(std::string_view s, std::string_view part);

}  // namespace modelcache::store::internal
