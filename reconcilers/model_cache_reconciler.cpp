#include "reconcilers/model_cache_reconciler.h"

#include <filesystem>
#include <map>
#include <mutex>

#include <spdlog/spdlog.h>

#include "common/files.h"
#include "common/units.h"
#include "reconcilers/internal/cache_job.h"
#include "reconcilers/internal/job_pool.h"
#include "store/local_store.h"
#include "store/s3_store.h"

namespace modelcache::reconcilers {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

struct JobEntry {
  std::string spec_hash;
  int64_t force = 0;
  std::stop_source stop;
  CacheJobState state;
  std::atomic<bool> finished{false};
  // Written by the job thread before `finished` is set; read by reconciles after.
  std::optional<Result<CacheJobOutput>> result;
};

crds::ArtifactStatus ToArtifactStatus(const store::PublishedArtifact& a) {
  crds::ArtifactStatus s;
  s.name = a.name;
  s.version = a.version;
  s.id = a.id;
  s.uri = a.uri;
  s.path = a.path;
  s.size_bytes = a.size_bytes;
  s.files = a.files;
  return s;
}

bool StartsWith(const std::string& s, std::string_view prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

std::string TrimRight(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ' ||
                        s.back() == '\t')) {
    s.pop_back();
  }
  return s;
}

}  // namespace

struct ModelCacheReconciler::Impl {
  explicit Impl(ReconcilerOptions o) : options(std::move(o)), pool(options.max_concurrent_jobs) {
    if (!options.transfer_factory) {
      int parallel = options.parallel_files;
      options.transfer_factory = [parallel](const fetch::HubOptions& hub) {
        return fetch::NewSimpleTransfer(hub, parallel);
      };
    }
    if (options.local_cache.empty() && !StartsWith(options.default_store, "s3://")) {
      options.local_cache = options.default_store;
    }
    if (!options.local_cache.empty()) {
      CleanupShardSources(options.local_cache);
    }
  }

  ReconcilerOptions options;
  JobPool pool;
  std::mutex mu;
  std::map<crds::ObjectKey, std::shared_ptr<JobEntry>> jobs;         // guarded by mu
  std::map<crds::ObjectKey, Clock::time_point> last_resolved;        // guarded by mu
  std::map<crds::ObjectKey, int64_t> applied_force;                  // guarded by mu
  bool shut_down = false;                                            // guarded by mu

  std::shared_ptr<JobEntry> FindJob(const crds::ObjectKey& key) {
    std::lock_guard lock(mu);
    auto it = jobs.find(key);
    return it == jobs.end() ? nullptr : it->second;
  }

  void EraseJob(const crds::ObjectKey& key, const std::shared_ptr<JobEntry>& job) {
    std::lock_guard lock(mu);
    auto it = jobs.find(key);
    if (it != jobs.end() && it->second == job) {
      jobs.erase(it);
    }
  }

  std::string StorageUri(const crds::ModelCacheSpec& spec) const {
    return spec.storage.uri.empty() ? options.default_store : spec.storage.uri;
  }

  // The local store of a spec: its storage, or the local cache that stages an S3 store's uploads.
  std::string StoreRoot(const crds::ModelCacheSpec& spec) const {
    std::string uri = StorageUri(spec);
    return StartsWith(uri, "s3://") ? options.local_cache : uri;
  }

  // The AWS configuration for an S3 store: the environment, overridden by the --s3-secret entry.
  // Errors name variables, files and the secret's path, never a value.
  Result<store::AwsConfig> AwsConfigFor(const std::string& uri) const {
    store::Environment env = options.aws_env;
    if (!options.s3_secret.empty()) {
      if (options.secrets_dir.empty()) {
        return Error(Reason::InvalidSpec, "--s3-secret " + options.s3_secret +
                                              ": the daemon has no --secrets-dir to read it from");
      }
      std::string dir = options.secrets_dir + "/" + options.s3_secret;
      if (!std::filesystem::is_directory(dir)) {
        return Error(Reason::InvalidSpec,
                     "S3 credentials for " + uri + ": secret directory " + dir + " not found");
      }
      if (std::filesystem::exists(dir + "/AWS_ACCESS_KEY_ID")) {
        // A key pair from the secret replaces the environment's, session token included.
        env.erase("AWS_SESSION_TOKEN");
      }
      for (const char* key : {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                              "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_PROFILE"}) {
        auto value = ReadFile(dir + "/" + key);
        if (value) {
          env[key] = TrimRight(*value);
        }
      }
    }
    auto config = store::LoadAwsConfig(env, options.aws_overrides);
    if (!config) {
      return Error(config.error().reason,
                   "S3 credentials for " + uri + ": " + config.error().message);
    }
    return config;
  }

  Result<std::string> Token(const crds::ModelCache& obj) const {
    const auto& ref = obj.spec.source.token_secret_ref;
    if (!ref) {
      return options.hf_token;
    }
    if (options.secrets_dir.empty()) {
      return Error(Reason::InvalidSpec,
                   "spec.source.tokenSecretRef: the daemon has no --secrets-dir to read secret \"" +
                       ref->name + "\" from");
    }
    std::string path = options.secrets_dir + "/" + ref->name + "/" + ref->key;
    auto token = ReadFile(path);
    if (!token) {
      return Error(Reason::InvalidSpec, "spec.source.tokenSecretRef: secret \"" + ref->name +
                                            "\" key \"" + ref->key + "\" not found at " + path);
    }
    return TrimRight(*token);
  }

  // Time until a Ready resource's branch should be resolved again: nullopt when it never is
  // (no refreshInterval, or a commit id), zero or less when it is due.
  std::optional<milliseconds> RefreshIn(const crds::ObjectKey& key,
                                        const crds::ModelCacheSpec& spec) {
    if (spec.refresh_interval.empty() || IsCommitId(spec.source.revision)) {
      return std::nullopt;
    }
    auto interval = ParseDuration(spec.refresh_interval);
    if (!interval || interval->count() == 0) {
      return std::nullopt;
    }
    std::lock_guard lock(mu);
    // First sight (after a restart): the refresh clock starts now, rather than every Ready
    // resource resolving at once.
    auto [it, inserted] = last_resolved.try_emplace(key, Clock::now());
    return std::chrono::duration_cast<milliseconds>(it->second + *interval - Clock::now());
  }

  Requeue RefreshRequeue(const crds::ObjectKey& key, const crds::ModelCacheSpec& spec) {
    auto in = RefreshIn(key, spec);
    if (!in) {
      return Requeue::Done();
    }
    return Requeue::After(std::max(*in, milliseconds(1)));
  }

  bool ArtifactPresent(const crds::ModelCacheSpec& spec, const crds::ArtifactStatus& artifact) {
    std::string uri = StorageUri(spec);
    if (StartsWith(uri, "s3://")) {
      // Committed in the bucket (modelcache.json present and matching its id) is present; any
      // error re-runs the job, which finds the local copy and the objects and only re-checks.
      auto config = AwsConfigFor(uri);
      auto s3 = config ? store::S3ArtifactStore::Open(uri, *config)
                       : Result<std::unique_ptr<store::S3ArtifactStore>>(config.error());
      if (!s3 || artifact.uri != (*s3)->location().Uri("artifacts/" + artifact.name + "/" +
                                                      artifact.version)) {
        return false;
      }
      auto version = (*s3)->ReadVersion(artifact.name, artifact.version);
      return version && version->has_value() && (*version)->id == artifact.id;
    }
    auto store = store::LocalStore::Open(StoreRoot(spec));
    if (!store) {
      return false;
    }
    auto version = (*store)->ReadVersion(artifact.name, artifact.version);
    return version && version->has_value();
  }

  crds::ModelCacheStatus RunningStatus(const crds::ModelCacheStatus& previous, JobEntry& job) {
    crds::ModelCacheStatus status = previous;
    JobPhase phase = job.state.phase.load();
    status.phase = std::string(JobPhaseName(phase == JobPhase::Done ? JobPhase::Uploading : phase));
    std::string commit = job.state.commit();
    if (!commit.empty()) {
      status.resolved_revision = commit;
    }
    crds::ProgressStatus p;
    if (phase == JobPhase::Sharding) {
      p.bytes_total = job.state.shard.bytes_total;
      p.bytes_done = job.state.shard.bytes_done;
    } else if (phase == JobPhase::Uploading) {
      p.bytes_total = job.state.upload.bytes_total;
      p.bytes_done = job.state.upload.bytes_done;
    } else {
      p.bytes_total = job.state.transfer.bytes_total;
      p.bytes_done = job.state.transfer.bytes_done;
      p.bytes_per_second = job.state.transfer.bytes_per_second;
    }
    p.files_total = job.state.transfer.files_total;
    p.files_done = job.state.transfer.files_done;
    status.progress = p;
    return status;
  }

  void StartJob(const crds::ObjectKey& key, const crds::ModelCache& obj, std::string spec_hash,
                fetch::HubOptions hub, bool verify_existing, std::optional<store::AwsConfig> aws) {
    auto job = std::make_shared<JobEntry>();
    job->spec_hash = std::move(spec_hash);
    job->force = obj.spec.force;
    CacheJobInputs in;
    in.key = key;
    in.spec = obj.spec;
    in.store_root = StoreRoot(obj.spec);
    if (aws) {
      in.s3_uri = StorageUri(obj.spec);
      in.aws = std::move(*aws);
    }
    in.hub = std::move(hub);
    in.verify_existing = verify_existing;
    in.shard_threads = options.shard_threads;
    in.transfer_factory = options.transfer_factory;
    {
      std::lock_guard lock(mu);
      jobs[key] = job;
    }
    pool.Submit([this, job, in = std::move(in)] {
      std::stop_token stop = job->stop.get_token();
      if (stop.stop_requested()) {
        job->result = Error(Reason::Cancelled, "cancelled before it started");
      } else {
        job->result = RunCacheJob(in, job->state, stop);
      }
      job->finished = true;
      if (options.wake) {
        options.wake(in.key);
      }
    });
  }
};

ModelCacheReconciler::ModelCacheReconciler(ReconcilerOptions options)
    : impl_(std::make_unique<Impl>(std::move(options))) {}

ModelCacheReconciler::~ModelCacheReconciler() { Shutdown(); }

void ModelCacheReconciler::Shutdown() {
  std::vector<std::shared_ptr<JobEntry>> jobs;
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->shut_down) {
      return;
    }
    impl_->shut_down = true;
    for (auto& [key, job] : impl_->jobs) {
      job->stop.request_stop();
    }
  }
  // Queued jobs see their stop token and finish at once; running ones return within the
  // transfer's cancellation latency.
  for (auto& dropped : impl_->pool.Stop()) {
    dropped();
  }
}

Result<Outcome> ModelCacheReconciler::Reconcile(const Request& request, std::stop_token) {
  Impl& impl = *impl_;
  const crds::ObjectKey& key = request.key;
  auto job = impl.FindJob(key);

  if (!request.object || request.source_error) {
    if (job) {
      job->stop.request_stop();
      impl.EraseJob(key, job);
      spdlog::info("{}: cancelled its running job", key.ToString());
    }
    if (request.source_error) {
      return *request.source_error;
    }
    std::lock_guard lock(impl.mu);
    impl.last_resolved.erase(key);
    impl.applied_force.erase(key);
    return Outcome{{}, Requeue::Done()};
  }

  const crds::ModelCache& obj = *request.object;
  std::string spec_hash = crds::SpecHash(obj.spec);

  if (job && job->spec_hash != spec_hash) {
    // The spec moved on: stop the old job, and start the new one only once the old one has
    // returned, so that two jobs never write the same partial files.
    job->stop.request_stop();
    if (!job->finished) {
      crds::ModelCacheStatus status = request.status;
      status.phase = std::string(crds::kPhasePending);
      status.progress.reset();
      return Outcome{status, Requeue::After(milliseconds(100))};
    }
    impl.EraseJob(key, job);
    job = nullptr;
  }

  if (job) {
    if (!job->finished) {
      return Outcome{impl.RunningStatus(request.status, *job),
                     Requeue::After(impl.options.progress_interval)};
    }
    impl.EraseJob(key, job);
    Result<CacheJobOutput>& result = *job->result;
    if (!result) {
      return result.error();
    }
    {
      std::lock_guard lock(impl.mu);
      impl.last_resolved[key] = Clock::now();
      impl.applied_force[key] = job->force;
    }
    crds::ModelCacheStatus status = request.status;
    bool changed = !status.artifact || status.artifact->id != result->artifact.id;
    status.phase = std::string(crds::kPhaseReady);
    status.resolved_revision = result->commit;
    status.artifact = ToArtifactStatus(result->artifact);
    crds::ProgressStatus done;
    done.bytes_total = done.bytes_done = job->state.transfer.bytes_total;
    done.files_total = done.files_done = job->state.transfer.files_total;
    status.progress = done;
    if (changed) {
      spdlog::info("{}: artifact {} published at {}", key.ToString(), result->artifact.id,
                   result->artifact.path.empty() ? result->artifact.uri : result->artifact.path);
    }
    return Outcome{status, impl.RefreshRequeue(key, obj.spec)};
  }

  // No job. Already in the desired state? (A restart lands here for every Ready resource.)
  const crds::ModelCacheStatus& prev = request.status;
  if (prev.phase == crds::kPhaseReady && prev.observed_generation == obj.metadata.generation &&
      prev.artifact && impl.ArtifactPresent(obj.spec, *prev.artifact)) {
    auto refresh_in = impl.RefreshIn(key, obj.spec);
    if (!refresh_in) {
      return Outcome{prev, Requeue::Done()};
    }
    if (refresh_in->count() > 0) {
      return Outcome{prev, Requeue::After(*refresh_in)};
    }
    spdlog::info("{}: refreshing revision {}", key.ToString(), obj.spec.source.revision);
  }

  std::optional<store::AwsConfig> aws;
  if (std::string uri = impl.StorageUri(obj.spec); StartsWith(uri, "s3://")) {
    if (auto loc = store::ParseS3StoreUri(uri); !loc) {
      return Error(Reason::InvalidSpec, "spec.storage.uri: " + loc.error().message);
    }
    if (impl.options.local_cache.empty()) {
      return Error(Reason::InvalidSpec, "spec.storage.uri: " + uri +
                                            " needs a local cache directory to stage downloads "
                                            "(the daemon's --cache-dir)");
    }
    auto config = impl.AwsConfigFor(uri);
    if (!config) {
      return config.error();
    }
    aws = std::move(*config);
  }
  auto token = impl.Token(obj);
  if (!token) {
    return token.error();
  }
  fetch::HubOptions hub;
  hub.endpoint = obj.spec.source.endpoint.empty() ? impl.options.hf_endpoint
                                                   : obj.spec.source.endpoint;
  while (!hub.endpoint.empty() && hub.endpoint.back() == '/') {
    hub.endpoint.pop_back();
  }
  hub.token = *token;
  hub.max_attempts = impl.options.max_attempts;
  hub.backoff_base = impl.options.backoff_base;
  hub.backoff_cap = impl.options.backoff_cap;
  bool verify_existing = false;
  if (obj.spec.force > 0) {
    std::lock_guard lock(impl.mu);
    auto it = impl.applied_force.find(key);
    verify_existing = it == impl.applied_force.end() || it->second != obj.spec.force;
  }
  {
    std::lock_guard lock(impl.mu);
    if (impl.shut_down) {
      return Error(Reason::Cancelled, "shutting down");
    }
  }
  impl.StartJob(key, obj, spec_hash, std::move(hub), verify_existing, std::move(aws));
  crds::ModelCacheStatus status = prev;
  status.phase = std::string(crds::kPhaseResolving);
  status.progress.reset();
  return Outcome{status, Requeue::After(impl.options.progress_interval)};
}

}  // namespace modelcache::reconcilers
