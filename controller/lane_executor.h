#pragma once

// Runs tasks on a fixed number of lanes, each a thread with a FIFO of its own, so that work for
// different objects proceeds in parallel while the work for one object keeps its order: a task
// goes to the lane its key hashes to, so tasks with equal keys run one at a time, in the order
// they were submitted. This is how the Kubernetes writes (status writes, Events) get the
// concurrency the API server allows without a status write for an object ever overtaking an
// earlier one for that object (client-go's workqueue gives the same per-key guarantee to
// reconciles).
//
// A task that throws is logged and counted as done (common/guard.h); the lane carries on.
//
// Thread-safe.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace modelcache::controller {

class LaneExecutor {
 public:
  // `stop` is requested when Stop()'s flush time is over: a task should then end soon (cut a
  // request or a retry wait short).
  using Task = std::function<void(std::stop_token stop)>;

  // Starts `lanes` threads (at least 1); `name` names the executor in the log.
  LaneExecutor(int lanes, std::string name);
  ~LaneExecutor();  // Stop(0).
  LaneExecutor(const LaneExecutor&) = delete;
  LaneExecutor& operator=(const LaneExecutor&) = delete;

  // Queues `task` on the lane of `key`. False (and `task` dropped) after Stop().
  bool Submit(std::string_view key, Task task);
  // Blocks until every task submitted before the call has run.
  void Drain();
  // Stops accepting tasks and lets the lanes run what is queued; once `flush_timeout` has passed
  // it requests stop of the running tasks and drops what has not started. Returns how many were
  // dropped. Idempotent (later calls return 0).
  size_t Stop(std::chrono::milliseconds flush_timeout);

  int lanes() const { return static_cast<int>(lanes_.size()); }
  // Tasks queued or running.
  size_t pending() const;

 private:
  struct Lane {
    std::deque<Task> tasks;  // GUARDED_BY(mu_)
    std::jthread thread;
  };
  void Run(Lane& lane, std::stop_token stop);

  const std::string name_;
  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  bool stopping_ = false;  // GUARDED_BY(mu_)
  size_t dropped_ = 0;     // GUARDED_BY(mu_)
  uint64_t submitted_ = 0;  // GUARDED_BY(mu_)
  uint64_t finished_ = 0;   // GUARDED_BY(mu_)
  std::vector<std::unique_ptr<Lane>> lanes_;
};

}  // namespace modelcache::controller
