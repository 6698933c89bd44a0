#include "controller/kube/kube_source.h"

#include <algorithm>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/guard.h"

namespace modelcache::controller {

using nlohmann::json;

namespace {

std::string StringAt(const json& j, const char* a, const char* b) {
  if (j.is_object() && j.contains(a) && j[a].is_object() && j[a].contains(b) &&
      j[a][b].is_string()) {
    return j[a][b].get<std::string>();
  }
  return "";
}

int64_t StatusCode(const json& status) {
  if (status.is_object() && status.contains("code") && status["code"].is_number_integer()) {
    return status["code"].get<int64_t>();
  }
  return 0;
}

}  // namespace

CachedObject CachedObjectFromJson(const json& object) {
  CachedObject entry;
  entry.origin = std::string(kKubernetesOrigin);
  auto converted = crds::FromJson(object);
  if (!converted) {
    entry.object.metadata.name = StringAt(object, "metadata", "name");
    entry.object.metadata.namespace_ = StringAt(object, "metadata", "namespace");
    entry.object.metadata.resource_version = StringAt(object, "metadata", "resourceVersion");
    entry.source_error = Error(Reason::InvalidSpec, converted.error().message);
    return entry;
  }
  entry.object = std::move(*converted);
  // Artifact names are global to a store: the default one carries the namespace.
  if (crds::ModelCacheSpec& spec = entry.object.spec; spec.artifact_name.empty()) {
    spec.artifact_name =
        crds::NamespacedArtifactName(entry.object.metadata.namespace_, spec.source.repo);
  }
  crds::ApplyDefaults(entry.object);
  std::vector<crds::FieldError> problems = crds::Validate(entry.object);
  if (!problems.empty()) {
    entry.source_error = Error(Reason::InvalidSpec, crds::JoinErrors(problems));
  }
  return entry;
}

KubernetesSource::KubernetesSource(const KubeClient& client, KubernetesSourceOptions options)
    : client_(client), options_(std::move(options)) {}

KubernetesSource::~KubernetesSource() { Stop(); }

bool KubernetesSource::HasSynced() const { return synced_.load(); }
uint64_t KubernetesSource::lists() const { return lists_.load(); }
uint64_t KubernetesSource::watches() const { return watches_.load(); }
uint64_t KubernetesSource::relists() const { return relists_.load(); }

std::string KubernetesSource::resource_version() const {
  std::lock_guard lock(rv_mu_);
  return resource_version_;
}

std::optional<crds::ModelCache> KubernetesSource::Cached(const crds::ObjectKey& key) const {
  ObjectCache* cache = nullptr;
  {
    std::lock_guard lock(start_mu_);
    cache = cache_;
  }
  if (cache == nullptr) {
    return std::nullopt;
  }
  auto entry = cache->Get(key);
  if (!entry) {
    return std::nullopt;
  }
  return std::move(entry->object);
}

VoidResult KubernetesSource::ListOnce(bool enqueue_all, std::stop_token stop) {
  std::string what = "list " + client_.ModelCacheUrl(options_.ns);
  auto reply = client_.List(options_.ns, stop);
  if (!reply) {
    return reply.error();
  }
  if (!reply->ok()) {
    return ReplyError(*reply, what);
  }
  const json& body = reply->body;
  if (!body.is_object() || !body.contains("items") || !body["items"].is_array()) {
    return Error(Reason::InvalidSpec, what + ": the answer is not a list");
  }
  std::vector<CachedObject> entries;
  entries.reserve(body["items"].size());
  for (const json& item : body["items"]) {
    CachedObject entry = Convert(item);
    if (!options_.filter || options_.filter(entry.object)) {
      entries.push_back(std::move(entry));
    }
  }
  std::vector<crds::ObjectKey> changed = cache_->ReplaceAll(std::move(entries));
  {
    std::lock_guard lock(rv_mu_);
    resource_version_ = StringAt(body, "metadata", "resourceVersion");
  }
  ++lists_;
  for (const crds::ObjectKey& key : enqueue_all ? cache_->Keys() : changed) {
    enqueue_(key);
  }
  return {};
}

CachedObject KubernetesSource::Convert(const json& object) const {
  CachedObject entry = CachedObjectFromJson(object);
  if (options_.transform && !entry.source_error) {
    options_.transform(entry.object);
  }
  return entry;
}

VoidResult KubernetesSource::Relist() {
  std::lock_guard lock(start_mu_);
  if (cache_ == nullptr || !synced_) {
    return {};  // the initial list will apply the filter as it is then
  }
  return ListOnce(/*enqueue_all=*/false, {});
}

VoidResult KubernetesSource::Start(ObjectCache& cache, EnqueueFn enqueue) {
  std::lock_guard lock(start_mu_);
  cache_ = &cache;
  enqueue_ = std::move(enqueue);
  if (auto r = RetryAtStartup("kubernetes: the first list of modelcaches",
                              [&] { return ListOnce(/*enqueue_all=*/true, {}); });
      !r) {
    return r.error();
  }
  synced_ = true;
  // The last resort: an exception is logged and the loop starts over (after a pause) until
  // stopped.
  watch_thread_ = std::jthread([this](std::stop_token stop) {
    while (!LogExceptions("Kubernetes watch", [&] { Run(stop); }) && !stop.stop_requested()) {
      std::this_thread::sleep_for(std::chrono::seconds(1));
    }
  });
  if (options_.resync_period.count() > 0) {
    resync_thread_ = std::jthread([this](std::stop_token stop) {
      while (!LogExceptions("Kubernetes resync", [&] { Resync(stop); }) &&
             !stop.stop_requested()) {
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    });
  }
  return {};
}

void KubernetesSource::Stop() {
  std::lock_guard lock(start_mu_);
  for (std::jthread* t : {&watch_thread_, &resync_thread_}) {
    if (t->joinable()) {
      t->request_stop();
    }
  }
  {
    std::lock_guard sleep_lock(sleep_mu_);
    sleep_cv_.notify_all();
  }
  for (std::jthread* t : {&watch_thread_, &resync_thread_}) {
    if (t->joinable()) {
      t->join();
    }
  }
}

bool KubernetesSource::Sleep(std::chrono::milliseconds d, std::stop_token stop) {
  std::unique_lock lock(sleep_mu_);
  return !sleep_cv_.wait_for(lock, stop, d, [] { return false; }) && !stop.stop_requested();
}

void KubernetesSource::Resync(std::stop_token stop) {
  while (Sleep(options_.resync_period, stop)) {
    for (const crds::ObjectKey& key : cache_->Keys()) {
      enqueue_(key);
    }
  }
}

void KubernetesSource::Run(std::stop_token stop) {
  std::chrono::milliseconds backoff = options_.initial_backoff;
  auto back_off = [&] {
    bool slept = Sleep(backoff, stop);
    backoff = std::min(backoff * 2, options_.max_backoff);
    return slept;
  };
  bool need_list = false;
  while (!stop.stop_requested()) {
    if (need_list) {
      if (auto r = ListOnce(/*enqueue_all=*/false, stop); !r) {
        if (r.error().reason == Reason::Cancelled) {
          return;
        }
        spdlog::warn("kubernetes: {}; retrying in {} ms", r.error().ToString(), backoff.count());
        if (!back_off()) {
          return;
        }
        continue;
      }
      ++relists_;
      need_list = false;
    }
    bool gone = false;
    bool failed = false;
    bool delivered = false;
    std::string from = resource_version();
    ++watches_;
    auto on_event = [&](const WatchEvent& event) {
      if (event.type == "ERROR") {
        int64_t code = StatusCode(event.object);
        if (code == 410) {
          gone = true;
        } else {
          spdlog::warn("kubernetes: watch error event: {}", event.object.dump());
          failed = true;
        }
        return false;
      }
      std::string rv = StringAt(event.object, "metadata", "resourceVersion");
      if (event.type == "ADDED" || event.type == "MODIFIED") {
        CachedObject entry = Convert(event.object);
        crds::ObjectKey key = entry.object.key();
        if (options_.filter && !options_.filter(entry.object)) {
          if (cache_->Delete(key)) {
            enqueue_(key);  // no longer ours: cancel its work
          }
        } else if (cache_->Upsert(std::move(entry))) {
          enqueue_(key);
        }
      } else if (event.type == "DELETED") {
        crds::ObjectKey key{StringAt(event.object, "metadata", "namespace"),
                            StringAt(event.object, "metadata", "name")};
        if (cache_->Delete(key)) {
          enqueue_(key);
        }
      } else if (event.type != "BOOKMARK") {
        spdlog::warn("kubernetes: ignoring watch event of type {}", event.type);
      }
      if (!rv.empty()) {
        std::lock_guard lock(rv_mu_);
        resource_version_ = rv;
      }
      delivered = true;
      return true;
    };
    VoidResult r = client_.Watch(options_.ns, from, options_.watch_timeout, on_event, stop);
    if (delivered) {
      backoff = options_.initial_backoff;
    }
    if (gone) {
      spdlog::info("kubernetes: resourceVersion {} expired; relisting", from);
      need_list = true;
      continue;
    }
    if (r && failed) {
      if (!back_off()) {
        return;
      }
      continue;
    }
    if (r) {
      continue;  // the server ended the watch (timeoutSeconds): watch again
    }
    if (r.error().reason == Reason::Cancelled) {
      return;
    }
    spdlog::warn("kubernetes: watch ended: {}; re-watching from {} in {} ms", r.error().ToString(),
                 from, backoff.count());
    if (!back_off()) {
      return;
    }
  }
}

}  // namespace modelcache::controller
