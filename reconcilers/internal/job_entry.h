#pragma once

// A job the reconciler runs for a key on its pool: a cache job, a heal or a drift check, with
// what the reconciles polling it read (progress, whether it finished, how it ended). Private to
// reconcilers/.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <variant>

#include "common/result.h"
#include "reconcilers/internal/cache_job.h"

namespace modelcache::reconcilers {

// What a job is for.
enum class JobKind {
  Cache,       // resolve, download, shard and publish: a new spec, a refresh, spec.force
  Heal,        // a cache job that repairs what a drift check (or a missing version) showed
  DriftCheck,  // re-hashes a Ready artifact and its blobs (--verify-interval)
};

// How a cache or heal job ended: what it published, or why it did not.
struct CacheJobEnd {
  Result<CacheJobOutput> output;
};
// How a drift check ended: "" when the artifact is intact, else what changed on disk.
struct DriftCheckEnd {
  Result<std::string> drift;
};
// Its alternative says which kind of job ended: CacheJobEnd for Cache and Heal jobs.
using JobEnd = std::variant<CacheJobEnd, DriftCheckEnd>;

// Made by a reconcile and shared (by shared_ptr) between the reconciles of its key and the job's
// thread: the job writes `state`, then `end`, then sets `finished`.
struct JobEntry {
  JobKind kind = JobKind::Cache;
  std::string spec_hash;
  int64_t force = 0;
  // Kind Heal: what it repairs (the drift found, or the missing version), for its status.
  std::string heal;
  std::stop_source stop;
  CacheJobState state;  // a cache or heal job's progress
  std::atomic<bool> finished{false};
  // Written by the job thread before `finished` is set; read by reconciles after.
  std::optional<JobEnd> end;
  // Set when the job pool asked the job to give its slot to another tenant (JobPool's preempt).
  std::atomic<bool> preempted{false};
  // A reconcile waiting for the job (ReconcilerOptions::settle) takes its result itself, so the
  // job's end does not wake the key then. Set before the job is submitted (so that a job that
  // ends before the wait begins does not wake the key either); cleared when the wait ends.
  std::mutex done_mu;
  std::condition_variable_any done_cv;
  bool awaited = false;  // guarded by done_mu

  // True for a finished cache job that stopped because the pool preempted it (not a failure: it
  // is started again, behind its tenant's other jobs).
  bool Preempted() const {
    const CacheJobEnd* cache = end ? std::get_if<CacheJobEnd>(&*end) : nullptr;
    return preempted && cache != nullptr && !cache->output &&
           cache->output.error().reason == Reason::Cancelled;
  }

  // Asks a resolving or downloading job to stop for another tenant; a job sharding or uploading
  // keeps its slot (that work would be lost).
  bool Preempt() {
    JobPhase phase = state.phase.load();
    if (phase != JobPhase::Pending && phase != JobPhase::Resolving &&
        phase != JobPhase::Downloading) {
      return false;
    }
    preempted = true;
    stop.request_stop();
    return true;
  }

  // Marks the job finished; true if a reconcile was waiting for it.
  bool Finish() {
    bool was_awaited = false;
    {
      std::lock_guard lock(done_mu);
      finished = true;
      was_awaited = awaited;
    }
    done_cv.notify_all();
    return was_awaited;
  }

  // Waits up to `d` (or until `cancel`) for the job to finish; true if it did.
  bool AwaitFinish(std::chrono::milliseconds d, std::stop_token cancel) {
    std::unique_lock lock(done_mu);
    bool done = done_cv.wait_for(lock, cancel, d, [this] { return finished.load(); });
    awaited = false;
    return done;
  }
};

}  // namespace modelcache::reconcilers
