// Kubernetes mode of `modelcache run`: the parts that sit behind the shared Manager and
// reconciler (see daemon_mode.h).

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "controller/kube/fleet_status.h"
#include "controller/kube/fleet_writer.h"
#include "controller/kube/kube_client.h"
#include "controller/kube/kube_config.h"
#include "controller/kube/kube_events.h"
#include "controller/kube/kube_finalizer.h"
#include "controller/kube/kube_secrets.h"
#include "controller/kube/kube_source.h"
#include "controller/kube/kube_status_store.h"
#include "controller/kube/node_report.h"
#include "controller/kube/node_watch.h"
#include "daemon/daemon_mode.h"
#include "store/artifact_store.h"
#include "store/usage.h"

namespace modelcache::controller {
namespace {

using nlohmann::json;

// How long a reconcile waits for a job it started before reporting it as Resolving
// (ReconcilerOptions::settle).
constexpr std::chrono::milliseconds kSettle{500};

// Status writes, and Event requests, in flight at once (each on lanes keyed by object, so that one
// object's keep their order). As many as the plain clients of the initial-sync floor
// (docs/kubernetes.md, "Requests to the API server"): far below an API server's
// --max-mutating-requests-inflight (200), and Priority and Fairness queues what is beyond the
// daemon's share.
constexpr int kWriteConcurrency = 8;

bool HasFinalizer(const std::vector<std::string>& finalizers) {
  return std::find(finalizers.begin(), finalizers.end(), kFinalizer) != finalizers.end();
}

// Fleets, one fill (DESIGN.md "Fleets"): on a node, a resource whose status names an s3://
// version that the controller committed is cached as that version, an s3:// source: pulled from
// the bucket into the node's local store in parallel ranges, resumable and verified (as `modelcache
// pull`), with no request to the Hub; the node never writes to the bucket. Same version, same
// artifact id. Without a committed s3:// version (no controller, or a local-only storage) the
// spec stays as written and the node fetches from its source.
void UseCommittedVersion(crds::ModelCache& object) {
  const std::optional<crds::ArtifactStatus>& artifact = object.status.artifact;
  if (!artifact || !store::IsSharedStoreUri(artifact->uri) || artifact->version.empty()) {
    return;
  }
  crds::ModelCacheSpec& spec = object.spec;
  spec.source = crds::SourceSpec{};
  spec.source.repo = artifact->uri;
  spec.source.type = "model";
  spec.source.revision = "main";
  spec.shard.reset();  // the version is sharded already, if the spec asked for it
  spec.storage.uri.clear();  // the node's own store
  spec.refresh_interval.clear();  // a new version arrives as a new status.artifact.uri
}

// The node daemon's parts (--node-name): its own Node watched for labels, and its report.
struct NodeParts {
  NodeParts(std::unique_ptr<NodeWatch> node_watch, const KubeClient& client,
            NodeReportOptions report_options)
      : watch(std::move(node_watch)),
        report(client, std::move(report_options), RealClock::Get()) {}

  std::unique_ptr<NodeWatch> watch;
  NodeReporter report;
};

// The controller's source: the ModelCache reflector, plus the fleet aggregate's watches of Nodes
// and ModelCacheNodes, which run while the source runs (so, with --leader-elect, only on the
// leader) and enqueue the resources whose fold moved.
class ControllerSource final : public Source {
 public:
  ControllerSource(const KubeClient& client, KubernetesSource& inner,
                   std::chrono::milliseconds liveness_window)
      : client_(client), inner_(inner), liveness_window_(liveness_window) {}

  VoidResult Start(ObjectCache& cache, EnqueueFn enqueue) override {
    if (auto r = inner_.Start(cache, enqueue); !r) {
      return r;
    }
    FleetAggregator::Options o;
    o.liveness_window = liveness_window_;
    o.writer_fills = true;
    o.resources = [&cache] {
      std::vector<crds::ModelCache> out;
      for (const CachedObject& entry : cache.List()) {
        out.push_back(entry.object);
      }
      return out;
    };
    o.enqueue = enqueue;
    auto fleet = std::make_unique<FleetAggregator>(client_, std::move(o), RealClock::Get());
    // A transient failure is tried again (RetryAtStartup): given up, the aggregate stays off for
    // the life of the process.
    if (auto r = RetryAtStartup("fleet aggregate: list Nodes and ModelCacheNodes",
                                [&] { return fleet->Start(); });
        !r) {
      // An install without the ModelCacheNode CRD or the RBAC for it has no fleet: the
      // resources get no status.nodes, and everything else works as before.
      spdlog::warn("fleet aggregate off (no status.nodes, no NodesReady): {}",
                   r.error().message);
      return {};
    }
    std::lock_guard lock(mu_);
    fleet_ = std::move(fleet);
    return {};
  }
  bool HasSynced() const override { return inner_.HasSynced(); }
  void Stop() override {
    std::unique_ptr<FleetAggregator> fleet;
    {
      std::lock_guard lock(mu_);
      fleet = std::move(fleet_);
    }
    fleet.reset();  // stops its watches
    inner_.Stop();
  }

  // Amends a composed status with the fleet aggregate, once any node reports.
  void Amend(const crds::ModelCache& object, crds::ModelCacheStatus& status,
             const std::string& now) {
    std::lock_guard lock(mu_);
    if (!fleet_ || !fleet_->AnyReports()) {
      return;
    }
    ApplyNodesFold(status, fleet_->Fold(object, status.artifact ? status.artifact->id : ""),
                   now);
  }

 private:
  const KubeClient& client_;
  KubernetesSource& inner_;
  const std::chrono::milliseconds liveness_window_;
  std::mutex mu_;
  std::unique_ptr<FleetAggregator> fleet_;  // GUARDED_BY(mu_); while started
};

class KubernetesMode final : public DaemonMode {
 public:
  KubernetesMode(KubeConfig config, const KubernetesModeOptions& options,
                 KubernetesSourceOptions source_options, std::optional<SecretName> s3_secret,
                 std::shared_ptr<KubeRateLimiter> limiter)
      : options_(options),
        limiter_(std::move(limiter)),
        client_(std::move(config), limiter_),
        node_labels_(std::make_shared<LabelsBox>()),
        source_(client_, WithNodeFilter(std::move(source_options))),
        controller_source_(client_, source_, options.node_liveness_window),
        statuses_(client_, /*max_attempts=*/5,
                  [this](const crds::ObjectKey& key) { return source_.Cached(key); }),
        events_(client_, RecorderOptions(options), RealClock::Get()),
        s3_secret_(std::move(s3_secret)),
        secrets_(client_, RealClock::Get()) {}

  // Node mode: reads the Node, takes over or creates its report, and starts watching the Node's
  // labels and publishing the report (see node_watch.h, node_report.h).
  VoidResult StartNode() {
    NodeReportOptions ro;
    ro.node_name = options_.node_name;
    if (!options_.store_root.empty()) {
      ro.measure_store = [root = options_.store_root]() -> Result<std::pair<uint64_t, uint64_t>> {
        auto usage = store::MeasureStoreUsage(root);
        if (!usage) {
          return usage.error();
        }
        return std::make_pair(usage->used_bytes, usage->free_bytes);
      };
    }
    ro.heartbeat_interval = options_.node_heartbeat_interval;
    ro.source_synced = [this] { return source_.HasSynced(); };
    ro.source_has = [this](const crds::ObjectKey& key) { return source_.Cached(key).has_value(); };
    auto watch = std::make_unique<NodeWatch>(client_, options_.node_name);
    if (auto r = RetryAtStartup("node " + options_.node_name + ": read the Node",
                                [&] { return watch->Read(); });
        !r) {
      return r;
    }
    ro.node_uid = watch->uid();
    ro.cache_labels = [w = watch.get()] { return w->cache_labels(); };
    node_ = std::make_unique<NodeParts>(std::move(watch), client_, std::move(ro));
    SetNodeLabels(node_->watch->labels());
    if (auto r = RetryAtStartup("node " + options_.node_name + ": its ModelCacheNode",
                                [&] { return node_->report.Start(); });
        !r) {
      return r;
    }
    if (options_.fleet_writer_elect) {
      FleetWriterOptions fo;
      fo.election.lease_namespace = client_.config().default_namespace;
      fo.election.lease_name = "modelcache-fleet-writer";
      fo.election.identity = options_.node_name + "_" + DefaultLeaderIdentity();
      // Every node is a candidate: slower than the controller's election (15 s, 10 s, 2 s), so
      // that waiting candidates cost the API server 4 requests a minute each, not 30.
      fo.election.lease_duration = std::chrono::seconds(60);
      fo.election.renew_deadline = std::chrono::seconds(40);
      fo.election.retry_period = std::chrono::seconds(15);
      fo.liveness_window = options_.node_liveness_window;
      fo.ns = options_.ns;
      fleet_writer_ = std::make_unique<FleetWriter>(client_.config(), std::move(fo));
      fleet_writer_->Start();
    }
    node_->watch->Start([this](const Labels& labels) {
      SetNodeLabels(labels);
      // The filter changed: list again so that resources now matching come in and those that
      // stopped matching leave (their work is cancelled, their report entries dropped).
      if (auto r = source_.Relist(); !r) {
        spdlog::warn("node {}: relist after a label change: {} (the next resync applies it)",
                     options_.node_name, r.error().message);
      }
    });
    return {};
  }

  Source& source() override {
    return node_ ? static_cast<Source&>(source_) : controller_source_;
  }
  StatusStore& statuses() override {
    return node_ ? static_cast<StatusStore&>(node_->report) : statuses_;
  }

  void Configure(ManagerOptions& manager, reconcilers::ReconcilerOptions& reconciler) override {
    manager.status_writers = kWriteConcurrency;
    if (node_) {
      // A node daemon adds no finalizer (deletion never waits on nodes) and writes no ModelCache
      // status: its statuses go to its own ModelCacheNode (DESIGN.md "Fleets").
    } else {
      ConfigureFinalizer(manager);
      manager.amend_status = [this](const crds::ModelCache& object,
                                    crds::ModelCacheStatus& status, const std::string& now) {
        controller_source_.Amend(object, status, now);
      };
    }
    ConfigureCommon(manager, reconciler);
  }

  void ConfigureFinalizer(ManagerOptions& manager) {
    // The finalizer patch goes out on the object's writer lane, ahead of its status writes;
    // the reconcile follows once it is on.
    manager.before_reconcile_needed = [](const crds::ModelCache& object) {
      return !HasFinalizer(object.metadata.finalizers);
    };
    manager.before_reconcile = [this](const crds::ModelCache& object) -> VoidResult {
      if (HasFinalizer(object.metadata.finalizers)) {
        return {};
      }
      return EditFinalizer(client_, object, /*add=*/true, statuses_);
    };
    manager.finalize = [this](const crds::ModelCache& object) -> VoidResult {
      if (!HasFinalizer(object.metadata.finalizers)) {
        return {};
      }
      if (auto r = EditFinalizer(client_, object, /*add=*/false, statuses_); !r) {
        return r;
      }
      spdlog::info("{}: finalizer {} removed", object.key().ToString(), kFinalizer);
      return {};
    };
  }

  void ConfigureCommon(ManagerOptions& manager, reconcilers::ReconcilerOptions& reconciler) {
    manager.status_written = [this](const crds::ModelCache& object,
                                    const crds::ModelCacheStatus& before) {
      events_.RecordStatusChange(object, before);
    };
    // Every status write is an API request (and an Event): a job that finishes within this (a
    // resource whose artifact is already cached) gets one write, straight to its result.
    reconciler.settle = kSettle;
    // namespace/name is unique in the cluster.
    reconciler.claim_scope = "kubernetes";
    reconciler.secret_lookup = [this](const crds::ObjectKey& owner, const crds::SecretKeyRef& ref) {
      return ReadHubToken(client_, owner.namespace_, ref);
    };
    if (s3_secret_) {
      // --s3-secret names a Secret (resolved at start-up), not a secrets-directory entry.
      reconciler.read_secret =
          [this](const std::string& /*value*/) -> Result<reconcilers::SecretData> {
        auto data = secrets_.Read(*s3_secret_);
        if (!data) {
          const Error& e = data.error();
          return Error(e.reason, "--s3-secret: " + e.message, e.retry_after);
        }
        return reconcilers::SecretData{"Secret " + s3_secret_->ToString() + " (--s3-secret)",
                                       std::move(*data)};
      };
    }
  }

  std::string Describe() const override {
    std::string scope = options_.ns.empty() ? "all namespaces" : "namespace " + options_.ns;
    std::string node = options_.node_name.empty() ? "" : ", node " + options_.node_name;
    std::string s3 = s3_secret_ ? ", S3 credentials from Secret " + s3_secret_->ToString() : "";
    const KubeRateLimit& limit = limiter_->limit();
    std::string rate = limit.qps > 0 ? fmt::format(", at most {} requests/s (burst {})",
                                                   limit.qps, limit.burst)
                                     : std::string();
    return "watching modelcaches in " + scope + " at " + client_.config().server + node + s3 +
           rate;
  }

  void Stopping() override { limiter_->Cancel(); }
  void Shutdown() override {
    if (fleet_writer_) {
      fleet_writer_->Stop();
    }
    if (node_) {
      node_->watch->Stop();
      node_->report.Stop();
    }
    events_.Stop();
  }

 private:
  static EventRecorderOptions RecorderOptions(const KubernetesModeOptions& options) {
    EventRecorderOptions o;
    o.component = options.component;
    o.host = options.node_name;
    o.senders = kWriteConcurrency;
    return o;
  }

  // The node's labels as last seen, shared with the source's filter (which runs on the source's
  // threads).
  struct LabelsBox {
    std::mutex mu;
    Labels labels;  // GUARDED_BY(mu)
  };
  void SetNodeLabels(const Labels& labels) {
    std::lock_guard lock(node_labels_->mu);
    node_labels_->labels = labels;
  }
  KubernetesSourceOptions WithNodeFilter(KubernetesSourceOptions source_options) const {
    if (!options_.node_name.empty()) {
      // An object without spec.nodeSelector is for every node, as a DaemonSet pod template
      // without one.
      source_options.filter = [box = node_labels_, fill_from_controller =
                                   options_.fill_from_controller](const crds::ModelCache& object) {
        // A resource the controller handles waits for the controller's artifact: the node then
        // copies that version (UseCommittedVersion) or, when it is not in a bucket, fetches from
        // the source itself; never the Hub while the controller fills. The controller handles
        // every resource with --fill-from-controller (the fleet overlay), and any that carries its
        // finalizer (which a new resource does not have yet: hence the flag).
        if ((fill_from_controller || HasFinalizer(object.metadata.finalizers)) &&
            !object.status.artifact) {
          return false;
        }
        std::lock_guard lock(box->mu);
        return SelectorMatches(object.spec.node_selector, box->labels);
      };
      source_options.transform = UseCommittedVersion;
    }
    return source_options;
  }

  const KubernetesModeOptions options_;
  std::shared_ptr<KubeRateLimiter> limiter_;
  KubeClient client_;
  std::shared_ptr<LabelsBox> node_labels_;
  KubernetesSource source_;
  ControllerSource controller_source_;  // the controller's (not a node's) source: + the fleet
  KubeStatusStore statuses_;
  KubeEventRecorder events_;
  const std::optional<SecretName> s3_secret_;
  KubeSecretReader secrets_;
  std::unique_ptr<NodeParts> node_;  // node mode only
  std::unique_ptr<FleetWriter> fleet_writer_;  // node mode with --fleet-writer-elect
};

}  // namespace

Result<std::unique_ptr<DaemonMode>> NewKubernetesMode(
    const KubernetesModeOptions& options, const std::map<std::string, std::string>& env) {
  auto config = LoadKubeConfig(env, options.kubeconfig);
  if (!config) {
    return config.error();
  }
  KubernetesSourceOptions source_options;
  source_options.ns = options.ns;
  source_options.resync_period = options.resync_period;
  auto limiter = std::make_shared<KubeRateLimiter>(options.api_limit, RealClock::Get());
  std::optional<SecretName> s3_secret;
  if (!options.s3_secret.empty()) {
    auto name = ParseSecretName(options.s3_secret, config->default_namespace, "--s3-secret");
    if (!name) {
      return name.error();
    }
    s3_secret = std::move(*name);
  }
  auto mode = std::make_unique<KubernetesMode>(std::move(*config), options,
                                               std::move(source_options), std::move(s3_secret),
                                               std::move(limiter));
  if (!options.node_name.empty()) {
    if (auto r = mode->StartNode(); !r) {
      return r.error();
    }
  }
  return std::unique_ptr<DaemonMode>(std::move(mode));
}

}  // namespace modelcache::controller
