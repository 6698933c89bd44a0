#pragma once

// Tasks that share a final_path (identical files at several paths of a repo: one blob) are
// fetched once, or two requests would write the same .incomplete file; their results are then
// fanned back out in task order.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "common/result.h"
#include "fetch/transfer.h"

namespace modelcache::fetch::internal {

struct BlobBatch {
  std::vector<size_t> unique;   // the first task of each blob, in task order
  std::vector<size_t> primary;  // per task: the task that fetches its blob (itself or earlier)
  uint64_t bytes = 0;           // size of the distinct blobs
};

BlobBatch GroupByBlob(const std::vector<FileTask>& tasks);

// One FileResult per task, from `results` (indexed by task; set for every primary task). A task
// whose blob came with an earlier task reports its own path and downloaded = false, and is counted
// in progress.files_done here. Internal if a primary task has no result.
Result<std::vector<FileResult>> FanOut(const BlobBatch& batch, const std::vector<FileTask>& tasks,
                                       const std::vector<std::optional<FileResult>>& results,
                                       TransferProgress& progress);

}  // namespace modelcache::fetch::internal
