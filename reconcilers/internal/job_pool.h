#pragma once

// A fixed set of threads that runs submitted jobs in order. Jobs observe their own stop tokens;
// the pool only bounds how many run at once. Private to reconcilers/.

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace modelcache::reconcilers {

class JobPool {
 public:
  explicit JobPool(int threads);
  // Stops and joins (see Join).
  ~JobPool();
  JobPool(const JobPool&) = delete;
  JobPool& operator=(const JobPool&) = delete;

  // Queues `job`; it runs when a thread is free. After Stop(), jobs are dropped unrun.
  void Submit(std::function<void()> job);
  // Drops queued jobs (returning them so the caller can complete them) and lets threads exit once
  // their current job returns.
  std::vector<std::function<void()>> Stop();
  // Stops, then waits for the running jobs to return (callers cancel them first). Idempotent; never
  // called from a job.
  void Join();
  // True when a job submitted now would start at once: more threads than running and queued
  // jobs.
  bool HasFreeThread();

 private:
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  size_t running_ = 0;                       // guarded by mu_
  std::vector<std::jthread> threads_;  // emptied (joined) by Join, on one thread
};

}  // namespace modelcache::reconcilers
