// modelcache: one binary, several commands (DESIGN.md "Command line"). This file only parses
// flags; each command lives in cli/*_command.cpp (`run` in daemon/).

#include <iostream>
#include <string>
#include <tuple>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "cli/run_config.h"
#include "common/build_info.h"
#include "common/units.h"

namespace mc = modelcache::controller;

namespace {

// --max-connections, --max-connections-per-artifact, --max-bandwidth, --chunk-size and
// --stall-timeout, shared by run, prefetch and pull; the sizes and the duration are parsed after
// CLI11 by ParseTransferFlags.
struct TransferFlagText {
  std::string max_bandwidth = "0";
  std::string chunk_size = "8MiB";
  std::string stall_timeout = "30s";
};

void AddTransferFlags(CLI::App* cmd, mc::TransferFlags& flags, TransferFlagText& text) {
  cmd->add_option("--max-connections", flags.max_connections,
                  "HTTP connections over all downloads of this process")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--max-connections-per-artifact", flags.max_connections_per_artifact,
                  "Requests one artifact's download keeps in flight (files and byte ranges)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--max-bandwidth", text.max_bandwidth,
                  "Download rate limit over the process, e.g. 100MB/s or 1GiB/s; 0 = unlimited")
      ->capture_default_str();
  cmd->add_option("--chunk-size", text.chunk_size,
                  "Largest byte range per request; large files are split into ranges fetched in "
                  "parallel (at least 64KiB)")
      ->capture_default_str();
  cmd->add_option("--stall-timeout", text.stall_timeout,
                  "Abort and retry a Hub request or download that moves less than 1 KiB/s for "
                  "this long (at least 1s)")
      ->capture_default_str();
}

// Exit code 2 with a message naming the flag on a bad value.
int ParseTransferFlags(const TransferFlagText& text, mc::TransferFlags& flags) {
  std::string rate = text.max_bandwidth;
  if (rate.size() > 2 && rate.compare(rate.size() - 2, 2, "/s") == 0) {
    rate.resize(rate.size() - 2);
  }
  auto bandwidth = modelcache::ParseByteSize(rate);
  if (!bandwidth) {
    std::cerr << "modelcache: --max-bandwidth: " << bandwidth.error().message
              << " (expected a rate like 100MB/s, or 0)\n";
    return 2;
  }
  flags.max_bandwidth = *bandwidth;
  auto chunk = modelcache::ParseByteSize(text.chunk_size);
  if (!chunk || *chunk < (64U << 10)) {
    std::cerr << "modelcache: --chunk-size: "
              << (chunk ? std::string("must be at least 64KiB") : chunk.error().message) << "\n";
    return 2;
  }
  flags.chunk_size = *chunk;
  auto stall = modelcache::ParseDuration(text.stall_timeout);
  if (!stall || *stall < std::chrono::seconds(1)) {
    std::cerr << "modelcache: --stall-timeout: must be a duration of at least 1s, like 30s\n";
    return 2;
  }
  flags.stall_timeout = *stall;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"modelcache: declarative, verified, versioned caching of HuggingFace models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", [] { return modelcache::VersionText(); },
                       "Print the version, the git commit and the libcurl and OpenSSL versions");

  // run
  mc::RunOptions run;
  std::string resync = "10m";
  std::string retry_base = "1s";
  auto* run_cmd = app.add_subcommand("run", "Run the controller daemon");
  auto* watch = run_cmd->add_option("--watch-dir", run.watch_dir,
                                    "Directory of ModelCache YAML to watch (directory mode; default: none, give this or "
                                    "--kubernetes)");
  auto* kube = run_cmd->add_flag("--kubernetes", run.kubernetes,
                                 "Watch ModelCache resources on the Kubernetes API server (default: off)");
  watch->excludes(kube);
  run_cmd->add_option("--kubeconfig", run.kubeconfig,
                      "Kubernetes mode: kubeconfig file (default: KUBECONFIG, else in-cluster, "
                      "else ~/.kube/config)");
  run_cmd->add_option("--namespace", run.namespace_,
                      "Kubernetes mode: watch only this namespace (default: all namespaces)");
  run_cmd->add_option("--node-name", run.node_name,
                      "Kubernetes mode, one daemon per node: cache only resources whose "
                      "spec.nodeSelector matches this Node's labels (default: NODE_NAME, else "
                      "no node filter)");
  std::string node_heartbeat = "1m";
  run_cmd->add_option("--node-heartbeat-interval", node_heartbeat,
                      "Kubernetes mode with --node-name: refresh this node's ModelCacheNode "
                      "heartbeat this often when nothing changes")
      ->capture_default_str();
  run_cmd->add_flag("--fleet-writer-elect", run.fleet_writer_elect,
                    "Kubernetes mode with --node-name, DaemonSet-only install (no controller): "
                    "the node daemons elect one of themselves with the Lease "
                    "modelcache-fleet-writer to write the ModelCache statuses (default: off)");
  run_cmd->add_flag("--fill-from-controller", run.fill_from_controller,
                    "Kubernetes mode with --node-name, next to a controller: cache a resource "
                    "only once the controller's status names its artifact, copying an s3:// "
                    "version from the bucket (default: off; a resource carrying the controller's "
                    "finalizer waits anyway)");
  std::string node_liveness = "3m";
  run_cmd->add_option("--node-liveness-window", node_liveness,
                      "Kubernetes mode: a node counts in a resource's status.nodes while its "
                      "ModelCacheNode heartbeat is younger than this")
      ->capture_default_str();
  run_cmd->add_flag("--leader-elect", run.leader_elect,
                    "Kubernetes mode: reconcile only while holding a coordination.k8s.io/v1 "
                    "Lease, so that several replicas can run (one leads, the others wait; default: off)");
  run_cmd->add_option("--leader-elect-namespace", run.leader_elect_namespace,
                      "Namespace of the Lease (default: the kubeconfig context's namespace, "
                      "in a pod its own namespace)");
  run_cmd->add_option("--leader-elect-lease-name", run.leader_elect_lease_name,
                      "Name of the Lease")
      ->capture_default_str();
  run_cmd->add_option("--leader-elect-identity", run.leader_elect_identity,
                      "This replica's holderIdentity (default: <hostname>_<random UUID>)");
  std::string lease_duration = "15s";
  std::string renew_deadline = "10s";
  std::string retry_period = "2s";
  run_cmd->add_option("--leader-elect-lease-duration", lease_duration,
                      "How long followers wait, after the Lease last changed, before taking it "
                      "over (whole seconds, at least 1s)")
      ->capture_default_str();
  run_cmd->add_option("--leader-elect-renew-deadline", renew_deadline,
                      "How long the leader keeps retrying a renewal before it stops reconciling "
                      "and exits; less than the lease duration")
      ->capture_default_str();
  run_cmd->add_option("--leader-elect-retry-period", retry_period,
                      "Interval between attempts to take or renew the Lease")
      ->capture_default_str();
  run_cmd->add_option("--store", run.store, "Store: a path, file:// URI or s3://BUCKET[/PREFIX]")
      ->capture_default_str();
  run_cmd->add_option("--cache-dir", run.cache_dir,
                      "Local store where sharded artifacts are downloaded and sharded before an "
                      "S3 upload; unsharded ones stream from the Hub to S3 (default: --store when "
                      "local, else /var/lib/modelcache)");
  run_cmd->add_option("--s3-endpoint", run.s3_endpoint,
                      "S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the "
                      "profile's, else AWS)");
  run_cmd->add_option("--s3-secret", run.s3_secret,
                      "S3 credentials AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
                      "[, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL] from the files of "
                      "<secrets-dir>/<name>/, or with --kubernetes the keys of Secret NAME (in the "
                      "daemon's namespace) or NAMESPACE/NAME (default: AWS environment and "
                      "profiles)");
  run_cmd->add_option("--state-dir", run.state_dir,
                      "Where status lives in directory mode (default: <store>/state; "
                      "<cache-dir>/state for an s3:// store)");
  run_cmd->add_option("--secrets-dir", run.secrets_dir,
                      "Directory mode: tokenSecretRef {name,key} is read from "
                      "<secrets-dir>/<name>/<key> (Kubernetes mode reads the Secret; default: none)");
  run_cmd->add_option("--hf-endpoint", run.hf_endpoint,
                      "Hub endpoint (default: HF_ENDPOINT, else https://huggingface.co)");
  run_cmd
      ->add_option("--allowed-endpoints", run.allowed_endpoints,
                   "Hub endpoints a resource's spec.source.endpoint may name besides the daemon's "
                   "own: URL prefixes (scheme, host and port exact, path on \"/\" boundaries), "
                   "comma-separated or repeated; the daemon's HF_TOKEN goes to none of them "
                   "(default: none)")
      ->delimiter(',')
      ->allow_extra_args(false);
  run_cmd
      ->add_option("--allowed-stores", run.allowed_stores,
                   "Stores a resource's spec.storage.uri (or s3:// spec.source.repo) may name "
                   "besides --store: paths, file:// or s3://BUCKET[/PREFIX] prefixes, "
                   "comma-separated or repeated (default: none)")
      ->delimiter(',')
      ->allow_extra_args(false);
  run_cmd->add_option("--workers", run.workers, "Reconcile workers")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  run_cmd
      ->add_option("--kube-api-qps", run.kube_api_qps,
                   "Kubernetes mode: requests per second to the API server, on average (a token "
                   "bucket, as kube-controller-manager's); 0 = no client-side limit")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e6));
  run_cmd
      ->add_option("--kube-api-burst", run.kube_api_burst,
                   "Kubernetes mode: requests sent at once before --kube-api-qps paces them")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  run_cmd->add_option("--max-concurrent-jobs", run.max_concurrent_jobs,
                      "Downloads/shards that run at once; others wait as Pending")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  run_cmd->add_option("--stall-limit", run.stall_limit,
                      "Consecutive jobs of a resource whose endpoint stalls before it fails "
                      "with EndpointStalled (0 = never)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  TransferFlagText run_transfer;
  AddTransferFlags(run_cmd, run.transfer, run_transfer);
  run_cmd->add_option("--resync-period", resync,
                      "Re-read every manifest this often (a missed event never sticks)")
      ->capture_default_str();
  run_cmd->add_option("--retry-base-delay", retry_base,
                      "First wait before retrying a failed Hub request (doubles, up to 30s)")
      ->capture_default_str();
  run_cmd->add_option("--log-format", run.log_format, "text or json")
      ->capture_default_str()
      ->check(CLI::IsMember({"text", "json"}));
  run_cmd->add_option("--log-level", run.log_level, "trace, debug, info, warn or error")
      ->capture_default_str();
  run_cmd->add_option("--listen", run.listen,
                      "HOST:PORT of /healthz, /readyz and /metrics ([::1]:PORT for IPv6); \"\" or "
                      "off: none")
      ->capture_default_str();
  std::string shutdown_timeout = "30s";
  run_cmd->add_option("--shutdown-timeout", shutdown_timeout,
                      "On SIGTERM/SIGINT, exit non-zero (naming what still runs) if shutdown takes "
                      "longer")
      ->capture_default_str();
  mc::AddConfigFileOption(run_cmd)->type_name("FILE");
  std::string run_max_bytes = "0";
  std::string run_min_free = "0";
  std::string gc_interval = "10m";
  std::string verify_interval = "24h";
  run_cmd->add_option("--keep-versions", run.keep_versions,
                      "GC keeps this many newest versions of each referenced artifact")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  run_cmd->add_option("--store-max-bytes", run_max_bytes,
                      "GC removes unreferenced data, oldest first, while the store is larger "
                      "(e.g. 500GiB; 0 = no limit)")
      ->capture_default_str();
  run_cmd->add_option("--min-free", run_min_free,
                      "GC removes unreferenced data, oldest first, while the store's disk has "
                      "less free (e.g. 20GiB; 0 = no floor)")
      ->capture_default_str();
  run_cmd->add_option("--gc-interval", gc_interval,
                      "How often GC checks the limits (also after each publish)")
      ->capture_default_str();
  run_cmd->add_option("--verify-interval", verify_interval,
                      "Re-hash each Ready artifact this often and re-fetch what changed on disk "
                      "(0 = never)")
      ->capture_default_str();

  for (const char* flag :
       {"--kubeconfig", "--namespace", "--node-name", "--kube-api-qps", "--kube-api-burst",
        "--node-heartbeat-interval", "--node-liveness-window", "--fleet-writer-elect",
        "--fill-from-controller"}) {
    run_cmd->get_option(flag)->needs(kube);
  }

  // prefetch
  mc::PrefetchOptions prefetch;
  auto* prefetch_cmd =
      app.add_subcommand("prefetch", "Cache one repo now, in the foreground; prints the artifact id");
  prefetch_cmd->add_option("repo", prefetch.repo, "REPO[:REVISION], e.g. Qwen/Qwen3-0.6B:main")
      ->required();
  prefetch_cmd->add_option("--type", prefetch.type, "model or dataset")
      ->capture_default_str()
      ->check(CLI::IsMember({"model", "dataset"}));
  prefetch_cmd->add_option("--store", prefetch.store,
                           "Store path, file:// URI or s3://BUCKET[/PREFIX] (default: HF_HOME, so "
                           "<store>/hub is the huggingface_hub cache)");
  prefetch_cmd->add_option("--cache-dir", prefetch.cache_dir,
                           "For an s3:// store: the local store that stages a sharded artifact's "
                           "downloads and shards; unsharded ones stream from the Hub to S3 "
                           "(default: HF_HOME)");
  prefetch_cmd->add_option("--s3-endpoint", prefetch.s3_endpoint,
                           "S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the "
                           "profile's, else AWS)");
  prefetch_cmd->add_option("--hf-endpoint", prefetch.hf_endpoint, "Hub endpoint");
  prefetch_cmd->add_option("--name", prefetch.name, "Artifact name (default: from the repo)");
  prefetch_cmd->add_option("--include", prefetch.include, "fnmatch patterns of files to fetch");
  prefetch_cmd->add_option("--exclude", prefetch.exclude, "fnmatch patterns of files to skip");
  prefetch_cmd->add_option("--tp", prefetch.tp, "Shard for this tensor-parallel size");
  prefetch_cmd->add_option("--engine", prefetch.engine, "vllm or sglang")->capture_default_str();
  prefetch_cmd->add_option("--dtype", prefetch.dtype, "auto, float16, bfloat16 or float32")
      ->capture_default_str();
  prefetch_cmd->add_option("--max-file-size", prefetch.max_file_size, "Largest shard part")
      ->capture_default_str();
  prefetch_cmd->add_flag("--shard-after-download", prefetch.shard_after_download,
                         "Shard once the download is done instead of while it runs");
  prefetch_cmd->add_flag("--force", prefetch.force, "Re-verify local files and re-fetch bad ones");
  TransferFlagText prefetch_transfer;
  AddTransferFlags(prefetch_cmd, prefetch.transfer, prefetch_transfer);
  bool no_progress = false;
  prefetch_cmd->add_flag("--no-progress", no_progress, "No progress bar");
  prefetch_cmd->add_option("--log-level", prefetch.log_level, "trace, debug, info, warn or error")
      ->capture_default_str();

  // shard
  mc::ShardCommandOptions shard;
  auto* shard_cmd = app.add_subcommand(
      "shard", "Shard a local checkpoint for tensor parallelism (vLLM/SGLang sharded_state)");
  shard_cmd->add_option("src", shard.src_dir, "HuggingFace checkpoint directory")->required();
  shard_cmd->add_option("out", shard.out_dir, "Output directory (must not exist or be empty)")
      ->required();
  shard_cmd->add_option("--tp", shard.tp, "Tensor-parallel size")->required();
  shard_cmd->add_option("--engine", shard.engine, "vllm or sglang")
      ->capture_default_str()
      ->check(CLI::IsMember({"vllm", "sglang"}));
  shard_cmd->add_option("--engine-release", shard.engine_release,
                        "Engine release to lay the files out for (default: the pinned one)");
  shard_cmd->add_option("--dtype", shard.dtype, "auto, float16, bfloat16 or float32")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "float16", "bfloat16", "float32"}));
  shard_cmd->add_option("--max-file-size", shard.max_file_size, "Largest part file")
      ->capture_default_str();
  shard_cmd->add_option("--threads", shard.threads, "Threads")->capture_default_str();

  // get
  mc::GetOptions get;
  auto* get_cmd = app.add_subcommand("get", "Show ModelCache status (directory mode)");
  get_cmd->add_option("name", get.name, "Only this resource");
  get_cmd->add_option("-n,--namespace", get.namespace_, "Namespace")->capture_default_str();
  get_cmd->add_flag("-A,--all-namespaces", get.all_namespaces, "All namespaces");
  get_cmd->add_option("-o,--output", get.output, "wide, json or yaml");
  get_cmd->add_option("--state-dir", get.state_dir, "The daemon's --state-dir")
      ->capture_default_str();

  // pull
  mc::PullOptions pull;
  auto* pull_cmd = app.add_subcommand(
      "pull", "Download a published artifact version from S3 into DIR, verified, atomically");
  pull_cmd->add_option("uri", pull.uri, "s3://BUCKET[/PREFIX]/artifacts/NAME[/VERSION] "
                                        "(no VERSION: the current one)")
      ->required();
  pull_cmd->add_option("dir", pull.dir, "Target directory (replaced atomically by the new version)")
      ->required();
  pull_cmd->add_option("--s3-endpoint", pull.s3_endpoint,
                       "S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the "
                       "profile's, else AWS)");
  TransferFlagText pull_transfer;
  AddTransferFlags(pull_cmd, pull.transfer, pull_transfer);

  // validate
  std::vector<std::string> files;
  auto* validate_cmd = app.add_subcommand("validate", "Validate ModelCache manifests offline");
  validate_cmd->add_option("files", files, "YAML files")->required();

  // gc
  mc::GcCommandOptions gc;
  auto* gc_cmd = app.add_subcommand(
      "gc", "Remove store data no ModelCache references (docs/store-layout.md, Retention)");
  gc_cmd->add_flag("--dry-run", gc.dry_run, "Print what would be removed; remove nothing");
  gc_cmd->add_option("--store", gc.store, "Store path or file:// URI")->capture_default_str();
  gc_cmd->add_option("--state-dir", gc.state_dir,
                     "The daemon's status records: the references (default: <store>/state)");
  gc_cmd->add_option("--keep-versions", gc.keep_versions,
                     "Newest versions kept per referenced artifact")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000));
  gc_cmd->add_option("--store-max-bytes", gc.store_max_bytes,
                     "Remove only until the store is this small (0 = remove all unreferenced)")
      ->capture_default_str();
  gc_cmd->add_option("--min-free", gc.min_free,
                     "Remove only until the disk has this much free (0 = no floor)")
      ->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  mc::Environment env = mc::Environment::FromProcess();
  if (run_cmd->parsed()) {
    auto period = modelcache::ParseDuration(resync);
    if (!period) {
      std::cerr << "modelcache: --resync-period: " << period.error().message << "\n";
      return 2;
    }
    run.resync_period = *period;
    auto heartbeat = modelcache::ParseDuration(node_heartbeat);
    if (!heartbeat || heartbeat->count() <= 0) {
      std::cerr << "modelcache: --node-heartbeat-interval: must be a positive duration like 1m\n";
      return 2;
    }
    run.node_heartbeat_interval = *heartbeat;
    auto liveness = modelcache::ParseDuration(node_liveness);
    if (!liveness || liveness->count() <= 0) {
      std::cerr << "modelcache: --node-liveness-window: must be a positive duration like 3m\n";
      return 2;
    }
    run.node_liveness_window = *liveness;
    auto retry = modelcache::ParseDuration(retry_base);
    if (!retry || retry->count() <= 0) {
      std::cerr << "modelcache: --retry-base-delay: must be a positive duration like 500ms\n";
      return 2;
    }
    run.retry_base_delay = *retry;
    if (int code = ParseTransferFlags(run_transfer, run.transfer); code != 0) {
      return code;
    }
    auto max_bytes = modelcache::ParseByteSize(run_max_bytes);
    if (!max_bytes) {
      std::cerr << "modelcache: --store-max-bytes: " << max_bytes.error().message << "\n";
      return 2;
    }
    run.store_max_bytes = *max_bytes;
    auto min_free = modelcache::ParseByteSize(run_min_free);
    if (!min_free) {
      std::cerr << "modelcache: --min-free: " << min_free.error().message << "\n";
      return 2;
    }
    run.min_free = *min_free;
    auto gc_every = modelcache::ParseDuration(gc_interval);
    if (!gc_every || gc_every->count() <= 0) {
      std::cerr << "modelcache: --gc-interval: must be a positive duration like 10m\n";
      return 2;
    }
    run.gc_interval = *gc_every;
    auto verify_every = modelcache::ParseDuration(verify_interval);
    if (!verify_every) {
      std::cerr << "modelcache: --verify-interval: " << verify_every.error().message << "\n";
      return 2;
    }
    run.verify_interval = *verify_every;
    auto stop_timeout = modelcache::ParseDuration(shutdown_timeout);
    if (!stop_timeout) {
      std::cerr << "modelcache: --shutdown-timeout: " << stop_timeout.error().message << "\n";
      return 2;
    }
    run.shutdown_timeout = *stop_timeout;
    if (const CLI::Option* config = run_cmd->get_config_ptr(); config->count() > 0) {
      run.config_file = config->results().front();
    }
    run.config_values = mc::OptionValues(*run_cmd);
    // SIGHUP parses the same command line again, so the file is re-read and flags still win.
    // Re-parsing writes the variables bound above, which RunDaemon's copy no longer reads.
    run.reread_config = [&app, run_cmd, argc, argv] {
      return mc::Reparse(app, *run_cmd, argc, argv);
    };
    for (auto [flag, text, out] :
         {std::tuple{"--leader-elect-lease-duration", &lease_duration,
                     &run.leader_elect_lease_duration},
          std::tuple{"--leader-elect-renew-deadline", &renew_deadline,
                     &run.leader_elect_renew_deadline},
          std::tuple{"--leader-elect-retry-period", &retry_period,
                     &run.leader_elect_retry_period}}) {
      auto d = modelcache::ParseDuration(*text);
      if (!d || d->count() <= 0) {
        std::cerr << "modelcache: " << flag << ": must be a positive duration like 15s\n";
        return 2;
      }
      *out = *d;
    }
    if (run.node_name.empty() && run.kubernetes && env.kube.count("NODE_NAME") != 0) {
      run.node_name = env.kube["NODE_NAME"];
    }
    return mc::RunDaemon(run, mc::CommandReconcilerOptions(run.hf_endpoint, run.s3_endpoint,
                                                           run.transfer, env),
                         env);
  }
  if (prefetch_cmd->parsed()) {
    prefetch.progress = !no_progress;
    if (int code = ParseTransferFlags(prefetch_transfer, prefetch.transfer); code != 0) {
      return code;
    }
    return mc::Prefetch(prefetch, env);
  }
  if (shard_cmd->parsed()) {
    return mc::Shard(shard);
  }
  if (pull_cmd->parsed()) {
    if (int code = ParseTransferFlags(pull_transfer, pull.transfer); code != 0) {
      return code;
    }
    return mc::Pull(pull, env);
  }
  if (get_cmd->parsed()) {
    return mc::Get(get);
  }
  if (gc_cmd->parsed()) {
    return mc::CollectGarbage(gc);
  }
  if (validate_cmd->parsed()) {
    return mc::Validate(files);
  }
  return 2;
}
