#pragma once

// Leader election with a coordination.k8s.io/v1 Lease, following client-go's
// tools/leaderelection (LeaderElector) and tools/leaderelection/resourcelock (LeaseLock):
//
// - A candidate polls the Lease every retry_period (with client-go's jitter factor 1.2) until it
//   can take it: the Lease is absent (it creates it), its holderIdentity is empty (released), or
//   the record has not changed for leaseDurationSeconds *as measured on this candidate's own
//   clock since it last saw the record change*. renewTime is never compared across machines, so
//   clock skew between nodes does not matter (only their rates).
// - Taking or renewing is a PUT carrying the resourceVersion of the Lease last read: if another
//   candidate wrote in between, the API server answers 409 Conflict and this attempt fails.
//   Exactly one of several racing candidates wins.
// - The leader renews every retry_period (first with the Lease it last wrote, without a GET; on
//   failure with a fresh GET). If it cannot renew within renew_deadline it has lost leadership.
// - On a clean stop (ReleaseOnCancel) the leader writes holderIdentity "" and
//   leaseDurationSeconds 1 after its work has stopped, so that a follower takes over at its next
//   retry instead of waiting for the lease to expire.
//
// As client-go says, this "does not guarantee that only one client is acting as a leader (a.k.a.
// fencing)": a leader that stalls for longer than leaseDuration - renewDeadline may still be
// finishing work while a new leader starts. The daemon therefore stops its workers as soon as a
// renewal fails for renew_deadline, before the lease can expire for others.

#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/result.h"
#include "controller/kube/kube_client.h"
#include "controller/kube/kube_config.h"

namespace modelcache::controller {

struct LeaderElectionOptions {
  // Where the Lease lives.
  std::string lease_namespace = "default";
  std::string lease_name = "modelcache-controller";
  // This candidate's holderIdentity; must be unique among candidates. Default (empty): see
  // DefaultLeaderIdentity().
  std::string identity;
  // client-go's defaults (controller-runtime's too): 15 s, 10 s, 2 s. The lease duration is
  // written to the Lease in whole seconds (leaseDurationSeconds), so it must be at least 1 s.
  std::chrono::milliseconds lease_duration{15'000};
  std::chrono::milliseconds renew_deadline{10'000};
  std::chrono::milliseconds retry_period{2'000};
  // Release the Lease when Run's work ends without having lost it (client-go ReleaseOnCancel).
  bool release_on_cancel = true;
};

// client-go's NewLeaderElector checks: lease_duration > renew_deadline > 1.2 * retry_period > 0,
// lease_duration >= 1 s, non-empty lease name and namespace. InvalidSpec naming the option.
VoidResult ValidateLeaderElectionOptions(const LeaderElectionOptions& options);

// "<hostname>_<random UUID>", as client-go users build their identity: unique per process, and
// the hostname (the pod name in a cluster) tells a human who leads.
std::string DefaultLeaderIdentity();

// resourcelock.LeaderElectionRecord: what the Lease's spec says.
struct LeaderElectionRecord {
  std::string holder_identity;
  int64_t lease_duration_seconds = 0;
  std::string acquire_time;  // metav1.MicroTime: "2026-11-24T06:50:04.123456Z"
  std::string renew_time;
  int64_t leader_transitions = 0;

  bool operator==(const LeaderElectionRecord&) const = default;
};

// LeaderElectionRecord <-> Lease spec (coordination.k8s.io/v1 LeaseSpec field names).
nlohmann::json LeaseSpecFromRecord(const LeaderElectionRecord& record);
LeaderElectionRecord RecordFromLeaseSpec(const nlohmann::json& spec);

// metav1.MicroTime, RFC 3339 with microseconds in UTC.
std::string FormatMicroTime(std::chrono::system_clock::time_point t);

// resourcelock.LeaseLock: Get/Create/Update of one Lease over REST. It keeps the Lease it last
// read or wrote; Update sends that object's resourceVersion as the precondition.
//
// Not thread-safe: one LeaderElector uses it from one thread at a time.
class LeaseLock {
 public:
  LeaseLock(KubeConfig config, std::string lease_namespace, std::string lease_name);

  // Every call gives up after `timeout` (NetworkError) or when `stop` is requested (Cancelled):
  // client-go bounds them with the renew deadline's context.
  //
  // The current record, nullopt if the Lease does not exist (404). Otherwise ReplyError's error
  // (the reply's status and reason in the message).
  Result<std::optional<LeaderElectionRecord>> Get(std::chrono::milliseconds timeout,
                                                  std::stop_token stop);
  // Creates the Lease with `record`. An error if it already exists (409 AlreadyExists).
  VoidResult Create(const LeaderElectionRecord& record, std::chrono::milliseconds timeout,
                    std::stop_token stop);
  // Replaces the Lease's spec with `record`, conditional on the resourceVersion last seen.
  // Internal if nothing was read or written yet; an error on 409 Conflict (someone else wrote).
  VoidResult Update(const LeaderElectionRecord& record, std::chrono::milliseconds timeout,
                    std::stop_token stop);

  // "<namespace>/<name>", for logs.
  std::string Describe() const;

 private:
  std::string Path(bool item) const;

  KubeClient client_;
  std::string namespace_;
  std::string name_;
  nlohmann::json lease_;  // the last Lease read or written; null before the first
};

enum class LeadershipEnd {
  Stopped,  // `stop` was requested (before or while leading), or the work returned by itself
  Lost,     // leading, then the Lease could not be renewed within renew_deadline
};

// Runs the election for one candidate.
//
// Thread-safe: Run is called once, from one thread; IsLeader/Leader from any thread.
class LeaderElector {
 public:
  // `clock` measures lease validity (steady time) and stamps acquire/renew times (wall time).
  // REQUIRES: ValidateLeaderElectionOptions(options) is OK and options.identity is set.
  LeaderElector(LeaderElectionOptions options, KubeConfig config, Clock& clock);

  // Blocks until this candidate holds the Lease (or `stop`: returns Stopped without calling
  // `lead`), then calls `lead` on the calling thread with a token that is requested when `stop`
  // is requested or leadership is lost; a second thread renews meanwhile. `lead` must return soon
  // after its token is requested, with its work stopped: only then is the Lease released
  // (release_on_cancel, and only if still held). `on_new_leader`, if set, is called (on the
  // election's threads) whenever the observed holder changes, including to "".
  LeadershipEnd Run(std::stop_token stop, const std::function<void(std::stop_token)>& lead,
                    const std::function<void(const std::string&)>& on_new_leader = {});

  // Whether the last observed record names this candidate.
  bool IsLeader() const;
  // The last observed holder ("" if none seen).
  std::string Leader() const;
  const std::string& identity() const { return options_.identity; }

 private:
  // One attempt; `timeout` bounds its requests.
  bool TryAcquireOrRenew(std::chrono::milliseconds timeout, std::stop_token stop);
  // The renewing loop while leading; returns true if leadership was lost.
  bool Renew(std::stop_token leading);
  bool Release();
  bool LeaseValid(Clock::TimePoint now) const;
  void SetObserved(const LeaderElectionRecord& record);
  void MaybeReportTransition(const std::function<void(const std::string&)>& on_new_leader);

  const LeaderElectionOptions options_;
  Clock& clock_;
  LeaseLock lock_;  // used by one thread at a time: Run's, then the renewer's, then Run's

  mutable std::mutex mu_;
  LeaderElectionRecord observed_;  // guarded by mu_
  Clock::TimePoint observed_time_;  // guarded by mu_: when observed_ last changed, local clock
  std::string reported_leader_;     // guarded by mu_
};

}  // namespace modelcache::controller
