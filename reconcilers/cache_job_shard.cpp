// Sharding while downloading (docs/sharding.md, "Sharding while downloading"): the plan from the
// headers, the rank files fed as the weights arrive, and their upload to an S3 store as they fill.

#include "reconcilers/internal/cache_job_parts.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <optional>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/sha256.h"
#include "common/units.h"
#include "shard/safetensors.h"
#include "shard/shard_plan.h"

namespace modelcache::reconcilers {
namespace {

namespace fs = std::filesystem;

// A directory of symlinks to exactly the selected files, so that the sharder sees the files this
// spec selected and not others that the same commit's snapshot holds for another spec.
Result<std::string> MakeShardSource(const store::LocalStore& store, const store::RepoRef& repo,
                                    const std::vector<fetch::RepoFile>& files) {
  std::string dir = store.ShardSourceDir();  // removed by the job, or after a crash by the store
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
                      {"sharder", shard::kSharderVersion}};
  nlohmann::json listed = nlohmann::json::array();
  for (const auto& f : files) {
    listed.push_back({f.path, f.size, f.etag()});
  }
  j["files"] = std::move(listed);
  return Sha256Hex(j.dump()).substr(0, 16);
}

}  // namespace

StreamingShard::~StreamingShard() {
  std::error_code ec;
  fs::remove_all(src, ec);
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
  if (config == nullptr) {  // CheckShardConfig refuses such a repo first
    return Error(Reason::ShardConfigInvalid, repo.id + " has no config.json");
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
      streaming.s3->IncomingUri(in.spec.artifact_name, stream));
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

}  // namespace modelcache::reconcilers
