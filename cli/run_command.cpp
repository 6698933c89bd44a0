// `modelcache run`: the daemon's flags (the daemon itself is daemon/run_daemon.cpp).

#include <memory>
#include <string>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "cli/flag_types.h"
#include "cli/run_config.h"

namespace modelcache::controller {
namespace {

// --watch-dir or --kubernetes, and the flags of Kubernetes mode. Returns --kubernetes.
CLI::Option* AddSourceFlags(CLI::App* cmd, RunOptions& run) {
  auto* watch = cmd->add_option("--watch-dir", run.watch_dir,
                                "Directory of ModelCache YAML to watch (directory mode; default: "
                                "none, give this or --kubernetes)");
  auto* kube = cmd->add_flag("--kubernetes", run.kubernetes,
                             "Watch ModelCache resources on the Kubernetes API server (default: "
                             "off)");
  watch->excludes(kube);
  cmd->add_option("--kubeconfig", run.kubeconfig,
                  "Kubernetes mode: kubeconfig file (default: KUBECONFIG, else in-cluster, "
                  "else ~/.kube/config)");
  cmd->add_option("--namespace", run.namespace_,
                  "Kubernetes mode: watch only this namespace (default: all namespaces)");
  cmd->add_option("--node-name", run.node_name,
                  "Kubernetes mode, one daemon per node: cache only resources whose "
                  "spec.nodeSelector matches this Node's labels (default: NODE_NAME, else "
                  "no node filter)");
  AddDurationOption(cmd, "--node-heartbeat-interval", run.node_heartbeat_interval, "1m",
                    "Kubernetes mode with --node-name: refresh this node's ModelCacheNode "
                    "heartbeat this often when nothing changes",
                    Positive("1m"));
  cmd->add_flag("--fleet-writer-elect", run.fleet_writer_elect,
                "Kubernetes mode with --node-name, DaemonSet-only install (no controller): "
                "the node daemons elect one of themselves with the Lease "
                "modelcache-fleet-writer to write the ModelCache statuses (default: off)");
  cmd->add_flag("--fill-from-controller", run.fill_from_controller,
                "Kubernetes mode with --node-name, next to a controller: cache a resource "
                "only once the controller's status names its artifact, copying an s3:// "
                "version from the bucket (default: off; a resource carrying the controller's "
                "finalizer waits anyway)");
  AddDurationOption(cmd, "--node-liveness-window", run.node_liveness_window, "3m",
                    "Kubernetes mode: a node counts in a resource's status.nodes while its "
                    "ModelCacheNode heartbeat is younger than this",
                    Positive("3m"));
  return kube;
}

void AddLeaderElectionFlags(CLI::App* cmd, RunOptions& run) {
  cmd->add_flag("--leader-elect", run.leader_elect,
                "Kubernetes mode: reconcile only while holding a coordination.k8s.io/v1 "
                "Lease, so that several replicas can run (one leads, the others wait; default: "
                "off)");
  cmd->add_option("--leader-elect-namespace", run.leader_elect_namespace,
                  "Namespace of the Lease (default: the kubeconfig context's namespace, "
                  "in a pod its own namespace)");
  cmd->add_option("--leader-elect-lease-name", run.leader_elect_lease_name, "Name of the Lease")
      ->capture_default_str();
  cmd->add_option("--leader-elect-identity", run.leader_elect_identity,
                  "This replica's holderIdentity (default: <hostname>_<random UUID>)");
  AddDurationOption(cmd, "--leader-elect-lease-duration", run.leader_elect_lease_duration, "15s",
                    "How long followers wait, after the Lease last changed, before taking it "
                    "over (whole seconds, at least 1s)",
                    Positive("15s"));
  AddDurationOption(cmd, "--leader-elect-renew-deadline", run.leader_elect_renew_deadline, "10s",
                    "How long the leader keeps retrying a renewal before it stops reconciling "
                    "and exits; less than the lease duration",
                    Positive("15s"));
  AddDurationOption(cmd, "--leader-elect-retry-period", run.leader_elect_retry_period, "2s",
                    "Interval between attempts to take or renew the Lease", Positive("15s"));
}

void AddStoreFlags(CLI::App* cmd, RunOptions& run) {
  cmd->add_option("--store", run.store, "Store: a path, file:// URI or s3://BUCKET[/PREFIX]")
      ->capture_default_str();
  cmd->add_option("--cache-dir", run.cache_dir,
                  "Local store where sharded artifacts are downloaded and sharded before an "
                  "S3 upload; unsharded ones stream from the Hub to S3 (default: --store when "
                  "local, else /var/lib/modelcache)");
  cmd->add_option("--s3-endpoint", run.s3_endpoint,
                  "S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the "
                  "profile's, else AWS)");
  cmd->add_option("--s3-secret", run.s3_secret,
                  "S3 credentials AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                  "[, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL] from the files of "
                  "<secrets-dir>/<name>/, or with --kubernetes the keys of Secret NAME (in the "
                  "daemon's namespace) or NAMESPACE/NAME (default: AWS environment and "
                  "profiles)");
  cmd->add_option("--state-dir", run.state_dir,
                  "Where status lives in directory mode (default: <store>/state; "
                  "<cache-dir>/state for an s3:// store)");
  cmd->add_option("--secrets-dir", run.secrets_dir,
                  "Directory mode: tokenSecretRef {name,key} is read from "
                  "<secrets-dir>/<name>/<key> (Kubernetes mode reads the Secret; default: none)");
  cmd->add_option("--hf-endpoint", run.hf_endpoint,
                  "Hub endpoint (default: HF_ENDPOINT, else https://huggingface.co)");
  cmd->add_option("--allowed-endpoints", run.allowed_endpoints,
                  "Hub endpoints a resource's spec.source.endpoint may name besides the daemon's "
                  "own: URL prefixes (scheme, host and port exact, path on \"/\" boundaries), "
                  "comma-separated or repeated; the daemon's HF_TOKEN goes to none of them "
                  "(default: none)")
      ->delimiter(',')
      ->allow_extra_args(false);
  cmd->add_option("--allowed-stores", run.allowed_stores,
                  "Stores a resource's spec.storage.uri (or s3:// spec.source.repo) may name "
                  "besides --store: paths, file:// or s3://BUCKET[/PREFIX] prefixes, "
                  "comma-separated or repeated (default: none)")
      ->delimiter(',')
      ->allow_extra_args(false);
}

void AddLimitFlags(CLI::App* cmd, RunOptions& run) {
  cmd->add_option("--workers", run.workers, "Reconcile workers")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--kube-api-qps", run.kube_api_qps,
                  "Kubernetes mode: requests per second to the API server, on average (a token "
                  "bucket, as kube-controller-manager's); 0 = no client-side limit")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e6));
  cmd->add_option("--kube-api-burst", run.kube_api_burst,
                  "Kubernetes mode: requests sent at once before --kube-api-qps paces them")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--max-concurrent-jobs", run.max_concurrent_jobs,
                  "Downloads/shards that run at once; others wait as Pending")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--stall-limit", run.stall_limit,
                  "Consecutive jobs of a resource whose endpoint stalls before it fails "
                  "with EndpointStalled (0 = never)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  AddTransferFlags(cmd, run.transfer);
  AddDurationOption(cmd, "--resync-period", run.resync_period, "10m",
                    "Re-read every manifest this often (a missed event never sticks)");
  AddDurationOption(cmd, "--retry-base-delay", run.retry_base_delay, "1s",
                    "First wait before retrying a failed Hub request (doubles, up to 30s)",
                    Positive("500ms"));
}

void AddServiceFlags(CLI::App* cmd, RunOptions& run) {
  cmd->add_option("--log-format", run.log_format, "text or json")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  cmd->add_option("--log-level", run.log_level, "trace, debug, info, warn or error")
      ->capture_default_str();
  cmd->add_option("--listen", run.listen,
                  "HOST:PORT of /healthz, /readyz and /metrics ([::1]:PORT for IPv6); \"\" or "
                  "off: none")
      ->capture_default_str();
  AddDurationOption(cmd, "--shutdown-timeout", run.shutdown_timeout, "30s",
                    "On SIGTERM/SIGINT, exit non-zero (naming what still runs) if shutdown takes "
                    "longer");
  AddConfigFileOption(cmd)->type_name("FILE");
}

void AddRetentionFlags(CLI::App* cmd, RunOptions& run) {
  cmd->add_option("--keep-versions", run.keep_versions,
                  "GC keeps this many newest versions of each referenced artifact")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  AddByteSizeOption(cmd, "--store-max-bytes", run.store_max_bytes, "0",
                    "GC removes unreferenced data, oldest first, while the store is larger "
                    "(e.g. 500GiB; 0 = no limit)");
  AddByteSizeOption(cmd, "--min-free", run.min_free, "0",
                    "GC removes unreferenced data, oldest first, while the store's disk has "
                    "less free (e.g. 20GiB; 0 = no floor)");
  AddDurationOption(cmd, "--gc-interval", run.gc_interval, "10m",
                    "How often GC checks the limits (also after each publish)", Positive("10m"));
  AddDurationOption(cmd, "--verify-interval", run.verify_interval, "24h",
                    "Re-hash each Ready artifact this often and re-fetch what changed on disk "
                    "(0 = never)");
}

}  // namespace

Command AddRunCommand(CLI::App& app, int argc, char** argv, const Environment& env) {
  auto run = std::make_shared<RunOptions>();
  CLI::App* cmd = app.add_subcommand("run", "Run the controller daemon");
  CLI::Option* kube = AddSourceFlags(cmd, *run);
  AddLeaderElectionFlags(cmd, *run);
  AddStoreFlags(cmd, *run);
  AddLimitFlags(cmd, *run);
  AddServiceFlags(cmd, *run);
  AddRetentionFlags(cmd, *run);
  for (const char* flag :
       {"--kubeconfig", "--namespace", "--node-name", "--kube-api-qps", "--kube-api-burst",
        "--node-heartbeat-interval", "--node-liveness-window", "--fleet-writer-elect",
        "--fill-from-controller"}) {
    cmd->get_option(flag)->needs(kube);
  }
  return {cmd, [&app, cmd, run, argc, argv, &env] {
            if (const CLI::Option* config = cmd->get_config_ptr(); config->count() > 0) {
              run->config_file = config->results().front();
            }
            run->config_values = OptionValues(*cmd);
            // SIGHUP parses the same command line again, so the file is re-read and flags still
            // win.
            run->reread_config = [&app, cmd, argc, argv] { return Reparse(app, *cmd, argc, argv); };
            if (auto node = env.kube.find("NODE_NAME");
                run->node_name.empty() && run->kubernetes && node != env.kube.end()) {
              run->node_name = node->second;
            }
            // The daemon gets a copy: a SIGHUP re-parse writes into *run.
            const RunOptions options = *run;
            return RunDaemon(options,
                             CommandReconcilerOptions(options.hf_endpoint, options.s3_endpoint,
                                                      options.transfer, env),
                             env);
          }};
}

}  // namespace modelcache::controller
