// The transfer engine through the real daemon: large files from nginx (the Hub imitation
// redirects LFS files to it, as the real Hub redirects to its CDN), faults from the imitation's own
// CDN, a full disk on a small tmpfs. Bytes are counted on the server side.

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/integration/harness.h"
#include "tests/integration/nginx_server.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;
using modelcache::testing::Fault;
using std::chrono::milliseconds;
using std::chrono::seconds;

// A large file that costs little to make and to read: sparse, with 64 KiB of random bytes every
// 16 MiB (and at the end), so misplaced ranges change its sha256.
void WriteLargeFile(const std::string& path, uint64_t size, uint64_t seed) {
  fs::create_directories(fs::path(path).parent_path());
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  constexpr uint64_t kStep = 16ULL << 20;
  constexpr size_t kBlock = 64 << 10;
  for (uint64_t off = 0; off < size; off += kStep) {
    std::string block = RandomBytes(std::min<uint64_t>(kBlock, size - off), seed + off);
    ASSERT_EQ(::pwrite(fd, block.data(), block.size(), static_cast<off_t>(off)),
              static_cast<ssize_t>(block.size()));
  }
  std::string tail = RandomBytes(std::min<uint64_t>(kBlock, size), seed + 1);
  ASSERT_EQ(::pwrite(fd, tail.data(), tail.size(), static_cast<off_t>(size - tail.size())),
            static_cast<ssize_t>(tail.size()));
  ::close(fd);
}

// Sum of the done bytes in a chunk map ("chunks": [[start, end, done], ...]); 0 if unreadable.
uint64_t MapDone(const std::string& path) {
  auto text = ReadFile(path);
  if (!text) {
    return 0;
  }
  auto doc = nlohmann::json::parse(*text, nullptr, false);
  if (doc.is_discarded() || !doc.contains("chunks")) {
    return 0;
  }
  uint64_t done = 0;
  for (const auto& c : doc["chunks"]) {
    done += c[2].get<uint64_t>();
  }
  return done;
}

std::string Dir(const std::string& path) { return fs::path(path).parent_path().string(); }

double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class TransferTest : public DaemonTest {
 protected:
  void SetUp() override {
    hub_.SetRequestLogger([this](const std::string& line) {
      std::lock_guard lock(log_mu_);
      hub_log_.push_back(line);
    });
    DaemonTest::SetUp();
  }
  // The hub's server threads log into hub_log_, which goes before the base's hub_: they are
  // joined first (ThreadSanitizer saw a late request's line race with the destructor).
  void TearDown() override { hub_.Stop(); }

  // A repo whose main holds a config and model.safetensors (written by `make_weights`).
  std::string AddRepo(const std::string& id, const std::function<void(const std::string&)>& make) {
    std::string dir = repos_dir() + "/" + id + "/main";
    WriteTree(dir, {{"config.json", R"({"model_type":"qwen3"})"}});
    make(dir + "/model.safetensors");
    FakeRepoSpec spec;
    spec.id = id;
    spec.refs["main"] = dir;
    EXPECT_TRUE(hub_.AddRepoChecked(spec));
    return dir;
  }

  std::string BlobDir(const std::string& id) const {
    return store_dir() + "/hub/models--" + id.substr(0, id.find('/')) + "--" +
           id.substr(id.find('/') + 1) + "/blobs";
  }

  // Lines of the Hub imitation's request log ("hub GET /org/x/resolve/<commit>/f 302", "cdn GET
  // /repos/... 206") that contain every needle.
  int HubLogLines(std::initializer_list<std::string> needles) {
    std::lock_guard lock(log_mu_);
    return static_cast<int>(std::count_if(hub_log_.begin(), hub_log_.end(), [&](const auto& l) {
      return std::all_of(needles.begin(), needles.end(),
                         [&](const std::string& n) { return l.find(n) != std::string::npos; });
    }));
  }

  std::mutex log_mu_;
  std::vector<std::string> hub_log_;
};

TEST_F(TransferTest, KillNineDuringALargeDownloadResumesExactlyTheMissingRanges) {
  if (!NginxServer::Available()) {
    GTEST_SKIP() << "nginx is not installed (scripts/install-deps.sh installs nginx-light)";
  }
  constexpr uint64_t kSize = 1ULL << 30;
  AddRepo("org/large", [](const std::string& p) { WriteLargeFile(p, kSize, 31); });
  std::string sha = hub_.EtagOf("model", "org/large", "main", "model.safetensors");
  std::string map = BlobDir("org/large") + "/" + sha + ".incomplete.chunks";
  // 40 MB/s per connection keeps the first run long enough to be interrupted.
  auto first_cdn = std::make_unique<NginxServer>(repos_dir(), tmp_ / "nginx1", "limit_rate 40m;");
  ASSERT_TRUE(first_cdn->Start());
  hub_.SetExternalCdn(first_cdn->url(), repos_dir());
  WriteManifest("large.yaml", Manifest("large", "org/large"));
  auto options = DaemonOptions();
  uint64_t kept = 0;
  {
    Daemon daemon(options);
    daemon.Start();
    ASSERT_TRUE(WaitFor([&] { return MapDone(map) >= kSize / 5; }, seconds(60))) << daemon.Log();
    daemon.Kill9();
    kept = MapDone(map);
  }
  first_cdn->Stop();  // logs every request the killed daemon had open
  uint64_t first_served = first_cdn->BodyBytes("/org/large/main/model.safetensors");
  ASSERT_LT(kept, kSize);
  ASSERT_GE(first_served, kept);

  // A second CDN instance counts the restart's requests alone.
  NginxServer second_cdn(repos_dir(), tmp_ / "nginx2");
  ASSERT_TRUE(second_cdn.Start());
  hub_.SetExternalCdn(second_cdn.url(), repos_dir());
  Daemon again(options);
  again.Start();
  auto mc = WaitReady("large");
  ASSERT_TRUE(mc && IsReady(*mc)) << again.Log();
  uint64_t second_served = second_cdn.BodyBytes("/org/large/main/model.safetensors");
  // Exactly the ranges the persisted map did not cover; what was written after the last map
  // (at most about one persist interval of data) was fetched twice.
  EXPECT_EQ(second_served, kSize - kept);
  std::cout << "[ measured ] kill -9 at " << kept << " of " << kSize
            << " bytes recorded; first run "
            << "served " << first_served << ", restart served " << second_served << ", re-served "
            << (first_served + second_served - kSize) << " bytes\n";
  EXPECT_FALSE(fs::exists(map));
  EXPECT_EQ(fs::file_size(BlobDir("org/large") + "/" + sha), kSize);
}

TEST_F(TransferTest, DroppedConnectionMidRangeResumesFromTheLastByte) {
  constexpr uint64_t kSize = 8 << 20;
  std::string content = RandomBytes(kSize, 32);
  AddRepo("org/dropped", [&](const std::string& p) {
    WriteTree(Dir(p), {{"model.safetensors", content}});
  });
  Fault drop;
  drop.kind = Fault::Kind::DropAfter;
  drop.path_glob = "model.safetensors";
  drop.bytes = 300'000;
  drop.count = 3;
  hub_.AddFault(drop);
  WriteManifest("d.yaml", Manifest("dropped", "org/dropped"));
  Daemon daemon(DaemonOptions({"--chunk-size", "1MiB"}));
  daemon.Start();
  auto mc = WaitReady("dropped");
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  EXPECT_EQ(Slurp(mc->status.artifact->path + "/model.safetensors"), content);
  // Three ranges were cut after 300 000 bytes and continued from there: the file was served
  // once (the fixture may count bytes of a cut connection the client never read, at most what
  // each drop sent).
  uint64_t served = hub_.BodyBytesServed("model.safetensors");
  EXPECT_GE(served, kSize);
  EXPECT_LE(served, kSize + 3 * drop.bytes);
  EXPECT_EQ(HubLogLines({"cdn GET /repos/models/org/dropped/"}), 8 + 3);
}

TEST_F(TransferTest, RateLimitAndUnavailableWithRetryAfterAreWaitedOut) {
  constexpr uint64_t kSize = 4 << 20;
  std::string content = RandomBytes(kSize, 33);
  AddRepo("org/busy", [&](const std::string& p) {
    WriteTree(Dir(p), {{"model.safetensors", content}});
  });
  for (int status : {503, 429}) {
    Fault f;
    f.kind = Fault::Kind::Status;
    f.path_glob = "model.safetensors";
    f.status = status;
    f.retry_after_seconds = 1;
    f.count = 2;
    hub_.AddFault(f);
  }
  WriteManifest("b.yaml", Manifest("busy", "org/busy"));
  Daemon daemon(DaemonOptions({"--chunk-size", "1MiB"}));
  daemon.Start();
  auto mc = WaitReady("busy");
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  EXPECT_EQ(Slurp(mc->status.artifact->path + "/model.safetensors"), content);
  // Until the Hub answers with the file's location only one request asks it: 2 x 503 and 2 x 429
  // (each with Retry-After: 1, within the retry cap, so waited out in the job), then the 302.
  EXPECT_EQ(HubLogLines({"hub GET /org/busy/resolve/", "model.safetensors"}), 5);
  EXPECT_EQ(HubLogLines({"model.safetensors 503"}), 2);
  EXPECT_EQ(HubLogLines({"model.safetensors 429"}), 2);
  EXPECT_EQ(hub_.BodyBytesServed("model.safetensors"), kSize);
}

TEST_F(TransferTest, EtagChangeMidDownloadStartsOverWithTheNewObject) {
  if (!NginxServer::Available()) {
    GTEST_SKIP() << "nginx is not installed";
  }
  constexpr uint64_t kSize = 128ULL << 20;
  std::string dir = AddRepo("org/etag", [](const std::string& p) { WriteLargeFile(p, kSize, 34); });
  // The CDN's object will be replaced by an upload of the same bytes: a new inode and mtime, so
  // nginx answers with another ETag; the ranges on disk came with the old one. The copy is made
  // before the download starts, so that the swap mid-download is one rename, however slow the
  // machine: a 128 MiB copy made after the first progress report could land after the download.
  std::string weights = dir + "/model.safetensors";
  fs::copy_file(weights, weights + ".new");
  struct timeval times[2] = {{1'000'000'000, 0}, {1'000'000'000, 0}};
  ASSERT_EQ(::utimes((weights + ".new").c_str(), times), 0);
  // 2 MB/s per connection: the download takes several seconds, long past the first progress
  // report (written about once a second).
  NginxServer cdn(repos_dir(), tmp_ / "nginx", "limit_rate 2m;");
  ASSERT_TRUE(cdn.Start());
  hub_.SetExternalCdn(cdn.url(), repos_dir());
  WriteManifest("e.yaml", Manifest("etag", "org/etag"));
  Daemon daemon(DaemonOptions({"--chunk-size", "8MiB"}));
  daemon.Start();
  ASSERT_TRUE(WaitForStatus(state_dir(), "etag", [](const auto& m) {
    return m.status.progress && m.status.progress->bytes_done > (8u << 20);
  })) << daemon.Log();
  fs::rename(weights + ".new", weights);
  auto mc = WaitReady("etag");
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  EXPECT_NE(daemon.Log().find("changed during the download"), std::string::npos) << daemon.Log();
  EXPECT_GT(cdn.BodyBytes("/org/etag/main/model.safetensors"), kSize);
  EXPECT_EQ(fs::file_size(mc->status.artifact->path + "/model.safetensors"), kSize);
}

// A store on a small tmpfs (needs root for mount(2); skipped otherwise).
class TmpfsStore {
 public:
  TmpfsStore(const std::string& dir, uint64_t bytes) : dir_(dir) {
    fs::create_directories(dir_);
    std::string opts = "size=" + std::to_string(bytes);
    mounted_ = ::mount("tmpfs", dir_.c_str(), "tmpfs", 0, opts.c_str()) == 0;
  }
  ~TmpfsStore() {
    if (mounted_) {
      ::umount2(dir_.c_str(), MNT_DETACH);
    }
  }
  TmpfsStore(const TmpfsStore&) = delete;
  TmpfsStore& operator=(const TmpfsStore&) = delete;
  bool mounted() const { return mounted_; }

 private:
  std::string dir_;
  bool mounted_ = false;
};

TEST_F(TransferTest, DiskFullDuringADownloadIsInsufficientStorageAndResumesOnceFreed) {
  TmpfsStore small(store_dir(), 24 << 20);
  if (!small.mounted()) {
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root); the engine's injected ENOSPC is "
                    "covered by unit_fetch's FullDiskIsInsufficientStorageAndKeepsTheData";
  }
  constexpr uint64_t kSize = 16 << 20;
  std::string content = RandomBytes(kSize, 35);
  AddRepo("org/full", [&](const std::string& p) {
    WriteTree(Dir(p), {{"model.safetensors", content}});
  });
  Fault slow;
  slow.kind = Fault::Kind::Slow;
  slow.path_glob = "model.safetensors";
  slow.bytes_per_second = 4 << 20;
  slow.count = -1;
  hub_.AddFault(slow);
  WriteManifest("f.yaml", Manifest("full", "org/full"));
  // One range for the file (one connection, a chunk size above its size), so it is not
  // preallocated and the disk fills under its writes rather than at allocation.
  Daemon daemon(DaemonOptions({"--chunk-size", "32MiB", "--max-connections-per-artifact", "1"}));
  daemon.Start();
  ASSERT_TRUE(WaitForStatus(state_dir(), "full", [](const auto& m) {
    return m.status.progress && m.status.progress->bytes_done > (2u << 20);
  })) << daemon.Log();
  // Something else takes the rest of the disk.
  {
    std::ofstream filler(store_dir() + "/filler", std::ios::binary);
    std::string block(1 << 20, 'f');
    while (filler.write(block.data(), static_cast<std::streamsize>(block.size()))) {
    }
  }
  auto failed = WaitForStatus(
      state_dir(), "full", [](const auto& m) { return ReadyReason(m) == "InsufficientStorage"; });
  ASSERT_TRUE(failed) << daemon.Log();
  const crds::Condition* c = crds::FindCondition(failed->status.conditions, "Ready");
  ASSERT_NE(c, nullptr);
  // The write that hit ENOSPC says the data is kept; the retry after it may already have replaced
  // that message with the free-space preflight's (the disk is still full).
  EXPECT_TRUE(c->message.find("kept for resume") != std::string::npos ||
              c->message.find("will retry") != std::string::npos)
      << c->message;
  std::string partial = BlobDir("org/full") + "/" +
                        hub_.EtagOf("model", "org/full", "main", "model.safetensors") +
                        ".incomplete";
  ASSERT_TRUE(fs::exists(partial)) << c->message << "\n" << daemon.Log();
  uint64_t kept = fs::file_size(partial);
  EXPECT_GT(kept, 0u);
  // Space comes back: the retry resumes from the kept bytes.
  hub_.ClearFaults();
  uint64_t served_before = hub_.BodyBytesServed("model.safetensors");
  fs::remove(store_dir() + "/filler");
  auto mc = WaitReady("full");
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  EXPECT_EQ(Slurp(mc->status.artifact->path + "/model.safetensors"), content);
  EXPECT_LE(hub_.BodyBytesServed("model.safetensors") - served_before, kSize - kept + (1u << 20));
}

TEST_F(TransferTest, TooLittleSpaceFailsBeforeDownloading) {
  TmpfsStore small(store_dir(), 8 << 20);
  if (!small.mounted()) {
    GTEST_SKIP() << "cannot mount a tmpfs here (needs root)";
  }
  AddRepo("org/huge", [](const std::string& p) { WriteLargeFile(p, 32 << 20, 36); });
  WriteManifest("h.yaml", Manifest("huge", "org/huge"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto failed = WaitForStatus(
      state_dir(), "huge", [](const auto& m) { return ReadyReason(m) == "InsufficientStorage"; });
  ASSERT_TRUE(failed) << daemon.Log();
  const crds::Condition* c = crds::FindCondition(failed->status.conditions, "Ready");
  ASSERT_NE(c, nullptr);
  EXPECT_NE(c->message.find("bytes are needed"), std::string::npos) << c->message;
  EXPECT_EQ(hub_.BodyBytesServed("model.safetensors"), 0u);
}

TEST_F(TransferTest, DeletedManifestStopsEveryRequestOfTheTransfer) {
  if (!NginxServer::Available()) {
    GTEST_SKIP() << "nginx is not installed";
  }
  constexpr uint64_t kSize = 64ULL << 20;
  AddRepo("org/cancel", [](const std::string& p) { WriteLargeFile(p, kSize, 37); });
  NginxServer cdn(repos_dir(), tmp_ / "nginx", "limit_rate 1m;");
  ASSERT_TRUE(cdn.Start());
  hub_.SetExternalCdn(cdn.url(), repos_dir());
  WriteManifest("c.yaml", Manifest("cancel", "org/cancel"));
  Daemon daemon(DaemonOptions({"--chunk-size", "8MiB"}));
  daemon.Start();
  ASSERT_TRUE(WaitForStatus(state_dir(), "cancel", [](const auto& m) {
    return m.status.progress && m.status.progress->bytes_done > (1u << 20);
  })) << daemon.Log();
  double deleted_at = NowSeconds();
  fs::remove(watch_dir() + "/c.yaml");
  // Eight ranges were in flight (8 MiB each, 8 per artifact): nginx logs each when it ends.
  auto ended = [&] {
    int n = 0;
    for (const auto& e : cdn.Log()) {
      n += e.uri.rfind("/org/cancel/main/model.safetensors", 0) == 0 ? 1 : 0;
    }
    return n;
  };
  ASSERT_TRUE(WaitFor([&] { return ended() == 8; }, seconds(20))) << daemon.Log();
  double last_end = 0;
  for (const auto& e : cdn.Log()) {
    last_end = std::max(last_end, e.end_time);
  }
  std::cout << "[ measured ] manifest deleted -> last CDN request ended: "
            << static_cast<int>((last_end - deleted_at) * 1000) << " ms (includes the 100 ms "
            << "inotify debounce)\n";
  EXPECT_LT(cdn.BodyBytes("/org/cancel/main/model.safetensors"), kSize);
  EXPECT_TRUE(WaitFor([&] { return !ReadStatus(state_dir(), "default", "cancel"); }))
      << daemon.Log();
  // A deleted resource leaves no partial download behind: nothing will resume it (a spec change
  // or a shutdown keeps it; PartialFilesTest).
  std::string partial = BlobDir("org/cancel") + "/" +
                        hub_.EtagOf("model", "org/cancel", "main", "model.safetensors") +
                        ".incomplete";
  EXPECT_TRUE(WaitFor([&] { return !fs::exists(partial) && !fs::exists(partial + ".chunks"); },
                      seconds(10)))
      << daemon.Log();
  EXPECT_EQ(daemon.Terminate(), 0);
}

TEST_F(TransferTest, ExpiredCdnUrlIsResolvedAgain) {
  constexpr uint64_t kSize = 8 << 20;
  std::string content = RandomBytes(kSize, 38);
  AddRepo("org/expiring", [&](const std::string& p) {
    WriteTree(Dir(p), {{"model.safetensors", content}});
  });
  hub_.SetCdnUrlTtl(1);
  Fault slow;
  slow.kind = Fault::Kind::Slow;
  slow.path_glob = "model.safetensors";
  slow.bytes_per_second = 2 << 20;
  slow.count = -1;
  hub_.AddFault(slow);
  WriteManifest("x.yaml", Manifest("expiring", "org/expiring"));
  // Two 1 MiB ranges at a time at 2 MB/s each: about 2 s in all, so URLs handed out expire.
  Daemon daemon(DaemonOptions({"--chunk-size", "1MiB", "--max-connections-per-artifact", "2"}));
  daemon.Start();
  auto mc = WaitReady("expiring");
  ASSERT_TRUE(mc && IsReady(*mc)) << daemon.Log();
  EXPECT_EQ(Slurp(mc->status.artifact->path + "/model.safetensors"), content);
  EXPECT_GE(HubLogLines({"cdn GET /repos/models/org/expiring/", " 403"}), 1)
      << "no expired URL was refused";
  EXPECT_GE(HubLogLines({"hub GET /org/expiring/resolve/", "model.safetensors 302"}), 2);
}

TEST_F(TransferTest, TransferFlagsAreValidated) {
  auto bad_rate = RunModelcache({"run", "--watch-dir", watch_dir(), "--max-bandwidth", "fast"});
  EXPECT_EQ(bad_rate.exit_code, 2);
  EXPECT_NE(bad_rate.err.find("--max-bandwidth"), std::string::npos) << bad_rate.err;
  auto small_chunk = RunModelcache({"prefetch", "org/x", "--chunk-size", "1KiB"});
  EXPECT_EQ(small_chunk.exit_code, 2);
  EXPECT_NE(small_chunk.err.find("--chunk-size"), std::string::npos) << small_chunk.err;
  auto help = RunModelcache({"run", "--help"});
  for (const char* flag :
       {"--max-connections", "--max-connections-per-artifact", "--max-bandwidth", "--chunk-size"}) {
    EXPECT_NE(help.out.find(flag), std::string::npos) << flag;
  }
}

TEST_F(TransferTest, BandwidthLimitedPrefetchCompletes) {
  constexpr uint64_t kSize = 2 << 20;
  std::string content = RandomBytes(kSize, 39);
  AddRepo("org/limited", [&](const std::string& p) {
    WriteTree(Dir(p), {{"model.safetensors", content}});
  });
  auto r =
      RunModelcache({"prefetch", "org/limited", "--store", store_dir(), "--hf-endpoint", hub_.url(),
                     "--max-bandwidth", "4MB/s", "--chunk-size", "512KiB", "--no-progress"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out.rfind("limited@sha256:", 0), 0u) << r.out;
  EXPECT_EQ(hub_.BodyBytesServed("model.safetensors"), kSize);
}

}  // namespace
}  // namespace modelcache::itest
