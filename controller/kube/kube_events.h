#pragma once

// Kubernetes Events about ModelCache objects, recorded the way client-go's tools/record recorder
// does, so that `kubectl describe modelcache NAME` and `kubectl get events` show what happened:
// core v1 Events named "<object name>.<unix nanoseconds, hex>" in the object's namespace, with
// involvedObject (apiVersion, kind, namespace, name, uid, resourceVersion), type Normal|Warning,
// reason, message, source {component, host}, reportingController/reportingInstance, count and
// first/lastTimestamp.
//
// Every event first passes an EventCorrelator (client-go's events_cache.go, same defaults):
//   - aggregation: once 10 events that differ only in their message (same source, object, type
//     and reason) were seen within 10 minutes, further ones become one event whose message is
//     "(combined from similar events): <message>";
//   - de-duplication: an event equal to an earlier one (message included) is not created again;
//     the earlier one is PATCHed with count+1 and a new lastTimestamp (and created again if it
//     is gone);
//   - spam filter: per source and object a token bucket of 25 events refilled at one per
//     5 minutes; events beyond it are dropped.
//
// Events go out on `senders` lanes (controller/lane_executor.h) chosen by the involved object, so
// that many objects' Events are sent at once while one object's keep their order. The correlator
// is shared under a lock; every key it keeps names the involved object, so correlating on lanes
// decides exactly as client-go's one goroutine does.
//
// Messages are the Ready condition's, which never carry secrets.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "controller/kube/kube_client.h"
#include "controller/lane_executor.h"
#include "crds/model_cache.h"

namespace modelcache::controller {

struct EventCorrelatorOptions {
  // Spam filter: events per source+object in a burst, and the refill period of one token
  // (client-go: burst 25, qps 1/300).
  int burst = 25;
  std::chrono::milliseconds refill_every{300'000};
  // Aggregation: similar events (differing only in message) within `aggregate_interval` before
  // they are combined (client-go: 10 in 600 s).
  size_t aggregate_max_events = 10;
  std::chrono::milliseconds aggregate_interval{600'000};
  // Entries kept by each of the correlator's LRU caches (client-go: 4096).
  size_t cache_entries = 4096;
};

// The correlator's verdict on one event.
// clang-tidy 14 takes the implicit noexcept move of a nlohmann::json member for one that throws.
struct CorrelatedEvent {  // NOLINT(bugprone-exception-escape)
  bool skip = false;     // dropped by the spam filter
  nlohmann::json event;  // the event to create (or, with a patch, the one that is updated)
  // Null: create `event`. Otherwise a merge patch ({count, lastTimestamp, message}) for the
  // existing event named event.metadata.name.
  nlohmann::json patch;
};

// Not thread-safe: the recorder calls it under a lock of its own.
class EventCorrelator {
 public:
  EventCorrelator(EventCorrelatorOptions options, const Clock& clock);
  ~EventCorrelator();
  EventCorrelator(const EventCorrelator&) = delete;
  EventCorrelator& operator=(const EventCorrelator&) = delete;

  // Aggregates, de-duplicates and filters `event` (a core v1 Event as built by MakeEvent).
  CorrelatedEvent Correlate(nlohmann::json event);
  // Records the server's answer to a create or patch, so that a later duplicate patches that
  // event (its name and count).
  void UpdateState(const nlohmann::json& event);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A core v1 Event about `object` at wall time `now`, before correlation.
nlohmann::json MakeEvent(const crds::ModelCache& object, std::string_view type,
                         std::string_view reason, std::string_view message,
                         std::string_view component, std::string_view host,
                         std::chrono::system_clock::time_point now);

struct EventRecorderOptions {
  std::string component = "modelcache";  // source.component, reportingController
  std::string host;                      // source.host, reportingInstance (the node name)
  EventCorrelatorOptions correlator;
  // Events waiting to be sent; more are dropped (client-go's broadcaster queue holds 1000).
  size_t max_queued = 1000;
  // Attempts for an event while the server cannot be reached, and the wait between them
  // (client-go: 12 tries, 10 s apart). HTTP error answers are not retried.
  int max_attempts = 12;
  std::chrono::milliseconds retry_wait{10'000};
  // Events sent at once (lanes); the Kubernetes mode passes its write concurrency.
  int senders = 1;
};

struct EventRecorderStats {
  uint64_t created = 0;
  uint64_t patched = 0;
  uint64_t skipped = 0;  // spam filter
  uint64_t dropped = 0;  // queue full, or the server refused it
};

// Records Events through `client` on sender lanes of its own, so that Record() never blocks a
// reconcile. Thread-safe.
class KubeEventRecorder {
 public:
  KubeEventRecorder(const KubeClient& client, EventRecorderOptions options, const Clock& clock);
  ~KubeEventRecorder();  // Stop()s.
  KubeEventRecorder(const KubeEventRecorder&) = delete;
  KubeEventRecorder& operator=(const KubeEventRecorder&) = delete;

  // Queues an event about `object` (type "Normal" or "Warning"; reason a CamelCase word).
  void Record(const crds::ModelCache& object, std::string_view type, std::string_view reason,
              std::string_view message);

  // The event, if any, for a status write of `object` whose previous status was `before`:
  // Normal <phase> when the phase moved (Ready: reason "Ready"), Warning <reason word> when the
  // Ready condition turned False with a reason that is not a phase (a failure), or changed to
  // another failure. Then Record()s it.
  void RecordStatusChange(const crds::ModelCache& object, const crds::ModelCacheStatus& before);

  // Sends what is queued (giving up on the server after `flush_timeout`) and stops the senders.
  // Idempotent.
  void Stop(std::chrono::milliseconds flush_timeout = std::chrono::milliseconds(2000));

  EventRecorderStats stats() const;

 private:
  void Send(const CorrelatedEvent& correlated, std::stop_token stop);
  void Process(nlohmann::json event, std::stop_token stop);

  const KubeClient& client_;
  const EventRecorderOptions options_;
  const Clock& clock_;
  std::mutex correlator_mu_;
  EventCorrelator correlator_;  // GUARDED_BY(correlator_mu_)

  mutable std::mutex mu_;
  std::condition_variable_any cv_;  // retry waits; never notified, woken by a stop request
  size_t queued_ = 0;               // GUARDED_BY(mu_): recorded, not yet being sent
  bool stopping_ = false;           // GUARDED_BY(mu_)
  EventRecorderStats stats_;        // GUARDED_BY(mu_)
  LaneExecutor lanes_;              // last: its threads use the members above
};

}  // namespace modelcache::controller
