// Kubernetes mode of `modelcache run`: the parts that sit behind the shared Manager and
// reconciler (see daemon_mode.h).

#include <algorithm>
#include <utility>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "controller/daemon_mode.h"
#include "controller/kube_client.h"
#include "controller/kube_config.h"
#include "controller/kube_events.h"
#include "controller/kube_source.h"
#include "controller/kube_status_store.h"

namespace modelcache::controller {
namespace {

using nlohmann::json;

constexpr std::string_view kFinalizer = "modelcache.dev/artifact";
// Conflicting writers of one object's metadata, in a row, before a finalizer edit gives up (the
// key is then requeued with rate limiting).
constexpr int kFinalizerAttempts = 5;
// A missing Secret or key is not part of the spec, so it may appear without a spec change: the
// resource is looked at again after this long.
constexpr std::chrono::seconds kSecretRecheck{30};
// How long a reconcile waits for a job it started before reporting it as Resolving
// (ReconcilerOptions::settle).
constexpr std::chrono::milliseconds kSettle{500};

bool HasFinalizer(const std::vector<std::string>& finalizers) {
  return std::find(finalizers.begin(), finalizers.end(), kFinalizer) != finalizers.end();
}

// Adds (add = true) or removes our finalizer with a JSON merge patch of metadata.finalizers
// that carries the resourceVersion the list was computed from, as controllerutil.AddFinalizer
// or RemoveFinalizer + client.Patch(MergeFromWithOptimisticLock) in retry.RetryOnConflict. A
// merge patch replaces the whole list, hence the precondition; only the list is sent, so fields
// this program does not model (ownerReferences, managedFields, unknown spec fields) are left as
// they are. The first attempt starts from `cached`, the reflector's copy, with its
// resourceVersion: no GET. (Not the version the store's own status writes moved it to: a status
// write that re-read the object after a conflict may have moved past someone else's metadata
// change.) On 409 the object is re-read and the edit redone. OK when there is nothing to do: the object is gone,
// already in the wanted state, or being deleted (the API server forbids adding a finalizer then).
VoidResult EditFinalizer(const KubeClient& client, const crds::ModelCache& cached, bool add,
                         KubeStatusStore& statuses) {
  const crds::ObjectKey key = cached.key();
  std::string what = std::string(add ? "add" : "remove") + " finalizer " +
                     std::string(kFinalizer) + " on modelcache " + key.ToString();
  std::vector<std::string> finalizers = cached.metadata.finalizers;
  bool deleting = cached.metadata.deletion_timestamp.has_value();
  std::string rv = cached.metadata.resource_version;
  for (int attempt = 1;; ++attempt) {
    if (rv.empty() || attempt > 1) {
      // No version to base the edit on, or someone else changed the object: re-read it.
      auto current = client.Get(key.namespace_, key.name);
      if (!current) {
        return current.error();
      }
      if (current->status == 404) {
        return {};
      }
      if (!current->ok()) {
        return ReplyError(*current, what);
      }
      const json& meta = current->body.is_object() ? current->body.value("metadata", json())
                                                   : json();
      if (!meta.is_object()) {
        return Error(Reason::NetworkError, what + ": the API server's answer has no metadata");
      }
      finalizers.clear();
      for (const json& f : meta.value("finalizers", json::array())) {
        if (f.is_string()) {
          finalizers.push_back(f.get<std::string>());
        }
      }
      deleting = meta.contains("deletionTimestamp") && !meta["deletionTimestamp"].is_null();
      rv = meta.value("resourceVersion", "");
    }
    if (add && deleting) {
      return {};
    }
    auto it = std::find(finalizers.begin(), finalizers.end(), kFinalizer);
    if (add == (it != finalizers.end())) {
      return {};
    }
    if (add) {
      finalizers.emplace_back(kFinalizer);
    } else {
      finalizers.erase(it);
    }
    json patch = {{"metadata",
                   {{"resourceVersion", rv},
                    {"finalizers", finalizers.empty() ? json(nullptr) : json(finalizers)}}}};
    auto reply = client.MergePatch(key.namespace_, key.name, patch);
    if (!reply) {
      return reply.error();
    }
    if (reply->ok()) {
      // The next status write is based on the cached version, which has not seen this one yet.
      if (reply->body.is_object() && reply->body.contains("metadata")) {
        statuses.NoteUpdate(key, rv, reply->body["metadata"].value("resourceVersion", ""));
      }
      return {};
    }
    if (reply->status == 404) {
      return {};
    }
    if (reply->status != 409 || attempt >= kFinalizerAttempts) {
      return ReplyError(*reply, what);
    }
  }
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
  std::map<std::string, std::string> labels;
  const json& body = reply->body;
  if (body.is_object() && body.contains("metadata") && body["metadata"].is_object() &&
      body["metadata"].contains("labels") && body["metadata"]["labels"].is_object()) {
    for (const auto& [k, v] : body["metadata"]["labels"].items()) {
      if (v.is_string()) {
        labels[k] = v.get<std::string>();
      }
    }
  }
  return labels;
}

class KubernetesMode final : public DaemonMode {
 public:
  KubernetesMode(KubeConfig config, const KubernetesModeOptions& options,
                 KubernetesSourceOptions source_options)
      : options_(options),
        client_(std::move(config)),
        source_(client_, std::move(source_options)),
        statuses_(client_, /*max_attempts=*/5,
                  [this](const crds::ObjectKey& key) { return source_.Cached(key); }),
        events_(client_, RecorderOptions(options), RealClock::Get()) {}

  Source& source() override { return source_; }
  StatusStore& statuses() override { return statuses_; }

  void Configure(ManagerOptions& manager, reconcilers::ReconcilerOptions& reconciler) override {
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
    reconciler.secret_lookup = [this](const crds::ObjectKey& owner,
                                      const crds::SecretKeyRef& ref) {
      return LookupSecret(owner, ref);
    };
  }

  std::string Describe() const override {
    std::string scope = options_.ns.empty() ? "all namespaces" : "namespace " + options_.ns;
    std::string node = options_.node_name.empty() ? "" : ", node " + options_.node_name;
    return "watching modelcaches in " + scope + " at " + client_.config().server + node;
  }

  void Shutdown() override { events_.Stop(); }

 private:
  static EventRecorderOptions RecorderOptions(const KubernetesModeOptions& options) {
    EventRecorderOptions o;
    o.component = options.component;
    o.host = options.node_name;
    return o;
  }

  // tokenSecretRef: data[key] of the Secret in the resource's namespace. The errors name the
  // Secret and the key, never a value.
  Result<std::string> LookupSecret(const crds::ObjectKey& owner, const crds::SecretKeyRef& ref) {
    std::string what = "spec.source.tokenSecretRef: Secret \"" + ref.name + "\" in namespace \"" +
                       owner.namespace_ + "\"";
    auto data = client_.GetSecretData(owner.namespace_, ref.name);
    if (!data) {
      const Error& e = data.error();
      if (e.reason == Reason::InvalidSpec) {
        return Error(Reason::InvalidSpec, what + " not found", kSecretRecheck);
      }
      if (e.reason == Reason::Unauthorized) {
        return Error(Reason::Unauthorized, what + " cannot be read: " + e.message,
                     kSecretRecheck);
      }
      return Error(e.reason, what + ": " + e.message, e.retry_after);
    }
    auto it = data->find(ref.key);
    if (it == data->end()) {
      return Error(Reason::InvalidSpec, what + " has no key \"" + ref.key + "\"", kSecretRecheck);
    }
    return std::move(it->second);
  }

  const KubernetesModeOptions options_;
  KubeClient client_;
  KubernetesSource source_;
  KubeStatusStore statuses_;
  KubeEventRecorder events_;
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
  if (!options.node_name.empty()) {
    KubeClient probe(*config);
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
  return std::unique_ptr<DaemonMode>(
      std::make_unique<KubernetesMode>(std::move(*config), options, std::move(source_options)));
}

}  // namespace modelcache::controller
