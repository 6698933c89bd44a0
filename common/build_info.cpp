#include "common/build_info.h"

#include <curl/curl.h>
#include <openssl/crypto.h>

namespace modelcache {
namespace build_version {
// Defined in the generated build_version.cpp (cmake/BuildVersion.cmake).
extern const char kVersion[];
extern const char kCommit[];
}  // namespace build_version

const BuildInfo& GetBuildInfo() {
  static const BuildInfo info = [] {
    BuildInfo b;
    b.version = build_version::kVersion;
    b.commit = build_version::kCommit;
    const curl_version_info_data* curl = curl_version_info(CURLVERSION_NOW);
    b.curl = curl != nullptr && curl->version != nullptr ? curl->version : "";
    b.openssl = OpenSSL_version(OPENSSL_VERSION_STRING);
    return b;
  }();
  return info;
}

std::string VersionText() {
  const BuildInfo& b = GetBuildInfo();
  std::string text = "modelcache " + b.version;
  if (!b.commit.empty()) {
    text += " (commit " + b.commit + ")";
  }
  text += "\nlibcurl " + b.curl + "\nOpenSSL " + b.openssl;
  return text;
}

}  // namespace modelcache
