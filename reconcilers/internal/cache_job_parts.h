#pragma once

// The parts of the cache job (cache_job.cpp) that live in files of their own: sharding while
// downloading (cache_job_shard.cpp) and the S3 jobs and uploads (cache_job_s3.cpp), with the
// helpers they share. Private to reconcilers/.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/guard.h"
#include "common/result.h"
#include "fetch/hub_client.h"
#include "fetch/transfer_engine.h"
#include "reconcilers/internal/cache_job.h"
#include "shard/sharder.h"
#include "store/local_store.h"
#include "store/s3_filling_upload.h"
#include "store/s3_store.h"

namespace modelcache::reconcilers {

// --- Shared by the pipeline and the S3 jobs (cache_job.cpp).

// Puts one small file of the selection (config.json, the safetensors index) in the store, unless
// it is there already. REQUIRES: the repo lock is held.
VoidResult EnsureBlob(const CacheJobInputs& in, const fetch::HubClient& hub,
                      store::LocalStore& store, const store::RepoRef& repo,
                      const std::string& commit, const fetch::RepoFile& file,
                      std::stop_token stop);

// Whether a failed download's partial files go: kept while a later job can resume them (a
// transient failure, a cancel by a spec change or a shutdown), removed after a permanent failure
// (the same job would fail the same way) or a cancel because the resource was deleted.
bool DiscardsPartial(const Error& error, const CacheJobState& state);

// The commit a job works on and the files of it the spec selects, sorted by path.
struct SelectedFiles {
  std::string commit;
  std::vector<fetch::RepoFile> files;
};

// The manifest of an artifact of `repo` at `commit`, without its files. Staged and streamed
// artifacts start from it, so the same files give the same digest either way.
store::ArtifactManifest SourceManifest(const crds::ModelCacheSpec& spec,
                                       const store::RepoRef& repo, const std::string& commit);

// --- Sharding while downloading (cache_job_shard.cpp).

// A sharded artifact is planned from config.json alone (shard::PlanFromConfig): fetch that one
// file first and refuse an architecture, a quantized checkpoint or a tensor-parallel size the
// sharder cannot serve before any weight is downloaded. The blob stays in the store; the download
// that follows finds it present. REQUIRES: the repo lock is held.
VoidResult CheckShardConfig(const CacheJobInputs& in, fetch::HubClient& hub,
                            store::LocalStore& store, const store::RepoRef& repo,
                            const std::string& commit, const std::vector<fetch::RepoFile>& files,
                            std::stop_token stop);

// Sharding while downloading (docs/sharding.md): the rank files live in a staging directory
// created before the download and are written as the weight files' bytes are hashed.
struct StreamingShard {
  std::string staging;
  std::string src;  // MakeShardSource's directory: links to the blobs, which may not exist yet
  std::unique_ptr<shard::StreamSharder> sharder;
  // An S3 store: the rank files go to the bucket as they are written (StartS3Upload), then
  // `staged` maps each rank file's path to the object holding its bytes.
  std::unique_ptr<store::S3ArtifactStore> s3;
  std::unique_ptr<store::S3FillingUpload> upload;
  std::map<std::string, std::string> staged;
  StreamingShard() = default;
  StreamingShard(const StreamingShard&) = delete;
  StreamingShard& operator=(const StreamingShard&) = delete;
  ~StreamingShard();  // removes `src`
};

// Plans the shard from config.json, the index and each weight file's header and creates the rank
// files, before any weight is downloaded. nullptr (logged) when a header cannot be fetched: the
// sharder then runs after the download, as without streaming. REQUIRES: the repo lock is held and
// CheckShardConfig passed.
Result<std::unique_ptr<StreamingShard>> StartStreamingShard(
    const CacheJobInputs& in, fetch::HubClient& hub, store::LocalStore& store,
    const store::RepoRef& repo, const std::string& commit,
    const std::vector<fetch::RepoFile>& files, CacheJobState& state, std::stop_token stop);

// Starts uploading the rank files to the S3 store's incoming area as they are written
// (docs/sharding.md, "S3 targets"). False (logged) when the bucket cannot be reached now: the
// artifact is then uploaded after the download, as before. REQUIRES: streaming->sharder exists.
Result<bool> StartS3Upload(const CacheJobInputs& in, const store::RepoRef& repo,
                           const std::string& commit, const std::vector<fetch::RepoFile>& files,
                           StreamingShard& streaming, std::stop_token stop);

// Shards the downloaded checkpoint into `staging` (without streaming, or when it fell back).
Result<shard::ShardResult> ShardAfterDownload(const CacheJobInputs& in,
                                              const store::LocalStore& store,
                                              const store::RepoRef& repo,
                                              const std::vector<fetch::RepoFile>& files,
                                              const std::string& staging, CacheJobState& state,
                                              std::stop_token stop);

// The manifest entries of the sharded files: each file's sha256, `threads` files at a time (the
// rank files are read back once, from the page cache as a rule, and hashing is CPU-bound).
// `known`: digests the sharder computed while the files filled (not read again).
Result<std::vector<store::ManifestFile>> HashShardFiles(
    const std::string& dir, const std::vector<std::string>& files, int threads,
    const std::map<std::string, std::string>& known);

// Hands the weight files' bytes to the streaming sharder as the transfer hashes them.
// Feeds the streaming sharder on a thread of its own (docs/sharding.md): the transfer's thread
// copies each piece it hashed into a queue of at most kFeedQueueBytes and goes on, waiting only
// when the queue is full, so that writing the slices (pwrite into the page cache, which the kernel
// throttles while it writes back) does not hold up the download. Pieces are fed in the order they
// were queued, as StreamSharder::Feed needs.
class ShardFeeder {
 public:
  static constexpr uint64_t kFeedQueueBytes = 64ULL << 20;

  explicit ShardFeeder(shard::StreamSharder& sharder) : sharder_(sharder) {
    thread_ = std::thread([this] {
      if (!LogExceptions("shard feeder", [this] { Loop(); })) {
        std::lock_guard lock(mu_);
        if (!error_) {
          error_ = Error(Reason::Internal, "the shard feeder stopped on an exception");
        }
        failed_ = true;
        cv_.notify_all();
      }
    });
  }
  ~ShardFeeder() { (void)Drain(); }
  ShardFeeder(const ShardFeeder&) = delete;
  ShardFeeder& operator=(const ShardFeeder&) = delete;

  // Called on the transfer's thread. The first error of Feed, once it happened.
  VoidResult Push(const std::string& path, uint64_t offset, std::string_view bytes) {
    auto start = std::chrono::steady_clock::now();
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] {
      return error_.has_value() || failed_ || queue_.empty() ||
             queued_ + bytes.size() <= kFeedQueueBytes;
    });
    waited_ += std::chrono::steady_clock::now() - start;
    if (error_) {
      return *error_;
    }
    queue_.push_back({path, offset, std::string(bytes)});
    queued_ += bytes.size();
    cv_.notify_all();
    return {};
  }

  // Feeds what is queued, stops the thread; the first error of Feed.
  VoidResult Drain() {
    {
      std::lock_guard lock(mu_);
      closing_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) {
      thread_.join();
    }
    std::lock_guard lock(mu_);
    return error_ ? VoidResult(*error_) : VoidResult();
  }

  // Time the transfer waited for room in the queue, and the feeder spent in Feed.
  std::chrono::steady_clock::duration waited() const { return waited_; }
  std::chrono::steady_clock::duration feeding() const { return feeding_; }

 private:
  struct Piece {
    std::string path;
    uint64_t offset = 0;
    std::string bytes;
  };

  void Loop() {
    for (;;) {
      Piece piece;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return closing_ || !queue_.empty(); });
        if (queue_.empty()) {
          return;
        }
        piece = std::move(queue_.front());
        queue_.pop_front();
      }
      VoidResult fed;
      if (!error_seen_) {
        auto start = std::chrono::steady_clock::now();
        fed = sharder_.Feed(piece.path, piece.offset, piece.bytes);
        feeding_ += std::chrono::steady_clock::now() - start;
      }
      std::lock_guard lock(mu_);
      queued_ -= piece.bytes.size();
      if (!fed && !error_) {
        error_ = fed.error();
        error_seen_ = true;
      }
      cv_.notify_all();
    }
  }

  shard::StreamSharder& sharder_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Piece> queue_;
  uint64_t queued_ = 0;
  bool closing_ = false;
  bool failed_ = false;
  bool error_seen_ = false;  // the feeder thread's copy: skip feeding after an error
  std::optional<Error> error_;
  std::chrono::steady_clock::duration waited_{};   // the transfer's thread only
  std::chrono::steady_clock::duration feeding_{};  // the feeder's thread only
  std::thread thread_;
};

// Hands the weight files' bytes to the streaming sharder (through `feeder`) as the transfer
// hashes them.
void FeedShard(std::vector<fetch::FileTask>& tasks, shard::StreamSharder& sharder,
               ShardFeeder& feeder);

// --- S3 (cache_job_s3.cpp).

// Uploads a locally published version (sharded, or pulled from another S3 store) to the S3 store
// and commits it there. Unsharded Hub artifacts stream instead (RunStreamingS3Job).
// `staged` (a sharded artifact uploaded while it was written) maps paths to the objects that hold
// those files' bytes already: they are copied server-side instead of uploaded, then removed.
Result<store::PublishedArtifact> PublishToS3(
    const CacheJobInputs& in, store::LocalStore& local, const store::PublishedArtifact& published,
    CacheJobState& state, std::stop_token stop,
    const std::map<std::string, std::string>& staged = {});

// A source that is an artifact of an S3 store: read its committed manifest, download and verify
// its files (S3ArtifactStore::Pull), and publish them as a local version with the same digest.
Result<CacheJobOutput> RunS3SourceJob(const CacheJobInputs& in, store::LocalStore& local,
                                      CacheJobState& state, std::stop_token stop);

// An unsharded artifact for an S3 store, streamed from the Hub into the bucket (docs/s3.md,
// "Hub -> S3 streaming"): nothing is written to the local store. The manifest is built from the
// Hub's listing (LFS sha256; regular files are read into memory and hashed), every object goes
// through S3ArtifactStore::PutObject (kept when present with the same sha256, copied from the
// current version, else streamed with StreamHubFileToS3, verified as it passes), and Commit
// writes modelcache.json, then current. Progress is reported as a download (phase Downloading,
// state.transfer): the Hub is the side the bytes come from and the one that is slow. Interrupted
// multipart uploads are left in the bucket and resumed by the next run.
Result<CacheJobOutput> RunStreamingS3Job(const CacheJobInputs& in, const fetch::HubClient& hub,
                                         const store::RepoRef& repo,
                                         const SelectedFiles& selected, CacheJobState& state,
                                         std::stop_token stop);

}  // namespace modelcache::reconcilers
