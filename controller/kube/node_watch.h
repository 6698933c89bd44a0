#pragma once

// Fleets, the node side: a node daemon watches its own Node (a KubeCollection of
// /api/v1/nodes with fieldSelector=metadata.name=N), so that a label change that makes a resource
// match or stop matching spec.nodeSelector takes effect without a restart (DESIGN.md "Fleets",
// "watched live").
//
// Thread-safe.

#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "common/result.h"
#include "controller/kube/kube_client.h"
#include "controller/kube/kube_collection.h"

namespace modelcache::controller {

using Labels = std::map<std::string, std::string>;

// True when `labels` hold every key of `selector` with its value (a Pod's nodeSelector; an empty
// selector matches every node).
bool SelectorMatches(const Labels& selector, const Labels& labels);

class NodeWatch {
 public:
  // `client` must outlive the watch.
  NodeWatch(const KubeClient& client, std::string node_name);
  ~NodeWatch();  // Stop()s.
  NodeWatch(const NodeWatch&) = delete;
  NodeWatch& operator=(const NodeWatch&) = delete;

  // Reads the Node once (InvalidSpec "--node-name: node \"N\" not found" when missing; the error
  // of ReplyError otherwise). Its labels are labels() from then on.
  VoidResult Read();
  // Starts watching; `on_change` is called (from a thread of the watch's own, never inside the
  // watch's request, so it may make requests) with the new labels whenever they differ from the
  // last ones seen. REQUIRES: Read() succeeded.
  void Start(std::function<void(const Labels&)> on_change);
  void Stop();

  // Its labels, without the daemon's own cache.modelcache.dev/ ones (so that labelling the Node
  // does not count as a label change).
  Labels labels() const;
  // Only those cache.modelcache.dev/ labels.
  Labels cache_labels() const;
  // The Node's metadata.uid.
  std::string uid() const;

 private:
  // Takes labels and uid from the collection; true if the labels changed.
  bool Refresh();

  const std::string node_name_;
  KubeCollection node_;
  std::condition_variable_any cv_;
  bool changed_ = false;  // GUARDED_BY(mu_): labels changed since on_change was last called
  std::jthread notifier_;
  mutable std::mutex mu_;
  Labels labels_;        // GUARDED_BY(mu_)
  Labels cache_labels_;  // GUARDED_BY(mu_)
  std::string uid_;  // GUARDED_BY(mu_)
};

}  // namespace modelcache::controller
