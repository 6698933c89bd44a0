#pragma once

// systemd's notify protocol (sd_notify(3)) for `Type=notify` units: readiness, STATUS= lines,
// reload and stop announcements, and watchdog pings driven by the health of the worker loop, so a
// stuck loop stops the pings and systemd restarts the daemon (WatchdogSec=).
//
// Every call is a no-op when NOTIFY_SOCKET is unset (not started by systemd). Thread-safe.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "controller/status_summary.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

class SystemdNotifier {
 public:
  SystemdNotifier() = default;
  // Stops the watchdog thread.
  ~SystemdNotifier();
  SystemdNotifier(const SystemdNotifier&) = delete;
  SystemdNotifier& operator=(const SystemdNotifier&) = delete;

  // Whether NOTIFY_SOCKET is set, i.e. whether the calls below reach anyone.
  static bool Enabled();

  // "READY=1": start-up is complete (sources synced). Also sent after a reload finishes.
  void Ready();
  // "STATUS=<text>": one line shown by `systemctl status` (newlines become spaces).
  void Status(std::string_view text);
  // "STOPPING=1": shutdown has begun.
  void Stopping();
  // "RELOADING=1" with "MONOTONIC_USEC=<now>" (systemd >= 253 wants the timestamp for
  // Type=notify-reload). Call Ready() when the reload is done.
  void Reloading();
  // "WATCHDOG=1": one keep-alive ping.
  void Watchdog();

  // If systemd asked for watchdog pings (WATCHDOG_USEC, and WATCHDOG_PID is unset or ours),
  // starts a thread that every half interval calls `alive` and sends WATCHDOG=1 only when it
  // returns true. Returns the ping period, or zero when no watchdog is wanted (nothing started).
  // `alive` runs on that thread and must be thread-safe and quick. Calling it again replaces the
  // previous thread.
  std::chrono::microseconds StartWatchdog(std::function<bool()> alive);
  // Stops and joins the watchdog thread. Idempotent.
  void StopWatchdog();

 private:
  void Send(const std::string& state);

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_watchdog_ = false;  // guarded by mu_
  std::thread watchdog_;
};

// One STATUS= line summarising the resources' phases in a fixed order, skipping zeros, e.g.
//   "3 ready, 1 downloading 41%, 1 failed"
// The percentage is bytes done over bytes total of all Downloading resources that report
// progress (left out when none do). A resource without a phase yet counts as pending. With no
// resources: "no ModelCache resources".
std::string FormatStatusLine(const StatusSummary& summary);
std::string FormatStatusLine(const std::vector<crds::ModelCacheStatus>& statuses);

}  // namespace modelcache::controller
