#include "daemon/systemd_notifier.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <ctime>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

namespace modelcache::controller {

SystemdNotifier::~SystemdNotifier() { StopWatchdog(); }

bool SystemdNotifier::Enabled() {
  // NOLINTNEXTLINE(concurrency-mt-unsafe): the daemon never changes its environment.
  const char* socket = std::getenv("NOTIFY_SOCKET");
  return socket != nullptr && *socket != '\0';
}

void SystemdNotifier::Send(const std::string& state) {
  // unset_environment = 0: later calls (and the watchdog thread) need NOTIFY_SOCKET too.
  int r = sd_notify(0, state.c_str());
  if (r < 0) {
    // Not fatal: the daemon works without systemd; systemd notices a missing READY on its own.
    spdlog::debug("sd_notify(\"{}\"): error {}", state, -r);
  }
}

void SystemdNotifier::Ready() { Send("READY=1"); }

void SystemdNotifier::Status(std::string_view text) {
  std::string line(text);
  for (char& c : line) {
    if (c == '\n') {
      c = ' ';
    }
  }
  Send("STATUS=" + line);
}

void SystemdNotifier::Stopping() { Send("STOPPING=1"); }

void SystemdNotifier::Reloading() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t usec =
      static_cast<uint64_t>(ts.tv_sec) * 1'000'000 + static_cast<uint64_t>(ts.tv_nsec) / 1'000;
  Send(fmt::format("RELOADING=1\nMONOTONIC_USEC={}", usec));
}

void SystemdNotifier::Watchdog() { Send("WATCHDOG=1"); }

std::chrono::microseconds SystemdNotifier::StartWatchdog(std::function<bool()> alive) {
  StopWatchdog();
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
    return std::chrono::microseconds(0);
  }
  // Half the interval, as sd_watchdog_enabled(3) recommends: one late ping is not yet fatal.
  auto period = std::chrono::microseconds(std::max<uint64_t>(usec / 2, 1));
  {
    std::lock_guard lock(mu_);
    stop_watchdog_ = false;
  }
  watchdog_ = std::thread([this, period, alive = std::move(alive)] {
    std::unique_lock lock(mu_);
    while (!stop_watchdog_) {
      lock.unlock();
      // A stuck worker loop makes `alive` false; withholding the ping lets systemd restart us.
      if (alive && alive()) {
        Watchdog();
      }
      lock.lock();
      cv_.wait_for(lock, period, [this] { return stop_watchdog_; });
    }
  });
  return period;
}

void SystemdNotifier::StopWatchdog() {
  {
    std::lock_guard lock(mu_);
    stop_watchdog_ = true;
  }
  cv_.notify_all();
  if (watchdog_.joinable()) {
    watchdog_.join();
  }
}

std::string FormatStatusLine(const StatusSummary& summary) {
  if (summary.phases.empty()) {
    return "no ModelCache resources";
  }
  // Ready first (what operators look for), then the working phases in pipeline order, then Failed.
  static constexpr std::string_view kOrder[] = {
      crds::kPhaseReady,    crds::kPhasePending,   crds::kPhaseResolving, crds::kPhaseDownloading,
      crds::kPhaseSharding, crds::kPhaseUploading, crds::kPhaseFailed};
  std::string out;
  auto append = [&out](const std::string& part) {
    if (!out.empty()) {
      out += ", ";
    }
    out += part;
  };
  int64_t other = 0;
  for (const auto& [phase, count] : summary.phases) {
    if (std::find(std::begin(kOrder), std::end(kOrder), phase) == std::end(kOrder)) {
      other += count;
    }
  }
  for (std::string_view phase : kOrder) {
    auto it = summary.phases.find(std::string(phase));
    if (it == summary.phases.end() || it->second <= 0) {
      continue;
    }
    std::string word(phase);
    word[0] = static_cast<char>(word[0] - 'A' + 'a');
    std::string part = fmt::format("{} {}", it->second, word);
    if (phase == crds::kPhaseDownloading && summary.downloading_total > 0) {
      part += fmt::format(" {}%", summary.downloading_done * 100 / summary.downloading_total);
    }
    append(part);
  }
  if (other > 0) {
    append(fmt::format("{} unknown", other));
  }
  return out;
}

std::string FormatStatusLine(const std::vector<crds::ModelCacheStatus>& statuses) {
  StatusSummary summary;
  for (const auto& s : statuses) {
    summary.Add(s);
  }
  return FormatStatusLine(summary);
}

}  // namespace modelcache::controller
