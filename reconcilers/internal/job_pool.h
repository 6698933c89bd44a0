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
  // Waits for running jobs to return (callers cancel them first) and drops queued ones unrun.
  ~JobPool();
  JobPool(const JobPool&) = delete;
  JobPool& operator=(const JobPool&) = delete;

  // Queues `job`; it runs when a thread is free. After Stop(), jobs are dropped unrun.
  void Submit(std::function<void()> job);
  // Drops queued jobs (returning them so the caller can complete them) and lets threads exit once
  // their current job returns.
  std::vector<std::function<void()>> Stop();
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
  std::vector<std::jthread> threads_;
};

}  // namespace modelcache::reconcilers
