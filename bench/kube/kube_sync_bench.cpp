// mc-kube-sync-bench: the initial sync of many new ModelCaches of a model already in the store,
// against its floor, side by side, on the API-server imitation with a per-request latency
// (FakeApiServerOptions::request_latency) standing in for a real API server's cost of a write:
//
//   - floor: `--clients` plain client threads (libcurl, a kept-alive connection each, no rate
//     limit) that do for each object what the daemon must: a merge patch of
//     metadata.finalizers, a merge patch of .status (Ready) and the creation of an Event;
//   - daemon: `modelcache run --kubernetes --namespace NS` from its start until every object
//     of NS has Ready=True for its generation (counted in the imitation's store every 10 ms).
//
// Each of `--runs` rounds runs both on fresh objects (floor first, then the daemon); the table
// shows the medians and every run. Prints a Markdown table.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench/kube/bench_process.h"
#include "common/http_client.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = modelcache::bench::BenchClock;
using modelcache::HttpClient;
using modelcache::HttpRequest;
using modelcache::bench::CpuSeconds;
using modelcache::bench::Ms;
using modelcache::bench::ReadyForGeneration;
using modelcache::bench::Spawn;
using modelcache::bench::Wait;
using modelcache::testing::ApiServerStats;
using modelcache::testing::FakeApiServer;
using modelcache::testing::FakeApiServerOptions;
using modelcache::testing::FakeHub;

std::string Collection(const std::string& ns) {
  return "/apis/modelcache.dev/v1alpha1/namespaces/" + ns + "/modelcaches";
}

// A status of the size the daemon writes for a Ready object.
json ReadyStatus(int64_t generation) {
  std::string hex(40, 'a');
  std::string digest(64, 'b');
  return {{"observedGeneration", generation},
          {"phase", "Ready"},
          {"resolvedRevision", hex},
          {"artifact",
           {{"name", "model"},
            {"version", digest.substr(0, 12)},
            {"id", "model@sha256:" + digest},
            {"uri", "file:///var/lib/modelcache/artifacts/model/" + digest.substr(0, 12)},
            {"path", "/var/lib/modelcache/artifacts/model/current"},
            {"sizeBytes", 1048700},
            {"files", 3}}},
          {"conditions",
           json::array({{{"type", "Ready"},
                         {"status", "True"},
                         {"reason", "Ready"},
                         {"message", "artifact model@sha256:" + digest + " is ready"},
                         {"lastTransitionTime", "2026-12-07T00:00:00Z"},
                         {"observedGeneration", generation}}})}};
}

// The floor: `clients` threads, client t handling objects t, t + clients, ….
bool RunFloor(const std::string& server, const std::string& ns, int objects, int clients) {
  std::atomic<bool> failed{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      auto send = [&](const std::string& method, const std::string& path, const json& body,
                      const std::string& type) {
        HttpRequest req;
        req.method = method;
        req.url = server + path;
        req.headers = {{"Accept", "application/json"}, {"Content-Type", type}};
        req.body = body.dump();
        auto r = HttpClient::Send(req);
        if (!r || r->status / 100 != 2) {
          failed = true;
        }
      };
      for (int i = t; i < objects && !failed; i += clients) {
        std::string name = "m-" + std::to_string(i);
        std::string object = Collection(ns) + "/" + name;
        send("PATCH", object, {{"metadata", {{"finalizers", {"modelcache.dev/artifact"}}}}},
             "application/merge-patch+json");
        send("PATCH", object + "/status", {{"status", ReadyStatus(1)}},
             "application/merge-patch+json");
        json event = {
            {"apiVersion", "v1"},
            {"kind", "Event"},
            {"metadata", {{"name", name + ".187a0b0c0d0e0f00"}, {"namespace", ns}}},
            {"involvedObject",
             {{"apiVersion", "modelcache.dev/v1alpha1"},
              {"kind", "ModelCache"},
              {"namespace", ns},
              {"name", name}}},
            {"type", "Normal"},
            {"reason", "Ready"},
            {"message", "artifact model@sha256:" + std::string(64, 'b') + " is ready"},
            {"source", {{"component", "modelcache"}}},
            {"reportingComponent", "modelcache"},
            {"firstTimestamp", "2026-12-07T00:00:00Z"},
            {"lastTimestamp", "2026-12-07T00:00:00Z"},
            {"count", 1}};
        send("POST", "/api/v1/namespaces/" + ns + "/events", event, "application/json");
      }
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  return !failed;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

std::string Runs(const std::vector<double>& v) {
  std::string out;
  for (double x : v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", x);
    out += (out.empty() ? "" : ", ") + std::string(buf);
  }
  return out;
}

uint64_t Requests(const ApiServerStats& s) {
  uint64_t n = 0;
  for (const auto& [kind, count] : s.http_requests) {
    n += count;
  }
  return n;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"modelcache initial sync against its floor on the API-server imitation"};
  std::string binary;
  int objects = 1000;
  int clients = 8;
  int runs = 3;
  int latency_ms = 10;
  std::vector<std::string> daemon_args;
  std::string work_dir;
  std::string log_level = "warn";
  app.add_option("--modelcache", binary, "Path of the modelcache binary")->required();
  app.add_option("--objects", objects, "New ModelCache objects per run")->capture_default_str();
  app.add_option("--clients", clients, "Plain client threads of the floor")->capture_default_str();
  app.add_option("--runs", runs, "Rounds (floor, then daemon); medians are printed")
      ->capture_default_str();
  app.add_option("--latency-ms", latency_ms, "The imitation's per-request latency")
      ->capture_default_str();
  app.add_option("--daemon-arg", daemon_args,
                 "An extra argument of `modelcache run` (repeatable), e.g. --daemon-arg=--workers=4");
  app.add_option("--work-dir", work_dir,
                 "Scratch directory, kept afterwards (default: a new one under /tmp, removed)");
  app.add_option("--log-level", log_level, "The daemon's --log-level (its logs: daemon-RUN.log)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  bool keep_work_dir = !work_dir.empty();
  if (work_dir.empty()) {
    work_dir = fs::temp_directory_path() / ("mc-kube-sync-bench-" + std::to_string(getpid()));
  }
  fs::create_directories(work_dir);

  FakeHub hub;
  std::string store = work_dir + "/store";
  if (!modelcache::bench::CacheSmallModel(hub, binary, work_dir, store)) {
    return 1;
  }
  FakeApiServerOptions options;
  options.history_limit = static_cast<size_t>(objects) * 8 * static_cast<size_t>(runs);
  options.request_latency = std::chrono::milliseconds(latency_ms);
  FakeApiServer api(options);
  if (!api.Start()) {
    std::fprintf(stderr, "cannot start the API-server imitation\n");
    return 1;
  }
  std::ofstream(work_dir + "/kubeconfig") << modelcache::bench::PlainKubeconfig(api.url());

  std::vector<double> floor_s, daemon_s, daemon_cpu, floor_rpo, daemon_rpo;
  for (int run = 0; run < runs; ++run) {
    std::string floor_ns = "floor-" + std::to_string(run);
    std::string daemon_ns = "bench-" + std::to_string(run);
    if (!modelcache::bench::CreateModelCaches(api, floor_ns, objects) ||
        !modelcache::bench::CreateModelCaches(api, daemon_ns, objects)) {
      return 1;
    }

    ApiServerStats before = api.stats();
    Clock::time_point start = Clock::now();
    if (!RunFloor(api.url(), floor_ns, objects, clients)) {
      std::fprintf(stderr, "run %d: a request of the floor failed\n", run);
      return 1;
    }
    floor_s.push_back(Ms(Clock::now() - start) / 1000);
    floor_rpo.push_back(static_cast<double>(Requests(api.stats()) - Requests(before)) / objects);

    before = api.stats();
    std::vector<std::string> args = {binary,          "run",       "--kubernetes",
                                     "--kubeconfig",  work_dir + "/kubeconfig",
                                     "--namespace",   daemon_ns,   "--store",
                                     store,           "--hf-endpoint", hub.url(),
                                     "--log-level",   log_level};
    args.insert(args.end(), daemon_args.begin(), daemon_args.end());
    std::string log = work_dir + "/daemon-" + std::to_string(run) + ".log";
    start = Clock::now();
    pid_t daemon = Spawn(args, log);
    bool synced = false;
    while (Clock::now() - start < std::chrono::minutes(10)) {
      if (static_cast<int>(api.CountModelCaches(daemon_ns, ReadyForGeneration)) == objects) {
        synced = true;
        break;
      }
      int status = 0;
      if (waitpid(daemon, &status, WNOHANG) == daemon) {
        std::fprintf(stderr, "the daemon exited (wait status %d): see %s\n", status,
                     log.c_str());
        return 1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!synced) {
      std::fprintf(stderr, "run %d: not every object became Ready; see %s\n", run, log.c_str());
      kill(daemon, SIGKILL);
      return 1;
    }
    daemon_s.push_back(Ms(Clock::now() - start) / 1000);
    daemon_cpu.push_back(CpuSeconds(daemon));
    daemon_rpo.push_back(static_cast<double>(Requests(api.stats()) - Requests(before)) / objects);
    kill(daemon, SIGTERM);
    Wait(daemon);
  }

  std::string extra;
  for (const std::string& a : daemon_args) {
    extra += " " + a;
  }
  std::printf("%d new ModelCaches of a cached model, request latency %d ms, %d runs (median; "
              "every run in brackets); daemon flags:%s\n\n",
              objects, latency_ms, runs, extra.empty() ? " (defaults)" : extra.c_str());
  std::printf("| measure | floor: %d plain clients | modelcache run --kubernetes |\n", clients);
  std::printf("|---|---:|---:|\n");
  std::printf("| time until all are done | %.2f s (%s) | %.2f s (%s) |\n", Median(floor_s),
              Runs(floor_s).c_str(), Median(daemon_s), Runs(daemon_s).c_str());
  std::printf("| ratio to the floor | 1 | **%.2f×** |\n", Median(daemon_s) / Median(floor_s));
  std::printf("| API requests per object | %.2f | %.2f |\n", Median(floor_rpo),
              Median(daemon_rpo));
  std::printf("| daemon CPU | | %.2f s |\n", Median(daemon_cpu));
  if (!keep_work_dir) {
    fs::remove_all(work_dir);
  }
  return 0;
}
