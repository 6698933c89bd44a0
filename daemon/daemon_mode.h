#pragma once

// What differs between the daemon's two modes, behind one interface so that RunDaemon chooses
// the mode in one place and runs the same Manager and reconciler for both:
//   - directory mode: DirectorySource (inotify on a directory of YAML) + FileStatusStore;
//   - Kubernetes mode: KubernetesSource (list/watch) + KubeStatusStore (/status), plus the
//     finalizer, Events, tokenSecretRef from Secrets and the node filter (kube_daemon.cpp).

#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "common/result.h"
#include "controller/directory/file_status_store.h"
#include "controller/kube/kube_client.h"
#include "controller/manager.h"
#include "controller/source.h"
#include "reconcilers/model_cache_reconciler.h"

namespace modelcache::controller {

class DaemonMode {
 public:
  virtual ~DaemonMode() = default;

  // Where desired state comes from and where status goes; valid as long as the mode.
  virtual Source& source() = 0;
  virtual StatusStore& statuses() = 0;
  // Adds the mode's steps (finalizer, Events, secret lookup) to the options. The hooks refer to
  // the mode, which must outlive the Manager and reconciler that use them.
  virtual void Configure(ManagerOptions& manager, reconcilers::ReconcilerOptions& reconciler) = 0;
  // For the start-up log line: "watching <dir>", "watching modelcaches in ... at <server>".
  virtual std::string Describe() const = 0;
  // Shutdown has begun (SIGTERM): give up waits that would only hold it up (Kubernetes mode:
  // requests waiting for the client-side rate limit). Thread-safe; called once, from the
  // signal's stop callback.
  virtual void Stopping() {}
  // After the Manager returned: finish what is pending (Events) within a short bound.
  virtual void Shutdown() = 0;
};

struct RunOptions;
struct Environment;

// The mode `options` ask for: Kubernetes mode with --kubernetes, else directory mode (status under
// `state_dir`). The error's message starts with the flag at fault ("--kubernetes: ...").
Result<std::unique_ptr<DaemonMode>> NewDaemonMode(const RunOptions& options,
                                                  const Environment& env,
                                                  const std::string& state_dir,
                                                  const std::string& store_root);

// Directory mode: `watch_dir` watched with inotify (and rescanned every `resync_period`), status
// files under `state_dir`. Nothing to configure.
std::unique_ptr<DaemonMode> NewDirectoryMode(const std::string& watch_dir,
                                             const std::string& state_dir,
                                             std::chrono::milliseconds resync_period);

struct KubernetesModeOptions {
  std::string kubeconfig;   // --kubeconfig; "" = KUBECONFIG, in-cluster, ~/.kube/config
  std::string ns;           // --namespace; "" = all namespaces
  std::string node_name;    // --node-name; "" = no node filter (and no node report)
  // Node mode: the local store measured for the node report, and how often an idle node
  // refreshes the report's heartbeat (--node-heartbeat-interval).
  std::string store_root;
  std::chrono::milliseconds node_heartbeat_interval{std::chrono::minutes(1)};
  // The controller: a node counts as live while its report's heartbeat is younger than this
  // (--node-liveness-window).
  std::chrono::milliseconds node_liveness_window{std::chrono::minutes(3)};
  // Node mode, DaemonSet-only install: take part in the election of the fleet writer
  // (fleet_writer.h; --fleet-writer-elect).
  bool fleet_writer_elect = false;
  // Node mode with a controller (--fill-from-controller): every resource waits for the
  // controller's artifact before the node caches it.
  bool fill_from_controller = false;
  std::chrono::milliseconds resync_period{std::chrono::minutes(10)};
  std::string component = "modelcache";  // Events' source.component
  // --s3-secret: the Secret "NAME" (in the configuration's namespace) or "NAMESPACE/NAME" that
  // holds the S3 credentials (controller/kube/kube_secrets.h); "" = none.
  std::string s3_secret;
  // --kube-api-qps, --kube-api-burst: the client-side rate limit of every request to the API
  // server but leader election's (qps 0: none).
  KubeRateLimit api_limit;
};

// Kubernetes mode (kube_daemon.cpp). Loads the configuration (client-go's loading rules), and
// with a node name reads that Node, creates or takes over its ModelCacheNode and starts watching
// the Node's labels and publishing the report (node_watch.h, node_report.h). InvalidSpec naming the flag or file when the
// configuration is unusable; Unauthorized/NetworkError when the Node cannot be read.
Result<std::unique_ptr<DaemonMode>> NewKubernetesMode(
    const KubernetesModeOptions& options, const std::map<std::string, std::string>& env);

}  // namespace modelcache::controller
