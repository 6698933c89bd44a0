// `modelcache get`, `validate` and `shard`, and the environment main reads once.

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <thread>

#include "common/clock.h"
#include "common/files.h"
#include "common/strings.h"
#include "common/units.h"
#include "controller/commands.h"
#include "controller/progress_bar.h"
#include "controller/status_store.h"
#include "controller/status_table.h"
#include "crds/manifest_check.h"
#include "shard/sharder.h"

extern char** environ;

namespace modelcache::controller {
namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);  // NOLINT(concurrency-mt-unsafe): read once, before threads
  return v == nullptr ? std::string() : std::string(v);
}

std::string TrimmedFile(const std::string& path) {
  auto content = ReadFile(path);
  if (!content) {
    return "";
  }
  return std::string(TrimRight(*content, "\n\r "));
}

}  // namespace

Environment Environment::FromProcess() {
  Environment env;
  env.hf_endpoint = Env("HF_ENDPOINT");
  env.hf_home = Env("HF_HOME");
  if (env.hf_home.empty()) {
    std::string xdg = Env("XDG_CACHE_HOME");
    std::string home = Env("HOME");
    env.hf_home = (xdg.empty() ? home + "/.cache" : xdg) + "/huggingface";
  }
  env.hf_hub_cache = Env("HF_HUB_CACHE");
  for (const char* name : {"KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                           "HOME", "NODE_NAME"}) {
    if (std::string value = Env(name); !value.empty()) {
      env.kube[name] = value;
    }
  }
  for (char** e = environ; *e != nullptr; ++e) {
    std::string_view kv(*e);
    size_t eq = kv.find('=');
    if (eq != std::string_view::npos && (kv.substr(0, 4) == "AWS_" || kv.substr(0, eq) == "HOME")) {
      env.aws[std::string(kv.substr(0, eq))] = std::string(kv.substr(eq + 1));
    }
  }
  // huggingface_hub: HF_TOKEN, else the file HF_TOKEN_PATH (default $HF_HOME/token).
  env.hf_token = Env("HF_TOKEN");
  if (env.hf_token.empty()) {
    std::string token_path = Env("HF_TOKEN_PATH");
    env.hf_token = TrimmedFile(token_path.empty() ? env.hf_home + "/token" : token_path);
  }
  return env;
}

int Get(const GetOptions& options) {
  if (!options.output.empty() && options.output != "wide" && options.output != "json" &&
      options.output != "yaml") {
    std::cerr << "error: unable to match a printer suitable for the output format \""
              << options.output << "\", allowed formats are: json,wide,yaml\n";
    return 2;
  }
  FileStatusStore statuses(options.state_dir);
  auto all = statuses.List();
  if (!all) {
    std::cerr << "error: " << all.error().message << "\n";
    return 1;
  }
  std::vector<crds::ModelCache> selected;
  for (auto& obj : *all) {
    if (!options.all_namespaces && obj.metadata.namespace_ != options.namespace_) {
      continue;
    }
    if (!options.name.empty() && obj.metadata.name != options.name) {
      continue;
    }
    selected.push_back(std::move(obj));
  }
  if (!options.name.empty() && selected.empty()) {
    std::cerr << "Error from server (NotFound): modelcaches.modelcache.dev \"" << options.name
              << "\" not found\n";
    return 1;
  }
  if (options.output == "json" || options.output == "yaml") {
    std::cout << FormatList(selected, options.output == "yaml");
    return 0;
  }
  std::string table =
      FormatTable(selected, options.output == "wide", std::chrono::system_clock::now(),
                  options.all_namespaces ? std::string_view() : options.namespace_);
  (selected.empty() ? std::cerr : std::cout) << table;
  return 0;
}

int Validate(const std::vector<std::string>& files) {
  size_t problems = 0;
  for (const auto& file : files) {
    for (const auto& p : crds::CheckManifestFile(file)) {
      std::cout << p.ToString() << "\n";
      ++problems;
    }
  }
  // Not errors of any one file: the daemon refuses the second claim of a name at run time.
  std::vector<crds::ManifestProblem> warnings = crds::CheckArtifactNames(files);
  for (const auto& w : warnings) {
    std::cout << w.ToString() << "\n";
  }
  if (problems > 0) {
    std::cerr << problems << (problems == 1 ? " problem" : " problems") << " found\n";
    return 1;
  }
  std::cerr << files.size() << (files.size() == 1 ? " file" : " files") << " valid";
  if (!warnings.empty()) {
    std::cerr << ", " << warnings.size() << (warnings.size() == 1 ? " warning" : " warnings");
  }
  std::cerr << "\n";
  return 0;
}

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

}  // namespace modelcache::controller
