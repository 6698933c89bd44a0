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

#include "bench/kube/bench_process.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = modelcache::bench::BenchClock;
using modelcache::bench::CpuSeconds;
using modelcache::bench::Ms;
using modelcache::bench::ReadyForGeneration;
using modelcache::bench::Spawn;
using modelcache::bench::StatusMiB;
using modelcache::bench::Wait;
using modelcache::testing::FakeApiServer;
using modelcache::testing::FakeApiServerOptions;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;

constexpr char kCollection[] = "/apis/modelcache.dev/v1alpha1/namespaces/bench/modelcaches";

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

  FakeHub hub;
  std::string store = work_dir + "/store";
  if (!modelcache::bench::CacheSmallModel(hub, binary, work_dir, store)) {
    return 1;
  }

  FakeApiServerOptions options;
  options.history_limit = static_cast<size_t>(objects) * 8;
  FakeApiServer api(options);
  if (!api.Start()) {
    std::fprintf(stderr, "cannot start the API-server imitation\n");
    return 1;
  }
  if (!modelcache::bench::CreateModelCaches(api, "bench", objects)) {
    return 1;
  }
  std::ofstream(work_dir + "/kubeconfig") << modelcache::bench::PlainKubeconfig(api.url());

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
