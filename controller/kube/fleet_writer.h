#pragma once

// Fleets without a controller (DESIGN.md "Fleets"): in a DaemonSet-only install the node daemons
// elect one of themselves with a Lease (--fleet-writer-elect; controller/kube/leader_election.h) to
// write the ModelCache statuses. While it holds the Lease, the elected node lists and watches
// every ModelCache (not only its own node's), folds the node reports into status.nodes and
// NodesReady (fleet_status.h) and writes the rest of the status from the nodes: Ready when every
// desired node is (the NodesReady fold), phase Ready then, Failed when a desired node failed,
// else the least advanced phase among the desired nodes, and resolvedRevision from a Ready one.
//
// One writer per object: a resource carrying the controller's finalizer is the controller's, and
// this writer leaves it alone.
//
// Thread-safe.

#include <memory>
#include <string>
#include <thread>

#include "controller/kube/fleet_status.h"
#include "controller/kube/kube_config.h"
#include "controller/kube/leader_election.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

// The status the elected node writes for `object`: `current` with the fold and what follows it.
crds::ModelCacheStatus ComposeFleetStatus(const crds::ModelCache& object,
                                          const crds::ModelCacheStatus& current,
                                          const NodesFold& fold, const std::string& now);

struct FleetWriterOptions {
  LeaderElectionOptions election;  // identity set
  std::chrono::milliseconds liveness_window{std::chrono::minutes(3)};
  std::string ns;  // the ModelCaches' namespace; "" = all
};

class FleetWriter {
 public:
  FleetWriter(KubeConfig config, FleetWriterOptions options);
  ~FleetWriter();  // Stop()s.

  FleetWriter(const FleetWriter&) = delete;
  FleetWriter& operator=(const FleetWriter&) = delete;

  // Starts the election (on a thread of its own); while leading, writes as above.
  void Start();
  // Ends the term (releasing the Lease) and the election. Idempotent.
  void Stop();

 private:
  void Lead(std::stop_token leading);

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace modelcache::controller
