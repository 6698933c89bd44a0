#pragma once

// Directory mode's Source: a directory of ModelCache YAML (a git checkout kept current by any
// tool, a ConfigMap mount, or files dropped by hand), watched recursively with inotify.
//
// What it reads: every `*.yaml` / `*.yml` file below the directory, following symlinks (files and
// directories), skipping hidden names (".git", ".tmp-*", and the "..data" / "..<timestamp>"
// directories of Kubernetes volume mounts, whose files are reached through the visible
// symlinks). Each file may hold several documents; documents of other kinds are ignored. A real
// file or directory reached through two paths is read once. The user's files are never modified.
// The directory itself may be a symlink (git-sync's); a symlink below it is followed only if it
// resolves inside the directory's real path: one that leads elsewhere (/etc/passwd, /, another
// tree) or loops is not followed, and is logged once (until it changes) with the reason. A file
// over crds::kMaxManifestBytes is not read past that limit: it fails like a syntax error.
//
// What it puts in the ObjectCache (one entry per namespace/name; namespace defaults to
// "default"; origin "<relative path>:<line>"):
//   - a valid document: the defaulted object, no source_error;
//   - an invalid one: the object with source_error InvalidSpec, crds::JoinErrors of the problems;
//   - a name declared by two or more documents (in any files): one entry, the first declaration
//     in path order, with source_error InvalidSpec "declared twice: a.yaml:3 and b.yaml:1";
//   - a file that cannot be parsed (YAML syntax error, or a document whose fields have the wrong
//     types) or read: the objects previously loaded from that file stay as they were, with
//     source_error set to that error ("a.yaml:4:7: ..."); other files are unaffected;
//   - a removed document or file: the entry is deleted.
// Objects with a source_error must not be acted on; the controller reports the error.
//
// Metadata, since there is no API server: metadata.generation starts at 1 and increments when the
// spec (after defaulting) changes, compared by crds::SpecHash; the hash is kept in the annotation
// kSpecHashAnnotation. At the first sight of a key the source reads the StatusStore so that
// generation, creationTimestamp and uid continue across restarts (the controller must therefore
// store the cached object's metadata, annotations included, with its status). A new key gets
// creationTimestamp now and a uid derived from namespace/name and that time. Any status in the
// files is ignored. A key deleted and declared again later starts over from the StatusStore.
//
// When it enqueues: every key at Start() and at each periodic resync (a missed event must not
// leave a resource unreconciled); otherwise only keys that were added, removed or changed
// (ObjectChanged: spec, generation, source_error).
//
// How: inotify watches on the directory, every subdirectory and the directory's parent (so that
// replacing the directory itself, e.g. git-sync's atomic swap of a symlink, is seen). Events only
// mark the tree dirty; once no event has arrived for kDebounce (at most kMaxDebounce after the
// first), one rescan walks the tree, re-watches new directories, and re-reads files that an event
// named or whose inode, size or times changed. IN_Q_OVERFLOW and resyncs re-read every file. If
// the directory itself vanishes, the cache keeps its contents (logged) until it returns.
//
// The source is the only writer of the ObjectCache it is started with. Thread-safe: Start and
// Stop may be called from any thread; enqueue is called from the source's own thread (and from
// the caller's during Start).

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "controller/directory/file_status_store.h"
#include "controller/object_cache.h"
#include "controller/source.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

inline constexpr std::string_view kSpecHashAnnotation = "modelcache.dev/spec-hash";

class DirectorySource final : public Source {
 public:
  static constexpr std::chrono::milliseconds kDefaultResyncPeriod{10 * 60 * 1000};
  static constexpr std::chrono::milliseconds kDebounce{100};
  static constexpr std::chrono::milliseconds kMaxDebounce{1000};

  // Watches `dir`. `resync_period` <= 0 disables periodic resyncs. `previous` (may be null) is
  // read for the metadata of keys seen for the first time; it must outlive the source. `clock`
  // gives creation timestamps (its WallNow()).
  DirectorySource(std::string dir, std::chrono::milliseconds resync_period,
                  const StatusStore* previous, Clock& clock = RealClock::Get());
  ~DirectorySource() override;  // Stop()s.

  DirectorySource(const DirectorySource&) = delete;
  DirectorySource& operator=(const DirectorySource&) = delete;

  // StorageError if `dir` is not a readable directory or inotify cannot be set up (the message
  // names the path and, for ENOSPC/EMFILE, the sysctl to raise).
  VoidResult Start(ObjectCache& cache, EnqueueFn enqueue) override;
  bool HasSynced() const override;
  void Stop() override;

  // Rescans completed so far, the initial one included (for tests and metrics).
  uint64_t scans() const;
  // YAML files read (opened and parsed) so far.
  uint64_t files_read() const;

 private:
  struct FileId {
    dev_t dev = 0;
    ino_t ino = 0;
    off_t size = 0;
    int64_t mtime_ns = 0;
    int64_t ctime_ns = 0;
    bool operator==(const FileId&) const = default;
  };
  // One ModelCache document of a file.
  struct Decl {
    crds::ModelCache object;  // defaulted
    int line = 0;
    std::optional<Error> error;  // validation problems, or the file's current parse error
  };
  struct FileState {
    FileId id;
    std::string content_hash;
    std::vector<Decl> decls;
    std::optional<Error> error;  // the file-level error last logged (syntax, read)
  };
  // What the source remembers of a key between scans: the basis of metadata.generation.
  struct Record {
    std::string spec_hash;
    int64_t generation = 0;
    std::string creation_timestamp;
    std::string uid;
  };
  // The result of walking the tree.
  struct Walk {
    std::string root;                                  // the real path of dir_ (symlinks resolved)
    std::map<std::string, FileId> files;               // relative path -> identity
    std::map<int, std::string> watches;                // wd -> relative directory ("" = root)
    std::vector<std::string> unreadable_dirs;          // relative paths whose listing failed
    std::map<std::string, std::string> refused_links;  // relative path -> why not followed
  };

  void Run();
  // Walks the tree, reloads what changed, updates the cache and enqueues. `reread_all` ignores
  // file identities; `enqueue_all` enqueues every key (Start and resync).
  void Scan(bool reread_all, bool enqueue_all);
  // Returns false if the root itself cannot be opened.
  bool WalkTree(Walk& walk);
  void WalkDir(const std::string& abs, const std::string& rel,
               std::set<std::pair<dev_t, ino_t>>& seen, Walk& walk);
  // Reads and parses one file into `state` (whose decls hold the previous version). Returns false
  // if the file has vanished since the walk.
  bool LoadFile(const std::string& rel, FileState& state);
  // Builds the cache entries from files_, updating records_.
  std::vector<CachedObject> Desired();
  void FillMetadata(crds::ModelCache& object);
  // Reads pending inotify events and remembers the paths they name. Returns true if any of them
  // concerns the tree (events in the parent about siblings of the directory do not).
  bool DrainEvents();
  void WatchParent();

  const std::string dir_;
  const std::chrono::milliseconds resync_period_;
  const StatusStore* const previous_;
  Clock& clock_;

  std::mutex start_mu_;  // serializes Start and Stop
  ObjectCache* cache_ = nullptr;
  EnqueueFn enqueue_;
  int inotify_fd_ = -1;
  int wake_fd_ = -1;  // an eventfd that Stop() signals
  std::thread thread_;
  std::atomic<bool> synced_{false};
  std::atomic<uint64_t> scans_{0};
  std::atomic<uint64_t> files_read_{0};

  // Owned by the source's thread (and by Start before the thread exists).
  int parent_wd_ = -1;
  std::string root_name_;                   // basename of dir_
  std::map<int, std::string> watches_;      // wd -> relative directory
  std::map<std::string, FileState> files_;  // relative path -> state
  std::map<crds::ObjectKey, Record> records_;
  std::set<std::string> named_;                       // paths named by events since the last scan
  bool reread_all_ = false;                           // IN_Q_OVERFLOW or the root replaced
  std::map<std::string, std::string> refused_links_;  // as logged after the last walk
  bool root_missing_logged_ = false;
  bool watch_failure_logged_ = false;
};

}  // namespace modelcache::controller
