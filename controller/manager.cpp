#include "controller/manager.h"

#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "common/units.h"
#include "controller/metrics.h"

namespace modelcache::controller {
namespace {

std::string ProgressMessage(const crds::ModelCacheStatus& status) {
  std::string verb = status.phase;
  for (auto& c : verb) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  if (!status.progress || status.progress->bytes_total == 0) {
    return verb;
  }
  const auto& p = *status.progress;
  int percent = static_cast<int>(100.0 * static_cast<double>(p.bytes_done) /
                                 static_cast<double>(p.bytes_total));
  std::string msg = verb + " " + std::to_string(percent) + "% (" + FormatBytes(p.bytes_done) +
                    " of " + FormatBytes(p.bytes_total);
  if (p.files_total > 0) {
    msg += ", " + std::to_string(p.files_done) + "/" + std::to_string(p.files_total) + " files";
  }
  if (p.bytes_per_second > 0) {
    msg += ", " + FormatBytes(p.bytes_per_second) + "/s";
  }
  return msg + ")";
}

}  // namespace

Manager::Manager(ManagerOptions options, Source& source, ObjectCache& cache,
                 StatusStore& statuses, reconcilers::Reconciler& reconciler, Clock& clock)
    : options_(std::move(options)),
      source_(source),
      cache_(cache),
      statuses_(statuses),
      reconciler_(reconciler),
      clock_(clock),
      queue_(clock) {
  if (options_.status_writers > 0) {
    writer_ = std::make_unique<LaneExecutor>(options_.status_writers, "status writer");
  }
  if (options_.metrics != nullptr) {
    HistogramFamily* latency = &options_.metrics->workqueue_latency_seconds;
    queue_.SetLatencyObserver([latency](WorkQueue<crds::ObjectKey>::Duration waited) {
      latency->Observe(std::chrono::duration<double>(waited).count());
    });
  }
}

Manager::~Manager() = default;

void Manager::Enqueue(const crds::ObjectKey& key) { queue_.Add(key); }

crds::ModelCacheStatus Manager::ComposeStatus(const crds::ModelCacheStatus& previous,
                                              const Result<reconcilers::Outcome>& result,
                                              int64_t generation, const std::string& now) {
  crds::ModelCacheStatus status;
  crds::Condition ready;
  ready.type = "Ready";
  ready.observed_generation = generation;
  if (result) {
    status = result->status;
    status.conditions = previous.conditions;
    // Conditions other than Ready are the reconciler's to say (Verified, Retained).
    for (const auto& c : result->status.conditions) {
      if (c.type != "Ready") {
        crds::SetCondition(status.conditions, c, now);
      }
    }
    if (status.phase == crds::kPhaseReady) {
      ready.status = "True";
      ready.reason = "ArtifactReady";
      ready.message = status.artifact ? "artifact " + status.artifact->id + " is ready at " +
                                            (status.artifact->path.empty() ? status.artifact->uri
                                                                           : status.artifact->path)
                                      : "ready";
    } else {
      ready.status = "False";
      ready.reason = status.phase.empty() ? std::string(crds::kPhasePending) : status.phase;
      ready.message = ProgressMessage(status);
    }
  } else {
    const Error& err = result.error();
    status = previous;
    const crds::Condition* was = crds::FindCondition(previous.conditions, "Ready");
    if (IsTransient(err.reason) && status.phase == crds::kPhaseReady && was != nullptr &&
        was->status == "True") {
      // A failed refresh of a Ready resource: its artifact is still there and still usable, so
      // Ready stays True (`kubectl wait` keeps working) and the message says what went wrong.
      ready = *was;
      ready.observed_generation = generation;
      std::string base = ready.message.substr(0, ready.message.find("; refresh failed"));
      ready.message = base + "; refresh failed: " + err.ToString() + " (will retry)";
    } else {
      ready.status = "False";
      ready.reason = std::string(ReasonName(err.reason));
      if (IsTransient(err.reason)) {
        if (status.phase.empty() || status.phase == crds::kPhaseFailed) {
          status.phase = std::string(crds::kPhasePending);
        }
        ready.message = err.message + " (will retry)";
      } else {
        status.phase = std::string(crds::kPhaseFailed);
        status.progress.reset();
        ready.message = err.message;
      }
    }
  }
  status.observed_generation = generation;
  crds::SetCondition(status.conditions, ready, now);
  return status;
}

void Manager::CountResult(std::string_view result) {
  if (options_.metrics != nullptr) {
    options_.metrics->reconciles.Inc({std::string(result)});
  }
}

crds::ModelCacheStatus Manager::LastStatus(const crds::ObjectKey& key) {
  {
    std::lock_guard lock(mu_);
    auto it = written_.find(key);
    if (it != written_.end()) {
      return it->second;
    }
  }
  auto stored = statuses_.Read(key);
  crds::ModelCacheStatus status;
  if (stored && stored->has_value()) {
    status = (*stored)->status;
  }
  std::lock_guard lock(mu_);
  RecordWritten(key, status);
  return status;
}

Manager::QueueStep Manager::QueueStepFor(const Result<reconcilers::Outcome>& result,
                                         bool stopping) {
  if (!result) {
    const Error& err = result.error();
    if (err.reason == Reason::Cancelled && stopping) {
      return {QueueStep::Kind::Leave};  // shutting down
    }
    if (err.retry_after) {
      // A transient error whose server said how long to wait; or a permanent one that something
      // outside the spec (a Secret) may still cure: look again then.
      return {QueueStep::Kind::AddAfter, *err.retry_after};
    }
    return {IsTransient(err.reason) ? QueueStep::Kind::AddRateLimited
                                    : QueueStep::Kind::Forget};  // waits for the spec to change
  }
  if (result->requeue.after.count() > 0) {
    return {QueueStep::Kind::AddAfter, result->requeue.after};
  }
  return {QueueStep::Kind::Forget};
}

void Manager::Requeue(const crds::ObjectKey& key, QueueStep step) {
  switch (step.kind) {
    case QueueStep::Kind::Forget:
      queue_.Forget(key);
      break;
    case QueueStep::Kind::AddAfter:
      queue_.Forget(key);
      queue_.AddAfter(key, step.after);
      break;
    case QueueStep::Kind::AddRateLimited:
      queue_.AddRateLimited(key);
      break;
    case QueueStep::Kind::Leave:
      break;
  }
}

void Manager::ProcessKey(const crds::ObjectKey& key, std::stop_token stop) {
  reconcilers::Request request = RequestFor(key);
  if (request.object && !request.source_error && options_.before_reconcile &&
      !Prepare(*request.object)) {
    return;  // requeued by Prepare, or queued again when its lane is done
  }
  Result<reconcilers::Outcome> result = ReconcileGuarded(request, stop);
  Requeue(key, request.object ? ReportLive(request, result, stop) : ReportDeleted(request));
}

reconcilers::Request Manager::RequestFor(const crds::ObjectKey& key) {
  auto cached = cache_.Get(key);
  reconcilers::Request request;
  request.key = key;
  // An object with a deletionTimestamp is reconciled as deleted, then finalized.
  if (cached && cached->object.metadata.deletion_timestamp) {
    request.deleting = cached->object;
  } else if (cached) {
    request.object = cached->object;
    request.source_error = cached->source_error;
  }
  request.status = LastStatus(key);
  return request;
}

Result<reconcilers::Outcome> Manager::ReconcileGuarded(const reconcilers::Request& request,
                                                       std::stop_token stop) {
  try {
    return reconciler_.Reconcile(request, stop);
  } catch (const std::exception& e) {
    // controller-runtime's RecoverPanic: a bug in one reconcile must not take the daemon down.
    return Error(Reason::Internal, std::string("reconcile threw: ") + e.what());
  } catch (...) {
    return Error(Reason::Internal, "reconcile threw an unknown exception");
  }
}

Manager::QueueStep Manager::ReportDeleted(const reconcilers::Request& request) {
  const crds::ObjectKey& key = request.key;
  // Deleted: its status goes too. The artifact stays for store garbage collection.
  if (auto r = statuses_.Remove(key); !r) {
    spdlog::warn("{}: cannot remove status: {}", key.ToString(), r.error().message);
  }
  {
    std::lock_guard lock(mu_);
    ForgetWritten(key);
    prepared_.erase(key);
    preparing_.erase(key);
  }
  if (request.deleting && options_.finalize) {
    if (auto r = options_.finalize(*request.deleting); !r) {
      spdlog::warn("{}: {}", key.ToString(), r.error().ToString());
      stats_.reconciles_error++;
      CountResult(ControllerMetrics::kError);
      return {QueueStep::Kind::AddRateLimited};
    }
  }
  spdlog::info("{}: deleted", key.ToString());
  stats_.reconciles_ok++;
  CountResult(ControllerMetrics::kSuccess);
  if (options_.on_status_change) {
    options_.on_status_change();
  }
  return {QueueStep::Kind::Forget};
}

Manager::QueueStep Manager::ReportLive(const reconcilers::Request& request,
                                       const Result<reconcilers::Outcome>& result,
                                       std::stop_token stop) {
  const crds::ModelCache& object = *request.object;
  const std::string now = FormatRfc3339(clock_.WallNow());
  crds::ModelCacheStatus status =
      ComposeStatus(request.status, result, object.metadata.generation, now);
  if (options_.amend_status) {
    options_.amend_status(object, status, now);
  }
  bool changed = crds::StatusToJson(status) != crds::StatusToJson(request.status);
  // A failed reconcile is an error whatever happens to its status: counted before the status is
  // published, so whoever sees the status (a watch, a test reading /metrics next) finds the
  // count too. A successful one is counted after, as a failed write makes it an error.
  if (!result) {
    stats_.reconciles_error++;
    CountResult(ControllerMetrics::kError);
  }
  if (changed) {
    crds::ModelCache out = object;
    out.status = status;
    if (!WriteStatus(std::move(out), request.status, result.has_value())) {
      return {QueueStep::Kind::AddRateLimited};  // the write failed: try again
    }
  }
  if (result) {
    stats_.reconciles_ok++;
    // The metric's results are exclusive, as controller-runtime's: a success that asks to be
    // requeued counts as "requeue" only.
    bool requeue = result->requeue.after.count() > 0;
    CountResult(requeue ? ControllerMetrics::kRequeue : ControllerMetrics::kSuccess);
    if (requeue) {
      stats_.reconciles_requeue++;
    }
  }
  return QueueStepFor(result, stop.stop_requested());
}

bool Manager::Prepare(const crds::ModelCache& object) {
  const crds::ObjectKey key = object.key();
  auto failed = [this, key](const Error& error) {
    spdlog::warn("{}: {}", key.ToString(), error.ToString());
    Requeue(key, {QueueStep::Kind::AddRateLimited});
    stats_.reconciles_error++;
    CountResult(ControllerMetrics::kError);
  };
  if (options_.before_reconcile_needed) {
    bool needed = options_.before_reconcile_needed(object);
    std::lock_guard lock(mu_);
    if (preparing_.count(key) != 0) {
      return false;  // on a lane already, which queues the key again when done
    }
    auto it = prepared_.find(key);
    if (it != prepared_.end()) {
      if (needed && it->second == object.metadata.resource_version) {
        return true;  // done on a lane; the source has not seen the result yet
      }
      prepared_.erase(it);
    }
    if (!needed) {
      return true;
    }
    if (writer_) {
      preparing_.insert(key);
      std::string rv = object.metadata.resource_version;
      writer_->Submit(key.ToString(), [this, object, key, rv, failed](std::stop_token /*stop*/) {
        VoidResult r = options_.before_reconcile(object);
        {
          std::lock_guard relock(mu_);
          preparing_.erase(key);
          if (r) {
            prepared_[key] = rv;
          }
        }
        if (!r) {
          failed(r.error());
          return;
        }
        queue_.Add(key);
      });
      return false;
    }
  }
  if (auto r = options_.before_reconcile(object); !r) {
    failed(r.error());
    return false;
  }
  return true;
}

bool Manager::WriteStatus(crds::ModelCache out, const crds::ModelCacheStatus& before,
                          bool reconcile_ok) {
  if (!writer_) {
    VoidResult written = statuses_.Write(out);
    return FinishWrite(out, before, reconcile_ok, /*queued=*/false, written);
  }
  crds::ObjectKey key = out.key();
  {
    std::lock_guard lock(mu_);
    RecordWritten(key, out.status);
  }
  writer_->Submit(key.ToString(), [this, out = std::move(out), before, reconcile_ok](
                                      std::stop_token /*stop*/) {
    VoidResult written = statuses_.Write(out);
    FinishWrite(out, before, reconcile_ok, /*queued=*/true, written);
  });
  return true;
}

bool Manager::FinishWrite(const crds::ModelCache& out, const crds::ModelCacheStatus& before,
                          bool reconcile_ok, bool queued, const VoidResult& written) {
  crds::ObjectKey key = out.key();
  const crds::ModelCacheStatus& status = out.status;
  if (!written) {
    spdlog::error("{}: cannot write status: {}", key.ToString(), written.error().message);
    if (queued) {
      // Unless a later status is already queued behind this one, what the manager holds as
      // written is not on the server: the next reconcile reads it again.
      std::lock_guard lock(mu_);
      auto it = written_.find(key);
      if (it != written_.end() && crds::StatusToJson(it->second) == crds::StatusToJson(status)) {
        ForgetWritten(key);
      }
    }
    if (queued) {
      Requeue(key, {QueueStep::Kind::AddRateLimited});  // ProcessKey requeues a write done now
    }
    // A queued write's reconcile was counted already; one written now turns into an error.
    if (reconcile_ok && !queued) {
      stats_.reconciles_error++;
      CountResult(ControllerMetrics::kError);
    }
    return false;
  }
  stats_.status_writes++;
  if (!queued) {
    std::lock_guard lock(mu_);
    RecordWritten(key, status);
  }
  if (options_.on_status_change) {
    options_.on_status_change();
  }
  if (options_.status_written) {
    options_.status_written(out, before);
  }
  if (status.phase != before.phase) {
    const crds::Condition* ready = crds::FindCondition(status.conditions, "Ready");
    spdlog::info("{}: {} -> {}{}{}", key.ToString(), before.phase.empty() ? "New" : before.phase,
                 status.phase, ready && !ready->message.empty() ? ": " : "",
                 ready ? ready->message : std::string());
  }
  return true;
}

void Manager::Worker(int slot, std::stop_token stop) {
  while (true) {
    std::optional<crds::ObjectKey> key = queue_.Get();
    if (!key) {
      return;
    }
    auto start = clock_.Now();
    {
      std::lock_guard lock(mu_);
      busy_[slot] = Busy{*key, start};
    }
    ProcessKey(*key, stop);
    {
      std::lock_guard lock(mu_);
      busy_.erase(slot);
    }
    if (options_.metrics != nullptr) {
      options_.metrics->reconcile_duration_seconds.Observe(
          std::chrono::duration<double>(clock_.Now() - start).count());
    }
    queue_.Done(*key);
  }
}

bool Manager::Healthy() const {
  auto now = clock_.Now();
  std::lock_guard lock(mu_);
  for (const auto& [slot, busy] : busy_) {
    if (now - busy.since > options_.stuck_after) {
      return false;
    }
  }
  return true;
}

void Manager::RecordWritten(const crds::ObjectKey& key, const crds::ModelCacheStatus& status) {
  auto [it, inserted] = written_.try_emplace(key, status);
  if (!inserted) {
    summary_.Remove(it->second);
    it->second = status;
  }
  summary_.Add(status);
}

void Manager::ForgetWritten(const crds::ObjectKey& key) {
  auto it = written_.find(key);
  if (it != written_.end()) {
    summary_.Remove(it->second);
    written_.erase(it);
  }
}

StatusSummary Manager::Summary() const {
  size_t known = cache_.Size();
  std::lock_guard lock(mu_);
  StatusSummary out = summary_;
  // Resources not reconciled yet since start have no status: pending.
  if (known > written_.size()) {
    out.phases[std::string(crds::kPhasePending)] += static_cast<int64_t>(known - written_.size());
  }
  return out;
}

std::vector<crds::ModelCacheStatus> Manager::Statuses() const {
  std::vector<crds::ObjectKey> keys = cache_.Keys();
  std::vector<crds::ModelCacheStatus> out;
  out.reserve(keys.size());
  std::lock_guard lock(mu_);
  for (const auto& key : keys) {
    auto it = written_.find(key);
    out.push_back(it != written_.end() ? it->second : crds::ModelCacheStatus{});
  }
  return out;
}

std::vector<std::string> Manager::BusyWorkers() const {
  auto now = clock_.Now();
  std::vector<std::string> out;
  std::lock_guard lock(mu_);
  for (const auto& [slot, busy] : busy_) {
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - busy.since);
    out.push_back(fmt::format("{} (reconciling for {})", busy.key.ToString(), FormatDuration(ms)));
  }
  return out;
}

void Manager::FlushInterrupted() {
  std::vector<std::pair<crds::ObjectKey, crds::ModelCacheStatus>> interrupted;
  {
    std::lock_guard lock(mu_);
    for (const auto& [key, status] : written_) {
      if (status.phase == crds::kPhaseResolving || status.phase == crds::kPhaseDownloading ||
          status.phase == crds::kPhaseSharding || status.phase == crds::kPhaseUploading) {
        interrupted.emplace_back(key, status);
      }
    }
  }
  for (auto& [key, status] : interrupted) {
    auto cached = cache_.Get(key);
    if (!cached || cached->source_error) {
      continue;
    }
    std::string was = status.phase;
    for (auto& c : was) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    if (status.progress && status.progress->bytes_total > 0) {
      was += fmt::format(" at {}%", status.progress->bytes_done * 100 /
                                        std::max<uint64_t>(status.progress->bytes_total, 1));
    }
    status.phase = std::string(crds::kPhasePending);
    crds::Condition ready;
    ready.type = "Ready";
    ready.status = "False";
    ready.reason = std::string(crds::kPhasePending);
    ready.observed_generation = cached->object.metadata.generation;
    ready.message = "interrupted by shutdown while " + was +
                    "; data already on disk is kept and the work resumes when the daemon starts";
    crds::SetCondition(status.conditions, ready, FormatRfc3339(clock_.WallNow()));
    crds::ModelCache out = cached->object;
    out.status = status;
    if (auto w = statuses_.Write(out); !w) {
      spdlog::error("{}: cannot write status: {}", key.ToString(), w.error().message);
      continue;
    }
    std::lock_guard lock(mu_);
    RecordWritten(key, status);
  }
}

VoidResult Manager::Run(std::stop_token stop, const std::function<void()>& on_synced) {
  if (auto r = source_.Start(cache_, [this](const crds::ObjectKey& key) { queue_.Add(key); }); !r) {
    return r.error();
  }
  synced_ = true;
  if (on_synced) {
    on_synced();
  }
  std::stop_source workers_stop;
  std::vector<std::jthread> workers;
  for (int i = 0; i < std::max(1, options_.workers); ++i) {
    workers.emplace_back([this, i, token = workers_stop.get_token()] { Worker(i, token); });
  }
  {
    std::mutex m;
    std::condition_variable_any cv;
    std::unique_lock lock(m);
    cv.wait(lock, stop, [] { return false; });
  }
  stopping_ = true;
  spdlog::info("shutting down: stopping the source, cancelling jobs");
  source_.Stop();
  workers_stop.request_stop();
  reconciler_.Shutdown();
  queue_.ShutDown();
  workers.clear();  // joins: each worker finishes its current key
  if (writer_) {
    // The statuses the workers composed go out before the shutdown's own, in order per object.
    if (size_t dropped = writer_->Stop(options_.status_flush_timeout); dropped > 0) {
      spdlog::warn("shutting down: {} status writes not sent", dropped);
    }
  }
  FlushInterrupted();
  return {};
}

}  // namespace modelcache::controller
