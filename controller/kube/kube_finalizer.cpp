#include "controller/kube/kube_finalizer.h"

#include <algorithm>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace modelcache::controller {

using nlohmann::json;

VoidResult EditFinalizer(const KubeClient& client, const crds::ModelCache& cached, bool add,
                         KubeStatusStore& statuses) {
  const crds::ObjectKey key = cached.key();
  std::string what = std::string(add ? "add" : "remove") + " finalizer " +
                     std::string(kFinalizer) + " on modelcache " + key.ToString();
  std::vector<std::string> finalizers = cached.metadata.finalizers;
  bool deleting = cached.metadata.deletion_timestamp.has_value();
  // Not the version the store's own status writes moved the object to: a status write that
  // re-read the object after a conflict may have moved past someone else's metadata change.
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

}  // namespace modelcache::controller
