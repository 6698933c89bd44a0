#include "daemon/shutdown_deadline.h"

#include <cstdlib>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/units.h"

namespace modelcache::controller {

ShutdownDeadline::~ShutdownDeadline() { Disarm(); }

void ShutdownDeadline::SetDescriber(std::function<std::vector<std::string>()> describe) {
  std::lock_guard lock(mu_);
  describe_ = std::move(describe);
}

void ShutdownDeadline::Arm(std::chrono::milliseconds timeout) {
  std::lock_guard lock(mu_);
  if (armed_ || disarmed_) {
    return;
  }
  armed_ = true;
  thread_ = std::thread([this, timeout] {
    std::unique_lock wait(mu_);
    if (cv_.wait_for(wait, timeout, [this] { return disarmed_; })) {
      return;
    }
    wait.unlock();
    Expire(timeout);
  });
}

void ShutdownDeadline::Disarm() {
  {
    std::lock_guard lock(mu_);
    disarmed_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
  }
}

void ShutdownDeadline::Expire(std::chrono::milliseconds timeout) {
  std::vector<std::string> running;
  {
    std::lock_guard lock(mu_);
    if (describe_) {
      running = describe_();
    }
  }
  std::string what = running.empty() ? std::string("nothing reported") : running.front();
  for (size_t i = 1; i < running.size(); ++i) {
    what += ", " + running[i];
  }
  spdlog::error(
      "shutdown did not finish within --shutdown-timeout {}; still running: {}; exiting "
      "with status {} (downloaded data stays on disk and resumes at the next start)",
      FormatDuration(timeout), what, kExitCode);
  spdlog::default_logger()->flush();
  // The threads that did not stop hold locks and resources that destructors would wait for;
  // _Exit skips them. Nothing half-written is at risk: every store and status write is a rename.
  std::_Exit(kExitCode);
}

}  // namespace modelcache::controller
