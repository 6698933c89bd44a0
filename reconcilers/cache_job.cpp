#include "reconcilers/internal/cache_job.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
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
#include "reconcilers/internal/cache_job_parts.h"
#include "reconcilers/internal/hub_flights.h"
#include "shard/sharder.h"
#include "store/gc.h"

namespace modelcache::reconcilers {
namespace {

namespace fs = std::filesystem;

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

}  // namespace

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

// Whether a failed download's partial files go: kept while a later job can resume them (a
// transient failure, a cancel by a spec change or a shutdown), removed after a permanent failure
// (the same job would fail the same way) or a cancel because the resource was deleted.
bool DiscardsPartial(const Error& error, const CacheJobState& state) {
  return error.reason == Reason::Cancelled ? state.discard_partial.load()
                                           : !IsTransient(error.reason);
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

namespace {

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
  auto lock = FileLock::Lock(run.store.RepoLockPath(run.repo), LockMode::Exclusive, run.stop);
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
  if (store::IsSharedStoreUri(in.spec.source.repo)) {
    // The source is an artifact of a shared store, not a Hub repo.
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
