// `modelcache run`: the daemon.

#include <signal.h>

#include <csignal>
#include <iostream>
#include <memory>
#include <optional>
#include <thread>

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include "common/clock.h"
#include "common/log.h"
#include "controller/commands.h"
#include "controller/daemon_mode.h"
#include "controller/kube_config.h"
#include "controller/leader_election.h"
#include "controller/manager.h"
#include "controller/object_cache.h"
#include "reconcilers/model_cache_reconciler.h"
#include "store/local_store.h"

namespace modelcache::controller {
namespace {

// Blocks the shutdown signals in every thread (call before starting any) and turns them into a
// stop request, handled on a thread of its own with sigwait. A second signal exits at once.
class SignalWatcher {
 public:
  SignalWatcher() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGUSR2);  // the destructor's wake-up
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::jthread([this] {
      int received = 0;
      int count = 0;
      while (sigwait(&set_, &received) == 0) {
        if (received == SIGUSR2) {
          return;
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

 private:
  sigset_t set_{};
  std::stop_source stop_;
  std::jthread thread_;
};

}  // namespace

int RunDaemon(const RunOptions& options, const Environment& env) {
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
  if (options.store.rfind("s3://", 0) == 0) {
    std::cerr << "modelcache: --store: S3 stores are not available in this build yet (issue #8)\n";
    return 2;
  }
  auto store = store::LocalStore::Open(options.store);
  if (!store) {
    std::cerr << "modelcache: --store: " << store.error().message << "\n";
    return 1;
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
  std::string state_dir = options.state_dir.empty() ? (*store)->root() + "/state"
                                                    : options.state_dir;

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

  // The mode decides where desired state comes from and where status goes; the Manager and the
  // reconciler below are the same for both.
  auto made = NewDaemonMode(options, env, state_dir);
  if (!made) {
    std::cerr << "modelcache: " << made.error().message << "\n";
    return 1;
  }
  std::unique_ptr<DaemonMode> mode = std::move(*made);
  ObjectCache cache;

  Manager* manager_ptr = nullptr;
  reconcilers::ReconcilerOptions ro;
  ro.default_store = (*store)->root();
  ro.hf_endpoint = !options.hf_endpoint.empty() ? options.hf_endpoint
                   : !env.hf_endpoint.empty()   ? env.hf_endpoint
                                                : "https://huggingface.co";
  ro.hf_token = env.hf_token;
  ro.secrets_dir = options.secrets_dir;
  ro.max_concurrent_jobs = options.max_concurrent_jobs;
  ro.parallel_files = options.parallel_files;
  ro.backoff_base = options.retry_base_delay;
  ro.wake = [&manager_ptr](const crds::ObjectKey& key) {
    if (manager_ptr != nullptr) {
      manager_ptr->Enqueue(key);
    }
  };
  ManagerOptions mo;
  mo.workers = options.workers;
  mode->Configure(mo, ro);
  reconcilers::ModelCacheReconciler reconciler(ro);
  Manager manager(mo, mode->source(), cache, mode->statuses(), reconciler, RealClock::Get());
  manager_ptr = &manager;

  spdlog::info("modelcache {} (store {}, state {}, hub {}, {} workers)", mode->Describe(),
               (*store)->root(), state_dir, ro.hf_endpoint, options.workers);
  auto on_synced = [&] {
    spdlog::info("initial sync done: {} resources", cache.Size());
    sd_notify(0, "READY=1");
  };
  VoidResult result;
  bool leadership_lost = false;
  if (options.leader_elect) {
    // Only the leader runs the source and the workers; a follower waits for the Lease and writes
    // nothing. Losing the Lease stops the workers and ends the process with an error (as
    // controller-runtime's "leader election lost"): Kubernetes restarts it as a follower.
    LeaderElector elector(*election_options, *election_config, RealClock::Get());
    LeadershipEnd end = elector.Run(signals.token(), [&](std::stop_token leading) {
      cleanup_staging();
      result = manager.Run(leading, on_synced);
    });
    leadership_lost = end == LeadershipEnd::Lost;
  } else {
    result = manager.Run(signals.token(), on_synced);
  }
  sd_notify(0, "STOPPING=1");
  manager_ptr = nullptr;
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
