#include "fetch/internal/blob_batch.h"

#include <map>
#include <string>

namespace modelcache::fetch::internal {

BlobBatch GroupByBlob(const std::vector<FileTask>& tasks) {
  BlobBatch batch;
  batch.primary.resize(tasks.size());
  std::map<std::string, size_t> first_of;
  for (size_t i = 0; i < tasks.size(); ++i) {
    auto [it, inserted] = first_of.emplace(tasks[i].final_path, i);
    batch.primary[i] = it->second;
    if (inserted) {
      batch.unique.push_back(i);
      batch.bytes += tasks[i].size;
    }
  }
  return batch;
}

Result<std::vector<FileResult>> FanOut(const BlobBatch& batch, const std::vector<FileTask>& tasks,
                                       const std::vector<std::optional<FileResult>>& results,
                                       TransferProgress& progress) {
  std::vector<FileResult> out;
  out.reserve(tasks.size());
  for (size_t i = 0; i < tasks.size(); ++i) {
    const std::optional<FileResult>& r = results[batch.primary[i]];
    if (!r) {
      return Error(Reason::Internal, "a download finished without a result");
    }
    out.push_back(*r);
    if (batch.primary[i] != i) {
      out.back().path = tasks[i].path;
      out.back().downloaded = false;  // its blob came with another path
      progress.files_done.fetch_add(1);
    }
  }
  return out;
}

}  // namespace modelcache::fetch::internal
