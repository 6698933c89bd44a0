#include "reconcilers/internal/cache_job.h"
#include "common/guard.h"
#include "reconcilers/internal/hub_flights.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "common/file_lock.h"
#include "common/files.h"
#include "common/sha256.h"
#include "common/units.h"
#include "fetch/s3_pull.h"
#include "fetch/s3_stream.h"
#include "shard/safetensors.h"
#include "shard/shard_plan.h"
#include "shard/sharder.h"
#include "store/gc.h"
#include "store/s3_filling_upload.h"

namespace modelcache::reconcilers {
namespace {

namespace fs = std::filesystem;

// A directory of symlinks to exactly the selected files, so that the sharder sees the files this
// spec selected and not others that the same commit's snapshot holds for another spec.
Result<std::string> MakeShardSource(const store::LocalStore& store, const store::RepoRef& repo,
                                    const std::vector<fetch::RepoFile>& files) {
  // UniqueSuffix starts with our pid: CleanupShardSources removes the ones of dead processes.
  std::string dir = store.root() + "/tmp/shard-src-" + UniqueSuffix();
  for (const auto& f : files) {
    fs::path link = fs::path(dir) / f.path;
    std::error_code ec;
    fs::create_directories(link.parent_path(), ec);
    fs::create_symlink(store.BlobPath(repo, f.etag()), link, ec);
    if (ec) {
      return Error(Reason::StorageError, "cannot link " + link.string() + ": " + ec.message());
    }
  }
  return dir;
}

// Tells the observer what a transfer placed in the store. Counted from the files now in place
// rather than from the transfer's results, so that a cancelled or failed run still counts the
// files it completed (they stay, verified); a blob shared by several tasks counts once.
void ReportDownloaded(const std::vector<fetch::FileTask>& tasks,
                      const Result<std::vector<fetch::FileResult>>& results,
                      const CacheJobInputs& in) {
  uint64_t bytes = 0;
  std::set<std::string> seen;
  for (const auto& t : tasks) {
    if (!seen.insert(t.final_path).second) {
      continue;
    }
    std::error_code ec;
    auto size = fs::file_size(t.final_path, ec);
    if (!ec && size == t.size) {
      bytes += t.size;
    }
  }
  if (bytes > 0) {
    in.observer->BytesDownloaded(bytes);
  }
  if (!results && results.error().reason == Reason::ChecksumMismatch) {
    in.observer->VerificationFailed(in.key, results.error().message);
  }
}

// Whether `repo` holds `file`'s blob, linking it in from another repo of the store that has it.
Result<bool> HasOrAdoptBlob(store::LocalStore& store, const store::RepoRef& repo,
                            const fetch::RepoFile& file) {
  if (store.HasBlob(repo, file.etag(), file.size)) {
    return true;
  }
  return store.AdoptBlob(repo, file.etag(), file.size);
}

// Puts one small file of the selection (config.json, the safetensors index) in the store, unless
// it is there already. REQUIRES: the repo lock is held.
VoidResult EnsureBlob(const CacheJobInputs& in, const fetch::HubClient& hub,
                      store::LocalStore& store, const store::RepoRef& repo,
                      const std::string& commit, const fetch::RepoFile& file,
                      std::stop_token stop) {
  auto present = HasOrAdoptBlob(store, repo, file);
  if (!present) {
    return present.error();
  }
  if (*present) {
    return {};
  }
  fetch::FileTask t;
  t.path = file.path;
  t.url = hub.ResolveUrl(repo.type, repo.id, commit, file.path);
  t.size = file.size;
  if (file.lfs_sha256) {
    t.expected_sha256 = file.lfs_sha256;
  } else {
    t.expected_git_sha1 = file.blob_id;
  }
  t.incomplete_path = store.IncompletePath(repo, file.etag());
  t.final_path = store.BlobPath(repo, file.etag());
  std::vector<fetch::FileTask> tasks = {t};
  fetch::TransferProgress progress;
  auto results = in.transfer_factory(in.hub)->Run(tasks, progress, std::move(stop));
  if (in.observer != nullptr) {
    ReportDownloaded(tasks, results, in);
  }
  if (!results) {
    return results.error();
  }
  return {};
}

// A sharded artifact is planned from config.json alone (shard::PlanFromConfig): fetch that one
// file first and refuse an architecture, a quantized checkpoint or a tensor-parallel size the
// sharder cannot serve before any weight is downloaded. The blob stays in the store; the download
// that follows finds it present. REQUIRES: the repo lock is held.
VoidResult CheckShardConfig(const CacheJobInputs& in, fetch::HubClient& hub,
                            store::LocalStore& store, const store::RepoRef& repo,
                            const std::string& commit, const std::vector<fetch::RepoFile>& files,
                            std::stop_token stop) {
  const crds::ShardSpec& shard = *in.spec.shard;
  auto config = std::find_if(files.begin(), files.end(),
                             [](const fetch::RepoFile& f) { return f.path == "config.json"; });
  if (config == files.end()) {
    return Error(Reason::ShardConfigInvalid,
                 "spec.shard needs config.json, which the selected files of " + repo.id + " at " +
                     commit + " do not include");
  }
  if (auto r = EnsureBlob(in, hub, store, repo, commit, *config, std::move(stop)); !r) {
    return r;
  }
  auto text = ReadFile(store.BlobPath(repo, config->etag()));
  if (!text) {
    return text.error();
  }
  auto json = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) {
    return Error(Reason::ShardConfigInvalid, "config.json of " + repo.id + " is not valid JSON");
  }
  // The tensor-parallel size is defaulted before a job runs.
  auto plan =
      shard::PlanFromConfig(json, shard.engine, "", shard.tensor_parallel_size.value_or(1));
  if (!plan) {
    return plan.error();
  }
  return {};
}

// The sharder's options for this spec, reading `src` and writing `out`.
Result<shard::ShardOptions> ShardOptionsFor(const CacheJobInputs& in, const std::string& src,
                                            const std::string& out) {
  const crds::ShardSpec& shard = *in.spec.shard;
  auto max_size = ParseByteSize(shard.max_file_size);
  if (!max_size) {
    return Error(Reason::InvalidSpec, "spec.shard.maxFileSize: " + max_size.error().message);
  }
  shard::ShardOptions opts;
  opts.src_dir = src;
  opts.out_dir = out;
  opts.tensor_parallel_size = shard.tensor_parallel_size.value_or(1);  // defaulted
  opts.engine = shard.engine;
  opts.dtype = shard.dtype;
  opts.max_file_size = *max_size;
  opts.threads = in.shard_threads;
  return opts;
}

// The first bytes of a weight file, through the end of its safetensors header: from the blob if
// the store has it, else with two ranged requests (the 8-byte length, then the header), as the
// engines' loaders read a header. An empty string when the length is not a plausible header's
// (the sharder then reads the file itself and reports what is wrong with it).
Result<std::string> ReadHeaderBytes(fetch::HubClient& hub, const store::LocalStore& store,
                                    const store::RepoRef& repo, const std::string& commit,
                                    const fetch::RepoFile& f, std::stop_token stop) {
  if (f.size < 8) {
    return std::string();
  }
  std::string blob = store.BlobPath(repo, f.etag());
  auto read = [&](uint64_t first, uint64_t count) -> Result<std::string> {
    if (store.HasBlob(repo, f.etag(), f.size)) {
      auto bytes = ReadFile(blob, first + count);
      if (!bytes) {
        return bytes.error();
      }
      return bytes->substr(first, count);
    }
    return hub.GetRange(hub.ResolveUrl(repo.type, repo.id, commit, f.path), first, count, stop);
  };
  auto length = read(0, 8);
  if (!length) {
    return length.error();
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) {
    n = (n << 8) | static_cast<unsigned char>((*length)[static_cast<size_t>(i)]);
  }
  if (n > shard::kMaxHeaderSize || n > f.size - 8) {
    return std::string();
  }
  auto header = read(8, n);
  if (!header) {
    return header.error();
  }
  return *length + *header;
}

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
  ~StreamingShard() {
    std::error_code ec;
    fs::remove_all(src, ec);
  }
};

// Plans the shard from config.json, the index and each weight file's header and creates the rank
// files, before any weight is downloaded. nullptr (logged) when a header cannot be fetched: the
// sharder then runs after the download, as without streaming. REQUIRES: the repo lock is held and
// CheckShardConfig passed.
Result<std::unique_ptr<StreamingShard>> StartStreamingShard(
    const CacheJobInputs& in, fetch::HubClient& hub, store::LocalStore& store,
    const store::RepoRef& repo, const std::string& commit,
    const std::vector<fetch::RepoFile>& files, CacheJobState& state, std::stop_token stop) {
  std::optional<std::string> index;
  std::map<std::string, shard::Checkpoint::HeaderBytes> headers;
  const fetch::RepoFile* config = nullptr;
  for (const auto& f : files) {
    if (f.path == "config.json") {
      config = &f;
    } else if (f.path == "model.safetensors.index.json") {
      if (auto r = EnsureBlob(in, hub, store, repo, commit, f, stop); !r) {
        return r.error();
      }
      auto text = ReadFile(store.BlobPath(repo, f.etag()));
      if (!text) {
        return text.error();
      }
      index = std::move(*text);
    } else if (f.path.find('/') == std::string::npos && f.path.size() > 12 &&
               f.path.substr(f.path.size() - 12) == ".safetensors") {
      auto bytes = ReadHeaderBytes(hub, store, repo, commit, f, stop);
      if (!bytes && bytes.error().reason == Reason::Cancelled) {
        return bytes.error();
      }
      if (!bytes || bytes->empty()) {
        spdlog::warn(
            "{}: cannot read the safetensors header of {} ({}); sharding after the "
            "download instead",
            in.key.ToString(), f.path,
            bytes ? std::string("implausible header length") : bytes.error().ToString());
        return std::unique_ptr<StreamingShard>();
      }
      headers[f.path] = {f.size, std::move(*bytes)};
    }
  }
  auto config_text = ReadFile(store.BlobPath(repo, config->etag()));
  if (!config_text) {
    return config_text.error();
  }
  auto streaming = std::make_unique<StreamingShard>();
  auto src = MakeShardSource(store, repo, files);
  if (!src) {
    return src.error();
  }
  streaming->src = *src;
  auto staging = store.CreateStaging(in.spec.artifact_name);
  if (!staging) {
    return staging.error();
  }
  streaming->staging = *staging;
  auto opts = ShardOptionsFor(in, streaming->src, streaming->staging);
  if (!opts) {
    return opts.error();
  }
  auto ckpt = shard::Checkpoint::FromHeaders(streaming->src, index, headers);
  if (!ckpt) {
    return ckpt.error();
  }
  auto sharder = shard::StreamSharder::Create(*opts, *config_text, std::move(*ckpt), state.shard);
  if (!sharder) {
    return sharder.error();
  }
  streaming->sharder = std::move(*sharder);
  spdlog::info("{}: sharding while downloading: {} weight files planned from their headers",
               in.key.ToString(), headers.size());
  return streaming;
}

// The name of the inputs of a sharded artifact (repo, commit, the selected files' contents, the
// shard settings): the rank files' bytes are a function of these alone, so a restarted job finds
// the multipart uploads of the same rank files under the same keys.
std::string IncomingStream(const CacheJobInputs& in, const store::RepoRef& repo,
                           const std::string& commit, const std::vector<fetch::RepoFile>& files) {
  const crds::ShardSpec& shard = *in.spec.shard;
  nlohmann::json j = {{"repo", repo.type + "/" + repo.id},
                      {"commit", commit},
                      {"engine", shard.engine},
                      {"tp", shard.tensor_parallel_size.value_or(1)},
                      {"dtype", shard.dtype},
                      {"maxFileSize", shard.max_file_size},
                      {"sharder", "modelcache-shard/1"}};
  nlohmann::json listed = nlohmann::json::array();
  for (const auto& f : files) {
    listed.push_back({f.path, f.size, f.etag()});
  }
  j["files"] = std::move(listed);
  return Sha256Hex(j.dump()).substr(0, 16);
}

// Starts uploading the rank files to the S3 store's incoming area as they are written
// (docs/sharding.md, "S3 targets"). False (logged) when the bucket cannot be reached now: the
// artifact is then uploaded after the download, as before. REQUIRES: streaming->sharder exists.
Result<bool> StartS3Upload(const CacheJobInputs& in, const store::RepoRef& repo,
                           const std::string& commit, const std::vector<fetch::RepoFile>& files,
                           StreamingShard& streaming, std::stop_token stop) {
  auto s3 = store::S3ArtifactStore::Open(in.s3_uri, in.aws);
  if (!s3) {
    return s3.error();
  }
  const std::string stream = IncomingStream(in, repo, commit, files);
  std::vector<store::S3FillingUpload::File> uploads;
  std::map<std::string, std::string> staged;
  for (auto& layout : streaming.sharder->RankFileLayouts()) {
    store::S3FillingUpload::File f;
    f.local_path = streaming.staging + "/" + layout.path;
    f.key = (*s3)->IncomingKey(in.spec.artifact_name, stream, layout.path);
    f.size = layout.size;
    f.pending = std::move(layout.pending);
    staged[layout.path] = f.key;
    uploads.push_back(std::move(f));
  }
  store::UploadOptions options;
  options.parallel_parts = 2;  // the download and the sharder share the machine
  auto upload = std::make_unique<store::S3FillingUpload>((*s3)->client(), (*s3)->location().bucket,
                                                         std::move(uploads), options);
  if (auto r = upload->Start(stop); !r) {
    if (r.error().reason == Reason::Cancelled) {
      return r.error();
    }
    spdlog::warn(
        "{}: cannot start uploading the rank files while they are written ({}); "
        "uploading them after the download instead",
        in.key.ToString(), r.error().ToString());
    return false;
  }
  store::S3FillingUpload* target = upload.get();
  streaming.sharder->SetWriteObserver([target](size_t file, uint64_t offset, uint64_t length) {
    target->Written(file, offset, length);
  });
  streaming.s3 = std::move(*s3);
  streaming.upload = std::move(upload);
  streaming.staged = std::move(staged);
  spdlog::info(
      "{}: uploading {} rank files to {} while they are written", in.key.ToString(),
      streaming.staged.size(),
      streaming.s3->location().Uri("artifacts/" + in.spec.artifact_name + "/.incoming/" + stream));
  return true;
}

// Shards the downloaded checkpoint into `staging` (without streaming, or when it fell back).
Result<shard::ShardResult> ShardAfterDownload(const CacheJobInputs& in,
                                              const store::LocalStore& store,
                                              const store::RepoRef& repo,
                                              const std::vector<fetch::RepoFile>& files,
                                              const std::string& staging, CacheJobState& state,
                                              std::stop_token stop) {
  auto src = MakeShardSource(store, repo, files);
  if (!src) {
    return src.error();
  }
  auto opts = ShardOptionsFor(in, *src, staging);
  auto sharded = opts ? shard::ShardCheckpoint(*opts, state.shard, std::move(stop))
                      : Result<shard::ShardResult>(opts.error());
  std::error_code ec;
  fs::remove_all(*src, ec);
  return sharded;
}

// The manifest entries of the sharded files: each file's sha256, `threads` files at a time (the
// rank files are read back once, from the page cache as a rule, and hashing is CPU-bound).
// `known`: digests the sharder computed while the files filled (not read again).
Result<std::vector<store::ManifestFile>> HashShardFiles(
    const std::string& dir, const std::vector<std::string>& files, int threads,
    const std::map<std::string, std::string>& known) {
  std::vector<std::optional<Result<std::string>>> digests(files.size());
  std::atomic<size_t> next{0};
  {
    std::vector<std::jthread> workers;
    for (int i = 0; i < std::max(1, threads); ++i) {
      workers.emplace_back([&] {
        for (size_t k = next.fetch_add(1); k < files.size(); k = next.fetch_add(1)) {
          auto it = known.find(files[k]);
          digests[k] = it != known.end() ? Result<std::string>(it->second)
                                         : Sha256File(dir + "/" + files[k]);
        }
      });
    }
  }
  std::vector<store::ManifestFile> out;
  for (size_t k = 0; k < files.size(); ++k) {
    if (!*digests[k]) {
      return digests[k]->error();
    }
    std::error_code ec;
    auto size = fs::file_size(dir + "/" + files[k], ec);
    if (ec) {
      return Error(Reason::StorageError,
                   "cannot stat " + dir + "/" + files[k] + ": " + ec.message());
    }
    out.push_back({files[k], static_cast<uint64_t>(size), **digests[k]});
  }
  return out;
}

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
               ShardFeeder& feeder) {
  for (auto& t : tasks) {
    if (sharder.Wants(t.path)) {
      t.on_data = [&feeder, path = t.path](uint64_t offset, std::string_view bytes) {
        return feeder.Push(path, offset, bytes);
      };
    }
  }
}

// S3ArtifactStore::Publish for a version whose rank files are in the bucket already (`staged`):
// those are copied server-side to their keys with their sha256, the other files uploaded from the
// local version; then the version is committed and the staged objects removed.
Result<store::PublishedArtifact> PublishStagedToS3(
    const CacheJobInputs& in, store::S3ArtifactStore& s3, const store::PublishedArtifact& published,
    const store::ArtifactManifest& manifest, CacheJobState& state, std::stop_token stop,
    const std::map<std::string, std::string>& staged) {
  state.upload.files_total = static_cast<int64_t>(manifest.files.size());
  state.upload.bytes_total = manifest.size_bytes;
  auto sources = s3.CopySources(manifest.name, stop);
  if (!sources) {
    return sources.error();
  }
  for (const store::ManifestFile& f : manifest.files) {
    if (stop.stop_requested()) {
      return Error(Reason::Cancelled, "upload cancelled");
    }
    auto at = staged.find(f.path);
    auto outcome = at != staged.end() ? s3.PutStaged(manifest, f, at->second, *sources,
                                                     state.upload.bytes_done, stop)
                                      : s3.PutFile(manifest, f, published.path + "/" + f.path,
                                                   *sources, state.upload.bytes_done, stop);
    if (!outcome) {
      return outcome.error();
    }
    if (*outcome != store::S3ArtifactStore::PutOutcome::Uploaded) {
      ++state.upload.files_deduplicated;
    }
    ++state.upload.files_done;
  }
  auto committed = s3.Commit(manifest, stop);
  if (!committed) {
    return committed.error();
  }
  for (const auto& [path, key] : staged) {
    if (auto r = s3.client().DeleteObject(s3.location().bucket, key, stop); !r) {
      spdlog::warn("{}: cannot remove the staged object of {}: {}", in.key.ToString(), path,
                   r.error().ToString());
    }
  }
  return committed;
}

// Uploads a locally published version (sharded, or pulled from another S3 store) to the S3 store
// and commits it there. Unsharded Hub artifacts stream instead (RunStreamingS3Job).
// `staged` (a sharded artifact uploaded while it was written) maps paths to the objects that hold
// those files' bytes already: they are copied server-side instead of uploaded, then removed.
Result<store::PublishedArtifact> PublishToS3(
    const CacheJobInputs& in, store::LocalStore& local, const store::PublishedArtifact& published,
    CacheJobState& state, std::stop_token stop,
    const std::map<std::string, std::string>& staged = {}) {
  auto manifest = local.ReadVersion(published.name, published.version);
  if (!manifest) {
    return manifest.error();
  }
  if (!*manifest) {
    return Error(Reason::StorageError, "the local version " + published.path + " disappeared");
  }
  auto s3 = store::S3ArtifactStore::Open(in.s3_uri, in.aws);
  if (!s3) {
    return s3.error();
  }
  spdlog::info("{}: uploading {} ({} files, {}) to {}", in.key.ToString(), published.id,
               published.files, FormatBytes(published.size_bytes), (*s3)->Describe(**manifest).uri);
  if (!staged.empty()) {
    return PublishStagedToS3(in, **s3, published, **manifest, state, stop, staged);
  }
  auto uploaded = (*s3)->Publish(published.path, **manifest, state.upload, stop);
  if (uploaded) {
    spdlog::info("{}: {} of {} files were already in the bucket or copied there", in.key.ToString(),
                 state.upload.files_deduplicated.load(), published.files);
  }
  return uploaded;
}

// Whether a failed download's partial files go: kept while a later job can resume them (a
// transient failure, a cancel by a spec change or a shutdown), removed after a permanent failure
// (the same job would fail the same way) or a cancel because the resource was deleted.
bool DiscardsPartial(const Error& error, const CacheJobState& state) {
  return error.reason == Reason::Cancelled ? state.discard_partial.load()
                                           : !IsTransient(error.reason);
}

// A source that is an artifact of an S3 store: read its committed manifest, download and verify
// its files (S3ArtifactStore::Pull), and publish them as a local version with the same digest.
Result<CacheJobOutput> RunS3SourceJob(const CacheJobInputs& in, store::LocalStore& local,
                                      CacheJobState& state, std::stop_token stop) {
  const crds::ModelCacheSpec& spec = in.spec;
  if (spec.shard) {
    return Error(Reason::InvalidSpec,
                 "spec.shard: an s3:// source is an artifact already; it is used as it is");
  }
  auto ref = store::ParseS3ArtifactUri(spec.source.repo);
  if (!ref) {
    return Error(Reason::InvalidSpec, "spec.source.repo: " + ref.error().message);
  }
  state.phase = JobPhase::Resolving;
  store::S3ArtifactStore source(ref->store, std::make_shared<store::S3Client>(in.source_aws));
  std::string version = ref->version;
  if (version.empty()) {
    auto current = source.ReadCurrentVersion(ref->name, stop);
    if (!current) {
      return current.error();
    }
    if (!*current) {
      // Transient: the publishing cluster may not have published it yet.
      return Error(Reason::StorageError, "spec.source.repo: " + spec.source.repo +
                                             " has no current version yet");
    }
    version = **current;
  }
  auto manifest = source.ReadVersion(ref->name, version, stop);
  if (!manifest) {
    return manifest.error();
  }
  if (!*manifest) {
    return Error(Reason::StorageError, "spec.source.repo: version " + version + " of " +
                                           spec.source.repo +
                                           " has no modelcache.json (not a published version)");
  }
  store::ArtifactManifest m = std::move(**manifest);
  state.SetCommit(m.source_commit);
  state.transfer.files_total = static_cast<int64_t>(m.files.size());
  state.transfer.bytes_total = m.size_bytes;
  m.name = spec.artifact_name;  // the digest does not cover the name: same version, same digest
  store::FinalizeIdentity(m);

  std::vector<std::string> fetched;  // the files downloaded from the bucket
  auto existing = local.ReadVersion(m.name, m.version);
  if (existing && *existing && (*existing)->id == m.id && !in.verify_existing) {
    state.transfer.bytes_done = m.size_bytes;
    state.transfer.files_done = static_cast<int64_t>(m.files.size());
  } else {
    state.phase = JobPhase::Downloading;
    // Named by our pid (CleanupShardSources removes the ones of dead processes) and the resource,
    // not by the attempt: a retry of this job resumes what an interrupted pull left (Pull's
    // staging, <pulled>.partial-<version>). '_' is in no namespace or name.
    std::string pulled = local.root() + "/tmp/s3-pull-" + std::to_string(::getpid()) + "_" +
                         in.key.namespace_ + "_" + in.key.name;
    store::S3TransferProgress progress;
    // Through the job's transfer layer: parallel ranges, counted in the job's progress.
    auto transfer = in.transfer_factory(fetch::S3PullHubOptions(in.hub));
    auto got = source.Pull(ref->name, version, pulled, progress, stop,
                           fetch::TransferPullDownload(*transfer, state.transfer));
    auto remove_pulled = [&] {
      std::error_code ec;
      fs::remove_all(pulled, ec);
    };
    if (!got) {
      remove_pulled();
      if (DiscardsPartial(got.error(), state)) {
        store::S3ArtifactStore::DiscardPartialPull(pulled, version);
      }
      return got.error();
    }
    state.transfer.bytes_done = m.size_bytes;
    state.transfer.files_done = static_cast<int64_t>(m.files.size());
    for (const auto& f : m.files) {
      fetched.push_back(f.path);
    }
    auto staging = local.CreateStaging(m.name);
    if (!staging) {
      remove_pulled();
      return staging.error();
    }
    for (const auto& f : m.files) {
      if (auto r = local.StageFile(*staging, f.path, pulled + "/" + f.path); !r) {
        (void)local.DiscardStaging(*staging);
        remove_pulled();
        return r.error();
      }
    }
    auto published = local.Publish(*staging, m,
                                   in.verify_existing ? store::PublishMode::ReplaceExisting
                                                      : store::PublishMode::ReuseExisting);
    remove_pulled();
    if (!published) {
      (void)local.DiscardStaging(*staging);
      return published.error();
    }
  }
  store::PublishedArtifact artifact = local.Describe(m);
  if (!in.s3_uri.empty()) {
    state.phase = JobPhase::Uploading;
    auto uploaded = PublishToS3(in, local, artifact, state, stop);
    if (!uploaded) {
      return uploaded.error();
    }
    artifact = std::move(*uploaded);
  }
  state.phase = JobPhase::Done;
  return CacheJobOutput{m.source_commit, artifact, std::move(fetched)};
}

// The commit a job works on and the files of it the spec selects, sorted by path.
struct SelectedFiles {
  std::string commit;
  std::vector<fetch::RepoFile> files;
};

// Resolves the revision (unless pinned) and lists the selected files.
Result<SelectedFiles> ResolveFiles(const CacheJobInputs& in, fetch::HubClient& hub,
                                   const store::RepoRef& repo, CacheJobState& state,
                                   std::stop_token stop) {
  const crds::ModelCacheSpec& spec = in.spec;
  state.phase = JobPhase::Resolving;
  // Shared with jobs asking the same at the same moment (hub_flights.h).
  auto commit = in.pinned_commit.empty()
                    ? SharedResolveRevision(hub, in.hub, repo.type, repo.id,
                                            spec.source.revision, stop)
                    : Result<std::string>(in.pinned_commit);
  if (!commit) {
    return commit.error();
  }
  state.SetCommit(*commit);
  auto listed = SharedListFiles(hub, in.hub, repo.type, repo.id, *commit, stop);
  if (!listed) {
    return listed.error();
  }
  SelectedFiles selected{*commit, {}};
  for (auto& f : *listed) {
    if (fetch::MatchesPatterns(f.path, spec.source.include, spec.source.exclude)) {
      selected.files.push_back(std::move(f));
    }
  }
  for (const auto& f : selected.files) {
    if (auto ok = fetch::ValidateRepoPath(f.path); !ok) {
      return ok.error();
    }
  }
  if (selected.files.empty()) {
    return Error(Reason::InvalidSpec, "spec.source.include/exclude select no file of " + repo.id +
                                          " at " + *commit);
  }
  std::sort(selected.files.begin(), selected.files.end(),
            [](const auto& a, const auto& b) { return a.path < b.path; });
  return selected;
}

// The manifest of an artifact of `repo` at `commit`, without its files. Staged and streamed
// artifacts start from it, so the same files give the same digest either way.
store::ArtifactManifest SourceManifest(const crds::ModelCacheSpec& spec,
                                       const store::RepoRef& repo, const std::string& commit) {
  store::ArtifactManifest manifest;
  manifest.name = spec.artifact_name;
  manifest.source_type = repo.type;
  manifest.source_repo = repo.id;
  manifest.source_revision = spec.source.revision;
  manifest.source_commit = commit;
  return manifest;
}

// Regular (non-LFS) files are read into memory to learn their sha256 before the version is
// known. The Hub keeps such files small (it stores anything over 10 MiB in LFS); a larger one is
// refused rather than buffered.
constexpr uint64_t kMaxRegularFileBytes = 64ull << 20;
// Contents of regular files kept from hashing to upload; past this they are streamed again.
constexpr uint64_t kKeptRegularBytes = 16ull << 20;
// Files streamed at once; each upload runs its parts in parallel already.
constexpr size_t kStreamedFilesAtOnce = 2;

// bytes_per_second of a TransferProgress as a moving average over the last ~5 s, sampled by the
// job thread while the uploads run.
class RateSampler {
 public:
  explicit RateSampler(fetch::TransferProgress& progress) : progress_(progress) {}
  void Sample() {
    auto now = std::chrono::steady_clock::now();
    samples_.emplace_back(now, progress_.bytes_done.load());
    while (samples_.size() > 2 && now - samples_.front().first > std::chrono::seconds(5)) {
      samples_.pop_front();
    }
    const auto& [t0, b0] = samples_.front();
    double seconds = std::chrono::duration<double>(now - t0).count();
    uint64_t b1 = samples_.back().second;
    if (seconds > 0.2 && b1 >= b0) {
      progress_.bytes_per_second = static_cast<uint64_t>(static_cast<double>(b1 - b0) / seconds);
    }
  }

 private:
  fetch::TransferProgress& progress_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, uint64_t>> samples_;
};

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
                                         std::stop_token stop) {
  const std::vector<fetch::RepoFile>& files = selected.files;
  auto s3 = store::S3ArtifactStore::Open(in.s3_uri, in.aws);
  if (!s3) {
    return s3.error();
  }
  auto source_of = [&](const fetch::RepoFile& f) {
    fetch::HubFileSource source;
    source.path = f.path;
    source.url = hub.ResolveUrl(repo.type, repo.id, selected.commit, f.path);
    source.size = f.size;
    if (f.lfs_sha256) {
      source.expected_sha256 = f.lfs_sha256;
    } else {
      source.expected_git_sha1 = f.blob_id;
    }
    return source;
  };
  auto report_mismatch = [&](const Error& e) {
    if (e.reason == Reason::ChecksumMismatch && in.observer != nullptr) {
      in.observer->VerificationFailed(in.key, e.message);
    }
  };

  state.phase = JobPhase::Downloading;
  store::ArtifactManifest manifest = SourceManifest(in.spec, repo, selected.commit);
  std::vector<std::string> kept(files.size());  // contents of regular files, while the budget lasts
  uint64_t kept_bytes = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    const auto& f = files[i];
    if (f.lfs_sha256) {
      manifest.files.push_back({f.path, f.size, *f.lfs_sha256});
      continue;
    }
    auto data = fetch::ReadHubFile(in.hub, source_of(f), kMaxRegularFileBytes, stop);
    if (!data) {
      report_mismatch(data.error());
      return data.error();
    }
    manifest.files.push_back({f.path, f.size, Sha256Hex(*data)});
    if (kept_bytes + data->size() <= kKeptRegularBytes) {
      kept_bytes += data->size();
      kept[i] = std::move(*data);
    }
  }
  store::FinalizeIdentity(manifest);  // sorts by path: files is sorted the same way
  for (size_t i = 0; i < files.size(); ++i) {
    if (manifest.files[i].path != files[i].path) {
      return Error(Reason::Internal, "manifest order differs from the listing at " + files[i].path);
    }
  }

  uint64_t total = manifest.size_bytes;
  state.transfer.files_total = static_cast<int64_t>(files.size());
  state.transfer.bytes_total = total;
  state.upload.files_total = static_cast<int64_t>(files.size());
  state.upload.bytes_total = total;
  auto sources = (*s3)->CopySources(manifest.name, stop);
  if (!sources) {
    return sources.error();
  }
  spdlog::info("{}: streaming {} files ({}) of {}@{} to {}", in.key.ToString(), files.size(),
               FormatBytes(total), repo.id, selected.commit.substr(0, 12),
               (*s3)->Describe(manifest).uri);

  // Up to kStreamedFilesAtOnce workers take files in order; the first failure stops the others
  // (their multipart uploads stay to be resumed).
  std::stop_source cancel;
  std::stop_callback forward(stop, [&cancel] { cancel.request_stop(); });
  std::mutex mu;
  std::condition_variable cv;
  size_t next = 0;
  size_t running = 0;
  std::optional<Error> failure;
  std::vector<std::string> uploaded;
  std::atomic<uint64_t> bytes_uploaded{0};
  auto work = [&] {
    for (;;) {
      size_t i = 0;
      {
        std::lock_guard lock(mu);
        if (next >= files.size() || failure || cancel.stop_requested()) {
          break;
        }
        i = next++;
      }
      const fetch::RepoFile& f = files[i];
      const store::ManifestFile& mf = manifest.files[i];
      store::S3ArtifactStore::ObjectUploadFn upload =
          [&](store::S3Uploader& uploader, const std::string& bucket, const std::string& key,
              const store::UploadProgressFn& on_bytes) -> VoidResult {
        auto counted = [&](uint64_t bytes) {
          bytes_uploaded += bytes;
          on_bytes(bytes);
        };
        Result<store::UploadResult> r = Error(Reason::Internal, "not uploaded");
        if (!kept[i].empty() || f.size == 0) {
          size_t offset = 0;
          store::UploadReadFn read = [&](char* out, size_t n) -> Result<size_t> {
            size_t take = std::min(n, kept[i].size() - offset);
            std::memcpy(out, kept[i].data() + offset, take);
            offset += take;
            return take;
          };
          r = uploader.UploadStream(bucket, key, read, f.size, mf.sha256, counted,
                                    cancel.get_token());
        } else {
          fetch::HubFileSource source = source_of(f);
          source.expected_sha256 = mf.sha256;  // the uploader checks it for regular files too
          r = fetch::StreamHubFileToS3(in.hub, uploader, source, bucket, key, counted,
                                       cancel.get_token());
        }
        if (!r) {
          return r.error();
        }
        return {};
      };
      auto outcome = ResultOrInternalError("upload of " + f.path, [&] {
        return (*s3)->PutObject(manifest, mf, upload, *sources, state.transfer.bytes_done,
                                cancel.get_token());
      });
      std::lock_guard lock(mu);
      if (!outcome) {
        if (!failure) {
          failure = outcome.error();
        }
        cancel.request_stop();
        break;
      }
      if (*outcome == store::S3ArtifactStore::PutOutcome::Uploaded) {
        uploaded.push_back(f.path);
      } else {
        ++state.upload.files_deduplicated;
      }
      ++state.transfer.files_done;
      ++state.upload.files_done;
    }
    std::lock_guard lock(mu);
    --running;
    cv.notify_all();
  };
  std::vector<std::jthread> workers;
  // Counted before the first worker starts: a worker that finishes at once decrements `running`
  // under the lock while later ones are still being started.
  const size_t worker_count = std::min(kStreamedFilesAtOnce, files.size());
  running = worker_count;
  for (size_t w = 0; w < worker_count; ++w) {
    workers.emplace_back(work);
  }
  {
    RateSampler rate(state.transfer);
    std::unique_lock lock(mu);
    while (!cv.wait_for(lock, std::chrono::milliseconds(500), [&] { return running == 0; })) {
      state.upload.bytes_done = state.transfer.bytes_done.load();
      rate.Sample();
    }
  }
  workers.clear();
  state.upload.bytes_done = state.transfer.bytes_done.load();
  if (in.observer != nullptr && bytes_uploaded > 0) {
    in.observer->BytesDownloaded(bytes_uploaded);
  }
  if (failure) {
    report_mismatch(*failure);
    return *failure;
  }
  if (stop.stop_requested()) {
    return Error(Reason::Cancelled, "cancelled");
  }
  spdlog::info("{}: {} of {} files were already in the bucket or copied there",
               in.key.ToString(), state.upload.files_deduplicated.load(), files.size());
  auto committed = (*s3)->Commit(manifest, stop);
  if (!committed) {
    return committed.error();
  }
  state.phase = JobPhase::Done;
  std::sort(uploaded.begin(), uploaded.end());
  return CacheJobOutput{selected.commit, std::move(*committed), std::move(uploaded)};
}

}  // namespace

std::string_view JobPhaseName(JobPhase phase) {
  switch (phase) {
    case JobPhase::Pending:
      return crds::kPhasePending;
    case JobPhase::Resolving:
      return crds::kPhaseResolving;
    case JobPhase::Downloading:
      return crds::kPhaseDownloading;
    case JobPhase::Sharding:
      return crds::kPhaseSharding;
    case JobPhase::Uploading:
      return crds::kPhaseUploading;
    case JobPhase::Done:
      return crds::kPhaseReady;
  }
  return crds::kPhasePending;
}

void CleanupShardSources(const std::string& store_root) {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(store_root + "/tmp", ec)) {
    std::string name = entry.path().filename().string();
    std::string_view prefix;
    for (std::string_view p : {std::string_view("shard-src-"), std::string_view("s3-pull-")}) {
      if (name.rfind(p, 0) == 0) {
        prefix = p;
      }
    }
    if (prefix.empty()) {
      continue;
    }
    pid_t pid = static_cast<pid_t>(std::atol(name.c_str() + prefix.size()));
    if (pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH) {
      fs::remove_all(entry.path(), ec);
    }
  }
}

bool IsCommitId(const std::string& revision) {
  return revision.size() == 40 &&
         std::all_of(revision.begin(), revision.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

namespace {

// A Hub repo's cache job on its way through RunCacheJob's pipeline (plan, download, link
// snapshot, stage or shard, publish, upload): each step reads what the steps before it left here.
struct CacheRun {
  CacheRun(const CacheJobInputs& inputs, CacheJobState& job_state, std::stop_token token,
           store::LocalStore& local, store::RepoRef repo_ref, SelectedFiles selected)
      : in(inputs),
        state(job_state),
        stop(std::move(token)),
        store(local),
        repo(std::move(repo_ref)),
        commit(std::move(selected.commit)),
        files(std::move(selected.files)) {}

  const CacheJobInputs& in;
  CacheJobState& state;
  std::stop_token stop;
  store::LocalStore& store;
  store::RepoRef repo;
  std::string commit;
  std::vector<fetch::RepoFile> files;  // selected, sorted by path
  // Plan: the sharder writing the rank files while the weights download, if it does.
  std::unique_ptr<StreamingShard> streaming;
  // Plan: the downloads of the files the store lacks (tasks[k] fetches files[task_file[k]]),
  // and the bytes of the files it has.
  std::vector<fetch::FileTask> tasks;
  std::vector<size_t> task_file;
  uint64_t bytes_present = 0;
  // Download and link: each file's sha256, and the files as the manifest lists them.
  std::vector<std::string> sha256;
  std::vector<store::ManifestFile> manifest_files;

  // What the job returns for `artifact`: the commit, and the files it had to download.
  CacheJobOutput Output(store::PublishedArtifact artifact) const {
    CacheJobOutput output{commit, std::move(artifact), {}};
    for (const auto& t : tasks) {
      output.fetched.push_back(t.path);
    }
    return output;
  }
};

// The artifact in staging: its directory and its manifest.
struct Staged {
  std::string dir;
  store::ArtifactManifest manifest;
};

// The spec's repo in the hub cache of its endpoint. One hub cache per endpoint: what another
// endpoint serves never lands in (or re-points a snapshot of) the cache of the store's own one.
Result<store::RepoRef> RepoOf(const CacheJobInputs& in, store::LocalStore& store) {
  store::RepoRef repo{in.spec.source.type, in.spec.source.repo};
  auto hub_key = store.HubFor(in.hub.endpoint, in.own_endpoint);
  if (!hub_key) {
    return hub_key.error();
  }
  repo.hub = *hub_key;
  return repo;
}

std::string RepoLockPath(const store::LocalStore& store, const store::RepoRef& repo) {
  std::string lock_name = store::RepoStoreName(repo);
  std::replace(lock_name.begin(), lock_name.end(), '/', '@');
  return store.root() + "/locks/" + lock_name + ".lock";
}

// Whether the store holds `f`'s blob (adopting it when another hub cache of the store does);
// with verify_existing it is re-hashed too, and removed (to be fetched again) if it does not
// match.
Result<bool> HasVerifiedBlob(CacheRun& run, const fetch::RepoFile& f) {
  auto has = HasOrAdoptBlob(run.store, run.repo, f);
  if (!has || !*has || !run.in.verify_existing) {
    return has;
  }
  auto verified = run.store.VerifyBlob(run.repo, f.etag(), f.size);
  if (verified) {
    return true;
  }
  if (verified.error().reason != Reason::ChecksumMismatch) {
    return verified.error();
  }
  spdlog::warn("{}: {} does not match its checksum; fetching it again", run.in.key.ToString(),
               f.path);
  if (run.in.observer != nullptr) {
    run.in.observer->VerificationFailed(run.in.key, f.path);
  }
  if (auto removed = run.store.RemoveBlob(run.repo, f.etag()); !removed) {
    return removed.error();
  }
  return false;
}

fetch::FileTask DownloadTask(const CacheRun& run, const fetch::HubClient& hub,
                             const fetch::RepoFile& f) {
  fetch::FileTask t;
  t.path = f.path;
  t.url = hub.ResolveUrl(run.repo.type, run.repo.id, run.commit, f.path);
  t.size = f.size;
  if (f.lfs_sha256) {
    t.expected_sha256 = f.lfs_sha256;
  } else {
    t.expected_git_sha1 = f.blob_id;
  }
  t.incomplete_path = run.store.IncompletePath(run.repo, f.etag());
  t.final_path = run.store.BlobPath(run.repo, f.etag());
  return t;
}

// Plan (under the repo lock): records the files as modelcache's before anything lands (GC
// removes only links and blobs modelcache recorded as its own), checks the shard settings and
// starts sharding while downloading when asked, and lists what the store lacks.
VoidResult Plan(CacheRun& run, fetch::HubClient& hub) {
  std::map<std::string, std::string> written;
  for (const auto& f : run.files) {
    written[f.path] = f.etag();
  }
  if (auto r = run.store.RecordWritten(run.repo, run.commit, written); !r) {
    return r.error();
  }
  if (run.in.spec.shard) {
    if (auto checked =
            CheckShardConfig(run.in, hub, run.store, run.repo, run.commit, run.files, run.stop);
        !checked) {
      return checked.error();
    }
    if (run.in.shard_while_downloading) {
      auto started = StartStreamingShard(run.in, hub, run.store, run.repo, run.commit, run.files,
                                         run.state, run.stop);
      if (!started) {
        return started.error();
      }
      run.streaming = std::move(*started);
    }
    if (run.streaming && run.streaming->sharder && !run.in.s3_uri.empty()) {
      auto uploading =
          StartS3Upload(run.in, run.repo, run.commit, run.files, *run.streaming, run.stop);
      if (!uploading) {
        return uploading.error();
      }
    }
  }
  for (size_t i = 0; i < run.files.size(); ++i) {
    auto present = HasVerifiedBlob(run, run.files[i]);
    if (!present) {
      return present.error();
    }
    if (*present) {
      run.bytes_present += run.files[i].size;
      continue;
    }
    run.tasks.push_back(DownloadTask(run, hub, run.files[i]));
    run.task_file.push_back(i);
  }
  return {};
}

// Download (under the repo lock): fetches and verifies what the store lacks, feeding the sharder
// as the weights arrive; the job's progress counts what was already present.
VoidResult Download(CacheRun& run) {
  CacheJobState& state = run.state;
  state.phase = JobPhase::Downloading;
  std::optional<ShardFeeder> feeder;  // destroyed before the sharder (run.streaming)
  if (run.streaming) {
    feeder.emplace(*run.streaming->sharder);
    FeedShard(run.tasks, *run.streaming->sharder, *feeder);
  }
  uint64_t total = 0;
  for (const auto& f : run.files) {
    total += f.size;
  }
  state.transfer.files_total = static_cast<int64_t>(run.files.size());
  state.transfer.files_done = static_cast<int64_t>(run.files.size() - run.tasks.size());
  state.transfer.bytes_total = total;
  state.transfer.bytes_done = run.bytes_present;
  run.sha256.assign(run.files.size(), std::string());
  if (!run.tasks.empty()) {
    spdlog::info("{}: downloading {} of {} files ({}) of {}@{}", run.in.key.ToString(),
                 run.tasks.size(), run.files.size(), FormatBytes(total - run.bytes_present),
                 run.repo.id, run.commit.substr(0, 12));
    auto transfer = run.in.transfer_factory(run.in.hub);
    // The transfer counts its own bytes; seed it with what is already in the store.
    auto download_start = std::chrono::steady_clock::now();
    auto results = transfer->Run(run.tasks, state.transfer, run.stop);
    if (feeder) {
      auto downloaded = std::chrono::steady_clock::now();
      auto fed = feeder->Drain();
      spdlog::info(
          "{}: download took {:.1f} s; the feeder wrote rank files for {:.1f} s, the "
          "transfer waited {:.1f} s for it, and {:.1f} s after the download",
          run.in.key.ToString(), std::chrono::duration<double>(downloaded - download_start).count(),
          std::chrono::duration<double>(feeder->feeding()).count(),
          std::chrono::duration<double>(feeder->waited()).count(),
          std::chrono::duration<double>(std::chrono::steady_clock::now() - downloaded).count());
      if (!fed && results) {
        results = fed.error();
      }
    }
    if (run.in.observer != nullptr) {
      ReportDownloaded(run.tasks, results, run.in);
    }
    if (!results) {
      if (DiscardsPartial(results.error(), state)) {
        // Under the repo lock: no other job writes these files now.
        for (const auto& t : run.tasks) {
          ::unlink(t.incomplete_path.c_str());
          ::unlink((t.incomplete_path + ".chunks").c_str());
        }
      }
      return results.error();
    }
    for (size_t k = 0; k < results->size(); ++k) {
      run.sha256[run.task_file[k]] = (*results)[k].sha256;
    }
  }
  state.transfer.bytes_done = total;
  state.transfer.files_done = static_cast<int64_t>(run.files.size());
  return {};
}

// Link snapshot (under the repo lock): the HF cache view of the commit and its ref, and each
// file's sha256 for the manifest.
VoidResult LinkSnapshot(CacheRun& run) {
  for (size_t i = 0; i < run.files.size(); ++i) {
    const auto& f = run.files[i];
    if (auto r = run.store.LinkSnapshot(run.repo, run.commit, f.path, f.etag()); !r) {
      return r.error();
    }
    if (run.sha256[i].empty()) {
      if (f.lfs_sha256) {
        run.sha256[i] = *f.lfs_sha256;
      } else {
        auto h = Sha256File(run.store.BlobPath(run.repo, f.etag()));
        if (!h) {
          return h.error();
        }
        run.sha256[i] = *h;
      }
    }
    run.manifest_files.push_back({f.path, f.size, run.sha256[i]});
  }
  if (run.in.pinned_commit.empty()) {
    if (auto r = run.store.WriteRef(run.repo, run.in.spec.source.revision, run.commit); !r) {
      return r.error();
    }
  }
  return {};
}

// Already published and current (many resources of one model, a restart, a resync): the
// version is content-addressed, so staging and publishing it again would only rename onto an
// identical directory after fsyncing a copy. The version as Publish(ReuseExisting) would return
// it; nullopt when it must be staged. (An S3 artifact is confirmed against its bucket by the
// upload, which skips what is there.)
std::optional<store::PublishedArtifact> CurrentVersion(const CacheRun& run) {
  const crds::ModelCacheSpec& spec = run.in.spec;
  if (spec.shard || run.in.verify_existing || !run.in.s3_uri.empty()) {
    return std::nullopt;
  }
  store::ArtifactManifest wanted = SourceManifest(spec, run.repo, run.commit);
  wanted.files = run.manifest_files;
  store::FinalizeIdentity(wanted);
  auto current = run.store.ReadCurrent(spec.artifact_name);
  if (current && current->has_value() && (*current)->id == wanted.id) {
    return run.store.Describe(**current);
  }
  return std::nullopt;
}

// The rank files' upload while they were written (StartS3Upload): waits for its last parts,
// before Publish moves the staging directory they are read from. A failed upload only loses the
// head start: the files are uploaded again after the download (Upload).
VoidResult FinishRankFileUpload(CacheRun& run) {
  StreamingShard& streaming = *run.streaming;
  auto wait_start = std::chrono::steady_clock::now();
  auto uploaded = streaming.upload->Finish();
  spdlog::info(
      "{}: waited {:.1f} s for the last parts of the rank files", run.in.key.ToString(),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - wait_start).count());
  if (!uploaded && uploaded.error().reason == Reason::Cancelled) {
    return uploaded.error();
  }
  if (!uploaded) {
    spdlog::warn(
        "{}: the upload of the rank files while they were written failed ({}); "
        "uploading them again after the download",
        run.in.key.ToString(), uploaded.error().ToString());
    streaming.staged.clear();
  } else {
    const store::S3FillingUpload& upload = *streaming.upload;
    spdlog::info(
        "{}: rank files in the bucket: {} sent while downloading, {} after, {} parts "
        "found from an earlier run, {} parts sent again after a rewrite",
        run.in.key.ToString(), FormatBytes(upload.bytes_sent_before_finish()),
        FormatBytes(upload.bytes_sent() - upload.bytes_sent_before_finish()),
        upload.parts_reused(), upload.parts_sent_again());
  }
  streaming.sharder->SetWriteObserver({});
  streaming.upload.reset();
  return {};
}

// Shard: the sharded checkpoint in `staged` (finished by the streaming sharder, or sharded now
// from the downloaded blobs), hashed for the manifest.
VoidResult StageShards(CacheRun& run, Staged& staged) {
  run.state.phase = JobPhase::Sharding;
  auto shard_start = std::chrono::steady_clock::now();
  auto sharded = run.streaming ? run.streaming->sharder->Finish(run.stop)
                               : ShardAfterDownload(run.in, run.store, run.repo, run.files,
                                                    staged.dir, run.state, run.stop);
  if (sharded && run.in.observer != nullptr) {
    run.in.observer->ShardFinished(std::chrono::steady_clock::now() - shard_start);
  }
  if (sharded && run.streaming) {
    spdlog::info(
        "{}: sharded while downloading; {} of the weights read back from the store, "
        "{} of the rank files hashed while they filled",
        run.in.key.ToString(), FormatBytes(run.streaming->sharder->bytes_read_back()),
        FormatBytes(run.streaming->sharder->bytes_hashed_early()));
  }
  if (!sharded) {
    return sharded.error();
  }
  auto hash_start = std::chrono::steady_clock::now();
  auto hashed = HashShardFiles(staged.dir, sharded->files, run.in.shard_threads, sharded->sha256);
  if (!hashed) {
    return hashed.error();
  }
  spdlog::info(
      "{}: sharding took {:.1f} s after the download, hashing the artifact {:.1f} s",
      run.in.key.ToString(), std::chrono::duration<double>(hash_start - shard_start).count(),
      std::chrono::duration<double>(std::chrono::steady_clock::now() - hash_start).count());
  staged.manifest.files = std::move(*hashed);
  staged.manifest.shard = sharded->settings;
  if (run.streaming && run.streaming->upload) {
    return FinishRankFileUpload(run);
  }
  return {};
}

// Stage: the repo's files themselves, linked from their blobs.
VoidResult StageFiles(CacheRun& run, Staged& staged) {
  for (const auto& f : run.files) {
    if (auto r = run.store.StageFile(staged.dir, f.path, run.store.BlobPath(run.repo, f.etag()));
        !r) {
      return r.error();
    }
  }
  staged.manifest.files = std::move(run.manifest_files);
  return {};
}

// Stage or shard: the artifact in a staging directory (the one the streaming sharder writes, or
// a new one), discarded when a step fails or the job is cancelled.
Result<Staged> Stage(CacheRun& run) {
  const crds::ModelCacheSpec& spec = run.in.spec;
  Staged staged{"", SourceManifest(spec, run.repo, run.commit)};
  auto staging = run.streaming ? Result<std::string>(run.streaming->staging)
                               : run.store.CreateStaging(spec.artifact_name);
  if (!staging) {
    return staging.error();
  }
  staged.dir = *staging;
  VoidResult filled = spec.shard ? StageShards(run, staged) : StageFiles(run, staged);
  if (filled && run.stop.stop_requested()) {
    filled = Error(Reason::Cancelled, "cancelled");
  }
  if (!filled) {
    (void)run.store.DiscardStaging(staged.dir);
    return filled.error();
  }
  return staged;
}

// Publish: the staged version, by one rename. Under force the version may exist with damaged
// files (artifact files are hard links of the blobs that were just re-fetched), so it is
// replaced rather than reused.
Result<store::PublishedArtifact> Publish(CacheRun& run, Staged staged) {
  auto published = run.store.Publish(staged.dir, std::move(staged.manifest),
                                     run.in.verify_existing ? store::PublishMode::ReplaceExisting
                                                            : store::PublishMode::ReuseExisting);
  if (!published) {
    (void)run.store.DiscardStaging(staged.dir);
  }
  return published;
}

// Upload, for an S3 store: a sharded artifact's local version is the staging area of the upload
// (the sharder needs the files on disk); the bucket is the artifact's home.
Result<store::PublishedArtifact> Upload(CacheRun& run, const store::PublishedArtifact& local) {
  run.state.phase = JobPhase::Uploading;
  return PublishToS3(run.in, run.store, local, run.state, run.stop,
                     run.streaming ? run.streaming->staged : std::map<std::string, std::string>());
}

// The pipeline after the revision is resolved. The repo lock is held until the blobs are in
// place and linked; staging and publishing need no lock (the store makes concurrent publishes
// safe).
Result<CacheJobOutput> RunPipeline(CacheRun& run, fetch::HubClient& hub) {
  // Two jobs (in this process or another modelcache process on the same store, such as `prefetch`
  // next to the daemon) that fetch the same repo would otherwise write the same .incomplete
  // files; the second one waits, then finds the blobs in place. They mostly hold it for
  // milliseconds (everything already present), hence the short first polls of FileLock::Lock.
  auto lock = FileLock::Lock(RepoLockPath(run.store, run.repo), LockMode::Exclusive, run.stop);
  if (!lock) {
    return lock.error();
  }
  if (auto planned = Plan(run, hub); !planned) {
    return planned.error();
  }
  if (auto downloaded = Download(run); !downloaded) {
    return downloaded.error();
  }
  if (auto linked = LinkSnapshot(run); !linked) {
    return linked.error();
  }
  lock->Release();
  if (run.stop.stop_requested()) {
    return Error(Reason::Cancelled, "cancelled");
  }
  if (auto current = CurrentVersion(run)) {
    run.state.phase = JobPhase::Done;
    return run.Output(std::move(*current));
  }
  auto staged = Stage(run);
  if (!staged) {
    return staged.error();
  }
  auto published = Publish(run, std::move(*staged));
  if (published && !run.in.s3_uri.empty()) {
    published = Upload(run, *published);
  }
  if (!published) {
    return published.error();
  }
  run.state.phase = JobPhase::Done;
  return run.Output(std::move(*published));
}

}  // namespace

Result<CacheJobOutput> RunCacheJob(const CacheJobInputs& in, CacheJobState& state,
                                   std::stop_token stop) {
  auto opened = store::LocalStore::Open(in.store_root);
  if (!opened) {
    return opened.error();
  }
  store::LocalStore& store = **opened;
  if (in.spec.source.repo.rfind("s3://", 0) == 0) {
    return RunS3SourceJob(in, store, state, stop);
  }
  auto repo = RepoOf(in, store);
  if (!repo) {
    return repo.error();
  }
  // Garbage collection leaves the repo and the artifact name alone while we use them.
  auto repo_in_use = store::LockInUse(store.root(), "repo", store::RepoStoreName(*repo), stop);
  if (!repo_in_use) {
    return repo_in_use.error();
  }
  auto name_in_use = store::LockInUse(store.root(), "artifact", in.spec.artifact_name, stop);
  if (!name_in_use) {
    return name_in_use.error();
  }
  fetch::HubClient hub(in.hub);
  auto selected = ResolveFiles(in, hub, *repo, state, stop);
  if (!selected) {
    return selected.error();
  }
  if (!in.spec.shard && !in.s3_uri.empty()) {
    // Nothing of an unsharded S3 artifact needs the local copy: Hub -> bucket directly.
    return RunStreamingS3Job(in, hub, *repo, *selected, state, stop);
  }
  CacheRun run(in, state, std::move(stop), store, std::move(*repo), std::move(*selected));
  return RunPipeline(run, hub);
}

}  // namespace modelcache::reconcilers
