// S3ArtifactStore against an in-memory S3 imitation (fake_s3.h): URI parsing, the bucket layout,
// the commit order (files, then modelcache.json, then current), dedupe (HEAD and server-side copy),
// uncommitted versions, and pull's verification and atomic replacement. Signatures and real S3
// behaviour are covered by the radosgw integration tests (tests/integration/s3_test.cpp).

#include "store/s3_store.h"

#include <filesystem>

#include <gtest/gtest.h>

#include "common/sha256.h"
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

constexpr const char* kBucket = "models";

class S3StoreTest : public ::testing::Test {
 protected:
  void SetUp() override { s3_.CreateBucket(kBucket); }

  std::unique_ptr<S3ArtifactStore> Store(const std::string& uri = "s3://models/team/cache") {
    AwsConfig config;
    config.credentials = {"AKIDEXAMPLE", "secret-never-shown", ""};
    config.region = "us-east-1";
    config.endpoint_url = s3_.endpoint();
    config.custom_endpoint = true;
    S3ClientOptions options;
    options.max_attempts = 1;
    auto store = S3ArtifactStore::Open(uri, config, options);
    EXPECT_TRUE(store) << store.error().message;
    return std::move(*store);
  }

  // Writes `files` under a local version directory and returns its finalized manifest.
  ArtifactManifest LocalVersion(const std::string& name,
                                const std::map<std::string, std::string>& files) {
    ArtifactManifest m;
    m.name = name;
    m.source_type = "model";
    m.source_repo = "org/" + name;
    m.source_revision = "main";
    m.source_commit = std::string(40, 'a');
    for (const auto& [path, content] : files) {
      m.files.push_back({path, content.size(), Sha256Hex(content)});
    }
    FinalizeIdentity(m);
    dir_ = tmp_.path() + "/local/" + m.version;
    for (const auto& [path, content] : files) {
      WriteText(dir_ + "/" + path, content);
    }
    return m;
  }

  FakeS3 s3_;
  TempDir tmp_;
  std::string dir_;
};

TEST(S3UriTest, StoreUris) {
  auto a = ParseS3StoreUri("s3://bucket-1/a/b/");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->bucket, "bucket-1");
  EXPECT_EQ(a->prefix, "a/b");
  EXPECT_EQ(a->Key("artifacts/x"), "a/b/artifacts/x");
  EXPECT_EQ(a->Uri("artifacts/x"), "s3://bucket-1/a/b/artifacts/x");
  auto b = ParseS3StoreUri("s3://bucket");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->prefix, "");
  EXPECT_EQ(b->Key("artifacts/x"), "artifacts/x");
  EXPECT_EQ(b->Uri(), "s3://bucket");
  for (const char* bad : {"s3://", "s3://ab", "s3://Bucket/x", "s3://b..c/x", "s3://bucket//x",
                          "s3://bucket/a/../b", "http://bucket/x", "s3://bucket/a b"}) {
    auto r = ParseS3StoreUri(bad);
    EXPECT_FALSE(r) << bad;
    if (!r) {
      EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
      EXPECT_NE(r.error().message.find(bad), std::string::npos) << r.error().message;
    }
  }
}

TEST(S3UriTest, ArtifactUris) {
  auto a = ParseS3ArtifactUri("s3://bucket/p/q/artifacts/qwen/0123456789ab");
  ASSERT_TRUE(a);
  EXPECT_EQ(a->store.bucket, "bucket");
  EXPECT_EQ(a->store.prefix, "p/q");
  EXPECT_EQ(a->name, "qwen");
  EXPECT_EQ(a->version, "0123456789ab");
  auto b = ParseS3ArtifactUri("s3://bucket/artifacts/qwen/");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->store.prefix, "");
  EXPECT_EQ(b->name, "qwen");
  EXPECT_EQ(b->version, "");
  for (const char* bad :
       {"s3://bucket/qwen", "s3://bucket/artifacts", "s3://bucket/p/x/y/z", "s3://bucket"}) {
    auto r = ParseS3ArtifactUri(bad);
    EXPECT_FALSE(r) << bad;
    if (!r) {
      EXPECT_NE(r.error().message.find("artifacts/NAME"), std::string::npos);
    }
  }
}

TEST_F(S3StoreTest, PublishLaysOutFilesThenTheMarkerThenCurrent) {
  std::map<std::string, std::string> files{
      {"config.json", "{}"}, {"sub/dir/weights.bin", RandomBytes(70000, 1)}, {"empty.txt", ""}};
  ArtifactManifest m = LocalVersion("qwen", files);
  auto store = Store();
  S3TransferProgress progress;
  auto published = store->Publish(dir_, m, progress);
  ASSERT_TRUE(published) << published.error().message;
  EXPECT_EQ(published->uri, "s3://models/team/cache/artifacts/qwen/" + m.version);
  EXPECT_EQ(published->path, "");
  EXPECT_EQ(published->id, m.id);
  EXPECT_EQ(progress.bytes_done.load(), m.size_bytes);
  EXPECT_EQ(progress.files_done.load(), 3);
  EXPECT_EQ(progress.files_deduplicated.load(), 0);

  auto objects = s3_.Objects(kBucket);
  std::string base = "team/cache/artifacts/qwen/";
  ASSERT_EQ(objects.size(), files.size() + 2);
  for (const auto& [path, content] : files) {
    const auto& o = objects.at(base + m.version + "/" + path);
    EXPECT_EQ(o.body, content) << path;
    EXPECT_EQ(o.metadata.at("sha256"), Sha256Hex(content)) << path;
  }
  EXPECT_EQ(objects.at(base + "current").body, m.version);
  EXPECT_EQ(objects.at(base + m.version + "/modelcache.json").body,
            ManifestToJson(m).dump(2) + "\n");

  // Order on the wire: every file before the marker, the marker before current.
  auto requests = s3_.Requests();
  int last_file_put = -1;
  int marker_put = -1;
  int current_put = -1;
  for (size_t i = 0; i < requests.size(); ++i) {
    const auto& r = requests[i];
    if (r.op != "PutObject") {
      continue;
    }
    if (r.key.ends_with("/modelcache.json")) {
      marker_put = static_cast<int>(i);
    } else if (r.key.ends_with("/current")) {
      current_put = static_cast<int>(i);
    } else {
      last_file_put = static_cast<int>(i);
    }
  }
  EXPECT_LT(last_file_put, marker_put);
  EXPECT_LT(marker_put, current_put);

  // Read back.
  auto current = store->ReadCurrent("qwen");
  ASSERT_TRUE(current && current->has_value());
  EXPECT_EQ((*current)->id, m.id);
  auto versions = store->ListVersions("qwen");
  ASSERT_TRUE(versions);
  EXPECT_EQ(*versions, std::vector<std::string>{m.version});
}

TEST_F(S3StoreTest, RepublishingUploadsNothing) {
  ArtifactManifest m = LocalVersion("qwen", {{"a.txt", "a"}, {"b.bin", RandomBytes(5000, 2)}});
  auto store = Store();
  S3TransferProgress first;
  ASSERT_TRUE(store->Publish(dir_, m, first));
  s3_.ClearRequests();
  S3TransferProgress second;
  auto again = store->Publish(dir_, m, second);
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_EQ(s3_.Count("PutObject"), 0u);
  EXPECT_EQ(s3_.Count("CopyObject"), 0u);
  EXPECT_EQ(second.files_deduplicated.load(), 2);
  EXPECT_EQ(second.bytes_done.load(), m.size_bytes);
}

TEST_F(S3StoreTest, AnObjectWithOtherBytesAtTheKeyIsReplaced) {
  ArtifactManifest m = LocalVersion("qwen", {{"a.txt", "right"}});
  std::string key = "team/cache/artifacts/qwen/" + m.version + "/a.txt";
  s3_.SetObject(kBucket, key, {"wrong", {{"sha256", Sha256Hex("wrong")}}});
  auto store = Store();
  S3TransferProgress progress;
  ASSERT_TRUE(store->Publish(dir_, m, progress));
  EXPECT_EQ(s3_.Objects(kBucket).at(key).body, "right");
}

TEST_F(S3StoreTest, UnchangedFilesOfANewVersionAreCopiedServerSide) {
  std::string weights = RandomBytes(100000, 3);
  ArtifactManifest v1 = LocalVersion("qwen", {{"config.json", "{\"v\":1}"}, {"w.bin", weights}});
  auto store = Store();
  S3TransferProgress p1;
  ASSERT_TRUE(store->Publish(dir_, v1, p1));
  ArtifactManifest v2 = LocalVersion("qwen", {{"config.json", "{\"v\":2}"}, {"w.bin", weights}});
  ASSERT_NE(v1.version, v2.version);
  s3_.ClearRequests();
  S3TransferProgress p2;
  auto published = store->Publish(dir_, v2, p2);
  ASSERT_TRUE(published) << published.error().message;
  EXPECT_EQ(s3_.Count("CopyObject", "/w.bin"), 1u);
  EXPECT_EQ(s3_.Count("PutObject", "/w.bin"), 0u);
  EXPECT_EQ(s3_.Count("PutObject", "/config.json"), 1u);
  EXPECT_EQ(p2.files_deduplicated.load(), 1);
  auto objects = s3_.Objects(kBucket);
  const auto& copied = objects.at("team/cache/artifacts/qwen/" + v2.version + "/w.bin");
  EXPECT_EQ(copied.body, weights);
  EXPECT_EQ(copied.metadata.at("sha256"), Sha256Hex(weights));
  EXPECT_EQ(objects.at("team/cache/artifacts/qwen/current").body, v2.version);
  auto versions = store->ListVersions("qwen");
  ASSERT_TRUE(versions);
  EXPECT_EQ(versions->size(), 2u);
}

TEST_F(S3StoreTest, LargeFilesGoUpAsMultipartUploadsAndAreConfirmed) {
  std::string big = RandomBytes((17 << 20) + 5, 4);
  ArtifactManifest m = LocalVersion("big", {{"model.safetensors", big}});
  auto store = Store();
  S3TransferProgress progress;
  auto published = store->Publish(dir_, m, progress);
  ASSERT_TRUE(published) << published.error().message;
  EXPECT_EQ(s3_.Count("CreateMultipartUpload"), 1u);
  EXPECT_EQ(s3_.Count("UploadPart"), 3u);  // 8 MiB parts
  EXPECT_EQ(s3_.Count("CompleteMultipartUpload"), 1u);
  auto objects = s3_.Objects(kBucket);
  const auto& o = objects.at("team/cache/artifacts/big/" + m.version + "/model.safetensors");
  EXPECT_EQ(o.body, big);
  EXPECT_EQ(o.metadata.at("sha256"), Sha256Hex(big));
  EXPECT_EQ(progress.bytes_done.load(), big.size());
}

TEST_F(S3StoreTest, AVersionWithoutItsMarkerIsNeitherListedNorReadNorPulled) {
  ArtifactManifest m = LocalVersion("qwen", {{"a.txt", "a"}});
  auto store = Store();
  S3TransferProgress progress;
  ASSERT_TRUE(store->Publish(dir_, m, progress));
  // An interrupted upload of another version: its files are there, its marker is not.
  std::string base = "team/cache/artifacts/qwen/";
  s3_.SetObject(kBucket, base + "ffffffffffff/a.txt", {"a", {{"sha256", Sha256Hex("a")}}});
  auto versions = store->ListVersions("qwen");
  ASSERT_TRUE(versions);
  EXPECT_EQ(*versions, std::vector<std::string>{m.version});
  auto read = store->ReadVersion("qwen", "ffffffffffff");
  ASSERT_TRUE(read);
  EXPECT_FALSE(read->has_value());
  S3TransferProgress pull;
  auto pulled = store->Pull("qwen", "ffffffffffff", tmp_.path() + "/out", pull);
  ASSERT_FALSE(pulled);
  EXPECT_EQ(pulled.error().reason, Reason::StorageError);
  EXPECT_NE(pulled.error().message.find("has no modelcache.json"), std::string::npos);
  EXPECT_FALSE(fs::exists(tmp_.path() + "/out"));
  // current naming an uncommitted version is an error, not a trusted version.
  s3_.SetObject(kBucket, base + "current", {"ffffffffffff", {}});
  auto current = store->ReadCurrent("qwen");
  ASSERT_FALSE(current);
  EXPECT_NE(current.error().message.find("has no modelcache.json"), std::string::npos);
}

TEST_F(S3StoreTest, CommitRefusesWhenAFileIsMissingOrDifferent) {
  ArtifactManifest m = LocalVersion("qwen", {{"a.txt", "a"}, {"b.txt", "b"}});
  auto store = Store();
  std::string base = "team/cache/artifacts/qwen/" + m.version + "/";
  s3_.SetObject(kBucket, base + "a.txt", {"a", {{"sha256", Sha256Hex("a")}}});
  auto missing = store->Commit(m);
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find(base + "b.txt"), std::string::npos);
  s3_.SetObject(kBucket, base + "b.txt", {"x", {{"sha256", Sha256Hex("x")}}});
  EXPECT_FALSE(store->Commit(m));
  EXPECT_EQ(s3_.Objects(kBucket).count(base + "modelcache.json"), 0u);
  s3_.SetObject(kBucket, base + "b.txt", {"b", {{"sha256", Sha256Hex("b")}}});
  ASSERT_TRUE(store->Commit(m));
  EXPECT_EQ(s3_.Objects(kBucket).count(base + "modelcache.json"), 1u);
}

TEST_F(S3StoreTest, PullVerifiesReplacesAtomicallyAndIsIdempotent) {
  std::map<std::string, std::string> files{{"config.json", "{}"},
                                           {"w/model.bin", RandomBytes((16 << 20) + 100, 5)}};
  ArtifactManifest m = LocalVersion("qwen", files);
  auto store = Store();
  S3TransferProgress up;
  ASSERT_TRUE(store->Publish(dir_, m, up));
  std::string out = tmp_.path() + "/node/qwen";

  S3TransferProgress progress;
  auto pulled = store->Pull("qwen", "", out, progress);
  ASSERT_TRUE(pulled) << pulled.error().message;
  EXPECT_FALSE(pulled->already_present);
  EXPECT_EQ(pulled->id, m.id);
  for (const auto& [path, content] : files) {
    EXPECT_EQ(ReadText(out + "/" + path), content) << path;
  }
  EXPECT_EQ(ReadText(out + "/modelcache.json"), ManifestToJson(m).dump(2) + "\n");
  // Ranged GETs of 16 MiB: two for 16 MiB + 100 bytes.
  EXPECT_EQ(s3_.Count("GetObject", "/model.bin"), 2u);
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp_.path() + "/node"), {}), 1);

  s3_.ClearRequests();
  S3TransferProgress again;
  auto second = store->Pull("qwen", m.version, out, again);
  ASSERT_TRUE(second);
  EXPECT_TRUE(second->already_present);
  EXPECT_EQ(s3_.Count("GetObject", "/model.bin"), 0u);

  // A corrupted local file: the next pull downloads and swaps in a verified tree.
  WriteText(out + "/config.json", "{\"tampered\":1}");
  S3TransferProgress repair;
  auto repaired = store->Pull("qwen", m.version, out, repair);
  ASSERT_TRUE(repaired) << repaired.error().message;
  EXPECT_FALSE(repaired->already_present);
  EXPECT_EQ(ReadText(out + "/config.json"), "{}");
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp_.path() + "/node"), {}), 1);
}

TEST_F(S3StoreTest, PullRefusesObjectsThatDoNotMatchTheManifestAndKeepsTheOldTree) {
  ArtifactManifest m = LocalVersion("qwen", {{"a.txt", "good"}});
  auto store = Store();
  S3TransferProgress up;
  ASSERT_TRUE(store->Publish(dir_, m, up));
  std::string out = tmp_.path() + "/out";
  S3TransferProgress p;
  ASSERT_TRUE(store->Pull("qwen", "", out, p));
  // The bytes change behind the manifest's back (same size, same metadata).
  std::string key = "team/cache/artifacts/qwen/" + m.version + "/a.txt";
  s3_.SetObject(kBucket, key, {"evil", {{"sha256", Sha256Hex("good")}}});
  WriteText(out + "/a.txt", "gone");  // forces a download
  S3TransferProgress p2;
  auto bad = store->Pull("qwen", "", out, p2);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().reason, Reason::ChecksumMismatch);
  EXPECT_NE(bad.error().message.find("a.txt"), std::string::npos);
  EXPECT_EQ(ReadText(out + "/a.txt"), "gone");  // untouched: nothing was swapped in
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp_.path()), {}), 2);  // local/ and out/
}

TEST_F(S3StoreTest, PullNeverOverwritesAForeignDirectory) {
  ArtifactManifest m = LocalVersion("qwen", {{"a.txt", "a"}});
  auto store = Store();
  S3TransferProgress up;
  ASSERT_TRUE(store->Publish(dir_, m, up));
  std::string out = tmp_.path() + "/mine";
  WriteText(out + "/notes.txt", "keep");
  S3TransferProgress p;
  auto r = store->Pull("qwen", "", out, p);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::InvalidSpec);
  EXPECT_EQ(ReadText(out + "/notes.txt"), "keep");
}

TEST_F(S3StoreTest, MissingBucketIsAStorageErrorWithTheCodeAndNoSecret) {
  ArtifactManifest m = LocalVersion("qwen", {{"a.txt", "a"}});
  auto store = Store("s3://absent-bucket/p");
  S3TransferProgress p;
  auto r = store->Publish(dir_, m, p);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().reason, Reason::StorageError);
  EXPECT_NE(r.error().message.find("NoSuchBucket"), std::string::npos) << r.error().message;
  EXPECT_EQ(r.error().message.find("secret-never-shown"), std::string::npos);
}

// Every name the Hub allows is a key under the file's own name, and pull restores it; what is
// unsafe on disk is refused.
TEST_F(S3StoreTest, FileNamesWithSpacesPlusPercentAndUnicodeRoundTrip) {
  std::map<std::string, std::string> files{
      {"docs/notes with space+plus.txt", "a"},
      {"100% = a&b;c,d(e)[f]{g}!$'@#.md", "b"},
      {"\xC3\xBCnic\xC3\xB6" "de/\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E.json", "c"},
      {"tilde~ and?.txt", "d"}};
  ArtifactManifest m = LocalVersion("odd", files);
  auto store = Store();
  S3TransferProgress up;
  auto published = store->Publish(dir_, m, up);
  ASSERT_TRUE(published) << published.error().message;
  auto objects = s3_.Objects(kBucket);
  for (const auto& [path, content] : files) {
    std::string key = "team/cache/artifacts/odd/" + m.version + "/" + path;
    ASSERT_EQ(objects.count(key), 1u) << key;
    EXPECT_EQ(objects[key].body, content);
  }
  // Listing (encoding-type=url, decoded) finds the committed version again.
  auto versions = store->ListVersions("odd");
  ASSERT_TRUE(versions) << versions.error().message;
  ASSERT_EQ(versions->size(), 1u);

  std::string out = tmp_.path() + "/node/odd";
  S3TransferProgress progress;
  auto pulled = store->Pull("odd", "", out, progress);
  ASSERT_TRUE(pulled) << pulled.error().message;
  for (const auto& [path, content] : files) {
    EXPECT_EQ(ReadText(out + "/" + path), content) << path;
  }

  const std::vector<std::string> unsafe_paths{"a/../b", "/abs", "back\\slash",
                                              std::string("nul\0x", 5), "bell\x07"};
  for (const std::string& bad : unsafe_paths) {
    ArtifactManifest unsafe = m;
    unsafe.files[0].path = bad;
    std::atomic<uint64_t> done{0};
    auto put = store->PutFile(unsafe, unsafe.files[0], dir_ + "/" + m.files[0].path, {}, done, {});
    ASSERT_FALSE(put) << bad;
    EXPECT_EQ(put.error().reason, Reason::InvalidSpec) << bad;
  }
}

TEST_F(S3StoreTest, ManifestsThatDoNotMatchTheirIdOrHaveUnsafePathsAreRefused) {
  ArtifactManifest m = LocalVersion("qwen", {{"a.txt", "a"}});
  auto store = Store();
  std::string base = "team/cache/artifacts/qwen/";
  nlohmann::json doc = ManifestToJson(m);
  doc["files"][0]["size"] = 2;  // no longer the digest's input
  s3_.SetObject(kBucket, base + m.version + "/modelcache.json", {doc.dump(), {}});
  auto read = store->ReadVersion("qwen", m.version);
  ASSERT_FALSE(read);
  EXPECT_NE(read.error().message.find("does not match its id"), std::string::npos);

  ArtifactManifest evil = m;
  evil.files[0].path = "../escape.txt";
  FinalizeIdentity(evil);
  s3_.SetObject(kBucket, base + evil.version + "/modelcache.json",
                {ManifestToJson(evil).dump(2), {}});
  auto unsafe = store->ReadVersion("qwen", evil.version);
  ASSERT_FALSE(unsafe);
  EXPECT_NE(unsafe.error().message.find("not safe"), std::string::npos);
}

}  // namespace
}  // namespace modelcache::store
