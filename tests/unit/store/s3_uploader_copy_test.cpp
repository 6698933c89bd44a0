// Server-side copies of objects over the CopyObject limit: S3ArtifactStore copies them as a
// multipart upload of UploadPartCopy parts. Against radosgw (the shared fixture, through the
// counting proxy: registered with the S3Uploader* tests, FIXTURES_REQUIRED radosgw), with the
// store's 5 GiB threshold lowered to 6 MiB and 5 MiB parts so that a 12 MiB file takes that path.

#include <random>

#include <gtest/gtest.h>

#include "common/sha256.h"
#include "store/s3_store.h"
#include "tests/unit/store/s3_test_env.h"
#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {

using testing::kMiB;

using testing::RandomBytes;

class S3UploaderPartCopyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const testing::S3Env& env = testing::SharedS3();
    proxy_ = env.proxy;
    ASSERT_TRUE(testing::ProxyReset(proxy_));
    config_ = testing::ProxyConfig(env);
    S3Client client(config_);
    bucket_ = testing::UniqueBucket("partcopy");
    auto made = testing::CreateBucket(client, bucket_);
    ASSERT_TRUE(made) << made.error().message;
  }

  std::unique_ptr<S3ArtifactStore> Store(uint64_t max_copy_object_size) {
    S3StoreOptions o;
    o.max_copy_object_size = max_copy_object_size;
    o.copy_part_size = 5 * kMiB;
    auto store = S3ArtifactStore::Open("s3://" + bucket_ + "/p", config_, {}, o);
    EXPECT_TRUE(store) << store.error().message;
    return std::move(*store);
  }

  // A local version of artifact "big" holding `files`; returns its manifest (dir in dir_).
  ArtifactManifest LocalVersion(const std::map<std::string, std::string>& files) {
    ArtifactManifest m;
    m.name = "big";
    m.source_type = "model";
    m.source_repo = "org/big";
    m.source_revision = "main";
    m.source_commit = std::string(40, 'a');
    for (const auto& [path, content] : files) {
      m.files.push_back({path, content.size(), Sha256Hex(content)});
    }
    FinalizeIdentity(m);
    dir_ = tmp_.path() + "/" + m.version;
    for (const auto& [path, content] : files) {
      testing::WriteText(dir_ + "/" + path, content);
    }
    return m;
  }

  testing::TempDir tmp_;
  std::string proxy_;
  AwsConfig config_;
  std::string bucket_;
  std::string dir_;
};

TEST_F(S3UploaderPartCopyTest, ObjectsOverTheCopyLimitAreCopiedInParts) {
  const std::string weights = RandomBytes(12 * kMiB + 4321, 7);
  auto store = Store(6 * kMiB);
  ArtifactManifest v1 = LocalVersion({{"config.json", "{\"v\": 1}"}, {"w.bin", weights}});
  S3TransferProgress p1;
  auto first = store->Publish(dir_, v1, p1);
  ASSERT_TRUE(first) << first.error().message;

  // A new version with the same weights: copied from the current version, in three parts of at
  // most 5 MiB (5 + 5 + 2), not uploaded (no byte of them passes through this process).
  ArtifactManifest v2 =
      LocalVersion({{"config.json", "{\"v\": 2}"}, {"w.bin", weights}, {"extra.txt", "x"}});
  ASSERT_NE(v2.version, v1.version);
  ASSERT_TRUE(testing::ProxyReset(proxy_));
  S3TransferProgress p2;
  auto second = store->Publish(dir_, v2, p2);
  ASSERT_TRUE(second) << second.error().message;
  EXPECT_EQ(p2.files_deduplicated, 1);
  auto stats = testing::ProxyStats(proxy_);
  // UploadPartCopy is a PUT with partNumber: the proxy counts it as UploadPart.
  EXPECT_EQ(stats["CreateMultipartUpload"], 1);
  EXPECT_EQ(stats["UploadPart"], 3);
  EXPECT_EQ(stats["CompleteMultipartUpload"], 1);

  S3Client client(config_);
  std::string key = "p/artifacts/big/" + v2.version + "/w.bin";
  auto head = client.HeadObject(bucket_, key);
  ASSERT_TRUE(head && *head) << (head ? "missing" : head.error().message);
  EXPECT_EQ((*head)->size, weights.size());
  EXPECT_EQ((*head)->Meta("sha256"), Sha256Hex(weights));
  // A multipart object's ETag ends in "-<parts>".
  EXPECT_EQ((*head)->etag.substr((*head)->etag.size() - 2), "-3") << (*head)->etag;
  auto body = client.GetObject(bucket_, key);
  ASSERT_TRUE(body) << body.error().message;
  EXPECT_TRUE(*body == weights);
  auto left = client.ListMultipartUploads(bucket_, "p/");
  ASSERT_TRUE(left);
  EXPECT_TRUE(left->empty());
}

TEST_F(S3UploaderPartCopyTest, AFailedPartAbortsTheCopyAndTheNextPublishCompletesIt) {
  const std::string weights = RandomBytes(11 * kMiB, 8);
  auto store = Store(6 * kMiB);
  ArtifactManifest v1 = LocalVersion({{"config.json", "{\"v\": 1}"}, {"w.bin", weights}});
  S3TransferProgress p1;
  ASSERT_TRUE(store->Publish(dir_, v1, p1));

  ArtifactManifest v2 =
      LocalVersion({{"config.json", "{\"v\": 2}"}, {"w.bin", weights}, {"extra.txt", "x"}});
  // Every part copy is refused (a 403 is not retried): the copy fails and leaves no upload.
  ASSERT_TRUE(testing::ProxyReset(proxy_));
  ASSERT_TRUE(testing::ProxyFail(proxy_, "UploadPart", 100, 403, "AccessDenied"));
  S3TransferProgress p2;
  auto refused = store->Publish(dir_, v2, p2);
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().reason, Reason::StorageError);
  EXPECT_NE(refused.error().message.find("UploadPartCopy"), std::string::npos)
      << refused.error().message;
  EXPECT_NE(refused.error().message.find("AccessDenied"), std::string::npos);
  S3Client client(config_);
  auto left = client.ListMultipartUploads(bucket_, "p/");
  ASSERT_TRUE(left);
  EXPECT_TRUE(left->empty());

  ASSERT_TRUE(testing::ProxyReset(proxy_));
  S3TransferProgress p3;
  auto published = store->Publish(dir_, v2, p3);
  ASSERT_TRUE(published) << published.error().message;
  auto body = client.GetObject(bucket_, "p/artifacts/big/" + v2.version + "/w.bin");
  ASSERT_TRUE(body);
  EXPECT_TRUE(*body == weights);
}

}  // namespace
}  // namespace modelcache::store
