// Kubernetes mode of `modelcache run`: the parts that sit behind the shared Manager and
// reconciler (see daemon_mode.h).

#include <algorithm>
#include <optional>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "controller/daemon_mode.h"
#include "controller/kube_client.h"
#include "controller/kube_config.h"
#include "controller/kube_events.h"
#include "controller/kube_finalizer.h"
#include "controller/kube_secrets.h"
#include "controller/kube_source.h"
#include "controller/kube_status_store.h"

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

bool SelectorMatches(const std::map<std::string, std::string>& selector,
                     const std::map<std::string, std::string>& labels) {
  for (const auto& [key, value] : selector) {
    auto it = labels.find(key);
    if (it == labels.end() || it->second != value) {
      return false;
    }
  }
  return true;
}

// The labels of Node `name` (GET /api/v1/nodes/NAME).
Result<std::map<std::string, std::string>> NodeLabels(const KubeClient& client,
                                                      const std::string& name) {
  auto reply = client.Call("GET", "/api/v1/nodes/" + UrlEncode(name));
  if (!reply) {
    return reply.error();
  }
  if (reply->status == 404) {
    return Error(Reason::InvalidSpec, "--node-name: node \"" + name + "\" not found");
  }
  if (!reply->ok()) {
    return ReplyError(*reply, "--node-name: get node " + name);
  }
  return MetadataLabels(reply->body);
}

class KubernetesMode final : public DaemonMode {
 public:
  KubernetesMode(KubeConfig config, const KubernetesModeOptions& options,
                 KubernetesSourceOptions source_options, std::optional<SecretName> s3_secret,
                 std::shared_ptr<KubeRateLimiter> limiter)
      : options_(options),
        limiter_(std::move(limiter)),
        client_(std::move(config), limiter_),
        source_(client_, std::move(source_options)),
        statuses_(client_, /*max_attempts=*/5,
                  [this](const crds::ObjectKey& key) { return source_.Cached(key); }),
        events_(client_, RecorderOptions(options), RealClock::Get()),
        s3_secret_(std::move(s3_secret)),
        secrets_(client_, RealClock::Get()) {}

  Source& source() override { return source_; }
  StatusStore& statuses() override { return statuses_; }

  void Configure(ManagerOptions& manager, reconcilers::ReconcilerOptions& reconciler) override {
    manager.status_writers = kWriteConcurrency;
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
  void Shutdown() override { events_.Stop(); }

 private:
  static EventRecorderOptions RecorderOptions(const KubernetesModeOptions& options) {
    EventRecorderOptions o;
    o.component = options.component;
    o.host = options.node_name;
    o.senders = kWriteConcurrency;
    return o;
  }

  const KubernetesModeOptions options_;
  std::shared_ptr<KubeRateLimiter> limiter_;
  KubeClient client_;
  KubernetesSource source_;
  KubeStatusStore statuses_;
  KubeEventRecorder events_;
  const std::optional<SecretName> s3_secret_;
  KubeSecretReader secrets_;
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
  if (!options.node_name.empty()) {
    KubeClient probe(*config, limiter);
    auto labels = NodeLabels(probe, options.node_name);
    if (!labels) {
      return labels.error();
    }
    // An object without spec.nodeSelector is for every node, as a DaemonSet pod template
    // without one. Labels are read at start-up; a relabelled node needs a restart of its pod.
    source_options.filter = [labels = std::move(*labels)](const crds::ModelCache& object) {
      return SelectorMatches(object.spec.node_selector, labels);
    };
  }
  std::optional<SecretName> s3_secret;
  if (!options.s3_secret.empty()) {
    auto name = ParseSecretName(options.s3_secret, config->default_namespace, "--s3-secret");
    if (!name) {
      return name.error();
    }
    s3_secret = std::move(*name);
  }
  return std::unique_ptr<DaemonMode>(std::make_unique<KubernetesMode>(
      std::move(*config), options, std::move(source_options), std::move(s3_secret),
      std::move(limiter)));
}

}  // namespace modelcache::controller
