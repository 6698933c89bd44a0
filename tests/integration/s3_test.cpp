// S3 artifact stores end to end: the real binary (daemon, prefetch, pull) against Ceph's radosgw,
// started once for all these tests by the ctest fixture in tests/fixtures/radosgw (which these
// tests require: FIXTURES_REQUIRED radosgw). boto3 reads back what modelcache wrote, as a client
// that shares no code with it. Each test works under its own key prefix of the shared bucket.

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "common/sha256.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/integration/harness.h"
#include "tests/integration/radosgw_env.h"
#include "tests/integration/s3_proxy.h"

namespace modelcache::itest {
namespace {

namespace fs = std::filesystem;
using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;
using std::chrono::seconds;

class S3Test : public ::testing::Test {
 protected:
  void SetUp() override {
    auto gw = LoadRadosGw();
    ASSERT_TRUE(gw) << "no radosgw: run through ctest (fixture radosgw_start), or set "
                       "MC_RADOSGW_ENV to the file tests/fixtures/radosgw/ctest-fixture.sh wrote";
    gw_ = *gw;
    // Every test has its own prefix in the shared bucket.
    prefix_ = "it-" + UniqueSuffix();
    for (char& c : prefix_) {
      if (c == '.') {
        c = '-';
      }
    }
    fs::create_directories(watch_dir());
    ASSERT_TRUE(hub_.Start());
  }

  std::string watch_dir() const { return tmp_ / "manifests"; }
  std::string cache_dir() const { return tmp_ / "cache"; }
  std::string state_dir() const { return tmp_ / "state"; }
  std::string store_uri() const { return "s3://" + gw_.bucket + "/" + prefix_; }

  std::map<std::string, std::string> AwsEnv() const {
    return {{"AWS_ACCESS_KEY_ID", gw_.access_key},
            {"AWS_SECRET_ACCESS_KEY", gw_.secret_key},
            {"AWS_REGION", gw_.region},
            {"AWS_ENDPOINT_URL", gw_.endpoint},
            {"AWS_CONFIG_FILE", "/dev/null"},
            {"AWS_SHARED_CREDENTIALS_FILE", "/dev/null"},
            {"AWS_EC2_METADATA_DISABLED", "true"}};
  }

  std::string AddRepo(const std::string& id, const std::map<std::string, std::string>& files) {
    std::string dir = tmp_ / ("repos/" + id + "/main");
    WriteTree(dir, files);
    FakeRepoSpec spec;
    spec.id = id;
    spec.refs["main"] = dir;
    hub_.AddRepo(spec);
    return dir;
  }

  Daemon::Options DaemonOptions() const {
    Daemon::Options o;
    o.watch_dir = watch_dir();
    o.store = cache_dir();
    o.state_dir = state_dir();
    o.hf_endpoint = hub_.url();
    // The specs name buckets of this radosgw as their storage.uri.
    o.extra_args = {"--retry-base-delay", "20ms", "--resync-period", "30s",
                    "--allowed-stores",   "s3://" + gw_.bucket};
    o.env = AwsEnv();
    return o;
  }

  // Runs a Python script with boto3 against radosgw: argv[1] endpoint, argv[2] bucket, then
  // `args`. Returns stdout, which the scripts make JSON.
  nlohmann::json Boto3(const std::string& script, const std::vector<std::string>& args) {
    std::string path = tmp_ / ("script-" + UniqueSuffix() + ".py");
    std::ofstream(path) << "import sys, json, hashlib, boto3\n"
                           "s3 = boto3.client('s3', endpoint_url=sys.argv[1])\n"
                           "bucket = sys.argv[2]\n"
                        << script;
    std::vector<std::string> argv{kPython, path, gw_.endpoint, gw_.bucket};
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = RunProgram(argv, AwsEnv());
    EXPECT_EQ(r.exit_code, 0) << r.err;
    auto doc = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_FALSE(doc.is_discarded()) << r.out << r.err;
    return doc;
  }

  // Every key under `prefix` (boto3's paginator), sorted.
  std::vector<std::string> ListKeys(const std::string& prefix) {
    auto listing = Boto3(R"(
keys = []
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=sys.argv[3]):
    keys += [o['Key'] for o in page.get('Contents', [])]
print(json.dumps(sorted(keys)))
)",
                      {prefix});
    return listing.is_array() ? listing.get<std::vector<std::string>>() : std::vector<std::string>();
  }

  crds::ModelCache WaitStatus(const std::string& name,
                              const std::function<bool(const crds::ModelCache&)>& pred,
                              const Daemon& daemon, seconds timeout = seconds(60)) {
    auto mc = WaitForStatus(state_dir(), name, pred, timeout);
    EXPECT_TRUE(mc && pred(*mc)) << (mc ? crds::ToJson(*mc).dump(2) : "no status") << "\n"
                                 << daemon.Log();
    return mc ? *mc : crds::ModelCache{};
  }

  TempDir tmp_;
  FakeHub hub_;
  RadosGw gw_;
  std::string prefix_;
};

// Reads the artifact back with boto3: current, the manifest, and every file's bytes, hashed on
// the Python side.
constexpr const char* kReadBack = R"(
base = sys.argv[3].rstrip('/') + '/artifacts/' + sys.argv[4]
current = s3.get_object(Bucket=bucket, Key=base + '/current')['Body'].read().decode()
manifest = json.loads(s3.get_object(Bucket=bucket, Key=base + '/' + current + '/modelcache.json')['Body'].read())
files = {}
for f in manifest['files']:
    obj = s3.get_object(Bucket=bucket, Key=base + '/' + current + '/' + f['path'])
    body = obj['Body'].read()
    files[f['path']] = {'sha256': hashlib.sha256(body).hexdigest(), 'size': len(body),
                        'meta': obj.get('Metadata', {}).get('sha256', '')}
print(json.dumps({'current': current, 'manifest': manifest, 'files': files}))
)";

TEST_F(S3Test, PrefetchToS3IsReadBackByteForByteWithBoto3) {
  auto files = SmallModelFiles(20 << 20, 81);  // the weights go up as a multipart upload
  AddRepo("org/s3-model", files);
  std::vector<std::string> args{"prefetch",      "org/s3-model:main", "--store",
                                store_uri(),     "--cache-dir",       cache_dir(),
                                "--hf-endpoint", hub_.url(),          "--no-progress"};
  auto first = RunModelcache(args, AwsEnv());
  ASSERT_EQ(first.exit_code, 0) << first.err;
  ASSERT_EQ(first.out.rfind("s3-model@sha256:", 0), 0u) << first.out;
  std::string id = first.out.substr(0, first.out.size() - 1);
  EXPECT_NE(first.err.find(store_uri() + "/artifacts/s3-model/"), std::string::npos) << first.err;

  // Streamed (unsharded): the weights went from the Hub to the bucket without a local copy.
  const std::string weights_sha = Sha256Hex(files["model.safetensors"]);
  auto has_weights = [&](const std::string& cache) {
    auto blobs = HubCacheBlobs(cache);
    return std::any_of(blobs.begin(), blobs.end(), [&](const std::string& b) {
      return b.rfind(weights_sha, 0) == 0;  // the blob or its .incomplete
    });
  };
  EXPECT_FALSE(has_weights(cache_dir()));
  // The same repo staged into a local store: the blob is there, and the artifact has the same id
  // (same manifest, whichever path built it).
  std::string local_cache = tmp_ / "local-cache";
  auto local = RunModelcache({"prefetch", "org/s3-model:main", "--store", local_cache,
                              "--hf-endpoint", hub_.url(), "--no-progress"});
  ASSERT_EQ(local.exit_code, 0) << local.err;
  EXPECT_EQ(local.out, first.out);
  EXPECT_TRUE(has_weights(local_cache));

  auto back = Boto3(kReadBack, {prefix_, "s3-model"});
  EXPECT_EQ(back["manifest"]["id"], id);
  EXPECT_EQ(back["current"], back["manifest"]["version"]);
  ASSERT_EQ(back["files"].size(), files.size());
  for (const auto& [path, content] : files) {
    const auto& f = back["files"][path];
    EXPECT_EQ(f["size"], content.size()) << path;
    // Hashed by Python over the bytes it read, compared with the bytes the Hub served.
    EXPECT_EQ(f["sha256"], Sha256Hex(content)) << path;
    EXPECT_EQ(f["meta"], Sha256Hex(content)) << path;
  }
  // The bucket holds the version's files, its marker and current, nothing else.
  auto keys = ListKeys(prefix_ + "/");
  EXPECT_EQ(keys.size(), files.size() + 2);
  std::string version = back["current"];
  for (const auto& key : keys) {
    EXPECT_TRUE(key == prefix_ + "/artifacts/s3-model/current" ||
                key.rfind(prefix_ + "/artifacts/s3-model/" + version + "/", 0) == 0)
        << key;
  }

  // Again: same id, nothing uploaded again (the objects keep their ETags and dates).
  auto etags = Boto3(R"(
print(json.dumps({o['Key']: [o['ETag'], str(o['LastModified'])]
                  for o in s3.list_objects_v2(Bucket=bucket, Prefix=sys.argv[3])['Contents']}))
)",
                     {prefix_ + "/artifacts/s3-model/" + version + "/"});
  auto second = RunModelcache(args, AwsEnv());
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(second.out, first.out);
  auto etags_after = Boto3(R"(
print(json.dumps({o['Key']: [o['ETag'], str(o['LastModified'])]
                  for o in s3.list_objects_v2(Bucket=bucket, Prefix=sys.argv[3])['Contents']}))
)",
                           {prefix_ + "/artifacts/s3-model/" + version + "/"});
  EXPECT_EQ(etags, etags_after);
}

TEST_F(S3Test, DaemonPublishesToS3AndPullReproducesTheFiles) {
  auto files = SmallModelFiles(3 << 20, 82);
  AddRepo("org/s3-daemon", files);
  WriteFileRenamed(watch_dir() + "/m.yaml", Manifest("s3-daemon", "org/s3-daemon",
                                                     "  storage:\n    uri: " + store_uri() + "\n"));
  Daemon daemon(DaemonOptions());
  daemon.Start();
  auto mc = WaitStatus("s3-daemon", IsReady, daemon);
  ASSERT_TRUE(IsReady(mc));
  ASSERT_TRUE(mc.status.artifact);
  const auto& art = *mc.status.artifact;
  EXPECT_EQ(art.uri, store_uri() + "/artifacts/s3-daemon/" + art.version);
  EXPECT_EQ(art.path, "");
  EXPECT_EQ(art.files, static_cast<int64_t>(files.size()));
  // Streamed: no blob of the weights in the local hub cache (the small files are not kept either).
  for (const auto& blob : HubCacheBlobs(cache_dir())) {
    EXPECT_NE(blob.rfind(Sha256Hex(files["model.safetensors"]), 0), 0u) << blob;
  }

  // `get` shows the S3 URI.
  auto got = RunModelcache({"get", "-o", "json", "--state-dir", state_dir()});
  ASSERT_EQ(got.exit_code, 0) << got.err;
  EXPECT_EQ(nlohmann::json::parse(got.out)["items"][0]["status"]["artifact"]["uri"], art.uri);

  // pull: the version named, then current; byte for byte; idempotent.
  std::string dir = tmp_ / "pulled/model";
  auto pulled = RunModelcache({"pull", art.uri, dir}, AwsEnv());
  ASSERT_EQ(pulled.exit_code, 0) << pulled.err;
  EXPECT_EQ(pulled.out, art.id + "\n");
  for (const auto& [path, content] : files) {
    EXPECT_EQ(Slurp(dir + "/" + path), content) << path;
  }
  auto manifest = nlohmann::json::parse(Slurp(dir + "/modelcache.json"));
  EXPECT_EQ(manifest["id"], art.id);
  size_t entries = 0;
  for (const auto& e : fs::recursive_directory_iterator(tmp_ / "pulled")) {
    entries += e.is_regular_file() ? 1 : 0;
  }
  EXPECT_EQ(entries, files.size() + 1) << "no staging directory or stray file left";

  auto again = RunModelcache({"pull", store_uri() + "/artifacts/s3-daemon", dir}, AwsEnv());
  ASSERT_EQ(again.exit_code, 0) << again.err;
  EXPECT_NE(again.err.find("up to date"), std::string::npos) << again.err;

  // A damaged local copy is replaced by a verified one.
  std::ofstream(dir + "/config.json", std::ios::trunc) << "{}";
  auto repaired = RunModelcache({"pull", art.uri, dir}, AwsEnv());
  ASSERT_EQ(repaired.exit_code, 0) << repaired.err;
  EXPECT_EQ(Slurp(dir + "/config.json"), files["config.json"]);

  // A directory holding other files is never overwritten.
  std::string other = tmp_ / "other";
  WriteTree(other, {{"keep.txt", "mine"}});
  auto refused = RunModelcache({"pull", art.uri, other}, AwsEnv());
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("not empty"), std::string::npos) << refused.err;
  EXPECT_EQ(Slurp(other + "/keep.txt"), "mine");

  // A resource whose source is the S3 artifact fills the local store from the bucket: same
  // digest, files verified, no Hub involved.
  WriteFileRenamed(
      watch_dir() + "/node.yaml",
      Manifest("node-copy", store_uri() + "/artifacts/s3-daemon", "  artifactName: node-copy\n"));
  auto copy = WaitStatus("node-copy", IsReady, daemon);
  ASSERT_TRUE(IsReady(copy));
  const auto& local = *copy.status.artifact;
  EXPECT_EQ(local.id.substr(local.id.find('@')), art.id.substr(art.id.find('@')));
  EXPECT_EQ(local.version, art.version);
  EXPECT_EQ(local.path, cache_dir() + "/artifacts/node-copy/" + art.version);
  EXPECT_EQ(copy.status.resolved_revision, mc.status.resolved_revision);
  for (const auto& [path, content] : files) {
    EXPECT_EQ(Slurp(local.path + "/" + path), content) << path;
  }

  // After a restart the Ready resource is confirmed from the bucket, without a new version.
  EXPECT_EQ(daemon.Terminate(), 0) << daemon.Log();
  Daemon restarted(DaemonOptions());
  restarted.Start();
  auto again_ready = WaitStatus("s3-daemon", IsReady, restarted);
  EXPECT_EQ(again_ready.status.artifact->id, art.id);
}

TEST_F(S3Test, CorruptedHubByteAbortsTheStreamedObjectAndCommitsNothing) {
  auto files = SmallModelFiles(20 << 20, 83);  // multipart: the mismatch is found at the end
  AddRepo("org/s3-corrupt", files);
  modelcache::testing::Fault f;
  f.kind = modelcache::testing::Fault::Kind::Corrupt;
  f.path_glob = "model.safetensors";
  f.bytes = 12345;
  f.count = -1;
  hub_.AddFault(f);
  auto run = RunModelcache({"prefetch", "org/s3-corrupt:main", "--store", store_uri(),
                            "--cache-dir", cache_dir(), "--hf-endpoint", hub_.url(),
                            "--no-progress"},
                           AwsEnv());
  EXPECT_NE(run.exit_code, 0);
  EXPECT_NE(run.err.find("ChecksumMismatch"), std::string::npos) << run.err;
  EXPECT_NE(run.err.find("model.safetensors"), std::string::npos) << run.err;
  // No version was committed and the weights' multipart upload was aborted: of the weights,
  // nothing is in the bucket, finished or not.
  auto keys = ListKeys(prefix_ + "/");
  for (const auto& key : keys) {
    EXPECT_EQ(key.find("modelcache.json"), std::string::npos) << key;
    EXPECT_EQ(key.find("/current"), std::string::npos) << key;
    EXPECT_EQ(key.find("model.safetensors"), std::string::npos) << key;
  }
  auto uploads = Boto3(R"(
print(json.dumps([u['Key'] for u in
                  s3.list_multipart_uploads(Bucket=bucket, Prefix=sys.argv[3]).get('Uploads', [])]))
)",
                       {prefix_ + "/"});
  EXPECT_EQ(uploads.size(), 0u) << uploads.dump();
}

TEST_F(S3Test, ShardedArtifactToAnS3DefaultStore) {
  std::string dir = tmp_ / "repos/org/qwen3-s3/main";
  auto gen = std::system(
      (std::string(MC_MAKE_CHECKPOINT) + " " + dir + " --arch qwen3 --size tiny > /dev/null")
          .c_str());
  ASSERT_EQ(gen, 0);
  FakeRepoSpec spec;
  spec.id = "org/qwen3-s3";
  spec.refs["main"] = dir;
  hub_.AddRepo(spec);
  WriteFileRenamed(
      watch_dir() + "/q.yaml",
      Manifest("qwen-s3", "org/qwen3-s3", "  accelerator: \"L4:2\"\n  shard:\n    engine: vllm\n"));
  // The daemon's default store is the bucket; downloads and shards are staged in --cache-dir.
  Daemon::Options o = DaemonOptions();
  o.store = store_uri();
  o.extra_args.insert(o.extra_args.end(), {"--cache-dir", cache_dir()});
  o.env.erase("AWS_ENDPOINT_URL");
  o.extra_args.insert(o.extra_args.end(), {"--s3-endpoint", gw_.endpoint});
  Daemon daemon(o);
  daemon.Start();
  auto mc = WaitStatus("qwen-s3", IsReady, daemon);
  ASSERT_TRUE(IsReady(mc));
  const auto& art = *mc.status.artifact;
  EXPECT_EQ(art.uri.rfind(store_uri() + "/artifacts/qwen3-s3/", 0), 0u) << art.uri;

  std::string pulled = tmp_ / "pulled";
  auto r = RunModelcache({"pull", art.uri, pulled, "--s3-endpoint", gw_.endpoint}, AwsEnv());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Exactly the files the local staging copy holds, byte for byte.
  std::string staged = cache_dir() + "/artifacts/qwen3-s3/" + art.version;
  size_t compared = 0;
  for (const auto& e : fs::recursive_directory_iterator(staged)) {
    if (!e.is_regular_file()) {
      continue;
    }
    std::string rel = fs::relative(e.path(), staged).string();
    EXPECT_EQ(Slurp(pulled + "/" + rel), Slurp(e.path().string())) << rel;
    ++compared;
  }
  EXPECT_TRUE(fs::exists(pulled + "/model-rank-0-part-0.safetensors"));
  EXPECT_TRUE(fs::exists(pulled + "/model-rank-1-part-0.safetensors"));
  EXPECT_GE(compared, 4u);
  auto manifest = nlohmann::json::parse(Slurp(pulled + "/modelcache.json"));
  EXPECT_EQ(manifest["shard"]["tensorParallelSize"], 2);
  EXPECT_EQ(ListKeys(prefix_ + "/artifacts/qwen3-s3/" + art.version + "/").size(),
            compared);  // the files and modelcache.json
}

TEST_F(S3Test, WrongCredentialsAreStorageErrorsNamingTheS3CodeNeverTheSecret) {
  AddRepo("org/s3-creds", SmallModelFiles(100000, 83));
  // Directory mode: the credentials come from a secrets-directory entry (--s3-secret).
  std::string secrets = tmp_ / "secrets";
  const std::string wrong_secret = "WRONGsecretWRONGsecretWRONGsecret0000000";
  WriteTree(secrets, {{"s3/AWS_ACCESS_KEY_ID", gw_.access_key + "\n"},
                      {"s3/AWS_SECRET_ACCESS_KEY", wrong_secret + "\n"}});
  WriteFileRenamed(watch_dir() + "/c.yaml", Manifest("s3-creds", "org/s3-creds",
                                                     "  storage:\n    uri: " + store_uri() + "\n"));
  Daemon::Options o = DaemonOptions();
  o.env.erase("AWS_ACCESS_KEY_ID");
  o.env.erase("AWS_SECRET_ACCESS_KEY");
  o.secrets_dir = secrets;
  // The second resource below names a bucket that does not exist.
  o.extra_args.insert(o.extra_args.end(),
                      {"--s3-secret", "s3", "--allowed-stores", "s3://mc-no-such-" + prefix_});
  Daemon daemon(o);
  daemon.Start();
  auto failed = WaitStatus(
      "s3-creds",
      [](const crds::ModelCache& mc) {
        return ReadyReason(mc) == "StorageError" &&
               ReadyMessage(mc).find("SignatureDoesNotMatch") != std::string::npos;
      },
      daemon);
  EXPECT_FALSE(IsReady(failed));
  // The status as it was seen failing (the file may already hold the next retry's phase).
  std::string failed_json = crds::ToJson(failed).dump();
  EXPECT_EQ(failed_json.find(wrong_secret), std::string::npos);
  EXPECT_EQ(failed_json.find(gw_.secret_key), std::string::npos);
  std::string status_file = Slurp(state_dir() + "/status/default/s3-creds.json");
  EXPECT_EQ(status_file.find(wrong_secret), std::string::npos);
  EXPECT_EQ(status_file.find(gw_.secret_key), std::string::npos);
  EXPECT_EQ(daemon.Log().find(wrong_secret), std::string::npos);

  // The secret is rotated: the next retry reads it and succeeds.
  WriteFileRenamed(secrets + "/s3/AWS_SECRET_ACCESS_KEY", gw_.secret_key);
  auto ready = WaitStatus("s3-creds", IsReady, daemon);
  EXPECT_TRUE(IsReady(ready));

  // A bucket that does not exist.
  WriteFileRenamed(watch_dir() + "/b.yaml",
                   Manifest("s3-nobucket", "org/s3-creds",
                            "  artifactName: nobucket\n  storage:\n    uri: s3://mc-no-such-" +
                                prefix_ + "/p\n"));
  auto missing = WaitStatus(
      "s3-nobucket",
      [](const crds::ModelCache& mc) {
        return ReadyReason(mc) == "StorageError" &&
               ReadyMessage(mc).find("NoSuchBucket") != std::string::npos;
      },
      daemon);
  EXPECT_EQ(daemon.Log().find(gw_.secret_key), std::string::npos);
}

TEST_F(S3Test, SkewedClockIsRequestTimeTooSkewedNamingNoSecret) {
  // libfaketime (Debian package faketime, which scripts/install-deps.sh installs) runs the
  // binary with its clock 20 minutes behind; S3 refuses signatures more than 15 minutes off.
  constexpr const char* kFaketime = "/usr/bin/faketime";
  if (::access(kFaketime, X_OK) != 0) {
    GTEST_SKIP() << kFaketime << " not found (Debian package faketime)";
  }
  std::map<std::string, std::string> skewed_env = AwsEnv();
  // Only the wall clock is moved: timeouts and backoff keep the real monotonic clock.
  skewed_env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1";
  // A sanitizer build's runtime must come first among the preloaded libraries unless told that
  // libfaketime may come before it.
  const char* asan = std::getenv("ASAN_OPTIONS");  // NOLINT(concurrency-mt-unsafe)
  skewed_env["ASAN_OPTIONS"] =
      std::string(asan != nullptr ? asan : "") + ":verify_asan_link_order=0";

  AddRepo("org/s3-skew", SmallModelFiles(100000, 84));
  std::vector<std::string> prefetch{"prefetch",      "org/s3-skew:main", "--store",
                                    store_uri(),     "--cache-dir",      cache_dir(),
                                    "--hf-endpoint", hub_.url(),         "--no-progress"};
  std::vector<std::string> argv{kFaketime, "-f", "-20m", MC_BINARY};
  argv.insert(argv.end(), prefetch.begin(), prefetch.end());
  auto skewed = RunProgram(argv, skewed_env);
  EXPECT_EQ(skewed.exit_code, 1) << skewed.err;
  EXPECT_NE(skewed.err.find("StorageError"), std::string::npos) << skewed.err;
  EXPECT_NE(skewed.err.find("RequestTimeTooSkewed"), std::string::npos) << skewed.err;
  EXPECT_EQ(skewed.err.find(gw_.secret_key), std::string::npos);
  EXPECT_EQ(skewed.out.find(gw_.secret_key), std::string::npos);
  EXPECT_TRUE(ListKeys(prefix_ + "/").empty());

  // With the right clock the same command publishes: the clock was the only fault.
  auto right = RunModelcache(prefetch, AwsEnv());
  ASSERT_EQ(right.exit_code, 0) << right.err;

  // Reads are refused the same way.
  std::vector<std::string> pull{kFaketime, "-f", "-20m", MC_BINARY, "pull",
                                store_uri() + "/artifacts/s3-skew", tmp_ / "pulled"};
  auto refused = RunProgram(pull, skewed_env);
  EXPECT_EQ(refused.exit_code, 1) << refused.err;
  EXPECT_NE(refused.err.find("RequestTimeTooSkewed"), std::string::npos) << refused.err;
  EXPECT_EQ(refused.err.find(gw_.secret_key), std::string::npos);
  EXPECT_FALSE(fs::exists(tmp_ / "pulled"));
}

TEST_F(S3Test, PullFetchesParallelRangesWithRetriesBitExactly) {
  // 12 MiB of weights pulled with 1 MiB ranges, four requests in flight, through the fault
  // proxy: it shows the ranges in flight at once, fails them, and counts the requests.
  auto files = SmallModelFiles(12 << 20, 85);
  AddRepo("org/s3-ranges", files);
  auto published = RunModelcache({"prefetch", "org/s3-ranges:main", "--store", store_uri(),
                                  "--cache-dir", cache_dir(), "--hf-endpoint", hub_.url(),
                                  "--no-progress"},
                                 AwsEnv());
  ASSERT_EQ(published.exit_code, 0) << published.err;

  S3Proxy proxy(gw_.endpoint);
  auto env = AwsEnv();
  env["AWS_ENDPOINT_URL"] = proxy.url();
  // `current` and modelcache.json are read first (two GETs); the file requests after them are
  // held unanswered.
  ASSERT_TRUE(proxy.Control("hold?op=GetObject&after=2"));
  std::string dir = tmp_ / "pulled";
  auto pull = std::async(std::launch::async, [&] {
    return RunModelcache({"pull", store_uri() + "/artifacts/s3-ranges", dir, "--chunk-size",
                          "1MiB", "--max-connections-per-artifact", "4"},
                         env);
  });
  // Four requests in flight at once, as asked.
  EXPECT_TRUE(WaitFor([&] { return proxy.Stats()["GetObject.held"] >= 4; }, seconds(30)))
      << proxy.StatsText();
  EXPECT_EQ(proxy.Stats()["GetObject.held"], 4) << proxy.StatsText();
  // Released with 503: each of them is fetched again.
  ASSERT_TRUE(proxy.Control("reset"));
  auto r = pull.get();
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // The retries were logged without the presigned URLs' queries (a credential until they expire).
  EXPECT_EQ(r.err.find("X-Amz-"), std::string::npos) << r.err;
  for (const auto& [path, content] : files) {
    EXPECT_EQ(Slurp(dir + "/" + path), content) << path;
  }
  // The weights came in ranges of 1 MiB (one GET would have done with the old pull): at least
  // twelve GETs after the reset, besides the small files.
  EXPECT_GE(proxy.Stats()["GetObject"], 12) << proxy.StatsText();
  size_t entries = 0;
  for (const auto& e : fs::recursive_directory_iterator(tmp_ / "pulled")) {
    entries += e.is_regular_file() ? 1 : 0;
  }
  EXPECT_EQ(entries, files.size() + 1) << "no partial data or chunk map left in the tree";
  for (const auto& e : fs::directory_iterator(tmp_.path())) {
    EXPECT_EQ(e.path().filename().string().find("pulled."), std::string::npos) << e.path();
  }
}

// File names the Hub allows, however they must be encoded: signed and sent as radosgw checks
// SigV4 (each segment encoded once, '/' kept), listed back (encoding-type=url), read back by boto3
// under the file's own name, and pulled (through the fault proxy, which forwards them as sent)
// to the same names.
TEST_F(S3Test, OddFileNamesRoundTripThroughTheBucket) {
  std::map<std::string, std::string> files{
      {"config.json", "{}"},
      {"docs/notes with space+plus.txt", "space and plus"},
      {"100% = a&b;c,d(e)[f]!$'@~.md", "reserved characters"},
      {"\xC3\xBCnic\xC3\xB6" "de/\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E.json", "unicode"},
      {"q?x#y.txt", "query and fragment"}};
  AddRepo("org/s3-odd", files);
  std::vector<std::string> args{"prefetch",      "org/s3-odd:main", "--store",
                                store_uri(),     "--cache-dir",     cache_dir(),
                                "--hf-endpoint", hub_.url(),        "--no-progress"};
  auto first = RunModelcache(args, AwsEnv());
  ASSERT_EQ(first.exit_code, 0) << first.err;

  auto back = Boto3(kReadBack, {prefix_, "s3-odd"});
  ASSERT_EQ(back["files"].size(), files.size());
  for (const auto& [path, content] : files) {
    EXPECT_EQ(back["files"][path]["sha256"], Sha256Hex(content)) << path;
  }
  std::string version = back["current"];
  auto keys = ListKeys(prefix_ + "/artifacts/s3-odd/" + version + "/");
  for (const auto& [path, content] : files) {
    std::string key = prefix_ + "/artifacts/s3-odd/" + version + "/" + path;
    EXPECT_TRUE(std::find(keys.begin(), keys.end(), key) != keys.end()) << key;
  }

  // Again: found in place (HeadObject of every key), nothing uploaded.
  S3Proxy proxy(gw_.endpoint);
  auto env = AwsEnv();
  env["AWS_ENDPOINT_URL"] = proxy.url();
  auto second = RunModelcache(args, env);
  ASSERT_EQ(second.exit_code, 0) << second.err;
  EXPECT_EQ(second.out, first.out);
  EXPECT_EQ(proxy.Stats()["PutObject"], 0) << proxy.StatsText();

  std::string dir = tmp_ / "pulled";
  auto pulled = RunModelcache({"pull", store_uri() + "/artifacts/s3-odd", dir}, env);
  ASSERT_EQ(pulled.exit_code, 0) << pulled.err;
  for (const auto& [path, content] : files) {
    EXPECT_EQ(Slurp(dir + "/" + path), content) << path;
  }
}

TEST_F(S3Test, VersionWithoutModelcacheJsonIsNeverReadyNorPulled) {
  // A bucket of this test's own, whose policy refuses the commit marker under the prefix: every
  // file can be uploaded, modelcache.json cannot.
  std::string bucket = "mc-deny-" + prefix_.substr(3);
  std::replace(bucket.begin(), bucket.end(), '.', '-');
  auto made = Boto3(R"(
import sys
b = sys.argv[3]
s3.create_bucket(Bucket=b)
s3.put_bucket_policy(Bucket=b, Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
    "Resource": "arn:aws:s3:::" + b + "/p/artifacts/*/*/modelcache.json"}]}))
print(json.dumps("ok"))
)",
                    {bucket});
  ASSERT_EQ(made, "ok");
  auto files = SmallModelFiles(200000, 84);
  AddRepo("org/s3-marker", files);
  std::string uri = "s3://" + bucket + "/p";
  WriteFileRenamed(watch_dir() + "/m.yaml",
                   Manifest("s3-marker", "org/s3-marker", "  storage:\n    uri: " + uri + "\n"));
  Daemon::Options o = DaemonOptions();
  o.extra_args.insert(o.extra_args.end(), {"--allowed-stores", uri});
  Daemon daemon(o);
  daemon.Start();
  auto failed = WaitStatus(
      "s3-marker",
      [](const crds::ModelCache& mc) {
        return ReadyReason(mc) == "StorageError" &&
               ReadyMessage(mc).find("AccessDenied") != std::string::npos;
      },
      daemon);
  EXPECT_NE(failed.status.phase, crds::kPhaseReady);
  EXPECT_FALSE(failed.status.artifact.has_value() && !failed.status.artifact->uri.empty() &&
               failed.status.artifact->uri.rfind("s3://", 0) == 0);

  // Every file is in the bucket; the marker and current are not.
  auto listed = Boto3(R"(
b = sys.argv[3]
print(json.dumps(sorted(o['Key'] for o in s3.list_objects_v2(Bucket=b, Prefix='p/').get('Contents', []))))
)",
                      {bucket});
  ASSERT_EQ(listed.size(), files.size()) << listed.dump();
  std::string first = listed[0];
  std::string version = first.substr(std::string("p/artifacts/s3-marker/").size());
  version = version.substr(0, version.find('/'));
  for (const auto& key : listed) {
    EXPECT_EQ(key.get<std::string>().find("modelcache.json"), std::string::npos);
  }
  auto by_version =
      RunModelcache({"pull", uri + "/artifacts/s3-marker/" + version, tmp_ / "pulled"}, AwsEnv());
  EXPECT_EQ(by_version.exit_code, 1);
  EXPECT_NE(by_version.err.find("has no modelcache.json"), std::string::npos) << by_version.err;
  EXPECT_FALSE(fs::exists(tmp_ / "pulled"));
  auto by_current =
      RunModelcache({"pull", uri + "/artifacts/s3-marker", tmp_ / "pulled"}, AwsEnv());
  EXPECT_EQ(by_current.exit_code, 1);
  EXPECT_NE(by_current.err.find("no current version"), std::string::npos) << by_current.err;

  // The policy goes: the retry finds the files in place, commits, and only then is Ready.
  Boto3("s3.delete_bucket_policy(Bucket=sys.argv[3])\nprint(json.dumps('ok'))\n", {bucket});
  auto ready = WaitStatus("s3-marker", IsReady, daemon);
  ASSERT_TRUE(ready.status.artifact);
  EXPECT_EQ(ready.status.artifact->uri, uri + "/artifacts/s3-marker/" + version);
  auto pulled = RunModelcache({"pull", ready.status.artifact->uri, tmp_ / "pulled"}, AwsEnv());
  EXPECT_EQ(pulled.exit_code, 0) << pulled.err;
}

}  // namespace
}  // namespace modelcache::itest
