#pragma once

// The Manager runs one controller: a Source fills the ObjectCache and enqueues keys, N workers
// take keys from the WorkQueue, call the Reconciler, and write status through the StatusStore.
//
// Status is composed here, in one place, from the reconciler's outcome: the Ready condition
// (apimachinery conventions), observedGeneration, and on errors the reason word and message.
// It is written only when something changed.

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <stop_token>
#include <string>
#include <vector>

#include "common/clock.h"
#include "common/result.h"
#include "controller/lane_executor.h"
#include "controller/object_cache.h"
#include "controller/source.h"
#include "controller/status_summary.h"
#include "controller/status_store.h"
#include "controller/work_queue.h"
#include "reconcilers/reconciler.h"

namespace modelcache::controller {

class ControllerMetrics;

struct ManagerOptions {
  int workers = 2;
  // A worker that has spent longer than this on one key makes Healthy() false (which stops the
  // systemd watchdog pings and fails /healthz). Reconciles only start and poll jobs, so a minute
  // is far beyond a healthy one.
  std::chrono::nanoseconds stuck_after = std::chrono::seconds(60);
  // Reconciles by result, reconcile duration, queue latency. Not owned; nullptr: not counted.
  ControllerMetrics* metrics = nullptr;
  // Called (on a worker thread) after a status was written or removed, so that a STATUS= line
  // can follow the phases. Must be thread-safe and quick.
  std::function<void()> on_status_change;
  // 0: a worker writes the status it composed itself, and a failed write requeues the key at
  // once (directory mode: a local file). N > 0: status writes go out on N lanes
  // (controller/lane_executor.h) keyed by object, so that a worker does not wait for the API
  // server and N writes are in flight at once, while one object's writes keep their order. The
  // status counts as written as soon as it is queued; a write that fails later forgets it (the
  // next reconcile reads the object's status again) and requeues the key with rate limiting.
  // Shutdown waits for the queued writes (bounded by status_flush_timeout).
  int status_writers = 0;
  std::chrono::milliseconds status_flush_timeout{10'000};

  // Mode-specific steps around a reconcile (Kubernetes mode: the finalizer and Events). Each may
  // be empty; each is called from a worker, never concurrently for the same key.
  //
  // Before reconciling a live, valid object (e.g. adding a finalizer). An error skips the
  // reconcile and requeues the key with rate limiting.
  std::function<VoidResult(const crds::ModelCache& object)> before_reconcile;
  // When set, before_reconcile is called only for objects for which this says it has something
  // to do (Kubernetes mode: the object has no finalizer yet). With status_writers > 0 that call
  // runs on the object's writer lane instead of in the worker, ahead of the object's status
  // writes, and the key is queued again once it succeeded: the reconcile still never starts
  // before it, while the worker goes on with other keys. Until the source shows the object
  // changed (the hook's write seen), later reconciles of the key do not call it again.
  std::function<bool(const crds::ModelCache& object)> before_reconcile_needed;
  // For an object whose metadata.deletionTimestamp is set, after the reconciler has handled it as
  // deleted (work cancelled, reference dropped): e.g. removing the finalizer. An error requeues
  // the key with rate limiting.
  std::function<VoidResult(const crds::ModelCache& object)> finalize;
  // After the status of a live object is composed, before it is compared and written: adds what
  // the mode knows beyond the reconcile (the fleet aggregate: status.nodes and NodesReady).
  // `now` is the RFC 3339 time of the composition.
  std::function<void(const crds::ModelCache& object, crds::ModelCacheStatus& status,
                     const std::string& now)>
      amend_status;
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

  // False once a worker has been inside one reconcile for longer than options.stuck_after (a
  // stuck worker loop), true otherwise, also before Run() and while the source syncs.
  bool Healthy() const;
  // True from the end of the source's first full list until shutdown begins.
  bool Ready() const { return synced_.load() && !stopping_.load(); }
  // Keys ready in the work queue (not those waiting for a delay or being processed).
  size_t QueueDepth() { return queue_.Len(); }
  // The last status of every resource in the source cache; one not reconciled yet since start
  // has an empty status (phase "": pending).
  std::vector<crds::ModelCacheStatus> Statuses() const;
  // Resources per phase (those without a status yet as Pending), kept as statuses are written:
  // cheap enough to call on every status change.
  StatusSummary Summary() const;
  // The keys workers are reconciling right now, with how long each has taken (for the log when
  // shutdown runs out of time).
  std::vector<std::string> BusyWorkers() const;

  // What the queue does with a key once its reconcile is over; Requeue() is the one switch
  // that turns it into queue operations (controller-runtime's reconcileHandler).
  struct QueueStep {
    enum class Kind {
      Forget,          // done until the next event: reset the key's backoff
      AddAfter,        // Forget, then queue the key again after `after`
      AddRateLimited,  // queue it again after the key's next backoff
      Leave,           // nothing (shutting down)
    };
    Kind kind;
    std::chrono::milliseconds after{0};
  };
  // The step for a reconcile's result, as reconcilers/reconciler.h states the contract
  // (exposed for tests).
  static QueueStep QueueStepFor(const Result<reconcilers::Outcome>& result, bool stopping);

  // The status the manager composes from a reconcile result (exposed for tests).
  static crds::ModelCacheStatus ComposeStatus(const crds::ModelCacheStatus& previous,
                                              const Result<reconcilers::Outcome>& result,
                                              int64_t generation, const std::string& now);

 private:
  void Worker(int slot, std::stop_token stop);
  // Writes, for every resource whose job the shutdown interrupted, a status that says so.
  void FlushInterrupted();
  void Requeue(const crds::ObjectKey& key, QueueStep step);
  // Reconciles `key` and moves it in the queue: one exit, through Requeue().
  void ProcessKey(const crds::ObjectKey& key, std::stop_token stop);
  reconcilers::Request RequestFor(const crds::ObjectKey& key);
  // The reconciler's result; an exception becomes an Internal error.
  Result<reconcilers::Outcome> ReconcileGuarded(const reconcilers::Request& request,
                                                std::stop_token stop);
  // Drops a deleted object's status and finalizes it; its reconcile's queue step.
  QueueStep ReportDeleted(const reconcilers::Request& request);
  // Composes, counts and writes a live object's status; its reconcile's queue step.
  QueueStep ReportLive(const reconcilers::Request& request,
                       const Result<reconcilers::Outcome>& result, std::stop_token stop);
  // Runs options_.before_reconcile for `object` as the options say (see there). True when the
  // reconcile may go ahead now; false when it failed (the key is requeued with rate limiting) or
  // was queued on the writer lanes (the key is queued again when it is done).
  bool Prepare(const crds::ModelCache& object);
  crds::ModelCacheStatus LastStatus(const crds::ObjectKey& key);
  void CountResult(std::string_view result);
  // Keep written_ and summary_ in step. REQUIRES: mu_ held.
  void RecordWritten(const crds::ObjectKey& key, const crds::ModelCacheStatus& status);
  void ForgetWritten(const crds::ObjectKey& key);
  // Writes `out` (composed from a reconcile that succeeded if `reconcile_ok`; `before` is the
  // previous status) now, or queues it on the writer lanes. False if a write done now failed
  // (the caller requeues the key with rate limiting; a queued write that fails requeues it).
  bool WriteStatus(crds::ModelCache out, const crds::ModelCacheStatus& before, bool reconcile_ok);
  // What follows a status write: on failure, the log (and for a queued write the rate-limited
  // requeue); on success, the counters, hooks and the phase log line.
  bool FinishWrite(const crds::ModelCache& out, const crds::ModelCacheStatus& before,
                   bool reconcile_ok, bool queued, const VoidResult& written);

  ManagerOptions options_;
  Source& source_;
  ObjectCache& cache_;
  StatusStore& statuses_;
  reconcilers::Reconciler& reconciler_;
  Clock& clock_;
  WorkQueue<crds::ObjectKey> queue_;
  ManagerStats stats_;

  std::atomic<bool> synced_{false};
  std::atomic<bool> stopping_{false};

  struct Busy {
    crds::ObjectKey key;
    Clock::TimePoint since;
  };
  mutable std::mutex mu_;
  std::map<crds::ObjectKey, crds::ModelCacheStatus> written_;  // guarded by mu_
  StatusSummary summary_;                                      // of written_; guarded by mu_
  std::map<int, Busy> busy_;                                   // by worker slot; guarded by mu_
  // Keys whose before_reconcile ran on a lane and succeeded, with the resourceVersion of the
  // object it was called for; guarded by mu_.
  std::map<crds::ObjectKey, std::string> prepared_;
  std::set<crds::ObjectKey> preparing_;  // before_reconcile queued on a lane; guarded by mu_
  std::unique_ptr<LaneExecutor> writer_;  // options.status_writers > 0; declared last: its
                                          // lanes use the members above
};

}  // namespace modelcache::controller
