#pragma once

// Store garbage collection as the controller runs it: the references that ModelCache resources
// hold, and the daemon's periodic collector (docs/store-layout.md, "Retention").

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "crds/model_cache.h"
#include "store/gc.h"

namespace modelcache::controller {

// What `objects` reference in the store at `store_root` (objects whose spec.storage.uri names
// another store are skipped; an empty uri means `store_root`): each one's artifact name (so its
// `current` version and the --keep-versions newest are kept), the version its status reports, and
// the hub snapshot of its status.resolvedRevision.
store::GcReferences ReferencesOf(const std::vector<crds::ModelCache>& objects,
                                 const std::string& store_root);

// The daemon's collector, on its own thread. It publishes the daemon's references as its store
// user record (store/store_users.h) every kStoreUserHeartbeat and whenever Trigger() is called
// (after each publish), whether or not a limit is set, so that every other user of the store keeps
// them. When a limit (max_bytes or min_free) is set it also runs store::RunGc every `interval` and
// on Trigger(), with its own references and every live user's; without limits the daemon removes
// nothing and `modelcache gc` is the way to clean up.
// Logs what it removed and the bytes freed, and remembers per artifact name what it did, for the
// resources' Retained condition.
//
// Thread-safe.
class StoreCollector {
 public:
  struct Options {
    std::string store_root;
    store::GcOptions gc;  // dry_run is ignored
    std::chrono::milliseconds interval{std::chrono::minutes(10)};
    // This daemon's store user record (store::StoreUserId); empty: none is published.
    std::string user_id;
    std::string user_description;
  };
  // `references` gathers the references at the start of each run (an error skips the run: GC
  // never guesses). `affected` is called after a run with the artifact names whose resources
  // should be reconciled to report it (empty names: all of them).
  StoreCollector(Options options, std::function<Result<store::GcReferences>()> references,
                 std::function<void(const std::vector<std::string>& names, bool all)> affected);
  ~StoreCollector();  // Stop()
  StoreCollector(const StoreCollector&) = delete;
  StoreCollector& operator=(const StoreCollector&) = delete;

  bool enabled() const { return store::HasLimits(options_.gc); }
  // Starts the thread (publishing the record at once). The record stays when the daemon stops.
  void Start();
  // Stops the thread and waits for it, then publishes the record a last time (on the caller's
  // thread): `references` and `affected` are not called afterwards. Idempotent; call from the
  // thread that called Start.
  void Stop();
  // Publishes the record and runs GC (when enabled) soon.
  void Trigger();
  // Publishes the record soon (coalesced; no GC).
  void Touch();

  // The Retained condition for a resource of artifact `name` after the last run that did
  // something: reason Evicted (older versions removed) or Kept (the store is over its limits and
  // this artifact is referenced). nullopt when GC has nothing to say.
  std::optional<crds::Condition> ConditionFor(const std::string& name) const;

  // Runs GC once now, on the caller's thread, with the daemon's and the live users' references
  // (publishing the daemon's record first).
  void RunOnce();

 private:
  Options options_;
  // Publishes the record with `refs`; logs a failure.
  void Publish(const store::GcReferences& refs);

  std::function<Result<store::GcReferences>()> references_;
  std::function<void(const std::vector<std::string>&, bool)> affected_;
  mutable std::mutex mu_;
  std::condition_variable_any cv_;
  bool triggered_ = false;                      // guarded by mu_
  bool touched_ = false;                        // guarded by mu_
  std::map<std::string, std::string> evicted_;  // name -> message, guarded by mu_
  std::string over_limits_;                     // message when over the limits, guarded by mu_
  std::jthread thread_;
};

}  // namespace modelcache::controller
