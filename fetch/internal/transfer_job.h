#pragma once

// One Run of a Transfer, driven on the caller's thread: it takes the files that are not in place
// yet, assigns their ranges to the job's connections (at most max_connections_per_job requests
// in flight), takes back finished requests and written blocks, advances each file's hashing
// within a budget per turn (so completions and cancellation stay prompt), persists chunk maps,
// publishes verified files and samples the rate. The files' own logic is FileDownload's.

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <utility>
#include <vector>

#include "common/result.h"
#include "fetch/internal/blob_batch.h"
#include "fetch/internal/chunk_map.h"
#include "fetch/internal/engine_thread.h"
#include "fetch/internal/file_download.h"
#include "fetch/internal/publisher.h"
#include "fetch/internal/range_request.h"
#include "fetch/transfer.h"

namespace modelcache::fetch::internal {

class TransferJob {
 public:
  TransferJob(TransferEngine::Impl& engine, const SourceSettings& source,
              TransferProgress& progress, std::stop_token stop);
  ~TransferJob();
  TransferJob(const TransferJob&) = delete;
  TransferJob& operator=(const TransferJob&) = delete;

  // Transfer::Run's contract (fetch/transfer.h).
  Result<std::vector<FileResult>> Run(const std::vector<FileTask>& tasks);

 private:
  using Clock = std::chrono::steady_clock;

  // Takes the tasks' distinct blobs: those in place are results at once, the others downloads.
  VoidResult Prepare(const std::vector<FileTask>& tasks, const BlobBatch& batch);
  // One turn of work between waits: schedule, hash, persist maps, sample the rate. Returns
  // whether the hashing is behind (its budget ran out).
  bool Work();
  // Waits for a completion, a stop, the next retry time or the next bookkeeping turn, and takes
  // what came.
  void WaitAndTake(bool hash_behind);
  void Schedule();
  void Submit(std::unique_ptr<Request> r);
  void Handle(Request* r);
  void Publish(FileDownload& f);
  void Published(Publication& p);
  // Keeps a written block for hashing from memory, within held_limit_ blocks for the job.
  void Hold(Block* b);
  // Gives back the held block furthest ahead of its file's hashed prefix.
  void ReleaseFurthest();
  void SampleRate();
  void Fail(Error e) {
    if (!error_) {
      error_ = std::move(e);
    }
  }

  TransferEngine::Impl& engine_;
  std::stop_token stop_;
  JobQueue queue_;
  MapPersister persister_;
  JobContext ctx_;
  std::vector<FileDownload> files_;
  std::vector<std::optional<FileResult>> results_;
  std::map<Request*, std::unique_ptr<Request>> in_flight_;
  std::optional<Error> error_;
  const int held_limit_;
  std::deque<std::pair<Clock::time_point, uint64_t>> samples_;
  Clock::time_point next_sample_{};
  int publishing_ = 0;  // files handed to the publisher, not yet back
  Publisher publisher_;  // last: joined first, while the queue it fills is alive
};

}  // namespace modelcache::fetch::internal
