#include "daemon/systemd_notifier.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include <gtest/gtest.h>

#include "tests/common/test_util.h"

namespace modelcache::controller {
namespace {

namespace fs = std::filesystem;
using test_util::TempDir;
using test_util::WaitFor;

// The systemd side of the protocol: a unix datagram socket NOTIFY_SOCKET points at.
class FakeNotifySocket {
 public:
  explicit FakeNotifySocket(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof(addr.sun_path) - 1);
    bound_ = ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~FakeNotifySocket() { ::close(fd_); }
  FakeNotifySocket(const FakeNotifySocket&) = delete;
  FakeNotifySocket& operator=(const FakeNotifySocket&) = delete;

  bool bound() const { return bound_; }

  // The next datagram, or nullopt if none arrives within `wait` (0: only what is queued now).
  std::optional<std::string> Receive(int wait_ms = 2000) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, wait_ms) != 1) {
      return std::nullopt;
    }
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    if (n < 0) {
      return std::nullopt;
    }
    return std::string(buf, static_cast<size_t>(n));
  }

  // Discards every queued datagram; returns how many there were.
  int Drain() {
    int n = 0;
    while (Receive(0)) {
      ++n;
    }
    return n;
  }

 private:
  int fd_ = -1;
  bool bound_ = false;
};

class SystemdNotifierTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    socket_path_ = dir_.path() + "/notify";
    sock_.emplace(socket_path_);
    ASSERT_TRUE(sock_->bound());
    ::setenv("NOTIFY_SOCKET", socket_path_.c_str(), 1);
    ::unsetenv("WATCHDOG_USEC");
    ::unsetenv("WATCHDOG_PID");
  }
  void TearDown() override {
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
    ::unsetenv("WATCHDOG_PID");
  }

  TempDir dir_;
  std::string socket_path_;
  std::optional<FakeNotifySocket> sock_;
};

TEST_F(SystemdNotifierTest, SendsEachState) {
  SystemdNotifier n;
  EXPECT_TRUE(SystemdNotifier::Enabled());
  n.Ready();
  EXPECT_EQ(sock_->Receive(), "READY=1");
  n.Status("2 ready,\n1 failed");
  EXPECT_EQ(sock_->Receive(), "STATUS=2 ready, 1 failed");
  n.Watchdog();
  EXPECT_EQ(sock_->Receive(), "WATCHDOG=1");
  n.Reloading();
  auto reloading = sock_->Receive();
  ASSERT_TRUE(reloading);
  // No std::regex: GCC 12 warns (maybe-uninitialized) inside <regex> under the sanitizers.
  const std::string prefix = "RELOADING=1\nMONOTONIC_USEC=";
  ASSERT_EQ(reloading->rfind(prefix, 0), 0u) << *reloading;
  std::string usec = reloading->substr(prefix.size());
  EXPECT_FALSE(usec.empty());
  EXPECT_NE(usec.front(), '0') << *reloading;
  EXPECT_EQ(usec.find_first_not_of("0123456789"), std::string::npos) << *reloading;
  n.Stopping();
  EXPECT_EQ(sock_->Receive(), "STOPPING=1");
  EXPECT_EQ(sock_->Drain(), 0);
}

TEST_F(SystemdNotifierTest, NothingWithoutNotifySocket) {
  ::unsetenv("NOTIFY_SOCKET");
  ::setenv("WATCHDOG_USEC", "20000", 1);
  SystemdNotifier n;
  EXPECT_FALSE(SystemdNotifier::Enabled());
  n.Ready();
  n.Status("x");
  n.Stopping();
  EXPECT_EQ(sock_->Drain(), 0);
}

TEST_F(SystemdNotifierTest, NoWatchdogUnlessAskedForThisProcess) {
  SystemdNotifier n;
  bool called = false;
  EXPECT_EQ(n.StartWatchdog([&] { return called = true; }).count(), 0);
  ::setenv("WATCHDOG_USEC", "20000", 1);
  ::setenv("WATCHDOG_PID", std::to_string(::getpid() + 1).c_str(), 1);
  EXPECT_EQ(n.StartWatchdog([&] { return called = true; }).count(), 0);
  n.StopWatchdog();
  EXPECT_FALSE(called);
  EXPECT_EQ(sock_->Drain(), 0);
}

TEST_F(SystemdNotifierTest, WatchdogPingsOnlyWhileAlive) {
  ::setenv("WATCHDOG_USEC", "20000", 1);
  ::setenv("WATCHDOG_PID", std::to_string(::getpid()).c_str(), 1);
  std::atomic<bool> alive{true};
  std::atomic<int> checks{0};
  SystemdNotifier n;
  auto period = n.StartWatchdog([&] {
    ++checks;
    return alive.load();
  });
  EXPECT_EQ(period.count(), 10000);  // half of WATCHDOG_USEC
  EXPECT_EQ(sock_->Receive(), "WATCHDOG=1");
  EXPECT_EQ(sock_->Receive(), "WATCHDOG=1");

  // The loop is stuck: once the thread has seen that (two checks, so any ping decided before is
  // sent), pings stop. Datagrams to a unix socket are queued at send time, so after three more
  // checks an empty queue means no ping was sent.
  alive = false;
  int seen = checks.load();
  ASSERT_TRUE(WaitFor([&] { return checks.load() >= seen + 2; }));
  sock_->Drain();
  seen = checks.load();
  ASSERT_TRUE(WaitFor([&] { return checks.load() >= seen + 3; }));
  EXPECT_EQ(sock_->Drain(), 0);

  alive = true;
  EXPECT_EQ(sock_->Receive(), "WATCHDOG=1");

  n.StopWatchdog();
  n.StopWatchdog();  // idempotent
  sock_->Drain();
  seen = checks.load();
  n.Stopping();
  EXPECT_EQ(sock_->Receive(), "STOPPING=1");
  EXPECT_EQ(checks.load(), seen);  // the thread is gone
}

crds::ModelCacheStatus WithPhase(std::string phase, uint64_t done = 0, uint64_t total = 0) {
  crds::ModelCacheStatus s;
  s.phase = std::move(phase);
  if (total > 0) {
    s.progress = crds::ProgressStatus{};
    s.progress->bytes_done = done;
    s.progress->bytes_total = total;
  }
  return s;
}

TEST(FormatStatusLineTest, SummaryFollowsStatusChanges) {
  // What the Manager does as one resource moves on and another goes away.
  StatusSummary summary;
  summary.Add(WithPhase("Downloading", 10, 100));
  summary.Add(WithPhase("Ready"));
  EXPECT_EQ(FormatStatusLine(summary), "1 ready, 1 downloading 10%");
  summary.Remove(WithPhase("Downloading", 10, 100));
  summary.Add(WithPhase("Downloading", 60, 100));
  EXPECT_EQ(FormatStatusLine(summary), "1 ready, 1 downloading 60%");
  summary.Remove(WithPhase("Downloading", 60, 100));
  summary.Add(WithPhase("Ready"));
  EXPECT_EQ(FormatStatusLine(summary), "2 ready");
  summary.Remove(WithPhase("Ready"));
  summary.Remove(WithPhase("Ready"));
  EXPECT_EQ(FormatStatusLine(summary), "no ModelCache resources");
}

TEST(FormatStatusLineTest, CountsPhasesInOrder) {
  EXPECT_EQ(FormatStatusLine(std::vector<crds::ModelCacheStatus>{}), "no ModelCache resources");
  EXPECT_EQ(FormatStatusLine({WithPhase("Failed"), WithPhase("Ready"), WithPhase("Ready"),
                              WithPhase("Downloading", 41, 100), WithPhase("Ready")}),
            "3 ready, 1 downloading 41%, 1 failed");
  // Progress is summed over bytes: (10 + 90) / (100 + 300).
  EXPECT_EQ(FormatStatusLine({WithPhase("Downloading", 10, 100), WithPhase("Downloading", 90, 300),
                              WithPhase("Downloading")}),
            "3 downloading 25%");
  EXPECT_EQ(FormatStatusLine({WithPhase("Downloading"), WithPhase(""), WithPhase("Sharding"),
                              WithPhase("Pending"), WithPhase("Bogus")}),
            "2 pending, 1 downloading, 1 sharding, 1 unknown");
}

// The unit file in the source tree, found from this test's own path:
// <build>/tests/unit/daemon/unit_daemon, daemon at <build>/cli/modelcache.
fs::path BuildDir() {
  return fs::read_symlink("/proc/self/exe").parent_path().parent_path().parent_path().parent_path();
}

fs::path SourceDir() {
  // The CMake cache names the source tree.
  std::ifstream cache(BuildDir() / "CMakeCache.txt");
  std::string line;
  const std::string key = "CMAKE_HOME_DIRECTORY:INTERNAL=";
  while (std::getline(cache, line)) {
    if (line.rfind(key, 0) == 0) {
      return line.substr(key.size());
    }
  }
  return {};
}

std::string FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    fs::path p = fs::path(dir) / name;
    if (::access(p.c_str(), X_OK) == 0) {
      return p.string();
    }
  }
  return "";
}

TEST(SystemdUnitTest, VerifyPasses) {
  std::string analyze = FindOnPath("systemd-analyze");
  if (analyze.empty()) {
    // scripts/install-deps.sh installs the systemd package, so a missing tool is a broken set-up.
    const char* allow = std::getenv("MC_ALLOW_MISSING_SYSTEMD_ANALYZE");
    if (allow != nullptr && std::string(allow) == "1") {
      GTEST_SKIP() << "systemd-analyze not found on PATH (MC_ALLOW_MISSING_SYSTEMD_ANALYZE=1)";
    }
    FAIL() << "systemd-analyze not found on PATH: run scripts/install-deps.sh (package systemd), "
              "or set MC_ALLOW_MISSING_SYSTEMD_ANALYZE=1 to skip";
  }
  fs::path unit = SourceDir() / "manifests/systemd/modelcache.service";
  fs::path daemon = BuildDir() / "cli/modelcache";
  ASSERT_TRUE(fs::exists(unit)) << unit;
  ASSERT_TRUE(fs::exists(daemon)) << daemon << " (build the modelcache target)";

  // verify insists that ExecStart's binary exists; point it at the one just built.
  std::ifstream in(unit);
  std::stringstream text;
  text << in.rdbuf();
  std::string content = text.str();
  const std::string installed = "/usr/bin/modelcache";
  size_t at = content.find("ExecStart=" + installed);
  ASSERT_NE(at, std::string::npos) << "ExecStart must run " << installed;
  content.replace(at + 10, installed.size(), daemon.string());

  TempDir dir;
  fs::path copy = fs::path(dir.path()) / "modelcache.service";
  test_util::WriteFile(copy.string(), content);
  fs::path log = fs::path(dir.path()) / "verify.log";
  std::string command =
      "'" + analyze + "' verify '" + copy.string() + "' > '" + log.string() + "' 2>&1";
  int status = std::system(command.c_str());
  std::ifstream out(log);
  std::stringstream output;
  output << out.rdbuf();
  ASSERT_TRUE(WIFEXITED(status)) << output.str();
  EXPECT_EQ(WEXITSTATUS(status), 0) << output.str();
  // verify also prints warnings (unknown keys, bad values) without failing; none are allowed
  // about our unit.
  EXPECT_EQ(output.str().find("modelcache.service:"), std::string::npos) << output.str();
}

}  // namespace
}  // namespace modelcache::controller
