#pragma once

// The long step of a ModelCache reconcile, run on a job thread: resolve the revision, download and
// verify what is missing into the hub cache, shard if asked, and publish the artifact (or, for an
// unsharded artifact of an S3 store, stream the files from the Hub into the bucket).
// Private to reconcilers/.

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <vector>

#include "common/result.h"
#include "crds/model_cache.h"
#include "fetch/transfer.h"
#include "fetch/hub_client.h"
#include "reconcilers/observer.h"
#include "shard/sharder.h"
#include "store/local_store.h"
#include "store/s3_store.h"

namespace modelcache::reconcilers {

enum class JobPhase { Pending, Resolving, Downloading, Sharding, Uploading, Done };

std::string_view JobPhaseName(JobPhase phase);

struct CacheJobInputs {
  crds::ObjectKey key;
  crds::ModelCacheSpec spec;
  // The local store: the artifact's home, or for an S3 store the local cache that stages a
  // sharded artifact's downloads and shards before they are uploaded.
  std::string store_root;
  // Non-empty: publish to this s3://bucket/prefix store, with `aws`: an unsharded Hub artifact is
  // streamed from the Hub into it (nothing written locally); others are published locally first.
  std::string s3_uri;
  store::AwsConfig aws;
  // For a source that is an artifact of an S3 store (spec.source.repo s3://…/artifacts/NAME[/V]):
  // the configuration to read it with.
  store::AwsConfig source_aws;
  fetch::HubOptions hub;
  // The daemon's (or command's) own endpoint: the only one that may claim the store's hub/ cache
  // (LocalStore::HubFor); content of any other endpoint goes to <store>/hubs/<key>.
  std::string own_endpoint;
  // Re-hash blobs already in the store and re-fetch those that do not match (spec.force).
  bool verify_existing = false;
  // Non-empty: use this commit instead of resolving spec.source.revision, and leave the refs
  // alone (healing re-publishes exactly what the status reports).
  std::string pinned_commit;
  int shard_threads = 2;
  // spec.shard: write the rank files while the weights download (docs/sharding.md, "Sharding
  // while downloading"); false shards after the download.
  bool shard_while_downloading = true;
  std::function<std::unique_ptr<fetch::Transfer>(const fetch::TransferSource&)> transfer_factory;
  ReconcileObserver* observer = nullptr;  // may be null
};

// Shared between the job thread (writer) and reconciles (readers).
struct CacheJobState {
  std::atomic<JobPhase> phase{JobPhase::Pending};
  // Set (before the stop) when the resource is deleted: its cancelled downloads will never
  // resume, so the job removes their partial files. Without it a cancelled job keeps them for
  // the next job (a restart, a changed spec) to resume.
  std::atomic<bool> discard_partial{false};
  fetch::TransferProgress transfer;
  shard::ShardProgress shard;
  store::S3TransferProgress upload;

  void SetCommit(std::string commit) {
    std::lock_guard lock(mu_);
    commit_ = std::move(commit);
  }
  std::string commit() const {
    std::lock_guard lock(mu_);
    return commit_;
  }

 private:
  mutable std::mutex mu_;
  std::string commit_;
};

struct CacheJobOutput {
  std::string commit;
  // Where the artifact was published: the local store, or the S3 store (uri s3://…, no path).
  store::PublishedArtifact artifact;
  std::vector<std::string> fetched;  // paths of the files that had to be downloaded
};

// Runs the whole pipeline. Cancelled when `stop` is requested; partial downloads stay on disk for
// the next job to resume.
Result<CacheJobOutput> RunCacheJob(const CacheJobInputs& in, CacheJobState& state,
                                   std::stop_token stop);

// True for a full 40-hex commit id (which never moves, so it needs no refresh).
bool IsCommitId(const std::string& revision);

}  // namespace modelcache::reconcilers
