#pragma once

// The shared radosgw of the S3 integration tests: the ctest fixture in tests/fixtures/radosgw
// (FIXTURES_REQUIRED radosgw) starts one and writes its endpoint, keys and bucket to an
// environment file, MC_RADOSGW_ENV (the build tree's, unless the variable of that name is set).

#include <cstdlib>
#include <fstream>
#include <map>
#include <optional>
#include <string>

namespace modelcache::itest {

// The S3 tests' boto3 scripts run with Debian's python3-boto3, which lives with /usr/bin/python3
// (a python3 earlier on PATH may lack it).
inline constexpr const char* kPython = "/usr/bin/python3";

struct RadosGw {
  std::string endpoint, access_key, secret_key, region, bucket;
};

// The fixture's environment file; nullopt when there is none (the test was not run by ctest).
inline std::optional<RadosGw> LoadRadosGw() {
  const char* override_path = std::getenv("MC_RADOSGW_ENV");  // NOLINT(concurrency-mt-unsafe)
  std::string path = override_path != nullptr ? override_path : MC_RADOSGW_ENV;
  std::ifstream in(path);
  if (!in) {
    return std::nullopt;
  }
  std::map<std::string, std::string> kv;
  std::string line;
  while (std::getline(in, line)) {
    size_t eq = line.find('=');
    if (eq != std::string::npos && line[0] != '#') {
      kv[line.substr(0, eq)] = line.substr(eq + 1);
    }
  }
  RadosGw gw{kv["S3_ENDPOINT"], kv["AWS_ACCESS_KEY_ID"], kv["AWS_SECRET_ACCESS_KEY"],
             kv["AWS_REGION"], kv["S3_BUCKET"]};
  if (gw.endpoint.empty() || gw.bucket.empty()) {
    return std::nullopt;
  }
  return gw;
}

}  // namespace modelcache::itest
