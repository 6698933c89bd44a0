#pragma once

// Fleets, the aggregate (DESIGN.md "Fleets"): folds the node reports (ModelCacheNodes, see
// node_report.h) and the Nodes' labels into each ModelCache's status.nodes {desired, ready,
// failed} and its condition NodesReady.
//
//   desired  Nodes that exist, have a live report (heartbeatTime within the liveness window,
//            3 minutes by default) and whose labels match spec.nodeSelector
//   ready    of those, the ones whose report has the resource Ready (and, when `artifact_id` is
//            given — the controller's committed version — holding that very version)
//   failed   of those, the ones whose report has it Failed
//   NodesReady  True when ready == desired and desired > 0; the message names up to five nodes
//               that are not ready and why
//
// One writer per object: the fold goes into the status that the one writer of the ModelCache
// composes (the controller's Manager, or in a DaemonSet-only install the elected node), through
// FleetAggregator::Amend; FleetAggregator watches Nodes and ModelCacheNodes and asks for a
// reconcile of every resource whose fold changed (also when a heartbeat ages out).
//
// Thread-safe.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/result.h"
#include "controller/kube/kube_client.h"
#include "controller/kube/kube_collection.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

// What the fold reads: Nodes and ModelCacheNodes, each by name, as the API server has them.
struct FleetView {
  std::map<std::string, nlohmann::json> nodes;
  std::map<std::string, nlohmann::json> reports;
  // When `indexed` (IndexFleetView), every report's status.caches entries by resource, then by
  // node name: a fold looks its resource up instead of scanning each node's whole report, so
  // folding all M resources over N nodes costs O(N·M) rather than O(N·M²).
  std::map<crds::ObjectKey, std::map<std::string, nlohmann::json>> entries;
  bool indexed = false;
};

// Builds view.entries from view.reports (again after reports changed) and sets view.indexed.
void IndexFleetView(FleetView& view);

struct NodesFold {
  crds::NodesStatus counts;
  crds::Condition condition;  // NodesReady, without lastTransitionTime
  // The least advanced phase among the desired nodes' entries (Pending for a node without one;
  // "" when no node is desired), and the resolvedRevision of a Ready one ("" if none): what a
  // writer without a fill of its own reports as the resource's phase and revision.
  std::string phase;
  std::string revision;
};

// The fold for `object` (see the header comment). `artifact_id` "" = any version counts.
// A desired node without an entry for the resource is not ready: "no copy reported yet", or,
// with `fill_pending` (the controller has not committed the version the nodes copy), "waiting
// for the fill".
NodesFold FoldNodes(const crds::ModelCache& object, const std::string& artifact_id,
                    const FleetView& view, std::chrono::system_clock::time_point now,
                    std::chrono::milliseconds liveness_window, bool fill_pending = false);

// Sets status.nodes and the NodesReady condition of `status` from `fold`; true if either changed.
bool ApplyNodesFold(crds::ModelCacheStatus& status, const NodesFold& fold, const std::string& now);

class FleetAggregator {
 public:
  struct Options {
    std::chrono::milliseconds liveness_window{std::chrono::minutes(3)};
    // The writer fills the storage the nodes copy from (the controller): until a resource's
    // status names an artifact, nodes without an entry are "waiting for the fill".
    bool writer_fills = false;
    // The resources to look at (the source's cache) and how to ask for a reconcile of one.
    std::function<std::vector<crds::ModelCache>()> resources;
    std::function<void(const crds::ObjectKey&)> enqueue;
  };
  // `client` and `clock` must outlive the aggregator.
  FleetAggregator(const KubeClient& client, Options options, Clock& clock);
  ~FleetAggregator();  // Stop()s.

  FleetAggregator(const FleetAggregator&) = delete;
  FleetAggregator& operator=(const FleetAggregator&) = delete;

  // Lists Nodes and ModelCacheNodes (errors as KubeCollection::List) and starts watching them;
  // every change, and a periodic look (a fifth of the liveness window, at most 10 s) for
  // heartbeats that aged out, enqueues the resources whose fold moved.
  VoidResult Start();
  void Stop();

  // Whether any ModelCacheNode exists: without one there is no fleet, and resources get no
  // status.nodes (a controller without node daemons says nothing about nodes).
  bool AnyReports() const;
  // The fold for `object` now; `artifact_id` as for FoldNodes. Remembers it, so that only later
  // changes enqueue the resource.
  NodesFold Fold(const crds::ModelCache& object, const std::string& artifact_id);

 private:
  // The indexed view, rebuilt only when a Node or a report changed since the last one (so
  // that a reconcile's Fold costs O(nodes), not a copy of every report).
  std::shared_ptr<const FleetView> View();
  void Run(std::stop_token stop);

  const Options options_;
  Clock& clock_;
  KubeCollection nodes_;
  KubeCollection reports_;
  std::mutex mu_;
  std::condition_variable_any cv_;
  bool changed_ = false;                                // GUARDED_BY(mu_)
  uint64_t version_ = 0;       // GUARDED_BY(mu_): bumped on every change of either collection
  uint64_t view_version_ = 0;  // GUARDED_BY(mu_): version_ when view_ was built
  std::shared_ptr<const FleetView> view_;                // GUARDED_BY(mu_)
  std::map<crds::ObjectKey, crds::NodesStatus> folded_;  // GUARDED_BY(mu_): last Fold()
  std::map<crds::ObjectKey, std::string> messages_;      // GUARDED_BY(mu_): its message
  std::jthread thread_;
};

}  // namespace modelcache::controller
