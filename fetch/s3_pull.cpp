#include "fetch/s3_pull.h"

#include <vector>

namespace modelcache::fetch {

HubOptions S3PullHubOptions(const HubOptions& base) {
  HubOptions hub = base;
  // An endpoint matches no URL's origin: the engine then sends no Authorization header and
  // treats the bucket's host as a data host. The presigned query is the only credential.
  hub.endpoint.clear();
  hub.token.clear();
  return hub;
}

store::PullDownloadFn TransferPullDownload(Transfer& transfer, TransferProgress& progress) {
  return [&transfer, &progress](const std::vector<store::PullObject>& objects,
                                std::stop_token stop) -> VoidResult {
    std::vector<FileTask> tasks;
    tasks.reserve(objects.size());
    for (const store::PullObject& o : objects) {
      FileTask t;
      t.path = o.path;
      t.url = o.url;
      t.size = o.size;
      t.expected_sha256 = o.sha256;
      t.incomplete_path = o.scratch;
      t.final_path = o.dest;
      tasks.push_back(std::move(t));
    }
    auto results = transfer.Run(tasks, progress, stop);
    if (!results) {
      return results.error();
    }
    return {};
  };
}

}  // namespace modelcache::fetch
