#include "controller/kube/fleet_writer.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "common/clock.h"
#include "controller/kube/kube_client.h"
#include "controller/kube/kube_finalizer.h"
#include "controller/kube/kube_source.h"
#include "controller/kube/kube_status_store.h"
#include "controller/object_cache.h"

namespace modelcache::controller {
namespace {

bool HasControllerFinalizer(const crds::ModelCache& object) {
  const auto& f = object.metadata.finalizers;
  return std::find(f.begin(), f.end(), kFinalizer) != f.end();
}

}  // namespace

crds::ModelCacheStatus ComposeFleetStatus(const crds::ModelCache& object,
                                          const crds::ModelCacheStatus& current,
                                          const NodesFold& fold, const std::string& now) {
  crds::ModelCacheStatus status = current;
  status.observed_generation = object.metadata.generation;
  ApplyNodesFold(status, fold, now);
  if (fold.counts.failed > 0) {
    status.phase = crds::kPhaseFailed;
  } else if (fold.counts.desired > 0 && fold.counts.ready == fold.counts.desired) {
    status.phase = crds::kPhaseReady;
  } else if (fold.phase.empty() || fold.phase == crds::kPhaseReady) {
    status.phase = crds::kPhasePending;  // no node yet, or one without an entry yet
  } else {
    status.phase = fold.phase;
  }
  if (!fold.revision.empty()) {
    status.resolved_revision = fold.revision;
  }
  crds::Condition ready = fold.condition;
  ready.type = "Ready";
  crds::SetCondition(status.conditions, ready, now);
  return status;
}

struct FleetWriter::Impl {
  Impl(KubeConfig c, FleetWriterOptions o)
      : config(c), client(std::move(c)), options(std::move(o)) {}
  KubeConfig config;
  KubeClient client;
  FleetWriterOptions options;
  std::jthread thread;
};

FleetWriter::FleetWriter(KubeConfig config, FleetWriterOptions options)
    : impl_(std::make_unique<Impl>(std::move(config), std::move(options))) {}

FleetWriter::~FleetWriter() { Stop(); }

void FleetWriter::Start() {
  impl_->thread = std::jthread([this](std::stop_token stop) {
    LeaderElector elector(impl_->options.election, impl_->config, RealClock::Get());
    // A lost term is followed by a new candidacy until the daemon stops.
    while (!stop.stop_requested()) {
      elector.Run(stop, [this](std::stop_token leading) { Lead(leading); });
    }
  });
}

void FleetWriter::Stop() {
  if (impl_->thread.joinable()) {
    impl_->thread.request_stop();
    impl_->thread.join();
  }
}

void FleetWriter::Lead(std::stop_token leading) {
  spdlog::info("fleet writer: elected; writing the status of the resources no controller handles");
  std::mutex mu;
  std::condition_variable_any cv;
  bool dirty = true;
  auto mark = [&] {
    std::lock_guard lock(mu);
    dirty = true;
    cv.notify_all();
  };
  ObjectCache cache;
  KubernetesSourceOptions so;
  so.ns = impl_->options.ns;
  KubernetesSource source(impl_->client, so);
  if (auto r = source.Start(cache, [&](const crds::ObjectKey&) { mark(); }); !r) {
    spdlog::warn("fleet writer: {}", r.error().message);
    return;  // the term ends; the next one tries again
  }
  FleetAggregator::Options ao;
  ao.liveness_window = impl_->options.liveness_window;
  ao.resources = [&cache] {
    std::vector<crds::ModelCache> out;
    for (const CachedObject& e : cache.List()) {
      out.push_back(e.object);
    }
    return out;
  };
  ao.enqueue = [&](const crds::ObjectKey&) { mark(); };
  FleetAggregator fleet(impl_->client, ao, RealClock::Get());
  if (auto r = fleet.Start(); !r) {
    spdlog::warn("fleet writer: {}", r.error().message);
    source.Stop();
    return;
  }
  KubeStatusStore statuses(impl_->client);
  while (!leading.stop_requested()) {
    {
      std::unique_lock lock(mu);
      // The aggregator also looks every few seconds for heartbeats that aged out.
      cv.wait_for(lock, leading, std::chrono::seconds(10), [&] { return dirty; });
      dirty = false;
    }
    if (leading.stop_requested()) {
      break;
    }
    std::string now = FormatRfc3339(RealClock::Get().WallNow());
    for (const CachedObject& entry : cache.List()) {
      const crds::ModelCache& object = entry.object;
      if (entry.source_error || HasControllerFinalizer(object) ||
          object.metadata.deletion_timestamp) {
        continue;
      }
      crds::ModelCacheStatus status =
          ComposeFleetStatus(object, object.status, fleet.Fold(object, ""), now);
      if (crds::StatusToJson(status) == crds::StatusToJson(object.status)) {
        continue;
      }
      crds::ModelCache out = object;
      out.status = status;
      if (auto w = statuses.Write(out); !w) {
        spdlog::warn("fleet writer: {}: {}", object.key().ToString(), w.error().message);
        mark();
      }
    }
  }
  fleet.Stop();
  source.Stop();
}

}  // namespace modelcache::controller
