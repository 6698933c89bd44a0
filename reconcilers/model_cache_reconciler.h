#pragma once

// The ModelCache reconciler: observe -> plan -> act -> report, one step per call.
//
// Each call compares the spec with what the store holds and with the job (if any) working for the
// key. Long steps (resolve, download, shard, publish) run as a job on a bounded pool; a call
// starts the job, reports its progress on later calls, and turns its result into status. A spec
// change cancels the running job and starts a new one once the old one has stopped; a deletion
// cancels it. Bytes that were verified are never thrown away by a cancel.
//
// Thread-safe. Never called concurrently for the same key (the work queue guarantees it).

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "fetch/transfer.h"
#include "fetch/hub_client.h"
#include "fetch/transfer_engine.h"
#include "reconcilers/observer.h"
#include "reconcilers/reconciler.h"
#include "store/aws_config.h"

namespace modelcache::reconcilers {

// The entries (key -> value) of a secret the daemon is configured with, and how error messages
// name it: "Secret ops/s3-creds", "secret directory /etc/modelcache/secrets/s3".
struct SecretData {
  std::string what;
  std::map<std::string, std::string> data;
};

struct ReconcilerOptions {
  // Store used when spec.storage.uri is empty: a path, file:// URI or s3://bucket/prefix (--store).
  std::string default_store;
  // For s3:// stores: the local store where downloads land and shards are written before the
  // upload (--cache-dir). Default: default_store when that is local. Must be local.
  std::string local_cache;
  // For s3:// stores: AWS_* variables and HOME (store::LoadAwsConfig's environment), read by main;
  // `aws_overrides.endpoint_url` is --s3-endpoint.
  store::Environment aws_env;
  store::AwsOverrides aws_overrides;
  // --s3-secret: a secret whose keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (both required)
  // and optionally AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, AWS_PROFILE override the
  // environment. Read with read_secret, else from the files of <secrets_dir>/<s3_secret>/.
  // Re-read for every job and restart check, so a rotated secret is picked up.
  std::string s3_secret;
  // When set, reads the daemon's secret `name` (Kubernetes mode: the Secret NAME in the daemon's
  // namespace, or NAMESPACE/NAME). Returns its entries, or an Error whose message names the
  // secret but never a value (retry_after set when it may appear later). Thread-safe.
  std::function<Result<SecretData>(const std::string& name)> read_secret;
  // Hub endpoint used when spec.source.endpoint is empty (--hf-endpoint, else HF_ENDPOINT, else
  // https://huggingface.co). Resolved by main.
  std::string hf_endpoint = "https://huggingface.co";
  // The daemon's own token (HF_TOKEN); used when the spec names no tokenSecretRef, and sent only
  // to hf_endpoint (a spec naming another endpoint gets no token of the daemon's). Never logged.
  std::string hf_token;
  // What a spec may name besides hf_endpoint and default_store (--allowed-endpoints,
  // --allowed-stores): URL prefixes as common/allow_list.h matches them. A spec.source.endpoint,
  // spec.storage.uri or s3:// spec.source.repo outside them fails with InvalidSpec before any
  // request or write. Entries must parse (AllowList::Parse); main checks them.
  std::vector<std::string> allowed_endpoints;
  std::vector<std::string> allowed_stores;
  // No allow-list at all: `modelcache prefetch`, whose spec is the operator's own command line.
  bool allow_any = false;
  // Who this daemon's resources are to the store's artifact name records (store/name_claims.h):
  // a resource holds its name as "<claim_scope> <namespace>/<name>" ("kubernetes", or "dir
  // <watch dir>": keys are unique within one watch directory, not across two). Empty: names are
  // only checked, never held (`modelcache prefetch`, which must not take a resource's `current`
  // but owns nothing afterwards).
  std::string claim_scope;
  // A resource refused a name (ArtifactNameConflict) tries again this late: the owner's deletion
  // frees the name without any change to the waiting resource.
  std::chrono::milliseconds name_recheck{30000};
  // Directory-mode secrets: tokenSecretRef {name, key} is read from <secrets_dir>/<name>/<key>.
  std::string secrets_dir;
  // When set, resolves tokenSecretRef instead of secrets_dir (Kubernetes mode: a Secret in the
  // resource's namespace). Returns the token, or an Error whose message names the Secret and key
  // but never a value. Called from reconcile workers; must be thread-safe.
  std::function<Result<std::string>(const crds::ObjectKey& owner, const crds::SecretKeyRef& ref)>
      secret_lookup;
  // Jobs (downloads, shards) that run at once; more wait in phase Pending. The slots are shared
  // fairly between tenants (reconcilers/internal/job_pool.h): a tenant above its share gives a
  // resolving or downloading job back when another tenant waits.
  int max_concurrent_jobs = 4;
  // Who declared a resource (controller::TenantOf: the namespace in Kubernetes mode, the
  // top-level entry of the watched directory in directory mode). Called from reconcile workers;
  // must be thread-safe. Unset: the key's namespace.
  std::function<std::string(const crds::ObjectKey&)> tenant_of;
  // Consecutive jobs of a resource that end with its endpoint stalled (Error::stalled) before it
  // fails with EndpointStalled, which waits for the spec to change; 0 = never (--stall-limit).
  int stall_limit = 5;
  // The transfer engine's settings (connections, per-artifact connections, chunk size, bandwidth
  // limit); used when transfer_factory is not set.
  fetch::TransferEngineOptions transfer;
  // Threads a shard job uses.
  int shard_threads = 2;
  // spec.shard: write the rank files while the weights download (false: after the download).
  bool shard_while_downloading = true;
  // How often a running job's progress is reported.
  std::chrono::milliseconds progress_interval{1000};
  // Retry policy of Hub requests within a job.
  int max_attempts = 5;
  std::chrono::milliseconds backoff_base{1000};
  std::chrono::milliseconds backoff_cap{30000};
  // Creates the transfer layer for a job. Default: Transfers of one fetch::TransferEngine, built
  // from `transfer` and shared by every job of this reconciler (one per process).
  std::function<std::unique_ptr<fetch::Transfer>(const fetch::TransferSource&)> transfer_factory;
  // Called (from a job thread) when a job finishes, so the key is reconciled at once instead of at
  // the next progress poll.
  std::function<void(const crds::ObjectKey&)> wake;
  // Told about jobs, downloaded bytes, verification failures and shard durations (metrics).
  // Not owned; must outlive the reconciler. nullptr: nobody is told.
  ReconcileObserver* observer = nullptr;
  // Drift healing: a Ready artifact is re-verified this often (its files and its snapshot's
  // blobs re-hashed, one artifact at a time on the job pool) and what changed on disk is
  // re-fetched and re-published; the Verified condition says what was healed. 0 = never.
  std::chrono::milliseconds verify_interval{0};
  // Called after a reconcile saw a job publish (the store grew: garbage collection may have work).
  std::function<void()> published;
  // How long a reconcile that starts a cache job for a resource with no status yet (phase "")
  // waits for it to finish, when the job pool has a free thread, before reporting it as
  // Resolving: a job that finishes in time (an artifact already in the store, which only needs
  // its revision resolved) is reported once, as its result, instead of Resolving and then
  // Ready; one that does not is reported as before, and its end wakes the key as usual. A
  // resource that already has a status (a spec change) is reported at once. 0 = never wait.
  // Kubernetes mode sets it (every status write is an API request).
  std::chrono::milliseconds settle{0};
  // A condition the store's garbage collector reports for this resource (Retained), added to
  // the status of Ready resources; may return nullopt.
  std::function<std::optional<crds::Condition>(const crds::ModelCache&)> retention;
  // Steady time for the reconciler's schedules: refreshInterval, verify_interval and the
  // backoff of failed jobs (not the jobs' own timeouts, nor the settle wait). Not owned; must
  // outlive the reconciler. Tests pass a FakeClock and advance it instead of waiting.
  const Clock* clock = &RealClock::Get();
};

class ModelCacheReconciler final : public Reconciler {
 public:
  explicit ModelCacheReconciler(ReconcilerOptions options);
  ~ModelCacheReconciler() override;
  ModelCacheReconciler(const ModelCacheReconciler&) = delete;
  ModelCacheReconciler& operator=(const ModelCacheReconciler&) = delete;

  Result<Outcome> Reconcile(const Request& request, std::stop_token stop) override;
  void Shutdown() override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace modelcache::reconcilers
