// The cache job with an S3 store or source: a version uploaded from the local store, an s3://
// source pulled, and an unsharded Hub artifact streamed from the Hub into the bucket.

#include "reconcilers/internal/cache_job_parts.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/sha256.h"
#include "common/units.h"
#include "fetch/s3_pull.h"
#include "fetch/s3_stream.h"

namespace modelcache::reconcilers {
namespace {

namespace fs = std::filesystem;

// Regular (non-LFS) files are read into memory to learn their sha256 before the version is
// known. The Hub keeps such files small (it stores anything over 10 MiB in LFS); a larger one is
// refused rather than buffered.
constexpr uint64_t kMaxRegularFileBytes = 64ull << 20;
// Contents of regular files kept from hashing to upload; past this they are streamed again.
constexpr uint64_t kKeptRegularBytes = 16ull << 20;
// Files streamed at once; each fetches fetch::StreamOptions' 4 ranges at a time (8 requests in
// flight, as the transfer engine's default per artifact) and uploads its parts in parallel.
constexpr size_t kStreamedFilesAtOnce = 2;

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

}  // namespace

// Uploads a locally published version (sharded, or pulled from another S3 store) to the S3 store
// and commits it there. Unsharded Hub artifacts stream instead (RunStreamingS3Job).
// `staged` (a sharded artifact uploaded while it was written) maps paths to the objects that hold
// those files' bytes already: they are copied server-side instead of uploaded, then removed.
Result<store::PublishedArtifact> PublishToS3(
    const CacheJobInputs& in, store::LocalStore& local, const store::PublishedArtifact& published,
    CacheJobState& state, std::stop_token stop,
    const std::map<std::string, std::string>& staged) {
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
    // Named by the resource, not by the attempt: a retry of this job resumes what an
    // interrupted pull left (Pull's staging, <pulled>.partial-<version>). '_' is in no
    // namespace or name.
    std::string pulled = local.PullScratchDir(in.key.namespace_ + "_" + in.key.name);
    store::S3TransferProgress progress;
    // Through the job's transfer layer: parallel ranges, counted in the job's progress.
    auto transfer = in.transfer_factory(fetch::S3PullRetriesOf(in.hub));
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
            std::copy_n(kept[i].data() + offset, take, out);
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

}  // namespace modelcache::reconcilers
