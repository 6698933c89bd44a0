// `modelcache run`: the daemon.

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>

#include "common/allow_list.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/units.h"
#include "controller/kube/kube_config.h"
#include "controller/kube/leader_election.h"
#include "controller/manager.h"
#include "controller/object_cache.h"
#include "daemon/daemon_mode.h"
#include "daemon/daemon_services.h"
#include "daemon/job_metrics.h"
#include "daemon/options.h"
#include "daemon/shutdown_deadline.h"
#include "daemon/store_gc.h"
#include "reconcilers/model_cache_reconciler.h"
#include "store/artifact_store.h"
#include "store/local_store.h"
#include "store/store_users.h"

namespace modelcache::controller {
namespace {

// Blocks the shutdown and reload signals in every thread (call before starting any) and handles
// them on a thread of its own with sigwait: SIGTERM/SIGINT become a stop request (a second one
// exits at once), SIGHUP calls the reload function.
class SignalWatcher {
 public:
  SignalWatcher() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGHUP);
    sigaddset(&set_, SIGUSR2);  // the destructor's wake-up
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::jthread([this] {
      int received = 0;
      int count = 0;
      while (sigwait(&set_, &received) == 0) {
        if (received == SIGUSR2) {
          return;
        }
        if (received == SIGHUP) {
          std::lock_guard lock(reload_mu_);
          if (count > 0) {
            spdlog::info("SIGHUP ignored: shutting down");
          } else if (!reload_) {
            spdlog::info("SIGHUP ignored: still starting");
          } else {
            reload_();
          }
          continue;
        }
        if (++count > 1) {
          spdlog::warn("second signal: exiting now");
          std::_Exit(1);
        }
        spdlog::info("received {}: shutting down", received == SIGTERM ? "SIGTERM" : "SIGINT");
        stop_.request_stop();
      }
    });
  }
  ~SignalWatcher() {
    pthread_kill(thread_.native_handle(), SIGUSR2);
  }
  SignalWatcher(const SignalWatcher&) = delete;
  SignalWatcher& operator=(const SignalWatcher&) = delete;

  std::stop_token token() const { return stop_.get_token(); }

  // What SIGHUP does (nullptr: nothing). Waits for a reload in progress, so that after
  // OnReload(nullptr) the previous function is no longer running.
  void OnReload(std::function<void()> reload) {
    std::lock_guard lock(reload_mu_);
    reload_ = std::move(reload);
  }

 private:
  sigset_t set_{};
  std::mutex reload_mu_;
  std::function<void()> reload_;  // guarded by reload_mu_
  std::stop_source stop_;
  std::jthread thread_;
};

}  // namespace

int RunDaemon(const RunOptions& options, reconcilers::ReconcilerOptions base,
              const Environment& env) {
  // Buffers of 1 MiB and more (a Hub answer near its cap, a hostile one included) are mapped and
  // unmapped on their own. glibc would otherwise raise this threshold as such buffers are freed
  // and serve the next ones from the per-thread arenas, where every job thread that once held
  // one keeps its memory: dozens of retried hostile answers took the daemon past 500 MiB.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);  // NOLINT(concurrency-mt-unsafe): before any thread starts
  LogFormat format = LogFormat::Text;
  if (options.log_format == "json") {
    format = LogFormat::Json;
  } else if (options.log_format != "text") {
    std::cerr << "modelcache: --log-format must be text or json, not \"" << options.log_format
              << "\"\n";
    return 2;
  }
  if (auto r = SetupLogging(format, options.log_level); !r) {
    std::cerr << "modelcache: --log-level: " << r.error().message << "\n";
    return 2;
  }
  if (!options.kubernetes && options.watch_dir.empty()) {
    std::cerr << "modelcache: one of --watch-dir DIR or --kubernetes is required\n";
    return 2;
  }
  if (auto listen = ParseListenOption(options.listen); !listen) {
    std::cerr << "modelcache: " << listen.error().message << " (or \"off\")\n";
    return 2;
  }
  for (const auto& [list, flag] : {std::pair{&options.allowed_endpoints, "--allowed-endpoints"},
                                   std::pair{&options.allowed_stores, "--allowed-stores"}}) {
    if (auto parsed = AllowList::Parse(*list, flag); !parsed) {
      std::cerr << "modelcache: " << parsed.error().message << "\n";
      return 2;
    }
  }
  // A shared (s3://) store keeps a local cache for downloads and shards (--cache-dir); a local
  // store is its own cache.
  bool shared_store = store::IsSharedStoreUri(options.store);
  if (auto checked = store::CheckStoreUri(options.store); !checked) {
    std::cerr << "modelcache: --store: " << checked.error().message << "\n";
    return 2;
  }
  std::string local_root = !shared_store                   ? options.store
                           : !options.cache_dir.empty() ? options.cache_dir
                                                        : "/var/lib/modelcache";
  auto store = store::LocalStore::Open(local_root);
  if (!store) {
    std::cerr << "modelcache: " << (shared_store ? "--cache-dir: " : "--store: ")
              << store.error().message << "\n";
    return 1;
  }
  std::string cache_root = (*store)->root();
  if (!shared_store && !options.cache_dir.empty()) {
    // Specs whose storage.uri is s3:// stage in --cache-dir rather than in the local --store.
    auto cache = store::LocalStore::Open(options.cache_dir);
    if (!cache) {
      std::cerr << "modelcache: --cache-dir: " << cache.error().message << "\n";
      return 1;
    }
    cache_root = (*cache)->root();
  }
  // With --leader-elect the store may be shared with a leading replica whose staging files are
  // in use: only a leader cleans up.
  auto cleanup_staging = [&store] {
    if (auto r = (*store)->CleanupStaging(); !r) {
      spdlog::warn("store cleanup: {}", r.error().message);
    }
  };
  if (!options.leader_elect) {
    cleanup_staging();
  }
  std::string state_dir =
      options.state_dir.empty() ? (*store)->DefaultStateDir() : options.state_dir;

  std::optional<LeaderElectionOptions> election_options;
  std::optional<KubeConfig> election_config;
  if (options.leader_elect) {
    if (!options.kubernetes) {
      std::cerr << "modelcache: --leader-elect: needs --kubernetes (the Lease lives on the API "
                   "server)\n";
      return 2;
    }
    auto config = LoadKubeConfig(env.kube, options.kubeconfig);
    if (!config) {
      std::cerr << "modelcache: --kubernetes: " << config.error().message << "\n";
      return 1;
    }
    LeaderElectionOptions eo;
    eo.lease_name = options.leader_elect_lease_name;
    eo.lease_namespace = !options.leader_elect_namespace.empty() ? options.leader_elect_namespace
                                                                 : config->default_namespace;
    eo.identity = !options.leader_elect_identity.empty() ? options.leader_elect_identity
                                                         : DefaultLeaderIdentity();
    eo.lease_duration = options.leader_elect_lease_duration;
    eo.renew_deadline = options.leader_elect_renew_deadline;
    eo.retry_period = options.leader_elect_retry_period;
    if (auto r = ValidateLeaderElectionOptions(eo); !r) {
      std::cerr << "modelcache: " << r.error().message << "\n";
      return 2;
    }
    election_options = std::move(eo);
    election_config = std::move(*config);
  }

  // Signals must be blocked before any other thread starts, so that only the watcher sees them.
  SignalWatcher signals;

  // Declared before the reconciler so that they outlive it: its destructor joins the job threads,
  // which the shutdown deadline bounds.
  ShutdownDeadline deadline;
  ControllerMetrics metrics;
  JobMetrics jobs(metrics);
  DaemonServicesOptions so;
  so.listen = options.listen;
  so.shutdown_timeout = options.shutdown_timeout;
  so.store_root = (*store)->root();
  so.config_file = options.config_file;
  so.config_values = options.config_values;
  so.reread_config = options.reread_config;
  DaemonServices services(std::move(so), metrics);

  // The mode decides where desired state comes from and where status goes; the Manager and the
  // reconciler below are the same for both.
  auto made = NewDaemonMode(options, env, state_dir, (*store)->root());
  if (!made) {
    std::cerr << "modelcache: " << made.error().message << "\n";
    return 1;
  }
  std::unique_ptr<DaemonMode> mode = std::move(*made);
  ObjectCache cache;

  // The Manager needs the reconciler, whose job threads (wake) and the store collector's thread
  // (affected) enqueue keys into the Manager: they reach it through this pointer, set once before
  // any of those threads can run a callback (a job starts from a worker of manager.Run, the
  // collector from on_synced) and never reset. Both are stopped and joined (reconciler.Shutdown,
  // collector.Stop) before the Manager is destroyed, so no callback outlives it.
  Manager* manager_ptr = nullptr;
  reconcilers::ReconcilerOptions ro = std::move(base);
  ro.default_store = shared_store ? options.store : (*store)->root();
  ro.local_cache = cache_root;
  ro.s3_secret = options.s3_secret;
  ro.allowed_endpoints = options.allowed_endpoints;
  ro.allowed_stores = options.allowed_stores;
  ro.secrets_dir = options.secrets_dir;
  ro.max_concurrent_jobs = options.max_concurrent_jobs;
  ro.tenant_of = [&cache](const crds::ObjectKey& key) {
    auto entry = cache.Get(key);
    return entry ? TenantOf(*entry) : key.namespace_;
  };
  ro.stall_limit = options.stall_limit;
  ro.backoff_base = options.retry_base_delay;
  ro.observer = &jobs;
  ro.wake = [&manager_ptr](const crds::ObjectKey& key) { manager_ptr->Enqueue(key); };
  // Store retention: references are what the daemon knows, each resource with its status.
  StoreCollector::Options gco;
  gco.store_root = (*store)->root();
  gco.gc.keep_versions = options.keep_versions;
  gco.gc.max_bytes = options.store_max_bytes;
  gco.gc.min_free = options.min_free;
  gco.interval = options.gc_interval;
  {
    // The daemon's record among the store's users: stable across restarts of this daemon (host,
    // state directory, mode), so a restart takes over its own references.
    char host[256] = {};
    ::gethostname(host, sizeof(host) - 1);
    gco.user_id = store::StoreUserId(host, state_dir + "\n" + mode->Describe());
    gco.user_description = "modelcache run " + mode->Describe() + " (state " + state_dir +
                           ", pid " + std::to_string(::getpid()) + " on " + host + ")";
  }
  StoreCollector collector(
      gco,
      [&cache, &mode, root = (*store)->root()]() -> Result<store::GcReferences> {
        std::vector<crds::ModelCache> known;
        for (const auto& entry : cache.List()) {
          crds::ModelCache o = entry.object;
          auto stored = mode->statuses().Read(o.key());
          if (!stored) {
            return stored.error();
          }
          if (*stored) {
            o.status = (*stored)->status;
          }
          known.push_back(std::move(o));
        }
        return ReferencesOf(known, root);
      },
      [&cache, &manager_ptr](const std::vector<std::string>& names, bool all) {
        for (const auto& entry : cache.List()) {
          const std::string& name = entry.object.spec.artifact_name;
          if (all || std::find(names.begin(), names.end(), name) != names.end()) {
            manager_ptr->Enqueue(entry.object.key());
          }
        }
      });
  ro.verify_interval = options.verify_interval;
  ro.published = [&collector] { collector.Trigger(); };
  ro.retention = [&collector](const crds::ModelCache& obj) {
    return collector.ConditionFor(obj.spec.artifact_name);
  };
  ManagerOptions mo;
  mo.workers = options.workers;
  mo.metrics = &metrics;
  mo.on_status_change = [&services, &collector] {
    services.StatusChanged();
    collector.Touch();  // a resource came, went or changed: the store user record follows
  };
  mode->Configure(mo, ro);
  reconcilers::ModelCacheReconciler reconciler(ro);
  Manager manager(mo, mode->source(), cache, mode->statuses(), reconciler, RealClock::Get());
  manager_ptr = &manager;
  if (auto r = services.Attach(manager); !r) {
    std::cerr << "modelcache: " << r.error().message << "\n";
    return 1;
  }
  deadline.SetDescriber([&jobs, &manager] {
    auto running = jobs.RunningJobs();
    for (auto& key : running) {
      key += " (job)";
    }
    for (auto& busy : manager.BusyWorkers()) {
      running.push_back(busy);
    }
    return running;
  });
  signals.OnReload([&services] { services.Reload(); });
  std::stop_callback on_stop(signals.token(), [&services, &deadline, &mode] {
    services.Stopping();
    mode->Stopping();
    deadline.Arm(services.shutdown_timeout());
  });

  spdlog::info("modelcache {} (store {}, state {}, hub {}, {} workers)", mode->Describe(),
               shared_store ? options.store + ", cache " + cache_root : (*store)->root(), state_dir,
               ro.hf_endpoint, options.workers);
  if (collector.enabled()) {
    spdlog::info("store limits: {} max, {} min free, keeping {} versions; gc every {}",
                 options.store_max_bytes > 0 ? FormatBytes(options.store_max_bytes) : "no",
                 options.min_free > 0 ? FormatBytes(options.min_free) : "no",
                 options.keep_versions, FormatDuration(options.gc_interval));
  }
  auto on_synced = [&] {
    spdlog::info("initial sync done: {} resources", cache.Size());
    services.Ready();
    collector.Start();
  };
  VoidResult result;
  bool leadership_lost = false;
  if (options.leader_elect) {
    // Only the leader runs the source and the workers; a follower waits for the Lease and writes
    // nothing. Losing the Lease stops the workers and ends the process with an error (as
    // controller-runtime's "leader election lost"): Kubernetes restarts it as a follower.
    // A waiting follower is ready (/readyz), or a rolling update would never finish.
    services.StandingBy(true);
    LeaderElector elector(*election_options, *election_config, RealClock::Get());
    LeadershipEnd end = elector.Run(signals.token(), [&](std::stop_token leading) {
      services.StandingBy(false);
      cleanup_staging();
      result = manager.Run(leading, on_synced);
    });
    leadership_lost = end == LeadershipEnd::Lost;
  } else {
    result = manager.Run(signals.token(), on_synced);
  }
  signals.OnReload(nullptr);
  // The workers are joined; what can still hold up the exit are the job threads, which the
  // reconciler's destructor joins below.
  deadline.SetDescriber([&jobs] {
    auto running = jobs.RunningJobs();
    for (auto& key : running) {
      key += " (job)";
    }
    return running;
  });
  // Nothing may call into the Manager once it goes (it is destroyed first, being declared last):
  // the jobs are cancelled and joined (manager.Run did so already, unless it never ran), then the
  // collector's thread is joined.
  reconciler.Shutdown();
  collector.Stop();
  services.Detach();
  mode->Shutdown();
  if (!result) {
    spdlog::error("{}", result.error().message);
    return 1;
  }
  if (leadership_lost) {
    spdlog::error("leader election lost: exiting");
    return 1;
  }
  spdlog::info("stopped");
  return 0;
}

}  // namespace modelcache::controller
