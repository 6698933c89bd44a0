// The fetch::Transfer contract (transfer.h), checked on the TransferEngine with its default
// options (so files of this size are one range each) against the FakeHub (resume, verification,
// faults, CDN auth, cancellation) and against two small httplib servers (which redirects keep the
// token). transfer_engine_test.cpp covers what is particular to ranged files.

#include "fetch/transfer.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <httplib.h>

#include "common/sha256.h"
#include "fetch/transfer_engine.h"
#include "tests/common/local_server.h"
#include "tests/common/test_util.h"
#include "tests/unit/fetch/hub_env.h"

namespace modelcache::fetch {
namespace {

namespace fs = std::filesystem;

// One engine per run: the engine thread stops when the Transfer is gone.
Result<std::vector<FileResult>> RunTransfer(const HubOptions& options,
                                            const std::vector<FileTask>& tasks,
                                            TransferProgress& progress, std::stop_token stop = {}) {
  TransferEngine engine(TransferEngineOptions{});
  return engine.NewTransfer(options)->Run(tasks, progress, std::move(stop));
}

class TransferContractTest : public HubTest {
 protected:
  // The tasks a reconciler would build: blobs named by etag, as in the hub cache.
  std::vector<FileTask> Tasks(const std::string& type, const std::string& repo,
                              const std::string& token = "") {
    HubClient client(Options(token));
    auto commit = client.ResolveRevision(type, repo, "main");
    EXPECT_TRUE(commit) << commit.error().ToString();
    auto files = client.ListFiles(type, repo, *commit);
    EXPECT_TRUE(files) << files.error().ToString();
    std::vector<FileTask> tasks;
    for (const auto& f : *files) {
      FileTask t;
      t.path = f.path;
      t.url = client.ResolveUrl(type, repo, *commit, f.path);
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
    std::sort(tasks.begin(), tasks.end(),
              [](const FileTask& a, const FileTask& b) { return a.path < b.path; });
    return tasks;
  }

  FileTask Task(const std::string& path, const std::string& repo = "org/model",
                const std::string& token = "") {
    for (auto& t : Tasks("model", repo, token)) {
      if (t.path == path) {
        return t;
      }
    }
    ADD_FAILURE() << "no file " << path;
    return {};
  }

  static std::map<std::string, std::string> Contents() {
    return {{"config.json", *config_},
            {"model.safetensors", *weights_},
            {"sub/dir/tokenizer.json", *tokenizer_},
            {"with space/a+b.txt", "plus and space"}};
  }

  Result<std::vector<FileResult>> Run(const std::vector<FileTask>& tasks,
                                      const std::string& token = "",
                                      TransferProgress* progress = nullptr) {
    TransferProgress local;
    return RunTransfer(Options(token), tasks, progress ? *progress : local);
  }

  static bool Exists(const std::string& path) { return fs::exists(path); }
};

TEST_F(TransferContractTest, DownloadsVerifiesAndRenamesEveryFile) {
  auto tasks = Tasks("model", "org/model");
  ASSERT_EQ(tasks.size(), 4u);
  TransferProgress progress;
  auto results = Run(tasks, "", &progress);
  ASSERT_TRUE(results) << results.error().ToString();
  ASSERT_EQ(results->size(), tasks.size());
  auto contents = Contents();
  uint64_t total = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    const FileResult& r = (*results)[i];
    const std::string& content = contents.at(tasks[i].path);
    EXPECT_EQ(r.path, tasks[i].path);  // in task order
    EXPECT_EQ(r.sha256, Sha256Hex(content)) << r.path;
    EXPECT_EQ(r.size, content.size());
    EXPECT_TRUE(r.downloaded);
    EXPECT_EQ(ReadTestFile(tasks[i].final_path), content) << r.path;
    EXPECT_FALSE(Exists(tasks[i].incomplete_path)) << r.path;
    total += content.size();
  }
  EXPECT_EQ(progress.bytes_total.load(), total);
  EXPECT_EQ(progress.bytes_done.load(), total);
  EXPECT_EQ(progress.files_total.load(), 4);
  EXPECT_EQ(progress.files_done.load(), 4);
  // The LFS file went through the CDN, the regular ones did not.
  EXPECT_EQ(hub_->Requests("/repos/"), 1);
  EXPECT_EQ(hub_->BodyBytesServed("model.safetensors"), kWeightsSize);
}

TEST_F(TransferContractTest, DownloadsDatasetFiles) {
  auto tasks = Tasks("dataset", "org/data");
  ASSERT_EQ(tasks.size(), 4u);
  EXPECT_NE(tasks[0].url.find("/datasets/org/data/resolve/"), std::string::npos);
  auto results = Run(tasks);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(tasks[0].final_path), R"({"hidden_size": 32})");
}

TEST_F(TransferContractTest, PrivateLfsFileIsFetchedFromTheCdnWithoutTheToken) {
  // The fixture's CDN answers 400 to any request carrying Authorization, so success proves the
  // token stayed on the hub; the hub itself refuses the file without it.
  FileTask task = Task("model.safetensors", "org/private", kGoodToken);
  auto results = Run({task}, kGoodToken);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ((*results)[0].sha256, Sha256Hex(*weights_));
  EXPECT_EQ(hub_->Requests("/repos/"), 1);
  EXPECT_EQ(hub_->Requests("/org/private/resolve/"), 1);
}

TEST_F(TransferContractTest, PrivateRepoWithoutTokenIsRepoNotFoundAndNotRetried) {
  FileTask task = Task("config.json", "org/private", kGoodToken);
  hub_->ResetCounters();
  auto results = Run({task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::RepoNotFound) << results.error().ToString();
  EXPECT_EQ(hub_->Requests("/org/private/resolve/"), 1);
  EXPECT_FALSE(Exists(task.final_path));
}

TEST_F(TransferContractTest, GatedRepoWithoutAccessIsUnauthorized) {
  FileTask task = Task("model.safetensors", "org/gated");
  auto anonymous = Run({task});
  ASSERT_FALSE(anonymous);
  EXPECT_EQ(anonymous.error().reason, Reason::Unauthorized) << anonymous.error().ToString();
  EXPECT_NE(
      anonymous.error().message.find("is gated: request access at " + hub_->url() + "/org/gated"),
      std::string::npos)
      << anonymous.error().message;

  auto not_granted = Run({task}, kOtherToken);
  ASSERT_FALSE(not_granted);
  EXPECT_EQ(not_granted.error().reason, Reason::Unauthorized) << not_granted.error().ToString();
  EXPECT_EQ(not_granted.error().message.find(kOtherToken), std::string::npos);

  auto granted = Run({task}, kGoodToken);
  ASSERT_TRUE(granted) << granted.error().ToString();
}

TEST_F(TransferContractTest, MissingEntryIsPermanent) {
  FileTask task = Task("config.json");
  task.path = "nope.json";
  task.url = HubClient(Options()).ResolveUrl(
      "model", "org/model", hub_->CommitOf("model", "org/model", "main"), "nope.json");
  hub_->ResetCounters();
  auto results = Run({task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::RevisionNotFound) << results.error().ToString();
  EXPECT_EQ(hub_->Requests("/org/model/resolve/"), 1);
}

TEST_F(TransferContractTest, DroppedConnectionResumesWithRange) {
  FileTask task = Task("model.safetensors");
  testing::Fault drop = MakeFault(testing::Fault::Kind::DropAfter, "model.safetensors", 1);
  drop.bytes = 100'000;
  hub_->AddFault(drop);
  auto results = Run({task});
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ((*results)[0].sha256, Sha256Hex(*weights_));
  // Continued from the last byte written, not from zero.
  EXPECT_LT(hub_->BodyBytesServed("model.safetensors"), kWeightsSize * 3 / 2);
  EXPECT_EQ(hub_->BodyBytesServed("model.safetensors"), kWeightsSize);
  EXPECT_EQ(hub_->Requests("/repos/"), 2);
}

TEST_F(TransferContractTest, ResumesAnExistingPartialFile) {
  FileTask task = Task("model.safetensors");
  WriteTestFile(task.incomplete_path, weights_->substr(0, 123'456));
  TransferProgress progress;
  auto results = Run({task}, "", &progress);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ((*results)[0].sha256, Sha256Hex(*weights_));
  EXPECT_EQ(hub_->BodyBytesServed("model.safetensors"), kWeightsSize - 123'456);
  EXPECT_EQ(progress.bytes_done.load(), kWeightsSize);
}

TEST_F(TransferContractTest, ServerIgnoringRangeStartsOver) {
  FileTask task = Task("sub/dir/tokenizer.json");
  WriteTestFile(task.incomplete_path, tokenizer_->substr(0, 10'000));
  hub_->AddFault(MakeFault(testing::Fault::Kind::IgnoreRange, "sub/dir/tokenizer.json", 1));
  TransferProgress progress;
  auto results = Run({task}, "", &progress);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *tokenizer_);
  // The 200 is abandoned at its first byte and the file fetched again from 0; the fixture counts
  // what it wrote into the socket before the client closed it, at most the whole file.
  EXPECT_GE(hub_->BodyBytesServed("sub/dir/tokenizer.json"), tokenizer_->size());
  EXPECT_LE(hub_->BodyBytesServed("sub/dir/tokenizer.json"), 2 * tokenizer_->size());
  EXPECT_EQ(hub_->Requests("/org/model/resolve/"), 2);
  EXPECT_EQ(progress.bytes_done.load(), tokenizer_->size());
}

TEST_F(TransferContractTest, BogusPartialFileIsDiscardedAfterVerification) {
  FileTask task = Task("model.safetensors");
  WriteTestFile(task.incomplete_path, std::string(100'000, 'x'));
  auto results = Run({task});
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *weights_);
  // The rest after the bogus prefix, then the whole file again.
  EXPECT_EQ(hub_->BodyBytesServed("model.safetensors"), kWeightsSize - 100'000 + kWeightsSize);
}

TEST_F(TransferContractTest, PartialFileLongerThanTheFileIsTruncated) {
  FileTask task = Task("config.json");
  WriteTestFile(task.incomplete_path, std::string(config_->size() + 10, 'x'));
  auto results = Run({task});
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *config_);
}

TEST_F(TransferContractTest, CorruptedByteIsRetried) {
  FileTask task = Task("model.safetensors");
  testing::Fault corrupt = MakeFault(testing::Fault::Kind::Corrupt, "model.safetensors", 1);
  corrupt.bytes = 5000;
  hub_->AddFault(corrupt);
  auto results = Run({task});
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *weights_);
  EXPECT_EQ(hub_->BodyBytesServed("model.safetensors"), 2 * kWeightsSize);
}

TEST_F(TransferContractTest, PersistentCorruptionIsChecksumMismatchNamingBothDigests) {
  FileTask task = Task("model.safetensors");
  testing::Fault corrupt = MakeFault(testing::Fault::Kind::Corrupt, "model.safetensors", -1);
  corrupt.bytes = 5000;
  hub_->AddFault(corrupt);
  auto results = Run({task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::ChecksumMismatch) << results.error().ToString();
  const std::string& msg = results.error().message;
  EXPECT_NE(msg.find("model.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find(*task.expected_sha256), std::string::npos) << msg;
  std::string corrupted = *weights_;
  corrupted[5000] = static_cast<char>(corrupted[5000] ^ 0xff);
  EXPECT_NE(msg.find(Sha256Hex(corrupted)), std::string::npos) << msg;
  EXPECT_EQ(hub_->BodyBytesServed("model.safetensors"),
            static_cast<uint64_t>(Options().max_attempts) * kWeightsSize);
  EXPECT_FALSE(Exists(task.final_path));
  EXPECT_FALSE(Exists(task.incomplete_path));
}

TEST_F(TransferContractTest, RegularFileIsVerifiedByGitBlobSha1) {
  FileTask task = Task("config.json");
  testing::Fault corrupt = MakeFault(testing::Fault::Kind::Corrupt, "config.json", -1);
  corrupt.bytes = 3;
  hub_->AddFault(corrupt);
  auto results = Run({task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::ChecksumMismatch) << results.error().ToString();
  EXPECT_NE(results.error().message.find("git blob sha1 " + *task.expected_git_sha1),
            std::string::npos)
      << results.error().message;
}

TEST_F(TransferContractTest, ServerErrorsAreRetried) {
  FileTask task = Task("config.json");
  testing::Fault fault = MakeFault(testing::Fault::Kind::Status, "config.json", 2);
  fault.status = 500;
  hub_->AddFault(fault);
  auto results = Run({task});
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(hub_->Requests("/org/model/resolve/"), 3);
}

TEST_F(TransferContractTest, PersistentServerErrorsFailAfterMaxAttempts) {
  FileTask task = Task("config.json");
  testing::Fault fault = MakeFault(testing::Fault::Kind::Status, "config.json", -1);
  fault.status = 502;
  hub_->AddFault(fault);
  auto results = Run({task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::NetworkError) << results.error().ToString();
  EXPECT_EQ(hub_->Requests("/org/model/resolve/"), Options().max_attempts);
}

TEST_F(TransferContractTest, RateLimitWithinTheCapIsWaitedOut) {
  FileTask task = Task("config.json");
  testing::Fault fault = MakeFault(testing::Fault::Kind::Status, "config.json", 1);
  fault.status = 429;
  fault.retry_after_seconds = 1;
  hub_->AddFault(fault);
  HubOptions options = Options();
  options.backoff_cap = std::chrono::seconds(2);
  TransferProgress progress;
  auto results = RunTransfer(options, {task}, progress);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(hub_->Requests("/org/model/resolve/"), 2);
}

TEST_F(TransferContractTest, RateLimitBeyondTheCapIsReturnedWithRetryAfter) {
  FileTask task = Task("config.json");
  testing::Fault fault = MakeFault(testing::Fault::Kind::Status, "config.json", 1);
  fault.status = 429;
  fault.retry_after_seconds = 60;
  hub_->AddFault(fault);
  auto results = Run({task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::RateLimited) << results.error().ToString();
  ASSERT_TRUE(results.error().retry_after.has_value());
  EXPECT_EQ(*results.error().retry_after, std::chrono::seconds(60));
  EXPECT_EQ(hub_->Requests("/org/model/resolve/"), 1);
}

TEST_F(TransferContractTest, CancellationKeepsThePartialFileForResume) {
  FileTask task = Task("model.safetensors");
  testing::Fault slow = MakeFault(testing::Fault::Kind::Slow, "model.safetensors", 1);
  slow.bytes_per_second = 200'000;  // the whole file would take about 1.5 s
  hub_->AddFault(slow);
  TransferProgress progress;
  std::stop_source stop;
  std::optional<Result<std::vector<FileResult>>> result;
  std::thread runner([&] {
    result.emplace(RunTransfer(Options(), {task}, progress, stop.get_token()));
  });
  // Wait (not measure) until some bytes are on disk.
  for (int i = 0;
       i < 2000 && (progress.bytes_done.load() < 60'000 || progress.bytes_per_second.load() == 0);
       ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_GT(progress.bytes_per_second.load(), 0u);  // published while bytes arrive
  stop.request_stop();
  runner.join();
  ASSERT_TRUE(result.has_value());
  ASSERT_FALSE(*result);
  EXPECT_EQ(result->error().reason, Reason::Cancelled) << result->error().ToString();
  EXPECT_FALSE(Exists(task.final_path));
  ASSERT_TRUE(Exists(task.incomplete_path));
  uint64_t kept = fs::file_size(task.incomplete_path);
  EXPECT_GE(kept, 60'000u);
  EXPECT_LT(kept, kWeightsSize);

  // A later run resumes from what was kept.
  uint64_t served_before = hub_->BodyBytesServed("model.safetensors");
  auto again = Run({task});
  ASSERT_TRUE(again) << again.error().ToString();
  EXPECT_EQ(ReadTestFile(task.final_path), *weights_);
  // The fixture may count a slow chunk it wrote into the closed connection after served_before
  // was read, hence a range rather than equality.
  uint64_t served = hub_->BodyBytesServed("model.safetensors") - served_before;
  EXPECT_GE(served, kWeightsSize - kept);
  EXPECT_LT(served, kWeightsSize);
}

TEST_F(TransferContractTest, ExistingFinalFilesAreNotDownloadedAgain) {
  auto tasks = Tasks("model", "org/model");
  auto first = Run(tasks);
  ASSERT_TRUE(first) << first.error().ToString();
  hub_->ResetCounters();
  // Drop the expected sha256 of one LFS file: it is then computed from the file on disk.
  for (auto& t : tasks) {
    t.expected_sha256.reset();
  }
  TransferProgress progress;
  auto second = Run(tasks, "", &progress);
  ASSERT_TRUE(second) << second.error().ToString();
  for (size_t i = 0; i < tasks.size(); ++i) {
    EXPECT_FALSE((*second)[i].downloaded) << tasks[i].path;
    EXPECT_EQ((*second)[i].sha256, (*first)[i].sha256) << tasks[i].path;
  }
  EXPECT_EQ(hub_->Requests("/"), 0);
  EXPECT_EQ(progress.files_done.load(), 4);
  EXPECT_EQ(progress.bytes_done.load(), progress.bytes_total.load());
}

TEST_F(TransferContractTest, FinalFileWithTheWrongSizeIsReplaced) {
  FileTask task = Task("config.json");
  WriteTestFile(task.final_path, "truncated");
  auto results = Run({task});
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_TRUE((*results)[0].downloaded);
  EXPECT_EQ(ReadTestFile(task.final_path), *config_);
}

TEST_F(TransferContractTest, NotEnoughFreeSpaceFailsBeforeAnyRequest) {
  FileTask task = Task("model.safetensors");
  hub_->ResetCounters();
  task.size = uint64_t{1} << 60;
  auto results = Run({task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::InsufficientStorage) << results.error().ToString();
  EXPECT_NE(results.error().message.find(std::to_string(uint64_t{1} << 60)), std::string::npos)
      << results.error().message;
  EXPECT_NE(results.error().message.find("only"), std::string::npos);
  EXPECT_EQ(hub_->Requests("/"), 0);
  EXPECT_FALSE(Exists(task.incomplete_path));
}

TEST_F(TransferContractTest, FullDiskWhileWritingIsInsufficientStorage) {
  if (!Exists("/dev/full")) {
    GTEST_SKIP() << "no /dev/full";
  }
  FileTask task = Task("config.json");
  task.incomplete_path = "/dev/full";  // every write fails with ENOSPC
  auto results = Run({task});
  ASSERT_FALSE(results);
  EXPECT_EQ(results.error().reason, Reason::InsufficientStorage) << results.error().ToString();
  EXPECT_FALSE(Exists(task.final_path));
}

TEST_F(TransferContractTest, TasksSharingABlobFetchItOnce) {
  FileTask first = Task("sub/dir/tokenizer.json");
  FileTask second = first;
  second.path = "copy/tokenizer.json";
  TransferProgress progress;
  auto results = Run({first, second, first}, "", &progress);
  ASSERT_TRUE(results) << results.error().ToString();
  ASSERT_EQ(results->size(), 3u);
  EXPECT_EQ((*results)[0].path, "sub/dir/tokenizer.json");
  EXPECT_TRUE((*results)[0].downloaded);
  EXPECT_EQ((*results)[1].path, "copy/tokenizer.json");
  EXPECT_FALSE((*results)[1].downloaded);
  EXPECT_EQ((*results)[1].sha256, Sha256Hex(*tokenizer_));
  EXPECT_EQ(hub_->BodyBytesServed("sub/dir/tokenizer.json"), tokenizer_->size());
  EXPECT_EQ(progress.files_done.load(), 3);
  EXPECT_EQ(progress.bytes_total.load(), tokenizer_->size());
  EXPECT_EQ(progress.bytes_done.load(), tokenizer_->size());
}

TEST_F(TransferContractTest, ProgressSeededByTheCallerIsAddedTo) {
  FileTask task = Task("config.json");
  TransferProgress progress;
  progress.bytes_total = 1000 + config_->size();  // a file already in the store, plus this one
  progress.bytes_done = 1000;
  progress.files_total = 2;
  progress.files_done = 1;
  auto results = Run({task}, "", &progress);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_EQ(progress.bytes_total.load(), 1000 + config_->size());
  EXPECT_EQ(progress.bytes_done.load(), 1000 + config_->size());
  EXPECT_EQ(progress.files_total.load(), 2);
  EXPECT_EQ(progress.files_done.load(), 2);
}

TEST_F(TransferContractTest, EmptyTaskListSucceeds) {
  TransferProgress progress;
  auto results = Run({}, "", &progress);
  ASSERT_TRUE(results) << results.error().ToString();
  EXPECT_TRUE(results->empty());
  EXPECT_EQ(progress.files_total.load(), 0);
}

// Two plain servers: "hub" answers redirects and "cdn" serves the file; both record whether
// Authorization arrived.
class RedirectTest : public ::testing::Test {
 protected:
  void SetUp() override {
    hub_.Get("/relative", [](const httplib::Request&, httplib::Response& res) {
      res.status = 307;  // a renamed repo
      res.set_header("Location", "/file");
    });
    hub_.Get("/same-host", [this](const httplib::Request&, httplib::Response& res) {
      res.status = 302;
      res.set_header("Location", hub_.Url("/file"));
    });
    hub_.Get("/other-host", [this](const httplib::Request&, httplib::Response& res) {
      res.status = 302;
      res.set_header("Location", cdn_.Url("/file?Signature=secret-signature"));
    });
    for (auto* server : {&hub_, &cdn_}) {
      server->Get("/file", [this, server](const httplib::Request& req, httplib::Response& res) {
        std::lock_guard lock(mu_);
        (server == &hub_ ? hub_auth_ : cdn_auth_).push_back(req.get_header_value("Authorization"));
        res.set_content(kBody, "application/octet-stream");
      });
    }
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
  Result<std::vector<FileResult>> Fetch(const std::string& path) {
    HubOptions options;
    options.endpoint = hub_.Url("");
    options.token = "hf_secret";
    options.max_attempts = 2;
    options.backoff_base = std::chrono::milliseconds(10);
    FileTask task;
    task.path = "file";
    task.url = hub_.Url(path);
    task.size = std::string(kBody).size();
    task.expected_sha256 = Sha256Hex(kBody);
    task.incomplete_path = dir_ + path + ".incomplete";
    task.final_path = dir_ + path;
    TransferProgress progress;
    return RunTransfer(options, {task}, progress);
  }

  static constexpr const char* kBody = "the file's bytes";
  test_util::LocalServer hub_, cdn_;
  test_util::TempDir tmp_{"mc-fetch-redirect"};
  const std::string dir_ = tmp_.path();
  std::mutex mu_;
  std::vector<std::string> hub_auth_, cdn_auth_;
};

TEST_F(RedirectTest, RelativeRedirectKeepsTheToken) {
  auto r = Fetch("/relative");
  ASSERT_TRUE(r) << r.error().ToString();
  std::lock_guard lock(mu_);
  EXPECT_EQ(hub_auth_, std::vector<std::string>{"Bearer hf_secret"});
  EXPECT_TRUE(cdn_auth_.empty());
}

TEST_F(RedirectTest, AbsoluteRedirectToTheSameHostKeepsTheToken) {
  auto r = Fetch("/same-host");
  ASSERT_TRUE(r) << r.error().ToString();
  std::lock_guard lock(mu_);
  EXPECT_EQ(hub_auth_, std::vector<std::string>{"Bearer hf_secret"});
}

TEST_F(RedirectTest, RedirectToAnotherHostDropsTheToken) {
  auto r = Fetch("/other-host");
  ASSERT_TRUE(r) << r.error().ToString();
  std::lock_guard lock(mu_);
  EXPECT_EQ(cdn_auth_, std::vector<std::string>{""});
  EXPECT_TRUE(hub_auth_.empty());
}

}  // namespace
}  // namespace modelcache::fetch
