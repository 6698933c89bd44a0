#pragma once

// Shared by the reconciler unit tests: drives one request through Reconcile until it is final,
// waiting for each requeue or for the reconciler's wake callback, as the Manager would.

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>

#include "reconcilers/model_cache_reconciler.h"

namespace modelcache::reconcilers {

class ReconcileLoop {
 public:
  // For ReconcilerOptions::wake. The loop must outlive the reconciler it is given to.
  std::function<void(const crds::ObjectKey&)> WakeCallback() {
    return [this](const crds::ObjectKey&) {
      std::lock_guard lock(mu_);
      woken_ = true;
      cv_.notify_all();
    };
  }

  // Reconciles until the status is Ready, a result asks for no requeue, or an error comes back.
  Result<Outcome> RunToEnd(ModelCacheReconciler& reconciler, Request& request) {
    return RunUntil(reconciler, request, [](const Outcome& o) {
      return o.status.phase == crds::kPhaseReady;
    });
  }

  // Reconciles until `done` holds for an outcome, a result asks for no requeue or one later than
  // 30 s (a schedule: with a FakeClock nothing happens before the test advances it), or an error
  // comes back. Between calls it waits for the requeue's delay or the wake callback.
  Result<Outcome> RunUntil(ModelCacheReconciler& reconciler, Request& request,
                           const std::function<bool(const Outcome&)>& done) {
    for (int i = 0; i < 2000; ++i) {
      auto r = reconciler.Reconcile(request, {});
      if (!r) {
        return r;
      }
      request.status = r->status;
      request.status.observed_generation = request.object->metadata.generation;
      if (done(*r) || r->requeue.after.count() == 0 ||
          r->requeue.after > std::chrono::seconds(30)) {
        return r;
      }
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, r->requeue.after, [this] { return woken_; });
      woken_ = false;
    }
    return Error(Reason::Internal, "did not finish");
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool woken_ = false;
};

}  // namespace modelcache::reconcilers
