// Uploads files to S3 with store/s3_uploader.h, in parallel files like the artifact store does
// not (it goes file by file): here one file after the other, each with parallel parts, which is
// what S3ArtifactStore::Publish does. Prints one line per file and the total.
//
//   mc-s3-upload-bench --endpoint URL --bucket B [--parallel N] [--part-mib M] FILE...
// Keys are the file names. Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/sha256.h"
#include "store/s3_uploader.h"

using namespace modelcache;
using namespace modelcache::store;

int main(int argc, char** argv) {
  CLI::App app{"Upload files to S3 with modelcache's S3Uploader"};
  std::string endpoint, bucket, region = "us-east-1";
  int parallel = 8;
  uint64_t part_mib = 8;
  bool content_md5 = false;
  bool known_sha256 = true;
  std::vector<std::string> files;
  app.add_option("--endpoint", endpoint, "S3 endpoint URL")->required();
  app.add_option("--bucket", bucket, "bucket (must exist)")->required();
  app.add_option("--region", region, "region (default us-east-1)");
  app.add_option("--parallel", parallel, "parts in flight per file (default 8)");
  app.add_option("--part-mib", part_mib, "minimum part size in MiB (default 8)");
  app.add_flag("--content-md5", content_md5,
               "UNSIGNED-PAYLOAD parts with Content-MD5 (default: signed sha256 payloads)");
  app.add_option("--known-sha256", known_sha256,
                 "hash each file before the timed upload, as the store knows its sha256 "
                 "(default true)");
  app.add_option("files", files, "files to upload")->required();
  CLI11_PARSE(app, argc, argv);

  AwsConfig config;
  const char* id = std::getenv("AWS_ACCESS_KEY_ID");
  const char* secret = std::getenv("AWS_SECRET_ACCESS_KEY");
  if (id == nullptr || secret == nullptr) {
    std::fprintf(stderr, "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY\n");
    return 2;
  }
  config.credentials = {id, secret, ""};
  config.region = region;
  config.endpoint_url = endpoint;
  config.custom_endpoint = true;
  config.addressing = AddressingStyle::Path;
  S3Client client(config);
  UploadOptions options;
  options.parallel_parts = parallel;
  options.min_part_size = part_mib << 20;
  options.sign_payload = !content_md5;
  options.skip_existing = false;
  options.resume = false;
  S3Uploader uploader(client, options);

  std::vector<std::string> sha256(files.size());
  if (known_sha256) {
    for (size_t i = 0; i < files.size(); ++i) {
      auto h = Sha256File(files[i]);
      if (!h) {
        std::fprintf(stderr, "%s\n", h.error().message.c_str());
        return 1;
      }
      sha256[i] = *h;
    }
  }
  auto start = std::chrono::steady_clock::now();
  uint64_t total = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    std::string key = std::filesystem::path(files[i]).filename().string();
    auto r = uploader.UploadFile(bucket, key, files[i], sha256[i]);
    if (!r) {
      std::fprintf(stderr, "%s: %s\n", files[i].c_str(), r.error().message.c_str());
      return 1;
    }
    total += r->size;
    std::printf("%s %llu bytes, %d parts\n", key.c_str(),
                static_cast<unsigned long long>(r->size), r->parts);
  }
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("total %llu bytes in %.2f s\n", static_cast<unsigned long long>(total), seconds);
  return 0;
}
