#pragma once

// The modelcache subcommands. Each command's file defines its flags (Add*Command: a CLI11
// subcommand whose flags are bound to the command's options struct, with the flag types of
// cli/flag_types.h) and the function that runs it; main.cpp is the table of commands. A command
// function returns the process exit code and prints its own errors (one clear line each). `run`
// is daemon/options.h's RunDaemon, its flags are in cli/run_command.cpp.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "common/result.h"
#include "daemon/options.h"

namespace CLI {
class App;
}  // namespace CLI

namespace modelcache::controller {

// One subcommand: its parser (a subcommand of main's CLI::App, whose flags are bound to options
// the command owns) and what runs it once the command line has been parsed.
struct Command {
  CLI::App* cli = nullptr;
  std::function<int()> run;
};

// `env` must outlive the commands' run functions. `run` parses `argv` again on SIGHUP.
Command AddRunCommand(CLI::App& app, int argc, char** argv, const Environment& env);
Command AddPrefetchCommand(CLI::App& app, const Environment& env);
Command AddShardCommand(CLI::App& app);
Command AddGetCommand(CLI::App& app);
Command AddPullCommand(CLI::App& app, const Environment& env);
Command AddValidateCommand(CLI::App& app);
Command AddGcCommand(CLI::App& app);

struct PrefetchOptions {
  std::string repo;          // REPO[:REVISION]
  std::string type = "model";
  std::string store;         // default: HF_HOME (so that <store>/hub is huggingface_hub's cache)
  std::string hf_endpoint;
  std::string cache_dir;     // for an s3:// store: the local staging store; default as `store`
  std::string s3_endpoint;
  std::string name;          // artifact name; default from the repo
  std::vector<std::string> include;
  std::vector<std::string> exclude;
  int64_t tp = 0;            // > 0: shard
  std::string engine = "vllm";
  std::string dtype = "auto";
  std::string max_file_size = "5GiB";
  bool shard_after_download = false;  // shard after the download, not while it runs
  bool force = false;
  TransferFlags transfer;
  bool progress = true;      // a progress bar when stderr is a terminal
  std::string log_level = "warn";
};
int Prefetch(const PrefetchOptions& options, const Environment& env);

struct PullOptions {
  std::string uri;           // s3://BUCKET[/PREFIX]/artifacts/NAME[/VERSION]
  std::string dir;
  std::string s3_endpoint;
  TransferFlags transfer;    // the transfer engine's, as for prefetch
};
int Pull(const PullOptions& options, const Environment& env);

struct GetOptions {
  std::string name;
  std::string namespace_ = "default";
  bool all_namespaces = false;
  std::string output;        // "" | wide | json | yaml
  std::string state_dir = "/var/lib/modelcache/state";
};
int Get(const GetOptions& options);

int Validate(const std::vector<std::string>& files);

struct GcCommandOptions {
  std::string store = "/var/lib/modelcache";
  std::string state_dir;  // default: <store>/state
  bool dry_run = false;
  int keep_versions = 2;
  std::string store_max_bytes = "0";  // 0: no limit: remove everything unreferenced
  std::string min_free = "0";
};
int CollectGarbage(const GcCommandOptions& options);

struct ShardCommandOptions {
  std::string src_dir;
  std::string out_dir;
  int64_t tp = 1;
  std::string engine = "vllm";
  std::string engine_release;  // "": the pinned default (shard/engine_layout.h)
  std::string dtype = "auto";
  std::string max_file_size = "5GiB";
  int threads = 2;
};
int Shard(const ShardCommandOptions& options);

}  // namespace modelcache::controller
