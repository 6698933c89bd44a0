// A daemon killed (SIGKILL) in the middle of a multipart upload to S3 resumes it after the
// restart: only the parts radosgw does not have are sent again. The daemon reaches radosgw (the
// shared ctest fixture, FIXTURES_REQUIRED radosgw) through tests/fixtures/s3proxy/s3proxy.py,
// which lets a few parts through, holds the rest unanswered while the daemon is killed, and
// counts what the restarted daemon sends.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/files.h"
#include "common/http_client.h"
#include "common/sha256.h"
#include "tests/fixtures/hub/fake_hub.h"
#include "tests/integration/harness.h"
#include "tests/integration/radosgw_env.h"
#include "tests/integration/s3_proxy.h"

namespace modelcache::itest {
namespace {

using modelcache::testing::FakeHub;
using modelcache::testing::FakeRepoSpec;

TEST(S3UploadResumeTest, KilledMidMultipartUploadResumesWithOnlyTheMissingParts) {
  auto gw = LoadRadosGw();
  ASSERT_TRUE(gw) << "no radosgw: run through ctest (fixture radosgw_start) or set MC_RADOSGW_ENV";
  const std::string bucket = gw->bucket;
  const std::string prefix = "resume-" + UniqueSuffix();
  S3Proxy proxy(gw->endpoint);

  TempDir tmp;
  FakeHub hub;
  // 44 MiB of weights: six 8 MiB parts (the uploader's default part size), the last 4 MiB.
  const std::string weights = RandomBytes(44 << 20, 91);
  std::string repo_dir = tmp / "repos/org/resume/main";
  WriteTree(repo_dir, {{"config.json", "{\"model_type\": \"llama\"}"},
                       {"model.safetensors", weights}});
  FakeRepoSpec spec;
  spec.id = "org/resume";
  spec.refs["main"] = repo_dir;
  hub.AddRepo(spec);
  ASSERT_TRUE(hub.Start());

  std::map<std::string, std::string> env{{"AWS_ACCESS_KEY_ID", gw->access_key},
                                         {"AWS_SECRET_ACCESS_KEY", gw->secret_key},
                                         {"AWS_REGION", gw->region},
                                         {"AWS_ENDPOINT_URL", proxy.url()},
                                         {"AWS_CONFIG_FILE", "/dev/null"},
                                         {"AWS_SHARED_CREDENTIALS_FILE", "/dev/null"},
                                         {"AWS_EC2_METADATA_DISABLED", "true"}};
  const std::string store_uri = "s3://" + bucket + "/" + prefix;
  std::filesystem::create_directories(tmp / "manifests");
  WriteFileRenamed(tmp / "manifests/m.yaml",
                   Manifest("resume", "org/resume", "  storage:\n    uri: " + store_uri + "\n"));
  Daemon::Options options;
  options.watch_dir = tmp / "manifests";
  options.store = tmp / "cache";
  options.state_dir = tmp / "state";
  options.hf_endpoint = hub.url();
  // No health endpoint: daemons of tests running in parallel would share its default port.
  options.extra_args = {"--retry-base-delay", "20ms", "--listen", "off", "--allowed-stores",
                        store_uri};
  options.env = env;

  // Three parts reach radosgw; the others are held until the daemon has been killed.
  ASSERT_TRUE(proxy.Control("hold?op=UploadPart&after=3"));
  {
    Daemon daemon(options);
    daemon.Start();
    ASSERT_TRUE(WaitFor(
        [&] {
          auto s = proxy.Stats();
          return s["UploadPart.done"] == 3 && s["UploadPart.held"] >= 1;
        },
        std::chrono::seconds(90)))
        << "proxy: " << proxy.StatsText() << "\n"
        << daemon.Log();
    daemon.Kill9();
  }

  // radosgw holds the unfinished upload with its three parts (asked directly, not via the proxy).
  std::string script = tmp / "parts.py";
  std::ofstream(script) << R"(import sys, json, boto3
s3 = boto3.client('s3', endpoint_url=sys.argv[1])
out = []
for u in s3.list_multipart_uploads(Bucket=sys.argv[2], Prefix=sys.argv[3]).get('Uploads', []):
    parts = s3.list_parts(Bucket=sys.argv[2], Key=u['Key'], UploadId=u['UploadId']).get('Parts', [])
    out.append({'key': u['Key'], 'parts': [p['PartNumber'] for p in parts]})
print(json.dumps(out))
)";
  auto direct_env = env;
  direct_env["AWS_ENDPOINT_URL"] = gw->endpoint;
  auto listed = RunProgram({kPython, script, gw->endpoint, bucket, prefix + "/"}, direct_env);
  ASSERT_EQ(listed.exit_code, 0) << listed.err;
  auto uploads = nlohmann::json::parse(listed.out);
  ASSERT_EQ(uploads.size(), 1u) << listed.out;
  EXPECT_EQ(uploads[0]["parts"].size(), 3u) << listed.out;

  // The restarted daemon finds the upload and sends the three missing parts only.
  ASSERT_TRUE(proxy.Control("reset"));
  Daemon restarted(options);
  restarted.Start();
  auto mc = WaitForStatus(
      tmp / "state", "resume",
      [](const crds::ModelCache& m) { return m.status.phase == crds::kPhaseReady; },
      std::chrono::seconds(90));
  ASSERT_TRUE(mc && mc->status.phase == crds::kPhaseReady)
      << (mc ? crds::ToJson(*mc).dump(2) : "no status") << "\n"
      << restarted.Log();
  // Streamed from the Hub (the restart read the weights from the Hub again; the parts radosgw
  // already held were not sent again): no copy of the weights in the local hub cache.
  for (const auto& blob : HubCacheBlobs(tmp / "cache")) {
    EXPECT_NE(blob.rfind(Sha256Hex(weights), 0), 0u) << blob;
  }
  auto stats = proxy.Stats();
  EXPECT_EQ(stats["UploadPart"], 3) << proxy.StatsText();
  EXPECT_EQ(stats["CreateMultipartUpload"], 0) << proxy.StatsText();
  EXPECT_EQ(stats["CompleteMultipartUpload"], 1) << proxy.StatsText();

  auto after = RunProgram({kPython, script, gw->endpoint, bucket, prefix + "/"}, direct_env);
  ASSERT_EQ(after.exit_code, 0) << after.err;
  EXPECT_EQ(nlohmann::json::parse(after.out).size(), 0u) << after.out;

  // The published weights are the Hub's bytes.
  std::string pulled = tmp / "pulled";
  auto pull = RunModelcache({"pull", store_uri + "/artifacts/resume", pulled}, direct_env);
  ASSERT_EQ(pull.exit_code, 0) << pull.err;
  std::ifstream in(pulled + "/model.safetensors", std::ios::binary);
  std::string got((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(Sha256Hex(got), Sha256Hex(weights));
}

}  // namespace
}  // namespace modelcache::itest
