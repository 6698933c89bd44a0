#pragma once

// Where desired state comes from. A Source fills the ObjectCache and tells the controller which
// keys to look at; it never reconciles anything itself ("events are only triggers; the key is what
// flows"). Implementations: DirectorySource (inotify on a directory of YAML), and a Kubernetes
// list/watch source (issue 5).

#include <functional>
#include <memory>

#include "common/result.h"
#include "controller/object_cache.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

// Called with a key whose object was added, changed or removed (or, on a periodic resync, with
// every key). Must be cheap and thread-safe; typically WorkQueue::Add.
using EnqueueFn = std::function<void(const crds::ObjectKey&)>;

class Source {
 public:
  virtual ~Source() = default;

  // Lists everything into `cache`, enqueues every listed key, and returns once that initial list
  // is in the cache (HasSynced() is then true). Afterwards the source keeps `cache` up to date on
  // its own thread and calls `enqueue` for each key that changed, until Stop(). On failure
  // (e.g. the directory does not exist) nothing keeps running. `cache` and `enqueue` must stay
  // valid until Stop() returns. REQUIRES: called at most once.
  virtual VoidResult Start(ObjectCache& cache, EnqueueFn enqueue) = 0;

  // True once the initial list is in the cache. Thread-safe.
  virtual bool HasSynced() const = 0;

  // Stops the source's thread and returns when it has exited; no enqueue happens afterwards. The
  // cache keeps its contents. Idempotent; safe without Start().
  virtual void Stop() = 0;
};

using SourcePtr = std::unique_ptr<Source>;

}  // namespace modelcache::controller
