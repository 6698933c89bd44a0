#pragma once

// A small reflector for any collection the daemon only reads (Nodes, ModelCacheNodes): it lists
// (GET <path>[?fieldSelector=…]) into a map by metadata.name, then watches from the list's
// resourceVersion (with bookmarks), applying ADDED/MODIFIED/DELETED; an expired watch (410) or a
// broken one is followed by a fresh list (after a backoff when it failed: initial_backoff doubling
// up to max_backoff); the server ending a watch (timeoutSeconds) starts the next one at once.
// `on_change` is called after every list and every event that changed the map. The ModelCache
// reflector (kube_source.h) is the full version of this, with the work queue and resyncs.
//
// Thread-safe.

#include <chrono>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/result.h"
#include "controller/kube/kube_client.h"

namespace modelcache::controller {

class KubeCollection {
 public:
  struct Options {
    std::string path;            // "/api/v1/nodes"
    std::string field_selector;  // "" = all; "metadata.name=n1"
    std::chrono::seconds watch_timeout{300};
    std::chrono::milliseconds initial_backoff{800};
    std::chrono::milliseconds max_backoff{30'000};
  };
  // `client` must outlive the collection.
  KubeCollection(const KubeClient& client, Options options);
  ~KubeCollection();  // Stop()s.

  KubeCollection(const KubeCollection&) = delete;
  KubeCollection& operator=(const KubeCollection&) = delete;

  // Lists once in the caller's thread (the error of ReplyError, NetworkError, or InvalidSpec if
  // the answer is not a list). REQUIRES: before Start().
  VoidResult List();
  // Starts the watch thread (after List(); without one, the thread lists first). `on_change` is
  // called from that thread.
  void Start(std::function<void()> on_change);
  void Stop();

  // The objects by name, as last seen.
  std::map<std::string, nlohmann::json> Snapshot() const;
  std::optional<nlohmann::json> Get(const std::string& name) const;
  size_t Size() const;

 private:
  VoidResult ListOnce(std::stop_token stop);
  void Run(std::stop_token stop);
  void Changed();

  const KubeClient& client_;
  const Options options_;
  std::function<void()> on_change_;
  mutable std::mutex mu_;
  std::map<std::string, nlohmann::json> objects_;  // GUARDED_BY(mu_)
  std::string resource_version_;                   // GUARDED_BY(mu_); "" = list first
  std::jthread thread_;
};

}  // namespace modelcache::controller
