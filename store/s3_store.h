#pragma once

// The S3 artifact store: artifact versions published to a bucket in the same shape as the local
// store's artifacts/ tree, so that any S3 client (boto3, `aws s3 sync`, an inference server's S3
// loader) can read a version as a plain directory of files:
//
//   s3://<bucket>/<prefix>/artifacts/<name>/
//     <version>/<path…>           the artifact's files; each object carries the user metadata
//                                 x-amz-meta-sha256 = the file's sha256 (64 lower-case hex,
//                                 store/s3_uploader.h's kSha256MetaKey)
//     <version>/modelcache.json   the ArtifactManifest, byte for byte as the local store writes
//                                 it; uploaded LAST: the version's commit marker
//     current                     the text "<version>", written after the marker
//
// A version without modelcache.json is an upload in progress or an interrupted one: ReadVersion,
// ListVersions and Pull never report or trust it. `current` only ever names a committed version.
//
// Dedupe (docs/s3.md): an object is never uploaded again when an object with the same sha256 is
// already there. Before each file, Publish asks HeadObject for the destination key; an object of
// the same size whose x-amz-meta-sha256 matches is kept as it is (a re-run, a resumed publish, two
// publishers of one version). Otherwise, when the artifact's current version holds a file with the
// same sha256 and size (the common case of a branch that moved: most files are unchanged), the
// object is copied server-side (CopyObject, or UploadPartCopy parts over 5 GiB; no bytes through
// this process). Only then is it
// uploaded. Every object is confirmed with HeadObject (size and x-amz-meta-sha256) before the
// marker is written, so a committed version's files are exactly its manifest's.
//
// Errors: StorageError carrying the S3 error code (AccessDenied, NoSuchBucket,
// SignatureDoesNotMatch, RequestTimeTooSkewed, …) from S3Client; NetworkError for transport
// failures; ChecksumMismatch when an object's size or sha256 differs from the manifest (Pull);
// InvalidSpec for a malformed URI. Credentials never appear in errors.
//
// Thread-safety: an S3ArtifactStore is safe for concurrent use; concurrent publishers of the same
// version write the same bytes and both succeed.

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "store/artifact_manifest.h"
#include "store/artifact_store.h"
#include "store/aws_config.h"
#include "store/s3_client.h"
#include "store/s3_uploader.h"

namespace modelcache::store {

// A bucket and a key prefix: the root of an S3 store.
struct S3Location {
  std::string bucket;
  std::string prefix;  // without leading or trailing '/'; may be empty

  // "<prefix>/<rel>", or "<rel>" without a prefix.
  std::string Key(std::string_view rel) const;
  // "s3://<bucket>/<prefix>/<rel>" (no trailing '/' when rel is empty).
  std::string Uri(std::string_view rel = "") const;
};

// Parses s3://bucket[/prefix][/]. InvalidSpec naming the URI when the bucket is not a valid S3
// bucket name (3-63 of a-z 0-9 . -) or the prefix has an empty segment ("//").
Result<S3Location> ParseS3StoreUri(std::string_view uri);

// An artifact, or one version of it, in an S3 store.
struct S3ArtifactRef {
  S3Location store;
  std::string name;
  std::string version;  // empty: the current version
};

// Parses s3://bucket[/prefix]/artifacts/<name>[/<version>]. InvalidSpec otherwise.
Result<S3ArtifactRef> ParseS3ArtifactUri(std::string_view uri);

// Bytes and files handled by Publish or Pull; skipped and copied files count as done.
struct S3TransferProgress {
  std::atomic<uint64_t> bytes_total{0}, bytes_done{0};
  std::atomic<int64_t> files_total{0}, files_done{0};
  // Files that were already there (same sha256) or copied server-side, not uploaded.
  std::atomic<int64_t> files_deduplicated{0};
};

// What Pull made.
struct PulledArtifact {
  std::string name, version, id;
  std::string dir;
  uint64_t size_bytes = 0;
  int64_t files = 0;
  bool already_present = false;  // DIR already held this version, verified; nothing downloaded
};

struct S3StoreOptions {
  // Server-side copies (dedupe against the current version) of objects up to this size are one
  // CopyObject (S3 allows at most 5 GiB); larger ones are a multipart upload whose parts are
  // UploadPartCopy calls. At least 5 MiB, at most 5 GiB.
  uint64_t max_copy_object_size = 5ULL << 30;
  // Part size of such a multipart copy (raised so that no copy needs more than 10 000 parts; at
  // least 5 MiB, at most 5 GiB) and how many parts are copied at once.
  uint64_t copy_part_size = 512ULL << 20;
  int parallel_part_copies = 4;
};

// One object of a version for a PullDownloadFn to fetch into Pull's staging directory.
struct PullObject {
  std::string path;    // in the artifact, for messages
  std::string key;     // in the bucket
  std::string url;     // a presigned GET URL (S3Client::PresignGetObject); never log it whole
  uint64_t size = 0;   // the manifest's
  std::string sha256;  // the manifest's
  std::string dest;    // where the verified file must be; its directory exists
  // Where partial data may live meanwhile (its directory exists; removed after the download).
  std::string scratch;
};

// Downloads every object to its `dest`, each verified against its size and sha256
// (ChecksumMismatch naming the path otherwise), fsynced. Returns the first error; Cancelled on a
// stop request. Pull checks the sizes again and removes everything on an error.
using PullDownloadFn =
    std::function<VoidResult(const std::vector<PullObject>& objects, std::stop_token stop)>;

class S3ArtifactStore : public ArtifactStore {
 public:
  S3ArtifactStore(S3Location location, std::shared_ptr<S3Client> client,
                  S3StoreOptions options = {});
  ~S3ArtifactStore() override = default;
  S3ArtifactStore(const S3ArtifactStore&) = delete;
  S3ArtifactStore& operator=(const S3ArtifactStore&) = delete;

  // Parses `uri` (ParseS3StoreUri) and makes a client for `config`. Contacts nothing.
  static Result<std::unique_ptr<S3ArtifactStore>> Open(std::string_view uri, AwsConfig config,
                                                       S3ClientOptions options = {},
                                                       S3StoreOptions store_options = {});

  const S3Location& location() const { return location_; }
  S3Client& client() { return *client_; }

  // Keys: <prefix>/artifacts/<name>/<version>[/<path>], <prefix>/artifacts/<name>/current.
  std::string VersionKey(const std::string& name, const std::string& version) const;
  std::string FileKey(const std::string& name, const std::string& version,
                      const std::string& path) const;
  std::string CurrentKey(const std::string& name) const;

  // ---- publishing ----
  // Publishes a local version directory (a LocalStore version: `local_dir`/<path> for every file of
  // `manifest`, whose identity is final): puts every file not already present (see the dedupe rule
  // above), confirms each with HeadObject, then commits (Commit). `progress` counts the bytes put,
  // copied or found. The local files are trusted to match the manifest (the local store verified
  // them); what lands in S3 is checked against it. Cancelled on a stop request, leaving the
  // version uncommitted (a later Publish finds what was put and continues).
  Result<PublishedArtifact> Publish(const std::string& local_dir, const ArtifactManifest& manifest,
                                    S3TransferProgress& progress, std::stop_token stop = {});

  // One file of a version, with the same dedupe rule; the seam for uploads that do not come from
  // a local directory (streaming from the Hub): such an uploader puts `FileKey(…)` itself with
  // x-amz-meta-sha256 and then calls Commit. `copy_sources` maps sha256 -> key of an object known
  // to hold those bytes (CopySources). Returns how the object got there.
  enum class PutOutcome { AlreadyPresent, Copied, Uploaded };
  Result<PutOutcome> PutFile(const ArtifactManifest& manifest, const ManifestFile& file,
                             const std::string& local_path,
                             const std::map<std::string, std::string>& copy_sources,
                             std::atomic<uint64_t>& bytes_done, std::stop_token stop = {});

  // Uploads one object whose bytes do not come from a local file: called with an uploader set up
  // as the store's own (no skip_existing, since PutFile has looked; the multipart upload is left
  // to be resumed on a stop request), the bucket, the key, and a progress callback to pass on.
  // It must put the object with x-amz-meta-sha256 (UploadStream with the expected sha256 does).
  using ObjectUploadFn = std::function<VoidResult(S3Uploader& uploader, const std::string& bucket,
                                                  const std::string& key,
                                                  const UploadProgressFn& on_bytes)>;
  // PutFile with the same dedupe rule, for bytes from elsewhere (the Hub -> S3 stream): `upload`
  // is called only when the object is neither present nor copied; the result is confirmed with
  // HeadObject like any upload.
  Result<PutOutcome> PutObject(const ArtifactManifest& manifest, const ManifestFile& file,
                               const ObjectUploadFn& upload,
                               const std::map<std::string, std::string>& copy_sources,
                               std::atomic<uint64_t>& bytes_done, std::stop_token stop = {});

  // PutObject for a file whose bytes are in the bucket already at `staged_key`, without
  // x-amz-meta-sha256 (a rank file uploaded while it was written, store/s3_filling_upload.h):
  // the same dedupe, else a server-side copy to the file's key with its sha256 as metadata
  // (CopyObject, or UploadPartCopy parts over max_copy_object_size), confirmed with HeadObject.
  // The caller vouches that the staged object holds the file's bytes.
  Result<PutOutcome> PutStaged(const ArtifactManifest& manifest, const ManifestFile& file,
                               const std::string& staged_key,
                               const std::map<std::string, std::string>& copy_sources,
                               std::atomic<uint64_t>& bytes_done, std::stop_token stop = {});

  // Where the rank files of a version still being sharded are uploaded while they are written:
  // <prefix>/artifacts/<name>/.incoming/<stream>/<path> (`stream` names the inputs, so that a
  // restarted job finds its unfinished uploads). Never a version: versions are hex.
  std::string IncomingKey(const std::string& name, const std::string& stream,
                          const std::string& path) const;
  // s3://<bucket>/<prefix>/artifacts/<name>/.incoming/<stream>: where IncomingKey puts a stream's
  // files, for messages.
  std::string IncomingUri(const std::string& name, const std::string& stream) const;

  // sha256 -> key of every file of the artifact's current version (empty if none): sources for
  // server-side copies.
  Result<std::map<std::string, std::string>> CopySources(const std::string& name,
                                                         std::stop_token stop = {});

  // Commits a version whose files were put: checks every file with HeadObject (size and
  // x-amz-meta-sha256; StorageError naming the first missing or different one), writes
  // <version>/modelcache.json, then `current`. `manifest` must have its final identity
  // (FinalizeIdentity). If the version is already committed with another id: StorageError.
  Result<PublishedArtifact> Commit(const ArtifactManifest& manifest, std::stop_token stop = {});

  // ---- reading (ArtifactStore) ----
  // s3://<bucket>[/<prefix>].
  std::string Uri() const override;
  bool IsShared() const override { return true; }
  // The version `current` names; nullopt if the artifact has no current object.
  Result<std::optional<std::string>> ReadCurrentVersion(const std::string& name,
                                                        std::stop_token stop) override;
  Result<std::optional<std::string>> ReadCurrentVersion(const std::string& name) {
    return ReadCurrentVersion(name, std::stop_token());
  }
  // The committed manifest of a version: nullopt when <version>/modelcache.json does not exist
  // (never published, or an upload that has not committed). StorageError if it is malformed or
  // does not match its id.
  Result<std::optional<ArtifactManifest>> ReadVersion(const std::string& name,
                                                      const std::string& version,
                                                      std::stop_token stop) override;
  Result<std::optional<ArtifactManifest>> ReadVersion(const std::string& name,
                                                      const std::string& version) {
    return ReadVersion(name, version, std::stop_token());
  }
  // Whether `artifact.uri` is this store's URI of its version and that version is committed
  // with `artifact.id`.
  bool Holds(const PublishedArtifact& artifact, std::stop_token stop) override;
  // The manifest of the current version; nullopt if there is none. StorageError if current names
  // a version that is not committed.
  Result<std::optional<ArtifactManifest>> ReadCurrent(const std::string& name,
                                                      std::stop_token stop = {});
  // Committed versions of `name` (those with modelcache.json), sorted.
  Result<std::vector<std::string>> ListVersions(const std::string& name, std::stop_token stop = {});

  // The PublishedArtifact view of a version: uri = s3://bucket/prefix/artifacts/<name>/<version>,
  // path empty (the artifact's home is the bucket).
  PublishedArtifact Describe(const ArtifactManifest& manifest) const override;

  // ---- pulling ----
  // Materialises a committed version (`version` empty: the current one) as the directory `dir`:
  // downloads every file in bounded memory (ranged GETs) into a staging directory next to `dir`,
  // verifying each file's size and sha256 against the manifest (ChecksumMismatch names the file),
  // writes modelcache.json, then makes it `dir` with one rename (an existing `dir` holding an
  // earlier pull is exchanged atomically and removed). Idempotent: when `dir` already holds this
  // version and every file verifies, nothing is downloaded. StorageError when the version is not
  // committed (no modelcache.json) or the artifact has no current version; InvalidSpec when `dir`
  // exists, is not empty and is not a pulled artifact (it is never overwritten).
  // `download` empty: the files are fetched one after the other with ranged GETs of 16 MiB,
  // counted in `progress`. Otherwise `download` fetches them from presigned URLs (valid for 7
  // days) however it likes (fetch/s3_pull.h: the transfer engine's parallel ranges) and counts
  // its own progress; `progress` gets the totals and, at the end, the done counts. Its staging
  // directory is then `dir`.partial-<version>, locked while in use (a second pull into `dir` at
  // the same time is StorageError) and kept when the download fails with Cancelled,
  // NetworkError, RateLimited or InsufficientStorage, so that the next pull of that version
  // resumes (files already verified there are not fetched again); other versions' unlocked
  // stagings of `dir` are removed.
  Result<PulledArtifact> Pull(const std::string& name, const std::string& version,
                              const std::string& dir, S3TransferProgress& progress,
                              std::stop_token stop = {}, const PullDownloadFn& download = {});
  // Removes what a failed Pull of `version` into `dir` through a download function kept for a
  // resume (its staging and partial files), once no resume will come.
  static void DiscardPartialPull(const std::string& dir, const std::string& version);

 private:
  // Pull's download through `download`: presigns every file's URL, runs it into `staging`, checks
  // that every file is there with its size.
  VoidResult DownloadWith(const PullDownloadFn& download, const std::string& name,
                          const ArtifactManifest& m, const std::string& staging,
                          std::stop_token stop);
  Result<bool> HasObject(const std::string& key, uint64_t size, const std::string& sha256,
                         std::stop_token stop);
  // Copies `source_key` to `key` server-side in UploadPartCopy parts (an object over
  // max_copy_object_size) with `file`'s sha256 as metadata; aborts the upload on failure.
  VoidResult CopyInParts(const std::string& source_key, const std::string& key,
                         const ManifestFile& file, std::stop_token stop);

  S3Location location_;
  std::shared_ptr<S3Client> client_;
  S3StoreOptions options_;
};

}  // namespace modelcache::store
