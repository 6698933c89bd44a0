#pragma once

// What the integration tests share: temporary directories, synthetic repos, the modelcache
// binary as a child process, and polling of status files.

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "crds/model_cache.h"

namespace modelcache::itest {

// A fresh directory under the test temp dir, removed when it goes out of scope.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& rel) const { return path_ + "/" + rel; }

 private:
  std::string path_;
};

// Deterministic pseudo-random bytes.
std::string RandomBytes(size_t size, uint64_t seed);

// Writes `files` (path in repo -> content) under `dir`.
void WriteTree(const std::string& dir, const std::map<std::string, std::string>& files);

// A small model repo: config.json, tokenizer.json, README.md, model.safetensors (LFS),
// and original/consolidated.pth (LFS, for exclude tests). `weights_size` bytes of weights.
std::map<std::string, std::string> SmallModelFiles(size_t weights_size, uint64_t seed);

// Runs a command to completion, capturing stdout and stderr.
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
CommandResult RunModelcache(const std::vector<std::string>& args,
                            const std::map<std::string, std::string>& env = {});

// The daemon as a child process: `modelcache run --watch-dir …`, stderr to a log file.
class Daemon {
 public:
  struct Options {
    std::string watch_dir;
    std::string store;
    std::string state_dir;
    std::string hf_endpoint;
    std::string secrets_dir;
    std::vector<std::string> extra_args;
    std::map<std::string, std::string> env;
  };
  explicit Daemon(Options options);
  ~Daemon();  // SIGKILL if still running
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  void Start();
  // SIGTERM, then wait up to `timeout`; returns the exit status (-1 on timeout, then SIGKILL).
  int Terminate(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  void Kill9();
  bool Running();
  std::string Log() const;
  const Options& options() const { return options_; }

 private:
  Options options_;
  std::string log_path_;
  pid_t pid_ = -1;
};

// The status file the daemon writes for namespace/name, if any.
std::optional<crds::ModelCache> ReadStatus(const std::string& state_dir, const std::string& ns,
                                           const std::string& name);

// Polls `condition` every 20 ms until it holds or `timeout` passes.
bool WaitFor(const std::function<bool()>& condition,
             std::chrono::milliseconds timeout = std::chrono::seconds(30));

// Waits until the status of default/<name> satisfies `pred`; returns the last status read.
std::optional<crds::ModelCache> WaitForStatus(
    const std::string& state_dir, const std::string& name,
    const std::function<bool(const crds::ModelCache&)>& pred,
    std::chrono::milliseconds timeout = std::chrono::seconds(30));

// Ready condition's reason ("" if none).
std::string ReadyReason(const crds::ModelCache& mc);

// A minimal ModelCache manifest.
std::string Manifest(const std::string& name, const std::string& repo,
                     const std::string& extra_spec = "");

// Writes a file atomically (temp + rename), as editors and git do.
void WriteFileRenamed(const std::string& path, const std::string& content);

}  // namespace modelcache::itest
