// mc-fleet-bench: the fleet (DESIGN.md "Fleets", docs/kubernetes.md "Fleet benchmark") on one
// machine, every part a real process or server on 127.0.0.1:
//
//   - the Hub imitation (in this process) redirecting the large files to nginx, as the real Hub
//     redirects to its CDN; a synthetic checkpoint (tests/fixtures/checkpoint) as the model;
//   - radosgw (tests/fixtures/radosgw/start-radosgw.sh, memstore) as the bucket;
//   - the API-server imitation (in this process), one Node per node daemon;
//   - `modelcache run --kubernetes` processes, each with its own kubeconfig token (so that the
//     imitation counts each one's requests) and its own store directory.
//
// Fan-out, for each N of --nodes and each mode:
//   fleet  one controller (--store s3://…) and N node daemons (--fill-from-controller): the
//          controller fills the bucket from the Hub once, every node pulls the committed
//          version from the bucket;
//   peer   N node daemons with no controller (the DaemonSet-only install, --fleet-writer-elect):
//          every node fetches from the Hub.
// Timed from the creation of one ModelCache (all daemons already running and reporting) until
// its NodesReady is True with ready == desired == N. Counts the Hub's body bytes (nginx's access
// log plus the imitation's own), the bucket's bytes read and written (radosgw's perf counters
// get_b / put_b), and the CPU of the daemons and of radosgw + its OSD. Stores and the bucket's
// objects are deleted between runs.
//
// Control plane (--idle-minutes > 0): one controller and --cp-nodes node daemons, --cp-caches
// ModelCaches of a small model; once all are NodesReady, the requests each daemon sends during
// --idle-minutes of idleness (by verb and resource), and the size of a ModelCacheNode.
//
// Prints Markdown tables.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "bench/kube/bench_process.h"
#include "tests/fixtures/checkpoint/checkpoint_gen.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/fixtures/kube/fake_apiserver.h"
#include "tests/integration/nginx_server.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = modelcache::bench::BenchClock;
using modelcache::bench::CpuSeconds;
using modelcache::bench::Ms;
using modelcache::bench::Spawn;
using modelcache::bench::Wait;
using modelcache::itest::NginxServer;
using modelcache::testing::ApiAnswer;
using modelcache::testing::FakeApiServer;
using modelcache::testing::FakeApiServerOptions;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;

constexpr char kBucket[] = "fleet";
constexpr char kSystemNs[] = "modelcache-system";

// The output of a command (stdout), "" when it cannot run.
std::string Capture(const std::string& command) {
  std::string out;
  FILE* p = popen(command.c_str(), "r");
  if (p == nullptr) {
    return out;
  }
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) {
    out.append(buf, n);
  }
  pclose(p);
  return out;
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  }
  return out + "'";
}

// radosgw as start-radosgw.sh describes it (its KEY=VALUE lines).
struct Rgw {
  std::string endpoint, access_key, secret_key, region, dir;
  bool started_here = false;

  static std::optional<Rgw> Parse(const std::string& text) {
    std::map<std::string, std::string> kv;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);) {
      size_t eq = line.find('=');
      if (eq != std::string::npos && line[0] != '#') {
        kv[line.substr(0, eq)] = line.substr(eq + 1);
      }
    }
    Rgw r{kv["S3_ENDPOINT"], kv["AWS_ACCESS_KEY_ID"], kv["AWS_SECRET_ACCESS_KEY"],
          kv["AWS_REGION"], kv["RADOSGW_DIR"]};
    if (r.endpoint.empty() || r.dir.empty()) {
      return std::nullopt;
    }
    return r;
  }

  std::string Env() const {
    return "AWS_ACCESS_KEY_ID=" + Quote(access_key) + " AWS_SECRET_ACCESS_KEY=" +
           Quote(secret_key) + " S3_ENDPOINT=" + Quote(endpoint) + " ";
  }

  // radosgw's perf counters (the "rgw" section of `perf dump`).
  json Counters() const {
    std::string out =
        Capture("ceph --admin-daemon " + Quote(dir + "/run/client.admin.asok") + " perf dump");
    json j = json::parse(out, nullptr, /*allow_exceptions=*/false);
    return j.is_object() && j.contains("rgw") ? j["rgw"] : json::object();
  }
  uint64_t GetBytes() const { return Counters().value("get_b", uint64_t{0}); }
  uint64_t PutBytes() const { return Counters().value("put_b", uint64_t{0}); }
  uint64_t Gets() const { return Counters().value("get", uint64_t{0}); }

  // CPU seconds of radosgw and the OSD (the bucket's cost on these cores).
  double Cpu() const {
    double sum = 0;
    for (const char* name : {"client.admin.pid", "osd.0.pid"}) {
      std::ifstream in(dir + "/run/" + name);
      pid_t pid = 0;
      if (in >> pid && pid > 0) {
        sum += CpuSeconds(pid);
      }
    }
    return sum;
  }

  // Runs a boto3 snippet (argv[1] = endpoint, argv[2] = bucket, argv[3] = arg).
  bool Python(const std::string& body, const std::string& arg = "") const {
    std::string script =
        "import sys, boto3\nfrom botocore.config import Config\n"
        "s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', "
        "config=Config(s3={'addressing_style': 'path'}))\n" +
        body;
    std::string cmd = Env() + "python3 -c " + Quote(script) + " " + Quote(endpoint) + " " +
                      kBucket + " " + Quote(arg) + " >/dev/null 2>&1; echo $?";
    return Capture(cmd) == "0\n";
  }
  bool CreateBucket() const {
    return Python(
        "try:\n  s3.create_bucket(Bucket=sys.argv[2])\n"
        "except s3.exceptions.BucketAlreadyOwnedByYou:\n  pass\n");
  }
  // Deletes every object under `prefix` and has radosgw free their data now.
  bool DeletePrefix(const std::string& prefix) const {
    bool ok = Python(
        "p = s3.get_paginator('list_objects_v2')\n"
        "for page in p.paginate(Bucket=sys.argv[2], Prefix=sys.argv[3]):\n"
        "  keys = [{'Key': o['Key']} for o in page.get('Contents', [])]\n"
        "  if keys: s3.delete_objects(Bucket=sys.argv[2], Delete={'Objects': keys})\n"
        "for u in s3.list_multipart_uploads(Bucket=sys.argv[2]).get('Uploads', []):\n"
        "  s3.abort_multipart_upload(Bucket=sys.argv[2], Key=u['Key'], UploadId=u['UploadId'])\n",
        prefix);
    Capture("radosgw-admin -c " + Quote(dir + "/ceph.conf") +
            " gc process --include-all >/dev/null 2>&1");
    return ok;
  }
};

// Total size of the regular files under `dir`.
uint64_t TreeBytes(const fs::path& dir) {
  uint64_t sum = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code ec2;
    if (it->is_regular_file(ec2)) {
      sum += it->file_size(ec2);
    }
  }
  return sum;
}

// The regular files under `dir`, relative to it (what can be listed: an unreadable tree lists
// short, and the copies then fail their comparison).
std::vector<std::string> RelativeFiles(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code ec2;
    if (it->is_regular_file(ec2)) {
      out.push_back(it->path().lexically_relative(dir).string());
    }
  }
  return out;
}

json Condition(const json& object, const std::string& type) {
  if (object.contains("status")) {
    for (const json& c : object["status"].value("conditions", json::array())) {
      if (c.value("type", "") == type) {
        return c;
      }
    }
  }
  return json::object();
}

// NodesReady True with ready == desired == n.
bool NodesReady(const json& o, int n) {
  if (!o.contains("status") || !o["status"].contains("nodes")) {
    return false;
  }
  const json& nodes = o["status"]["nodes"];
  return Condition(o, "NodesReady").value("status", "") == "True" &&
         nodes.value("ready", -1) == n && nodes.value("desired", -1) == n;
}

// The median (of an even count, the mean of the middle two).
double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  if (v.empty()) {
    return 0;
  }
  size_t m = v.size() / 2;
  return v.size() % 2 == 1 ? v[m] : (v[m - 1] + v[m]) / 2;
}

std::string Gb(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GB", static_cast<double>(bytes) / 1e9);
  return buf;
}

std::string Secs(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f s", s);
  return buf;
}

struct Bench {
  std::string binary;
  std::string work;
  std::string log_level = "warn";
  FakeHub hub;
  std::unique_ptr<NginxServer> nginx;
  Rgw rgw;
  std::map<std::string, std::vector<std::string>> repo_files;  // repo id -> files
  int run_counter = 0;

  // The Hub's body bytes of `repo` (nginx's, for the redirected files, plus its own).
  uint64_t HubBytes(const std::string& repo) const {
    uint64_t sum = nginx->BodyBytes("/");
    for (const std::string& f : repo_files.at(repo)) {
      sum += hub.BodyBytesServed(f);
    }
    return sum;
  }

  void AddRepo(const std::string& id, const std::string& dir) {
    FakeRepoSpec spec;
    spec.id = id;
    spec.refs["main"] = dir;
    hub.AddRepo(spec);
    repo_files[id] = RelativeFiles(dir);
  }

  std::string Kubeconfig(const std::string& server, const std::string& token,
                         const std::string& dir) const {
    std::string path = dir + "/kubeconfig-" + token;
    std::ofstream(path) << "apiVersion: v1\nkind: Config\n"
                        << "clusters:\n- name: b\n  cluster: {server: \"" << server << "\"}\n"
                        << "users:\n- name: u\n  user: {token: " << token << "}\n"
                        << "contexts:\n- name: b\n  context: {cluster: b, user: u, namespace: "
                        << kSystemNs << "}\ncurrent-context: b\n";
    return path;
  }

  // One fleet: the API-server imitation with Nodes n0…n(N-1) (gpu=l40s), the S3 Secret, a
  // controller (when store_uri is set) and N node daemons. Owns their processes.
  struct Fleet {
    std::unique_ptr<FakeApiServer> api;
    std::string dir;
    std::string store_uri;  // "" = peer mode
    pid_t controller = -1;
    std::vector<pid_t> nodes;
    std::vector<std::string> logs;

    std::vector<pid_t> All() const {
      std::vector<pid_t> out = nodes;
      if (controller > 0) {
        out.push_back(controller);
      }
      return out;
    }
    double Cpu() const {
      double sum = 0;
      for (pid_t p : All()) {
        sum += CpuSeconds(p);
      }
      return sum;
    }
    // Whether every daemon still runs.
    bool Alive() const {
      for (pid_t p : All()) {
        int status = 0;
        if (waitpid(p, &status, WNOHANG) == p) {
          return false;
        }
      }
      return true;
    }
    void Stop() {
      for (pid_t p : All()) {
        kill(p, SIGTERM);
      }
      for (pid_t p : All()) {
        Wait(p);
      }
      controller = -1;
      nodes.clear();
    }
  };

  std::unique_ptr<Fleet> StartFleet(int n, bool with_controller, bool fill_from_controller) {
    auto f = std::make_unique<Fleet>();
    f->dir = work + "/run-" + std::to_string(run_counter++);
    if (std::error_code ec; !fs::create_directories(f->dir, ec) && ec) {
      std::fprintf(stderr, "cannot create %s: %s\n", f->dir.c_str(), ec.message().c_str());
      return nullptr;
    }
    FakeApiServerOptions options;
    options.history_limit = 200000;  // as etcd's 5 minutes: no watch of these runs expires
    f->api = std::make_unique<FakeApiServer>(options);
    f->api->AddToken("controller");
    for (int i = 0; i < n; ++i) {
      f->api->AddToken("node-" + std::to_string(i));
    }
    f->api->AddToken("bench");
    if (!f->api->Start()) {
      std::fprintf(stderr, "cannot start the API-server imitation\n");
      return nullptr;
    }
    (void)f->api->CreateSecret(kSystemNs, "modelcache-s3",
                               {{"AWS_ACCESS_KEY_ID", rgw.access_key},
                                {"AWS_SECRET_ACCESS_KEY", rgw.secret_key},
                                {"AWS_REGION", rgw.region.empty() ? "us-east-1" : rgw.region},
                                {"AWS_ENDPOINT_URL", rgw.endpoint}});
    for (int i = 0; i < n; ++i) {
      (void)f->api->CreateNode("n" + std::to_string(i), {{"gpu", "l40s"}});
    }
    std::vector<std::string> common = {"--kubernetes", "--hf-endpoint", hub.url(), "--listen",
                                       "127.0.0.1:0",  "--log-level",   log_level};
    if (with_controller) {
      f->store_uri = std::string("s3://") + kBucket + "/" + fs::path(f->dir).filename().string();
      common.insert(common.end(), {"--s3-secret", "modelcache-s3", "--allowed-stores",
                                   f->store_uri});
      std::vector<std::string> args = {binary, "run", "--kubeconfig",
                                       Kubeconfig(f->api->url(), "controller", f->dir), "--store",
                                       f->store_uri, "--cache-dir", f->dir + "/controller"};
      args.insert(args.end(), common.begin(), common.end());
      f->logs.push_back(f->dir + "/controller.log");
      f->controller = Spawn(args, f->logs.back());
    }
    for (int i = 0; i < n; ++i) {
      std::string name = "n" + std::to_string(i);
      std::vector<std::string> args = {
          binary,   "run",         "--kubeconfig",
          Kubeconfig(f->api->url(), "node-" + std::to_string(i), f->dir),
          "--store", f->dir + "/" + name, "--node-name", name};
      args.insert(args.end(), common.begin(), common.end());
      if (fill_from_controller) {
        args.push_back("--fill-from-controller");
      } else if (!with_controller) {
        args.push_back("--fleet-writer-elect");
      }
      f->logs.push_back(f->dir + "/" + name + ".log");
      f->nodes.push_back(Spawn(args, f->logs.back()));
    }
    // Every node reports (and, without a controller, one holds the writer's Lease) before the
    // clock starts.
    auto deadline = Clock::now() + std::chrono::seconds(120);
    while (Clock::now() < deadline) {
      bool all = true;
      for (int i = 0; i < n && all; ++i) {
        all = f->api->GetModelCacheNode("n" + std::to_string(i)).status == 200;
      }
      if (all && !with_controller) {
        all = f->api
                  ->Call("GET", std::string("/apis/coordination.k8s.io/v1/namespaces/") +
                                    kSystemNs + "/leases/modelcache-fleet-writer")
                  .status == 200;
      }
      if (all) {
        return f;
      }
      if (!f->Alive()) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::fprintf(stderr, "the daemons did not all start reporting\n");
    Cleanup(*f, /*keep_logs=*/true);
    return nullptr;
  }

  // Stops the daemons, deletes their stores and the run's objects in the bucket; with
  // `keep_logs`, the daemons' logs move to <work>/failed-run-K/ first.
  void Cleanup(Fleet& f, bool keep_logs = false) {
    f.Stop();
    if (keep_logs) {
      std::string kept = work + "/failed-" + fs::path(f.dir).filename().string();
      std::error_code ec;
      fs::create_directories(kept, ec);
      for (const std::string& log : f.logs) {
        fs::rename(log, kept + "/" + fs::path(log).filename().string(), ec);
      }
      std::fprintf(stderr, "logs kept in %s%s\n", kept.c_str(),
                   ec ? (" (not all: " + ec.message() + ")").c_str() : "");
    }
    if (!f.store_uri.empty()) {
      rgw.DeletePrefix(fs::path(f.dir).filename().string());
    }
    std::error_code ec;
    fs::remove_all(f.dir, ec);
  }

  static json ModelCache(const std::string& name, const std::string& repo) {
    return {{"apiVersion", "modelcache.dev/v1alpha1"},
            {"kind", "ModelCache"},
            {"metadata", {{"name", name}, {"namespace", "default"}}},
            {"spec",
             {{"source", {{"repo", repo}}},
              {"artifactName", name},
              {"nodeSelector", {{"gpu", "l40s"}}}}}};
  }

  struct FanOut {
    double seconds = 0;
    double fill_seconds = 0;  // the controller's Ready (fleet mode)
    uint64_t hub_bytes = 0, bucket_read = 0, bucket_written = 0, bucket_gets = 0;
    int hub_requests = 0;
    double daemon_cpu = 0, rgw_cpu = 0;
    bool ok = false;
  };

  FanOut RunFanOut(int n, bool fleet, const std::string& model_dir,
                   std::chrono::minutes timeout) {
    FanOut r;
    auto f = StartFleet(n, /*with_controller=*/fleet, /*fill_from_controller=*/fleet);
    if (!f) {
      return r;
    }
    hub.ResetCounters();
    uint64_t nginx_before = nginx->BodyBytes("/");
    uint64_t get_before = rgw.GetBytes(), put_before = rgw.PutBytes(), gets_before = rgw.Gets();
    double rgw_cpu_before = rgw.Cpu();
    Clock::time_point start = Clock::now();
    if (f->api->CreateModelCache(ModelCache("m", "org/fleet")).status != 201) {
      std::fprintf(stderr, "cannot create the ModelCache\n");
      Cleanup(*f);
      return r;
    }
    while (Clock::now() - start < timeout) {
      ApiAnswer a = f->api->GetModelCache("default", "m");
      if (a.status == 200) {
        if (r.fill_seconds == 0 && fleet &&
            Condition(a.body, "Ready").value("status", "") == "True") {
          r.fill_seconds = Ms(Clock::now() - start) / 1000;
        }
        if (NodesReady(a.body, n)) {
          r.seconds = Ms(Clock::now() - start) / 1000;
          r.ok = true;
          break;
        }
      }
      if (!f->Alive()) {
        std::fprintf(stderr, "a daemon exited; logs in %s\n", f->dir.c_str());
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!r.ok) {
      std::fprintf(stderr, "%s N=%d: not NodesReady\n", fleet ? "fleet" : "peer", n);
      Cleanup(*f, /*keep_logs=*/true);
      return r;
    }
    r.daemon_cpu = f->Cpu();
    r.rgw_cpu = rgw.Cpu() - rgw_cpu_before;
    r.hub_bytes = HubBytes("org/fleet") - nginx_before;
    r.hub_requests = hub.Requests("/");
    r.bucket_read = rgw.GetBytes() - get_before;
    r.bucket_written = rgw.PutBytes() - put_before;
    r.bucket_gets = rgw.Gets() - gets_before;
    // Every node holds every file of the model, at its size (the daemon verified the bytes).
    for (int i = 0; i < n; ++i) {
      std::string copy = f->dir + "/n" + std::to_string(i) + "/artifacts/m/current/";
      for (const std::string& file : repo_files.at("org/fleet")) {
        std::error_code ec1, ec2;
        if (fs::file_size(copy + file, ec1) != fs::file_size(model_dir + "/" + file, ec2) ||
            ec1 || ec2) {
          std::fprintf(stderr, "node n%d: %s missing or of another size\n", i, file.c_str());
          r.ok = false;
        }
      }
    }
    Cleanup(*f);
    return r;
  }

  struct ControlPlane {
    bool ok = false;
    double sync_seconds = 0;
    double idle_minutes = 0;
    std::map<std::string, uint64_t> node_requests;        // summed over the nodes
    std::map<std::string, uint64_t> controller_requests;
    uint64_t node_report_bytes = 0;
    uint64_t model_cache_bytes = 0;
    int64_t caches_in_report = 0;
    double controller_cpu_idle = 0, node_cpu_idle = 0;
  };

  ControlPlane RunControlPlane(int n, int caches, double idle_minutes) {
    ControlPlane r;
    auto f = StartFleet(n, /*with_controller=*/true, /*fill_from_controller=*/true);
    if (!f) {
      return r;
    }
    Clock::time_point start = Clock::now();
    for (int i = 0; i < caches; ++i) {
      if (f->api->CreateModelCache(ModelCache("cp-" + std::to_string(i), "org/small")).status !=
          201) {
        std::fprintf(stderr, "cannot create ModelCache cp-%d\n", i);
        Cleanup(*f);
        return r;
      }
    }
    bool synced = false;
    while (Clock::now() - start < std::chrono::minutes(20) && f->Alive()) {
      if (static_cast<int>(f->api->CountModelCaches(
              "default", [n](const json& o) { return NodesReady(o, n); })) == caches) {
        synced = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (!synced) {
      std::fprintf(stderr, "control plane: not all %d NodesReady\n", caches);
      Cleanup(*f, /*keep_logs=*/true);
      return r;
    }
    r.sync_seconds = Ms(Clock::now() - start) / 1000;
    std::fprintf(stderr, "control plane: %d caches NodesReady on %d nodes in %.1f s; idle for "
                 "%.1f min\n", caches, n, r.sync_seconds, idle_minutes);
    // Let the last report writes, label patches and Events go out.
    std::this_thread::sleep_for(std::chrono::seconds(15));
    auto snapshot = [&](const std::string& token) { return f->api->http_requests_by(token); };
    std::vector<std::map<std::string, uint64_t>> before;
    for (int i = 0; i < n; ++i) {
      before.push_back(snapshot("node-" + std::to_string(i)));
    }
    auto controller_before = snapshot("controller");
    double ccpu = CpuSeconds(f->controller);
    double ncpu = 0;
    for (pid_t p : f->nodes) {
      ncpu += CpuSeconds(p);
    }
    Clock::time_point idle_start = Clock::now();
    std::this_thread::sleep_for(std::chrono::milliseconds(
        static_cast<int64_t>(idle_minutes * 60'000)));
    r.idle_minutes = Ms(Clock::now() - idle_start) / 60'000;
    auto diff = [](const std::map<std::string, uint64_t>& now,
                   const std::map<std::string, uint64_t>& then,
                   std::map<std::string, uint64_t>& into) {
      for (const auto& [k, v] : now) {
        auto it = then.find(k);
        uint64_t d = v - (it == then.end() ? 0 : it->second);
        if (d > 0) {
          into[k] += d;
        }
      }
    };
    for (int i = 0; i < n; ++i) {
      diff(snapshot("node-" + std::to_string(i)), before[static_cast<size_t>(i)],
           r.node_requests);
    }
    diff(snapshot("controller"), controller_before, r.controller_requests);
    r.controller_cpu_idle = CpuSeconds(f->controller) - ccpu;
    for (pid_t p : f->nodes) {
      r.node_cpu_idle += CpuSeconds(p);
    }
    r.node_cpu_idle -= ncpu;
    ApiAnswer report = f->api->GetModelCacheNode("n0");
    r.node_report_bytes = report.body.dump().size();
    r.caches_in_report = report.body["status"].value("cachesTotal", int64_t{0});
    r.model_cache_bytes = f->api->GetModelCache("default", "cp-0").body.dump().size();
    r.ok = f->Alive();
    Cleanup(*f);
    return r;
  }
};

std::vector<int> ParseList(const std::string& s) {
  std::vector<int> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    out.push_back(std::stoi(item));
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"modelcache fleet fan-out and control-plane benchmark"};
  Bench b;
  std::string nodes_list = "1,4,16";
  std::string modes = "fleet,peer";
  int layers = 4;
  int hidden = 0;
  int intermediate = 0;
  int runs = 1;
  std::string radosgw_env;
  std::string script = std::string(MC_SOURCE_DIR) + "/tests/fixtures/radosgw/start-radosgw.sh";
  int cp_nodes = 4;
  int cp_caches = 100;
  double idle_minutes = 0;
  int timeout_minutes = 30;
  app.add_option("--modelcache", b.binary, "Path of the modelcache binary")->required();
  app.add_option("--nodes", nodes_list, "Node daemon counts, comma-separated (empty: no fan-out)")
      ->capture_default_str();
  app.add_option("--modes", modes, "fleet (controller + nodes), peer (nodes from the Hub)")
      ->capture_default_str();
  app.add_option("--runs", runs, "Runs of each (N, mode); medians are printed")
      ->capture_default_str();
  app.add_option("--layers", layers,
                 "Decoder layers of the synthetic Llama-2-7B-shaped model (4: 2.1 GB)")
      ->capture_default_str();
  app.add_option("--hidden", hidden, "Override the hidden size (smaller models for a short run)");
  app.add_option("--intermediate", intermediate, "Override the MLP intermediate size");
  app.add_option("--radosgw-env", radosgw_env,
                 "Use a running radosgw (start-radosgw.sh's output) instead of starting one");
  app.add_option("--idle-minutes", idle_minutes,
                 "Control plane: idle time measured (0: skip the control-plane part)")
      ->capture_default_str();
  app.add_option("--cp-nodes", cp_nodes, "Control plane: node daemons")->capture_default_str();
  app.add_option("--cp-caches", cp_caches, "Control plane: ModelCaches")->capture_default_str();
  app.add_option("--timeout-minutes", timeout_minutes, "Per fan-out run")->capture_default_str();
  app.add_option("--work-dir", b.work, "Scratch directory (default: a new one under /tmp)");
  app.add_option("--log-level", b.log_level, "The daemons' --log-level")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  std::vector<int> ns = nodes_list.empty() ? std::vector<int>{} : ParseList(nodes_list);
  bool keep = !b.work.empty();
  std::error_code ec;
  if (b.work.empty()) {
    fs::path tmp = fs::temp_directory_path(ec);
    b.work = (ec ? fs::path("/tmp") : tmp) / ("mc-fleet-bench-" + std::to_string(getpid()));
  }
  fs::create_directories(b.work, ec);
  fs::path absolute = ec ? fs::path() : fs::absolute(b.work, ec);
  if (ec) {
    std::fprintf(stderr, "mc-fleet-bench: --work-dir %s: %s\n", b.work.c_str(),
                 ec.message().c_str());
    return 2;
  }
  b.work = absolute.string();

  // The model: a Llama-2-7B-shaped checkpoint with `layers` layers, in 2 files.
  std::string src = b.work + "/src";
  std::string model_dir = src + "/org/fleet/main";
  uint64_t model_bytes = 0;
  if (!ns.empty()) {
    modelcache::fixtures::CheckpointSpec spec;
    spec.arch = "llama";
    spec.size = "full";
    spec.layers = layers;
    if (hidden > 0) {
      spec.hidden = hidden;
    }
    if (intermediate > 0) {
      spec.intermediate = intermediate;
    }
    spec.files = 2;
    if (auto made = modelcache::fixtures::MakeCheckpoint(model_dir, spec); !made) {
      std::fprintf(stderr, "checkpoint: %s\n", made.error().message.c_str());
      return 1;
    }
    model_bytes = TreeBytes(model_dir);
  }
  // The control plane's small model (config, tokenizer, 1 MiB of weights).
  std::string small_dir = src + "/org/small/main";
  fs::create_directories(small_dir);
  std::ofstream(small_dir + "/config.json") << R"({"architectures":["LlamaForCausalLM"]})";
  std::ofstream(small_dir + "/tokenizer.json") << R"({"version":"1.0"})";
  std::ofstream(small_dir + "/model.safetensors") << std::string(1 << 20, 'w');

  b.nginx = std::make_unique<NginxServer>(src, b.work + "/nginx");
  if (!b.nginx->Start()) {
    return 1;
  }
  b.hub.SetKeepAlive(true);
  b.hub.SetExternalCdn(b.nginx->url(), src);
  if (!b.hub.Start()) {
    std::fprintf(stderr, "cannot start the Hub imitation\n");
    return 1;
  }
  if (!ns.empty()) {
    b.AddRepo("org/fleet", model_dir);
  }
  b.AddRepo("org/small", small_dir);

  std::optional<Rgw> rgw;
  if (!radosgw_env.empty()) {
    std::ifstream in(radosgw_env);
    rgw = Rgw::Parse(std::string(std::istreambuf_iterator<char>(in), {}));
  } else {
    // memstore holds the bucket in RAM: one model at a time (objects are deleted between runs),
    // plus what radosgw's garbage collector has not freed yet.
    uint64_t memstore = std::max<uint64_t>(2 * model_bytes + (1ULL << 30), 2ULL << 30);
    std::fprintf(stderr, "starting radosgw (memstore %s)\n", Gb(memstore).c_str());
    rgw = Rgw::Parse(Capture("MEMSTORE_BYTES=" + std::to_string(memstore) + " " + Quote(script) +
                             " " + Quote(b.work + "/rgw") + " 2>" + Quote(b.work + "/rgw.err")));
    if (rgw) {
      rgw->started_here = true;
    }
  }
  if (!rgw) {
    std::fprintf(stderr, "no radosgw (see %s/rgw.err)\n", b.work.c_str());
    return 1;
  }
  b.rgw = *rgw;
  int rc = 0;
  if (!b.rgw.CreateBucket()) {
    std::fprintf(stderr, "cannot create bucket %s\n", kBucket);
    rc = 1;
  }

  std::vector<std::string> mode_list;
  {
    std::stringstream in(modes);
    for (std::string m; std::getline(in, m, ',');) {
      mode_list.push_back(m);
    }
  }
  // (N, mode) -> runs
  std::map<std::pair<int, std::string>, std::vector<Bench::FanOut>> results;
  std::map<std::pair<int, std::string>, int> failed;
  const bool setup_ok = rc == 0;
  for (int run = 0; run < runs && setup_ok; ++run) {
    for (int n : ns) {
      for (const std::string& mode : mode_list) {
        std::fprintf(stderr, "run %d: %s, N=%d …\n", run, mode.c_str(), n);
        Bench::FanOut r = b.RunFanOut(n, mode == "fleet", model_dir,
                                      std::chrono::minutes(timeout_minutes));
        if (!r.ok) {
          // Counted and shown; the other runs go on.
          ++failed[{n, mode}];
          rc = 1;
          continue;
        }
        std::fprintf(stderr,
                     "  NodesReady %.1f s (fill %.1f s), Hub %s in %d requests, bucket read %s "
                     "written %s in %llu GETs, daemons CPU %.1f s, radosgw+OSD CPU %.1f s\n",
                     r.seconds, r.fill_seconds, Gb(r.hub_bytes).c_str(), r.hub_requests,
                     Gb(r.bucket_read).c_str(), Gb(r.bucket_written).c_str(),
                     static_cast<unsigned long long>(r.bucket_gets), r.daemon_cpu, r.rgw_cpu);
        results[{n, mode}].push_back(r);
      }
    }
  }

  if (!results.empty()) {
    std::printf("Fan-out: one ModelCache of a %s synthetic model (Llama-2-7B shapes, %d layers, "
                "2 safetensors files) on N node daemons; %d run(s) each, median (every run in "
                "brackets)\n\n",
                Gb(model_bytes).c_str(), layers, runs);
    std::printf("| N | mode | time to NodesReady | controller fill (Ready) | Hub bytes sent | "
                "Hub bytes / model | bucket bytes read | bucket bytes written | daemons CPU | "
                "radosgw+OSD CPU |\n");
    std::printf("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int n : ns) {
      for (const std::string& mode : mode_list) {
        auto it = results.find({n, mode});
        if (it == results.end()) {
          continue;
        }
        std::vector<double> secs, fills, cpu, rgw_cpu, hub, read, written;
        std::string every;
        for (const auto& r : it->second) {
          secs.push_back(r.seconds);
          fills.push_back(r.fill_seconds);
          cpu.push_back(r.daemon_cpu);
          rgw_cpu.push_back(r.rgw_cpu);
          hub.push_back(static_cast<double>(r.hub_bytes));
          read.push_back(static_cast<double>(r.bucket_read));
          written.push_back(static_cast<double>(r.bucket_written));
          char buf[32];
          std::snprintf(buf, sizeof buf, "%s%.1f", every.empty() ? "" : ", ", r.seconds);
          every += buf;
        }
        bool fleet = mode == "fleet";
        if (failed.count({n, mode}) != 0) {
          every += "; " + std::to_string(failed[{n, mode}]) + " failed";
        }
        std::printf("| %d | %s | %.1f s (%s) | %s | %s | %.2f | %s | %s | %.1f s | %.1f s |\n", n,
                    fleet ? "fleet: controller + nodes from the bucket"
                          : "peer: nodes from the Hub, no controller",
                    Median(secs), every.c_str(),
                    fleet ? Secs(Median(fills)).c_str() : "—",
                    Gb(static_cast<uint64_t>(Median(hub))).c_str(),
                    Median(hub) / static_cast<double>(model_bytes),
                    Gb(static_cast<uint64_t>(Median(read))).c_str(),
                    Gb(static_cast<uint64_t>(Median(written))).c_str(), Median(cpu),
                    Median(rgw_cpu));
      }
    }
    for (int n : ns) {
      auto f = results.find({n, "fleet"});
      auto p = results.find({n, "peer"});
      if (f != results.end() && p != results.end()) {
        std::vector<double> fs_, ps_;
        for (const auto& r : f->second) {
          fs_.push_back(r.seconds);
        }
        for (const auto& r : p->second) {
          ps_.push_back(r.seconds);
        }
        std::printf("\nN=%d: fleet / peer time %.2f×", n, Median(fs_) / Median(ps_));
      }
    }
    std::printf("\n\n");
  }

  if (idle_minutes > 0 && setup_ok) {
    Bench::ControlPlane cp = b.RunControlPlane(cp_nodes, cp_caches, idle_minutes);
    if (!cp.ok) {
      rc = 1;
    } else {
      double per = cp.idle_minutes * cp_nodes;
      uint64_t total = 0;
      for (const auto& [k, v] : cp.node_requests) {
        total += v;
      }
      uint64_t ctotal = 0;
      for (const auto& [k, v] : cp.controller_requests) {
        ctotal += v;
      }
      std::printf("Control plane: one controller and %d node daemons, %d ModelCaches (all "
                  "NodesReady after %.1f s), then idle for %.1f minutes (default flags: "
                  "heartbeat 1 min, resync 10 min, watch timeout 5 min)\n\n",
                  cp_nodes, cp_caches, cp.sync_seconds, cp.idle_minutes);
      std::printf("| measure | value | target |\n|---|---:|---:|\n");
      std::printf("| API requests per node per minute, idle | **%.2f** | ≤ 2 |\n",
                  static_cast<double>(total) / per);
      for (const auto& [k, v] : cp.node_requests) {
        std::printf("| … %s | %.2f | |\n", k.c_str(), static_cast<double>(v) / per);
      }
      std::printf("| controller API requests per minute, idle | %.2f | |\n",
                  static_cast<double>(ctotal) / cp.idle_minutes);
      for (const auto& [k, v] : cp.controller_requests) {
        std::printf("| … %s | %.2f | |\n", k.c_str(), static_cast<double>(v) / cp.idle_minutes);
      }
      std::printf("| CPU per minute idle: controller / each node | %.3f s / %.3f s | |\n",
                  cp.controller_cpu_idle / cp.idle_minutes, cp.node_cpu_idle / per);
      std::printf("| ModelCacheNode with %lld caches (JSON as served) | %llu bytes | |\n",
                  static_cast<long long>(cp.caches_in_report),
                  static_cast<unsigned long long>(cp.node_report_bytes));
      std::printf("| one ModelCache with its status (JSON as served) | %llu bytes | |\n",
                  static_cast<unsigned long long>(cp.model_cache_bytes));
    }
  }

  if (rgw->started_here) {
    Capture(Quote(script) + " stop " + Quote(b.work + "/rgw") + " >/dev/null 2>&1");
  }
  b.nginx->Stop();
  if (!keep && rc == 0) {
    fs::remove_all(b.work, ec);
  }
  return rc;
}
