// mc-kube-bench: the daemon in Kubernetes mode with many ModelCache objects of one model that is
// already in the store. Measures, against the API-server imitation (in this process) and the Hub
// imitation:
//   - initial sync: from starting `modelcache run --kubernetes` until every object has
//     Ready=True for its generation (counted in the imitation's store every 100 ms, without
//     copying the objects as a list request would);
//   - change-to-status latency: one object at a time gets a spec change (a new generation);
//     the time until its status.observedGeneration equals it (polled in-process every 0.2 ms);
//   - the daemon's CPU time (utime + stime from /proc) and RSS (VmRSS now, VmHWM peak).
// Prints a Markdown table.

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;
using modelcache::testing::FakeApiServer;
using modelcache::testing::FakeApiServerOptions;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;

constexpr char kCollection[] = "/apis/modelcache.dev/v1alpha1/namespaces/bench/modelcaches";

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

pid_t Spawn(const std::vector<std::string>& args, const std::string& log) {
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

int Wait(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

// utime + stime of `pid`, in seconds.
double CpuSeconds(pid_t pid) {
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
double StatusMiB(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) == 0) {
      return std::stod(line.substr(key.size())) / 1024.0;
    }
  }
  return 0;
}

bool ReadyForGeneration(const json& o) {
  if (!o.contains("status")) {
    return false;
  }
  int64_t generation = o["metadata"].value("generation", int64_t{0});
  if (o["status"].value("observedGeneration", int64_t{-1}) != generation) {
    return false;
  }
  for (const json& c : o["status"].value("conditions", json::array())) {
    if (c.value("type", "") == "Ready") {
      return c.value("status", "") == "True";
    }
  }
  return false;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) {
    return 0;
  }
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"modelcache Kubernetes-mode benchmark against the API-server imitation"};
  std::string binary;
  int objects = 5000;
  int changes = 200;
  int workers = 2;
  std::string work_dir;
  app.add_option("--modelcache", binary, "Path of the modelcache binary")->required();
  app.add_option("--objects", objects, "ModelCache objects")->capture_default_str();
  app.add_option("--changes", changes, "Spec changes timed one after another")
      ->capture_default_str();
  app.add_option("--workers", workers, "The daemon's --workers")->capture_default_str();
  std::string log_level = "warn";
  app.add_option("--work-dir", work_dir,
                 "Scratch directory, kept afterwards (default: a new one under /tmp, removed)");
  app.add_option("--log-level", log_level, "The daemon's --log-level (its log: daemon.log)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  bool keep_work_dir = !work_dir.empty();
  if (work_dir.empty()) {
    work_dir = fs::temp_directory_path() / ("mc-kube-bench-" + std::to_string(getpid()));
  }
  fs::create_directories(work_dir + "/repo");

  // A small model (config, tokenizer, 1 MiB of weights) on the Hub imitation, cached first.
  std::ofstream(work_dir + "/repo/config.json") << R"({"architectures":["LlamaForCausalLM"]})";
  std::ofstream(work_dir + "/repo/tokenizer.json") << R"({"version":"1.0"})";
  std::ofstream(work_dir + "/repo/model.safetensors") << std::string(1 << 20, 'w');
  FakeHub hub;
  hub.SetKeepAlive(true);
  if (!hub.Start()) {
    std::fprintf(stderr, "cannot start the Hub imitation\n");
    return 1;
  }
  FakeRepoSpec spec;
  spec.id = "org/model";
  spec.refs["main"] = work_dir + "/repo";
  hub.AddRepo(spec);
  std::string store = work_dir + "/store";
  pid_t prefetch = Spawn({binary, "prefetch", "org/model", "--store", store, "--hf-endpoint",
                          hub.url(), "--no-progress"},
                         work_dir + "/prefetch.log");
  if (Wait(prefetch) != 0) {
    std::fprintf(stderr, "prefetch failed: see %s/prefetch.log\n", work_dir.c_str());
    return 1;
  }

  FakeApiServerOptions options;
  options.history_limit = static_cast<size_t>(objects) * 8;
  FakeApiServer api(options);
  if (!api.Start()) {
    std::fprintf(stderr, "cannot start the API-server imitation\n");
    return 1;
  }
  for (int i = 0; i < objects; ++i) {
    json o = {{"apiVersion", "modelcache.dev/v1alpha1"},
              {"kind", "ModelCache"},
              {"metadata", {{"name", "m-" + std::to_string(i)}, {"namespace", "bench"}}},
              {"spec", {{"source", {{"repo", "org/model"}}}, {"refreshInterval", "1h"}}}};
    if (api.Call("POST", kCollection, o).status != 201) {
      std::fprintf(stderr, "cannot create object %d\n", i);
      return 1;
    }
  }
  std::ofstream(work_dir + "/kubeconfig")
      << "apiVersion: v1\nkind: Config\nclusters:\n- name: b\n  cluster: {server: \""
      << api.url()
      << "\"}\nusers:\n- name: u\n  user: {}\ncontexts:\n- name: b\n  context: {cluster: b, "
         "user: u}\ncurrent-context: b\n";

  // 1. Initial sync.
  modelcache::testing::ApiServerStats before_sync = api.stats();
  double rig_cpu_start = CpuSeconds(getpid());
  auto hub_requests_start = hub.Requests("/api");
  Clock::time_point start = Clock::now();
  pid_t daemon = Spawn({binary, "run", "--kubernetes", "--kubeconfig", work_dir + "/kubeconfig",
                        "--store", store, "--hf-endpoint", hub.url(), "--workers",
                        std::to_string(workers), "--log-level", log_level},
                       work_dir + "/daemon.log");
  Clock::time_point synced{};
  int ready = 0;
  while (Clock::now() - start < std::chrono::minutes(10)) {
    ready = static_cast<int>(api.CountModelCaches("bench", ReadyForGeneration));
    if (ready == objects) {
      synced = Clock::now();
      break;
    }
    if (waitpid(daemon, nullptr, WNOHANG) == daemon) {
      std::fprintf(stderr, "the daemon exited: see %s/daemon.log\n", work_dir.c_str());
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (ready != objects) {
    std::fprintf(stderr, "only %d of %d objects became Ready\n", ready, objects);
    kill(daemon, SIGKILL);
    return 1;
  }
  modelcache::testing::ApiServerStats after_sync = api.stats();
  double rig_cpu = CpuSeconds(getpid()) - rig_cpu_start;
  auto hub_requests = hub.Requests("/api") - hub_requests_start;
  double sync_ms = Ms(synced - start);
  double sync_cpu = CpuSeconds(daemon);
  double sync_rss = StatusMiB(daemon, "VmRSS:");

  // 2. Change-to-status latency, one change at a time, spread over the objects.
  std::vector<double> latencies;
  for (int c = 0; c < changes; ++c) {
    std::string path =
        std::string(kCollection) + "/m-" + std::to_string((c * 7919) % objects);
    json o = api.Call("GET", path).body;
    o["spec"]["refreshInterval"] = o["spec"].value("refreshInterval", "1h") == "1h" ? "2h" : "1h";
    auto put = api.Call("PUT", path, o);
    Clock::time_point changed = Clock::now();
    if (put.status != 200) {
      --c;  // the daemon wrote in between: take a fresh copy
      continue;
    }
    int64_t generation = put.body["metadata"]["generation"];
    for (;;) {
      json now = api.Call("GET", path).body;
      if (now.contains("status") &&
          now["status"].value("observedGeneration", int64_t{-1}) >= generation) {
        latencies.push_back(Ms(Clock::now() - changed));
        break;
      }
      if (Clock::now() - changed > std::chrono::seconds(30)) {
        std::fprintf(stderr, "change %d: no status for generation %lld after 30 s\n", c,
                     static_cast<long long>(generation));
        kill(daemon, SIGKILL);
        return 1;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  double total_cpu = CpuSeconds(daemon);
  double rss = StatusMiB(daemon, "VmRSS:");
  double peak_rss = StatusMiB(daemon, "VmHWM:");
  kill(daemon, SIGTERM);
  int exit_code = Wait(daemon);

  std::printf("| measure | value | target |\n|---|---:|---:|\n");
  std::printf("| objects (one cached model) | %d | |\n", objects);
  std::printf("| daemon workers | %d | |\n", workers);
  std::printf("| initial sync: start → all Ready | %.2f s | < 10 s |\n", sync_ms / 1000);
  std::printf("| CPU during initial sync | %.2f s | |\n", sync_cpu);
  std::printf("| benchmark process CPU during initial sync (API-server and Hub imitations) | "
              "%.2f s | |\n",
              rig_cpu);
  std::printf("| RSS after initial sync | %.1f MiB | |\n", sync_rss);
  std::printf("| spec change → status, p50 (%zu changes) | %.1f ms | < 100 ms |\n",
              latencies.size(), Percentile(latencies, 0.50));
  std::printf("| spec change → status, p99 | %.1f ms | |\n", Percentile(latencies, 0.99));
  std::printf("| spec change → status, max | %.1f ms | |\n", Percentile(latencies, 1.0));
  std::printf("| CPU in all | %.2f s | |\n", total_cpu);
  std::printf("| RSS at the end | %.1f MiB | |\n", rss);
  std::printf("| peak RSS (VmHWM) | %.1f MiB | < 200 MiB |\n", peak_rss);
  std::printf("| daemon exit code after SIGTERM | %d | 0 |\n", exit_code);
  // The daemon's requests during the initial sync (the benchmark's own polling goes through
  // Call(), which http_requests does not count), per object and by verb and resource.
  uint64_t total_requests = 0;
  std::string by_kind;
  for (const auto& [kind, n] : after_sync.http_requests) {
    auto it = before_sync.http_requests.find(kind);
    uint64_t d = n - (it == before_sync.http_requests.end() ? 0 : it->second);
    if (d == 0) {
      continue;
    }
    total_requests += d;
    by_kind += (by_kind.empty() ? "" : ", ") + kind + " " +
               std::to_string(static_cast<double>(d) / objects).substr(0, 4);
  }
  std::printf("| API requests per object during the initial sync | %.2f (%s; %llu conflicts) | |\n",
              static_cast<double>(total_requests) / objects, by_kind.c_str(),
              static_cast<unsigned long long>(after_sync.conflicts - before_sync.conflicts));
  std::printf("| Hub API requests per object during the initial sync | %.2f | |\n",
              static_cast<double>(hub_requests) / objects);
  std::printf("| API-server connections opened during the initial sync | %llu | |\n",
              static_cast<unsigned long long>(after_sync.connections - before_sync.connections));
  if (!keep_work_dir) {
    fs::remove_all(work_dir);
  }
  return 0;
}
