#include "store/artifact_store.h"

#include <utility>

#include "store/local_store.h"
#include "store/s3_store.h"

namespace modelcache::store {

namespace {

// The one place that tells the kinds apart by their URI.
constexpr std::string_view kS3Scheme = "s3://";

}  // namespace

bool IsSharedStoreUri(std::string_view uri) { return uri.starts_with(kS3Scheme); }

VoidResult CheckStoreUri(std::string_view uri) {
  if (IsSharedStoreUri(uri)) {
    if (auto location = ParseS3StoreUri(uri); !location) {
      return location.error();
    }
  }
  return {};
}

Result<std::unique_ptr<ArtifactStore>> OpenArtifactStore(const std::string& uri,
                                                         const ArtifactStoreOptions& options) {
  if (IsSharedStoreUri(uri)) {
    auto s3 = S3ArtifactStore::Open(uri, options.aws);
    if (!s3) {
      return s3.error();
    }
    return std::unique_ptr<ArtifactStore>(std::move(*s3));
  }
  auto local = LocalStore::Open(uri);
  if (!local) {
    return local.error();
  }
  return std::unique_ptr<ArtifactStore>(std::move(*local));
}

}  // namespace modelcache::store
