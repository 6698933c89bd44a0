#pragma once

// What `modelcache run` does besides reconciling, around one Manager:
//   - the HTTP endpoint (--listen): /healthz from Manager::Healthy, /readyz from Manager::Ready,
//     /metrics from ControllerMetrics with queue depth, artifacts by phase, download rate and
//     store usage collected at scrape time;
//   - systemd notifications: READY=1, STATUS= lines that follow the phases ("3 ready,
//     1 downloading 41%"), WATCHDOG=1 only while the manager is healthy, RELOADING=1 and
//     STOPPING=1;
//   - SIGHUP: re-reads the configuration and applies what can change without losing work
//     (kReloadable); other changed settings are logged as needing a restart.
//
// Thread-safe. Every method may be called from any thread.

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "controller/manager.h"
#include "controller/metrics.h"
#include "daemon/health_server.h"
#include "daemon/options.h"
#include "daemon/systemd_notifier.h"

namespace modelcache::controller {

struct DaemonServicesOptions {
  std::string listen = "127.0.0.1:8081";  // HOST:PORT; "" or "off": no HTTP endpoint
  std::chrono::milliseconds shutdown_timeout{std::chrono::seconds(30)};
  std::string store_root;      // measured for the store gauges ("" : not measured)
  std::string config_file;     // for log lines only
  ConfigValues config_values;  // the running configuration
  std::function<Result<ConfigValues>()> reread_config;
};

// The settings SIGHUP applies (long option names); every other change waits for a restart.
inline constexpr std::string_view kReloadable[] = {"log-level", "log-format", "listen",
                                                   "shutdown-timeout"};

// --listen's value: nullopt for "" or "off" (no endpoint), else the parsed address.
Result<std::optional<ListenAddress>> ParseListenOption(std::string_view text);

class DaemonServices {
 public:
  // `metrics` must outlive this object; its collectors are registered here and read the manager
  // only between Attach and Detach.
  DaemonServices(DaemonServicesOptions options, ControllerMetrics& metrics);
  // Detach()es.
  ~DaemonServices();
  DaemonServices(const DaemonServices&) = delete;
  DaemonServices& operator=(const DaemonServices&) = delete;

  // Starts the HTTP endpoint and the watchdog thread, both reading `manager`, which must stay
  // alive until Detach(). Fails (InvalidSpec or NetworkError naming --listen) when the endpoint
  // cannot be served; nothing is left running then.
  VoidResult Attach(Manager& manager);
  // Stops the endpoint and the watchdog and forgets the manager. Idempotent.
  void Detach();

  // Sources synced: READY=1 and a first STATUS= line.
  void Ready();
  // A replica waiting for the leader-election Lease: /readyz answers 200 while it waits (it can
  // take over at once), as controller-runtime's followers do.
  void StandingBy(bool waiting);
  // A status changed: sends STATUS= when the line differs from the last one sent.
  void StatusChanged();
  // Shutdown began: STOPPING=1.
  void Stopping();
  // SIGHUP: RELOADING=1 (with MONOTONIC_USEC), re-read and apply, READY=1. A configuration that
  // does not parse is logged and the running one kept.
  void Reload();

  std::chrono::milliseconds shutdown_timeout() const;
  // The bound HTTP port; 0 when there is no endpoint.
  int http_port() const;

 private:
  void Collect();
  // REQUIRES: mu_ held (for options_.listen and health_); the server is started outside it.
  VoidResult ApplyListen(const std::string& text);
  std::unique_ptr<HealthServer> NewHealthServer(const ListenAddress& address);
  bool ApplyChange(const std::string& key, const std::string& value);

  DaemonServicesOptions options_;
  ControllerMetrics& metrics_;
  SystemdNotifier notifier_;

  mutable std::mutex mu_;
  Manager* manager_ = nullptr;                         // guarded by mu_
  std::unique_ptr<HealthServer> health_;               // guarded by mu_
  std::string last_status_;                            // guarded by mu_
  std::chrono::steady_clock::time_point measured_at_;  // guarded by mu_
  bool measured_ = false;                              // guarded by mu_
  bool standing_by_ = false;                           // guarded by mu_
  std::mutex reload_mu_;                               // one reload at a time
};

}  // namespace modelcache::controller
