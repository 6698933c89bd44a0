#pragma once

// Kubernetes mode's Source: client-go's reflector for ModelCache objects. It lists
// (GET .../modelcaches), puts every object into the ObjectCache, then watches from the list's
// resourceVersion with allowWatchBookmarks:
//   - ADDED / MODIFIED: the object replaces the cache entry; the key is enqueued if
//     ObjectChanged() says it changed (spec, generation, deletionTimestamp, source_error);
//   - DELETED: the entry is removed and the key enqueued;
//   - BOOKMARK: only the resourceVersion advances;
//   - ERROR 410 (Gone / Expired) or HTTP 410: relist (ObjectCache::ReplaceAll; changed, added
//     and removed keys are enqueued) and watch from the new list's resourceVersion;
//   - the server ending the stream (its timeoutSeconds): watch again from the last
//     resourceVersion at once;
//   - a broken connection or any other error: watch again from the last resourceVersion after a
//     backoff (initial_backoff doubling up to max_backoff, reset by a watch that delivered
//     events); a failing list is retried the same way.
// Every resync_period every cached key is enqueued (a missed event must not leave a resource
// unreconciled). Events only enqueue keys; reconcilers read the cache.
//
// Cache entries: crds::FromJson of the object (status as the server sent it; a status-only
// change updates the entry without enqueueing), then crds::ApplyDefaults; origin "kubernetes".
// An object that
// does not convert or fails crds::Validate is cached with source_error InvalidSpec (for a
// conversion error, with only its metadata).
//
// The source is the only writer of the ObjectCache it is started with. Thread-safe: Start and
// Stop may be called from any thread; enqueue is called from the source's threads (and the
// caller's during Start).

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "controller/kube/kube_client.h"
#include "controller/object_cache.h"
#include "controller/source.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

struct KubernetesSourceOptions {
  std::string ns;                                           // "" = all namespaces
  std::chrono::milliseconds resync_period{10 * 60 * 1000};  // <= 0: no resyncs
  // client-go's reflector backs off from 800 ms to 30 s.
  std::chrono::milliseconds initial_backoff{800};
  std::chrono::milliseconds max_backoff{30'000};
  // timeoutSeconds of each watch (client-go picks 5-10 min).
  std::chrono::seconds watch_timeout{300};
  // When set, only objects it accepts are cached; one that stops being accepted is removed from
  // the cache (and its key enqueued) as if deleted. The DaemonSet mode's node filter.
  std::function<bool(const crds::ModelCache&)> filter;
  // When set, applied to each valid object after conversion and before the filter and the cache
  // (the node daemon's "copy the controller's committed version", kube_daemon.cpp).
  std::function<void(crds::ModelCache&)> transform;
};

// The cache entry for one API object (see the header comment).
CachedObject CachedObjectFromJson(const nlohmann::json& object);

class KubernetesSource final : public Source {
 public:
  // `client` must outlive the source.
  KubernetesSource(const KubeClient& client, KubernetesSourceOptions options);
  ~KubernetesSource() override;  // Stop()s.

  KubernetesSource(const KubernetesSource&) = delete;
  KubernetesSource& operator=(const KubernetesSource&) = delete;

  // Does the initial list in the caller's thread, a transient failure tried again as
  // RetryAtStartup does (kube_client.h): the error of ReplyError (Unauthorized on 401/403),
  // NetworkError if the server cannot be reached, InvalidSpec if the answer is not a list. Then
  // starts the watch thread.
  VoidResult Start(ObjectCache& cache, EnqueueFn enqueue) override;
  bool HasSynced() const override;
  void Stop() override;

  // Lists again now, from the caller's thread, so that a changed filter applies: objects it now
  // accepts are added, those it rejects removed (as if deleted); their keys are enqueued. The
  // watch goes on (its later events pass the same filter). Before Start(): nothing to do.
  VoidResult Relist();
  // Successful lists (the initial one included), watch requests started, and relists caused by
  // 410; for tests and metrics.
  uint64_t lists() const;
  uint64_t watches() const;
  uint64_t relists() const;
  // The resourceVersion the next watch would start from.
  std::string resource_version() const;
  // The cached object for `key` (status included); nullopt before Start() or if not cached.
  std::optional<crds::ModelCache> Cached(const crds::ObjectKey& key) const;

 private:
  // Lists into the cache; enqueues every key if `enqueue_all`, else the changed ones.
  VoidResult ListOnce(bool enqueue_all, std::stop_token stop);
  // CachedObjectFromJson, then options_.transform.
  CachedObject Convert(const nlohmann::json& object) const;
  void Run(std::stop_token stop);
  void Resync(std::stop_token stop);
  // Sleeps for `d` unless stopped first; false if stopped.
  bool Sleep(std::chrono::milliseconds d, std::stop_token stop);

  const KubeClient& client_;
  const KubernetesSourceOptions options_;

  mutable std::mutex start_mu_;  // serializes Start and Stop; guards cache_ for Cached()
  ObjectCache* cache_ = nullptr;
  EnqueueFn enqueue_;
  std::jthread watch_thread_;
  std::jthread resync_thread_;
  std::mutex sleep_mu_;
  std::condition_variable_any sleep_cv_;

  std::atomic<bool> synced_{false};
  std::atomic<uint64_t> lists_{0};
  std::atomic<uint64_t> watches_{0};
  std::atomic<uint64_t> relists_{0};
  mutable std::mutex rv_mu_;
  std::string resource_version_;  // GUARDED_BY(rv_mu_)
};

}  // namespace modelcache::controller
