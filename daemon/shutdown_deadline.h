#pragma once

// The bound on a graceful shutdown (`--shutdown-timeout`): once armed, if the daemon has not
// finished shutting down (the deadline disarmed or destroyed) within the timeout, it logs what
// was still running and ends the process with exit status kExitCode, without running the
// destructors that are stuck.
//
// Thread-safe.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace modelcache::controller {

class ShutdownDeadline {
 public:
  // The process's exit status when the deadline passes.
  static constexpr int kExitCode = 1;

  ShutdownDeadline() = default;
  // Disarms.
  ~ShutdownDeadline();
  ShutdownDeadline(const ShutdownDeadline&) = delete;
  ShutdownDeadline& operator=(const ShutdownDeadline&) = delete;

  // What is still running, one item per element ("default/qwen: job", ...), asked when the
  // deadline passes. Replace it (or pass nullptr) before what it reads is destroyed.
  void SetDescriber(std::function<std::vector<std::string>()> describe);

  // Starts the countdown; a second call does nothing (the first bound stands).
  void Arm(std::chrono::milliseconds timeout);

  // Stops the countdown: shutdown finished. Idempotent.
  void Disarm();

 private:
  void Expire(std::chrono::milliseconds timeout);

  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false;                                  // guarded by mu_
  bool disarmed_ = false;                               // guarded by mu_
  std::function<std::vector<std::string>()> describe_;  // guarded by mu_
  std::thread thread_;
};

}  // namespace modelcache::controller
