// S3ArtifactStore::Pull through a download function: with the transfer engine
// (fetch/s3_pull.h: presigned URLs as FileTasks, parallel ranges, verification) against the
// in-memory S3 imitation, and the store's own checks around any download function.

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "fetch/s3_pull.h"
#include "fetch/transfer_engine.h"
#include "store/s3_store.h"
#include "tests/unit/store/fake_s3.h"
#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {

namespace fs = std::filesystem;
using testing::FakeS3;
using testing::RandomBytes;
using testing::ReadText;
using testing::TempDir;
using testing::WriteText;

// Regular files under `dir`, relative paths, sorted.
std::vector<std::string> Tree(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) {
      out.push_back(fs::relative(e.path(), dir).string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

class S3PullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    s3_.CreateBucket("models");
    AwsConfig config;
    config.credentials = {"AKIDEXAMPLE", "secret-never-shown", ""};
    config.region = "us-east-1";
    config.endpoint_url = s3_.endpoint();
    config.custom_endpoint = true;
    S3ClientOptions options;
    options.max_attempts = 1;
    auto store = S3ArtifactStore::Open("s3://models/team", config, options);
    ASSERT_TRUE(store) << store.error().message;
    store_ = std::move(*store);
  }

  // Publishes `files` as version of artifact "qwen"; returns its manifest.
  ArtifactManifest Publish(const std::map<std::string, std::string>& files) {
    ArtifactManifest m;
    m.name = "qwen";
    m.source_type = "model";
    m.source_repo = "org/qwen";
    m.source_revision = "main";
    m.source_commit = std::string(40, 'a');
    for (const auto& [path, content] : files) {
      m.files.push_back({path, content.size(), Sha256Hex(content)});
    }
    FinalizeIdentity(m);
    std::string dir = tmp_.path() + "/local/" + m.version;
    for (const auto& [path, content] : files) {
      WriteText(dir + "/" + path, content);
    }
    S3TransferProgress progress;
    auto published = store_->Publish(dir, m, progress);
    EXPECT_TRUE(published) << published.error().message;
    return m;
  }

  // A transfer engine splitting files into 256 KiB ranges, four in flight.
  static fetch::TransferEngineOptions EngineOptions() {
    fetch::TransferEngineOptions o;
    o.chunk_size = 256 << 10;
    o.min_chunk_size = 64 << 10;
    o.max_connections_per_job = 4;
    return o;
  }

  FakeS3 s3_;
  TempDir tmp_;
  std::unique_ptr<S3ArtifactStore> store_;
};

TEST_F(S3PullTest, TheEngineFetchesPresignedRangesBitExactly) {
  std::map<std::string, std::string> files{
      {"config.json", "{}"}, {"w/model.bin", RandomBytes((3 << 20) + 77, 3)}, {"empty.txt", ""}};
  ArtifactManifest m = Publish(files);
  fetch::TransferEngine engine(EngineOptions());
  auto transfer = engine.NewTransfer(fetch::S3PullOptions{});
  fetch::TransferProgress downloaded;
  s3_.ClearRequests();

  std::string out = tmp_.path() + "/node/qwen";
  S3TransferProgress progress;
  auto pulled = store_->Pull("qwen", "", out, progress, {},
                             fetch::TransferPullDownload(*transfer, downloaded));
  ASSERT_TRUE(pulled) << pulled.error().ToString();
  EXPECT_EQ(pulled->id, m.id);
  for (const auto& [path, content] : files) {
    EXPECT_EQ(ReadText(out + "/" + path), content) << path;
  }
  EXPECT_EQ(Tree(out), (std::vector<std::string>{"config.json", "empty.txt", "modelcache.json",
                                                 "w/model.bin"}));
  // Nothing left beside the tree: no staging, no partial data.
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp_.path() + "/node"), {}), 1);
  EXPECT_EQ(downloaded.bytes_done, m.size_bytes);
  EXPECT_EQ(progress.bytes_done, m.size_bytes);
  EXPECT_EQ(progress.files_done, 3);
  // 3 MiB + 77 bytes in ranges of at most 256 KiB: at least 13 requests, each presigned (no
  // Authorization header; the manifest reads before them are header-signed).
  EXPECT_GE(s3_.Count("GetObject", "/w/model.bin"), 13U);
  for (const auto& r : s3_.Requests()) {
    if (r.key.find("/w/model.bin") != std::string::npos) {
      EXPECT_EQ(r.authorization, "") << r.key;
    }
  }
}

TEST_F(S3PullTest, BytesNotMatchingTheManifestAreChecksumMismatchAndTheOldTreeStays) {
  ArtifactManifest m = Publish({{"a.txt", "good"}});
  fetch::TransferEngine engine(EngineOptions());
  fetch::S3PullOptions retries;
  retries.max_attempts = 2;
  retries.backoff_base = std::chrono::milliseconds(1);
  auto transfer = engine.NewTransfer(retries);
  fetch::TransferProgress downloaded;
  std::string out = tmp_.path() + "/out";
  S3TransferProgress p;
  ASSERT_TRUE(store_->Pull("qwen", "", out, p, {},
                           fetch::TransferPullDownload(*transfer, downloaded)));

  s3_.SetObject("models", "team/artifacts/qwen/" + m.version + "/a.txt",
                {"evil", {{"sha256", Sha256Hex("good")}}});
  WriteText(out + "/a.txt", "gone");  // forces a download
  fetch::TransferProgress again;
  S3TransferProgress p2;
  auto bad = store_->Pull("qwen", "", out, p2, {}, fetch::TransferPullDownload(*transfer, again));
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::ChecksumMismatch);
  EXPECT_NE(bad.error().message.find("a.txt"), std::string::npos) << bad.error().message;
  EXPECT_EQ(bad.error().message.find("X-Amz-"), std::string::npos) << bad.error().message;
  EXPECT_EQ(ReadText(out + "/a.txt"), "gone");
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp_.path()), {}), 2);  // local/ and out/
}

// NoSuchKey answers the same however often it is asked: it fails the pull at once (as S3Client
// classifies its own calls), where a 503 SlowDown would be retried.
TEST_F(S3PullTest, AnObjectGoneSinceTheManifestFailsAtOnceNamedWithItsS3Code) {
  // b.txt longer than the imitation's error body, which httplib would cut to the Range asked.
  ArtifactManifest m = Publish({{"a.txt", "alpha"}, {"b.txt", RandomBytes(1000, 4)}});
  s3_.DeleteObject("models", "team/artifacts/qwen/" + m.version + "/b.txt");
  fetch::TransferEngine engine(EngineOptions());
  fetch::S3PullOptions retries;
  retries.max_attempts = 5;
  retries.backoff_base = std::chrono::milliseconds(1);
  auto transfer = engine.NewTransfer(retries);
  fetch::TransferProgress downloaded;
  S3TransferProgress p;
  s3_.ClearRequests();
  auto r = store_->Pull("qwen", "", tmp_.path() + "/out", p, {},
                        fetch::TransferPullDownload(*transfer, downloaded));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_EQ(s3_.Count("GetObject", "/b.txt"), 1u) << "a permanent answer is not retried";
  EXPECT_NE(r.error().message.find("answered HTTP 404 NoSuchKey for b.txt"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(r.error().message.find("X-Amz-"), std::string::npos) << r.error().message;
}

TEST_F(S3PullTest, ADownloadFunctionGetsPresignedObjectsAndOnlyAnInterruptionKeepsItsData) {
  ArtifactManifest m = Publish({{"a.txt", "alpha"}, {"d/b.bin", "beta"}});
  std::string out = tmp_.path() + "/out";
  std::vector<PullObject> seen;
  auto failing = [&](const std::vector<PullObject>& objects, std::stop_token) -> VoidResult {
    seen = objects;
    for (const auto& o : objects) {
      EXPECT_TRUE(fs::is_directory(fs::path(o.dest).parent_path())) << o.dest;
      EXPECT_TRUE(fs::is_directory(fs::path(o.scratch).parent_path())) << o.scratch;
    }
    return Error(Reason::NetworkError, "the network went away");
  };
  S3TransferProgress p;
  auto r = store_->Pull("qwen", "", out, p, {}, failing);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "the network went away");
  ASSERT_EQ(seen.size(), 2U);
  EXPECT_EQ(seen[0].path, "a.txt");
  EXPECT_EQ(seen[0].key, "team/artifacts/qwen/" + m.version + "/a.txt");
  EXPECT_EQ(seen[0].size, 5U);
  EXPECT_EQ(seen[0].sha256, Sha256Hex("alpha"));
  EXPECT_EQ(seen[0].url.rfind(s3_.endpoint() + "/models/team/artifacts/qwen/" + m.version +
                                  "/a.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&",
                              0),
            0U)
      << seen[0].url;
  EXPECT_NE(seen[0].url.find("&X-Amz-Expires=604800&"), std::string::npos) << seen[0].url;
  EXPECT_EQ(fs::path(seen[1].dest).filename(), "b.bin");
  EXPECT_EQ(fs::path(seen[0].dest).parent_path(), out + ".partial-" + m.version);
  // An interrupted transfer (NetworkError) leaves the staging directory and the scratch space
  // for a resume; the target was never made.
  EXPECT_TRUE(fs::is_directory(out + ".partial-" + m.version));
  EXPECT_TRUE(fs::is_directory(out + ".partial-" + m.version + ".incomplete"));
  EXPECT_FALSE(fs::exists(out));

  // A download that claims success without leaving the files is caught, and nothing is kept.
  auto lazy = [](const std::vector<PullObject>&, std::stop_token) -> VoidResult { return {}; };
  auto caught = store_->Pull("qwen", "", out, p, {}, lazy);
  ASSERT_FALSE(caught);
  EXPECT_EQ(caught.error().reason, Reason::Internal);
  EXPECT_NE(caught.error().message.find("a.txt"), std::string::npos) << caught.error().message;
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp_.path()), {}), 1);  // local/
}

TEST_F(S3PullTest, AnInterruptedPullResumesWithoutFetchingVerifiedFilesAgain) {
  std::map<std::string, std::string> files{{"a.txt", RandomBytes(300000, 1)},
                                           {"b.bin", RandomBytes(700000, 2)}};
  ArtifactManifest m = Publish(files);
  std::string out = tmp_.path() + "/out";
  // The first pull verified a.txt into place, then lost the network.
  auto interrupted = [&](const std::vector<PullObject>& objects, std::stop_token) -> VoidResult {
    WriteText(objects[0].dest, files["a.txt"]);
    return Error(Reason::NetworkError, "connection reset");
  };
  S3TransferProgress p;
  ASSERT_FALSE(store_->Pull("qwen", "", out, p, {}, interrupted));
  // Another version's leftover from a pull killed long ago, and its partial data.
  WriteText(out + ".partial-0123456789ab/x", "old");
  WriteText(out + ".partial-0123456789ab.incomplete/0", "old");

  s3_.ClearRequests();
  fetch::TransferEngine engine(EngineOptions());
  auto transfer = engine.NewTransfer(fetch::S3PullOptions{});
  fetch::TransferProgress downloaded;
  S3TransferProgress p2;
  auto resumed = store_->Pull("qwen", "", out, p2, {},
                              fetch::TransferPullDownload(*transfer, downloaded));
  ASSERT_TRUE(resumed) << resumed.error().ToString();
  for (const auto& [path, content] : files) {
    EXPECT_EQ(ReadText(out + "/" + path), content) << path;
  }
  EXPECT_EQ(s3_.Count("GetObject", "/a.txt"), 0U);
  EXPECT_GE(s3_.Count("GetObject", "/b.bin"), 1U);
  // Only the tree is left: no staging of this version or the other one, no partial data.
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(tmp_.path())) {
    left.push_back(e.path().filename().string());
  }
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"local", "out"}));
}

TEST_F(S3PullTest, APullIntoTheSameDirectoryAtTheSameTimeIsRefused) {
  ArtifactManifest m = Publish({{"a.txt", "alpha"}});
  std::string out = tmp_.path() + "/out";
  std::string staging = out + ".partial-" + m.version;
  fs::create_directories(staging);
  int fd = ::open(staging.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);  // as the other pull holds it
  fetch::TransferEngine engine(EngineOptions());
  auto transfer = engine.NewTransfer(fetch::S3PullOptions{});
  fetch::TransferProgress downloaded;
  S3TransferProgress p;
  auto refused = store_->Pull("qwen", "", out, p, {},
                              fetch::TransferPullDownload(*transfer, downloaded));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().reason, Reason::StorageError);
  EXPECT_NE(refused.error().message.find("being pulled by another process"), std::string::npos)
      << refused.error().message;
  EXPECT_TRUE(fs::is_directory(staging));  // not removed under the other pull
  ::close(fd);
  auto later = store_->Pull("qwen", "", out, p, {},
                            fetch::TransferPullDownload(*transfer, downloaded));
  ASSERT_TRUE(later) << later.error().ToString();
  EXPECT_EQ(ReadText(out + "/a.txt"), "alpha");
}

}  // namespace
}  // namespace modelcache::store
