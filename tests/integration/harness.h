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

#include <gtest/gtest.h>

#include "crds/model_cache.h"
#include "tests/common/test_util.h"
#include "tests/fixtures/hub/fake_hub.h"

namespace modelcache::itest {

// A fresh directory (mc-it-XXXXXX) under the temp dir, removed when it goes out of scope.
class TempDir : public test_util::TempDir {
 public:
  TempDir() : test_util::TempDir("mc-it") {}
};

using test_util::RandomBytes;

// The whole file at `path` ("" if it cannot be read).
std::string Slurp(const std::string& path);

// Throttles model.safetensors to `bytes_per_second`, so that a test can act while it downloads.
testing::Fault SlowWeights(uint64_t bytes_per_second);

// Writes `files` (path in repo -> content) under `dir`.
void WriteTree(const std::string& dir, const std::map<std::string, std::string>& files);

// A small model repo: config.json, tokenizer.json, README.md, model.safetensors (LFS),
// and original/consolidated.pth (LFS, for exclude tests). `weights_size` bytes of weights.
std::map<std::string, std::string> SmallModelFiles(size_t weights_size, uint64_t seed);

// The bytes of all the files' contents.
uint64_t TotalSize(const std::map<std::string, std::string>& files);

// Names of the files in every <cache>/hub/<repo folder>/blobs directory (blobs and .incomplete
// downloads), sorted: what a job left in the local hub cache.
std::vector<std::string> HubCacheBlobs(const std::string& cache_dir);

// Runs a command to completion, capturing stdout and stderr.
struct CommandResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};
CommandResult RunModelcache(const std::vector<std::string>& args,
                            const std::map<std::string, std::string>& env = {});
// Runs any program (args[0] is its path) to completion, capturing stdout and stderr.
CommandResult RunProgram(const std::vector<std::string>& args,
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

  // Adds `--listen 127.0.0.1:0` unless extra_args has a --listen, so that daemons of tests
  // running at the same time never compete for a port.
  void Start();
  // SIGTERM, then wait up to `timeout`; returns the exit status (-1 on timeout, then SIGKILL).
  int Terminate(std::chrono::milliseconds timeout = std::chrono::seconds(20));
  void Kill9();
  // Waits up to `timeout` for the daemon to exit on its own; returns the exit status (-1 on
  // timeout, then SIGKILL).
  int WaitExit(std::chrono::milliseconds timeout);
  bool Running();
  std::string Log() const;
  const Options& options() const { return options_; }
  pid_t pid() const { return pid_; }
  // Sends `signal` (e.g. SIGHUP) to the daemon, if it runs.
  void Signal(int signal);
  // The port of the daemon's HTTP endpoint, read from its log ("serving ... on HOST:PORT");
  // waits up to `timeout` for the line, 0 if it does not come.
  int HttpPort(std::chrono::milliseconds timeout = std::chrono::seconds(20)) const;

 private:
  Options options_;
  std::string log_path_;
  pid_t pid_ = -1;
};

// The status file the daemon writes for namespace/name, if any.
std::optional<crds::ModelCache> ReadStatus(const std::string& state_dir, const std::string& ns,
                                           const std::string& name);

// test_util::WaitFor with the integration tests' defaults: a daemon process does the work, so
// the bound is 30 s and the poll 20 ms.
inline bool WaitFor(const std::function<bool()>& condition,
                    std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  return test_util::WaitFor(condition, timeout, std::chrono::milliseconds(20));
}

// Waits until the status of default/<name> satisfies `pred`; returns the last status read.
std::optional<crds::ModelCache> WaitForStatus(
    const std::string& state_dir, const std::string& name,
    const std::function<bool(const crds::ModelCache&)>& pred,
    std::chrono::milliseconds timeout = std::chrono::seconds(30));

// Ready condition's reason ("" if none).
std::string ReadyReason(const crds::ModelCache& mc);

// Ready condition's message ("" if none).
std::string ReadyMessage(const crds::ModelCache& mc);

// A minimal ModelCache manifest.
std::string Manifest(const std::string& name, const std::string& repo,
                     const std::string& extra_spec = "");

// Writes a file atomically (temp + rename), as editors and git do.
void WriteFileRenamed(const std::string& path, const std::string& content);

bool IsReady(const crds::ModelCache& mc);

// The common shape of a directory-mode test: a temp dir holding manifests/, store/, state/ and
// repos/, a Hub imitation serving repos added with AddRepo, and the daemon's options for them.
class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override;

  std::string watch_dir() const { return tmp_ / "manifests"; }
  std::string store_dir() const { return tmp_ / "store"; }
  std::string state_dir() const { return tmp_ / "state"; }
  std::string repos_dir() const { return tmp_ / "repos"; }

  // Adds a repo whose `main` holds `files`; returns the directory of that revision.
  std::string AddRepo(const std::string& id, const std::map<std::string, std::string>& files,
                      testing::FakeRepoSpec spec = {});
  // `run` against the imitation, with quick retries, then `extra` flags.
  Daemon::Options DaemonOptions(const std::vector<std::string>& extra = {}) const;
  void WriteManifest(const std::string& file, const std::string& yaml);
  std::optional<crds::ModelCache> WaitReady(
      const std::string& name, std::chrono::milliseconds timeout = std::chrono::seconds(60));

  // --resync-period of DaemonOptions (a test counting reconciles sets a long one).
  std::string resync_period_ = "30s";
  TempDir tmp_;
  testing::FakeHub hub_;
};

}  // namespace modelcache::itest
