#include "fetch/s3_pull.h"

#include <vector>

namespace modelcache::fetch {

S3PullOptions S3PullRetriesOf(const HubOptions& hub) {
  S3PullOptions s3;
  s3.max_attempts = hub.max_attempts;
  s3.backoff_base = hub.backoff_base;
  s3.backoff_cap = hub.backoff_cap;
  return s3;
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
