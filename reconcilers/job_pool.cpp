#include "reconcilers/internal/job_pool.h"

#include "common/guard.h"

namespace modelcache::reconcilers {

JobPool::JobPool(int threads) {
  for (int i = 0; i < std::max(1, threads); ++i) {
    threads_.emplace_back([this] { Loop(); });
  }
}

JobPool::~JobPool() { Join(); }

void JobPool::Join() {
  Stop();
  threads_.clear();  // joins
}

void JobPool::Submit(std::function<void()> job) {
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      return;
    }
    queue_.push_back(std::move(job));
  }
  cv_.notify_one();
}

std::vector<std::function<void()>> JobPool::Stop() {
  std::vector<std::function<void()>> dropped;
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    dropped.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
    queue_.clear();
  }
  cv_.notify_all();
  return dropped;
}

bool JobPool::HasFreeThread() {
  std::lock_guard lock(mu_);
  // Queued jobs are about to be taken by free threads: count them as running.
  return !stopping_ && running_ + queue_.size() < threads_.size();
}

void JobPool::Loop() {
  while (true) {
    std::function<void()> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) {
        return;
      }
      job = std::move(queue_.front());
      queue_.pop_front();
      ++running_;
    }
    // Jobs catch their own exceptions (ResultOrInternalError); this keeps the thread alive even
    // if one does not.
    LogExceptions("job thread", job);
    std::lock_guard lock(mu_);
    --running_;
  }
}

}  // namespace modelcache::reconcilers
