#include "daemon/daemon_services.h"

#include <set>

#include <spdlog/spdlog.h>

#include "common/log.h"
#include "common/units.h"
#include "store/usage.h"

namespace modelcache::controller {
namespace {

// Walking a large store on every scrape would cost more than the figure is worth; Prometheus
// scrapes every 15-60 s, so a figure at most this old is as good.
constexpr std::chrono::seconds kStoreUsageMaxAge{10};

bool IsReloadable(const std::string& key) {
  for (std::string_view r : kReloadable) {
    if (r == key) {
      return true;
    }
  }
  return false;
}

}  // namespace

Result<std::optional<ListenAddress>> ParseListenOption(std::string_view text) {
  if (text.empty() || text == "off") {
    return std::optional<ListenAddress>();
  }
  auto address = ParseListenAddress(text);
  if (!address) {
    return address.error();
  }
  return std::optional<ListenAddress>(*address);
}

DaemonServices::DaemonServices(DaemonServicesOptions options, ControllerMetrics& metrics)
    : options_(std::move(options)), metrics_(metrics) {
  metrics_.registry.OnCollect([this] { Collect(); });
}

DaemonServices::~DaemonServices() { Detach(); }

std::unique_ptr<HealthServer> DaemonServices::NewHealthServer(const ListenAddress& address) {
  HealthServerOptions o;
  o.listen = address;
  o.healthy = [this] {
    std::lock_guard lock(mu_);
    return manager_ != nullptr && manager_->Healthy();
  };
  o.ready = [this] {
    std::lock_guard lock(mu_);
    return standing_by_ || (manager_ != nullptr && manager_->Ready());
  };
  o.metrics = [this] { return metrics_.Render(); };
  return std::make_unique<HealthServer>(std::move(o));
}

VoidResult DaemonServices::Attach(Manager& manager) {
  auto address = ParseListenOption(options_.listen);
  if (!address) {
    return address.error();
  }
  std::unique_ptr<HealthServer> server;
  if (*address) {
    server = NewHealthServer(**address);
    if (auto r = server->Start(); !r) {
      return r.error();
    }
  } else {
    spdlog::info("no HTTP endpoint (--listen {})",
                 options_.listen.empty() ? "\"\"" : options_.listen);
  }
  {
    std::lock_guard lock(mu_);
    manager_ = &manager;
    health_ = std::move(server);
  }
  auto period = notifier_.StartWatchdog([this] {
    std::lock_guard lock(mu_);
    return manager_ != nullptr && manager_->Healthy();
  });
  if (period.count() > 0) {
    spdlog::info("systemd watchdog: pinging every {} while the worker loop is healthy",
                 FormatDuration(std::chrono::duration_cast<std::chrono::milliseconds>(period)));
  }
  return {};
}

void DaemonServices::Detach() {
  notifier_.StopWatchdog();
  std::unique_ptr<HealthServer> server;
  {
    std::lock_guard lock(mu_);
    manager_ = nullptr;
    server = std::move(health_);
  }
  // Outside mu_: Stop() waits for requests in flight, whose handlers take mu_.
  if (server) {
    server->Stop();
  }
}

void DaemonServices::StandingBy(bool waiting) {
  std::lock_guard lock(mu_);
  standing_by_ = waiting;
}

void DaemonServices::Ready() {
  notifier_.Ready();
  {
    std::lock_guard lock(mu_);
    last_status_.clear();
  }
  StatusChanged();
}

void DaemonServices::StatusChanged() {
  std::lock_guard lock(mu_);
  if (manager_ == nullptr || !manager_->Ready()) {
    return;
  }
  std::string line = FormatStatusLine(manager_->Summary());
  if (line == last_status_) {
    return;
  }
  last_status_ = line;
  notifier_.Status(line);
}

void DaemonServices::Stopping() {
  notifier_.Stopping();
  notifier_.Status("stopping: cancelling transfers (verified data is kept)");
}

std::chrono::milliseconds DaemonServices::shutdown_timeout() const {
  std::lock_guard lock(mu_);
  return options_.shutdown_timeout;
}

int DaemonServices::http_port() const {
  std::lock_guard lock(mu_);
  return health_ ? health_->port() : 0;
}

void DaemonServices::Collect() {
  std::vector<crds::ModelCacheStatus> statuses;
  size_t depth = 0;
  bool measure = false;
  {
    std::lock_guard lock(mu_);
    if (manager_ != nullptr) {
      statuses = manager_->Statuses();
      depth = manager_->QueueDepth();
    }
    auto now = std::chrono::steady_clock::now();
    if (!options_.store_root.empty() && (!measured_ || now - measured_at_ >= kStoreUsageMaxAge)) {
      measure = true;
      measured_ = true;
      measured_at_ = now;
    }
  }
  metrics_.workqueue_depth.Set(static_cast<double>(depth));
  std::map<std::string, int> phases;
  uint64_t rate = 0;
  for (const auto& s : statuses) {
    ++phases[s.phase.empty() ? std::string(crds::kPhasePending) : s.phase];
    if (s.phase == crds::kPhaseDownloading && s.progress) {
      rate += s.progress->bytes_per_second;
    }
  }
  for (std::string_view phase : crds::kPhases) {
    std::string p(phase);
    metrics_.artifacts.Set({p}, phases[p]);
  }
  metrics_.download_bytes_per_second.Set(static_cast<double>(rate));
  if (measure) {
    auto usage = store::MeasureStoreUsage(options_.store_root);
    if (usage) {
      metrics_.store_used_bytes.Set(static_cast<double>(usage->used_bytes));
      metrics_.store_free_bytes.Set(static_cast<double>(usage->free_bytes));
    } else {
      spdlog::warn("metrics: {}", usage.error().message);
    }
  }
}

bool DaemonServices::ApplyChange(const std::string& key, const std::string& value) {
  if (key == "log-level" || key == "log-format") {
    std::string level = key == "log-level" ? value : options_.config_values["log-level"];
    std::string format = key == "log-format" ? value : options_.config_values["log-format"];
    auto r = SetupLogging(format == "json" ? LogFormat::Json : LogFormat::Text,
                          level.empty() ? "info" : level);
    if (!r) {
      spdlog::error("reload: --{} {}: {}; keeping the running value", key, value,
                    r.error().message);
      return false;
    }
    return true;
  }
  if (key == "shutdown-timeout") {
    auto d = ParseDuration(value);
    if (!d) {
      spdlog::error("reload: --shutdown-timeout {}: {}; keeping the running value", value,
                    d.error().message);
      return false;
    }
    std::lock_guard lock(mu_);
    options_.shutdown_timeout = *d;
    return true;
  }
  if (key == "listen") {
    auto address = ParseListenOption(value);
    if (!address) {
      spdlog::error("reload: {}; keeping the running endpoint", address.error().message);
      return false;
    }
    std::unique_ptr<HealthServer> next;
    if (*address) {
      // The old endpoint is stopped first so that a new address on the same port can bind; if
      // the new one then fails, the old one comes back.
      next = NewHealthServer(**address);
    }
    std::unique_ptr<HealthServer> old;
    {
      std::lock_guard lock(mu_);
      old = std::move(health_);
    }
    if (old) {
      old->Stop();
    }
    if (next) {
      if (auto r = next->Start(); !r) {
        spdlog::error("reload: {}; keeping the running endpoint", r.error().message);
        auto previous = ParseListenOption(options_.config_values["listen"]);
        if (previous && *previous) {
          auto again = NewHealthServer(**previous);
          if (again->Start()) {
            std::lock_guard lock(mu_);
            health_ = std::move(again);
          }
        }
        return false;
      }
    } else {
      spdlog::info("reload: HTTP endpoint stopped (--listen {})", value.empty() ? "\"\"" : value);
    }
    std::lock_guard lock(mu_);
    health_ = std::move(next);
    return true;
  }
  return false;
}

void DaemonServices::Reload() {
  std::lock_guard reload(reload_mu_);
  notifier_.Reloading();
  if (!options_.reread_config) {
    spdlog::info("SIGHUP: no --config file; nothing to re-read");
  } else {
    spdlog::info("SIGHUP: re-reading the configuration{}",
                 options_.config_file.empty() ? "" : " from " + options_.config_file);
    auto values = options_.reread_config();
    if (!values) {
      spdlog::error("reload failed, the running configuration stays: {}", values.error().message);
    } else {
      std::set<std::string> keys;
      for (const auto& [k, v] : options_.config_values) {
        keys.insert(k);
      }
      for (const auto& [k, v] : *values) {
        keys.insert(k);
      }
      int applied = 0;
      for (const auto& key : keys) {
        std::string before = options_.config_values[key];
        std::string after = (*values)[key];
        if (before == after) {
          continue;
        }
        if (!IsReloadable(key)) {
          // The value itself is not logged: an option added later may hold something private.
          spdlog::warn(
              "reload: --{} changed but takes effect only when the daemon restarts; "
              "the running value stays",
              key);
          continue;
        }
        if (ApplyChange(key, after)) {
          spdlog::info("reload: --{} is now {}", key, after.empty() ? "\"\"" : after);
          options_.config_values[key] = after;
          ++applied;
        }
      }
      spdlog::info("reload done: {} setting{} applied", applied, applied == 1 ? "" : "s");
    }
  }
  notifier_.Ready();
  {
    std::lock_guard lock(mu_);
    last_status_.clear();
  }
  StatusChanged();
}

}  // namespace modelcache::controller
