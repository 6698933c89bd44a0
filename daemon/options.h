#pragma once

// What the `run` command hands the daemon: its flags (RunOptions), the process environment, and
// RunDaemon itself.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/result.h"
#include "reconcilers/model_cache_reconciler.h"

namespace modelcache::controller {

// Settings that come from the environment, read once in main (getenv is not thread-safe).
struct Environment {
  std::string hf_endpoint;   // HF_ENDPOINT
  std::string hf_token;      // HF_TOKEN, else the token file under HF_HOME
  std::string hf_home;       // HF_HOME, default ~/.cache/huggingface
  std::string hf_hub_cache;  // HF_HUB_CACHE
  // What Kubernetes mode reads (KUBECONFIG, KUBERNETES_SERVICE_HOST/PORT, HOME, NODE_NAME).
  std::map<std::string, std::string> kube;
  // AWS_* variables and HOME: the environment store::LoadAwsConfig resolves S3 settings from.
  std::map<std::string, std::string> aws;
  static Environment FromProcess();
};

// The transfer engine's flags, shared by run and prefetch (docs/transfer-engine.md); main parses
// --max-bandwidth and --chunk-size with common/units.
struct TransferFlags {
  int max_connections = 16;               // over all downloads of the process
  int max_connections_per_artifact = 8;   // requests one job keeps in flight
  uint64_t max_bandwidth = 0;             // bytes per second over the process; 0 = unlimited
  uint64_t chunk_size = 8ULL << 20;       // largest byte range per request
  // A request moving less than 1 KiB/s for this long is aborted and retried.
  std::chrono::milliseconds stall_timeout{30'000};
};

// Every option of a command by long name (without "--") with its value as text
// (cli/run_config.h): what SIGHUP compares to see which settings changed.
using ConfigValues = std::map<std::string, std::string>;

struct RunOptions {
  std::string watch_dir;
  bool kubernetes = false;
  std::string kubeconfig;    // default: KUBECONFIG, else in-cluster, else ~/.kube/config
  std::string namespace_;    // Kubernetes mode: "" = all namespaces
  std::string node_name;     // Kubernetes mode: only what spec.nodeSelector gives this node
  // Node mode: an idle node refreshes its ModelCacheNode's heartbeat this often.
  std::chrono::milliseconds node_heartbeat_interval{std::chrono::minutes(1)};
  // The fleet aggregate: a node is live while its heartbeat is younger than this.
  std::chrono::milliseconds node_liveness_window{std::chrono::minutes(3)};
  // Node mode without a controller: elect one node daemon to write the ModelCache statuses.
  bool fleet_writer_elect = false;
  // Node mode next to a controller: wait for the controller's artifact of every resource.
  bool fill_from_controller = false;
  // Kubernetes mode: only the holder of a coordination.k8s.io Lease reconciles
  // (controller/kube/leader_election.h); client-go's timings by default.
  bool leader_elect = false;
  std::string leader_elect_namespace;   // "" = the kubeconfig's or the pod's namespace
  std::string leader_elect_lease_name = "modelcache-controller";
  std::string leader_elect_identity;    // "" = <hostname>_<random UUID>
  std::chrono::milliseconds leader_elect_lease_duration{15'000};
  std::chrono::milliseconds leader_elect_renew_deadline{10'000};
  std::chrono::milliseconds leader_elect_retry_period{2'000};
  std::string store = "/var/lib/modelcache";
  std::string state_dir;     // default: <store>/state (<cache-dir>/state for an s3:// store)
  std::string secrets_dir;
  // For an s3:// store (or specs with an s3:// storage.uri): the local store that stages downloads
  // and shards before the upload. Default: --store when local, else /var/lib/modelcache.
  std::string cache_dir;
  std::string s3_endpoint;   // --s3-endpoint: wins over AWS_ENDPOINT_URL and the profile
  std::string s3_secret;     // --s3-secret: <secrets-dir>/<name>/AWS_ACCESS_KEY_ID, … or a Secret
  std::string hf_endpoint;   // default: HF_ENDPOINT, else https://huggingface.co
  // --allowed-endpoints, --allowed-stores: URL prefixes a spec may name besides the daemon's own
  // endpoint and store (common/allow_list.h).
  std::vector<std::string> allowed_endpoints;
  std::vector<std::string> allowed_stores;
  int workers = 2;
  // Kubernetes mode: the client-side rate limit of requests to the API server (0 = none) and
  // its burst (docs/kubernetes.md, "Requests to the API server").
  double kube_api_qps = 0;
  int kube_api_burst = 100;
  int max_concurrent_jobs = 4;
  // Consecutive stalled jobs of a resource before it fails with EndpointStalled; 0 = never.
  int stall_limit = 5;
  TransferFlags transfer;
  std::chrono::milliseconds resync_period{std::chrono::minutes(10)};
  // First wait between attempts of a failed Hub request; doubles per attempt up to 30 s.
  std::chrono::milliseconds retry_base_delay{1000};
  std::string log_format = "text";
  std::string log_level = "info";
  // The HTTP endpoint (/healthz, /readyz, /metrics): HOST:PORT; "" or "off": none.
  std::string listen = "127.0.0.1:8081";
  // How long a graceful shutdown may take before the daemon logs what is still running and exits
  // non-zero.
  std::chrono::milliseconds shutdown_timeout{std::chrono::seconds(30)};
  // --config FILE ("" when none), every option's value as parsed, and how to parse them again
  // (SIGHUP). Without reread_config, SIGHUP only re-sends the systemd notifications.
  std::string config_file;
  ConfigValues config_values;
  std::function<Result<ConfigValues>()> reread_config;
  // Store retention (docs/store-layout.md): GC runs only when a limit is set (0 = none).
  int keep_versions = 2;
  uint64_t store_max_bytes = 0;
  uint64_t min_free = 0;
  std::chrono::milliseconds gc_interval{std::chrono::minutes(10)};
  // Re-verify Ready artifacts this often and heal what changed on disk; 0 = never.
  std::chrono::milliseconds verify_interval{std::chrono::hours(24)};
};
// Runs the daemon until SIGTERM/SIGINT (daemon/run_daemon.cpp); `base` holds the reconciler
// settings the command line derives alike for run and prefetch (cli/run_config.h,
// CommandReconcilerOptions), to which the daemon adds its stores, limits and callbacks. Returns
// the process exit code.
int RunDaemon(const RunOptions& options, reconcilers::ReconcilerOptions base,
              const Environment& env);

}  // namespace modelcache::controller
