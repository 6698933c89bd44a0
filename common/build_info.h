#pragma once

// What this binary is: `modelcache --version` and the modelcache_build_info gauge of /metrics.

#include <string>

namespace modelcache {

struct BuildInfo {
  std::string version;  // the project's version (CMakeLists.txt, project(VERSION))
  std::string commit;   // the git commit built ("-dirty" when modified); "" outside a checkout
  std::string curl;     // libcurl's version, as loaded at run time
  std::string openssl;  // OpenSSL's version, as loaded at run time
};

const BuildInfo& GetBuildInfo();

// `modelcache --version`: "modelcache 0.1.0 (commit <sha>)" then one line per library.
std::string VersionText();

}  // namespace modelcache
