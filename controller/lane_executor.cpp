#include "controller/lane_executor.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "common/guard.h"

namespace modelcache::controller {

LaneExecutor::LaneExecutor(int lanes, std::string name) : name_(std::move(name)) {
  for (int i = 0; i < std::max(1, lanes); ++i) {
    lanes_.push_back(std::make_unique<Lane>());
  }
  for (auto& lane : lanes_) {
    lane->thread = std::jthread([this, l = lane.get()](std::stop_token stop) { Run(*l, stop); });
  }
}

LaneExecutor::~LaneExecutor() { Stop(std::chrono::milliseconds(0)); }

bool LaneExecutor::Submit(std::string_view key, Task task) {
  Lane& lane = *lanes_[std::hash<std::string_view>()(key) % lanes_.size()];
  std::lock_guard lock(mu_);
  if (stopping_) {
    return false;
  }
  lane.tasks.push_back(std::move(task));
  ++submitted_;
  cv_.notify_all();
  return true;
}

size_t LaneExecutor::pending() const {
  std::lock_guard lock(mu_);
  return static_cast<size_t>(submitted_ - finished_);
}

void LaneExecutor::Drain() {
  std::unique_lock lock(mu_);
  uint64_t target = submitted_;
  cv_.wait(lock, [&] { return finished_ >= target; });
}

size_t LaneExecutor::Stop(std::chrono::milliseconds flush_timeout) {
  auto deadline = std::chrono::steady_clock::now() + flush_timeout;
  std::unique_lock lock(mu_);
  if (stopping_) {
    return 0;
  }
  stopping_ = true;
  cv_.notify_all();
  cv_.wait_until(lock, deadline, [&] { return finished_ >= submitted_; });
  lock.unlock();
  // Past the flush time: the lanes drop what has not started (Run sees the stop) and the running
  // tasks see their stop token.
  for (auto& lane : lanes_) {
    lane->thread.request_stop();
  }
  {
    std::lock_guard relock(mu_);
    cv_.notify_all();
  }
  for (auto& lane : lanes_) {
    if (lane->thread.joinable()) {
      lane->thread.join();
    }
  }
  std::lock_guard relock(mu_);
  return dropped_;
}

void LaneExecutor::Run(Lane& lane, std::stop_token stop) {
  std::unique_lock lock(mu_);
  while (true) {
    // Once stopping, an empty lane waits here for Stop()'s stop request.
    cv_.wait(lock, stop, [&] { return !lane.tasks.empty(); });
    if (stop.stop_requested()) {
      dropped_ += lane.tasks.size();
      finished_ += lane.tasks.size();
      lane.tasks.clear();
      cv_.notify_all();
      return;
    }
    Task task = std::move(lane.tasks.front());
    lane.tasks.pop_front();
    lock.unlock();
    LogExceptions(name_, [&] { task(stop); });
    task = nullptr;  // what the task holds goes before Drain() returns
    lock.lock();
    ++finished_;
    cv_.notify_all();
  }
}

}  // namespace modelcache::controller
