#pragma once

// The local artifact store: a HuggingFace hub cache per Hub endpoint plus immutable, versioned
// artifacts.
//
//   <root>/hub-endpoint         the endpoint <root>/hub/ caches (normalized URL), claimed once
//   <root>/hubs/<hub-key>/      the same layout as hub/, for every other endpoint (HubKey)
//   <root>/hub/                 a valid huggingface_hub cache: HF_HUB_CACHE=<root>/hub works as is
//     CACHEDIR.TAG
//     .locks/<repo-folder>/<etag>.lock       per-blob download locks (flock, as huggingface_hub)
//     models--org--name/                     datasets--org--name/ for datasets
//       blobs/<etag>                         verified content; <etag>.incomplete while downloading
//       snapshots/<commit>/<path>            relative symlink to ../../blobs/<etag>
//       refs/<revision>                      the commit, no trailing newline
//   <root>/artifacts/<name>/
//     <version>/                             immutable; published by one rename
//       modelcache.json                      the ArtifactManifest
//       <files…>                             hard links of blobs, or sharded outputs
//     current -> <version>                   relative symlink, switched atomically
//   <root>/locks/<repo>.lock                 a cache job's lock on its repo (RepoLockPath); GC's
//                                            in-use locks under locks/inuse/ (store/gc.h)
//   <root>/tmp/                              running jobs' scratch (ShardSourceDir, PullScratchDir)
//   <root>/state/                            by default a daemon's state (DefaultStateDir)
//
// docs/store-layout.md describes the layout, the manifest and what is safe to read when.
//
// LocalStore is the local ArtifactStore (store/artifact_store.h). Its code is in three files: the
// hub cache (local_hub_cache.cpp), the artifacts (local_artifacts.cpp), and opening, the rest of
// the layout (tmp/, locks/, state/) and cleanup (local_store.cpp). Callers never build a path
// under <root> themselves: they ask for it (BlobPath, RepoLockPath, ShardSourceDir, …).
//
// Thread-safety: a LocalStore is safe for concurrent use from many threads without external
// synchronization, and several processes may share one root. Every change becomes visible through
// one rename (or is a hard link of complete content), so readers never see a half-written blob,
// link, ref, manifest or artifact. Callers must not download the same blob of the same repo twice
// at once: hold TryLockBlob/LockBlob around the download (the lock huggingface_hub also takes).
// Two publishers of the same version both succeed; one rename wins and the other reuses it.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "common/file_lock.h"
#include "common/result.h"
#include "store/artifact_manifest.h"
#include "store/artifact_store.h"

namespace modelcache::store {

struct RepoRef {
  std::string type;  // "model" | "dataset"
  std::string id;    // "org/name" or "name"
  // The hub cache the repo lives in: empty for <root>/hub (the store's own endpoint), else the
  // HubKey of another endpoint (<root>/hubs/<hub>). (Initialized so that {type, id} stays valid.)
  std::string hub = {};
};

// huggingface_hub's repo_folder_name: "models--org--name", "datasets--org--name", "models--gpt2".
std::string RepoFolderName(const RepoRef& repo);

// The repo's name within the store, unique across its hub caches: the folder name for <root>/hub,
// "<hub>/<folder>" for another endpoint's cache. RepoFromStoreName reverses it (an unparsable
// name gives an empty type, which every mutating call refuses).
std::string RepoStoreName(const RepoRef& repo);
RepoRef RepoFromStoreName(const std::string& store_name);

// An endpoint URL in the form hub caches are keyed by: lower-case scheme and host, the port always
// present, the path's segments without empty ones ("HTTPS://Hub.example/m/" ->
// "https://hub.example:443/m"). InvalidSpec for a URL AllowList refuses (user information,
// queries, "." segments…).
Result<std::string> NormalizeEndpoint(const std::string& endpoint);

// The directory name of an endpoint's hub cache under <root>/hubs/: a readable part (scheme, host,
// port and path, characters other than [A-Za-z0-9._-] as '_', at most 80 of them), '-', then the
// first 16 hex digits of the SHA-256 of the normalized URL, which makes it collision-free (the
// readable part alone is not: "a-b" and "a/b" read alike). InvalidSpec as NormalizeEndpoint.
Result<std::string> HubKey(const std::string& endpoint);

enum class PublishMode {
  // If <version> already exists (same inputs), discard the staging directory and reuse it.
  ReuseExisting,
  // Swap the staging directory in place of an existing <version> (atomically where the filesystem
  // supports RENAME_EXCHANGE), then delete the old one. Used to heal a version that failed
  // VerifyVersion after its blobs were re-fetched.
  ReplaceExisting,
};

// An exclusive flock on <root>/hub/.locks/<repo-folder>/<etag>.lock, the same file and lock kind
// huggingface_hub's WeakFileLock takes, so a download here excludes one by huggingface_hub on the
// same cache (common/file_lock.h). Released by the destructor. Move-only.
using BlobLock = FileLock;

class LocalStore : public ArtifactStore {
 public:
  // Opens the store at `root_or_uri` (a path, relative paths made absolute, or a file:// URI with
  // percent-escapes), creating <root>/hub, <root>/artifacts and hub/CACHEDIR.TAG (byte-for-byte as
  // huggingface_hub writes it; an existing one is left alone). InvalidSpec for another URI scheme;
  // StorageError if the directories cannot be created.
  static Result<std::unique_ptr<LocalStore>> Open(const std::string& root_or_uri);

  // Discards staging directories this instance created and did not publish.
  ~LocalStore() override;
  LocalStore(const LocalStore&) = delete;
  LocalStore& operator=(const LocalStore&) = delete;

  const std::string& root() const { return root_; }
  std::string hub_dir() const;        // <root>/hub
  std::string hubs_dir() const;       // <root>/hubs
  std::string artifacts_dir() const;  // <root>/artifacts
  // <root>/hub for "", else <root>/hubs/<hub>.
  std::string HubDir(const std::string& hub) const;

  // The hub cache (RepoRef::hub) that content fetched from `endpoint` goes to. <root>/hub belongs
  // to one endpoint, recorded in <root>/hub-endpoint: "" when `endpoint` is that one, else
  // HubKey(endpoint). A store without the record (new, or made by an older release) is claimed
  // by the first caller whose `endpoint` is its `own_endpoint` (the daemon's or command's
  // default endpoint), atomically: a spec's endpoint never claims it. InvalidSpec for an
  // unparsable endpoint, StorageError when the record cannot be read or written.
  Result<std::string> HubFor(const std::string& endpoint, const std::string& own_endpoint);

  // ---- hub cache ----
  // Path helpers compute names only; they do not validate (the mutating calls do).
  std::string RepoDir(const RepoRef& repo) const;  // HubDir(repo.hub)/models--org--name
  std::string BlobPath(const RepoRef& repo, const std::string& etag) const;  // …/blobs/<etag>
  // …/blobs/<etag>.incomplete: stable across restarts so a download can resume with Range.
  std::string IncompletePath(const RepoRef& repo, const std::string& etag) const;
  // …/snapshots/<commit>/<path>, and the snapshot's directory …/snapshots/<commit>.
  std::string SnapshotPath(const RepoRef& repo, const std::string& commit,
                           const std::string& path) const;
  std::string SnapshotDir(const RepoRef& repo, const std::string& commit) const;

  // True iff blobs/<etag> is a regular file of exactly `size` bytes. Blobs only appear through a
  // rename after verification, so this is "present and verified"; it does not re-hash.
  bool HasBlob(const RepoRef& repo, const std::string& etag, uint64_t size) const;

  // Re-hashes blobs/<etag> against its name: a 64-hex etag is a SHA-256, a 40-hex one a git blob
  // SHA-1. ChecksumMismatch if size or digest differ, StorageError if it is missing or unreadable,
  // InvalidSpec if the etag is neither form.
  VoidResult VerifyBlob(const RepoRef& repo, const std::string& etag, uint64_t size) const;

  // Removes blobs/<etag> (e.g. after VerifyBlob failed). OK if it is absent. Snapshot links to it
  // dangle until the blob is downloaded again; artifacts hold their own links and are unaffected.
  VoidResult RemoveBlob(const RepoRef& repo, const std::string& etag);

  // If blobs/<etag> of `repo` is missing and another repo of this store holds blobs/<etag> with
  // `size` bytes, hard-links that file (copies it if linking fails) into `repo` and returns true.
  // Returns true without work if `repo` already has the blob, false if no repo has it. The new
  // name appears by one rename, so it is never partial. Blobs are content-addressed: this is
  // dedupe across repos.
  Result<bool> AdoptBlob(const RepoRef& repo, const std::string& etag, uint64_t size);

  // Non-blocking: the lock, or nullopt if another holder (thread or process) has it.
  Result<std::optional<BlobLock>> TryLockBlob(const RepoRef& repo, const std::string& etag);
  // Blocks until the lock is free.
  Result<BlobLock> LockBlob(const RepoRef& repo, const std::string& etag);

  // Makes snapshots/<commit>/<path> a RELATIVE symlink to the blob ("../../blobs/<etag>", one more
  // "../" per sub-directory of path), created as a temporary symlink renamed into place: readers
  // see the old link or the new one. Idempotent; a wrong link or file there is replaced. The blob
  // need not exist yet. InvalidSpec for an unsafe path (absolute, "..", empty segment).
  VoidResult LinkSnapshot(const RepoRef& repo, const std::string& commit, const std::string& path,
                          const std::string& etag);

  // Writes refs/<revision> = commit with no trailing newline (huggingface_hub reads it without
  // strip), atomically; "refs/pr/1" becomes nested directories. No-op when revision == commit
  // (huggingface_hub never writes a ref for a commit) or when the ref already holds the commit.
  VoidResult WriteRef(const RepoRef& repo, const std::string& revision, const std::string& commit);

  // What modelcache wrote into a hub cache, so that GC removes that and nothing else (a
  // huggingface_hub download in the same cache is never modelcache's to remove): merges
  // `files` (path -> etag) into <root>/written/<RepoStoreName>/<commit>.json, written atomically.
  // Called by a cache job before it downloads and links them, under its repo lock (the merge is a
  // read-modify-write). InvalidSpec for unsafe names, StorageError on I/O.
  VoidResult RecordWritten(const RepoRef& repo, const std::string& commit,
                           const std::map<std::string, std::string>& files);
  // <root>/written/<RepoStoreName>/<commit>.json (whether or not it exists).
  std::string WrittenRecordPath(const RepoRef& repo, const std::string& commit) const;
  // The record's files (path -> etag); nullopt when modelcache recorded nothing for the commit.
  // StorageError when the record exists but cannot be read.
  Result<std::optional<std::map<std::string, std::string>>> ReadWritten(
      const RepoRef& repo, const std::string& commit) const;

  // The content of refs/<revision>, or nullopt if there is no such ref.
  Result<std::optional<std::string>> ReadRef(const RepoRef& repo,
                                             const std::string& revision) const;

  // ---- artifacts ----
  // <root>/artifacts/<name>/<version> (whether or not it exists; names only, not validated).
  std::string VersionDir(const std::string& name, const std::string& version) const;

  // Creates <root>/artifacts/<name>/.staging-<unique>/ and returns its path. The caller fills it
  // with StageFile (or writes sharded outputs into it), then calls Publish or DiscardStaging.
  // The directory is flock-ed while this instance owns it, so CleanupStaging in any process
  // leaves it alone. InvalidSpec if `name` is not a single safe path component.
  Result<std::string> CreateStaging(const std::string& name);

  // Hard-links `src` (symlinks followed, so a snapshot path works) to <staging>/<relpath>,
  // creating sub-directories; copies (and fsyncs) when linking fails (another filesystem). An
  // existing entry at relpath is replaced.
  VoidResult StageFile(const std::string& staging, const std::string& relpath,
                       const std::string& src);

  // Publishes a staging directory as <version>:
  //   1. FinalizeIdentity(manifest); manifest.name must be the staging directory's artifact name;
  //   2. the staging directory must hold exactly the manifest's files (regular files, sizes
  //      equal; contents are the caller's to verify) — else InvalidSpec / StorageError;
  //   3. writes modelcache.json, fsyncs every file and directory in it;
  //   4. renames it to <version> in one rename. If <version> exists: ReuseExisting discards the
  //      staging directory and reuses it (its id must match, else StorageError); ReplaceExisting
  //      swaps it in;
  //   5. switches <root>/artifacts/<name>/current to "<version>" (temporary symlink + rename).
  // The staging directory is gone afterwards, whether Publish succeeds or fails (unless it was not
  // a staging directory of this instance: InvalidSpec, nothing touched). Errors: Internal for
  // files the manifest does not list, StorageError for missing ones, ChecksumMismatch for a size
  // that differs, InsufficientStorage/StorageError for I/O.
  Result<PublishedArtifact> Publish(const std::string& staging, ArtifactManifest manifest,
                                    PublishMode mode = PublishMode::ReuseExisting);

  // Removes a staging directory this instance created and releases its lock.
  VoidResult DiscardStaging(const std::string& staging);

  // The manifest of the version `current` points to; nullopt if the artifact has no current.
  // StorageError if current points at a missing version.
  Result<std::optional<ArtifactManifest>> ReadCurrent(const std::string& name) const;

  // <version>/modelcache.json parsed; nullopt if the version does not exist. StorageError if the
  // manifest is unreadable, malformed or its id does not match its digest.
  Result<std::optional<ArtifactManifest>> ReadVersion(const std::string& name,
                                                      const std::string& version) const;

  // Published versions of `name` (sorted by name; no staging directories), empty if none.
  Result<std::vector<std::string>> ListVersions(const std::string& name) const;

  // ---- ArtifactStore ----
  // The PublishedArtifact view of an existing version (what Publish returned for it).
  PublishedArtifact Describe(const ArtifactManifest& manifest) const override;
  // file://<root>, percent-encoded.
  std::string Uri() const override;
  bool IsShared() const override { return false; }
  // ReadCurrent's version; ReadVersion as above (a local read is not interrupted by `stop`).
  Result<std::optional<std::string>> ReadCurrentVersion(const std::string& name,
                                                        std::stop_token stop) override;
  Result<std::optional<ArtifactManifest>> ReadVersion(const std::string& name,
                                                      const std::string& version,
                                                      std::stop_token stop) override;
  // Whether <root>/artifacts/<artifact.name>/<artifact.version> is a published version.
  bool Holds(const PublishedArtifact& artifact, std::stop_token stop) override;

  // Removes leftovers of a crash: .staging-* directories whose lock nobody holds, .trash-*
  // directories, and temporary links and files (".modelcache-tmp-" in their name) under
  // artifacts/ and in the repos' blobs/, snapshots/ and refs/. Never touches .incomplete files
  // (resume data) or anything published. Safe to run while other processes use the store: their
  // live staging directories are locked, and their temporary names are retried when removed.
  VoidResult CleanupStaging();

  // Re-verifies a published version against its manifest: every file present as a regular file
  // with its size and sha256, and the manifest's id matching its digest. ChecksumMismatch names
  // the first bad file; StorageError if the version or a file is missing or unreadable.
  VoidResult VerifyVersion(const std::string& name, const std::string& version) const;

  // <root>/hub first, then every <root>/hubs/<key> directory, sorted.
  std::vector<std::string> ListHubDirs() const;

  // ---- the rest of the layout: callers ask for these paths rather than build them ----
  // True when `root_or_uri` (as Open takes it) is a directory holding hub/ and artifacts/, that
  // is, a store Open made; creates nothing.
  static bool Exists(const std::string& root_or_uri);
  // <root>/state: the state directory of a daemon (or `gc`) using this store by default.
  std::string DefaultStateDir() const;
  // <root>/locks/<RepoStoreName with '/' as '@'>.lock: the lock a cache job holds on its repo
  // while it plans, downloads and links it (common/file_lock.h).
  std::string RepoLockPath(const RepoRef& repo) const;
  // Scratch directories under <root>/tmp/, named after the process that made them, so that
  // RemoveOrphanedScratch removes those of processes that are gone:
  //   ShardSourceDir: <root>/tmp/shard-src-<pid>.<unique>, a new name on every call (the links
  //   to the files a sharder reads);
  //   PullScratchDir: <root>/tmp/s3-pull-<pid>_<tag>, the same name for the same tag in this
  //   process, so that a retried pull finds what an interrupted one left (`tag` must be a
  //   single path component).
  // The directories are the caller's to create and remove.
  std::string ShardSourceDir() const;
  std::string PullScratchDir(std::string_view tag) const;
  // Removes <root>/tmp/'s scratch directories whose process is gone. `root_or_uri` as Open takes
  // it; nothing happens when it names no directory. Creates nothing.
  static void RemoveOrphanedScratch(const std::string& root_or_uri);

 private:
  VoidResult CleanupHub(const std::string& hub);

  explicit LocalStore(std::string root);

  // Staging directories this instance owns -> the fd holding their flock. Guarded by mu_.
  std::mutex mu_;
  std::map<std::string, int> staging_locks_;
  std::string root_;
};

}  // namespace modelcache::store
