// `modelcache shard`: shards a local checkpoint for tensor parallelism, with a progress bar.

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>

#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "cli/progress_bar.h"
#include "common/files.h"
#include "common/units.h"
#include "shard/sharder.h"

namespace modelcache::controller {

int Shard(const ShardCommandOptions& options) {
  namespace fs = std::filesystem;
  auto max_size = ParseByteSize(options.max_file_size);
  if (!max_size) {
    std::cerr << "modelcache shard: --max-file-size: " << max_size.error().message << "\n";
    return 2;
  }
  std::error_code ec;
  if (fs::exists(options.out_dir, ec) && !fs::is_empty(options.out_dir, ec)) {
    std::cerr << "modelcache shard: " << options.out_dir << " exists and is not empty\n";
    return 2;
  }
  // Write next to the destination and rename at the end: a half-written output is never
  // visible under OUT_DIR.
  fs::path out(options.out_dir);
  std::string partial = (out.has_filename() ? out : out.parent_path()).string() + ".partial-" +
                        UniqueSuffix();
  shard::ShardOptions so;
  so.src_dir = options.src_dir;
  so.out_dir = partial;
  so.tensor_parallel_size = options.tp;
  so.engine = options.engine;
  so.engine_release = options.engine_release;
  so.dtype = options.dtype;
  so.max_file_size = *max_size;
  so.threads = options.threads;
  shard::ShardProgress progress;
  Result<shard::ShardResult> result = Error(Reason::Internal, "not run");
  std::atomic<bool> done{false};
  std::jthread worker([&] {
    result = shard::ShardCheckpoint(so, progress, {});
    done = true;
  });
  ProgressBar bar(::isatty(STDERR_FILENO) != 0);
  while (!done) {
    bar.Update("Sharding", progress.bytes_done, progress.bytes_total, 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  worker.join();
  bar.Clear();
  if (!result) {
    fs::remove_all(partial, ec);
    std::cerr << "modelcache shard: " << result.error().ToString() << "\n";
    return 1;
  }
  fs::remove(options.out_dir, ec);  // an empty directory the user made
  fs::rename(partial, options.out_dir, ec);
  if (ec) {
    std::cerr << "modelcache shard: cannot rename " << partial << " to " << options.out_dir
              << ": " << ec.message() << "\n";
    return 1;
  }
  std::cerr << "wrote " << result->files.size() << " files to " << options.out_dir << "\n";
  for (const auto& f : result->files) {
    std::cout << f << "\n";
  }
  return 0;
}

Command AddShardCommand(CLI::App& app) {
  auto shard = std::make_shared<ShardCommandOptions>();
  CLI::App* cmd = app.add_subcommand(
      "shard", "Shard a local checkpoint for tensor parallelism (vLLM/SGLang sharded_state)");
  cmd->add_option("src", shard->src_dir, "HuggingFace checkpoint directory")->required();
  cmd->add_option("out", shard->out_dir, "Output directory (must not exist or be empty)")
      ->required();
  cmd->add_option("--tp", shard->tp, "Tensor-parallel size")->required();
  cmd->add_option("--engine", shard->engine, "vllm or sglang")
      ->capture_default_str()
      ->check(CLI::IsMember({"vllm", "sglang"}));
  cmd->add_option("--engine-release", shard->engine_release,
                  "Engine release to lay the files out for (default: the pinned one)");
  cmd->add_option("--dtype", shard->dtype, "auto, float16, bfloat16 or float32")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "float16", "bfloat16", "float32"}));
  cmd->add_option("--max-file-size", shard->max_file_size, "Largest part file")
      ->capture_default_str();
  cmd->add_option("--threads", shard->threads, "Threads")->capture_default_str();
  return {cmd, [shard] { return Shard(*shard); }};
}

}  // namespace modelcache::controller
