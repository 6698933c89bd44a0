#include "reconcilers/model_cache_reconciler.h"

#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <variant>

#include <spdlog/spdlog.h>

#include "common/allow_list.h"
#include "common/files.h"
#include "common/guard.h"
#include "common/units.h"
#include "reconcilers/internal/artifact_names.h"
#include "reconcilers/internal/cache_job.h"
#include "reconcilers/internal/credentials.h"
#include "reconcilers/internal/job_entry.h"
#include "reconcilers/internal/job_failures.h"
#include "reconcilers/internal/job_pool.h"
#include "reconcilers/internal/verify_job.h"
#include "store/artifact_store.h"
#include "store/local_store.h"

namespace modelcache::reconcilers {
namespace {

using std::chrono::milliseconds;

// Sets condition `c` (by type) in `conditions` without a transition time: the manager merges it
// into the written status and stamps the time when its status changes.
void PutCondition(std::vector<crds::Condition>& conditions, crds::Condition c) {
  c.last_transition_time.clear();
  for (auto& existing : conditions) {
    if (existing.type == c.type) {
      if (existing.status == c.status) {
        c.last_transition_time = existing.last_transition_time;
      }
      existing = std::move(c);
      return;
    }
  }
  conditions.push_back(std::move(c));
}

crds::Condition Verified(bool ok, std::string reason, std::string message, int64_t generation) {
  crds::Condition c;
  c.type = "Verified";
  c.status = ok ? "True" : "False";
  c.reason = std::move(reason);
  c.message = std::move(message);
  c.observed_generation = generation;
  return c;
}

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

}  // namespace

struct ModelCacheReconciler::Impl {
  explicit Impl(ReconcilerOptions o) : options(std::move(o)), pool(options.max_concurrent_jobs) {
    if (options.clock == nullptr) {
      options.clock = &RealClock::Get();
    }
    if (!options.transfer_factory) {
      // Each Transfer keeps the engine alive while it runs, so the engine outlives every job.
      auto engine = std::make_shared<fetch::TransferEngine>(options.transfer);
      options.transfer_factory = [engine](const fetch::TransferSource& source) {
        return engine->NewTransfer(source);
      };
    }
    if (options.local_cache.empty() && !store::IsSharedStoreUri(options.default_store)) {
      options.local_cache = options.default_store;
    }
    if (!options.local_cache.empty()) {
      store::LocalStore::RemoveOrphanedScratch(options.local_cache);
    }
    std::vector<std::string> endpoints = options.allowed_endpoints;
    endpoints.push_back(options.hf_endpoint);
    std::vector<std::string> stores = options.allowed_stores;
    stores.push_back(options.default_store);
    // Entries that do not parse were refused by main; one that slips through allows nothing.
    if (auto list = AllowList::Parse(endpoints, "--allowed-endpoints")) {
      allowed_endpoints = std::move(*list);
    }
    if (auto list = AllowList::Parse(stores, "--allowed-stores")) {
      allowed_stores = std::move(*list);
    }
    if (auto own = AllowList::Parse({options.hf_endpoint}, "--hf-endpoint")) {
      own_endpoint = std::move(*own);
    }
  }

  ReconcilerOptions options;
  Clock::TimePoint Now() const { return options.clock->Now(); }
  AllowList allowed_endpoints;
  AllowList allowed_stores;
  AllowList own_endpoint;  // where the daemon's own token may go

  // InvalidSpec naming the field when the spec names an endpoint or store the operator has not
  // allowed: checked before anything is fetched, read or written for the resource.
  VoidResult CheckAllowed(const crds::ModelCacheSpec& spec) const {
    if (options.allow_any) {
      return {};
    }
    auto refuse = [](const std::string& field, const std::string& value, const char* what,
                     const char* flag) {
      return Error(Reason::InvalidSpec, field + ": \"" + value + "\" is not among the " + what +
                                            " this daemon allows (" + flag + ")");
    };
    if (!spec.source.endpoint.empty() && !allowed_endpoints.Allows(spec.source.endpoint)) {
      return refuse("spec.source.endpoint", spec.source.endpoint, "endpoints",
                    "--allowed-endpoints");
    }
    if (!spec.storage.uri.empty() && !allowed_stores.Allows(spec.storage.uri)) {
      return refuse("spec.storage.uri", spec.storage.uri, "stores", "--allowed-stores");
    }
    // An S3 artifact as the source is read with the daemon's S3 credentials.
    if (store::IsSharedStoreUri(spec.source.repo) && !allowed_stores.Allows(spec.source.repo)) {
      return refuse("spec.source.repo", spec.source.repo, "stores", "--allowed-stores");
    }
    return {};
  }
  JobPool pool;

  std::string TenantOf(const crds::ObjectKey& key) const {
    return options.tenant_of ? options.tenant_of(key) : key.namespace_;
  }

  std::mutex mu;
  std::map<crds::ObjectKey, std::shared_ptr<JobEntry>> jobs;         // guarded by mu
  std::map<crds::ObjectKey, Clock::TimePoint> last_resolved;        // guarded by mu
  std::map<crds::ObjectKey, int64_t> applied_force;                  // guarded by mu
  std::map<crds::ObjectKey, Clock::TimePoint> last_verified;        // guarded by mu
  ArtifactNames names{options.claim_scope, options.hf_endpoint, options.name_recheck};
  JobFailures failures{{options.stall_limit, options.backoff_base, options.backoff_cap}};
  // One drift check at a time, so verification never takes more than one pool thread.
  std::atomic<bool> verifying{false};
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
    return store::IsSharedStoreUri(uri) ? options.local_cache : uri;
  }

  // A deleted resource frees the name it held (ArtifactNames::Release).
  void ReleaseArtifactName(const Request& request) {
    std::string root = request.deleting ? StoreRoot(request.deleting->spec) : std::string();
    names.Release(request.key, root, request.deleting ? request.deleting->spec.artifact_name : "");
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
    auto [it, inserted] = last_resolved.try_emplace(key, Now());
    return std::chrono::duration_cast<milliseconds>(it->second + *interval - Now());
  }

  // Time until a Ready resource's artifact should be re-verified: nullopt when never.
  std::optional<milliseconds> VerifyIn(const crds::ObjectKey& key) {
    if (options.verify_interval.count() <= 0) {
      return std::nullopt;
    }
    std::lock_guard lock(mu);
    // First sight: the clock starts now, so a restart does not re-hash everything at once.
    auto [it, inserted] = last_verified.try_emplace(key, Now());
    return std::chrono::duration_cast<milliseconds>(it->second + options.verify_interval - Now());
  }

  void MarkVerified(const crds::ObjectKey& key) {
    std::lock_guard lock(mu);
    last_verified[key] = Now();
  }

  // The next time a Ready resource needs a look: its refresh or its verification.
  Requeue NextCheck(const crds::ObjectKey& key, const crds::ModelCacheSpec& spec) {
    auto refresh = RefreshIn(key, spec);
    auto verify = VerifyIn(key);
    if (!refresh && !verify) {
      return Requeue::Done();
    }
    milliseconds in = refresh && verify ? std::min(*refresh, *verify)
                      : refresh         ? *refresh
                                        : *verify;
    return Requeue::After(std::max(in, milliseconds(1)));
  }

  // A Ready status with what the store's garbage collector has to say about it.
  crds::ModelCacheStatus WithRetention(crds::ModelCacheStatus status, const crds::ModelCache& obj) {
    if (options.retention) {
      if (auto c = options.retention(obj)) {
        c->observed_generation = obj.metadata.generation;
        PutCondition(status.conditions, *c);
      } else if (const crds::Condition* was = crds::FindCondition(status.conditions, "Retained");
                 was != nullptr && was->reason == "Kept") {
        crds::Condition within = *was;
        within.reason = "WithinLimits";
        within.message = "the store is within its limits again";
        within.observed_generation = obj.metadata.generation;
        PutCondition(status.conditions, within);
      }
    }
    return status;
  }

  // The endpoint a spec's content comes from (and so the hub cache it lands in).
  std::string EndpointOf(const crds::ModelCacheSpec& spec) const {
    std::string endpoint =
        spec.source.endpoint.empty() ? options.hf_endpoint : spec.source.endpoint;
    while (!endpoint.empty() && endpoint.back() == '/') {
      endpoint.pop_back();
    }
    return endpoint;
  }

  Result<fetch::HubOptions> HubFor(const crds::ModelCache& obj) const {
    auto token = HubTokenFor(options, own_endpoint, obj);
    if (!token) {
      return token.error();
    }
    fetch::HubOptions hub;
    hub.endpoint = EndpointOf(obj.spec);
    hub.token = *token;
    hub.max_attempts = options.max_attempts;
    hub.backoff_base = options.backoff_base;
    hub.backoff_cap = options.backoff_cap;
    hub.stall_timeout = options.transfer.stall_timeout;
    return hub;
  }

  // Tells the observer about each problem a drift check found (FindDrift joins them with "; ").
  void ReportDrift(const crds::ObjectKey& key, const Result<std::string>& drift) {
    if (options.observer == nullptr || !drift || drift->empty()) {
      return;
    }
    std::string_view rest = *drift;
    while (!rest.empty()) {
      size_t end = rest.find("; ");
      options.observer->VerificationFailed(key, std::string(rest.substr(0, end)));
      rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 2);
    }
  }

  // Makes `job` the key's job and tells the observer; the caller then submits it.
  void AddJob(const crds::ObjectKey& key, std::shared_ptr<JobEntry> job) {
    {
      std::lock_guard lock(mu);
      jobs[key] = std::move(job);
    }
    if (options.observer != nullptr) {
      options.observer->JobStarted(key);
    }
  }

  // Starts a drift check of the Ready artifact `status` reports, on the pool.
  // REQUIRES: the caller set `verifying`; the check clears it when it ends.
  void StartDriftCheck(const crds::ObjectKey& key, const crds::ModelCache& obj,
                       std::string spec_hash, const crds::ModelCacheStatus& status) {
    auto job = std::make_shared<JobEntry>();
    job->kind = JobKind::DriftCheck;
    job->spec_hash = std::move(spec_hash);
    job->force = obj.spec.force;
    AddJob(key, job);
    pool.Submit(TenantOf(key), [this, job, key, spec = obj.spec, root = StoreRoot(obj.spec),
                                artifact = *status.artifact, commit = status.resolved_revision,
                                endpoint = EndpointOf(obj.spec)] {
      std::stop_token stop = job->stop.get_token();
      Result<std::string> drift = Error(Reason::Cancelled, "cancelled before it started");
      if (!stop.stop_requested()) {
        // The last resort: an exception fails this resource's verification, not the daemon.
        drift = ResultOrInternalError("verify job " + key.ToString(), [&] {
          return FindDrift(root, spec, artifact, commit, endpoint, options.hf_endpoint, stop);
        });
      }
      ReportDrift(key, drift);
      job->end = DriftCheckEnd{std::move(drift)};
      verifying = false;
      job->finished = true;
      if (options.observer != nullptr) {
        options.observer->JobFinished(key);
      }
      if (options.wake) {
        options.wake(key);
      }
    });
  }

  // The S3 settings of a spec whose storage is shared (an S3 bucket); nullopt for a local store.
  Result<std::optional<store::AwsConfig>> S3ConfigFor(const crds::ModelCacheSpec& spec) const {
    std::optional<store::AwsConfig> aws;
    if (std::string uri = StorageUri(spec); store::IsSharedStoreUri(uri)) {
      if (auto checked = store::CheckStoreUri(uri); !checked) {
        return Error(Reason::InvalidSpec, "spec.storage.uri: " + checked.error().message);
      }
      if (options.local_cache.empty()) {
        return Error(Reason::InvalidSpec, "spec.storage.uri: " + uri +
                                              " needs a local cache directory to stage downloads "
                                              "(the daemon's --cache-dir)");
      }
      auto config = AwsConfigFor(options, uri);
      if (!config) {
        return config.error();
      }
      aws = std::move(*config);
    }
    return aws;
  }

  // The AWS configuration to read a source that is an S3 artifact with; nullopt for a Hub repo.
  Result<std::optional<store::AwsConfig>> SourceConfigFor(const crds::ModelCacheSpec& spec) const {
    std::optional<store::AwsConfig> aws;
    if (store::IsSharedStoreUri(spec.source.repo)) {
      auto config = AwsConfigFor(options, spec.source.repo);
      if (!config) {
        return config.error();
      }
      aws = std::move(*config);
    }
    return aws;
  }

  bool ArtifactPresent(const crds::ModelCacheSpec& spec, const crds::ArtifactStatus& artifact) {
    // A shared store is read with the credentials for the resource's storage. Any error re-runs
    // the job, which finds what is there and only re-checks it.
    std::string uri = StorageUri(spec);
    store::ArtifactStoreOptions store_options;
    if (store::IsSharedStoreUri(uri)) {
      auto config = AwsConfigFor(options, uri);
      if (!config) {
        return false;
      }
      store_options.aws = std::move(*config);
    }
    auto opened = store::OpenArtifactStore(uri, store_options);
    if (!opened) {
      return false;
    }
    store::PublishedArtifact held;
    held.name = artifact.name;
    held.version = artifact.version;
    held.id = artifact.id;
    held.uri = artifact.uri;
    return (*opened)->Holds(held, {});
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

  // What a cache job does besides caching the spec.
  struct CachePlan {
    bool verify_existing = false;  // re-hash the blobs already in the store (spec.force, a heal)
    std::string pinned_commit;     // fetch this commit instead of resolving the revision (a heal)
    std::string heal;              // non-empty: a heal job, repairing this (for its status)
    bool awaited = false;          // the caller will AwaitFinish() the job
  };

  // The inputs of a cache job for `obj`. Fails when the spec's S3, source or Hub settings cannot
  // be resolved.
  Result<CacheJobInputs> CacheInputs(const crds::ObjectKey& key, const crds::ModelCache& obj,
                                     const CachePlan& plan) const {
    auto aws = S3ConfigFor(obj.spec);
    if (!aws) {
      return aws.error();
    }
    auto source_aws = SourceConfigFor(obj.spec);
    if (!source_aws) {
      return source_aws.error();
    }
    auto hub = HubFor(obj);
    if (!hub) {
      return hub.error();
    }
    CacheJobInputs in;
    in.key = key;
    in.spec = obj.spec;
    in.store_root = StoreRoot(obj.spec);
    if (*aws) {
      in.s3_uri = StorageUri(obj.spec);
      in.aws = std::move(**aws);
    }
    if (*source_aws) {
      in.source_aws = std::move(**source_aws);
    }
    in.hub = std::move(*hub);
    in.own_endpoint = options.hf_endpoint;
    in.verify_existing = plan.verify_existing;
    in.pinned_commit = plan.pinned_commit;
    in.shard_threads = options.shard_threads;
    in.shard_while_downloading = options.shard_while_downloading;
    in.transfer_factory = options.transfer_factory;
    in.observer = options.observer;
    return in;
  }

  // Starts the cache job for `obj` on the pool. Fails (nothing started) when its inputs cannot be
  // resolved.
  VoidResult StartCacheJob(const crds::ObjectKey& key, const crds::ModelCache& obj,
                           std::string spec_hash, const CachePlan& plan) {
    auto in = CacheInputs(key, obj, plan);
    if (!in) {
      return in.error();
    }
    auto job = std::make_shared<JobEntry>();
    job->kind = plan.heal.empty() ? JobKind::Cache : JobKind::Heal;
    job->spec_hash = std::move(spec_hash);
    job->force = obj.spec.force;
    job->heal = plan.heal;
    job->awaited = plan.awaited;
    AddJob(key, job);
    pool.Submit(TenantOf(key), [this, job, in = std::move(*in)] {
      std::stop_token stop = job->stop.get_token();
      Result<CacheJobOutput> output = Error(Reason::Cancelled, "cancelled before it started");
      if (!stop.stop_requested()) {
        // The last resort: an exception fails this resource (InternalError, its message in the
        // status) while the daemon and every other resource go on.
        output = ResultOrInternalError("cache job " + in.key.ToString(),
                                       [&] { return RunCacheJob(in, job->state, stop); });
      }
      job->end = CacheJobEnd{std::move(output)};
      bool taken = job->Finish();  // by a reconcile waiting for it
      if (options.observer != nullptr) {
        options.observer->JobFinished(in.key);
      }
      if (options.wake && !taken) {
        options.wake(in.key);
      }
    }, [job] { return job->Preempt(); });
    return {};
  }

  // ---- The reconcile: one look at the resource, then the one step its situation calls for.

  // The situation a reconcile finds a resource in, in the order the look tells them apart.
  enum class Situation {
    Gone,             // deleted, or refused by its source: cancel its job, let go of its name
    OldJobStopping,   // a job for an earlier spec has not returned yet: wait for it
    Refused,          // the spec names what the operator does not allow, or another's name
    JobRunning,       // a job for this spec runs: report its progress
    CacheJobEnded,    // report the artifact the cache (or heal) job published, or its failure
    DriftCheckEnded,  // report the artifact intact, or start healing what changed
    Current,          // Ready and in the store, nothing due: wait for the next check
    VerifyDue,        // Ready and in the store, its verification due: start a drift check
    RefreshDue,       // Ready and in the store, its branch due to be resolved again
    ArtifactMissing,  // Ready, but its version is gone from the store: cache it again
    NotReady,         // no Ready artifact for this generation (new, changed, failed): cache it
  };

  struct Look {
    Situation situation = Situation::NotReady;
    std::string spec_hash;          // of request.object's spec; empty when Gone
    std::shared_ptr<JobEntry> job;  // the key's job: when running or ended, and when Gone
    std::optional<Error> refusal;   // Refused: why
  };

  // Tells the situation apart. Drops a job that no longer counts (one for an earlier spec once
  // it returned, one that gave its slot to another tenant), and before any step that could move
  // the artifact name's `current`, checks the spec against the allow-lists and claims the name.
  Look LookAt(const Request& request, std::stop_token stop) {
    const crds::ObjectKey& key = request.key;
    Look look;
    look.job = FindJob(key);
    if (!request.object || request.source_error) {
      look.situation = Situation::Gone;
      return look;
    }
    look.spec_hash = crds::SpecHash(request.object->spec);
    if (look.job && look.job->spec_hash != look.spec_hash) {
      // The spec moved on: stop the old job, and start the new one only once the old one has
      // returned, so that two jobs never write the same partial files.
      look.job->stop.request_stop();
      if (!look.job->finished) {
        look.situation = Situation::OldJobStopping;
        return look;
      }
      EraseJob(key, look.job);
      look.job = nullptr;
    }
    if (look.job && look.job->finished && look.job->Preempted()) {
      // It gave its slot to another tenant: start it again (it resumes its partial files).
      EraseJob(key, look.job);
      look.job = nullptr;
      spdlog::info("{}: gave its job slot to another tenant; waiting for the next", key.ToString());
    }
    if (look.job) {
      look.situation = !look.job->finished                     ? Situation::JobRunning
                       : look.job->kind == JobKind::DriftCheck ? Situation::DriftCheckEnded
                                                               : Situation::CacheJobEnded;
      return look;
    }
    // A job runs only for an allowed spec (the allow-lists do not change while the daemon runs),
    // so one running for this spec needs no check.
    VoidResult allowed = CheckAllowed(request.object->spec);
    if (allowed) {
      allowed = names.Claim(key, request.object->spec, StoreRoot(request.object->spec), stop);
    }
    if (!allowed) {
      look.situation = Situation::Refused;
      look.refusal = allowed.error();
      return look;
    }
    look.situation = StoreSituation(request);
    return look;
  }

  // The situation of a resource without a job: what its last status and the store say. A
  // restart lands here for every Ready resource.
  Situation StoreSituation(const Request& request) {
    const crds::ModelCache& obj = *request.object;
    const crds::ModelCacheStatus& prev = request.status;
    if (prev.phase != crds::kPhaseReady || prev.observed_generation != obj.metadata.generation ||
        !prev.artifact) {
      return Situation::NotReady;
    }
    if (!ArtifactPresent(obj.spec, *prev.artifact)) {
      return Situation::ArtifactMissing;
    }
    auto refresh_in = RefreshIn(request.key, obj.spec);
    if (refresh_in && refresh_in->count() <= 0) {
      return Situation::RefreshDue;
    }
    auto verify_in = VerifyIn(request.key);
    if (verify_in && verify_in->count() <= 0 && !prev.resolved_revision.empty()) {
      return Situation::VerifyDue;
    }
    return Situation::Current;
  }

  Result<Outcome> Reconcile(const Request& request, std::stop_token stop) {
    Look look = LookAt(request, stop);
    switch (look.situation) {
      case Situation::Gone:
        return LetGo(request, look.job);
      case Situation::OldJobStopping:
        return WaitForOldJob(request);
      case Situation::Refused:
        return *look.refusal;
      case Situation::JobRunning:
        return ReportProgress(request, *look.job);
      case Situation::CacheJobEnded:
        return ReportCacheJob(request, look);
      case Situation::DriftCheckEnded:
        return ReportDriftCheck(request, look);
      case Situation::Current:
        return Outcome{WithRetention(request.status, *request.object),
                       NextCheck(request.key, request.object->spec)};
      case Situation::VerifyDue:
        return StartVerification(request, look.spec_hash);
      case Situation::RefreshDue:
        spdlog::info("{}: refreshing revision {}", request.key.ToString(),
                     request.object->spec.source.revision);
        return StartCaching(request, look.spec_hash, /*heal=*/"", stop);
      case Situation::ArtifactMissing:
        return HealMissingVersion(request, look.spec_hash, stop);
      case Situation::NotReady:
        return StartCaching(request, look.spec_hash, /*heal=*/"", stop);
    }
    return Error(Reason::Internal, "unknown reconcile situation");
  }

  // Gone: cancels the key's job (its partial files go: nothing will resume them). A deleted
  // resource also lets go of its artifact name and of everything remembered about it; a refused
  // one reports its source's error.
  Result<Outcome> LetGo(const Request& request, const std::shared_ptr<JobEntry>& job) {
    const crds::ObjectKey& key = request.key;
    if (job) {
      job->state.discard_partial = true;
      job->stop.request_stop();
      EraseJob(key, job);
      spdlog::info("{}: cancelled its running job", key.ToString());
    }
    if (request.source_error) {
      return *request.source_error;
    }
    ReleaseArtifactName(request);
    std::lock_guard lock(mu);
    last_resolved.erase(key);
    applied_force.erase(key);
    last_verified.erase(key);
    failures.Forget(key);
    return Outcome{{}, Requeue::Done()};
  }

  // OldJobStopping: Pending until the old job has returned.
  static Outcome WaitForOldJob(const Request& request) {
    crds::ModelCacheStatus status = request.status;
    status.phase = std::string(crds::kPhasePending);
    status.progress.reset();
    return Outcome{status, Requeue::After(milliseconds(100))};
  }

  // JobRunning: a cache job's phase and progress; a drift check leaves the status as it is.
  Outcome ReportProgress(const Request& request, JobEntry& job) {
    if (job.kind == JobKind::DriftCheck) {
      return Outcome{WithRetention(request.status, *request.object),
                     Requeue::After(options.progress_interval)};
    }
    return Outcome{RunningStatus(request.status, job), Requeue::After(options.progress_interval)};
  }

  // CacheJobEnded: Ready with the artifact published (and Healed when the job repaired one), or
  // the job's failure, recorded for its backoff.
  Result<Outcome> ReportCacheJob(const Request& request, const Look& look) {
    const crds::ObjectKey& key = request.key;
    const crds::ModelCache& obj = *request.object;
    const JobEntry& job = *look.job;
    EraseJob(key, look.job);
    const Result<CacheJobOutput>& result = std::get<CacheJobEnd>(*job.end).output;
    if (!result) {
      return failures.Record(key, look.spec_hash, result.error(), Now());
    }
    failures.Forget(key);
    {
      std::lock_guard lock(mu);
      last_resolved[key] = Now();
      applied_force[key] = job.force;
    }
    crds::ModelCacheStatus status = ReadyStatus(key, request.status, *result, job.state);
    NoteHealed(key, job, *result, obj.metadata.generation, status);
    if (options.published) {
      options.published();
    }
    return Outcome{WithRetention(status, obj), NextCheck(key, obj.spec)};
  }

  // `previous` turned Ready with the artifact a cache job published.
  static crds::ModelCacheStatus ReadyStatus(const crds::ObjectKey& key,
                                            const crds::ModelCacheStatus& previous,
                                            const CacheJobOutput& result,
                                            const CacheJobState& state) {
    crds::ModelCacheStatus status = previous;
    bool changed = !status.artifact || status.artifact->id != result.artifact.id;
    status.phase = std::string(crds::kPhaseReady);
    status.resolved_revision = result.commit;
    status.artifact = ToArtifactStatus(result.artifact);
    crds::ProgressStatus done;
    done.bytes_total = done.bytes_done = state.transfer.bytes_total;
    done.files_total = done.files_done = state.transfer.files_total;
    status.progress = done;
    if (changed) {
      spdlog::info("{}: artifact {} published at {}", key.ToString(), result.artifact.id,
                   result.artifact.path.empty() ? result.artifact.uri : result.artifact.path);
    }
    return status;
  }

  // A heal that ended here (or a plain job after a heal that failed part-way) says so:
  // Verified=True, Healed, with what was repaired and how; it counts as a verification.
  void NoteHealed(const crds::ObjectKey& key, const JobEntry& job, const CacheJobOutput& result,
                  int64_t generation, crds::ModelCacheStatus& status) {
    std::string healed = job.heal;
    const crds::Condition* verified = crds::FindCondition(status.conditions, "Verified");
    if (healed.empty() && verified != nullptr && verified->status == "False") {
      healed = verified->message;
    }
    if (healed.empty()) {
      return;
    }
    std::string fetched;
    for (const auto& path : result.fetched) {
      fetched += (fetched.empty() ? "" : ", ") + path;
    }
    std::string message =
        "healed: " + healed + "; " +
        (fetched.empty() ? "re-published from the verified blobs" : "re-fetched " + fetched);
    spdlog::info("{}: {}", key.ToString(), message);
    MarkVerified(key);
    PutCondition(status.conditions, Verified(true, "Healed", message, generation));
  }

  // DriftCheckEnded: Verified=True when nothing changed on disk, else a heal job for what did.
  Result<Outcome> ReportDriftCheck(const Request& request, const Look& look) {
    const crds::ObjectKey& key = request.key;
    const crds::ModelCache& obj = *request.object;
    EraseJob(key, look.job);
    const Result<std::string>& drift = std::get<DriftCheckEnd>(*look.job->end).drift;
    if (!drift) {
      return drift.error();
    }
    crds::ModelCacheStatus status = request.status;
    if (drift->empty()) {
      MarkVerified(key);
      PutCondition(status.conditions,
                   Verified(true, "Verified",
                            "every file of " + status.artifact->id +
                                " and its blobs match their checksums",
                            obj.metadata.generation));
      return Outcome{WithRetention(status, obj), NextCheck(key, obj.spec)};
    }
    spdlog::warn("{}: drift found: {}; healing", key.ToString(), *drift);
    CachePlan plan;
    plan.verify_existing = true;
    plan.pinned_commit = status.resolved_revision;
    plan.heal = *drift;
    if (auto r = StartCacheJob(key, obj, look.spec_hash, plan); !r) {
      return r.error();
    }
    return CacheJobStarted(status, plan.heal, obj.metadata.generation);
  }

  // VerifyDue: a drift check, when no other artifact is being verified.
  Outcome StartVerification(const Request& request, const std::string& spec_hash) {
    const crds::ModelCache& obj = *request.object;
    if (verifying.exchange(true)) {
      // Another artifact is being verified: wait for our turn.
      return Outcome{WithRetention(request.status, obj), Requeue::After(milliseconds(1000))};
    }
    StartDriftCheck(request.key, obj, spec_hash, request.status);
    return Outcome{WithRetention(request.status, obj), Requeue::After(options.progress_interval)};
  }

  // ArtifactMissing: a heal job that publishes the version again.
  Result<Outcome> HealMissingVersion(const Request& request, const std::string& spec_hash,
                                     std::stop_token stop) {
    const crds::ArtifactStatus& artifact = *request.status.artifact;
    std::string heal = "artifact version " + artifact.name + "/" + artifact.version +
                       " is missing from the store";
    spdlog::warn("{}: {}; caching it again", request.key.ToString(), heal);
    return StartCaching(request, spec_hash, std::move(heal), stop);
  }

  // NotReady, RefreshDue, ArtifactMissing: starts a cache job (a heal when `heal` says what it
  // repairs) unless a failure of this spec waits for a change or its backoff, and reports it as
  // Resolving; or, settling, reports its result when it ends in time.
  Result<Outcome> StartCaching(const Request& request, const std::string& spec_hash,
                               std::string heal, std::stop_token stop) {
    const crds::ObjectKey& key = request.key;
    const crds::ModelCache& obj = *request.object;
    const crds::ModelCacheStatus& prev = request.status;
    CachePlan plan = PlanCacheJob(request, std::move(heal));
    {
      std::lock_guard lock(mu);
      if (shut_down) {
        return Error(Reason::Cancelled, "shutting down");
      }
    }
    if (auto failed = failures.Pending(key, spec_hash, Now())) {
      return *failed;  // a permanent failure waits for the spec; a transient one for its backoff
    }
    // Only for a resource not reported on yet: a spec change of a reported one is acknowledged
    // (observedGeneration) at once.
    plan.awaited = options.settle.count() > 0 && prev.phase.empty() && pool.HasFreeThread();
    if (auto r = StartCacheJob(key, obj, spec_hash, plan); !r) {
      return r.error();
    }
    if (auto started = FindJob(key);
        plan.awaited && started && started->AwaitFinish(options.settle, stop)) {
      return Reconcile(request, stop);  // finds the finished job and reports its result
    }
    return CacheJobStarted(prev, plan.heal, obj.metadata.generation);
  }

  // The plan of the next cache job: re-hash the blobs when spec.force moved; resume a heal that
  // failed part-way as a heal (blobs re-hashed, not merely found present, or a same-size
  // corrupted blob would be published again).
  CachePlan PlanCacheJob(const Request& request, std::string heal) {
    const crds::ModelCache& obj = *request.object;
    CachePlan plan;
    plan.heal = std::move(heal);
    if (obj.spec.force > 0) {
      std::lock_guard lock(mu);
      auto it = applied_force.find(request.key);
      plan.verify_existing = it == applied_force.end() || it->second != obj.spec.force;
    }
    const crds::Condition* healing = crds::FindCondition(request.status.conditions, "Verified");
    if (plan.heal.empty() && healing != nullptr && healing->status == "False" &&
        healing->observed_generation == obj.metadata.generation) {
      plan.heal = healing->message;
      plan.verify_existing = true;
      plan.pinned_commit = request.status.resolved_revision;
    }
    return plan;
  }

  // The status of a resource whose cache job was just started: Resolving, and Healing when the
  // job repairs something.
  Outcome CacheJobStarted(crds::ModelCacheStatus status, const std::string& heal,
                          int64_t generation) const {
    status.phase = std::string(crds::kPhaseResolving);
    status.progress.reset();
    if (!heal.empty()) {
      PutCondition(status.conditions, Verified(false, "Healing", heal, generation));
    }
    return Outcome{status, Requeue::After(options.progress_interval)};
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
  // transfer's cancellation latency, and are waited for: once Shutdown returns no job calls back
  // (wake, published), so whatever those callbacks reach may go.
  for (auto& dropped : impl_->pool.Stop()) {
    dropped();
  }
  impl_->pool.Join();
}

Result<Outcome> ModelCacheReconciler::Reconcile(const Request& request, std::stop_token stop) {
  return impl_->Reconcile(request, stop);
}

}  // namespace modelcache::reconcilers
