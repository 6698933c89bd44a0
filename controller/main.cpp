// modelcache: one binary, several commands (DESIGN.md "Command line"). This file only parses
// flags; each command lives in controller/*_command.cpp.

#include <iostream>
#include <string>
#include <tuple>

#include <CLI/CLI.hpp>

#include "common/units.h"
#include "controller/commands.h"

namespace mc = modelcache::controller;

int main(int argc, char** argv) {
  CLI::App app{"modelcache: declarative, verified, versioned caching of HuggingFace models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "modelcache 0.1.0");

  // run
  mc::RunOptions run;
  std::string resync = "10m";
  std::string retry_base = "1s";
  auto* run_cmd = app.add_subcommand("run", "Run the controller daemon");
  auto* watch = run_cmd->add_option("--watch-dir", run.watch_dir,
                                    "Directory of ModelCache YAML to watch (directory mode)");
  auto* kube = run_cmd->add_flag("--kubernetes", run.kubernetes,
                                 "Watch ModelCache resources on the Kubernetes API server");
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
  run_cmd->add_flag("--leader-elect", run.leader_elect,
                    "Kubernetes mode: reconcile only while holding a coordination.k8s.io/v1 "
                    "Lease, so that several replicas can run (one leads, the others wait)");
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
  run_cmd->add_option("--store", run.store, "Store: a path or file:// URI")
      ->capture_default_str();
  run_cmd->add_option("--state-dir", run.state_dir,
                      "Where status lives in directory mode (default: <store>/state)");
  run_cmd->add_option("--secrets-dir", run.secrets_dir,
                      "Directory mode: tokenSecretRef {name,key} is read from "
                      "<secrets-dir>/<name>/<key> (Kubernetes mode reads the Secret)");
  run_cmd->add_option("--hf-endpoint", run.hf_endpoint,
                      "Hub endpoint (default: HF_ENDPOINT, else https://huggingface.co)");
  run_cmd->add_option("--workers", run.workers, "Reconcile workers")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  run_cmd->add_option("--max-concurrent-jobs", run.max_concurrent_jobs,
                      "Downloads/shards that run at once; others wait as Pending")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  run_cmd->add_option("--parallel-files", run.parallel_files,
                      "Files downloaded in parallel within one job")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
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

  for (const char* flag : {"--kubeconfig", "--namespace", "--node-name"}) {
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
                           "Store path or file:// URI (default: HF_HOME, so <store>/hub is the "
                           "huggingface_hub cache)");
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
  prefetch_cmd->add_flag("--force", prefetch.force, "Re-verify local files and re-fetch bad ones");
  prefetch_cmd->add_option("--parallel-files", prefetch.parallel_files, "Files in parallel")
      ->capture_default_str();
  bool no_progress = false;
  prefetch_cmd->add_flag("--no-progress", no_progress, "No progress bar");

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

  // validate
  std::vector<std::string> files;
  auto* validate_cmd = app.add_subcommand("validate", "Validate ModelCache manifests offline");
  validate_cmd->add_option("files", files, "YAML files")->required();

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
    auto retry = modelcache::ParseDuration(retry_base);
    if (!retry || retry->count() <= 0) {
      std::cerr << "modelcache: --retry-base-delay: must be a positive duration like 500ms\n";
      return 2;
    }
    run.retry_base_delay = *retry;
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
    return mc::RunDaemon(run, env);
  }
  if (prefetch_cmd->parsed()) {
    prefetch.progress = !no_progress;
    return mc::Prefetch(prefetch, env);
  }
  if (shard_cmd->parsed()) {
    return mc::Shard(shard);
  }
  if (get_cmd->parsed()) {
    return mc::Get(get);
  }
  if (validate_cmd->parsed()) {
    return mc::Validate(files);
  }
  return 2;
}
