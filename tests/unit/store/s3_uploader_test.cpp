// S3Uploader against a real S3: Ceph's radosgw (tests/fixtures/radosgw/start-radosgw.sh), which
// checks SigV4 (aws-chunked chunk signatures included) and Content-MD5 like AWS. Requests go
// through tests/fixtures/s3proxy/s3proxy.py, which counts them by operation and injects 503
// SlowDown answers on demand, so the tests can tell which parts were (re)uploaded.
//
// radosgw is shared: the ctest fixture starts one and names its environment file in
// MC_RADOSGW_ENV; run directly, the binary starts its own (once per process).

#include "store/s3_uploader.h"

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/http_client.h"
#include "common/sha256.h"
#include "tests/unit/store/s3_test_env.h"
#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {

using testing::TempDir;

using testing::kMiB;

using testing::RandomBytes;

class S3UploaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const testing::S3Env& env = testing::SharedS3();
    proxy_ = env.proxy;
    ASSERT_TRUE(testing::ProxyReset(proxy_));
    client_ = std::make_unique<S3Client>(testing::ProxyConfig(env), ClientOptions());
    bucket_ = testing::UniqueBucket("upload");
    auto made = testing::CreateBucket(*client_, bucket_);
    ASSERT_TRUE(made) << made.error().message;
  }

  S3ClientOptions ClientOptions() {
    S3ClientOptions options;
    // Retries wait nothing here (the backoff values themselves are s3_client_test's business).
    options.sleep = [this](std::chrono::milliseconds, std::stop_token) { ++sleeps_; };
    return options;
  }

  std::string WriteFile(const std::string& name, const std::string& data) {
    std::string path = dir_.path() + "/" + name;
    testing::WriteText(path, data);
    return path;
  }

  std::map<std::string, int> Stats() { return testing::ProxyStats(proxy_); }

  std::string Read(const std::string& key) {
    auto r = client_->GetObject(bucket_, key);
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : std::string();
  }

  std::vector<MultipartUploadInfo> Unfinished(const std::string& key) {
    auto r = client_->ListMultipartUploads(bucket_, key);
    EXPECT_TRUE(r) << r.error().message;
    return r ? *r : std::vector<MultipartUploadInfo>{};
  }

  // Small parts so a few MiB make several of them (radosgw refuses parts under 5 MiB but the
  // last, like AWS).
  static UploadOptions SmallParts(int parallel = 4) {
    UploadOptions o;
    o.min_part_size = 5 * kMiB;
    o.single_put_threshold = 1 * kMiB;
    o.parallel_parts = parallel;
    return o;
  }

  TempDir dir_;
  std::string proxy_;
  std::unique_ptr<S3Client> client_;
  std::string bucket_;
  std::atomic<int> sleeps_{0};
};

TEST(S3UploaderPartSize, AdaptsToThePartLimit) {
  AwsConfig config;
  S3Client client(config);
  S3Uploader uploader(client, {});
  EXPECT_EQ(uploader.PartSizeFor(100 * kMiB), 8 * kMiB);
  EXPECT_EQ(uploader.PartSizeFor(kUnknownSize), 8 * kMiB);
  // 100 GiB / 10 000 = 10.24 MiB, rounded up to whole MiB.
  EXPECT_EQ(uploader.PartSizeFor(100ull << 30), 11 * kMiB);
  for (uint64_t size : {80ull << 30, (80ull << 30) + 1, 1ull << 40, 5ull << 40}) {
    uint64_t part = uploader.PartSizeFor(size);
    EXPECT_LE((size + part - 1) / part, 10'000u) << size;
    EXPECT_EQ(part % kMiB, 0u);
  }
  UploadOptions tiny;
  tiny.min_part_size = 1;  // raised to S3's 5 MiB minimum
  EXPECT_EQ(S3Uploader(client, tiny).PartSizeFor(1), 5 * kMiB);
}

TEST_F(S3UploaderTest, SmallFileGoesInOnePut) {
  std::string data = RandomBytes(300 * 1024, 1);
  std::string path = WriteFile("small.bin", data);
  S3Uploader uploader(*client_, SmallParts());
  uint64_t progressed = 0;
  auto r = uploader.UploadFile(bucket_, "m/small.bin", path, Sha256Hex(data),
                               [&](uint64_t n) { progressed += n; });
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->multipart);
  EXPECT_EQ(r->size, data.size());
  EXPECT_EQ(progressed, data.size());
  EXPECT_EQ(r->object.Meta("sha256"), Sha256Hex(data));
  auto stats = Stats();
  EXPECT_EQ(stats["PutObject"], 1);
  EXPECT_EQ(stats["CreateMultipartUpload"], 0);
  EXPECT_EQ(Read("m/small.bin"), data);
}

TEST_F(S3UploaderTest, ParallelPartsReassembleBitExactly) {
  std::string data = RandomBytes(23 * kMiB + 12345, 2);
  std::string path = WriteFile("big.bin", data);
  S3Uploader uploader(*client_, SmallParts(4));
  std::atomic<uint64_t> progressed{0};
  auto r = uploader.UploadFile(bucket_, "m/big.bin", path, "",
                               [&](uint64_t n) { progressed += n; });
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->multipart);
  EXPECT_EQ(r->parts, 5);
  EXPECT_EQ(r->parts_reused, 0);
  EXPECT_EQ(r->sha256_hex, Sha256Hex(data));
  EXPECT_EQ(r->object.size, data.size());
  EXPECT_EQ(r->object.Meta("sha256"), Sha256Hex(data));
  EXPECT_EQ(progressed.load(), data.size());
  auto stats = Stats();
  EXPECT_EQ(stats["UploadPart"], 5);
  EXPECT_EQ(stats["CompleteMultipartUpload"], 1);
  EXPECT_EQ(stats["HeadObject"], 1);
  EXPECT_TRUE(Read("m/big.bin") == data);
}

TEST_F(S3UploaderTest, UnsignedPartsWithContentMd5AreAccepted) {
  std::string data = RandomBytes(11 * kMiB, 3);
  std::string path = WriteFile("signed.bin", data);
  UploadOptions o = SmallParts(2);
  o.sign_payload = false;
  S3Uploader uploader(*client_, o);
  auto r = uploader.UploadFile(bucket_, "signed.bin", path, Sha256Hex(data));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->parts, 3);
  EXPECT_TRUE(Read("signed.bin") == data);
}

TEST_F(S3UploaderTest, ExistingObjectWithTheSameSha256IsNotUploadedAgain) {
  std::string data = RandomBytes(6 * kMiB, 4);
  std::string path = WriteFile("dup.bin", data);
  S3Uploader uploader(*client_, SmallParts());
  ASSERT_TRUE(uploader.UploadFile(bucket_, "dup.bin", path, Sha256Hex(data)));
  ASSERT_TRUE(testing::ProxyReset(proxy_));
  auto again = uploader.UploadFile(bucket_, "dup.bin", path, Sha256Hex(data));
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_TRUE(again->skipped);
  auto stats = Stats();
  EXPECT_EQ(stats["HeadObject"], 1);
  EXPECT_EQ(stats["UploadPart"] + stats["PutObject"] + stats["CreateMultipartUpload"], 0);
}

TEST_F(S3UploaderTest, InterruptedUploadResumesWithOnlyTheMissingParts) {
  std::string data = RandomBytes(30 * kMiB + 7, 5);  // 7 parts of 5 MiB (the last 7 bytes)
  std::string path = WriteFile("resume.bin", data);
  const std::string sha = Sha256Hex(data);

  // First run: one part at a time, stopped once 12 MiB went out; the upload is left in place.
  UploadOptions o = SmallParts(1);
  o.abort_on_stop = false;
  {
    S3Uploader uploader(*client_, o);
    std::stop_source stop;
    uint64_t sent = 0;
    auto r = uploader.UploadFile(bucket_, "resume.bin", path, sha,
                                 [&](uint64_t n) {
                                   sent += n;
                                   if (sent >= 12 * kMiB) stop.request_stop();
                                 },
                                 stop.get_token());
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().reason, Reason::Cancelled) << r.error().message;
  }
  ASSERT_EQ(Unfinished("resume.bin").size(), 1u);
  auto listed = client_->ListParts(bucket_, "resume.bin", Unfinished("resume.bin")[0].upload_id);
  ASSERT_TRUE(listed) << listed.error().message;
  const int before = static_cast<int>(listed->size());
  ASSERT_GE(before, 2);
  ASSERT_LT(before, 7);

  // A new uploader (as after a restart) finds the upload and sends only what is missing.
  ASSERT_TRUE(testing::ProxyReset(proxy_));
  S3Uploader uploader(*client_, SmallParts(4));
  auto r = uploader.UploadFile(bucket_, "resume.bin", path, sha);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->parts, 7);
  EXPECT_EQ(r->parts_reused, before);
  auto stats = Stats();
  EXPECT_EQ(stats["CreateMultipartUpload"], 0);
  EXPECT_EQ(stats["ListMultipartUploads"], 1);
  EXPECT_EQ(stats["UploadPart"], 7 - before);
  EXPECT_TRUE(Unfinished("resume.bin").empty());
  EXPECT_TRUE(Read("resume.bin") == data);
}

TEST_F(S3UploaderTest, ResumedUploadOfOtherContentIsRedoneFromScratch) {
  // An unfinished upload of other bytes under the same key: its parts differ (MD5) and its
  // metadata names the other sha256, so the object must not be published with it.
  std::string old_data = RandomBytes(11 * kMiB, 6);
  std::string path = WriteFile("changed.bin", old_data);
  UploadOptions o = SmallParts(1);
  o.abort_on_stop = false;
  {
    S3Uploader uploader(*client_, o);
    std::stop_source stop;
    uint64_t sent = 0;
    auto r = uploader.UploadFile(bucket_, "changed.bin", path, Sha256Hex(old_data),
                                 [&](uint64_t n) {
                                   sent += n;
                                   if (sent > 5 * kMiB) stop.request_stop();
                                 },
                                 stop.get_token());
    ASSERT_FALSE(r);
  }
  ASSERT_EQ(Unfinished("changed.bin").size(), 1u);
  auto listed = client_->ListParts(bucket_, "changed.bin", Unfinished("changed.bin")[0].upload_id);
  ASSERT_TRUE(listed) << listed.error().message;
  ASSERT_GE(listed->size(), 1u);
  std::string new_data = RandomBytes(11 * kMiB, 7);
  testing::WriteText(path, new_data);
  S3Uploader uploader(*client_, SmallParts(2));
  auto r = uploader.UploadFile(bucket_, "changed.bin", path, Sha256Hex(new_data));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->parts_reused, 0);
  EXPECT_EQ(r->object.Meta("sha256"), Sha256Hex(new_data));
  EXPECT_TRUE(Read("changed.bin") == new_data);
}

TEST_F(S3UploaderTest, CancelAbortsTheMultipartUpload) {
  std::string data = RandomBytes(16 * kMiB, 8);
  std::string path = WriteFile("cancel.bin", data);
  S3Uploader uploader(*client_, SmallParts(1));
  std::stop_source stop;
  auto r = uploader.UploadFile(bucket_, "cancel.bin", path, "",
                               [&](uint64_t) { stop.request_stop(); }, stop.get_token());
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::Cancelled);
  EXPECT_EQ(Stats()["AbortMultipartUpload"], 1);
  EXPECT_TRUE(Unfinished("cancel.bin").empty());
  auto head = client_->HeadObject(bucket_, "cancel.bin");
  ASSERT_TRUE(head);
  EXPECT_FALSE(*head);
}

TEST_F(S3UploaderTest, SlowDownAnswersAreRetried) {
  std::string data = RandomBytes(12 * kMiB, 9);
  std::string path = WriteFile("slow.bin", data);
  ASSERT_TRUE(testing::ProxyFail(proxy_, "UploadPart", 3, 503, "SlowDown"));
  ASSERT_TRUE(testing::ProxyFail(proxy_, "CreateMultipartUpload", 1, 503, "SlowDown"));
  S3Uploader uploader(*client_, SmallParts(3));
  auto r = uploader.UploadFile(bucket_, "slow.bin", path, Sha256Hex(data));
  ASSERT_TRUE(r) << r.error().message;
  auto stats = Stats();
  EXPECT_EQ(stats["UploadPart"], 3 + 3);
  EXPECT_EQ(stats["CreateMultipartUpload"], 2);
  EXPECT_EQ(sleeps_.load(), 4);
  EXPECT_TRUE(Read("slow.bin") == data);
}

TEST_F(S3UploaderTest, PersistentSlowDownFailsWithTheCodeAndKeepsTheUpload) {
  std::string data = RandomBytes(11 * kMiB, 10);
  std::string path = WriteFile("down.bin", data);
  ASSERT_TRUE(testing::ProxyFail(proxy_, "UploadPart", 1000, 503, "SlowDown"));
  S3Uploader uploader(*client_, SmallParts(1));
  auto r = uploader.UploadFile(bucket_, "down.bin", path, "");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_NE(r.error().message.find("SlowDown"), std::string::npos) << r.error().message;
  EXPECT_EQ(Stats()["UploadPart"], 5);  // S3ClientOptions::max_attempts, for the first part
  EXPECT_EQ(Unfinished("down.bin").size(), 1u);  // left to be resumed
}

TEST_F(S3UploaderTest, WrongCredentialsAreStorageErrorsNamingTheCodeButNotTheSecret) {
  std::string path = WriteFile("creds.bin", "abc");
  const testing::S3Env& env = testing::SharedS3();
  {
    AwsConfig config = testing::ProxyConfig(env);
    config.credentials.secret_access_key = "not-the-secret-0123456789abcdefghijklmn";
    S3Client bad(config, ClientOptions());
    auto r = S3Uploader(bad, {}).UploadFile(bucket_, "creds.bin", path, "");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().reason, Reason::StorageError);
    EXPECT_NE(r.error().message.find("SignatureDoesNotMatch"), std::string::npos)
        << r.error().message;
    EXPECT_EQ(r.error().message.find(config.credentials.secret_access_key), std::string::npos);
  }
  {
    AwsConfig config = testing::ProxyConfig(env);
    config.credentials.access_key_id = "NOSUCHKEY00000000000";
    S3Client bad(config, ClientOptions());
    auto r = S3Uploader(bad, {}).UploadFile(bucket_, "creds.bin", path, "");
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().reason, Reason::StorageError);
    EXPECT_NE(r.error().message.find("InvalidAccessKeyId"), std::string::npos)
        << r.error().message;
    EXPECT_EQ(r.error().message.find(env.secret_key), std::string::npos);
  }
}

// A reader over `data`, handing out at most `step` bytes per call.
UploadReadFn Reader(const std::string& data, size_t step, size_t* offset) {
  return [&data, step, offset](char* out, size_t n) -> Result<size_t> {
    size_t take = std::min({n, step, data.size() - *offset});
    std::memcpy(out, data.data() + *offset, take);
    *offset += take;
    return take;
  };
}

TEST_F(S3UploaderTest, SmallStreamGoesInOneAwsChunkedPut) {
  // 200 KiB in 64 KiB chunks: four signed chunks and the final empty one, checked by radosgw.
  std::string data = RandomBytes(200 * 1024 + 3, 11);
  S3Uploader uploader(*client_, SmallParts());
  size_t offset = 0;
  auto r = uploader.UploadStream(bucket_, "s/small", Reader(data, 10'000, &offset), data.size(),
                                 Sha256Hex(data));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_FALSE(r->multipart);
  EXPECT_EQ(r->object.Meta("sha256"), Sha256Hex(data));
  EXPECT_EQ(Stats()["PutObject"], 1);
  EXPECT_EQ(Read("s/small"), data);

  // Unknown length ending within the first part: one PUT as well.
  offset = 0;
  auto unknown =
      uploader.UploadStream(bucket_, "s/unknown", Reader(data, 777, &offset), kUnknownSize, "");
  ASSERT_TRUE(unknown) << unknown.error().message;
  EXPECT_FALSE(unknown->multipart);
  EXPECT_EQ(unknown->sha256_hex, Sha256Hex(data));
  EXPECT_EQ(Read("s/unknown"), data);

  // Empty.
  std::string empty;
  offset = 0;
  auto none = uploader.UploadStream(bucket_, "s/empty", Reader(empty, 1, &offset), 0, "");
  ASSERT_TRUE(none) << none.error().message;
  EXPECT_EQ(none->object.size, 0u);
}

TEST_F(S3UploaderTest, StreamedPartsOfUnknownLengthReassemble) {
  std::string data = RandomBytes(13 * kMiB + 5, 12);
  S3Uploader uploader(*client_, SmallParts(2));
  size_t offset = 0;
  auto r = uploader.UploadStream(bucket_, "s/parts", Reader(data, 300'000, &offset), kUnknownSize,
                                 Sha256Hex(data));
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_TRUE(r->multipart);
  EXPECT_EQ(r->parts, 3);
  EXPECT_EQ(r->size, data.size());
  EXPECT_EQ(r->object.Meta("sha256"), Sha256Hex(data));
  EXPECT_EQ(Stats()["UploadPart"], 3);
  EXPECT_TRUE(Read("s/parts") == data);
}

TEST_F(S3UploaderTest, StreamWithTheWrongSha256IsAbortedAndNothingIsPublished) {
  std::string data = RandomBytes(12 * kMiB, 13);
  std::string wrong = Sha256Hex("something else");
  S3Uploader uploader(*client_, SmallParts(2));
  size_t offset = 0;
  auto r = uploader.UploadStream(bucket_, "s/bad", Reader(data, 1 << 20, &offset), data.size(),
                                 wrong);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::ChecksumMismatch) << r.error().message;
  EXPECT_NE(r.error().message.find(Sha256Hex(data)), std::string::npos);
  auto stats = Stats();
  EXPECT_EQ(stats["AbortMultipartUpload"], 1);
  EXPECT_EQ(stats["CompleteMultipartUpload"], 0);
  EXPECT_TRUE(Unfinished("s/bad").empty());
  auto head = client_->HeadObject(bucket_, "s/bad");
  ASSERT_TRUE(head);
  EXPECT_FALSE(*head);

  // A small stream with the wrong digest sends nothing at all.
  ASSERT_TRUE(testing::ProxyReset(proxy_));
  std::string small = RandomBytes(1000, 14);
  offset = 0;
  auto s = uploader.UploadStream(bucket_, "s/bad-small", Reader(small, 100, &offset),
                                 small.size(), wrong);
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().reason, Reason::ChecksumMismatch);
  EXPECT_EQ(Stats()["PutObject"], 0);
}

TEST_F(S3UploaderTest, StreamShorterOrLongerThanAnnouncedFails) {
  std::string data = RandomBytes(11 * kMiB, 15);
  S3Uploader uploader(*client_, SmallParts(2));
  size_t offset = 0;
  auto shorter = uploader.UploadStream(bucket_, "s/short", Reader(data, 1 << 20, &offset),
                                       data.size() + 10, "");
  ASSERT_FALSE(shorter);
  EXPECT_EQ(shorter.error().reason, Reason::ChecksumMismatch) << shorter.error().message;
  offset = 0;
  auto longer = uploader.UploadStream(bucket_, "s/long", Reader(data, 1 << 20, &offset),
                                      data.size() - 10, "");
  ASSERT_FALSE(longer);
  EXPECT_EQ(longer.error().reason, Reason::ChecksumMismatch) << longer.error().message;
  EXPECT_TRUE(Unfinished("s/").empty());
  EXPECT_EQ(Stats()["CompleteMultipartUpload"], 0);
}

TEST_F(S3UploaderTest, FileNotMatchingTheExpectedSha256IsAborted) {
  std::string data = RandomBytes(11 * kMiB, 16);
  std::string path = WriteFile("wrong.bin", data);
  S3Uploader uploader(*client_, SmallParts(2));
  auto r = uploader.UploadFile(bucket_, "wrong.bin", path, Sha256Hex("other"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::ChecksumMismatch) << r.error().message;
  EXPECT_EQ(Stats()["CompleteMultipartUpload"], 0);
  EXPECT_TRUE(Unfinished("wrong.bin").empty());
}

}  // namespace
}  // namespace modelcache::store
