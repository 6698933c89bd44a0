// S3FillingUpload against radosgw (the shared fixture, through the counting proxy; registered with
// the S3Uploader* tests): parts go out as soon as their bytes are written, whatever the order; a
// part written again after its upload is sent again; a second run continues the first run's
// multipart upload and sends only the parts radosgw does not have; the object is the file's
// final bytes.

#include "store/s3_filling_upload.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <gtest/gtest.h>

#include "tests/unit/store/s3_test_env.h"
#include "tests/unit/store/test_util.h"

namespace modelcache::store {
namespace {

using testing::kMiB;

class S3UploaderFillingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const testing::S3Env& env = testing::SharedS3();
    proxy_ = env.proxy;
    ASSERT_TRUE(testing::ProxyReset(proxy_));
    config_ = testing::ProxyConfig(env);
    client_ = std::make_unique<S3Client>(config_);
    bucket_ = testing::UniqueBucket("filling");
    auto made = testing::CreateBucket(*client_, bucket_);
    ASSERT_TRUE(made) << made.error().message;
    path_ = tmp_.path() + "/rank.safetensors";
    // 18 MiB in 5 MiB parts: three full parts and one of 3 MiB. The first 100 bytes (a header)
    // are written before the upload starts.
    final_ = testing::RandomBytes(18 * kMiB, 7);
    int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::ftruncate(fd, static_cast<off_t>(final_.size())), 0);
    ::close(fd);
    Write(0, final_.substr(0, 100));
  }

  std::unique_ptr<S3FillingUpload> Upload() {
    S3FillingUpload::File f;
    f.local_path = path_;
    f.key = "incoming/rank.safetensors";
    f.size = final_.size();
    f.pending = {{100, final_.size()}};
    UploadOptions options;
    options.min_part_size = 5 * kMiB;
    options.parallel_parts = 2;
    return std::make_unique<S3FillingUpload>(*client_, bucket_,
                                             std::vector<S3FillingUpload::File>{f}, options);
  }

  void Write(uint64_t offset, const std::string& bytes) {
    int fd = ::open(path_.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)),
              static_cast<ssize_t>(bytes.size()));
    ::close(fd);
  }
  // Writes the final bytes of [first, last) and reports them.
  void Fill(S3FillingUpload& up, uint64_t first, uint64_t last) {
    Write(first, final_.substr(first, last - first));
    up.Written(0, first, last - first);
  }

  static bool WaitFor(const std::function<bool()>& done) {
    for (int i = 0; i < 600; ++i) {
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return done();
  }

  testing::TempDir tmp_;
  std::string proxy_;
  AwsConfig config_;
  std::unique_ptr<S3Client> client_;
  std::string bucket_;
  std::string path_;
  std::string final_;
};

TEST_F(S3UploaderFillingTest, PartsGoOutAsTheyCompleteAndRewrittenPartsGoAgain) {
  auto up = Upload();
  ASSERT_TRUE(up->Start({}));
  // The third part, from the middle of the file: uploaded before anything else is written.
  Fill(*up, 10 * kMiB, 15 * kMiB);
  ASSERT_TRUE(WaitFor([&] { return up->bytes_sent() == 5 * kMiB; })) << up->bytes_sent();
  EXPECT_EQ(testing::ProxyStats(proxy_)["UploadPart"], 1);
  // Half of the first part: nothing goes.
  Fill(*up, 2 * kMiB, 5 * kMiB);
  // The third part written again with other bytes (a source fetched again): sent again. The
  // final bytes come back later, so it goes a third time.
  std::string wrong(kMiB, 'x');
  Write(11 * kMiB, wrong);
  up->Written(0, 11 * kMiB, kMiB);
  ASSERT_TRUE(WaitFor([&] { return up->bytes_sent() == 10 * kMiB; })) << up->bytes_sent();
  EXPECT_EQ(up->parts_sent_again(), 1);
  Fill(*up, 15 * kMiB, 18 * kMiB);
  Fill(*up, 100, 2 * kMiB);
  Fill(*up, 5 * kMiB, 11 * kMiB);  // rewrites the start of the third part with the same bytes
  Fill(*up, 11 * kMiB, 12 * kMiB);
  auto finished = up->Finish();
  ASSERT_TRUE(finished) << finished.error().message;
  EXPECT_EQ(up->parts_reused(), 0);
  auto body = client_->GetObject(bucket_, "incoming/rank.safetensors");
  ASSERT_TRUE(body) << body.error().message;
  EXPECT_TRUE(*body == final_) << "the object is not the file's final bytes";
}

TEST_F(S3UploaderFillingTest, ASecondRunSendsOnlyThePartsTheFirstDidNot) {
  {
    auto first = Upload();
    ASSERT_TRUE(first->Start({}));
    Fill(*first, 5 * kMiB, 10 * kMiB);
    Fill(*first, 15 * kMiB, 18 * kMiB);
    Fill(*first, 100, 3 * kMiB);
    ASSERT_TRUE(WaitFor([&] { return first->bytes_sent() == 8 * kMiB; })) << first->bytes_sent();
  }  // killed: the upload stays unfinished
  // The next run rebuilds the file from scratch: the part already there but not the same is sent.
  Write(0, std::string(final_.size(), '\0'));
  Write(0, final_.substr(0, 100));
  ASSERT_TRUE(testing::ProxyReset(proxy_));
  auto second = Upload();
  ASSERT_TRUE(second->Start({}));
  Fill(*second, 100, final_.size());
  auto finished = second->Finish();
  ASSERT_TRUE(finished) << finished.error().message;
  EXPECT_EQ(second->parts_reused(), 2);
  EXPECT_EQ(second->bytes_sent(), 10 * kMiB);
  auto stats = testing::ProxyStats(proxy_);
  EXPECT_EQ(stats["CreateMultipartUpload"], 0);
  EXPECT_EQ(stats["UploadPart"], 2);
  auto body = client_->GetObject(bucket_, "incoming/rank.safetensors");
  ASSERT_TRUE(body) << body.error().message;
  EXPECT_TRUE(*body == final_) << "the object is not the file's final bytes";
}

}  // namespace
}  // namespace modelcache::store
