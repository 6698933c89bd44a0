// `modelcache run`: the daemon.

#include <signal.h>

#include <csignal>
#include <iostream>
#include <memory>
#include <thread>

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include "common/clock.h"
#include "common/log.h"
#include "controller/commands.h"
#include "controller/directory_source.h"
#include "controller/manager.h"
#include "controller/object_cache.h"
#include "controller/status_store.h"
#include "reconcilers/model_cache_reconciler.h"
#include "store/local_store.h"
#include "store/s3_store.h"

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
  if (options.kubernetes) {
    std::cerr << "modelcache: Kubernetes mode is not available in this build yet (issue #5); use "
                 "--watch-dir\n";
    return 2;
  }
  if (options.watch_dir.empty()) {
    std::cerr << "modelcache: one of --watch-dir DIR or --kubernetes is required\n";
    return 2;
  }
  // An s3:// store keeps a local cache for downloads and shards (--cache-dir); a local store is
  // its own cache.
  bool s3_store = options.store.rfind("s3://", 0) == 0;
  if (s3_store) {
    if (auto loc = store::ParseS3StoreUri(options.store); !loc) {
      std::cerr << "modelcache: --store: " << loc.error().message << "\n";
      return 2;
    }
  }
  std::string local_root = !s3_store                   ? options.store
                           : !options.cache_dir.empty() ? options.cache_dir
                                                        : "/var/lib/modelcache";
  auto store = store::LocalStore::Open(local_root);
  if (!store) {
    std::cerr << "modelcache: " << (s3_store ? "--cache-dir: " : "--store: ")
              << store.error().message << "\n";
    return 1;
  }
  std::string cache_root = (*store)->root();
  if (!s3_store && !options.cache_dir.empty()) {
    // Specs whose storage.uri is s3:// stage in --cache-dir rather than in the local --store.
    auto cache = store::LocalStore::Open(options.cache_dir);
    if (!cache) {
      std::cerr << "modelcache: --cache-dir: " << cache.error().message << "\n";
      return 1;
    }
    cache_root = (*cache)->root();
  }
  if (auto r = (*store)->CleanupStaging(); !r) {
    spdlog::warn("store cleanup: {}", r.error().message);
  }
  std::string state_dir = options.state_dir.empty() ? (*store)->root() + "/state"
                                                    : options.state_dir;

  // Signals must be blocked before any other thread starts, so that only the watcher sees them.
  SignalWatcher signals;

  FileStatusStore statuses(state_dir);
  ObjectCache cache;
  DirectorySource source(options.watch_dir, options.resync_period, &statuses);

  Manager* manager_ptr = nullptr;
  reconcilers::ReconcilerOptions ro;
  ro.default_store = s3_store ? options.store : (*store)->root();
  ro.local_cache = cache_root;
  ro.aws_env = env.aws;
  ro.aws_overrides.endpoint_url = options.s3_endpoint;
  ro.s3_secret = options.s3_secret;
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
  reconcilers::ModelCacheReconciler reconciler(ro);
  ManagerOptions mo;
  mo.workers = options.workers;
  Manager manager(mo, source, cache, statuses, reconciler, RealClock::Get());
  manager_ptr = &manager;

  spdlog::info("modelcache watching {} (store {}, state {}, hub {}, {} workers)",
               options.watch_dir, s3_store ? options.store + ", cache " + cache_root
                                           : (*store)->root(),
               state_dir, ro.hf_endpoint, options.workers);
  auto result = manager.Run(signals.token(), [&] {
    spdlog::info("initial sync done: {} resources", cache.Size());
    sd_notify(0, "READY=1");
  });
  sd_notify(0, "STOPPING=1");
  manager_ptr = nullptr;
  if (!result) {
    spdlog::error("{}", result.error().message);
    return 1;
  }
  spdlog::info("stopped");
  return 0;
}

}  // namespace modelcache::controller
