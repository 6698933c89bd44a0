#include "controller/systemd_notifier.h"

#include <time.h>

#include <cstdint>
#include <cstdlib>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

namespace modelcache::controller {

SystemdNotifier::~SystemdNotifier() { StopWatchdog(); }

bool SystemdNotifier::Enabled() {
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

std::string FormatStatusLine(const std::vector<crds::ModelCacheStatus>& statuses) {
  if (statuses.empty()) {
    return "no ModelCache resources";
  }
  // Ready first (what operators look for), then the working phases in pipeline order, then Failed.
  static constexpr std::string_view kOrder[] = {
      crds::kPhaseReady,    crds::kPhasePending,   crds::kPhaseResolving, crds::kPhaseDownloading,
      crds::kPhaseSharding, crds::kPhaseUploading, crds::kPhaseFailed};
  std::vector<int> counts(std::size(kOrder), 0);
  int other = 0;
  uint64_t done = 0;
  uint64_t total = 0;
  for (const auto& s : statuses) {
    std::string_view phase = s.phase.empty() ? crds::kPhasePending : std::string_view(s.phase);
    bool known = false;
    for (size_t i = 0; i < std::size(kOrder); ++i) {
      if (phase == kOrder[i]) {
        ++counts[i];
        known = true;
      }
    }
    if (!known) {
      ++other;
    }
    if (phase == crds::kPhaseDownloading && s.progress && s.progress->bytes_total > 0) {
      done += std::min(s.progress->bytes_done, s.progress->bytes_total);
      total += s.progress->bytes_total;
    }
  }
  std::string out;
  auto append = [&out](const std::string& part) {
    if (!out.empty()) {
      out += ", ";
    }
    out += part;
  };
  for (size_t i = 0; i < std::size(kOrder); ++i) {
    if (counts[i] == 0) {
      continue;
    }
    std::string word(kOrder[i]);
    word[0] = static_cast<char>(word[0] - 'A' + 'a');
    std::string part = fmt::format("{} {}", counts[i], word);
    if (kOrder[i] == crds::kPhaseDownloading && total > 0) {
      part += fmt::format(" {}%", done * 100 / total);
    }
    append(part);
  }
  if (other > 0) {
    append(fmt::format("{} unknown", other));
  }
  return out;
}

}  // namespace modelcache::controller
