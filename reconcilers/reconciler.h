#pragma once

// The reconcile contract (controller-runtime's, in C++). A reconciler is handed a key and the
// current state the controller knows (the object from the source cache, the status last written)
// and takes the next step toward the spec. It never sees the event that queued the key.
//
// Outcomes map to queue operations in the controller:
//   - Result error, transient reason  -> AddRateLimited (or AddAfter(retry_after) when the server
//                                        said how long to wait); status keeps its phase.
//   - Result error, permanent reason  -> Forget; phase Failed until the spec changes.
//   - Outcome with Requeue::After(t)  -> Forget, then AddAfter(t).
//   - Outcome with Requeue::Done()    -> Forget.
// In every case the controller sets the Ready condition and observedGeneration, and writes the
// status only when something changed.

#include <chrono>
#include <optional>
#include <stop_token>

#include "common/result.h"
#include "crds/model_cache.h"

namespace modelcache::reconcilers {

struct Requeue {
  static Requeue Done() { return {}; }
  static Requeue After(std::chrono::milliseconds delay) { return Requeue{delay}; }
  std::chrono::milliseconds after{0};
};

struct Request {
  crds::ObjectKey key;
  // nullopt: the resource was deleted (or its document removed).
  std::optional<crds::ModelCache> object;
  // Set when the source could not accept the object (duplicate name, YAML or validation error):
  // the reconciler reports it and takes no other step.
  std::optional<Error> source_error;
  // The status the controller last wrote for this key (empty on first sight).
  crds::ModelCacheStatus status;
  // With object nullopt: the object being deleted (a deletionTimestamp, held by a finalizer),
  // when the source still has it; what it held can then be let go after a restart too.
  std::optional<crds::ModelCache> deleting = std::nullopt;
};

struct Outcome {
  crds::ModelCacheStatus status;
  Requeue requeue;
};

class Reconciler {
 public:
  virtual ~Reconciler() = default;
  // Takes the next step toward request.object's spec and returns the status to report.
  // Thread-safe; never called concurrently for the same key.
  virtual Result<Outcome> Reconcile(const Request& request, std::stop_token stop) = 0;
  // Cancels every running job and waits for them to stop (shutdown). Verified bytes are kept.
  virtual void Shutdown() = 0;
};

}  // namespace modelcache::reconcilers
