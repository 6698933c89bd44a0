#include "controller/kube/kube_status_store.h"

#include <algorithm>
#include <utility>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace modelcache::controller {

using nlohmann::json;

KubeStatusStore::KubeStatusStore(const KubeClient& client, int max_attempts, CachedLookup cached)
    : client_(client), max_attempts_(std::max(1, max_attempts)), cached_(std::move(cached)) {}

uint64_t KubeStatusStore::conflicts() const { return conflicts_.load(); }

Result<std::optional<crds::ModelCache>> KubeStatusStore::Read(const crds::ObjectKey& key) const {
  if (cached_) {
    if (std::optional<crds::ModelCache> object = cached_(key)) {
      return object;
    }
  }
  auto reply = client_.Get(key.namespace_, key.name);
  if (!reply) {
    return reply.error();
  }
  if (reply->status == 404) {
    return std::optional<crds::ModelCache>();
  }
  if (!reply->ok()) {
    return ReplyError(*reply, "get modelcache " + key.ToString());
  }
  auto object = crds::FromJson(reply->body);
  if (!object) {
    return Error(Reason::StorageError, "modelcache " + key.ToString() +
                                           " from the API server: " + object.error().message);
  }
  return std::optional<crds::ModelCache>(std::move(*object));
}

void KubeStatusStore::NoteUpdate(const crds::ObjectKey& key, const std::string& from,
                                 const std::string& to) {
  if (from.empty() || to.empty() || from == to) {
    return;
  }
  std::lock_guard lock(moved_mu_);
  Moved& m = moved_[key];
  // Versions that led to `from` now lead to `to`; a chain that broke (someone else wrote) starts
  // over. A handful is enough: the cache lags by a write or two.
  if (m.to != from || m.from.size() >= 8) {
    m.from.clear();
  }
  m.from.insert(from);
  m.to = to;
}

std::string KubeStatusStore::Current(const crds::ObjectKey& key, const std::string& rv) const {
  std::lock_guard lock(moved_mu_);
  auto it = moved_.find(key);
  if (it != moved_.end() && it->second.from.count(rv) != 0) {
    return it->second.to;
  }
  return rv;
}

VoidResult KubeStatusStore::Write(const crds::ModelCache& object_with_status) {
  crds::ObjectKey key = object_with_status.key();
  std::string what = "update status of modelcache " + key.ToString();
  json status = crds::StatusToJson(object_with_status.status);
  // The body: the object as the caller knows it (its resourceVersion is the precondition), or
  // the server's current object when the caller has none.
  json body = crds::ToJson(object_with_status);
  if (object_with_status.metadata.resource_version.empty()) {
    auto current = client_.Get(key.namespace_, key.name);
    if (!current) {
      return current.error();
    }
    if (current->status == 404) {
      return Error(Reason::StorageError, what + ": the object no longer exists");
    }
    if (!current->ok()) {
      return ReplyError(*current, what);
    }
    body = current->body;
  }
  std::string based_on = body["metadata"].value("resourceVersion", "");
  body["metadata"]["resourceVersion"] = Current(key, based_on);
  for (int attempt = 1;; ++attempt) {
    body["status"] = status;
    auto reply = client_.UpdateStatus(body);
    if (!reply) {
      return reply.error();
    }
    if (reply->ok()) {
      std::string now = reply->body.is_object() && reply->body.contains("metadata")
                            ? reply->body["metadata"].value("resourceVersion", "")
                            : std::string();
      NoteUpdate(key, body["metadata"].value("resourceVersion", ""), now);
      if (!based_on.empty() && !now.empty()) {
        // The caller's (possibly older) version leads here too, also after a re-read.
        std::lock_guard lock(moved_mu_);
        moved_[key].from.insert(based_on);
      }
      return {};
    }
    if (reply->status == 404) {
      return Error(Reason::StorageError, what + ": the object no longer exists");
    }
    if (reply->status != 409) {
      return ReplyError(*reply, what);
    }
    ++conflicts_;
    if (attempt >= max_attempts_) {
      return Error(Reason::StorageError,
                   what + ": still conflicting after " + std::to_string(attempt) + " attempts");
    }
    // Someone else changed the object: re-read it and put our status on the current version.
    auto current = client_.Get(key.namespace_, key.name);
    if (!current) {
      return current.error();
    }
    if (current->status == 404) {
      return Error(Reason::StorageError, what + ": the object no longer exists");
    }
    if (!current->ok()) {
      return ReplyError(*current, what);
    }
    body = current->body;
  }
}

VoidResult KubeStatusStore::Remove(const crds::ObjectKey& key) {
  std::lock_guard lock(moved_mu_);
  moved_.erase(key);
  return {};
}

Result<std::vector<crds::ModelCache>> KubeStatusStore::List() const {
  auto reply = client_.List("");
  if (!reply) {
    return reply.error();
  }
  if (!reply->ok()) {
    return ReplyError(*reply, "list modelcaches");
  }
  std::vector<crds::ModelCache> out;
  if (reply->body.is_object() && reply->body.contains("items") && reply->body["items"].is_array()) {
    for (const json& item : reply->body["items"]) {
      auto object = crds::FromJson(item);
      if (!object) {
        spdlog::warn("kubernetes: skipping a modelcache that does not convert: {}",
                     object.error().message);
        continue;
      }
      out.push_back(std::move(*object));
    }
  }
  std::sort(out.begin(), out.end(),
            [](const crds::ModelCache& a, const crds::ModelCache& b) { return a.key() < b.key(); });
  return out;
}

}  // namespace modelcache::controller
