// The TransferEngine against the FakeHub (parallel ranges, resume after a kill, faults, CDN auth,
// cancellation, full disk) and against small httplib servers for what the FakeHub cannot express
// (a file that changes mid-download, a signed URL that expires once).

#include "fetch/transfer_engine.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <filesystem>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "common/sha256.h"
#include "tests/common/local_server.h"
#include "tests/common/test_util.h"
#include "tests/unit/fetch/hub_env.h"

namespace modelcache::fetch {
namespace {

namespace fs = std::filesystem;

constexpr uint64_t kBigSize = 4ULL << 20;
constexpr uint64_t kChunk = 256ULL << 10;
constexpr const char* kToken = "hf_engine";

bool Exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

TransferEngineOptions EngineOptions() {
  TransferEngineOptions o;
  o.max_connections = 8;
  o.max_connections_per_job = 4;
  o.chunk_size = kChunk;
  o.min_chunk_size = 64 << 10;
  o.stall_timeout = std::chrono::milliseconds(5000);
  o.persist_interval = std::chrono::milliseconds(20);
  return o;
}

// Bytes the chunk map at `path` says are on disk; 0 if there is none.
uint64_t MapDone(const std::string& path) {
  std::string text = ReadTestFile(path);
  auto doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.contains("chunks")) {
    return 0;
  }
  uint64_t done = 0;
  for (const auto& c : doc["chunks"]) {
    done += c[2].get<uint64_t>();
  }
  return done;
}

// One FakeHub for the suite with org/engine: a 4 MiB LFS file (16 chunks of 256 KiB), a few
// regular files and an empty one. The repo takes kToken, which the CDN must never see.
class TransferEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string tmpl = ::testing::TempDir() + "engine_test.XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    root_ = new std::string(tmpl);
    big_ = new std::string(RandomBytes(kBigSize, 11));
    WriteTestFile(*root_ + "/src/big.safetensors", *big_);
    WriteTestFile(*root_ + "/src/config.json", R"({"hidden_size": 64})");
    WriteTestFile(*root_ + "/src/tok/vocab.txt", RandomBytes(300 << 10, 12));
    WriteTestFile(*root_ + "/src/empty.txt", "");
    hub_ = new testing::FakeHub();
    testing::FakeRepoSpec spec;
    spec.id = "org/engine";
    spec.refs = {{"main", *root_ + "/src"}};
    spec.tokens = {kToken};
    hub_->AddRepo(spec);
    auto started = hub_->Start();
    ASSERT_TRUE(started) << started.error().ToString();
  }

  static void TearDownTestSuite() {
    delete hub_;
    hub_ = nullptr;
    std::error_code ec;
    fs::remove_all(*root_, ec);
    delete root_;
    delete big_;
  }

  void SetUp() override {
    hub_->ClearFaults();
    hub_->ResetCounters();
    hub_->SetCdnUrlTtl(3600);
    scratch_ = *root_ + "/scratch/" +
               ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::create_directories(scratch_);
  }

  static HubOptions Options() {
    HubOptions o;
    o.endpoint = hub_->url();
    o.token = kToken;
    o.max_attempts = 4;
    o.backoff_base = std::chrono::milliseconds(10);
    o.backoff_cap = std::chrono::milliseconds(40);
    return o;
  }

  std::vector<FileTask> Tasks() {
    HubClient client(Options());
    auto commit = client.ResolveRevision("model", "org/engine", "main");
    EXPECT_TRUE(commit) << commit.error().ToString();
    auto files = client.ListFiles("model", "org/engine", *commit);
    EXPECT_TRUE(files) << files.error().ToString();
    std::vector<FileTask> tasks;
    for (const auto& f : *files) {
      FileTask t;
      t.path = f.path;
      t.url = client.ResolveUrl("model", "org/engine", *commit, f.path);
      t.size = f.size;
      if (f.lfs_sha256) {
        t.expected_sha256 = *f.lfs_sha256;
      } else {
        t.expected_git_sha1 = f.blob_id;
      }
      t.incomplete_path = scratch_ + "/blobs/" + f.etag() + ".incomplete";
      t.final_path = scratch_ + "/blobs/" + f.etag();
      tasks.push_back(t);
    }
    return tasks;
  }

  FileTask BigTask() {
    for (auto& t : Tasks()) {
      if (t.path == "big.safetensors") {
        return t;
      }
    }
    ADD_FAILURE() << "no big.safetensors";
    return {};
  }

  static Result<std::vector<FileResult>> RunWith(TransferEngine& engine,
                                                 const std::vector<FileTask>& tasks,
                                                 TransferProgress* progress = nullptr,
                                                 std::stop_token stop = {}) {
    TransferProgress local;
    return engine.NewTransfer(Options())->Run(tasks, progress ? *progress : local, stop);
  }

  static testing::Fault MakeFault(testing::Fault::Kind kind, int count) {
    testing::Fault f;
    f.kind = kind;
    f.path_glob = "big.safetensors";
    f.count = count;
    return f;
  }

  static inline std::string* root_ = nullptr;
  static inline std::string* big_ = nullptr;
  static inline testing::FakeHub* hub_ = nullptr;
  std::string scratch_;
};

TEST_F(TransferEngineTest, ParallelChunksReassembleBitExactly) {
  auto tasks = Tasks();
  ASSERT_EQ(tasks.size(), 4u);
  TransferEngine engine(EngineOptions());
  TransferProgress progress;
  auto results = RunWith(engine, tasks, &progress);
  ASSERT_TRUE(results) << results.error().ToString();
  ASSERT_EQ(results->size(), tasks.size());
  uint64_t total = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const FileResult& r = (*results)[i];
    std::string want = ReadTestFile(*root_ + "/src/" + tasks[i].path);
    EXPECT_EQ(r.path, tasks[i].path);
    EXPECT_TRUE(r.downloaded);
    EXPECT_EQ(r.sha256, Sha256Hex(want)) << r.path;
    EXPECT_EQ(ReadTestFile(tasks[i].final_path), want) << r.path;
    EXPECT_FALSE(Exists(tasks[i].incomplete_path)) << r.path;
    EXPECT_FALSE(Exists(tasks[i].incomplete_path + ".chunks")) << r.path;
    total += want.size();
  }
  EXPECT_EQ(progress.bytes_total.load(), total);
  EXPECT_EQ(progress.bytes_done.load(), total);
  EXPECT_EQ(progress.files_done.load(), 4);
  // Every byte of the big file came once, in 16 ranged requests to the CDN (which refuses an
  // Authorization header), after a single /resolve on the Hub.
  EXPECT_EQ(hub_->BodyBytesServed("big.safetensors"), kBigSize);
  EXPECT_EQ(hub_->Requests("/repos/"), static_cast<int>(kBigSize / kChunk));
  for (const auto& t : tasks) {
    if (t.path == "big.safetensors") {
      EXPECT_EQ(hub_->Requests(UrlDecode(t.url.substr(hub_->url().size()))), 1);
    }
  }

  // A second run finds everything in place.
  hub_->ResetCounters();
  auto again = RunWith(engine, tasks);
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_FALSE((*again)[0].downloaded);
  EXPECT_EQ(hub_->Requests("/"), 0);
}

TEST_F(TransferEngineTest, ResumesOnlyTheMissingRangesAfterAKill) {
  FileTask task = BigTask();
  std::string map = task.incomplete_path + ".chunks";
  testing::Fault slow = MakeFault(testing::Fault::Kind::Slow, -1);
  slow.bytes_per_second = 1'000'000;  // 4 connections: about a second for the file
  hub_->AddFault(slow);
  uint64_t snapshot_done = 0;
  {
    auto engine = std::make_unique<TransferEngine>(EngineOptions());
    std::stop_source stop;
    std::optional<Result<std::vector<FileResult>>> result;
    TransferProgress progress;
    std::thread runner([&] { result.emplace(RunWith(*engine, {task}, &progress, stop.get_token())); });
    // Wait (not measure) until the persisted map covers a quarter of the file, then take what a
    // kill -9 would leave: the map as it is on disk, and data at least as new.
    for (int i = 0; i < 4000 && MapDone(map) < kBigSize / 4; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    fs::copy_file(map, scratch_ + "/snap.chunks");
    fs::copy_file(task.incomplete_path, scratch_ + "/snap.data");
    snapshot_done = MapDone(scratch_ + "/snap.chunks");
    stop.request_stop();
    runner.join();
    ASSERT_TRUE(result.has_value());
    ASSERT_FALSE(*result);
    EXPECT_EQ(result->error().reason, Reason::Cancelled);
    engine.reset();
  }
  ASSERT_GE(snapshot_done, kBigSize / 4);
  ASSERT_LT(snapshot_done, kBigSize);
  fs::copy_file(scratch_ + "/snap.chunks", map, fs::copy_options::overwrite_existing);
  fs::copy_file(scratch_ + "/snap.data", task.incomplete_path,
                fs::copy_options::overwrite_existing);
  hub_->ClearFaults();
  hub_->ResetCounters();

  TransferEngine engine(EngineOptions());
  TransferProgress progress;
  auto results = RunWith(engine, {task}, &progress);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *big_);
  // Only the ranges the map did not cover were fetched again. The fixture may still count a slow
  // piece the first run's server threads wrote into closed connections after the counters were
  // reset, hence a bound of one chunk rather than equality.
  uint64_t served = hub_->BodyBytesServed("big.safetensors");
  EXPECT_GE(served, kBigSize - snapshot_done);
  EXPECT_LT(served, kBigSize - snapshot_done + kChunk);
  EXPECT_EQ(progress.bytes_done.load(), kBigSize);
  EXPECT_FALSE(Exists(map));
}

TEST_F(TransferEngineTest, DroppedConnectionResumesFromTheLastByte) {
  FileTask task = BigTask();
  testing::Fault drop = MakeFault(testing::Fault::Kind::DropAfter, 2);
  drop.bytes = 100'000;
  hub_->AddFault(drop);
  TransferEngine engine(EngineOptions());
  auto results = RunWith(engine, {task});
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *big_);
  // Resumed from the last byte received: nothing is fetched twice, except that a close racing the
  // fixture's write can reset the connection and lose bytes the fixture counted as sent (at most
  // what each drop sent).
  EXPECT_GE(hub_->BodyBytesServed("big.safetensors"), kBigSize);
  EXPECT_LE(hub_->BodyBytesServed("big.safetensors"), kBigSize + 2 * drop.bytes);
  EXPECT_EQ(hub_->Requests("/repos/"), static_cast<int>(kBigSize / kChunk) + 2);
}

TEST_F(TransferEngineTest, ServerErrorsWithRetryAfterAreRetried) {
  FileTask task = BigTask();
  testing::Fault busy = MakeFault(testing::Fault::Kind::Status, 3);
  busy.status = 503;
  busy.retry_after_seconds = 0;
  hub_->AddFault(busy);
  TransferEngine engine(EngineOptions());
  auto results = RunWith(engine, {task});
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *big_);
}

TEST_F(TransferEngineTest, RateLimitBeyondTheCapIsReturnedWithRetryAfter) {
  FileTask task = BigTask();
  testing::Fault limited = MakeFault(testing::Fault::Kind::Status, -1);
  limited.status = 429;
  limited.retry_after_seconds = 7;
  hub_->AddFault(limited);
  TransferEngine engine(EngineOptions());
  auto results = RunWith(engine, {task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::RateLimited) << results.error().ToString();
  ASSERT_TRUE(results.error().retry_after.has_value());
  EXPECT_EQ(*results.error().retry_after, std::chrono::seconds(7));
  EXPECT_EQ(hub_->Requests("/org/engine/resolve/"), 1);  // not waited for here
}

TEST_F(TransferEngineTest, ServerIgnoringRangeFallsBackToOneStream) {
  FileTask task = BigTask();
  hub_->AddFault(MakeFault(testing::Fault::Kind::IgnoreRange, -1));
  TransferEngine engine(EngineOptions());
  TransferProgress progress;
  auto results = RunWith(engine, {task}, &progress);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *big_);
  EXPECT_EQ(progress.bytes_done.load(), kBigSize);
}

TEST_F(TransferEngineTest, CorruptByteOnceIsRefetched) {
  FileTask task = BigTask();
  testing::Fault corrupt = MakeFault(testing::Fault::Kind::Corrupt, 1);
  corrupt.bytes = kBigSize / 2 + 3;
  hub_->AddFault(corrupt);
  // The data callback sees the file in order, twice: the corrupt copy, then from 0 again.
  std::string seen;
  int starts = 0;
  bool in_order = true;
  task.on_data = [&](uint64_t offset, std::string_view bytes) -> VoidResult {
    if (offset == 0) {
      starts += 1;
      seen.clear();
    }
    in_order = in_order && offset == seen.size();
    seen.append(bytes);
    return {};
  };
  TransferEngine engine(EngineOptions());
  TransferProgress progress;
  auto results = RunWith(engine, {task}, &progress);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *big_);
  EXPECT_EQ(progress.bytes_done.load(), kBigSize);
  EXPECT_EQ(hub_->BodyBytesServed("big.safetensors"), 2 * kBigSize);
  EXPECT_TRUE(in_order);
  EXPECT_EQ(starts, 2);
  EXPECT_TRUE(seen == *big_);
}

TEST_F(TransferEngineTest, DataCallbackErrorFailsTheRun) {
  FileTask task = BigTask();
  task.on_data = [](uint64_t offset, std::string_view) -> VoidResult {
    if (offset > 0) {
      return Error(Reason::InsufficientStorage, "rank files: no space left");
    }
    return {};
  };
  TransferEngine engine(EngineOptions());
  auto results = RunWith(engine, {task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::InsufficientStorage);
  EXPECT_FALSE(Exists(task.final_path));
}

// A header read the way the engines' loaders read it: two ranged requests, following the
// redirect to the CDN (which refuses the token).
TEST_F(TransferEngineTest, GetRangeReadsBytesThroughTheCdn) {
  FileTask task = BigTask();
  HubClient client(Options());
  auto first = client.GetRange(task.url, 0, 8);
  ASSERT_TRUE(first) << first.error().ToString();
  EXPECT_EQ(*first, big_->substr(0, 8));
  auto middle = client.GetRange(task.url, kBigSize / 3, 1000);
  ASSERT_TRUE(middle) << middle.error().ToString();
  EXPECT_EQ(*middle, big_->substr(kBigSize / 3, 1000));
  // A server that ignores Range is not read to the end of the file.
  hub_->AddFault(MakeFault(testing::Fault::Kind::IgnoreRange, -1));
  auto ignored = client.GetRange(task.url, 0, 8);
  hub_->ClearFaults();
  ASSERT_FALSE(ignored);
  EXPECT_EQ(ignored.error().reason, Reason::NetworkError);
}

TEST_F(TransferEngineTest, PersistentCorruptionIsChecksumMismatch) {
  FileTask task = BigTask();
  testing::Fault corrupt = MakeFault(testing::Fault::Kind::Corrupt, -1);
  corrupt.bytes = 12345;
  hub_->AddFault(corrupt);
  TransferEngine engine(EngineOptions());
  TransferProgress progress;
  auto results = RunWith(engine, {task}, &progress);
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::ChecksumMismatch) << results.error().ToString();
  EXPECT_NE(results.error().message.find(*task.expected_sha256), std::string::npos);
  EXPECT_FALSE(Exists(task.final_path));
  EXPECT_FALSE(Exists(task.incomplete_path));
  EXPECT_FALSE(Exists(task.incomplete_path + ".chunks"));
  EXPECT_EQ(progress.bytes_done.load(), 0u);
}

TEST_F(TransferEngineTest, FullDiskIsInsufficientStorageAndKeepsTheData) {
  FileTask task = BigTask();
  TransferEngineOptions options = EngineOptions();
  std::atomic<uint64_t> written{0};
  options.pwrite_for_test = [&written](int fd, const void* data, size_t size,
                                       off_t offset) -> ssize_t {
    if (written.load() >= kBigSize / 2) {
      errno = ENOSPC;
      return -1;
    }
    ssize_t n = ::pwrite(fd, data, size, offset);
    if (n > 0) {
      written.fetch_add(static_cast<uint64_t>(n));
    }
    return n;
  };
  {
    TransferEngine engine(options);
    auto results = RunWith(engine, {task});
    ASSERT_FALSE(results);
    EXPECT_EQ(results.error().reason, Reason::InsufficientStorage) << results.error().ToString();
  }
  EXPECT_FALSE(Exists(task.final_path));
  ASSERT_TRUE(Exists(task.incomplete_path + ".chunks"));
  uint64_t kept = MapDone(task.incomplete_path + ".chunks");
  EXPECT_GE(kept, kBigSize / 4);

  hub_->ResetCounters();
  TransferEngine engine(EngineOptions());
  auto results = RunWith(engine, {task});
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *big_);
  EXPECT_EQ(hub_->BodyBytesServed("big.safetensors"), kBigSize - kept);
}

TEST_F(TransferEngineTest, NotEnoughFreeSpaceFailsBeforeAnyRequest) {
  FileTask task = BigTask();
  task.size = 1ULL << 60;
  hub_->ResetCounters();
  TransferEngine engine(EngineOptions());
  auto results = RunWith(engine, {task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::InsufficientStorage);
  EXPECT_EQ(hub_->Requests("/"), 0);
}

// At 100 kB/s the 4 MiB take 40 s: the run ends with Cancelled only if the stop is honoured (a
// broken cancel ends it with the whole file, and the test fails on the result, not on a clock).
TEST_F(TransferEngineTest, CancellationStopsTheRunAndKeepsData) {
  FileTask task = BigTask();
  testing::Fault slow = MakeFault(testing::Fault::Kind::Slow, -1);
  slow.bytes_per_second = 100'000;
  hub_->AddFault(slow);
  TransferEngine engine(EngineOptions());
  std::stop_source stop;
  TransferProgress progress;
  std::optional<Result<std::vector<FileResult>>> result;
  std::thread runner([&] { result.emplace(RunWith(engine, {task}, &progress, stop.get_token())); });
  for (int i = 0; i < 4000 && progress.bytes_done.load() < 100'000; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  stop.request_stop();
  runner.join();
  ASSERT_TRUE(result.has_value());
  ASSERT_FALSE(*result);
  EXPECT_EQ(result->error().reason, Reason::Cancelled);
  EXPECT_GE(MapDone(task.incomplete_path + ".chunks"), 100'000u);
  EXPECT_FALSE(Exists(task.final_path));
}

// The limit is checked by counting bytes against a clock the test holds, not by timing: while
// the clock stands still the bucket never refills, so no more than its burst (64 KiB at 1 MiB/s)
// arrives however long the test waits; each second the test moves the clock adds at most one
// more burst. Checked by breaking the limit (the pause in the write callback removed): the whole
// file arrives while the clock stands still, and the test fails on the byte count.
TEST_F(TransferEngineTest, BandwidthLimitHoldsTheRate) {
  FileTask task;
  for (auto& t : Tasks()) {
    if (t.path == "tok/vocab.txt") {
      task = t;
    }
  }
  ASSERT_EQ(task.size, 300u << 10);
  constexpr uint64_t kBurst = 64 << 10;
  // One write callback may take a buffer past the empty bucket before the transfer pauses:
  // libcurl's largest (CURL_MAX_WRITE_SIZE), once per request in flight.
  constexpr uint64_t kOvershoot = 16 << 10;
  using Steady = std::chrono::steady_clock;
  std::atomic<int64_t> seconds{0};
  std::atomic<bool> released{false};  // then the held clock runs on at the real pace
  Steady::time_point released_at{};
  TransferEngineOptions options = EngineOptions();
  options.max_bytes_per_second = 1 << 20;
  options.bandwidth_clock_for_test = [&] {
    Steady::time_point held(std::chrono::seconds(seconds.load()));
    return released ? held + (Steady::now() - released_at) : held;
  };
  TransferEngine engine(options);
  TransferProgress progress;
  std::optional<Result<std::vector<FileResult>>> result;
  std::atomic<bool> done{false};
  std::thread runner([&] {
    result.emplace(RunWith(engine, {task}, &progress));
    done = true;
  });
  uint64_t moves = 0;
  while (!done && moves < 100) {
    // Let the transfer take what the bucket allows (a wait, not a measurement), then check that
    // it took no more.
    for (int i = 0; i < 100 && !done; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    uint64_t allowed =
        (moves + 1) * kBurst + static_cast<uint64_t>(options.max_connections_per_job) * kOvershoot;
    uint64_t got = progress.bytes_done.load();
    EXPECT_LE(got, allowed) << "after " << moves << " moves of the clock";
    if (got > allowed) {
      break;
    }
    seconds += 1;
    ++moves;
  }
  released_at = Steady::now();
  released = true;  // let it finish, whatever happened
  runner.join();
  ASSERT_TRUE(result.has_value());
  ASSERT_TRUE(*result) << result->error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), ReadTestFile(*root_ + "/src/tok/vocab.txt"));
}

// Far less staging memory than the ranges in flight: transfers wait for blocks (the job gives back
// what it holds for hashing) instead of stalling, and every byte still comes exactly once.
TEST_F(TransferEngineTest, StagingMemorySmallerThanTheRangesInFlightStillCompletesExactly) {
  FileTask task = BigTask();
  TransferEngineOptions options = EngineOptions();
  options.max_connections_per_job = 8;
  options.staging_bytes = 2 << 20;  // one block for eight ranges
  TransferEngine engine(options);
  auto results = RunWith(engine, {task});
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ((*results)[0].sha256, Sha256Hex(*big_));
  EXPECT_EQ(ReadTestFile(task.final_path), *big_);
  EXPECT_EQ(hub_->BodyBytesServed("big.safetensors"), kBigSize);
}

// Blocks are written with O_DIRECT where the filesystem allows it; one that refuses a direct
// write (EINVAL) gets the block through the page cache instead.
TEST_F(TransferEngineTest, BlocksAreWrittenDirectlyAndARefusedDirectWriteFallsBack) {
  std::string probe = scratch_ + "/probe";
  WriteTestFile(probe, "x");
  int probe_fd = ::open(probe.c_str(), O_WRONLY | O_DIRECT);
  if (probe_fd < 0) {
    GTEST_SKIP() << "the test directory's filesystem has no O_DIRECT";
  }
  ::close(probe_fd);
  for (bool refuse : {false, true}) {
    SCOPED_TRACE(refuse ? "direct writes refused" : "direct writes allowed");
    fs::remove_all(scratch_ + "/blobs");
    FileTask task = BigTask();
    std::atomic<uint64_t> direct{0};
    std::atomic<uint64_t> buffered{0};
    TransferEngineOptions options = EngineOptions();
    options.pwrite_for_test = [&, refuse](int fd, const void* data, size_t size,
                                          off_t offset) -> ssize_t {
      if ((::fcntl(fd, F_GETFL) & O_DIRECT) != 0) {
        direct.fetch_add(size);
        if (refuse) {
          errno = EINVAL;
          return -1;
        }
      } else {
        buffered.fetch_add(size);
      }
      return ::pwrite(fd, data, size, offset);
    };
    TransferEngine engine(options);
    auto results = RunWith(engine, {task});
    ASSERT_TRUE(results) << results.error().ToString();
    EXPECT_EQ(ReadTestFile(task.final_path), *big_);
    // 256 KiB ranges at aligned offsets: every block is aligned, so without a refusal all of the
    // file is written directly; with one, all of it through the page cache.
    EXPECT_EQ(refuse ? buffered.load() : direct.load(), kBigSize);
    EXPECT_EQ(refuse ? direct.load() : buffered.load(), refuse ? kBigSize : 0);
  }
}

// Plain servers for what the FakeHub cannot do: a "hub" that redirects /resolve/file to a "cdn"
// with a fresh signature each time, a cdn that refuses the first signature (expired) and any
// Authorization header, and a file whose content (and ETag) changes after `switch_after` data
// requests.
class EngineServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    v1_ = RandomBytes(1 << 20, 21);
    v2_ = RandomBytes(1 << 20, 22);
    hub_.Get("/resolve/file", [this](const httplib::Request& req, httplib::Response& res) {
      std::lock_guard lock(mu_);
      resolves_ += 1;
      hub_auth_ = hub_auth_ || !req.get_header_value("Authorization").empty();
      res.status = 302;
      res.set_header("Location", cdn_.Url("/blob?sig=" + std::to_string(resolves_)));
    });
    hub_.Get("/direct", [this](const httplib::Request& req, httplib::Response& res) {
      Serve(req, res);
    });
    cdn_.Get("/blob", [this](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard lock(mu_);
        if (!req.get_header_value("Authorization").empty()) {
          cdn_auth_ = true;
          res.status = 400;
          return;
        }
        if (req.get_param_value("sig") == "1" && expire_first_) {
          res.status = 403;
          return;
        }
      }
      Serve(req, res);
    });
    hub_.Start();
    cdn_.Start();
    ASSERT_GT(hub_.port(), 0);
    ASSERT_GT(cdn_.port(), 0);
    ASSERT_FALSE(dir_.empty());
  }

  void TearDown() override {  // before the members the handlers use go
    hub_.Stop();
    cdn_.Stop();
  }

  void Serve(const httplib::Request&, httplib::Response& res) {
    std::lock_guard lock(mu_);
    data_requests_ += 1;
    bool second = switch_after_ > 0 && data_requests_ > switch_after_;
    res.set_header("ETag", second ? "\"v2\"" : "\"v1\"");
    res.set_content(second ? v2_ : v1_, "application/octet-stream");
  }

  Result<std::vector<FileResult>> Fetch(const std::string& path, const std::string& content,
                                        int per_job) {
    HubOptions options;
    options.endpoint = hub_.Url("");
    options.token = "hf_secret";
    options.max_attempts = 3;
    options.backoff_base = std::chrono::milliseconds(5);
    options.backoff_cap = std::chrono::milliseconds(20);
    FileTask task;
    task.path = "file";
    task.url = hub_.Url(path);
    task.size = content.size();
    task.expected_sha256 = Sha256Hex(content);
    task.incomplete_path = dir_ + "/file.incomplete";
    task.final_path = dir_ + "/file";
    TransferEngineOptions eo = EngineOptions();
    eo.max_connections_per_job = per_job;
    TransferEngine engine(eo);
    TransferProgress progress;
    return engine.NewTransfer(options)->Run({task}, progress, {});
  }

  test_util::LocalServer hub_, cdn_;
  test_util::TempDir tmp_{"mc-engine-server"};
  const std::string dir_ = tmp_.path();
  std::mutex mu_;
  std::string v1_, v2_;
  int resolves_ = 0;
  int data_requests_ = 0;
  int switch_after_ = 0;
  bool expire_first_ = false;
  bool hub_auth_ = false;
  bool cdn_auth_ = false;
};

TEST_F(EngineServerTest, ExpiredCdnUrlIsResolvedAgainWithoutSendingTheToken) {
  expire_first_ = true;
  auto results = Fetch("/resolve/file", v1_, 4);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(dir_ + "/file"), v1_);
  std::lock_guard lock(mu_);
  EXPECT_EQ(resolves_, 2);
  EXPECT_TRUE(hub_auth_);
  EXPECT_FALSE(cdn_auth_);
}

TEST_F(EngineServerTest, FileChangingMidDownloadStartsOver) {
  switch_after_ = 2;  // chunks 1 and 2 of 4 come from v1, then the file is v2
  auto results = Fetch("/direct", v2_, 1);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ((*results)[0].sha256, Sha256Hex(v2_));
  EXPECT_EQ(ReadTestFile(dir_ + "/file"), v2_);
  std::lock_guard lock(mu_);
  EXPECT_EQ(data_requests_, 2 + 1 + 4);  // v1, v1, the v2 that revealed it, then all of v2
}

}  // namespace
}  // namespace modelcache::fetch
