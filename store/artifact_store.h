#pragma once

// The artifact store as the rest of modelcache sees it: where versions of artifacts are committed
// and read back, whatever the store's kind. Two implementations: LocalStore (store/local_store.h,
// a directory on this machine, with its hub cache) and S3ArtifactStore (store/s3_store.h, a bucket
// shared by many machines). OpenArtifactStore picks one from a URI, so that no caller tests a URI
// scheme, and a caller that needs what only one kind has asks IsShared().
//
// What a kind does differently is the store's business, not the caller's: a shared store is not
// written by node daemons and is filled from a local staging store (reconcilers/cache_job*.cpp);
// a local store is its own staging store and is garbage-collected (store/gc.h).
//
// Errors: InvalidSpec for a URI that names no store; StorageError for what the store holds or
// cannot read (with the S3 error code for a bucket); NetworkError for a bucket that cannot be
// reached.
//
// Thread-safety: every implementation is safe for concurrent use from many threads.

#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>

#include "common/result.h"
#include "store/artifact_manifest.h"
#include "store/aws_config.h"

namespace modelcache::store {

// Whether `uri` names a store shared by many machines (an S3 bucket, "s3://bucket[/prefix]", or
// an artifact or version in one) rather than a store on this machine (a path or a file:// URI):
// the kind OpenArtifactStore opens. Looks at the scheme only; contacts nothing. For the decisions
// taken before a store can be opened (which credentials, which local cache), and for a status's
// artifact URI.
bool IsSharedStoreUri(std::string_view uri);

// OK when `uri` can name a store: a shared store's URI must parse (ParseS3StoreUri: InvalidSpec
// naming it otherwise); a local one always can (its directory is checked when it is opened).
VoidResult CheckStoreUri(std::string_view uri);

struct ArtifactStoreOptions {
  // A shared (S3) store's endpoint and credentials; a local store does not use them.
  AwsConfig aws;
};

class ArtifactStore {
 public:
  virtual ~ArtifactStore() = default;

  // file://<root> (percent-encoded) for a local store, s3://<bucket>[/<prefix>] for a bucket.
  virtual std::string Uri() const = 0;

  // True for a store shared by many machines (S3): its versions are filled from a local staging
  // store and node daemons pull them into their own; false for a store on this machine.
  virtual bool IsShared() const = 0;

  // The version `current` names; nullopt if the artifact has no current version.
  virtual Result<std::optional<std::string>> ReadCurrentVersion(const std::string& name,
                                                                std::stop_token stop) = 0;

  // The committed manifest of a version; nullopt when it is not committed (never published, or
  // not finished). StorageError if it is malformed or does not match its id.
  virtual Result<std::optional<ArtifactManifest>> ReadVersion(const std::string& name,
                                                              const std::string& version,
                                                              std::stop_token stop) = 0;

  // The PublishedArtifact view of a committed version: what publishing it returned (path empty
  // for a shared store: the artifact's home is the bucket).
  virtual PublishedArtifact Describe(const ArtifactManifest& manifest) const = 0;

  // Whether the version `artifact` names (what publishing it here returned, as status.artifact
  // keeps it) is still committed in this store. A local store checks that the version directory
  // is there (its name is its digest; VerifyVersion re-hashes it); a shared store, that
  // `artifact.uri` is this store's and that the committed manifest has `artifact.id`. False on
  // any error: the caller then caches the artifact again, which finds what is there.
  virtual bool Holds(const PublishedArtifact& artifact, std::stop_token stop) = 0;
};

// Opens the store `uri` names: S3ArtifactStore for s3://bucket[/prefix] (with options.aws;
// contacts nothing), else LocalStore::Open (a path or a file:// URI; creates its directories).
// InvalidSpec for a malformed URI, StorageError when a local store cannot be created.
Result<std::unique_ptr<ArtifactStore>> OpenArtifactStore(const std::string& uri,
                                                         const ArtifactStoreOptions& options);

}  // namespace modelcache::store
