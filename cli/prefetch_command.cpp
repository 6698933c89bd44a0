// `modelcache prefetch`: one reconcile of a ModelCache built from flags, run to completion in the
// foreground, like `union cache model-from-hf --wait`.
//
// It calls the reconciler in its own short loop rather than through a Manager: a Manager retries
// a transient error forever (rate-limited) and reports through a StatusStore, while prefetch
// gives up after its third transient error, exits 1 on a permanent one, draws a progress bar
// from each status and prints the artifact id once Ready.

#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <mutex>
#include <thread>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include "cli/commands.h"
#include "cli/flag_types.h"
#include "cli/progress_bar.h"
#include "cli/run_config.h"
#include "common/log.h"
#include "common/units.h"
#include "crds/model_cache.h"
#include "reconcilers/model_cache_reconciler.h"
#include "store/artifact_store.h"

namespace modelcache::controller {
namespace {

std::string DefaultPrefetchStore(const Environment& env) {
  // <store>/hub is huggingface_hub's cache when the store is HF_HOME (its default HF_HUB_CACHE is
  // $HF_HOME/hub), so prefetched models are found by transformers and vLLM without settings.
  if (!env.hf_hub_cache.empty()) {
    std::filesystem::path cache(env.hf_hub_cache);
    if (cache.filename() == "hub") {
      return cache.parent_path().string();
    }
    spdlog::warn("HF_HUB_CACHE={} does not end in /hub; using HF_HOME={} as the store",
                 env.hf_hub_cache, env.hf_home);
  }
  return env.hf_home;
}

}  // namespace

int Prefetch(const PrefetchOptions& options, const Environment& env) {
  if (auto r = SetupLogging(LogFormat::Text, options.log_level); !r) {
    std::cerr << "modelcache: " << r.error().message << "\n";
    return 2;
  }
  crds::ModelCache obj;
  std::string repo = options.repo;
  std::string revision;
  // REPO[:REVISION], or an artifact of a shared store (whose URI has a ':' of its own).
  if (auto colon = repo.find(':'); colon != std::string::npos && !store::IsSharedStoreUri(repo)) {
    revision = repo.substr(colon + 1);
    repo = repo.substr(0, colon);
  }
  obj.spec.source.repo = repo;
  obj.spec.source.type = options.type;
  obj.spec.source.revision = revision;
  obj.spec.source.include = options.include;
  obj.spec.source.exclude = options.exclude;
  obj.spec.artifact_name = options.name;
  obj.spec.storage.uri = options.store.empty() ? DefaultPrefetchStore(env) : options.store;
  obj.spec.force = options.force ? 1 : 0;
  if (options.tp > 0) {
    crds::ShardSpec shard;
    shard.engine = options.engine;
    shard.tensor_parallel_size = options.tp;
    shard.dtype = options.dtype;
    shard.max_file_size = options.max_file_size;
    obj.spec.shard = shard;
  }
  obj.metadata.name = crds::DefaultArtifactName(repo);
  if (!options.name.empty()) {
    obj.metadata.name = options.name;
  }
  obj.metadata.generation = 1;
  crds::ApplyDefaults(obj);
  if (auto errors = crds::Validate(obj); !errors.empty()) {
    for (const auto& e : errors) {
      std::cerr << "modelcache prefetch: " << e.ToString() << "\n";
    }
    return 2;
  }

  std::mutex mu;
  std::condition_variable cv;
  bool woken = false;
  reconcilers::ReconcilerOptions ro =
      CommandReconcilerOptions(options.hf_endpoint, options.s3_endpoint, options.transfer, env);
  ro.default_store = obj.spec.storage.uri;
  if (store::IsSharedStoreUri(obj.spec.storage.uri)) {
    // A sharded artifact's downloads and shards are staged in a local store first (an unsharded
    // one streams from the Hub to the bucket): by default the same one a local prefetch would use.
    ro.local_cache = options.cache_dir.empty() ? DefaultPrefetchStore(env) : options.cache_dir;
  }
  ro.allow_any = true;  // the operator's own command: no allow-list applies
  ro.max_concurrent_jobs = 1;
  ro.progress_interval = std::chrono::milliseconds(200);
  ro.shard_while_downloading = !options.shard_after_download;
  ro.wake = [&](const crds::ObjectKey&) {
    std::lock_guard lock(mu);
    woken = true;
    cv.notify_all();
  };
  reconcilers::ModelCacheReconciler reconciler(ro);

  ProgressBar bar(options.progress && ::isatty(STDERR_FILENO) != 0);
  reconcilers::Request request;
  request.key = obj.key();
  request.object = obj;
  int transient_failures = 0;
  while (true) {
    auto result = reconciler.Reconcile(request, {});
    if (!result) {
      const Error& err = result.error();
      if (IsTransient(err.reason) && err.reason != Reason::Cancelled && ++transient_failures < 3) {
        bar.Clear();
        std::cerr << "modelcache prefetch: " << err.ToString() << " (retrying)\n";
        std::this_thread::sleep_for(err.retry_after.value_or(std::chrono::seconds(2)));
        continue;
      }
      bar.Clear();
      std::cerr << "modelcache prefetch: " << err.ToString() << "\n";
      return 1;
    }
    request.status = result->status;
    request.status.observed_generation = obj.metadata.generation;
    const auto& status = result->status;
    if (status.phase == crds::kPhaseReady && status.artifact) {
      bar.Clear();
      std::cerr << "cached " << obj.spec.source.repo << "@" << status.resolved_revision << " in "
                << (status.artifact->path.empty() ? status.artifact->uri : status.artifact->path)
                << " (" << status.artifact->files << " files, "
                << FormatBytes(status.artifact->size_bytes) << ")\n";
      std::cout << status.artifact->id << "\n";
      return 0;
    }
    bar.Update(status);
    std::unique_lock lock(mu);
    cv.wait_for(lock, result->requeue.after, [&] { return woken; });
    woken = false;
  }
}

Command AddPrefetchCommand(CLI::App& app, const Environment& env) {
  auto prefetch = std::make_shared<PrefetchOptions>();
  auto no_progress = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand(
      "prefetch", "Cache one repo now, in the foreground; prints the artifact id");
  cmd->add_option("repo", prefetch->repo, "REPO[:REVISION], e.g. Qwen/Qwen3-0.6B:main")->required();
  cmd->add_option("--type", prefetch->type, "model or dataset")
      ->capture_default_str()
      ->check(CLI::IsMember({"model", "dataset"}));
  cmd->add_option("--store", prefetch->store,
                  "Store path, file:// URI or s3://BUCKET[/PREFIX] (default: HF_HOME, so "
                  "<store>/hub is the huggingface_hub cache)");
  cmd->add_option("--cache-dir", prefetch->cache_dir,
                  "For an s3:// store: the local store that stages a sharded artifact's "
                  "downloads and shards; unsharded ones stream from the Hub to S3 "
                  "(default: HF_HOME)");
  cmd->add_option("--s3-endpoint", prefetch->s3_endpoint,
                  "S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the "
                  "profile's, else AWS)");
  cmd->add_option("--hf-endpoint", prefetch->hf_endpoint, "Hub endpoint");
  cmd->add_option("--name", prefetch->name, "Artifact name (default: from the repo)");
  cmd->add_option("--include", prefetch->include, "fnmatch patterns of files to fetch");
  cmd->add_option("--exclude", prefetch->exclude, "fnmatch patterns of files to skip");
  cmd->add_option("--tp", prefetch->tp, "Shard for this tensor-parallel size");
  cmd->add_option("--engine", prefetch->engine, "vllm or sglang")->capture_default_str();
  cmd->add_option("--dtype", prefetch->dtype, "auto, float16, bfloat16 or float32")
      ->capture_default_str();
  cmd->add_option("--max-file-size", prefetch->max_file_size, "Largest shard part")
      ->capture_default_str();
  cmd->add_flag("--shard-after-download", prefetch->shard_after_download,
                "Shard once the download is done instead of while it runs");
  cmd->add_flag("--force", prefetch->force, "Re-verify local files and re-fetch bad ones");
  AddTransferFlags(cmd, prefetch->transfer);
  cmd->add_flag("--no-progress", *no_progress, "No progress bar");
  cmd->add_option("--log-level", prefetch->log_level, "trace, debug, info, warn or error")
      ->capture_default_str();
  return {cmd, [prefetch, no_progress, &env] {
            prefetch->progress = !*no_progress;
            return Prefetch(*prefetch, env);
          }};
}

}  // namespace modelcache::controller
