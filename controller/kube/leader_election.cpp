#include "controller/kube/leader_election.h"

#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <ctime>
#include <random>
#include <thread>
#include <utility>

#include <spdlog/spdlog.h>

#include "common/http_client.h"
#include "controller/kube/kube_client.h"

namespace modelcache::controller {

using nlohmann::json;
using std::chrono::milliseconds;

namespace {

// wait.JitterUntil's factor in leaderelection.go: an acquire attempt waits between retry_period
// and 2.2 × retry_period, so that candidates started together spread out.
constexpr double kJitterFactor = 1.2;

// Sleeps for `d` or until `stop` is requested; false if stopped.
bool SleepFor(milliseconds d, std::stop_token stop) {
  std::mutex mu;
  std::condition_variable_any cv;
  std::unique_lock lock(mu);
  return !cv.wait_for(lock, stop, d, [] { return false; }) && !stop.stop_requested();
}

milliseconds Jittered(milliseconds period) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uniform_real_distribution<double> dist(0.0, kJitterFactor);
  return period + milliseconds(static_cast<int64_t>(static_cast<double>(period.count()) *
                                                    dist(rng)));
}

std::string StringField(const json& o, const char* key) {
  auto it = o.find(key);
  return it != o.end() && it->is_string() ? it->get<std::string>() : "";
}

int64_t IntField(const json& o, const char* key) {
  auto it = o.find(key);
  return it != o.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
}

}  // namespace

VoidResult ValidateLeaderElectionOptions(const LeaderElectionOptions& o) {
  if (o.lease_name.empty()) {
    return Error(Reason::InvalidSpec, "--leader-elect-lease-name: must not be empty");
  }
  if (o.lease_namespace.empty()) {
    return Error(Reason::InvalidSpec, "--leader-elect-namespace: must not be empty");
  }
  if (o.retry_period <= milliseconds(0)) {
    return Error(Reason::InvalidSpec, "--leader-elect-retry-period: must be greater than zero");
  }
  if (o.lease_duration < milliseconds(1000)) {
    return Error(Reason::InvalidSpec,
                 "--leader-elect-lease-duration: must be at least 1s (the Lease stores whole "
                 "seconds in spec.leaseDurationSeconds)");
  }
  if (o.lease_duration <= o.renew_deadline) {
    return Error(Reason::InvalidSpec,
                 "--leader-elect-lease-duration: must be greater than "
                 "--leader-elect-renew-deadline");
  }
  if (static_cast<double>(o.renew_deadline.count()) <=
      kJitterFactor * static_cast<double>(o.retry_period.count())) {
    return Error(Reason::InvalidSpec,
                 "--leader-elect-renew-deadline: must be greater than 1.2 × "
                 "--leader-elect-retry-period");
  }
  return {};
}

std::string DefaultLeaderIdentity() {
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
    std::snprintf(host, sizeof(host), "modelcache");
  }
  std::random_device rd;
  std::mt19937_64 rng(static_cast<uint64_t>(rd()) << 32 | rd());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string uuid;
  for (int i = 0; i < 32; ++i) {
    if (i == 8 || i == 12 || i == 16 || i == 20) {
      uuid += '-';
    }
    int v = static_cast<int>(rng() % 16);
    if (i == 12) {
      v = 4;  // version 4
    } else if (i == 16) {
      v = 8 | (v & 3);  // RFC 4122 variant
    }
    uuid += kHex[v];
  }
  return std::string(host) + "_" + uuid;
}

std::string FormatMicroTime(std::chrono::system_clock::time_point t) {
  auto micros =
      std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  auto secs = static_cast<std::time_t>(micros / 1'000'000);
  int64_t frac = micros % 1'000'000;
  if (frac < 0) {
    frac += 1'000'000;
    --secs;
  }
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  char out[64];
  std::snprintf(out, sizeof(out), "%s.%06lldZ", buf, static_cast<long long>(frac));
  return out;
}

json LeaseSpecFromRecord(const LeaderElectionRecord& r) {
  // LeaderElectionRecordToLeaseSpec sets every field, holderIdentity even when "" (a release).
  json spec = {{"holderIdentity", r.holder_identity},
               {"leaseDurationSeconds", r.lease_duration_seconds},
               {"leaseTransitions", r.leader_transitions}};
  if (!r.acquire_time.empty()) {
    spec["acquireTime"] = r.acquire_time;
  }
  if (!r.renew_time.empty()) {
    spec["renewTime"] = r.renew_time;
  }
  return spec;
}

LeaderElectionRecord RecordFromLeaseSpec(const json& spec) {
  LeaderElectionRecord r;
  if (!spec.is_object()) {
    return r;
  }
  r.holder_identity = StringField(spec, "holderIdentity");
  r.lease_duration_seconds = IntField(spec, "leaseDurationSeconds");
  r.acquire_time = StringField(spec, "acquireTime");
  r.renew_time = StringField(spec, "renewTime");
  r.leader_transitions = IntField(spec, "leaseTransitions");
  return r;
}

// --- LeaseLock ---

LeaseLock::LeaseLock(KubeConfig config, std::string lease_namespace, std::string lease_name)
    : client_(std::move(config)),
      namespace_(std::move(lease_namespace)),
      name_(std::move(lease_name)) {}

std::string LeaseLock::Describe() const { return namespace_ + "/" + name_; }

std::string LeaseLock::Path(bool item) const {
  std::string url =
      "/apis/coordination.k8s.io/v1/namespaces/" + UrlEncode(namespace_) + "/leases";
  if (item) {
    url += '/';
    url += UrlEncode(name_);
  }
  return url;
}

Result<std::optional<LeaderElectionRecord>> LeaseLock::Get(milliseconds timeout,
                                                           std::stop_token stop) {
  auto reply = client_.Call("GET", Path(true), nullptr, "application/json", stop, timeout);
  if (!reply) {
    return reply.error();
  }
  if (reply->status == 404) {
    return std::optional<LeaderElectionRecord>();
  }
  if (!reply->ok() || !reply->body.is_object()) {
    return ReplyError(*reply, "get lease " + Describe());
  }
  lease_ = reply->body;
  return std::optional<LeaderElectionRecord>(RecordFromLeaseSpec(lease_.value("spec", json())));
}

VoidResult LeaseLock::Create(const LeaderElectionRecord& record, milliseconds timeout,
                             std::stop_token stop) {
  json lease = {{"apiVersion", "coordination.k8s.io/v1"},
                {"kind", "Lease"},
                {"metadata", {{"name", name_}, {"namespace", namespace_}}},
                {"spec", LeaseSpecFromRecord(record)}};
  auto reply = client_.Call("POST", Path(false), lease, "application/json", stop, timeout);
  if (!reply) {
    return reply.error();
  }
  if (!reply->ok() || !reply->body.is_object()) {
    return ReplyError(*reply, "create lease " + Describe());
  }
  lease_ = reply->body;
  return {};
}

VoidResult LeaseLock::Update(const LeaderElectionRecord& record, milliseconds timeout,
                             std::stop_token stop) {
  if (!lease_.is_object()) {
    return Error(Reason::Internal,
                 "lease " + Describe() + " not initialized: get or create it before updating");
  }
  // The whole Lease as last seen, so that its metadata.resourceVersion makes the PUT conditional.
  json lease = lease_;
  lease["spec"] = LeaseSpecFromRecord(record);
  auto reply = client_.Call("PUT", Path(true), lease, "application/json", stop, timeout);
  if (!reply) {
    return reply.error();
  }
  if (!reply->ok() || !reply->body.is_object()) {
    return ReplyError(*reply, "update lease " + Describe());
  }
  lease_ = reply->body;
  return {};
}

// --- LeaderElector ---

LeaderElector::LeaderElector(LeaderElectionOptions options, KubeConfig config, Clock& clock)
    : options_(std::move(options)),
      clock_(clock),
      lock_(std::move(config), options_.lease_namespace, options_.lease_name) {}

bool LeaderElector::IsLeader() const {
  std::lock_guard lock(mu_);
  return observed_.holder_identity == options_.identity;
}

std::string LeaderElector::Leader() const {
  std::lock_guard lock(mu_);
  return observed_.holder_identity;
}

void LeaderElector::SetObserved(const LeaderElectionRecord& record) {
  std::lock_guard lock(mu_);
  observed_ = record;
  observed_time_ = clock_.Now();
}

bool LeaderElector::LeaseValid(Clock::TimePoint now) const {
  std::lock_guard lock(mu_);
  return observed_time_ + std::chrono::seconds(observed_.lease_duration_seconds) > now;
}

void LeaderElector::MaybeReportTransition(
    const std::function<void(const std::string&)>& on_new_leader) {
  std::string leader;
  {
    std::lock_guard lock(mu_);
    if (observed_.holder_identity == reported_leader_) {
      return;
    }
    reported_leader_ = observed_.holder_identity;
    leader = reported_leader_;
  }
  if (leader.empty()) {
    spdlog::info("leader election: lease {} has no holder", lock_.Describe());
  } else if (leader != options_.identity) {
    spdlog::info("leader election: new leader of lease {}: {}", lock_.Describe(), leader);
  }
  if (on_new_leader) {
    on_new_leader(leader);
  }
}

bool LeaderElector::TryAcquireOrRenew(milliseconds timeout, std::stop_token stop) {
  std::string now = FormatMicroTime(clock_.WallNow());
  LeaderElectionRecord record;
  record.holder_identity = options_.identity;
  record.lease_duration_seconds =
      std::chrono::duration_cast<std::chrono::seconds>(options_.lease_duration).count();
  record.renew_time = now;
  record.acquire_time = now;

  // 1. The leader's fast path: update the Lease it last wrote, without reading it first.
  if (IsLeader() && LeaseValid(clock_.Now())) {
    LeaderElectionRecord old;
    {
      std::lock_guard lock(mu_);
      old = observed_;
    }
    record.acquire_time = old.acquire_time;
    record.leader_transitions = old.leader_transitions;
    auto updated = lock_.Update(record, timeout, stop);
    if (updated) {
      SetObserved(record);
      return true;
    }
    spdlog::warn("leader election: failed to update lease {} optimistically, falling back to a "
                 "fresh read: {}",
                 lock_.Describe(), updated.error().message);
  }

  // 2. Read the Lease, or create it.
  auto current = lock_.Get(timeout, stop);
  if (!current) {
    spdlog::warn("leader election: cannot read lease {}: {}", lock_.Describe(),
                 current.error().message);
    return false;
  }
  if (!current->has_value()) {
    auto created = lock_.Create(record, timeout, stop);
    if (!created) {
      spdlog::warn("leader election: cannot create lease {}: {}", lock_.Describe(),
                   created.error().message);
      return false;
    }
    SetObserved(record);
    return true;
  }
  const LeaderElectionRecord& old = **current;

  // 3. A changed record restarts the local expiry clock: validity is measured from when this
  // candidate saw the record change, never from renewTime (another machine's clock).
  bool changed;
  {
    std::lock_guard lock(mu_);
    changed = !(observed_ == old);
  }
  if (changed) {
    SetObserved(old);
  }
  if (!old.holder_identity.empty() && LeaseValid(clock_.Now()) && !IsLeader()) {
    return false;  // held by someone else and not expired
  }

  // 4. Take it (or renew it after a failed fast path), conditional on the version just read.
  if (IsLeader()) {
    record.acquire_time = old.acquire_time;
    record.leader_transitions = old.leader_transitions;
  } else {
    record.leader_transitions = old.leader_transitions + 1;
  }
  auto updated = lock_.Update(record, timeout, stop);
  if (!updated) {
    spdlog::warn("leader election: failed to update lease {}: {}", lock_.Describe(),
                 updated.error().message);
    return false;
  }
  SetObserved(record);
  return true;
}

bool LeaderElector::Release() {
  if (!IsLeader()) {
    return true;
  }
  LeaderElectionRecord record;
  {
    std::lock_guard lock(mu_);
    record.leader_transitions = observed_.leader_transitions;
  }
  record.lease_duration_seconds = 1;
  std::string now = FormatMicroTime(clock_.WallNow());
  record.renew_time = now;
  record.acquire_time = now;
  // Not bound to any stop token: the release is the last thing a stopping process does.
  auto updated = lock_.Update(record, options_.renew_deadline, {});
  if (!updated) {
    // A renewal cancelled by the stop may have reached the server after all, leaving the Lease
    // one resourceVersion ahead of the one kept. Unlike client-go (which then leaves the Lease to
    // expire), read it again and release it if it still names this candidate.
    auto current = lock_.Get(options_.renew_deadline, {});
    if (current && current->has_value() && (*current)->holder_identity == options_.identity) {
      record.leader_transitions = (*current)->leader_transitions;
      updated = lock_.Update(record, options_.renew_deadline, {});
    }
  }
  if (!updated) {
    spdlog::error("leader election: failed to release lease {}: {}", lock_.Describe(),
                  updated.error().message);
    return false;
  }
  SetObserved(record);
  spdlog::info("leader election: released lease {}", lock_.Describe());
  return true;
}

bool LeaderElector::Renew(std::stop_token leading) {
  while (!leading.stop_requested()) {
    // wait.PollImmediateUntil(retry_period, tryAcquireOrRenew, <renew_deadline>): attempts every
    // retry_period until one succeeds or the deadline passes.
    auto deadline = clock_.Now() + options_.renew_deadline;
    bool renewed = false;
    while (!leading.stop_requested()) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - clock_.Now());
      if (left <= milliseconds(0)) {
        break;
      }
      if (TryAcquireOrRenew(left, leading)) {
        renewed = true;
        break;
      }
      left = std::chrono::duration_cast<milliseconds>(deadline - clock_.Now());
      if (left <= milliseconds(0) || !SleepFor(std::min(options_.retry_period, left), leading)) {
        break;
      }
    }
    if (leading.stop_requested()) {
      return false;
    }
    if (!renewed) {
      spdlog::error("leader election: could not renew lease {} within {} ms: leadership lost",
                    lock_.Describe(), options_.renew_deadline.count());
      return true;
    }
    if (!SleepFor(options_.retry_period, leading)) {
      return false;
    }
  }
  return false;
}

LeadershipEnd LeaderElector::Run(std::stop_token stop,
                                 const std::function<void(std::stop_token)>& lead,
                                 const std::function<void(const std::string&)>& on_new_leader) {
  spdlog::info("leader election: attempting to acquire lease {} as {}", lock_.Describe(),
               options_.identity);
  // acquire: wait.JitterUntil(tryAcquireOrRenew, retry_period, 1.2, sliding) until it succeeds.
  for (;;) {
    if (stop.stop_requested()) {
      return LeadershipEnd::Stopped;
    }
    bool acquired = TryAcquireOrRenew(options_.renew_deadline, stop);
    MaybeReportTransition(on_new_leader);
    if (acquired) {
      break;
    }
    if (!SleepFor(Jittered(options_.retry_period), stop)) {
      return LeadershipEnd::Stopped;
    }
  }
  spdlog::info("leader election: acquired lease {}", lock_.Describe());

  std::stop_source leading;
  std::stop_callback forward(stop, [&leading] { leading.request_stop(); });
  bool lost = false;
  std::thread renewer([&] {
    lost = Renew(leading.get_token());
    MaybeReportTransition(on_new_leader);
    leading.request_stop();
  });
  lead(leading.get_token());
  // The work has stopped (or ended by itself): stop renewing, then hand the Lease over.
  leading.request_stop();
  renewer.join();
  if (options_.release_on_cancel) {
    Release();
    MaybeReportTransition(on_new_leader);
  }
  return lost ? LeadershipEnd::Lost : LeadershipEnd::Stopped;
}

}  // namespace modelcache::controller
