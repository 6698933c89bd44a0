#pragma once

// Garbage collection of a local store: removes artifact versions, hub snapshots and blobs that no
// resource references, oldest first, as much as the limits ask (or all of it without limits).
//
// The rules (docs/store-layout.md, "Retention"):
//   * a version that `current` points to is never removed while an artifact name is referenced;
//     a name nobody references loses all its versions, oldest first, the `current` link just
//     before the version it points to;
//   * per referenced name, the `keep_versions` newest versions (counting `current`) are kept, and
//     referenced versions in any case;
//   * a snapshot is kept while a resource reports it (resolvedRevision) or a kept version was built
//     from it; a blob is kept while any remaining snapshot links it;
//   * order: the oldest removable version, together with the snapshot it was built from (when
//     nothing else keeps that snapshot) and the blobs no remaining snapshot links; then the
//     remaining unreferenced snapshots (oldest first) with their blobs; then blobs no snapshot
//     links at all;
//   * with limits, steps are taken until the store is under `max_bytes` and the disk has
//     `min_free` bytes free; without limits every removable thing goes.
//
// Concurrency: jobs hold a shared "in use" lock (LockInUse) on the repo and on the artifact name
// they work on, from planning until their artifact is published; GC takes the same locks
// exclusively without waiting and leaves whatever is busy for the next run. Blobs are removed
// under their huggingface_hub download lock as well. Removed files that a reader has open stay
// readable to it (Linux keeps an unlinked inode until its last descriptor is closed).
//
// Thread-safety: the functions keep no state; RunGc may run next to jobs of this and other
// processes on the same store (that is what the locks are for).

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include "common/file_lock.h"
#include "common/result.h"
#include "store/local_store.h"

namespace modelcache::store {

// ---- in-use locks ----

// A flock on <root>/locks/inuse/<kind>-<name>.lock (common/file_lock.h), released by the
// destructor. Move-only.
using InUseLock = FileLock;

// kind "repo" with a repo folder name ("models--org--name"), or "artifact" with an artifact name.
// Takes the shared lock, waiting while a GC holds it exclusively (GC holds it for the few
// milliseconds its removals take). Cancelled when `stop` is requested; StorageError on I/O.
Result<InUseLock> LockInUse(const std::string& root, const std::string& kind,
                            const std::string& name, std::stop_token stop = {});

// The exclusive lock GC takes, without waiting: an unheld InUseLock when someone uses it.
Result<InUseLock> TryLockExclusive(const std::string& root, const std::string& kind,
                                   const std::string& name);

// The exclusive lock, waiting while anyone holds it (a short read-modify-write of a record
// beside the store, such as an artifact name's owner). Cancelled when `stop` is requested.
Result<InUseLock> LockExclusive(const std::string& root, const std::string& kind,
                                const std::string& name, std::stop_token stop = {});

// ---- what the store holds ----

struct InodeInfo {
  uint64_t size = 0;
  uint64_t links = 0;  // st_nlink: links outside the store keep the bytes alive too
};
using InodeId = std::pair<uint64_t, uint64_t>;  // (st_dev, st_ino)

struct VersionInfo {
  std::string name, version, path;
  int64_t mtime_ns = 0;                                // when it was published
  std::string source_folder, source_commit;            // from modelcache.json; empty if unreadable
  std::vector<std::pair<std::string, InodeId>> files;  // every regular file, manifest included
};

// `folder` is the repo's RepoStoreName: "models--org--name" in <root>/hub,
// "<hub>/models--org--name" in another endpoint's cache.
struct SnapshotInfo {
  std::string folder, commit, path;
  int64_t mtime_ns = 0;
  std::set<std::string> etags;  // blobs its links point to
  // modelcache's record of what it wrote (LocalStore::RecordWritten). Only a recorded snapshot is
  // ever removed, and then only the links the record names (pointing where it says); links of a
  // huggingface_hub download of the same commit stay. A record whose snapshot is not there (a job
  // that failed before linking) is listed too, with no links.
  bool recorded = false;
  std::map<std::string, std::string> written;  // path -> etag, the record's links present now
  std::set<std::string> own_etags;  // blobs only those links point to (no other link of it)
};

struct BlobInfo {
  std::string folder, etag, path;
  int64_t mtime_ns = 0;
  InodeId inode;
};

struct StoreInventory {
  std::vector<VersionInfo> versions;
  std::map<std::string, std::string> current;  // artifact name -> version `current` points to
  std::set<std::string> names;                 // every artifact name directory
  std::vector<SnapshotInfo> snapshots;
  std::vector<BlobInfo> blobs;
  std::map<std::string, std::map<std::string, std::string>> refs;  // folder -> ref path -> commit
  // (folder, etag) of every blob a record names: only those are ever removed.
  std::set<std::pair<std::string, std::string>> written_blobs;
  std::map<InodeId, InodeInfo> inodes;  // every regular file under hub/ and artifacts/
  uint64_t used_bytes = 0;              // sum of the sizes of distinct inodes
};

// Walks <root>/artifacts, <root>/hub and every <root>/hubs/<key>. Skips work in progress
// (.staging-*, .trash-*, temporary names); counts *.incomplete files in used_bytes but never lists
// them as blobs.
Result<StoreInventory> ScanStore(const LocalStore& store);

// ---- references ----

struct GcReferences {
  std::set<std::string> names;                              // artifact names a resource uses
  std::set<std::pair<std::string, std::string>> versions;   // (name, version) a resource reports
  // (huggingface_hub repo folder, commit): kept in every hub cache of the store.
  std::set<std::pair<std::string, std::string>> snapshots;
};

// ---- plan and run ----

struct GcOptions {
  // Per referenced artifact name, the N newest versions (counting `current`) are kept; referenced
  // versions are kept in any case.
  int keep_versions = 2;
  uint64_t max_bytes = 0;  // store size limit; 0 = none
  uint64_t min_free = 0;   // free-space floor on the store's filesystem; 0 = none
  bool dry_run = false;
  // Free bytes of the filesystem holding `path` (a seam for tests); default FreeBytes.
  std::function<Result<uint64_t>(const std::string& path)> free_space;
};

bool HasLimits(const GcOptions& options);

enum class GcKind { Version, Snapshot, Blob };
std::string_view GcKindName(GcKind kind);  // "version", "snapshot", "blob"

struct GcItem {
  GcKind kind = GcKind::Version;
  std::string path;
  std::string name, version;     // Version: the artifact name and version
  std::string folder, id;        // Snapshot: repo folder and commit; Blob: folder and etag
  bool removes_current = false;  // Version: `current` points here (the name is unreferenced)
  uint64_t freed_bytes = 0;      // bytes this removal frees, after the items before it
  std::string why;
};

struct GcReport {
  std::vector<GcItem> items;  // in order; without dry_run, the ones actually removed
  uint64_t used_bytes = 0;    // before
  uint64_t free_bytes = 0;    // before
  uint64_t freed_bytes = 0;   // sum of the items' freed_bytes
  uint64_t needed_bytes = 0;  // what the limits asked for (0 without limits or when met)
  // The limits are still not met once everything removable was removed: the rest is referenced
  // (or kept by keep_versions, or busy).
  bool over_limits = false;
  std::vector<std::string> busy;  // "repo models--org--x" / "artifact qwen": in use, left alone
  std::map<std::string, std::vector<std::string>> evicted_versions;  // name -> versions removed
};

// Pure: which items a GC removes from `inventory`, in order, given the references, options and
// the filesystem's free bytes. Never lists a referenced version, `current` of a referenced name,
// a kept snapshot or a linked blob.
GcReport PlanGc(const StoreInventory& inventory, const GcReferences& refs, const GcOptions& options,
                uint64_t free_bytes);

// Scans, plans and (unless dry_run) removes, taking the in-use locks exclusively: an item whose
// repo or artifact name is busy is skipped and named in `busy`. A version is moved to .trash-*
// and then deleted, so it disappears in one rename; refs that pointed at a removed snapshot are
// removed with it. StorageError when the store cannot be scanned; a removal that fails is logged
// and skipped.
Result<GcReport> RunGc(LocalStore& store, const GcReferences& refs, const GcOptions& options);

}  // namespace modelcache::store
