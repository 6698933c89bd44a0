#pragma once

// The Manager runs one controller: a Source fills the ObjectCache and enqueues keys, N workers
// take keys from the WorkQueue, call the Reconciler, and write status through the StatusStore.
//
// Status is composed here, in one place, from the reconciler's outcome: the Ready condition
// (apimachinery conventions), observedGeneration, and on errors the reason word and message.
// It is written only when something changed.

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stop_token>

#include "common/clock.h"
#include "common/result.h"
#include "controller/object_cache.h"
#include "controller/source.h"
#include "controller/status_store.h"
#include "controller/work_queue.h"
#include "reconcilers/reconciler.h"

namespace modelcache::controller {

struct ManagerOptions {
  int workers = 2;

  // Mode-specific steps around a reconcile (Kubernetes mode: the finalizer and Events). Each may
  // be empty; each is called from a worker, never concurrently for the same key.
  //
  // Before reconciling a live, valid object (e.g. adding a finalizer). An error skips the
  // reconcile and requeues the key with rate limiting.
  std::function<VoidResult(const crds::ModelCache& object)> before_reconcile;
  // For an object whose metadata.deletionTimestamp is set, after the reconciler has handled it as
  // deleted (work cancelled, reference dropped): e.g. removing the finalizer. An error requeues
  // the key with rate limiting.
  std::function<VoidResult(const crds::ModelCache& object)> finalize;
  // After each status write: `object` carries the new status, `before` the previous one
  // (e.g. recording an Event when the phase or the Ready condition moved).
  std::function<void(const crds::ModelCache& object, const crds::ModelCacheStatus& before)>
      status_written;
};

// Counts a health or metrics endpoint can read. All relaxed atomics.
struct ManagerStats {
  std::atomic<uint64_t> reconciles_ok{0};
  std::atomic<uint64_t> reconciles_error{0};
  std::atomic<uint64_t> reconciles_requeue{0};
  std::atomic<uint64_t> status_writes{0};
};

class Manager {
 public:
  Manager(ManagerOptions options, Source& source, ObjectCache& cache, StatusStore& statuses,
          reconcilers::Reconciler& reconciler, Clock& clock);
  ~Manager();
  Manager(const Manager&) = delete;
  Manager& operator=(const Manager&) = delete;

  // Starts the source (returns once its first full list is cached), calls `on_synced`, starts the
  // workers and blocks until `stop` is requested. Then it stops the source, cancels jobs (keeping
  // verified bytes), lets the workers finish their current key and returns.
  // Fails only when the source cannot start.
  VoidResult Run(std::stop_token stop, const std::function<void()>& on_synced = {});

  // Queues a key for reconciling (thread-safe): the reconciler's job-finished callback.
  void Enqueue(const crds::ObjectKey& key);

  const ManagerStats& stats() const { return stats_; }

  // The status the manager composes from a reconcile result (exposed for tests).
  static crds::ModelCacheStatus ComposeStatus(const crds::ModelCacheStatus& previous,
                                              const Result<reconcilers::Outcome>& result,
                                              int64_t generation, const std::string& now);

 private:
  void Worker(std::stop_token stop);
  void ProcessKey(const crds::ObjectKey& key, std::stop_token stop);
  crds::ModelCacheStatus LastStatus(const crds::ObjectKey& key);

  ManagerOptions options_;
  Source& source_;
  ObjectCache& cache_;
  StatusStore& statuses_;
  reconcilers::Reconciler& reconciler_;
  Clock& clock_;
  WorkQueue<crds::ObjectKey> queue_;
  ManagerStats stats_;

  std::mutex mu_;
  std::map<crds::ObjectKey, crds::ModelCacheStatus> written_;  // guarded by mu_
};

}  // namespace modelcache::controller
