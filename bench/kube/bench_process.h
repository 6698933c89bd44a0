#pragma once

// What the Kubernetes-mode benchmarks share: starting the daemon and reading its CPU time and
// memory from /proc, and the Ready test of an object.

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"

namespace modelcache::bench {

using BenchClock = std::chrono::steady_clock;

inline double Ms(BenchClock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// Starts `args` (args[0] is the binary) with stdout and stderr to `log`, KUBECONFIG unset.
inline pid_t Spawn(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> storage = args;
  std::vector<char*> argv;
  for (auto& a : storage) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    ::unsetenv("KUBECONFIG");
    ::execv(argv[0], argv.data());
    _exit(127);
  }
  return pid;
}

// The exit code of `pid` (128 + signal when killed).
inline int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// utime + stime of `pid`, in seconds.
inline double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t close = text.rfind(')');
  std::istringstream fields(text.substr(close + 2));
  std::string f;
  unsigned long long utime = 0, stime = 0;
  for (int i = 3; fields >> f; ++i) {
    if (i == 14) {
      utime = std::stoull(f);
    } else if (i == 15) {
      stime = std::stoull(f);
      break;
    }
  }
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// A "VmRSS:"-style line of /proc/PID/status, in MiB.
inline double StatusMiB(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) == 0) {
      return std::stod(line.substr(key.size())) / 1024.0;
    }
  }
  return 0;
}

// Ready=True for the object's current generation.
inline bool ReadyForGeneration(const nlohmann::json& o) {
  if (!o.contains("status")) {
    return false;
  }
  int64_t generation = o["metadata"].value("generation", int64_t{0});
  if (o["status"].value("observedGeneration", int64_t{-1}) != generation) {
    return false;
  }
  for (const nlohmann::json& c : o["status"].value("conditions", nlohmann::json::array())) {
    if (c.value("type", "") == "Ready") {
      return c.value("status", "") == "True";
    }
  }
  return false;
}

// A kubeconfig for `server` without credentials.
inline std::string PlainKubeconfig(const std::string& server) {
  return "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster: {server: \"" + server +
         "\"}\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: b\n  context: {cluster: b, "
         "user: u}\ncurrent-context: b\n";
}

// Puts a small model (config, tokenizer, 1 MiB of weights) as org/model on `hub` (started here,
// keep-alive on) and caches it in `store` with `modelcache prefetch`. False (with a line on
// stderr) on failure.
inline bool CacheSmallModel(testing::FakeHub& hub, const std::string& binary,
                            const std::string& work_dir, const std::string& store) {
  std::filesystem::create_directories(work_dir + "/repo");
  std::ofstream(work_dir + "/repo/config.json") << R"({"architectures":["LlamaForCausalLM"]})";
  std::ofstream(work_dir + "/repo/tokenizer.json") << R"({"version":"1.0"})";
  std::ofstream(work_dir + "/repo/model.safetensors") << std::string(1 << 20, 'w');
  hub.SetKeepAlive(true);
  if (!hub.Start()) {
    std::fprintf(stderr, "cannot start the Hub imitation\n");
    return false;
  }
  testing::FakeRepoSpec spec;
  spec.id = "org/model";
  spec.refs["main"] = work_dir + "/repo";
  hub.AddRepo(spec);
  pid_t prefetch = Spawn({binary, "prefetch", "org/model", "--store", store, "--hf-endpoint",
                          hub.url(), "--no-progress"},
                         work_dir + "/prefetch.log");
  if (Wait(prefetch) != 0) {
    std::fprintf(stderr, "prefetch failed: see %s/prefetch.log\n", work_dir.c_str());
    return false;
  }
  return true;
}

// Creates ModelCaches m-0 … m-(n-1) of org/model in namespace `ns` (in-process). False (with a
// line on stderr) on failure.
inline bool CreateModelCaches(testing::FakeApiServer& api, const std::string& ns, int n) {
  for (int i = 0; i < n; ++i) {
    nlohmann::json o = {
        {"apiVersion", "modelcache.dev/v1alpha1"},
        {"kind", "ModelCache"},
        {"metadata", {{"name", "m-" + std::to_string(i)}, {"namespace", ns}}},
        {"spec", {{"source", {{"repo", "org/model"}}}, {"refreshInterval", "1h"}}}};
    if (api.Call("POST", "/apis/modelcache.dev/v1alpha1/namespaces/" + ns + "/modelcaches", o)
            .status != 201) {
      std::fprintf(stderr, "cannot create modelcache %s/m-%d\n", ns.c_str(), i);
      return false;
    }
  }
  return true;
}

}  // namespace modelcache::bench
