#pragma once

// Puts a job's verified files in place: fsync, rename `.incomplete` to the final path, remove
// the chunk map, sync the directory. One file's fsync takes milliseconds, so this runs on up to
// kPublishers threads per job, started as files come, and each file goes back to the job
// through its JobQueue (published) with the result.
//
// Thread-safe. Destruction publishes what is queued, then joins.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <stop_token>
#include <thread>
#include <vector>

#include "common/result.h"
#include "fetch/internal/range_request.h"

namespace modelcache::fetch::internal {

class Publisher {
 public:
  static constexpr size_t kPublishers = 8;

  explicit Publisher(JobQueue& queue) : queue_(queue) {}
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Queues p (p.fd is closed by the publisher); `publishing` is how many of the job's files are
  // being published, this one included: no more threads than that are started.
  void Publish(Publication p, int publishing);

  // Syncs and closes fd, renames t's incomplete_path to its final_path (creating its directory),
  // removes the chunk map of a mapped file and syncs the directory.
  static VoidResult PutInPlace(const FileTask& t, bool mapped, int fd);

 private:
  void Loop(std::stop_token stop);

  JobQueue& queue_;
  std::mutex mu_;
  std::condition_variable_any cv_;
  std::deque<Publication> to_publish_;  // guarded by mu_
  std::vector<std::jthread> threads_;   // last: joined first
};

}  // namespace modelcache::fetch::internal
