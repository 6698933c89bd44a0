#pragma once

// A fixed set of threads (the job slots, --max-concurrent-jobs) shared fairly between tenants
// (Kubernetes mode: namespaces; directory mode: the top-level entries of the watched directory).
// Jobs observe their own stop tokens; the pool bounds how many run at once and decides which
// waiting job runs next. Private to reconcilers/.
//
// Fairness, in two rules:
//   * A free slot goes to the waiting tenant with the fewest running jobs (ties: the one served
//     longest ago); a tenant's own jobs run in the order they were submitted. One tenant with
//     work uses every slot: no slot idles while any job waits.
//   * A tenant's fair share is threads / tenants with work (at least 1). When tenants below
//     their share wait and no slot is free or being freed for them, the pool preempts a job of
//     a tenant above its share (the one started last; only jobs that say they may be preempted),
//     so a tenant that holds every slot gives one up within a job's cancellation latency instead
//     of when its jobs end. A preempted job returns as cancelled; its owner submits it again.
//
// Thread-safe.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace modelcache::reconcilers {

class JobPool {
 public:
  explicit JobPool(int threads);
  // Stops and joins (see Join).
  ~JobPool();
  JobPool(const JobPool&) = delete;
  JobPool& operator=(const JobPool&) = delete;

  // Queues `job` for `tenant`; it runs when the pool gives the tenant a slot. `preempt`, when
  // set, is called (never under the pool's lock, at most once) to ask the running job to give
  // its slot back; it returns false if the job cannot be stopped now (then it is not asked
  // again). After Stop(), jobs are dropped unrun.
  void Submit(const std::string& tenant, std::function<void()> job,
              std::function<bool()> preempt = {});
  // Drops queued jobs (returning them so the caller can complete them) and lets threads exit once
  // their current job returns.
  std::vector<std::function<void()>> Stop();
  // Stops, then waits for the running jobs to return (callers cancel them first). Idempotent; never
  // called from a job.
  void Join();
  // True when a job submitted now would start at once: more threads than running and queued
  // jobs.
  bool HasFreeThread();

 private:
  struct Queued {
    std::function<void()> job;
    std::function<bool()> preempt;
  };
  struct Tenant {
    std::deque<Queued> queue;
    size_t running = 0;
    uint64_t served = 0;  // when it last got a slot (a counter), for ties
  };
  struct Running {
    uint64_t id = 0;
    std::string tenant;
    std::function<bool()> preempt;  // emptied once called: a job is asked at most once
    bool preempting = false;        // asked to give its slot back and agreed, not returned yet
  };
  struct Preemption {
    uint64_t id = 0;
    std::function<bool()> preempt;
  };

  void Loop();
  // The jobs to ask (outside the lock) to give their slots back so that the waiting tenants
  // below their share get slots. Marks them asked.
  std::vector<Preemption> PickPreemptions();  // requires mu_
  // Asks PickPreemptions()' jobs; one that refuses is replaced by the next candidate.
  void Preempt();  // without mu_

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Tenant> tenants_;  // guarded by mu_; only tenants with work
  std::list<Running> running_;             // guarded by mu_; in start order
  size_t queued_ = 0;                      // guarded by mu_
  uint64_t clock_ = 0;                     // guarded by mu_; orders starts (ids, served)
  bool stopping_ = false;                  // guarded by mu_
  std::vector<std::jthread> threads_;      // emptied (joined) by Join, on one thread
};

}  // namespace modelcache::reconcilers
