// fetch/s3_stream.h: Hub files streamed into S3 (radosgw, through the counting proxy; see
// s3_uploader_test.cpp) from the Hub imitation, which redirects LFS files to its CDN and injects
// faults (dropped connections, corrupted bytes). Lives with the store's S3 tests to share their
// radosgw fixture.

#include "fetch/s3_stream.h"

#include <mutex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "fetch/hub_client.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/unit/store/s3_test_env.h"
#include "tests/unit/store/test_util.h"

namespace modelcache::fetch {
namespace {

using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;
using modelcache::testing::Fault;
namespace st = modelcache::store::testing;

using st::kMiB;

class S3UploaderHubStreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const st::S3Env& env = st::SharedS3();
    proxy_ = env.proxy;
    ASSERT_TRUE(st::ProxyReset(proxy_));
    client_ = std::make_unique<store::S3Client>(st::ProxyConfig(env));
    bucket_ = st::UniqueBucket("stream");
    ASSERT_TRUE(st::CreateBucket(*client_, bucket_));

    weights_ = std::string(13 * kMiB + 11, '\0');
    for (size_t i = 0; i < weights_.size(); ++i) {
      weights_[i] = static_cast<char>((i * 2654435761u) >> 11);
    }
    std::string dir = dir_.path() + "/repo";
    st::WriteText(dir + "/model.safetensors", weights_);
    st::WriteText(dir + "/config.json", config_);
    FakeRepoSpec spec;
    spec.id = "org/stream";
    spec.refs["main"] = dir;
    hub_.AddRepo(spec);
    ASSERT_TRUE(hub_.Start());
    options_.endpoint = hub_.url();
    options_.backoff_base = std::chrono::milliseconds(1);
    HubClient hub(options_);
    auto commit = hub.ResolveRevision("model", "org/stream", "main");
    ASSERT_TRUE(commit) << commit.error().message;
    auto files = hub.ListFiles("model", "org/stream", *commit);
    ASSERT_TRUE(files) << files.error().message;
    for (const RepoFile& f : *files) {
      HubFileSource source;
      source.path = f.path;
      source.url = hub.ResolveUrl("model", "org/stream", *commit, f.path);
      source.size = f.size;
      if (f.lfs_sha256) {
        source.expected_sha256 = f.lfs_sha256;
      } else {
        source.expected_git_sha1 = f.blob_id;
      }
      sources_[f.path] = source;
    }
    ASSERT_TRUE(sources_["model.safetensors"].expected_sha256);
  }

  store::UploadOptions SmallParts() {
    store::UploadOptions o;
    o.min_part_size = 5 * kMiB;
    o.single_put_threshold = 1 * kMiB;
    o.parallel_parts = 2;
    return o;
  }

  st::TempDir dir_;
  FakeHub hub_;
  HubOptions options_;
  std::map<std::string, HubFileSource> sources_;
  std::string weights_;
  std::string config_ = "{\"model_type\": \"llama\"}";
  std::string proxy_;
  std::unique_ptr<store::S3Client> client_;
  std::string bucket_;
};

TEST_F(S3UploaderHubStreamTest, LfsFileGoesFromTheCdnIntoParallelParts) {
  store::S3Uploader uploader(*client_, SmallParts());
  uint64_t progressed = 0;
  auto r = StreamHubFileToS3(options_, uploader, sources_["model.safetensors"], bucket_,
                             "a/model.safetensors", [&](uint64_t n) { progressed += n; });
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->multipart);
  EXPECT_EQ(r->parts, 3);
  EXPECT_EQ(progressed, weights_.size());
  EXPECT_EQ(r->object.Meta("sha256"), Sha256Hex(weights_));
  EXPECT_EQ(st::ProxyStats(proxy_)["UploadPart"], 3);
  auto back = client_->GetObject(bucket_, "a/model.safetensors");
  ASSERT_TRUE(back);
  EXPECT_TRUE(*back == weights_);
}

TEST_F(S3UploaderHubStreamTest, RegularFileIsCheckedAgainstItsGitBlobSha1) {
  store::S3Uploader uploader(*client_, SmallParts());
  auto r = StreamHubFileToS3(options_, uploader, sources_["config.json"], bucket_, "a/config.json");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->multipart);
  EXPECT_EQ(r->sha256_hex, Sha256Hex(config_));
  auto back = client_->GetObject(bucket_, "a/config.json");
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, config_);

  ASSERT_TRUE(st::ProxyReset(proxy_));
  HubFileSource wrong = sources_["config.json"];
  wrong.expected_git_sha1 = std::string(40, '0');
  auto bad = StreamHubFileToS3(options_, uploader, wrong, bucket_, "a/bad.json");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::ChecksumMismatch) << bad.error().message;
  EXPECT_EQ(st::ProxyStats(proxy_)["PutObject"], 0);
}

TEST_F(S3UploaderHubStreamTest, ReadHubFileReadsARegularFileWholeAndChecksItsSha1) {
  auto got = ReadHubFile(options_, sources_["config.json"], 1 * kMiB);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(*got, config_);

  HubFileSource wrong = sources_["config.json"];
  wrong.expected_git_sha1 = std::string(40, '0');
  auto bad = ReadHubFile(options_, wrong, 1 * kMiB);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::ChecksumMismatch) << bad.error().message;

  auto big = ReadHubFile(options_, sources_["config.json"], config_.size() - 1);
  ASSERT_FALSE(big);
  EXPECT_EQ(big.error().reason, Reason::InvalidSpec);
  EXPECT_NE(big.error().message.find("config.json"), std::string::npos) << big.error().message;
}

TEST_F(S3UploaderHubStreamTest, CorruptedBytesAbortTheUploadAndPublishNothing) {
  Fault corrupt;
  corrupt.kind = Fault::Kind::Corrupt;
  corrupt.path_glob = "*model.safetensors";
  corrupt.bytes = 7 * kMiB;
  corrupt.count = -1;
  hub_.AddFault(corrupt);
  store::S3Uploader uploader(*client_, SmallParts());
  auto r = StreamHubFileToS3(options_, uploader, sources_["model.safetensors"], bucket_,
                             "a/model.safetensors");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::ChecksumMismatch) << r.error().message;
  auto stats = st::ProxyStats(proxy_);
  EXPECT_EQ(stats["AbortMultipartUpload"], 1);
  EXPECT_EQ(stats["CompleteMultipartUpload"], 0);
  auto head = client_->HeadObject(bucket_, "a/model.safetensors");
  ASSERT_TRUE(head);
  EXPECT_FALSE(*head);
  auto unfinished = client_->ListMultipartUploads(bucket_, "a/");
  ASSERT_TRUE(unfinished);
  EXPECT_TRUE(unfinished->empty());
}

TEST_F(S3UploaderHubStreamTest, ADroppedConnectionResumesWithARangeRequest) {
  Fault drop;
  drop.kind = Fault::Kind::DropAfter;
  drop.path_glob = "*model.safetensors";
  drop.bytes = 6 * kMiB + 5;
  hub_.AddFault(drop);
  store::S3Uploader uploader(*client_, SmallParts());
  auto r = StreamHubFileToS3(options_, uploader, sources_["model.safetensors"], bucket_,
                             "a/model.safetensors");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->parts, 3);
  auto back = client_->GetObject(bucket_, "a/model.safetensors");
  ASSERT_TRUE(back);
  EXPECT_TRUE(*back == weights_);
}

// Four ranges of 4 MiB (the last 1 MiB + 11 bytes), at most three in flight: every byte comes
// from the CDN once, the Hub is asked for the file only until a range has been redirected, and
// the object is the file.
TEST_F(S3UploaderHubStreamTest, AnLfsFileComesAsRangesOnSeveralConnections) {
  std::vector<std::string> lines;
  std::mutex mu;
  FakeHub hub;
  hub.SetRequestLogger([&](const std::string& line) {
    std::lock_guard lock(mu);
    lines.push_back(line);
  });
  FakeRepoSpec spec;
  spec.id = "org/stream";
  spec.refs["main"] = dir_.path() + "/repo";
  hub.AddRepo(spec);
  ASSERT_TRUE(hub.Start());
  HubOptions options = options_;
  options.endpoint = hub.url();
  HubFileSource source = sources_["model.safetensors"];
  source.url = HubClient(options).ResolveUrl("model", "org/stream",
                                             hub.CommitOf("model", "org/stream", "main"),
                                             "model.safetensors");

  store::S3Uploader uploader(*client_, SmallParts());
  StreamOptions ranged{.connections = 3, .segment_size = 4 * kMiB};
  auto r = StreamHubFileToS3(options, uploader, source, bucket_, "a/model.safetensors", {}, {},
                             ranged);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->object.Meta("sha256"), Sha256Hex(weights_));
  auto back = client_->GetObject(bucket_, "a/model.safetensors");
  ASSERT_TRUE(back);
  EXPECT_TRUE(*back == weights_);
  EXPECT_EQ(hub.BodyBytesServed("model.safetensors"), weights_.size());
  std::lock_guard lock(mu);
  int resolves = 0;
  int ranges = 0;
  for (const auto& line : lines) {
    resolves += line.rfind("hub GET ", 0) == 0 && line.find("/resolve/") != std::string::npos;
    ranges += line.rfind("cdn GET ", 0) == 0 && line.find(" 206") != std::string::npos;
  }
  EXPECT_EQ(ranges, 4) << ::testing::PrintToString(lines);
  EXPECT_GE(resolves, 1);
  EXPECT_LE(resolves, 3) << ::testing::PrintToString(lines);
}

// Ranges against a CDN that ignores Range (every answer the whole file, 200), one that drops a
// connection mid-range, and one that corrupts a byte: each range takes only its own bytes, a
// dropped one resumes, a corrupted one fails the sha256 and publishes nothing.
TEST_F(S3UploaderHubStreamTest, RangesSurviveIgnoredRangeAndDropsAndStillCatchCorruption) {
  auto stream_with = [&](Fault fault, const std::string& key) {
    fault.path_glob = "*model.safetensors";
    hub_.ClearFaults();
    hub_.AddFault(fault);
    store::S3Uploader uploader(*client_, SmallParts());
    return StreamHubFileToS3(options_, uploader, sources_["model.safetensors"], bucket_, key, {},
                             {}, StreamOptions{.connections = 3, .segment_size = 4 * kMiB});
  };
  auto expect_object = [&](const std::string& key) {
    auto back = client_->GetObject(bucket_, key);
    ASSERT_TRUE(back) << key;
    EXPECT_TRUE(*back == weights_) << key;
  };
  Fault ignore;
  ignore.kind = Fault::Kind::IgnoreRange;
  ignore.count = -1;
  auto ignored = stream_with(ignore, "ignored/model.safetensors");
  ASSERT_TRUE(ignored) << ignored.error().message;
  expect_object("ignored/model.safetensors");

  Fault drop;
  drop.kind = Fault::Kind::DropAfter;
  drop.bytes = 1 * kMiB + 3;
  drop.count = 2;
  auto dropped = stream_with(drop, "dropped/model.safetensors");
  ASSERT_TRUE(dropped) << dropped.error().message;
  expect_object("dropped/model.safetensors");

  Fault corrupt;
  corrupt.kind = Fault::Kind::Corrupt;
  corrupt.bytes = 9 * kMiB + 1;  // in the third range
  corrupt.count = -1;
  auto corrupted = stream_with(corrupt, "corrupt/model.safetensors");
  ASSERT_FALSE(corrupted);
  EXPECT_EQ(corrupted.error().reason, Reason::ChecksumMismatch) << corrupted.error().message;
  auto head = client_->HeadObject(bucket_, "corrupt/model.safetensors");
  ASSERT_TRUE(head);
  EXPECT_FALSE(*head);
}

}  // namespace
}  // namespace modelcache::fetch
