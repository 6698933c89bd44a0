#pragma once

// Fleets, the node side (DESIGN.md "Fleets"): a node daemon (run --kubernetes --node-name N)
// writes no ModelCache status — one writer per object — but keeps each resource's status here and
// publishes them all as its own cluster-scoped ModelCacheNode N:
//
//   metadata: {name: N, ownerReferences: [{apiVersion: v1, kind: Node, name: N, uid: <Node uid>}]}
//   status:   {heartbeatTime, store: {usedBytes, freeBytes}, cachesReady, cachesTotal,
//              caches: [{namespace, name, phase, resolvedRevision, artifactId, path, bytesDone,
//                        bytesTotal, reason, message}, ...]}
//
// The ownerReference makes the report go with the Node (the garbage collector deletes it). The
// status is written with a merge patch of the status subresource, so no read is needed: the
// daemon is its only writer. A write follows every change (changes within min_interval are
// coalesced into one) and, when nothing changes, one every heartbeat_interval, so that a reader
// can tell a live node from a dead one by heartbeatTime. After a write, the Node's own labels
// follow the report: cache.modelcache.dev/<key>: Ready for each Ready entry, and no other label
// of that prefix (a strategic merge patch of the Node, only when they differ).
//
// Start-up is level-based: the report left by an earlier run is read back and its entries are
// kept only until the resource is reconciled again (then its fresh status replaces the entry) or,
// once the source has its first full list, dropped when the resource no longer exists for this
// node (deleted while the node was down, or no longer selecting it). A restarted node thus never
// reports a cache it lost track of, nor briefly reports none.
//
// Thread-safe.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/result.h"
#include "controller/kube/kube_client.h"
#include "controller/status_store.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

inline constexpr std::string_view kNodeReportKind = "ModelCacheNode";
inline constexpr std::string_view kNodeReportPlural = "modelcachenodes";

// "/apis/modelcache.dev/v1alpha1/modelcachenodes[/NAME]".
std::string NodeReportPath(const std::string& name = "");

// Schedulable: a Node holding a Ready copy of namespace/name carries the label
// kCacheLabelPrefix + CacheLabelKey(namespace, name) = "Ready".
inline constexpr std::string_view kCacheLabelPrefix = "cache.modelcache.dev/";
inline constexpr std::string_view kCacheLabelValue = "Ready";
// "<namespace>.<name>"; longer than 63 characters: its first 50 characters, "-", and the first
// 12 hex digits of its sha256 (a label name's limit is 63).
std::string CacheLabelKey(const std::string& ns, const std::string& name);

// The status.caches entry for a resource and its status (phase "" is reported as Pending; path:
// the artifact's stable artifacts/<name>/current beside the version directory; bytes
// from status.progress, or the artifact's size once Ready; reason and message from the Ready
// condition).
nlohmann::json NodeCacheEntry(const crds::ModelCache& object_with_status);

struct NodeReportOptions {
  std::string node_name;
  std::string node_uid;  // the Node's metadata.uid, for the ownerReference
  // Measures the local store for status.store (bytes used, bytes free); empty = not measured.
  // Called on the reporter's thread, on the heartbeat or when the Ready copies changed.
  std::function<Result<std::pair<uint64_t, uint64_t>>()> measure_store;
  // A write at least this often when nothing changes.
  std::chrono::milliseconds heartbeat_interval{std::chrono::minutes(1)};
  // Changes closer together than this go out in one write.
  std::chrono::milliseconds min_interval{300};
  // Wait after a failed write.
  std::chrono::milliseconds retry_interval{std::chrono::seconds(2)};
  // Whether the source has its first full list, and whether it holds a key (for dropping the
  // entries carried over from an earlier run). Both empty: nothing is carried over.
  std::function<bool()> source_synced;
  std::function<bool(const crds::ObjectKey&)> source_has;
  // The Node's current kCacheLabelPrefix labels (the node watch's view). When set, after each
  // report write the Node's labels are patched to be exactly one per Ready entry.
  std::function<std::map<std::string, std::string>()> cache_labels;
};

class NodeReporter final : public StatusStore {
 public:
  // `client` and `clock` must outlive the reporter.
  NodeReporter(const KubeClient& client, NodeReportOptions options, Clock& clock);
  ~NodeReporter() override;  // Stop()s.

  NodeReporter(const NodeReporter&) = delete;
  NodeReporter& operator=(const NodeReporter&) = delete;

  // Creates the ModelCacheNode owned by the Node, or takes over the existing one (reading back
  // its entries, and making it owned by this Node's uid if a Node of the same name was
  // recreated), and starts the publishing thread, which writes the first report at once.
  VoidResult Start();
  // Stops the publishing thread (the report stays; its heartbeat ages). Idempotent.
  void Stop();

  // StatusStore: statuses live in memory; Write and Remove change the report.
  Result<std::optional<crds::ModelCache>> Read(const crds::ObjectKey& key) const override;
  VoidResult Write(const crds::ModelCache& object_with_status) override;
  VoidResult Remove(const crds::ObjectKey& key) override;
  Result<std::vector<crds::ModelCache>> List() const override;

  // Successful report writes so far (for tests and logs).
  uint64_t publishes() const;

 private:
  void Run(std::stop_token stop);
  // The status to publish. REQUIRES: mu_ held.
  nlohmann::json ComposeStatus();
  // Creates the report if missing (with the ownerReference); OK if it exists.
  VoidResult EnsureReport();
  VoidResult Publish();
  // Patches the Node's cache labels to match `caches` (the published entries).
  VoidResult LabelNode(const nlohmann::json& caches);

  const KubeClient& client_;
  const NodeReportOptions options_;
  Clock& clock_;

  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  std::map<crds::ObjectKey, crds::ModelCache> statuses_;  // GUARDED_BY(mu_)
  std::map<crds::ObjectKey, nlohmann::json> carried_;     // GUARDED_BY(mu_): from an earlier run
  bool dirty_ = true;                                     // GUARDED_BY(mu_)
  uint64_t publishes_ = 0;                                // GUARDED_BY(mu_)
  // status.store: a walk of the whole store, once per heartbeat_interval or when the number of
  // Ready entries changed.
  std::optional<std::pair<uint64_t, uint64_t>> usage_;    // GUARDED_BY(mu_)
  Clock::TimePoint usage_at_{};                           // GUARDED_BY(mu_)
  int64_t usage_ready_ = -1;  // GUARDED_BY(mu_): Ready entries when usage_ was measured
  std::jthread thread_;
};

}  // namespace modelcache::controller
