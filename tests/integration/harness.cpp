#include "tests/integration/harness.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/files.h"

extern char** environ;

namespace modelcache::itest {
namespace fs = std::filesystem;

void WriteTree(const std::string& dir, const std::map<std::string, std::string>& files) {
  for (const auto& [path, content] : files) {
    fs::path p = fs::path(dir) / path;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
  }
}

std::vector<std::string> HubCacheBlobs(const std::string& cache_dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& repo : std::filesystem::directory_iterator(cache_dir + "/hub", ec)) {
    for (const auto& blob : std::filesystem::directory_iterator(repo.path() / "blobs", ec)) {
      names.push_back(blob.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::map<std::string, std::string> SmallModelFiles(size_t weights_size, uint64_t seed) {
  return {
      {"config.json", R"({"architectures":["Qwen3ForCausalLM"],"model_type":"qwen3","seed":)" +
                          std::to_string(seed) + "}\n"},
      {"tokenizer.json", R"({"version":"1.0","model":{"type":"BPE"}})"},
      {"README.md", "# synthetic model " + std::to_string(seed) + "\n"},
      {"model.safetensors", RandomBytes(weights_size, seed)},
      {"original/consolidated.pth", RandomBytes(4096, seed + 1)},
  };
}

namespace {

std::vector<char*> MakeEnv(const std::map<std::string, std::string>& extra,
                           std::vector<std::string>& storage) {
  std::map<std::string, std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string kv(*e);
    auto eq = kv.find('=');
    if (eq != std::string::npos) {
      env[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
  }
  // Tests never reach the real Hub, and never pick up a developer's token.
  env.erase("HF_TOKEN");
  env.erase("HF_ENDPOINT");
  // Nor a developer's (or CI's) Kubernetes cluster or node.
  for (const char* k : {"KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                        "NODE_NAME"}) {
    env.erase(k);
  }
  for (const auto& [k, v] : extra) {
    env[k] = v;
  }
  for (const auto& [k, v] : env) {
    storage.push_back(k + "=" + v);
  }
  std::vector<char*> out;
  for (auto& s : storage) {
    out.push_back(s.data());
  }
  out.push_back(nullptr);
  return out;
}

pid_t Spawn(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
            const std::string& out_path, const std::string& err_path) {
  std::vector<std::string> argv_storage = args;
  std::vector<char*> argv;
  for (auto& a : argv_storage) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  std::vector<char*> envp = MakeEnv(env, env_storage);
  pid_t pid = fork();
  if (pid == 0) {
    int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    ::dup2(out, 1);
    ::dup2(err, 2);
    int devnull = ::open("/dev/null", O_RDONLY);
    ::dup2(devnull, 0);
    ::execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

}  // namespace

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

testing::Fault SlowWeights(uint64_t bytes_per_second) {
  testing::Fault f;
  f.kind = testing::Fault::Kind::Slow;
  f.path_glob = "model.safetensors";
  f.bytes_per_second = bytes_per_second;
  f.count = -1;
  return f;
}

CommandResult RunModelcache(const std::vector<std::string>& args,
                            const std::map<std::string, std::string>& env) {
  std::vector<std::string> full{MC_BINARY};
  full.insert(full.end(), args.begin(), args.end());
  return RunProgram(full, env);
}

CommandResult RunProgram(const std::vector<std::string>& full,
                         const std::map<std::string, std::string>& env) {
  std::string base = ::testing::TempDir() + "mc-cmd-" + UniqueSuffix();
  pid_t pid = Spawn(full, env, base + ".out", base + ".err");
  int status = 0;
  waitpid(pid, &status, 0);
  CommandResult r;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.out = Slurp(base + ".out");
  r.err = Slurp(base + ".err");
  fs::remove(base + ".out");
  fs::remove(base + ".err");
  return r;
}

Daemon::Daemon(Options options) : options_(std::move(options)) {
  log_path_ = ::testing::TempDir() + "mc-daemon-" + UniqueSuffix() + ".log";
}

Daemon::~Daemon() {
  if (pid_ > 0) {
    Kill9();
  }
  std::error_code ec;
  fs::remove(log_path_, ec);
}

void Daemon::Start() {
  std::vector<std::string> args{MC_BINARY, "run", "--store", options_.store};
  if (!options_.watch_dir.empty()) {  // empty: the mode comes with extra_args (--kubernetes)
    args.insert(args.end(), {"--watch-dir", options_.watch_dir});
  }
  if (!options_.state_dir.empty()) {
    args.insert(args.end(), {"--state-dir", options_.state_dir});
  }
  if (!options_.hf_endpoint.empty()) {
    args.insert(args.end(), {"--hf-endpoint", options_.hf_endpoint});
  }
  if (!options_.secrets_dir.empty()) {
    args.insert(args.end(), {"--secrets-dir", options_.secrets_dir});
  }
  args.insert(args.end(), options_.extra_args.begin(), options_.extra_args.end());
  if (std::find(options_.extra_args.begin(), options_.extra_args.end(), "--listen") ==
      options_.extra_args.end()) {
    args.insert(args.end(), {"--listen", "127.0.0.1:0"});
  }
  pid_ = Spawn(args, options_.env, "/dev/null", log_path_);
}

bool Daemon::Running() {
  if (pid_ <= 0) {
    return false;
  }
  int status = 0;
  pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    pid_ = -1;
    return false;
  }
  return true;
}

int Daemon::Terminate(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) {
    return -1;
  }
  ::kill(pid_, SIGTERM);
  return WaitExit(timeout);
}

int Daemon::WaitExit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) {
    return -1;
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Kill9();
  return -1;
}

void Daemon::Kill9() {
  if (pid_ <= 0) {
    return;
  }
  ::kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
}

std::string Daemon::Log() const { return Slurp(log_path_); }

void Daemon::Signal(int signal) {
  if (pid_ > 0) {
    ::kill(pid_, signal);
  }
}

int Daemon::HttpPort(std::chrono::milliseconds timeout) const {
  int port = 0;
  WaitFor(
      [&] {
        std::string log = Log();
        size_t at = log.find("/metrics on ");
        if (at == std::string::npos) {
          return false;
        }
        size_t end = log.find_first_of("\n\"", at);
        std::string address = log.substr(at + 12, end == std::string::npos ? end : end - at - 12);
        size_t colon = address.rfind(':');
        port = colon == std::string::npos ? 0 : std::atoi(address.c_str() + colon + 1);
        return port > 0;
      },
      timeout);
  return port;
}

std::optional<crds::ModelCache> ReadStatus(const std::string& state_dir, const std::string& ns,
                                           const std::string& name) {
  std::string path = state_dir + "/status/" + ns + "/" + name + ".json";
  std::ifstream in(path);
  if (!in) {
    return std::nullopt;
  }
  try {
    auto j = nlohmann::json::parse(in);
    auto mc = crds::FromJson(j);
    if (!mc) {
      return std::nullopt;
    }
    return *mc;
  } catch (...) {
    return std::nullopt;
  }
}

std::optional<crds::ModelCache> WaitForStatus(
    const std::string& state_dir, const std::string& name,
    const std::function<bool(const crds::ModelCache&)>& pred, std::chrono::milliseconds timeout) {
  std::optional<crds::ModelCache> last;
  WaitFor(
      [&] {
        last = ReadStatus(state_dir, "default", name);
        return last && pred(*last);
      },
      timeout);
  return last;
}

std::string ReadyReason(const crds::ModelCache& mc) {
  const crds::Condition* c = crds::FindCondition(mc.status.conditions, "Ready");
  return c == nullptr ? "" : c->reason;
}

std::string ReadyMessage(const crds::ModelCache& mc) {
  const crds::Condition* c = crds::FindCondition(mc.status.conditions, "Ready");
  return c == nullptr ? "" : c->message;
}

uint64_t TotalSize(const std::map<std::string, std::string>& files) {
  uint64_t total = 0;
  for (const auto& [path, content] : files) {
    total += content.size();
  }
  return total;
}

std::string Manifest(const std::string& name, const std::string& repo,
                     const std::string& extra_spec) {
  return "apiVersion: modelcache.dev/v1alpha1\n"
         "kind: ModelCache\n"
         "metadata:\n"
         "  name: " + name + "\n"
         "spec:\n"
         "  source:\n"
         "    repo: " + repo + "\n" + extra_spec;
}

void WriteFileRenamed(const std::string& path, const std::string& content) {
  std::string tmp = fs::path(path).parent_path().string() + "/.tmp-" + UniqueSuffix();
  std::ofstream(tmp) << content;
  fs::rename(tmp, path);
}

bool IsReady(const crds::ModelCache& mc) { return mc.status.phase == crds::kPhaseReady; }

void DaemonTest::SetUp() {
  std::filesystem::create_directories(watch_dir());
  std::filesystem::create_directories(repos_dir());
  ASSERT_TRUE(hub_.Start());
}

std::string DaemonTest::AddRepo(const std::string& id,
                                const std::map<std::string, std::string>& files,
                                testing::FakeRepoSpec spec) {
  std::string dir = repos_dir() + "/" + id + "/main";
  WriteTree(dir, files);
  spec.id = id;
  spec.refs["main"] = dir;
  hub_.AddRepo(spec);
  return dir;
}

Daemon::Options DaemonTest::DaemonOptions(const std::vector<std::string>& extra) const {
  Daemon::Options o;
  o.watch_dir = watch_dir();
  o.store = store_dir();
  o.state_dir = state_dir();
  o.hf_endpoint = hub_.url();
  o.extra_args = {"--retry-base-delay", "20ms", "--resync-period", resync_period_};
  o.extra_args.insert(o.extra_args.end(), extra.begin(), extra.end());
  return o;
}

void DaemonTest::WriteManifest(const std::string& file, const std::string& yaml) {
  WriteFileRenamed(watch_dir() + "/" + file, yaml);
}

std::optional<crds::ModelCache> DaemonTest::WaitReady(const std::string& name,
                                                      std::chrono::milliseconds timeout) {
  return WaitForStatus(state_dir(), name, IsReady, timeout);
}

}  // namespace modelcache::itest
