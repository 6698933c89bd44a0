#pragma once

// The modelcache subcommands. main.cpp parses flags into these option structs and calls one
// function; each returns the process exit code and prints its own errors (one clear line each).

#include <chrono>
#include <map>
#include <string>
#include <vector>

namespace modelcache::controller {

// Settings that come from the environment, read once in main (getenv is not thread-safe).
struct Environment {
  std::string hf_endpoint;   // HF_ENDPOINT
  std::string hf_token;      // HF_TOKEN, else the token file under HF_HOME
  std::string hf_home;       // HF_HOME, default ~/.cache/huggingface
  std::string hf_hub_cache;  // HF_HUB_CACHE
  // What Kubernetes mode reads (KUBECONFIG, KUBERNETES_SERVICE_HOST/PORT, HOME, NODE_NAME).
  std::map<std::string, std::string> kube;
  static Environment FromProcess();
};

struct RunOptions {
  std::string watch_dir;
  bool kubernetes = false;
  std::string kubeconfig;    // default: KUBECONFIG, else in-cluster, else ~/.kube/config
  std::string namespace_;    // Kubernetes mode: "" = all namespaces
  std::string node_name;     // Kubernetes mode: only what spec.nodeSelector gives this node
  // Kubernetes mode: only the holder of a coordination.k8s.io Lease reconciles
  // (controller/leader_election.h); client-go's timings by default.
  bool leader_elect = false;
  std::string leader_elect_namespace;   // "" = the kubeconfig's or the pod's namespace
  std::string leader_elect_lease_name = "modelcache-controller";
  std::string leader_elect_identity;    // "" = <hostname>_<random UUID>
  std::chrono::milliseconds leader_elect_lease_duration{15'000};
  std::chrono::milliseconds leader_elect_renew_deadline{10'000};
  std::chrono::milliseconds leader_elect_retry_period{2'000};
  std::string store = "/var/lib/modelcache";
  std::string state_dir;     // default: <store>/state
  std::string secrets_dir;
  std::string hf_endpoint;   // default: HF_ENDPOINT, else https://huggingface.co
  int workers = 2;
  int max_concurrent_jobs = 4;
  int parallel_files = 4;
  std::chrono::milliseconds resync_period{std::chrono::minutes(10)};
  // First wait between attempts of a failed Hub request; doubles per attempt up to 30 s.
  std::chrono::milliseconds retry_base_delay{1000};
  std::string log_format = "text";
  std::string log_level = "info";
};
int RunDaemon(const RunOptions& options, const Environment& env);

struct PrefetchOptions {
  std::string repo;          // REPO[:REVISION]
  std::string type = "model";
  std::string store;         // default: HF_HOME (so that <store>/hub is huggingface_hub's cache)
  std::string hf_endpoint;
  std::string name;          // artifact name; default from the repo
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  int64_t tp = 0;            // > 0: shard
  std::string engine = "vllm";
  std::string dtype = "auto";
  std::string max_file_size = "5GiB";
  bool force = false;
  int parallel_files = 4;
  bool progress = true;      // a progress bar when stderr is a terminal
};
int Prefetch(const PrefetchOptions& options, const Environment& env);

struct GetOptions {
  std::string name;
  std::string namespace_ = "default";
  bool all_namespaces = false;
  std::string output;        // "" | wide | json | yaml
  std::string state_dir = "/var/lib/modelcache/state";
};
int Get(const GetOptions& options);

int Validate(const std::vector<std::string>& files);

struct ShardCommandOptions {
  std::string src_dir;
  std::string out_dir;
  int64_t tp = 1;
  std::string engine = "vllm";
  std::string dtype = "auto";
  std::string max_file_size = "5GiB";
  int threads = 2;
};
int Shard(const ShardCommandOptions& options);

}  // namespace modelcache::controller
