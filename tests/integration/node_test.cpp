// The node daemon (issue 7) end to end: the real binary under a fake systemd notify socket, its
// HTTP endpoint (/healthz, /readyz, /metrics), graceful shutdown, the config file and SIGHUP.

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <list>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "common/http_client.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/integration/harness.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;
using modelcache::testing::Fault;
using std::chrono::milliseconds;
using std::chrono::seconds;

// A small model repo whose every file differs from other seeds' (so no blob is shared between
// repos and adopted instead of downloaded).
std::map<std::string, std::string> DistinctModelFiles(size_t weights_size, uint64_t seed) {
  auto files = SmallModelFiles(weights_size, seed);
  files["tokenizer.json"] =
      R"({"version":"1.0","model":{"type":"BPE"},"seed":)" + std::to_string(seed) + "}";
  return files;
}

// systemd's end of sd_notify(3): a unix datagram socket that NOTIFY_SOCKET names. Keeps every
// datagram received, in order.
class NotifySocket {
 public:
  explicit NotifySocket(const std::string& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
    bound_ = path.size() < sizeof(addr.sun_path) &&
             ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~NotifySocket() { ::close(fd_); }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  bool bound() const { return bound_; }
  const std::string& path() const { return path_; }

  // Reads datagrams until one satisfies `match` (or `timeout` passes); returns it, or "".
  // Every datagram read is kept in received().
  std::string WaitFor(const std::function<bool(const std::string&)>& match,
                      milliseconds timeout = seconds(30)) {
    for (const auto& m : received_) {
      if (match(m) && consumed_.insert(&m).second) {
        return m;
      }
    }
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) != 1) {
        continue;
      }
      char buf[4096];
      ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        continue;
      }
      received_.emplace_back(buf, static_cast<size_t>(n));
      if (match(received_.back())) {
        consumed_.insert(&received_.back());
        return received_.back();
      }
    }
    return "";
  }
  std::string WaitForPrefix(const std::string& prefix, milliseconds timeout = seconds(30)) {
    return WaitFor([&](const std::string& m) { return m.rfind(prefix, 0) == 0; }, timeout);
  }
  std::string All() const {
    std::string out;
    for (const auto& m : received_) {
      out += "[" + m + "] ";
    }
    return out;
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool bound_ = false;
  std::list<std::string> received_;        // stable addresses for consumed_
  std::set<const std::string*> consumed_;  // each datagram matches one WaitFor at most
};

struct HttpResult {
  long status = 0;
  std::string body;
};

HttpResult HttpGet(int port, const std::string& path) {
  HttpRequest request;
  request.url = "http://127.0.0.1:" + std::to_string(port) + path;
  request.connect_timeout = seconds(5);
  request.total_timeout = seconds(10);
  auto r = HttpClient::Send(request);
  if (!r) {
    return {};
  }
  return {r->status, r->body};
}

// A parsed /metrics page (Prometheus text format 0.0.4). Samples are keyed by the name and the
// label text as written ("m{a=\"x\"}"). Parsing checks the format on the way: every sample
// belongs to a family declared by "# TYPE" before it, counters end in _total, histogram buckets
// are cumulative and end with le="+Inf" equal to _count.
struct MetricsPage {
  std::map<std::string, std::string> types;
  std::map<std::string, double> samples;
  std::vector<std::string> problems;

  double Get(const std::string& key) const {
    auto it = samples.find(key);
    return it == samples.end() ? -1 : it->second;
  }
  bool Has(const std::string& key) const { return samples.count(key) > 0; }
};

MetricsPage ParseMetrics(const std::string& text) {
  MetricsPage page;
  std::istringstream in(text);
  std::string line;
  std::map<std::string, double> last_bucket;  // histogram series (name + labels without le)
  while (std::getline(in, line)) {
    if (line.empty()) {
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream words(line.substr(7));
      std::string name;
      std::string type;
      words >> name >> type;
      page.types[name] = type;
      if (type == "counter" && name.size() > 6 && name.compare(name.size() - 6, 6, "_total") != 0) {
        page.problems.push_back("counter without _total: " + name);
      }
      continue;
    }
    if (line[0] == '#') {
      continue;
    }
    size_t space = line.rfind(' ');
    if (space == std::string::npos) {
      page.problems.push_back("no value: " + line);
      continue;
    }
    std::string key = line.substr(0, space);
    std::string value_text = line.substr(space + 1);
    double value = value_text == "+Inf" ? HUGE_VAL : std::strtod(value_text.c_str(), nullptr);
    std::string name = key.substr(0, key.find('{'));
    std::string family = name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      size_t n = std::strlen(suffix);
      if (page.types.count(family) == 0 && name.size() > n &&
          name.compare(name.size() - n, n, suffix) == 0) {
        family = name.substr(0, name.size() - n);
      }
    }
    if (page.types.count(family) == 0) {
      page.problems.push_back("sample before its # TYPE: " + line);
    }
    if (family != name && page.types[family] == "histogram" && name == family + "_bucket") {
      // le is the last label: "name{a=\"x\",le=\"0.5\"}" -> series "name{a=\"x\"}".
      size_t le = key.find("le=\"");
      std::string series = key.substr(0, le);
      if (le == std::string::npos) {
        page.problems.push_back("bucket without le: " + line);
      } else {
        auto it = last_bucket.find(series);
        if (it != last_bucket.end() && value < it->second) {
          page.problems.push_back("buckets not cumulative: " + line);
        }
        last_bucket[series] = value;
        if (key.find("le=\"+Inf\"") != std::string::npos) {
          std::string labels = series.size() > family.size() + 8
                                   ? series.substr(family.size() + 8)  // past "name_bucket{"
                                   : "";
          if (!labels.empty() && labels.back() == ',') {
            labels.pop_back();
          }
          page.samples["+Inf:" + family + (labels.empty() ? "" : "{" + labels + "}")] = value;
        }
      }
    }
    page.samples[key] = value;
  }
  for (const auto& [key, value] : page.samples) {
    if (key.rfind("+Inf:", 0) == 0) {
      std::string rest = key.substr(5);
      std::string family = rest.substr(0, rest.find('{'));
      std::string labels = rest.substr(family.size());
      if (page.Get(family + "_count" + labels) != value) {
        page.problems.push_back("+Inf bucket differs from _count: " + rest);
      }
    }
  }
  return page;
}

class NodeTest : public DaemonTest {
 protected:
  // No periodic resync: the metrics tests count reconciles.
  NodeTest() { resync_period_ = "1h"; }
};

TEST_F(NodeTest, NotifySocketSeesReadyStatusWatchdogReloadingAndStopping) {
  NotifySocket notify(tmp_ / "notify");
  ASSERT_TRUE(notify.bound()) << notify.path();
  AddRepo("org/watched", DistinctModelFiles(3 << 20, 41));
  hub_.AddFault(SlowWeights(1 << 20));
  WriteManifest("w.yaml", Manifest("watched", "org/watched"));
  auto options = DaemonOptions();
  // A 200 ms watchdog: pings every 100 ms while the worker loop is healthy.
  options.env = {{"NOTIFY_SOCKET", notify.path()}, {"WATCHDOG_USEC", "200000"}};
  Daemon daemon(options);
  daemon.Start();

  EXPECT_EQ(notify.WaitForPrefix("READY=1"), "READY=1") << daemon.Log() << notify.All();
  // The STATUS= line follows the phases, with the download's percentage.
  std::string downloading = notify.WaitFor([](const std::string& m) {
    return m.rfind("STATUS=1 downloading ", 0) == 0 && m.back() == '%';
  });
  EXPECT_FALSE(downloading.empty()) << daemon.Log() << notify.All();
  EXPECT_EQ(notify.WaitForPrefix("STATUS=1 ready"), "STATUS=1 ready") << notify.All();
  ASSERT_TRUE(WaitReady("watched")) << daemon.Log();
  // Several watchdog pings.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(notify.WaitForPrefix("WATCHDOG=1", seconds(10)), "WATCHDOG=1") << notify.All();
  }

  // SIGHUP: RELOADING=1 with the monotonic timestamp systemd wants, then READY=1 again.
  daemon.Signal(SIGHUP);
  std::string reloading = notify.WaitForPrefix("RELOADING=1");
  EXPECT_NE(reloading.find("\nMONOTONIC_USEC="), std::string::npos) << notify.All();
  EXPECT_EQ(notify.WaitForPrefix("READY=1"), "READY=1") << daemon.Log() << notify.All();

  // SIGTERM: STOPPING=1, exit 0.
  daemon.Signal(SIGTERM);
  EXPECT_EQ(notify.WaitForPrefix("STOPPING=1"), "STOPPING=1") << daemon.Log() << notify.All();
  EXPECT_EQ(daemon.WaitExit(seconds(20)), 0) << daemon.Log();
}

TEST_F(NodeTest, SigtermMidDownloadWritesStatusExitsZeroAndARestartResumes) {
  auto files = DistinctModelFiles(8 << 20, 42);
  AddRepo("org/term", files);
  hub_.AddFault(SlowWeights(2 << 20));
  WriteManifest("t.yaml", Manifest("term", "org/term"));
  auto options = DaemonOptions();
  options.extra_args.insert(options.extra_args.end(), {"--shutdown-timeout", "20s"});
  {
    Daemon daemon(options);
    daemon.Start();
    ASSERT_TRUE(WaitForStatus(state_dir(), "term", [](const auto& m) {
      return m.status.phase == crds::kPhaseDownloading && m.status.progress &&
             m.status.progress->bytes_done > (1u << 20);
    })) << daemon.Log();
    EXPECT_EQ(daemon.Terminate(seconds(25)), 0) << daemon.Log();
  }
  // The status says the work was interrupted and will resume, not that it is still downloading.
  auto stopped = ReadStatus(state_dir(), "default", "term");
  ASSERT_TRUE(stopped);
  EXPECT_EQ(stopped->status.phase, crds::kPhasePending);
  const crds::Condition* ready = crds::FindCondition(stopped->status.conditions, "Ready");
  ASSERT_NE(ready, nullptr);
  EXPECT_NE(ready->message.find("interrupted by shutdown while downloading"), std::string::npos)
      << ready->message;
  uint64_t served_before = hub_.BodyBytesServed("model.safetensors");
  ASSERT_LT(served_before, 8u << 20);

  hub_.ClearFaults();
  Daemon again(options);
  again.Start();
  auto mc = WaitReady("term");
  ASSERT_TRUE(mc && IsReady(*mc)) << again.Log();
  // Resumed: the bytes kept were not fetched again (up to what was in flight at the stop).
  EXPECT_LT(hub_.BodyBytesServed("model.safetensors"), (8u << 20) + (2u << 20));
}

TEST_F(NodeTest, ShutdownThatOutlastsTheTimeoutExitsNonZeroNamingWhatStillRuns) {
  AddRepo("org/stuck", DistinctModelFiles(8 << 20, 43));
  // So slow that the job is certainly still downloading when the bound (1 ms) passes.
  hub_.AddFault(SlowWeights(64 << 10));
  WriteManifest("s.yaml", Manifest("stuck", "org/stuck"));
  auto options = DaemonOptions();
  options.extra_args.insert(options.extra_args.end(), {"--shutdown-timeout", "1ms"});
  Daemon daemon(options);
  daemon.Start();
  ASSERT_TRUE(WaitForStatus(state_dir(), "stuck", [](const auto& m) {
    return m.status.phase == crds::kPhaseDownloading;
  })) << daemon.Log();
  int code = daemon.Terminate(seconds(20));
  EXPECT_EQ(code, 1) << daemon.Log();
  std::string log = daemon.Log();
  EXPECT_NE(log.find("shutdown did not finish within --shutdown-timeout 1ms; still running: "),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("default/stuck"), std::string::npos) << log;
}

TEST_F(NodeTest, MetricsMatchAKnownWorkloadAndProbesAnswer) {
  uint64_t expected_bytes = 0;
  for (int i = 0; i < 3; ++i) {
    auto files = DistinctModelFiles(200000 + 1000 * i, 50 + i);
    expected_bytes += TotalSize(files);
    std::string repo = "org/m" + std::to_string(i);
    AddRepo(repo, files);
    WriteManifest("m" + std::to_string(i) + ".yaml", Manifest("m" + std::to_string(i), repo));
  }
  bool sharded = std::string(MC_MAKE_CHECKPOINT).size() > 0;
  if (sharded) {
    std::string dir = repos_dir() + "/org/tiny/main";
    ASSERT_EQ(std::system((std::string(MC_MAKE_CHECKPOINT) + " " + dir +
                           " --arch qwen3 --size tiny > /dev/null")
                              .c_str()),
              0);
    for (const auto& entry : fs::recursive_directory_iterator(dir)) {
      if (entry.is_regular_file()) {
        expected_bytes += entry.file_size();
      }
    }
    FakeRepoSpec spec;
    spec.id = "org/tiny";
    spec.refs["main"] = dir;
    hub_.AddRepo(spec);
    WriteManifest("tiny.yaml", Manifest("tiny", "org/tiny",
                                        "  accelerator: \"L4:2\"\n  shard:\n    engine: vllm\n"));
  }
  int resources = sharded ? 4 : 3;

  Daemon daemon(DaemonOptions());
  daemon.Start();
  int port = daemon.HttpPort();
  ASSERT_GT(port, 0) << daemon.Log();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(WaitReady("m" + std::to_string(i))) << daemon.Log();
  }
  if (sharded) {
    ASSERT_TRUE(WaitReady("tiny")) << daemon.Log();
  }

  EXPECT_EQ(HttpGet(port, "/healthz").status, 200);
  EXPECT_EQ(HttpGet(port, "/readyz").status, 200);
  EXPECT_EQ(HttpGet(port, "/nothing-here").status, 404);

  // Once the last status is written, the worker still finishes its reconcile; wait until every
  // reconcile counted is also timed, so that the page is consistent.
  MetricsPage m;
  ASSERT_TRUE(WaitFor([&] {
    HttpResult r = HttpGet(port, "/metrics");
    m = ParseMetrics(r.body);
    double total = m.Get("modelcache_reconciles_total{result=\"success\"}") +
                   m.Get("modelcache_reconciles_total{result=\"error\"}") +
                   m.Get("modelcache_reconciles_total{result=\"requeue\"}");
    return r.status == 200 && m.Get("modelcache_artifacts{phase=\"Ready\"}") == resources &&
           m.Get("modelcache_reconcile_duration_seconds_count") == total;
  })) << daemon.Log();
  EXPECT_TRUE(m.problems.empty()) << ::testing::PrintToString(m.problems);

  EXPECT_EQ(m.types["modelcache_reconciles_total"], "counter");
  EXPECT_EQ(m.types["modelcache_workqueue_latency_seconds"], "histogram");
  EXPECT_EQ(m.types["modelcache_store_used_bytes"], "gauge");
  // Every file of every repo, downloaded once and verified.
  EXPECT_EQ(m.Get("modelcache_download_bytes_total"), static_cast<double>(expected_bytes));
  EXPECT_EQ(m.Get("modelcache_verification_failures_total"), 0);
  for (const char* phase : {"Pending", "Resolving", "Downloading", "Sharding", "Failed"}) {
    EXPECT_EQ(m.Get("modelcache_artifacts{phase=\"" + std::string(phase) + "\"}"), 0) << phase;
  }
  EXPECT_EQ(m.Get("modelcache_reconciles_total{result=\"error\"}"), 0);
  // Each resource: a reconcile that started its job (requeue), and one that reported Ready
  // (success, or requeue when a periodic re-verification is due later).
  EXPECT_GE(m.Get("modelcache_reconciles_total{result=\"requeue\"}"), resources);
  EXPECT_GE(m.Get("modelcache_reconciles_total{result=\"success\"}") +
                m.Get("modelcache_reconciles_total{result=\"requeue\"}"),
            2 * resources);
  EXPECT_GE(m.Get("modelcache_workqueue_latency_seconds_count"),
            m.Get("modelcache_reconcile_duration_seconds_count"));
  EXPECT_EQ(m.Get("modelcache_workqueue_depth"), 0);
  EXPECT_EQ(m.Get("modelcache_download_bytes_per_second"), 0);
  // Blobs and their hard-linked artifact files count once.
  EXPECT_GE(m.Get("modelcache_store_used_bytes"), static_cast<double>(expected_bytes));
  EXPECT_LT(m.Get("modelcache_store_used_bytes"), 3.0 * static_cast<double>(expected_bytes));
  EXPECT_GT(m.Get("modelcache_store_free_bytes"), 0);
  EXPECT_EQ(m.Get("modelcache_shard_duration_seconds_count"), sharded ? 1 : 0);
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

TEST_F(NodeTest, VerificationFailuresAreCounted) {
  AddRepo("org/corrupt", {{"model.safetensors", RandomBytes(100000, 60)}});
  Fault f;
  f.kind = Fault::Kind::Corrupt;
  f.path_glob = "model.safetensors";
  f.bytes = 100;
  f.count = -1;
  hub_.AddFault(f);
  WriteManifest("c.yaml", Manifest("corrupt", "org/corrupt"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  int port = daemon.HttpPort();
  ASSERT_GT(port, 0) << daemon.Log();
  ASSERT_TRUE(WaitForStatus(state_dir(), "corrupt", [](const auto& mc) {
    return ReadyReason(mc) == "ChecksumMismatch";
  })) << daemon.Log();
  MetricsPage m = ParseMetrics(HttpGet(port, "/metrics").body);
  EXPECT_GE(m.Get("modelcache_verification_failures_total"), 1);
  EXPECT_GE(m.Get("modelcache_reconciles_total{result=\"error\"}"), 1);
  // Nothing unverified is counted as downloaded.
  EXPECT_EQ(m.Get("modelcache_download_bytes_total"), 0);
}

TEST_F(NodeTest, DriftFoundByThePeriodicVerificationIsAVerificationFailure) {
  auto files = DistinctModelFiles(100000, 61);
  AddRepo("org/drift", files);
  WriteManifest("d.yaml", Manifest("drift", "org/drift"));
  auto options = DaemonOptions();
  options.extra_args.insert(options.extra_args.end(), {"--verify-interval", "300ms"});
  Daemon daemon(options);
  daemon.Start();
  int port = daemon.HttpPort();
  ASSERT_GT(port, 0) << daemon.Log();
  auto mc = WaitReady("drift");
  ASSERT_TRUE(mc) << daemon.Log();
  EXPECT_EQ(
      ParseMetrics(HttpGet(port, "/metrics").body).Get("modelcache_verification_failures_total"),
      0);
  {
    // One byte changed on disk (the artifact file is a hard link of the blob).
    std::fstream io(mc->status.artifact->path + "/model.safetensors",
                    std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(4321);
    io.put(static_cast<char>(files["model.safetensors"][4321] ^ 0x01));
  }
  ASSERT_TRUE(WaitForStatus(state_dir(), "drift", [](const crds::ModelCache& m) {
    const crds::Condition* c = crds::FindCondition(m.status.conditions, "Verified");
    return IsReady(m) && c != nullptr && c->reason == "Healed";
  })) << daemon.Log();
  MetricsPage m = ParseMetrics(HttpGet(port, "/metrics").body);
  EXPECT_GE(m.Get("modelcache_verification_failures_total"), 1);
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

TEST_F(NodeTest, ListenOffServesNothingAndABadListenIsRefused) {
  auto options = DaemonOptions();
  options.extra_args.insert(options.extra_args.end(), {"--listen", "off"});
  Daemon daemon(options);
  daemon.Start();
  ASSERT_TRUE(WaitFor([&] { return daemon.Log().find("initial sync done") != std::string::npos; }))
      << daemon.Log();
  EXPECT_NE(daemon.Log().find("no HTTP endpoint (--listen off)"), std::string::npos);
  EXPECT_EQ(daemon.Log().find("/metrics on"), std::string::npos);
  EXPECT_EQ(daemon.Terminate(), 0);

  auto bad = RunModelcache(
      {"run", "--watch-dir", watch_dir(), "--store", store_dir(), "--listen", "http://0.0.0.0:80"});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("--listen \"http://0.0.0.0:80\""), std::string::npos) << bad.err;
}

TEST_F(NodeTest, ConfigFileSetsOptionsAndCommandLineFlagsWin) {
  AddRepo("org/conf", DistinctModelFiles(100000, 70));
  WriteManifest("c.yaml", Manifest("conf", "org/conf"));
  std::string config = tmp_ / "modelcache.yaml";
  std::ofstream(config) << "# modelcache run options\n"
                        << "hf-endpoint: " << hub_.url() << "\n"
                        << "workers: 3\n"
                        << "log-format: json\n"
                        << "resync-period: 1h\n"
                        << "listen: 127.0.0.1:0\n";
  auto options = DaemonOptions();
  options.hf_endpoint.clear();  // only from the file
  options.extra_args = {"--config", config};
  {
    Daemon daemon(options);
    daemon.Start();
    ASSERT_TRUE(WaitReady("conf")) << daemon.Log();  // the file's hf-endpoint was used
    std::string log = daemon.Log();
    EXPECT_EQ(log.rfind("{\"ts\":", 0), 0u) << log;  // the file's log-format
    EXPECT_NE(log.find("3 workers"), std::string::npos) << log;
    EXPECT_EQ(daemon.Terminate(), 0);
  }
  options.extra_args = {"--config", config, "--workers", "5", "--log-format", "text"};
  Daemon daemon(options);
  daemon.Start();
  ASSERT_TRUE(WaitFor([&] { return daemon.Log().find("workers)") != std::string::npos; }))
      << daemon.Log();
  std::string log = daemon.Log();
  EXPECT_NE(log.find("5 workers"), std::string::npos) << log;
  EXPECT_NE(log.rfind("{\"ts\":", 0), 0u) << log;
  EXPECT_EQ(daemon.Terminate(), 0);
}

TEST_F(NodeTest, BadConfigFilesFailWithTheFileAndTheKey) {
  std::string config = tmp_ / "bad.yaml";
  std::ofstream(config) << "workers: 2\nwokers: 3\n";
  auto r = RunModelcache(
      {"run", "--watch-dir", watch_dir(), "--store", store_dir(), "--config", config});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find(config + ": line 2: unknown key \"wokers\""), std::string::npos) << r.err;

  std::ofstream(config, std::ios::trunc) << "workers: [1, {a: b}]\n";
  r = RunModelcache({"run", "--watch-dir", watch_dir(), "--config", config});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find(config + ": line 1: \"workers\""), std::string::npos) << r.err;

  std::ofstream(config, std::ios::trunc) << "workers: 0\n";
  r = RunModelcache({"run", "--watch-dir", watch_dir(), "--config", config});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--workers"), std::string::npos) << r.err;

  r = RunModelcache({"run", "--watch-dir", watch_dir(), "--config", tmp_ / "missing.yaml"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("missing.yaml"), std::string::npos) << r.err;
}

TEST_F(NodeTest, SighupAppliesLogSettingsAndNamesThoseThatNeedARestart) {
  std::string config = tmp_ / "modelcache.yaml";
  std::ofstream(config) << "log-level: info\nworkers: 2\n";
  auto options = DaemonOptions();
  options.extra_args.insert(options.extra_args.end(), {"--config", config});
  Daemon daemon(options);
  daemon.Start();
  int port = daemon.HttpPort();
  ASSERT_GT(port, 0) << daemon.Log();
  ASSERT_TRUE(WaitFor([&] { return daemon.Log().find("initial sync done") != std::string::npos; }));

  // An invalid file is refused; the daemon keeps running with what it has.
  std::ofstream(config, std::ios::trunc) << "log-level: debug\nbogus: 1\n";
  daemon.Signal(SIGHUP);
  ASSERT_TRUE(WaitFor([&] { return daemon.Log().find("reload failed") != std::string::npos; }))
      << daemon.Log();
  EXPECT_NE(daemon.Log().find("unknown key \"bogus\""), std::string::npos) << daemon.Log();
  EXPECT_EQ(HttpGet(port, "/healthz").status, 200);

  std::ofstream(config, std::ios::trunc) << "log-level: debug\nlog-format: json\nworkers: 4\n";
  daemon.Signal(SIGHUP);
  ASSERT_TRUE(WaitFor([&] { return daemon.Log().find("reload done") != std::string::npos; }))
      << daemon.Log();
  std::string log = daemon.Log();
  EXPECT_NE(log.find("--workers changed but takes effect only when the daemon restarts"),
            std::string::npos)
      << log;
  // The new format and level apply to what follows: the summary is a JSON line, and a manifest
  // scan now logs at debug level.
  EXPECT_NE(log.find("{\"ts\":"), std::string::npos) << log;
  EXPECT_NE(log.find(R"("msg":"reload done: 2 settings applied")"), std::string::npos) << log;
  WriteManifest("new.yaml", Manifest("new", "org/none"));
  EXPECT_TRUE(WaitFor([&] {
    return daemon.Log().find(R"("level":"debug","msg":"scanned )") != std::string::npos;
  })) << daemon.Log();
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

// The source tree, from the CMake cache of the build that holds the binary.
std::string SourceDir() {
  fs::path build = fs::path(MC_BINARY).parent_path().parent_path();
  std::ifstream cache(build / "CMakeCache.txt");
  std::string line;
  const std::string key = "CMAKE_HOME_DIRECTORY:INTERNAL=";
  while (std::getline(cache, line)) {
    if (line.rfind(key, 0) == 0) {
      return line.substr(key.size());
    }
  }
  return "";
}

TEST_F(NodeTest, TheShippedConfigFileIsAccepted) {
  std::string config = SourceDir() + "/manifests/systemd/config.yaml";
  ASSERT_TRUE(fs::exists(config)) << config;
  auto options = DaemonOptions();
  options.extra_args = {"--config", config};  // the harness's --listen 127.0.0.1:0 wins
  Daemon daemon(options);
  daemon.Start();
  // Every key must still be an option of `modelcache run`: a renamed flag fails the start.
  ASSERT_TRUE(WaitFor([&] {
    return daemon.Log().find("initial sync done") != std::string::npos || !daemon.Running();
  }));
  ASSERT_TRUE(daemon.Running()) << daemon.Log();
  EXPECT_EQ(daemon.Log().rfind("{\"ts\":", 0), 0u) << daemon.Log();  // its log-format: json
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
}

TEST_F(NodeTest, RunHelpDocumentsEveryOptionWithItsDefault) {
  auto r = RunModelcache({"run", "--help"});
  ASSERT_EQ(r.exit_code, 0);
  // CLI11 prints "  --name TYPE=default" then the description (on the same or the next lines).
  std::vector<std::string> entries;
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("  -", 0) == 0) {
      entries.push_back(line);
    } else if (!entries.empty() && line.rfind("    ", 0) == 0) {
      entries.back() += " " + line;
    }
  }
  ASSERT_GT(entries.size(), 10u) << r.out;
  for (const auto& entry : entries) {
    if (entry.find("--help") != std::string::npos) {
      continue;
    }
    std::string first = entry.substr(0, entry.find("  ", 2));
    bool has_default = first.find('=') != std::string::npos ||
                       entry.find("default") != std::string::npos ||
                       entry.find("Default") != std::string::npos;
    EXPECT_TRUE(has_default) << "no default documented: " << entry;
  }
  for (const char* option : {"--listen", "--shutdown-timeout", "--config"}) {
    EXPECT_NE(r.out.find(option), std::string::npos) << option;
  }
}

}  // namespace
}  // namespace modelcache::itest
